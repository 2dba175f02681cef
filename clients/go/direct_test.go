package herald_test

// SendToUser and SendToConnection against a real node.

import (
	"bufio"
	"encoding/json"
	"errors"
	"net/http"
	"net/url"
	"strings"
	"testing"

	herald "github.com/herald/herald-go"
)

// frameStream opens /sse for user (no room), reads up to authenticated and
// returns a function that reads the next "event" frame's JSON.
func frameStream(t *testing.T, user string) func() map[string]any {
	t.Helper()
	token, err := herald.MintToken([]byte(secret), herald.TokenClaims{Subject: user, Issuer: issuer, Audience: []string{audience}})
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.Get(nodeURL + "/sse?" + url.Values{"token": {token}}.Encode())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { resp.Body.Close() })
	if resp.StatusCode != 200 {
		t.Fatalf("sse answered %d", resp.StatusCode)
	}
	sc := bufio.NewScanner(resp.Body)
	next := func(typ string) map[string]any {
		for sc.Scan() {
			line := sc.Text()
			if !strings.HasPrefix(line, "data: ") {
				continue
			}
			var f map[string]any
			if err := json.Unmarshal([]byte(line[len("data: "):]), &f); err != nil {
				t.Fatalf("frame %q: %v", line, err)
			}
			if f["type"] == typ {
				return f
			}
		}
		t.Fatalf("the stream ended before a %s frame: %v", typ, sc.Err())
		return nil
	}
	next("authenticated")
	return func() map[string]any { return next("event") }
}

func TestSendToUserAndConnectionReachTheStream(t *testing.T) {
	room := freshRoom()
	user := "go-direct-" + room[len("sdk:go-"):]
	nextEvent := frameStream(t, user)
	c := mustClient(t, nodeURL, publishKey)

	n, err := c.SendToUser(ctx(t), user, "invoice.ready", map[string]int{"invoice": 91}, "")
	if err != nil || n != 1 {
		t.Fatalf("send to user: %d %v", n, err)
	}
	f := nextEvent()
	if f["room"] != nil || f["event"] != "invoice.ready" || f["data"].(map[string]any)["invoice"] != 91.0 {
		t.Fatalf("direct frame: %v", f)
	}
	if _, has := f["offset"]; has {
		t.Fatalf("a direct frame has no offset: %v", f)
	}

	conns, err := mustClient(t, nodeURL, adminKey).Connections(ctx(t), user, "")
	if err != nil || len(conns) != 1 {
		t.Fatalf("connections: %+v %v", conns, err)
	}
	n, err = c.SendToConnection(ctx(t), conns[0].ConnectionID, "only.you", []int{1, 2}, "")
	if err != nil || n != 1 {
		t.Fatalf("send to connection: %d %v", n, err)
	}
	if f := nextEvent(); f["room"] != nil || f["event"] != "only.you" {
		t.Fatalf("direct frame: %v", f)
	}

	// Another tenant's view of that connection does not exist.
	_, err = c.SendToConnection(ctx(t), conns[0].ConnectionID, "e", nil, "acme")
	if !errors.Is(err, herald.ErrNotFound) {
		t.Fatalf("another tenant: %v, want ErrNotFound", err)
	}
}

func TestSendToNobodyAndToAnUnknownConnection(t *testing.T) {
	c := mustClient(t, nodeURL, publishKey)
	n, err := c.SendToUser(ctx(t), "go-nobody-"+freshRoom()[len("sdk:"):], "e", nil, "acme")
	if err != nil || n != 0 {
		t.Fatalf("send to a user with no connection: %d %v", n, err)
	}
	_, err = c.SendToConnection(ctx(t), strings.Repeat("0", 32), "e", nil, "")
	var he *herald.Error
	if !errors.Is(err, herald.ErrNotFound) || !errors.As(err, &he) || he.Status != 404 {
		t.Fatalf("unknown connection: %v, want a 404 ErrNotFound", err)
	}
	_, err = c.SendToUser(ctx(t), "u", "", nil, "")
	if !errors.Is(err, herald.ErrBadRequest) {
		t.Fatalf("empty event: %v, want ErrBadRequest", err)
	}
}
