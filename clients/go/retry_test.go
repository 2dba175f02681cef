package herald_test

// Transport failures, the retry rules per call, and retries against real
// failures: a node whose Redis stops answering (503) and a node SIGKILLed
// and restarted mid-publish. Either way every event is in the room's
// history exactly once, in order.

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	herald "github.com/herald/herald-go"
)

var fast = herald.WithRetry(herald.Retry{Attempts: 3, Backoff: time.Millisecond, MaxBackoff: 2 * time.Millisecond})

func TestUnavailableWhenTheBrokerIsDown(t *testing.T) {
	r := newRedis(t)
	n, _ := redisNode(t, r)
	c := mustClient(t, n.url, adminKey, herald.WithRetry(herald.Retry{Attempts: 1}))
	r.pause()
	_, err := c.Publish(ctx(t), herald.PublishRequest{Room: "sdk:down", Event: "e"})
	r.resume()
	var he *herald.Error
	if !errors.Is(err, herald.ErrUnavailable) || !errors.As(err, &he) || he.Status != 503 {
		t.Fatalf("want 503 unavailable, got %v", err)
	}
}

func TestConnectionRefusedIsRetriedThenReported(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close() // nobody listens there now: refused
	c := mustClient(t, "http://"+addr, adminKey, fast)
	res, err := c.Publish(ctx(t), herald.PublishRequest{Room: "sdk:x", Event: "e"})
	var te *herald.TransportError
	if res != nil || !errors.Is(err, herald.ErrConnection) || errors.Is(err, herald.ErrTimeout) || !errors.As(err, &te) || te.Op != "publish" {
		t.Fatalf("want a connection error, got %v", err)
	}
}

// silentServer accepts connections, reads, and never answers; it counts
// the connections.
func silentServer(t *testing.T) (string, *int64) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var count int64
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			atomic.AddInt64(&count, 1)
			go func() { _, _ = io.Copy(io.Discard, c); c.Close() }()
		}
	}()
	t.Cleanup(func() { l.Close() })
	return "http://" + l.Addr().String(), &count
}

func TestTimeoutIsRetriedForPublishNotForBroadcast(t *testing.T) {
	url, count := silentServer(t)
	c := mustClient(t, url, adminKey, fast, herald.WithTimeout(150*time.Millisecond))
	_, err := c.Publish(ctx(t), herald.PublishRequest{Room: "sdk:x", Event: "e"})
	if !errors.Is(err, herald.ErrTimeout) {
		t.Fatalf("publish: want a timeout, got %v", err)
	}
	if got := atomic.LoadInt64(count); got != 3 {
		t.Fatalf("publish made %d connections, want 3 attempts", got)
	}
	_, err = c.Broadcast(ctx(t), herald.BroadcastRequest{Rooms: []string{"sdk:x"}, Event: "e"})
	if !errors.Is(err, herald.ErrTimeout) || atomic.LoadInt64(count) != 4 {
		t.Fatalf("broadcast: %v after %d connections, want one attempt", err, atomic.LoadInt64(count))
	}
}

func TestTheContextEndsTheRetries(t *testing.T) {
	url, _ := silentServer(t)
	c := mustClient(t, url, adminKey, herald.WithRetry(herald.Retry{Attempts: 1000, Backoff: time.Millisecond, MaxBackoff: time.Millisecond}))
	cctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	_, err := c.Publish(cctx, herald.PublishRequest{Room: "sdk:x", Event: "e"})
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("want the context's deadline, got %v", err)
	}
}

// fake answers with the given responses in turn (the last one repeats)
// and records the request bodies.
func fake(t *testing.T, answers ...func(w http.ResponseWriter)) (string, *[][]byte) {
	var mu sync.Mutex
	var bodies [][]byte
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		mu.Lock()
		bodies = append(bodies, b)
		i := len(bodies) - 1
		mu.Unlock()
		if i >= len(answers) {
			i = len(answers) - 1
		}
		answers[i](w)
	}))
	t.Cleanup(srv.Close)
	return srv.URL, &bodies
}

func answer(status int, body string) func(w http.ResponseWriter) {
	return func(w http.ResponseWriter) { w.WriteHeader(status); _, _ = io.WriteString(w, body) }
}

