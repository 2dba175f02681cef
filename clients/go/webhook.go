package herald

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// DefaultWebhookTolerance is how far a webhook's t= may be from the clock
// when VerifyWebhook is given a tolerance of 0.
const DefaultWebhookTolerance = 5 * time.Minute

// Reasons of a WebhookError.
const (
	// WebhookMalformedHeader: no Herald-Signature, no integer t=, or no v1=.
	WebhookMalformedHeader = "malformed_header"
	// WebhookTimestampOutOfTolerance: t= too far from the clock (a replay, or a skewed clock).
	WebhookTimestampOutOfTolerance = "timestamp_out_of_tolerance"
	// WebhookSignatureMismatch: no v1= matches (wrong secret, or an altered body).
	WebhookSignatureMismatch = "signature_mismatch"
	// WebhookBadBody: signed correctly but not a {"events": [...]} batch of events.
	WebhookBadBody = "bad_body"
)

// WebhookError is a webhook request that failed verification; answer it
// 400. Test for a reason with errors.Is(err, herald.ErrWebhookSignature)
// and friends.
type WebhookError struct {
	// Reason is one of the Webhook* reason constants.
	Reason string
	// Message explains it.
	Message string
}

// Error implements error.
func (e *WebhookError) Error() string { return "herald: webhook " + e.Reason + ": " + e.Message }

// Is matches the ErrWebhook* sentinels by reason.
func (e *WebhookError) Is(target error) bool {
	t, ok := target.(*WebhookError)
	return ok && t.Reason == e.Reason
}

// Sentinels for errors.Is, one per WebhookError reason.
var (
	// ErrWebhookMalformed matches WebhookMalformedHeader.
	ErrWebhookMalformed = &WebhookError{Reason: WebhookMalformedHeader}
	// ErrWebhookTimestamp matches WebhookTimestampOutOfTolerance.
	ErrWebhookTimestamp = &WebhookError{Reason: WebhookTimestampOutOfTolerance}
	// ErrWebhookSignature matches WebhookSignatureMismatch.
	ErrWebhookSignature = &WebhookError{Reason: WebhookSignatureMismatch}
	// ErrWebhookBody matches WebhookBadBody.
	ErrWebhookBody = &WebhookError{Reason: WebhookBadBody}
)

// WebhookEvent is one event of a webhook batch (docs/protocol.md, section
// 10). Fields a type does not carry are zero; Raw is the whole object.
// Delivery is at least once: deduplicate on ID.
type WebhookEvent struct {
	// ID is unique per event (<connection_id>.opened / .closed for connection.*).
	ID string `json:"id"`
	// Type is connection.opened, user.online, member.joined, message.sent, ...
	Type string `json:"type"`
	// TimeMs is when it happened, ms since the Unix epoch.
	TimeMs int64 `json:"time_ms"`
	// Tenant is nil for the default tenant.
	Tenant *string `json:"tenant"`
	// UserID is the user (all but room.*).
	UserID string `json:"user_id,omitempty"`
	// ConnectionID is the connection (connection.*, member.*, message.sent).
	ConnectionID string `json:"connection_id,omitempty"`
	// NodeID is the node holding the connection (connection.*, member.*).
	NodeID string `json:"node_id,omitempty"`
	// Transport is websocket, sse or socketio (connection.*).
	Transport string `json:"transport,omitempty"`
	// Code and Reason say how a connection closed (connection.closed).
	Code int `json:"code,omitempty"`
	// Reason is e.g. client_closed, stale, node_lost (connection.closed).
	Reason string `json:"reason,omitempty"`
	// Room is the room's name without the tenant (room.*, member.*, message.sent).
	Room string `json:"room,omitempty"`
	// Event, Epoch, Offset and Data describe a message.sent.
	Event string `json:"event,omitempty"`
	// Epoch of the room's stream (message.sent).
	Epoch string `json:"epoch,omitempty"`
	// Offset in the room's stream (message.sent).
	Offset int64 `json:"offset,omitempty"`
	// Data is the message's payload (message.sent).
	Data json.RawMessage `json:"data,omitempty"`
	// Raw is the event's JSON object as received.
	Raw json.RawMessage `json:"-"`
}

