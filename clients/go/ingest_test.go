package herald_test

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	herald "github.com/herald/herald-go"
)

func TestIngestPublishesOncePerKeyAndDeadLettersBadEntries(t *testing.T) {
	r := newRedis(t)
	n, prefix := redisNode(t, r)
	in, err := herald.NewIngest(r.url, prefix)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	room := freshRoom()
	id, err := in.Publish(ctx(t), herald.PublishRequest{Room: room, Event: "agent.started", Data: 1, IdempotencyKey: "run-1-started"})
	if err != nil || !strings.Contains(id, "-") {
		t.Fatalf("XADD answered %q, %v", id, err)
	}
	for _, req := range []herald.PublishRequest{
		{Room: room, Event: "agent.started", Data: 1, IdempotencyKey: "run-1-started"},
		{Room: room, Event: "agent.completed", Data: 2, Tenant: "acme"},
		{Room: room, Event: "agent.completed", Data: 3},
		{Room: "bad room", Event: "e", Data: 1},
	} {
		if _, err := in.Publish(ctx(t), req); err != nil {
			t.Fatal(err)
		}
	}
	c := mustClient(t, n.url, adminKey)
	count := func(tenant string) int {
		h, err := c.History(ctx(t), room, &herald.HistoryOptions{Tenant: tenant})
		if err != nil {
			return -1
		}
		return len(h.Events)
	}
	if !waitFor(15*time.Second, func() bool { return count("") >= 2 && count("acme") == 1 }) {
		t.Fatalf("ingested events: %d (default tenant), %d (acme)", count(""), count("acme"))
	}
	if !waitFor(15*time.Second, func() bool { return r.raw("XLEN "+prefix+":ingest:dead") == ":1" }) {
		t.Fatalf("dead-letter stream holds %s", r.raw("XLEN "+prefix+":ingest:dead"))
	}
	h, _ := c.History(ctx(t), room, nil)
	var got []int
	for _, e := range h.Events {
		var v int
		_ = json.Unmarshal(e.Data, &v)
		got = append(got, v)
	}
	if len(got) != 2 || got[0]+got[1] != 4 {
		t.Fatalf("default tenant got %v, want 1 and 3 once each", got)
	}
}

func TestIngestReportsRedisErrorsAndBadURLs(t *testing.T) {
	r := newRedis(t)
	if r.raw("SET sdkgo-wrongtype:ingest x") != "+OK" {
		t.Fatal("SET failed")
	}
	in, err := herald.NewIngest(r.url+"/0", "sdkgo-wrongtype")
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	_, err = in.Publish(ctx(t), herald.PublishRequest{Room: "r", Event: "e"})
	var re *herald.RedisError
	if !errors.As(err, &re) || !strings.HasPrefix(re.Message, "WRONGTYPE") {
		t.Fatalf("want WRONGTYPE, got %v", err)
	}
	for _, bad := range []string{"http://127.0.0.1:1", "redis://127.0.0.1:1/x"} {
		if _, err := herald.NewIngest(bad, ""); err == nil {
			t.Fatalf("%s accepted", bad)
		}
	}
	down, _ := herald.NewIngest("redis://127.0.0.1:1", "")
	cctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if _, err := down.Publish(cctx, herald.PublishRequest{Room: "r", Event: "e"}); err == nil {
		t.Fatal("publishing to a closed port succeeded")
	}
}