func TestCodesNoCallProvokesStillMatch(t *testing.T) {
	for _, tc := range []struct {
		status int
		code   string
		want   error
	}{{429, "limit_exceeded", herald.ErrLimitExceeded}, {500, "internal", herald.ErrInternal}} {
		url, bodies := fake(t, answer(tc.status, `{"error":{"code":"`+tc.code+`","message":"it happened"}}`))
		_, err := mustClient(t, url, adminKey, fast).Stats(ctx(t))
		var he *herald.Error
		if !errors.Is(err, tc.want) || !errors.As(err, &he) || he.Message != "it happened" || len(*bodies) != 1 {
			t.Fatalf("%d: %v after %d requests", tc.status, err, len(*bodies))
		}
	}
	url, bodies := fake(t, answer(502, "<html>Bad Gateway</html>"))
	_, err := mustClient(t, url, adminKey, fast).History(ctx(t), "r", nil)
	if !errors.Is(err, herald.ErrUnavailable) || len(*bodies) != 3 {
		t.Fatalf("proxy page: %v after %d requests", err, len(*bodies))
	}
}

func TestPublishRetries503WithOneKeyAndBroadcastDoesNot(t *testing.T) {
	unavailable := answer(503, `{"error":{"code":"unavailable","message":"broker"}}`)
	ok := answer(200, `{"room":"r","epoch":"eeeeeeeeeeeeeeee","offset":4,"duplicate":true}`)
	url, bodies := fake(t, unavailable, unavailable, ok)
	res, err := mustClient(t, url, adminKey, fast).Publish(ctx(t), herald.PublishRequest{Room: "r", Event: "e"})
	if err != nil || res.Offset != 4 || res.Attempts != 3 {
		t.Fatalf("publish: %+v %v", res, err)
	}
	for _, b := range *bodies {
		var req herald.PublishRequest
		if json.Unmarshal(b, &req) != nil || req.IdempotencyKey != res.IdempotencyKey {
			t.Fatalf("attempt sent key %q, result says %q", req.IdempotencyKey, res.IdempotencyKey)
		}
	}
	url, bodies = fake(t, unavailable, ok)
	if _, err := mustClient(t, url, adminKey, fast).Broadcast(ctx(t), herald.BroadcastRequest{Rooms: []string{"r"}, Event: "e"}); !errors.Is(err, herald.ErrUnavailable) || len(*bodies) != 1 {
		t.Fatalf("broadcast: %v after %d requests", err, len(*bodies))
	}
}

const total = 120

// patient spans a node restart or a paused Redis (about a second).
var patient = herald.WithRetry(herald.Retry{Attempts: 80, Backoff: 20 * time.Millisecond, MaxBackoff: 200 * time.Millisecond})

// publishThrough publishes total events one by one and runs fault once a
// quarter of them are in; it checks each is in history exactly once.
func publishThrough(t *testing.T, url string, fault func()) {
	c := mustClient(t, url, adminKey, patient, herald.WithTimeout(2*time.Second))
	room := freshRoom()
	var done int64
	results := make([]*herald.PublishResult, total)
	errc := make(chan error, 1)
	go func() {
		for i := 0; i < total; i++ {
			res, err := c.Publish(ctx(t), herald.PublishRequest{Room: room, Event: "seq", Data: i})
			if err != nil {
				errc <- err
				return
			}
			results[i] = res
			atomic.AddInt64(&done, 1)
		}
		errc <- nil
	}()
	if !waitFor(15*time.Second, func() bool { return atomic.LoadInt64(&done) >= total/4 }) {
		t.Fatal("a quarter of the events never went out")
	}
	fault()
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	retried := false
	for i, r := range results {
		if r.Offset != int64(i+1) {
			t.Fatalf("event %d landed at offset %d", i, r.Offset)
		}
		retried = retried || r.Attempts > 1
	}
	if !retried {
		t.Fatal("the fault never hit a publish")
	}
	h, err := mustClient(t, url, adminKey).History(ctx(t), room, &herald.HistoryOptions{Limit: 1000})
	if err != nil || len(h.Events) != total {
		t.Fatalf("history: %d events, %v", len(h.Events), err)
	}
	for i, e := range h.Events {
		var v int
		if json.Unmarshal(e.Data, &v) != nil || v != i {
			t.Fatalf("history[%d] = %s", i, e.Data)
		}
	}
}

func TestPublishSurvivesANodeKilledMidCall(t *testing.T) {
	n, _ := redisNode(t, newRedis(t))
	publishThrough(t, n.url, func() { n.restart(t) })
}

func TestPublishRidesOut503WhileRedisIsStopped(t *testing.T) {
	r := newRedis(t)
	n, _ := redisNode(t, r)
	publishThrough(t, n.url, func() {
		r.pause()
		time.Sleep(time.Second)
		r.resume()
	})
}
