package herald_test

// VerifyWebhook: known vectors (computed with openssl) and a batch signed
// by a real node.

import (
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	herald "github.com/herald/herald-go"
)

// docs/protocol.md section 10.
const (
	emptyBody = `{"events":[]}`
	emptySig  = "27280736c7cafb7aec9359086c53e14f0ffc89a52d00d864281f063dc146a2de"
	// printf '%s' "1765060000.$openedBody" | openssl dgst -sha256 -hmac hook-secret
	openedBody = `{"events":[{"id":"0c40ba3b7d711e2c73379e1672ff1a87.opened","type":"connection.opened",` +
		`"time_ms":1765060000123,"tenant":null,"user_id":"alice",` +
		`"connection_id":"0c40ba3b7d711e2c73379e1672ff1a87","node_id":"web-1-4f2a","transport":"websocket"}]}`
	openedSig = "074d8c27a3a04d4b1505008761f44a74ddf266af6138e7d288a28ead8d5c1dc4"
)

var hookSecret = []byte("hook-secret")

func TestWebhookKnownVectors(t *testing.T) {
	evs, err := herald.VerifyWebhookAt(hookSecret, "t=1700000000,v1="+emptySig, []byte(emptyBody), 0, time.Unix(1700000000, 0))
	if err != nil || len(evs) != 0 {
		t.Fatalf("empty batch: %v %v", evs, err)
	}
	if got := herald.SignWebhook(hookSecret, 1700000000, []byte(emptyBody)); got != "t=1700000000,v1="+emptySig {
		t.Fatalf("SignWebhook: %s", got)
	}
	evs, err = herald.VerifyWebhookAt(hookSecret, "t=1765060000,v1="+openedSig, []byte(openedBody), 0, time.Unix(1765060100, 0))
	if err != nil || len(evs) != 1 {
		t.Fatalf("opened: %v %v", evs, err)
	}
	e := evs[0]
	if e.ID != "0c40ba3b7d711e2c73379e1672ff1a87.opened" || e.Type != "connection.opened" || e.TimeMs != 1765060000123 ||
		e.Tenant != nil || e.UserID != "alice" || e.Transport != "websocket" || e.NodeID != "web-1-4f2a" || !strings.Contains(string(e.Raw), `"user_id":"alice"`) {
		t.Fatalf("parsed: %+v", e)
	}
	// Key rotation: any v1= may match.
	if _, err := herald.VerifyWebhookAt(hookSecret, "t=1700000000,v1="+strings.Repeat("0", 64)+",v1="+emptySig, []byte(emptyBody), 0, time.Unix(1700000000, 0)); err != nil {
		t.Fatalf("rotation: %v", err)
	}
}

