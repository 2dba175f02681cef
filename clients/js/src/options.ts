import type { BackoffOptions } from './backoff.js';
import type { Encoding } from './codec.js';
import type {
  EventsDropped,
  EventSourceConstructor,
  HeraldDirectEvent,
  HeraldEvent,
  RecoveryFailed,
  StateChange,
  TransportKind,
  WebSocketConstructor,
} from './types.js';

export interface ConnectOptions {
  /**
   * The node's base URL: `https://herald.example.com` (or `wss://`,
   * `http://127.0.0.1:8080`). `/ws` and `/sse` are appended; a URL that
   * already ends in `/ws` or `/sse` is accepted too. Relative URLs resolve
   * against the page in browsers.
   */
  url: string;
  /** A fixed token. Without `getToken` it is never refreshed. */
  token?: string;
  /**
   * Returns a fresh token. Called on connect, shortly before the current
   * token's `exp`, and after the server closed with 4012 (token expired).
   */
  getToken?: () => string | Promise<string>;
  /** WebSocket implementation; default `globalThis.WebSocket` (in Node 20, pass `ws`). */
  WebSocket?: WebSocketConstructor;
  /** EventSource implementation; default `globalThis.EventSource`. */
  EventSource?: EventSourceConstructor;
  /**
   * Frame encoding on WebSocket: `'json'` (default) or `'msgpack'`, which
   * offers the `herald.v1.msgpack` subprotocol and exchanges MessagePack
   * binary frames (event `data` arrives as the same values). SSE is always
   * JSON.
   */
  encoding?: Encoding;
  /** Transports to use, in order of preference. Default `['websocket', 'sse']`. */
  transports?: TransportKind[];
  /** Reconnect delays: full jitter over exponential bounds. Default 500 ms to 30 s. */
  backoff?: BackoffOptions;
  /** Time allowed for each request's reply (and for `join` to complete). Default 10 s. */
  requestTimeoutMs?: number;
  /** Consecutive WebSocket connect failures before falling back to SSE. Default 3. */
  fallbackAfter?: number;
  /** Refresh the token this long before `exp` (at most half its remaining life). Default 30 s. */
  refreshLeadMs?: number;
  /**
   * Interval of client `ping` frames on WebSocket, which detect dead
   * connections the browser cannot see. Default: the server's
   * `heartbeat_interval_ms`; 0 turns pings off.
   */
  pingIntervalMs?: number;
  /** `fetch`, used to read why an SSE stream was refused; default `globalThis.fetch`. */
  fetch?: typeof fetch;
}

/** Events of the client itself (rooms have their own, see `Room`). */
export interface ClientEvents {
  /** Every state change. */
  state: StateChange;
  connecting: StateChange;
  connected: StateChange;
  reconnecting: StateChange;
  disconnected: StateChange;
  /** Every `event` and `message` frame of every room, in each room's offset order. */
  event: HeraldEvent;
  /** `message` frames only. */
  message: HeraldEvent;
  /**
   * Direct messages sent to this user or connection through the HTTP API
   * (`room: null`, no epoch or offset). Not resumable: one sent while the
   * client is reconnecting is never delivered.
   */
  direct: HeraldDirectEvent;
  /** A room could not be resumed after a reconnect; reload it. */
  recovery_failed: RecoveryFailed;
  /**
   * The server dropped events of a room from this connection's full queue
   * (a slow link, namespace `overflow = "drop"`). The client is already
   * re-joining the room from `offset`: the dropped events follow, in order.
   */
  events_dropped: EventsDropped;
  /** An error not tied to a request: an unsolicited `error` frame, a failed token refresh. */
  error: Error;
  /** A new token was accepted (sent with `authenticate`, or a reopened SSE stream). */
  token_refreshed: { expiresAt?: number };
  /** The client switched transports (e.g. fell back to SSE). */
  transport: { from?: TransportKind; to: TransportKind };
}


/** @internal The client's counters (`HeraldClient.stats`), updated by its parts. */
export interface ClientStats {
  reconnects: number;
  duplicatesDropped: number;
  tokenRefreshes: number;
  recoveryFailures: number;
  /** Rooms re-joined after an `events_dropped` notice. */
  eventsDropped: number;
}

/** @internal Emits one of the client's events (`ClientEvents`, or a state name). */
export type EmitFn = (name: string, arg: unknown) => void;
