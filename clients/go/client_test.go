package herald_test

// Every call against a real node, tokens, and the error classes the node
// gives for the SDK's own calls.

import (
	"bufio"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	herald "github.com/herald/herald-go"
)

// sseStream opens /sse for one room, reads up to that room's room_joined
// and returns a function that reads the rest of the stream's event names.
func sseStream(t *testing.T, token, room string) func() []string {
	t.Helper()
	q := url.Values{"rooms": {room}, "token": {token}}
	resp, err := http.Get(nodeURL + "/sse?" + q.Encode())
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != 200 {
		resp.Body.Close()
		t.Fatalf("sse answered %d", resp.StatusCode)
	}
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "data: ") && strings.Contains(line, `"type":"room_joined"`) &&
			strings.Contains(line, `"room":"`+room+`"`) {
			break
		}
	}
	return func() []string {
		defer resp.Body.Close()
		var names []string
		for sc.Scan() {
			if strings.HasPrefix(sc.Text(), "event: ") {
				names = append(names, strings.TrimPrefix(sc.Text(), "event: "))
			}
		}
		return names
	}
}

func sseStatus(token, room string) int {
	resp, err := http.Get(nodeURL + "/sse?" + url.Values{"rooms": {room}, "token": {token}}.Encode())
	if err != nil {
		return 0
	}
	resp.Body.Close()
	return resp.StatusCode
}

func TestPublishAnswersOffsetsAndDedupesByKey(t *testing.T) {
	c, room := mustClient(t, nodeURL, publishKey), freshRoom()
	first, err := c.Publish(ctx(t), herald.PublishRequest{Room: room, Event: "agent.started", Data: map[string]int{"n": 1}})
	if err != nil {
		t.Fatal(err)
	}
	key := "fixed-" + room
	second, err := c.Publish(ctx(t), herald.PublishRequest{Room: room, Event: "e", Data: 2, IdempotencyKey: key})
	if err != nil {
		t.Fatal(err)
	}
	again, err := c.Publish(ctx(t), herald.PublishRequest{Room: room, Event: "e", Data: 3, IdempotencyKey: key})
	if err != nil {
		t.Fatal(err)
	}
	if first.Offset != 1 || second.Offset != 2 || again.Offset != 2 || !again.Duplicate || second.Duplicate {
		t.Fatalf("offsets/duplicate: %+v %+v %+v", first, second, again)
	}
	if len(first.IdempotencyKey) != 32 || len(first.Epoch) != 16 || first.Room != room || first.Attempts != 1 {
		t.Fatalf("first: %+v", first)
	}
	h, err := mustClient(t, nodeURL, adminKey).History(ctx(t), room, nil)
	if err != nil || len(h.Events) != 2 || string(h.Events[0].Data) != `{"n":1}` {
		t.Fatalf("history: %+v %v", h, err)
	}
}

func TestTenantAndBroadcast(t *testing.T) {
	c, a, b := mustClient(t, nodeURL, adminKey), freshRoom(), freshRoom()
	if _, err := c.Publish(ctx(t), herald.PublishRequest{Room: a, Event: "e", Data: "acme only", Tenant: "acme"}); err != nil {
		t.Fatal(err)
	}
	// The node takes ExcludeConnection (an unknown field would be a 400).
	if r, err := c.Publish(ctx(t), herald.PublishRequest{Room: b, Event: "e", ExcludeConnection: strings.Repeat("0", 32)}); err != nil || r.Offset != 1 {
		t.Fatalf("exclude_connection: %+v %v", r, err)
	}
	res, err := c.Broadcast(ctx(t), herald.BroadcastRequest{Rooms: []string{a, b}, Event: "all", Data: []int{1, 2}})
	if err != nil || len(res) != 2 || res[0].Room != a || res[0].Offset != 1 || res[1].Offset != 2 {
		t.Fatalf("broadcast: %+v %v", res, err)
	}
	acme, err := c.History(ctx(t), a, &herald.HistoryOptions{Tenant: "acme"})
	if err != nil || len(acme.Events) != 1 || string(acme.Events[0].Data) != `"acme only"` {
		t.Fatalf("acme history: %+v %v", acme, err)
	}
	def, err := c.History(ctx(t), a, nil)
	if err != nil || len(def.Events) != 1 || def.Events[0].Event != "all" {
		t.Fatalf("default history: %+v %v", def, err)
	}
}

