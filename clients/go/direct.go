package herald

import (
	"context"
	"net/url"
)

// directBody is the body of POST /api/v1/users/{id}/send and
// /api/v1/connections/{id}/send.
type directBody struct {
	Event  string `json:"event"`
	Data   any    `json:"data"`
	Tenant string `json:"tenant,omitempty"`
}

// SendToUser sends one event to every connection of userID on any node,
// outside any room (tenant "" is the default tenant), and returns the
// number of connections it was delivered to: 0 when the user has none,
// which is not an error.
//
// Clients get an "event" frame with "room": null and no epoch or offset.
// It is not resumable: a client not connected at that moment never gets
// it. It carries no idempotency key, so like Broadcast it is retried only
// when the connection could not be made at all.
func (cl *Client) SendToUser(ctx context.Context, userID, event string, data any, tenant string) (int, error) {
	var out struct {
		Delivered int `json:"delivered"`
	}
	path := "/api/v1/users/" + url.PathEscape(userID) + "/send"
	body := directBody{Event: event, Data: data, Tenant: tenant}
	if _, err := cl.do(ctx, call{op: "send to user", method: "POST", path: path, body: body}, &out); err != nil {
		return 0, err
	}
	return out.Delivered, nil
}

// SendToConnection sends one event to one connection (on any node), outside
// any room, and returns 1. A connection the cluster does not know, or one
// of another tenant than tenant (when not ""), is an *Error matching
// ErrNotFound. Not resumable, like SendToUser.
func (cl *Client) SendToConnection(ctx context.Context, connectionID, event string, data any, tenant string) (int, error) {
	var out struct {
		Delivered int `json:"delivered"`
	}
	path := "/api/v1/connections/" + url.PathEscape(connectionID) + "/send"
	body := directBody{Event: event, Data: data, Tenant: tenant}
	if _, err := cl.do(ctx, call{op: "send to connection", method: "POST", path: path, body: body}, &out); err != nil {
		return 0, err
	}
	return out.Delivered, nil
}
