package herald

import "encoding/json"

// PublishRequest is one event for POST /api/v1/publish. Room, Event and
// Data are required; Data is any value encoding/json accepts (a
// json.RawMessage is sent as is). Without IdempotencyKey the client makes
// a random one, so its retries never deliver twice.
type PublishRequest struct {
	Room              string `json:"room"`
	Event             string `json:"event"`
	Data              any    `json:"data"`
	Tenant            string `json:"tenant,omitempty"`
	IdempotencyKey    string `json:"idempotency_key,omitempty"`
	ExcludeConnection string `json:"exclude_connection,omitempty"`
}

// PublishResult is where a published event landed. Duplicate is true when
// the idempotency key had been seen before and nothing new was published
// (after a retry: an earlier attempt of the same call had landed).
type PublishResult struct {
	Room      string `json:"room"`
	Epoch     string `json:"epoch"`
	Offset    int64  `json:"offset"`
	Duplicate bool   `json:"duplicate"`
	// IdempotencyKey is the key the publish used (the client's own when none was given).
	IdempotencyKey string `json:"-"`
	// Attempts counts the HTTP requests the call made.
	Attempts int `json:"-"`
}

// BroadcastRequest is one event for 1 to 1000 rooms.
type BroadcastRequest struct {
	Rooms  []string `json:"rooms"`
	Event  string   `json:"event"`
	Data   any      `json:"data"`
	Tenant string   `json:"tenant,omitempty"`
}

// BroadcastResult is where a broadcast event landed in one room.
type BroadcastResult struct {
	Room   string `json:"room"`
	Epoch  string `json:"epoch"`
	Offset int64  `json:"offset"`
}

// HistoryOptions narrows a history read; the zero value reads from offset 0.
type HistoryOptions struct {
	// Since is the offset after which events are returned.
	Since int64
	// Epoch, when set and not the stream's, makes the answer empty.
	Epoch string
	// Limit caps the events returned (node default 100, at most 1000).
	Limit int
	// Tenant names the tenant; empty is the default tenant.
	Tenant string
}

// Event is one stored event or message frame.
type Event struct {
	Type    string          `json:"type"`
	Room    string          `json:"room"`
	Event   string          `json:"event"`
	Data    json.RawMessage `json:"data"`
	Epoch   string          `json:"epoch"`
	Offset  int64           `json:"offset"`
	TS      int64           `json:"ts"`
	EventID string          `json:"event_id"`
}

// History is a page of a room's history and the stream's current position.
// Complete is true when Events holds every event after Since.
type History struct {
	Room     string  `json:"room"`
	Epoch    string  `json:"epoch"`
	Offset   int64   `json:"offset"`
	Complete bool    `json:"complete"`
	Events   []Event `json:"events"`
}

// Member is one connection in a room.
type Member struct {
	UserID       string `json:"user_id"`
	ConnectionID string `json:"connection_id"`
	NodeID       string `json:"node_id"`
}

// Presence lists a room's members.
type Presence struct {
	Room    string   `json:"room"`
	Members []Member `json:"members"`
}

// Connection is one connection of a user; ConnectedAt is ms since the Unix epoch.
type Connection struct {
	ConnectionID string   `json:"connection_id"`
	NodeID       string   `json:"node_id"`
	Transport    string   `json:"transport"`
	Rooms        []string `json:"rooms"`
	ConnectedAt  int64    `json:"connected_at"`
}

// NodeStats are one node's totals.
type NodeStats struct {
	NodeID      string `json:"node_id"`
	Connections int64  `json:"connections"`
	Users       int64  `json:"users"`
	Rooms       int64  `json:"rooms"`
}

// BrokerStats describe the broker engine and what it holds.
type BrokerStats struct {
	Kind          string `json:"kind"`
	Streams       int64  `json:"streams"`
	HistoryEvents int64  `json:"history_events"`
	HistoryBytes  int64  `json:"history_bytes"`
}

// Stats are cluster totals with per-node and broker figures.
type Stats struct {
	Connections int64        `json:"connections"`
	Users       int64        `json:"users"`
	Rooms       int64        `json:"rooms"`
	Nodes       []NodeStats  `json:"nodes"`
	Broker      *BrokerStats `json:"broker"`
}

// TokenRequest asks the node to mint a token; TTL is a duration string
// such as "1h" (node default 1h).
type TokenRequest struct {
	Sub    string         `json:"sub"`
	Roles  []string       `json:"roles,omitempty"`
	Tenant string         `json:"tenant,omitempty"`
	TTL    string         `json:"ttl,omitempty"`
	Claims map[string]any `json:"claims,omitempty"`
}

// Token is a minted token and its exp (seconds since the Unix epoch).
type Token struct {
	Token     string `json:"token"`
	ExpiresAt int64  `json:"expires_at"`
}