func TestHistoryPagesAndEpochs(t *testing.T) {
	c, room := mustClient(t, nodeURL, adminKey), freshRoom()
	for i := 0; i < 5; i++ {
		if _, err := c.Publish(ctx(t), herald.PublishRequest{Room: room, Event: "tick", Data: i}); err != nil {
			t.Fatal(err)
		}
	}
	page, err := c.History(ctx(t), room, &herald.HistoryOptions{Since: 2, Limit: 2})
	if err != nil || len(page.Events) != 2 || page.Events[0].Offset != 3 || page.Complete || page.Offset != 5 {
		t.Fatalf("page: %+v %v", page, err)
	}
	rest, err := c.History(ctx(t), room, &herald.HistoryOptions{Since: 4, Epoch: page.Epoch})
	if err != nil || len(rest.Events) != 1 || !rest.Complete || string(rest.Events[0].Data) != "4" {
		t.Fatalf("rest: %+v %v", rest, err)
	}
	other, err := c.History(ctx(t), room, &herald.HistoryOptions{Epoch: "0000000000000000"})
	if err != nil || len(other.Events) != 0 {
		t.Fatalf("other epoch: %+v %v", other, err)
	}
}

func TestPresenceConnectionsDisconnectAgainstALiveStream(t *testing.T) {
	c, room := mustClient(t, nodeURL, adminKey), freshRoom()
	user := "go-" + room[len("sdk:go-"):]
	token, err := herald.MintToken([]byte(secret), herald.TokenClaims{Subject: user, Issuer: issuer, Audience: []string{audience}})
	if err != nil {
		t.Fatal(err)
	}
	rest := sseStream(t, token, room)
	p, err := c.Presence(ctx(t), room, "")
	if err != nil || len(p.Members) != 1 || p.Members[0].UserID != user {
		t.Fatalf("presence: %+v %v", p, err)
	}
	conns, err := c.Connections(ctx(t), user, "")
	if err != nil || len(conns) != 1 || conns[0].Transport != "sse" || conns[0].ConnectedAt == 0 {
		t.Fatalf("connections: %+v %v", conns, err)
	}
	n, err := c.Disconnect(ctx(t), user, "")
	if err != nil || n != 1 {
		t.Fatalf("disconnect: %d %v", n, err)
	}
	names := rest()
	if len(names) == 0 || names[len(names)-1] != "disconnect" {
		t.Fatalf("stream ended with %v, want a disconnect event", names)
	}
}

func TestStatsAndReady(t *testing.T) {
	c := mustClient(t, nodeURL, adminKey)
	if _, err := c.Publish(ctx(t), herald.PublishRequest{Room: freshRoom(), Event: "e"}); err != nil {
		t.Fatal(err)
	}
	s, err := c.Stats(ctx(t))
	if err != nil || len(s.Nodes) != 1 || !strings.HasPrefix(s.Nodes[0].NodeID, "sdk-go-") || s.Broker == nil || s.Broker.Kind != "memory" || s.Broker.Streams < 1 {
		t.Fatalf("stats: %+v %v", s, err)
	}
	if !c.Ready(ctx(t)) {
		t.Fatal("node not ready")
	}
	if mustClient(t, "http://127.0.0.1:9", adminKey).Ready(ctx(t)) {
		t.Fatal("a closed port is ready")
	}
}

func TestTokensMintedLocallyAndByTheNodeOpenAStream(t *testing.T) {
	room := freshRoom()
	local, err := herald.MintToken([]byte(secret), herald.TokenClaims{
		Subject: "7", Issuer: issuer, Audience: []string{audience}, Roles: []string{"x"}, Claims: map[string]any{"plan": "pro"},
	})
	if err != nil {
		t.Fatal(err)
	}
	if s := sseStatus(local, room); s != 200 {
		t.Fatalf("local token: sse %d", s)
	}
	minted, err := mustClient(t, nodeURL, adminKey).CreateToken(ctx(t), herald.TokenRequest{
		Sub: "8", TTL: "5m", Roles: []string{"y"}, // iss and aud come from the node's config
	})
	if err != nil || minted.ExpiresAt == 0 {
		t.Fatalf("create token: %+v %v", minted, err)
	}
	if s := sseStatus(minted.Token, room); s != 200 {
		t.Fatalf("node token: sse %d", s)
	}
	bad := []herald.TokenClaims{
		{Subject: "7", Issuer: issuer, Audience: []string{audience}, Now: time.Unix(1_000_000, 0), TTL: time.Second},
		{Subject: "7", Audience: []string{audience}},
	}
	for _, claims := range bad {
		tok, err := herald.MintToken([]byte(secret), claims)
		if err != nil {
			t.Fatal(err)
		}
		if s := sseStatus(tok, room); s != 401 {
			t.Fatalf("bad token %+v: sse %d, want 401", claims, s)
		}
	}
	wrong, _ := herald.MintToken([]byte(secret+"x"), herald.TokenClaims{Subject: "7", Issuer: issuer, Audience: []string{audience}})
	if s := sseStatus(wrong, room); s != 401 {
		t.Fatalf("wrong secret: sse %d", s)
	}
	if _, err := herald.MintToken([]byte(secret), herald.TokenClaims{Subject: "7", Claims: map[string]any{"sub": "8"}}); err == nil {
		t.Fatal("a reserved claim in Claims was accepted")
	}
}

