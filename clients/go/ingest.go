package herald

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Ingest publishes through the Redis stream <prefix>:ingest that Herald
// nodes with broker.kind = "redis" consume (docs/protocol.md, section 5):
// one XADD per event, spoken in RESP over one TCP connection, with no
// Redis library. It is safe for concurrent use (calls take turns).
type Ingest struct {
	addr, user, pass string
	db               int
	stream           string
	retry            Retry
	timeout          time.Duration

	mu   sync.Mutex
	conn net.Conn
	rd   *bufio.Reader
}

// RedisError is an error reply of Redis (e.g. WRONGTYPE, NOAUTH).
type RedisError struct{ Message string }

// Error implements error.
func (e *RedisError) Error() string { return "herald: redis: " + e.Message }

// NewIngest returns an ingest publisher for redisURL
// (redis://[user:password@]host:port[/db]) and the nodes' broker.prefix
// ("" means "herald"). It connects on first use.
func NewIngest(redisURL, prefix string) (*Ingest, error) {
	u, err := url.Parse(redisURL)
	if err != nil || u.Scheme != "redis" || u.Host == "" {
		return nil, fmt.Errorf("herald: redis URL %q is not redis://host:port[/db]", redisURL)
	}
	in := &Ingest{addr: u.Host, retry: DefaultRetry, timeout: 5 * time.Second}
	if u.Port() == "" {
		in.addr = net.JoinHostPort(u.Hostname(), "6379")
	}
	if u.User != nil {
		in.user = u.User.Username()
		in.pass, _ = u.User.Password()
	}
	if db := strings.Trim(u.Path, "/"); db != "" {
		if in.db, err = strconv.Atoi(db); err != nil {
			return nil, fmt.Errorf("herald: redis URL %q: database %q is not a number", redisURL, db)
		}
	}
	if prefix == "" {
		prefix = "herald"
	}
	in.stream = prefix + ":ingest"
	return in, nil
}

// Publish appends req to the ingest stream and returns the entry id. The
// event is published when a node consumes it; an entry it cannot publish
// goes to <prefix>:ingest:dead. Without req.IdempotencyKey a random key is
// set, so an append retried after a lost reply publishes once.
func (in *Ingest) Publish(ctx context.Context, req PublishRequest) (string, error) {
	if req.IdempotencyKey == "" {
		req.IdempotencyKey = NewIdempotencyKey()
	}
	req.ExcludeConnection = ""
	payload, err := json.Marshal(req)
	if err != nil {
		return "", fmt.Errorf("herald: ingest: encoding the event: %w", err)
	}
	for attempt := 1; ; attempt++ {
		reply, err := in.command(ctx, "XADD", in.stream, "*", "payload", string(payload))
		var rerr *RedisError
		if err == nil || errors.As(err, &rerr) || ctx.Err() != nil || attempt >= in.retry.Attempts {
			if err != nil {
				return "", fmt.Errorf("herald: ingest: %w", err)
			}
			id, ok := reply.(string)
			if !ok {
				return "", fmt.Errorf("herald: ingest: XADD answered %v, not an entry id", reply)
			}
			return id, nil
		}
		if serr := sleep(ctx, in.retry.delay(attempt-1)); serr != nil {
			return "", fmt.Errorf("herald: ingest: %w", serr)
		}
	}
}

// Close closes the connection.
func (in *Ingest) Close() error {
	in.mu.Lock()
	defer in.mu.Unlock()
	return in.drop()
}

func (in *Ingest) drop() error {
	if in.conn == nil {
		return nil
	}
	err := in.conn.Close()
	in.conn, in.rd = nil, nil
	return err
}

// command sends one command and reads its reply, connecting (with AUTH
// and SELECT) first when needed. A broken connection is dropped so the
// next call reconnects.
func (in *Ingest) command(ctx context.Context, args ...string) (any, error) {
	in.mu.Lock()
	defer in.mu.Unlock()
	deadline := time.Now().Add(in.timeout)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	if in.conn == nil {
		var d net.Dialer
		conn, err := d.DialContext(ctx, "tcp", in.addr)
		if err != nil {
			return nil, err
		}
		in.conn, in.rd = conn, bufio.NewReader(conn)
		var setup [][]string
		if in.pass != "" {
			if in.user != "" {
				setup = append(setup, []string{"AUTH", in.user, in.pass})
			} else {
				setup = append(setup, []string{"AUTH", in.pass})
			}
		}
		if in.db != 0 {
			setup = append(setup, []string{"SELECT", strconv.Itoa(in.db)})
		}
		for _, s := range setup {
			if _, err := in.roundTrip(deadline, s); err != nil {
				_ = in.drop()
				return nil, err
			}
		}
	}
	reply, err := in.roundTrip(deadline, args)
	var rerr *RedisError
	if err != nil && !errors.As(err, &rerr) {
		_ = in.drop()
	}
	return reply, err
}

func (in *Ingest) roundTrip(deadline time.Time, args []string) (any, error) {
	if err := in.conn.SetDeadline(deadline); err != nil {
		return nil, err
	}
	var b strings.Builder
	b.WriteString("*" + strconv.Itoa(len(args)) + "\r\n")
	for _, a := range args {
		b.WriteString("$" + strconv.Itoa(len(a)) + "\r\n" + a + "\r\n")
	}
	if _, err := io.WriteString(in.conn, b.String()); err != nil {
		return nil, err
	}
	return readReply(in.rd)
}

// readReply reads one RESP2 reply: simple string, error, integer, bulk
// string (nil as nil) or array.
func readReply(r *bufio.Reader) (any, error) {
	line, err := r.ReadString('\n')
	if err != nil {
		return nil, err
	}
	if len(line) < 3 || line[len(line)-2] != '\r' {
		return nil, fmt.Errorf("malformed reply line %q", line)
	}
	kind, text := line[0], line[1:len(line)-2]
	switch kind {
	case '+':
		return text, nil
	case '-':
		return nil, &RedisError{Message: text}
	case ':':
		return strconv.ParseInt(text, 10, 64)
	case '$':
		n, err := strconv.Atoi(text)
		if err != nil || n < -1 {
			return nil, fmt.Errorf("malformed bulk length %q", text)
		}
		if n == -1 {
			return nil, nil
		}
		buf := make([]byte, n+2)
		if _, err := io.ReadFull(r, buf); err != nil {
			return nil, err
		}
		return string(buf[:n]), nil
	case '*':
		n, err := strconv.Atoi(text)
		if err != nil || n < -1 {
			return nil, fmt.Errorf("malformed array length %q", text)
		}
		if n == -1 {
			return nil, nil
		}
		items := make([]any, 0, n)
		for i := 0; i < n; i++ {
			item, err := readReply(r)
			if err != nil {
				return nil, err
			}
			items = append(items, item)
		}
		return items, nil
	}
	return nil, fmt.Errorf("unknown reply type %q", kind)
}