// SignWebhook returns the Herald-Signature value Herald would send for
// body at Unix time t (for tests and tools).
func SignWebhook(secret []byte, t int64, body []byte) string {
	return "t=" + strconv.FormatInt(t, 10) + ",v1=" + hex.EncodeToString(webhookMAC(secret, strconv.FormatInt(t, 10), body))
}

func webhookMAC(secret []byte, t string, body []byte) []byte {
	m := hmac.New(sha256.New, secret)
	m.Write([]byte(t))
	m.Write([]byte{'.'})
	m.Write(body)
	return m.Sum(nil)
}

// VerifyWebhook checks a webhook request and returns its events, oldest
// first. secret is webhooks.secret, signatureHeader the request's
// Herald-Signature, body the raw request body exactly as received (verify
// before parsing). The signature is compared in constant time, and any of
// several v1= values may match (a secret being rotated). t= must be within
// tolerance of the clock either way (0: DefaultWebhookTolerance). A failure
// is a *WebhookError.
func VerifyWebhook(secret []byte, signatureHeader string, body []byte, tolerance time.Duration) ([]WebhookEvent, error) {
	return VerifyWebhookAt(secret, signatureHeader, body, tolerance, time.Now())
}

// VerifyWebhookAt is VerifyWebhook with the clock reading now.
func VerifyWebhookAt(secret []byte, signatureHeader string, body []byte, tolerance time.Duration, now time.Time) ([]WebhookEvent, error) {
	if len(secret) == 0 {
		return nil, &WebhookError{Reason: WebhookSignatureMismatch, Message: "the secret is empty"}
	}
	if tolerance <= 0 {
		tolerance = DefaultWebhookTolerance
	}
	var ts string
	var candidates []string
	for _, part := range strings.Split(signatureHeader, ",") {
		name, value, ok := strings.Cut(strings.TrimSpace(part), "=")
		if !ok {
			continue
		}
		switch name {
		case "t":
			ts = value
		case "v1":
			candidates = append(candidates, value)
		}
	}
	t, err := strconv.ParseInt(ts, 10, 64)
	if err != nil || t < 0 {
		return nil, &WebhookError{Reason: WebhookMalformedHeader, Message: "Herald-Signature has no integer t="}
	}
	if len(candidates) == 0 {
		return nil, &WebhookError{Reason: WebhookMalformedHeader, Message: "Herald-Signature has no v1="}
	}
	skew := now.Sub(time.Unix(t, 0))
	if skew > tolerance || -skew > tolerance {
		return nil, &WebhookError{Reason: WebhookTimestampOutOfTolerance, Message: fmt.Sprintf("t=%d is more than %v from now", t, tolerance)}
	}
	expected := webhookMAC(secret, ts, body)
	matched := false
	// Every candidate is checked (no early exit), so timing reveals nothing.
	for _, c := range candidates {
		got, err := hex.DecodeString(c)
		if err == nil && hmac.Equal(expected, got) {
			matched = true
		}
	}
	if !matched {
		return nil, &WebhookError{Reason: WebhookSignatureMismatch, Message: "no v1= signature matches the body"}
	}
	return parseWebhookBatch(body)
}

func parseWebhookBatch(body []byte) ([]WebhookEvent, error) {
	var batch struct {
		Events *[]json.RawMessage `json:"events"`
	}
	if err := json.Unmarshal(body, &batch); err != nil || batch.Events == nil {
		return nil, &WebhookError{Reason: WebhookBadBody, Message: `the body is not {"events": [...]}`}
	}
	out := make([]WebhookEvent, 0, len(*batch.Events))
	for i, raw := range *batch.Events {
		var ev WebhookEvent
		if err := json.Unmarshal(raw, &ev); err != nil {
			return nil, &WebhookError{Reason: WebhookBadBody, Message: fmt.Sprintf("events[%d]: %v", i, err)}
		}
		if ev.ID == "" || ev.Type == "" || ev.TimeMs == 0 {
			return nil, &WebhookError{Reason: WebhookBadBody, Message: fmt.Sprintf("events[%d] lacks id, type or time_ms", i)}
		}
		ev.Raw = raw
		out = append(out, ev)
	}
	return out, nil
}