func TestMintTokenIsStandardHS256(t *testing.T) {
	tok, err := herald.MintToken([]byte("k"), herald.TokenClaims{
		Subject: "42", TTL: time.Minute, Tenant: "acme", Roles: []string{"a"}, Claims: map[string]any{"projects": []int{7}}, Now: time.Unix(100, 0),
	})
	if err != nil {
		t.Fatal(err)
	}
	parts := strings.Split(tok, ".")
	if len(parts) != 3 {
		t.Fatalf("token %q", tok)
	}
	payload, _ := base64.RawURLEncoding.DecodeString(parts[1])
	if string(payload) != `{"exp":160,"iat":100,"projects":[7],"roles":["a"],"sub":"42","tenant":"acme"}` {
		t.Fatalf("payload %s", payload)
	}
	mac := hmac.New(sha256.New, []byte("k"))
	mac.Write([]byte(parts[0] + "." + parts[1]))
	if base64.RawURLEncoding.EncodeToString(mac.Sum(nil)) != parts[2] {
		t.Fatal("signature is not HMAC-SHA256 of header.payload")
	}
	var header map[string]string
	raw, _ := base64.RawURLEncoding.DecodeString(parts[0])
	if json.Unmarshal(raw, &header) != nil || header["alg"] != "HS256" {
		t.Fatalf("header %s", raw)
	}
}

func TestNodeErrorsMatchTheirSentinels(t *testing.T) {
	c := mustClient(t, nodeURL, publishKey, herald.WithRetry(herald.Retry{Attempts: 3, Backoff: time.Millisecond, MaxBackoff: time.Millisecond}))
	_, err := c.Publish(ctx(t), herald.PublishRequest{Room: "bad room", Event: "e", Data: 1})
	var he *herald.Error
	if !errors.Is(err, herald.ErrBadRequest) || !errors.As(err, &he) || he.Status != 400 || !strings.Contains(he.Message, "bad room") {
		t.Fatalf("bad room: %v", err)
	}
	key := herald.NewIdempotencyKey()
	if _, err := c.Publish(ctx(t), herald.PublishRequest{Room: "sdk:one", Event: "e", IdempotencyKey: key}); err != nil {
		t.Fatal(err)
	}
	_, err = c.Publish(ctx(t), herald.PublishRequest{Room: "sdk:two", Event: "e", IdempotencyKey: key})
	if !errors.Is(err, herald.ErrIdempotencyConflict) || !errors.Is(err, herald.ErrBadRequest) {
		t.Fatalf("conflict: %v", err)
	}
	if _, err := c.Stats(ctx(t)); !errors.Is(err, herald.ErrForbidden) {
		t.Fatalf("forbidden: %v", err)
	}
	big := strings.Repeat("x", 3<<20)
	if _, err := c.Publish(ctx(t), herald.PublishRequest{Room: "sdk:big", Event: "e", Data: big}); !errors.Is(err, herald.ErrTooLarge) {
		t.Fatalf("too large: %v", err)
	}
	if _, err := mustClient(t, nodeURL, "unknown-key-0123456789").Stats(ctx(t)); !errors.Is(err, herald.ErrUnauthorized) {
		t.Fatalf("unauthorized: %v", err)
	}
	if _, err := mustClient(t, nodeURL+"/wrong-prefix", adminKey).Stats(ctx(t)); !errors.Is(err, herald.ErrNotFound) {
		t.Fatalf("not found: %v", err)
	}
	if _, err := herald.NewClient(nodeURL, ""); err == nil {
		t.Fatal("an empty API key was accepted")
	}
	if _, err := herald.NewClient("ftp://x", adminKey); err == nil {
		t.Fatal("an ftp URL was accepted")
	}
}
