package herald_test

import (
	"context"
	"errors"
	"fmt"
	"time"

	herald "github.com/herald/herald-go"
)

// Publishing one event; nodeURL and adminKey stand for your node's URL
// (e.g. http://127.0.0.1:8080) and API key.
func ExampleClient_Publish() {
	client, err := herald.NewClient(nodeURL, adminKey)
	if err != nil {
		panic(err)
	}
	ctx := context.Background()
	res, err := client.Publish(ctx, herald.PublishRequest{
		Room: "user:example-publish", Event: "agent.started", Data: map[string]any{"run_id": "r1"},
	})
	if err != nil {
		panic(err)
	}
	fmt.Println(res.Offset, res.Duplicate)
	// Output: 1 false
}

// An agent's lifecycle, one line per event. Keys derived from the run make
// a re-run of the job publish nothing twice.
func ExampleClient_Publish_agentLifecycle() {
	client, _ := herald.NewClient(nodeURL, adminKey)
	ctx, room, run := context.Background(), "user:example-agent", "run-7"
	for _, step := range []string{"started", "thinking", "tool_executing", "tool_completed", "completed"} {
		if _, err := client.Publish(ctx, herald.PublishRequest{
			Room: room, Event: "agent." + step, Data: map[string]string{"run_id": run}, IdempotencyKey: run + ":" + step,
		}); err != nil {
			panic(err)
		}
	}
	h, _ := client.History(ctx, room, nil)
	for _, e := range h.Events {
		fmt.Println(e.Offset, e.Event)
	}
	// Output:
	// 1 agent.started
	// 2 agent.thinking
	// 3 agent.tool_executing
	// 4 agent.tool_completed
	// 5 agent.completed
}

// Telling error kinds apart with errors.Is.
func ExampleError() {
	client, _ := herald.NewClient(nodeURL, adminKey)
	_, err := client.Publish(context.Background(), herald.PublishRequest{Room: "no spaces allowed", Event: "e"})
	var he *herald.Error
	if errors.Is(err, herald.ErrBadRequest) && errors.As(err, &he) {
		fmt.Println(he.Status, he.Code)
	}
	// Output: 400 bad_request
}

// Minting a user token locally, for the browser to pass to @herald/client.
func ExampleMintToken() {
	token, err := herald.MintToken([]byte("example-only-change-me-0123456789abcdef"), herald.TokenClaims{
		Subject: "42",
		TTL:     time.Hour,
		Claims:  map[string]any{"projects": []int{7}},
		Now:     time.Unix(1_800_000_000, 0),
	})
	if err != nil {
		panic(err)
	}
	fmt.Println(token)
	// Output: eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJleHAiOjE4MDAwMDM2MDAsImlhdCI6MTgwMDAwMDAwMCwicHJvamVjdHMiOls3XSwic3ViIjoiNDIifQ.28OUQTU8Km6cv3zKxFHADkKqleUIxXWizXUY5LTcqRk
}
