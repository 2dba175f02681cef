package herald_test

// Publish throughput on one connection, one request at a time: the SDK
// against raw net/http requests with the same body.
//
//	HERALD_BIN=../../target/release/herald go test -run '^$' -bench Publish -benchtime 5000x
//
// Each reports events/s; the node is the one TestMain starts from HERALD_BIN.

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"testing"
	"time"

	herald "github.com/herald/herald-go"
)

func BenchmarkPublishSDK(b *testing.B) {
	c, err := herald.NewClient(nodeURL, adminKey)
	if err != nil {
		b.Fatal(err)
	}
	ctx, room := context.Background(), freshRoom()
	b.ResetTimer()
	start := time.Now()
	for i := 0; i < b.N; i++ {
		if _, err := c.Publish(ctx, herald.PublishRequest{Room: room, Event: "bench", Data: map[string]int{"i": i}}); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "events/s")
}

func BenchmarkPublishRawHTTP(b *testing.B) {
	hc, room := &http.Client{}, freshRoom()
	b.ResetTimer()
	start := time.Now()
	for i := 0; i < b.N; i++ {
		body, _ := json.Marshal(map[string]any{
			"room": room, "event": "bench", "data": map[string]int{"i": i}, "idempotency_key": herald.NewIdempotencyKey(),
		})
		req, _ := http.NewRequest("POST", nodeURL+"/api/v1/publish", bytes.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+adminKey)
		req.Header.Set("Content-Type", "application/json")
		resp, err := hc.Do(req)
		if err != nil {
			b.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 {
			b.Fatalf("status %d", resp.StatusCode)
		}
	}
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "events/s")
}