func TestWebhookRefusals(t *testing.T) {
	at := time.Unix(1700000000, 0)
	cases := []struct {
		secret, header, body string
		now                  time.Time
		tolerance            time.Duration
		want                 error
	}{
		{"hook-secret", "t=1700000000,v1=" + emptySig, `{"events": []}`, at, 0, herald.ErrWebhookSignature},
		{"other", "t=1700000000,v1=" + emptySig, emptyBody, at, 0, herald.ErrWebhookSignature},
		{"hook-secret", "t=1700000001,v1=" + emptySig, emptyBody, at, 0, herald.ErrWebhookSignature},
		{"hook-secret", "t=1700000000,v1=" + emptySig[:63], emptyBody, at, 0, herald.ErrWebhookSignature},
		{"hook-secret", "t=1700000000,v1=" + emptySig, emptyBody, at.Add(301 * time.Second), 0, herald.ErrWebhookTimestamp},
		{"hook-secret", "t=1700000000,v1=" + emptySig, emptyBody, at.Add(-301 * time.Second), 0, herald.ErrWebhookTimestamp},
		{"hook-secret", "t=1700000000,v1=" + emptySig, emptyBody, at.Add(11 * time.Second), 10 * time.Second, herald.ErrWebhookTimestamp},
		{"hook-secret", "v1=" + emptySig, emptyBody, at, 0, herald.ErrWebhookMalformed},
		{"hook-secret", "t=1700000000", emptyBody, at, 0, herald.ErrWebhookMalformed},
		{"hook-secret", "t=abc,v1=" + emptySig, emptyBody, at, 0, herald.ErrWebhookMalformed},
		{"hook-secret", "", emptyBody, at, 0, herald.ErrWebhookMalformed},
	}
	for i, c := range cases {
		_, err := herald.VerifyWebhookAt([]byte(c.secret), c.header, []byte(c.body), c.tolerance, c.now)
		var we *herald.WebhookError
		if !errors.Is(err, c.want) || !errors.As(err, &we) {
			t.Errorf("case %d: %v, want %v", i, err, c.want)
		}
	}
	for _, body := range []string{"not json", "[]", `{"events":null}`, `{"events":[1]}`, `{"events":[{"id":"x","type":"t"}]}`} {
		_, err := herald.VerifyWebhookAt([]byte("k"), herald.SignWebhook([]byte("k"), 1700000000, []byte(body)), []byte(body), 0, at)
		if !errors.Is(err, herald.ErrWebhookBody) {
			t.Errorf("body %s: %v, want ErrWebhookBody", body, err)
		}
	}
	if _, err := herald.VerifyWebhookAt(hookSecret, "t=1700000000,v1="+emptySig, []byte(emptyBody), 0, at.Add(300*time.Second)); err != nil {
		t.Errorf("at the tolerance's edge: %v", err)
	}
}

func TestARealNodesWebhookBatchVerifies(t *testing.T) {
	var mu sync.Mutex
	var got []struct{ sig, body string }
	recv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		mu.Lock()
		got = append(got, struct{ sig, body string }{r.Header.Get("Herald-Signature"), string(body)})
		mu.Unlock()
		w.WriteHeader(http.StatusNoContent)
	}))
	defer recv.Close()
	hookKey := "go-hook-secret-" + freshRoom()
	n, err := newNode("\n[webhooks]\nurl = \"" + recv.URL + "/hooks\"\nsecret = \"" + hookKey +
		"\"\nevents = [\"connection.opened\", \"user.online\"]\n")
	if err != nil {
		t.Fatal(err)
	}
	defer n.close()
	user := "go-hooks-" + freshRoom()[len("sdk:go-"):]
	token, err := herald.MintToken([]byte(secret), herald.TokenClaims{Subject: user, Issuer: issuer, Audience: []string{audience}})
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.Get(n.url + "/sse?" + url.Values{"token": {token}}.Encode())
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()

	var mine []herald.WebhookEvent
	ok := waitFor(15*time.Second, func() bool {
		mu.Lock()
		defer mu.Unlock()
		mine = mine[:0]
		for _, g := range got {
			evs, err := herald.VerifyWebhook([]byte(hookKey), g.sig, []byte(g.body), 0)
			if err != nil {
				t.Errorf("a real batch did not verify: %v", err)
				return true
			}
			if _, err := herald.VerifyWebhook([]byte("wrong"), g.sig, []byte(g.body), 0); !errors.Is(err, herald.ErrWebhookSignature) {
				t.Errorf("a wrong secret: %v", err)
			}
			for _, e := range evs {
				if e.UserID == user {
					mine = append(mine, e)
				}
			}
		}
		return len(mine) >= 2
	})
	if !ok || len(mine) != 2 {
		t.Fatalf("events of %s: %+v", user, mine)
	}
	types := map[string]bool{mine[0].Type: true, mine[1].Type: true}
	if !types["connection.opened"] || !types["user.online"] {
		t.Fatalf("types: %v", types)
	}
	for _, e := range mine {
		if e.Type == "connection.opened" && (e.ID != e.ConnectionID+".opened" || e.Transport != "sse") {
			t.Fatalf("connection.opened: %+v", e)
		}
	}
}
