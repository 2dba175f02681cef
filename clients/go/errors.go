package herald

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
)

// Herald's error codes (docs/protocol.md, section 2).
const (
	CodeBadRequest    = "bad_request"
	CodeUnauthorized  = "unauthorized"
	CodeForbidden     = "forbidden"
	CodeNotFound      = "not_found"
	CodeTooLarge      = "too_large"
	CodeLimitExceeded = "limit_exceeded"
	CodeUnavailable   = "unavailable"
	CodeInternal      = "internal"
)

// MaxBodyBytes is the node's fixed limit on an API request body (413
// too_large beyond); the client refuses larger bodies without sending them.
const MaxBodyBytes = 2 << 20

// Error is an error answer of the node: its HTTP status and the code and
// message of the JSON body {"error":{"code","message"}}. Test for a kind
// with errors.Is(err, herald.ErrUnavailable) and friends.
type Error struct {
	// Status is the HTTP status.
	Status int
	// Code is Herald's error code, e.g. "bad_request".
	Code string
	// Message is the node's explanation.
	Message string
}

// Error implements error.
func (e *Error) Error() string {
	return fmt.Sprintf("herald: %s (%d): %s", e.Code, e.Status, e.Message)
}

// Is matches the sentinels below by code (and by status when the sentinel
// has one), so errors.Is(err, ErrBadRequest) also holds for a 409.
func (e *Error) Is(target error) bool {
	t, ok := target.(*Error)
	if !ok {
		return false
	}
	return t.Code == e.Code && (t.Status == 0 || t.Status == e.Status)
}

// Sentinels for errors.Is, one per error code.
var (
	// ErrBadRequest: malformed body, bad room name, bad query (400, 405, 409).
	ErrBadRequest = &Error{Code: CodeBadRequest}
	// ErrIdempotencyConflict: the idempotency key was first used for another room (409).
	ErrIdempotencyConflict = &Error{Code: CodeBadRequest, Status: http.StatusConflict}
	// ErrUnauthorized: missing or unknown API key (401).
	ErrUnauthorized = &Error{Code: CodeUnauthorized}
	// ErrForbidden: the API key lacks the scope (403).
	ErrForbidden = &Error{Code: CodeForbidden}
	// ErrNotFound: unknown route, usually a wrong base URL (404).
	ErrNotFound = &Error{Code: CodeNotFound}
	// ErrTooLarge: request body over 2 MiB (413).
	ErrTooLarge = &Error{Code: CodeTooLarge}
	// ErrLimitExceeded: a per-user connection limit (429).
	ErrLimitExceeded = &Error{Code: CodeLimitExceeded}
	// ErrUnavailable: broker unreachable, node full or draining (503; a proxy's 502/504 too).
	ErrUnavailable = &Error{Code: CodeUnavailable}
	// ErrInternal: a bug in the node (500).
	ErrInternal = &Error{Code: CodeInternal}
)

// TransportError is a call that got no usable answer: the connection could
// not be made, broke mid-call, or timed out. Err is the underlying error.
type TransportError struct {
	// Op names the call, e.g. "publish".
	Op string
	// Timeout is true when no answer arrived within the client's timeout.
	Timeout bool
	// Err is what net/http reported.
	Err error
}

// Error implements error.
func (e *TransportError) Error() string {
	if e.Timeout {
		return fmt.Sprintf("herald: %s: no answer in time: %v", e.Op, e.Err)
	}
	return fmt.Sprintf("herald: %s: could not reach the node: %v", e.Op, e.Err)
}

// Unwrap returns the underlying error.
func (e *TransportError) Unwrap() error { return e.Err }

// Is matches ErrTimeout for timeouts and ErrConnection otherwise.
func (e *TransportError) Is(target error) bool {
	if target == ErrTimeout {
		return e.Timeout
	}
	return target == ErrConnection && !e.Timeout
}

var (
	// ErrConnection matches a TransportError that is not a timeout.
	ErrConnection = errors.New("herald: connection failed")
	// ErrTimeout matches a TransportError that is a timeout.
	ErrTimeout = errors.New("herald: timed out")
)

var codeByStatus = map[int]string{
	400: CodeBadRequest, 401: CodeUnauthorized, 403: CodeForbidden, 404: CodeNotFound,
	413: CodeTooLarge, 429: CodeLimitExceeded, 502: CodeUnavailable, 503: CodeUnavailable,
	504: CodeUnavailable,
}

// errorFromResponse builds the Error of an error answer; a body without
// Herald's JSON (a proxy's page) gets the code of its status.
func errorFromResponse(status int, body []byte) *Error {
	var parsed struct {
		Error *struct {
			Code    string `json:"code"`
			Message string `json:"message"`
		} `json:"error"`
	}
	if json.Unmarshal(body, &parsed) == nil && parsed.Error != nil && parsed.Error.Code != "" {
		return &Error{Status: status, Code: parsed.Error.Code, Message: parsed.Error.Message}
	}
	code, ok := codeByStatus[status]
	if !ok {
		code = CodeBadRequest
		if status >= 500 {
			code = CodeInternal
		}
	}
	msg := string(body)
	if len(msg) > 200 {
		msg = msg[:200]
	}
	if msg == "" {
		msg = http.StatusText(status)
	}
	return &Error{Status: status, Code: code, Message: msg}
}
