// Package herald is the Go server SDK for Herald, a real-time gateway:
// publish events to rooms, read history and presence, manage connections
// and mint user tokens. Standard library only.
//
// Every call takes a context. Publish carries an idempotency key (a random
// one unless given) and is retried on timeouts, broken connections and
// 503s, so a retried publish never delivers twice.
package herald

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

const userAgent = "herald-sdk-go/0.1.0"

// Retry says how failed calls are retried: Attempts requests per call in
// all (1 disables retries), waiting min(MaxBackoff, Backoff*2^n) scaled by
// a random factor in [0.5, 1] before retry n.
type Retry struct {
	Attempts   int
	Backoff    time.Duration
	MaxBackoff time.Duration
}

// DefaultRetry is used unless WithRetry says otherwise.
var DefaultRetry = Retry{Attempts: 4, Backoff: 100 * time.Millisecond, MaxBackoff: 2 * time.Second}

func (r Retry) delay(n int) time.Duration {
	d := r.Backoff
	for i := 0; i < n && d < r.MaxBackoff; i++ {
		d *= 2
	}
	if d > r.MaxBackoff {
		d = r.MaxBackoff
	}
	var b [1]byte
	_, _ = rand.Read(b[:])
	return d/2 + time.Duration(float64(d/2)*float64(b[0])/255)
}

// sleep waits d or until ctx ends.
func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// Client calls Herald's HTTP API. It is safe for concurrent use and reuses
// keep-alive connections: make one per process.
type Client struct {
	base    string
	key     string
	http    *http.Client
	retry   Retry
	timeout time.Duration
}

// Option configures a Client.
type Option func(*Client)

// WithHTTPClient makes the client send through hc (proxies, TLS settings).
func WithHTTPClient(hc *http.Client) Option { return func(c *Client) { c.http = hc } }

// WithRetry replaces DefaultRetry.
func WithRetry(r Retry) Option { return func(c *Client) { c.retry = r } }

// WithTimeout bounds each request (default 10s); the context bounds the call.
func WithTimeout(d time.Duration) Option { return func(c *Client) { c.timeout = d } }

// NewClient returns a client for the node (or load balancer) at baseURL,
// with an API key of scope publish (publish, broadcast) or admin (all).
func NewClient(baseURL, apiKey string, opts ...Option) (*Client, error) {
	if apiKey == "" {
		return nil, errors.New("herald: an API key is required")
	}
	u, err := url.Parse(baseURL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("herald: base URL %q is not an http(s) URL", baseURL)
	}
	c := &Client{base: strings.TrimRight(baseURL, "/"), key: apiKey, retry: DefaultRetry, timeout: 10 * time.Second}
	for _, o := range opts {
		o(c)
	}
	if c.http == nil {
		c.http = &http.Client{}
	}
	if c.retry.Attempts < 1 {
		c.retry.Attempts = 1
	}
	return c, nil
}

// call is one API request. Idempotent calls may be retried after the
// request could have reached the node; the others only when it did not.
type call struct {
	op         string
	method     string
	path       string
	query      url.Values
	body       any
	idempotent bool
}

// NewIdempotencyKey returns a random key (32 hex characters).
func NewIdempotencyKey() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

func retryableStatus(s int) bool { return s == 502 || s == 503 || s == 504 }

// notSent reports whether err happened before any byte of the request left:
// a failed dial, which is safe to retry for every call.
func notSent(err error) bool {
	var op *net.OpError
	return errors.As(err, &op) && op.Op == "dial"
}

// do sends c, retrying as the policy allows, and decodes the answer into out.
// It returns the number of requests made.
func (cl *Client) do(ctx context.Context, c call, out any) (int, error) {
	var body []byte
	if c.body != nil {
		var err error
		if body, err = json.Marshal(c.body); err != nil {
			return 0, fmt.Errorf("herald: %s: encoding the body: %w", c.op, err)
		}
		// The node answers a larger body at once and closes the
		// connection, which a client still writing it may see as a reset
		// instead of the answer: refuse it here, unsent.
		if len(body) > MaxBodyBytes {
			return 0, &Error{Status: 413, Code: CodeTooLarge, Message: fmt.Sprintf(
				"request body is %d bytes, over the node's limit of %d (not sent)", len(body), MaxBodyBytes)}
		}
	}
	target := cl.base + c.path
	if len(c.query) > 0 {
		target += "?" + c.query.Encode()
	}
	for attempt := 1; ; attempt++ {
		status, data, err := cl.once(ctx, c.method, target, body)
		if ctx.Err() != nil {
			return attempt, fmt.Errorf("herald: %s: %w", c.op, ctx.Err())
		}
		var retry bool
		if err != nil {
			retry = notSent(err) || c.idempotent
		} else if status >= 400 {
			retry = c.idempotent && retryableStatus(status)
		}
		if retry && attempt < cl.retry.Attempts {
			if serr := sleep(ctx, cl.retry.delay(attempt-1)); serr != nil {
				return attempt, fmt.Errorf("herald: %s: %w", c.op, serr)
			}
			continue
		}
		if err != nil {
			return attempt, &TransportError{Op: c.op, Timeout: isTimeout(err), Err: err}
		}
		if status >= 400 {
			return attempt, errorFromResponse(status, data)
		}
		if out != nil {
			if err := json.Unmarshal(data, out); err != nil {
				return attempt, fmt.Errorf("herald: %s: answer is not the expected JSON: %w", c.op, err)
			}
		}
		return attempt, nil
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.Is(err, context.DeadlineExceeded) || (errors.As(err, &ne) && ne.Timeout())
}

// once sends one request under the per-request timeout and reads the
// whole answer, so the connection goes back to the pool.
func (cl *Client) once(ctx context.Context, method, target string, body []byte) (int, []byte, error) {
	rctx, cancel := context.WithTimeout(ctx, cl.timeout)
	defer cancel()
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(rctx, method, target, rd)
	if err != nil {
		return 0, nil, err
	}
	req.Header.Set("Authorization", "Bearer "+cl.key)
	req.Header.Set("User-Agent", userAgent)
	req.Header.Set("Accept", "application/json")
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := cl.http.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		return 0, nil, err
	}
	return resp.StatusCode, data, nil
}

func tenantQuery(tenant string) url.Values {
	q := url.Values{}
	if tenant != "" {
		q.Set("tenant", tenant)
	}
	return q
}

// Publish publishes one event. Without req.IdempotencyKey a random key is
// used, so retries never deliver twice; the result tells which key.
func (cl *Client) Publish(ctx context.Context, req PublishRequest) (*PublishResult, error) {
	if req.IdempotencyKey == "" {
		req.IdempotencyKey = NewIdempotencyKey()
	}
	var out PublishResult
	n, err := cl.do(ctx, call{op: "publish", method: "POST", path: "/api/v1/publish", body: req, idempotent: true}, &out)
	if err != nil {
		return nil, err
	}
	out.IdempotencyKey, out.Attempts = req.IdempotencyKey, n
	return &out, nil
}

// Broadcast publishes one event to each of 1 to 1000 rooms. It has no
// idempotency key, so it is retried only when the connection could not
// be made at all.
func (cl *Client) Broadcast(ctx context.Context, req BroadcastRequest) ([]BroadcastResult, error) {
	var out struct {
		Results []BroadcastResult `json:"results"`
	}
	if _, err := cl.do(ctx, call{op: "broadcast", method: "POST", path: "/api/v1/broadcast", body: req}, &out); err != nil {
		return nil, err
	}
	return out.Results, nil
}

// History reads stored events of room after opts.Since (opts may be nil).
func (cl *Client) History(ctx context.Context, room string, opts *HistoryOptions) (*History, error) {
	if opts == nil {
		opts = &HistoryOptions{}
	}
	q := tenantQuery(opts.Tenant)
	q.Set("since", strconv.FormatInt(opts.Since, 10))
	if opts.Epoch != "" {
		q.Set("epoch", opts.Epoch)
	}
	if opts.Limit > 0 {
		q.Set("limit", strconv.Itoa(opts.Limit))
	}
	var out History
	path := "/api/v1/rooms/" + url.PathEscape(room) + "/history"
	if _, err := cl.do(ctx, call{op: "history", method: "GET", path: path, query: q, idempotent: true}, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// Presence lists the members of room (tenant "" is the default tenant).
func (cl *Client) Presence(ctx context.Context, room, tenant string) (*Presence, error) {
	var out Presence
	path := "/api/v1/rooms/" + url.PathEscape(room) + "/presence"
	if _, err := cl.do(ctx, call{op: "presence", method: "GET", path: path, query: tenantQuery(tenant), idempotent: true}, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// Connections lists the connections of userID across the cluster.
func (cl *Client) Connections(ctx context.Context, userID, tenant string) ([]Connection, error) {
	var out struct {
		Connections []Connection `json:"connections"`
	}
	path := "/api/v1/users/" + url.PathEscape(userID) + "/connections"
	if _, err := cl.do(ctx, call{op: "connections", method: "GET", path: path, query: tenantQuery(tenant), idempotent: true}, &out); err != nil {
		return nil, err
	}
	return out.Connections, nil
}

// Disconnect closes every connection of userID (close code 4013) and
// returns how many were closed.
func (cl *Client) Disconnect(ctx context.Context, userID, tenant string) (int, error) {
	var out struct {
		Disconnected int `json:"disconnected"`
	}
	path := "/api/v1/users/" + url.PathEscape(userID) + "/disconnect"
	if _, err := cl.do(ctx, call{op: "disconnect", method: "POST", path: path, query: tenantQuery(tenant), idempotent: true}, &out); err != nil {
		return 0, err
	}
	return out.Disconnected, nil
}

// Stats returns per-node and cluster totals.
func (cl *Client) Stats(ctx context.Context) (*Stats, error) {
	var out Stats
	if _, err := cl.do(ctx, call{op: "stats", method: "GET", path: "/api/v1/stats", idempotent: true}, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// CreateToken has the node mint an HS256 token. MintToken does the same
// locally, without a round trip.
func (cl *Client) CreateToken(ctx context.Context, req TokenRequest) (*Token, error) {
	var out Token
	if _, err := cl.do(ctx, call{op: "create token", method: "POST", path: "/api/v1/tokens", body: req, idempotent: true}, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// Ready reports whether the node accepts connections and reaches its broker.
func (cl *Client) Ready(ctx context.Context) bool {
	status, _, err := cl.once(ctx, "GET", cl.base+"/ready", nil)
	return err == nil && status == http.StatusOK
}
