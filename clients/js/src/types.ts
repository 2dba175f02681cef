import type { ProtocolErrorCode } from './errors.js';

/** A room's stream position: the epoch of its stream and an event offset. */
export interface Position {
  epoch: string;
  offset: number;
}

export interface Member {
  user_id: string;
  connection_id: string;
  node_id?: string;
}

/** An `event` (published through the HTTP API) or `message` (sent by a client) frame. */
export interface HeraldEvent<T = unknown, N extends string = string> {
  type: 'event' | 'message';
  room: string;
  /** Event name, e.g. `project.updated`; `message` frames default to `message`. */
  event: N;
  data: T;
  epoch: string;
  offset: number;
  /** When the event was published, ms since the Unix epoch. */
  ts?: number;
  event_id?: string;
  /** The sender of a `message` frame. */
  from?: { user_id: string; connection_id: string };
}

/**
 * A direct message (`POST /api/v1/users/{id}/send` or
 * `/api/v1/connections/{id}/send`): an `event` frame with `room: null`, sent
 * to one connection or to every connection of a user. It is in no room's
 * stream: it has no `epoch` or `offset`, and it is **not resumable** (a
 * client that was not connected when it was sent never gets it).
 */
export interface HeraldDirectEvent<T = unknown, N extends string = string> {
  type: 'event';
  room: null;
  event: N;
  data: T;
  /** When the event was sent, ms since the Unix epoch. */
  ts?: number;
  event_id?: string;
}

/** The reply to an `rpc` frame: the application backend's JSON answer. */
export interface RpcResultFrame {
  type: 'rpc_result';
  id: number | string;
  data: unknown;
}

export interface AuthenticatedFrame {
  type: 'authenticated';
  id?: number | string;
  connection_id: string;
  user_id: string;
  node_id: string;
  rooms: Array<{ room: string; epoch: string; offset: number }>;
  heartbeat_interval_ms?: number;
}

export interface RoomJoinedFrame {
  type: 'room_joined';
  id?: number | string;
  room: string;
  epoch: string;
  offset: number;
  recovered?: boolean;
  replayed?: number;
  members?: Member[];
}

export interface RoomLeftFrame {
  type: 'room_left';
  id?: number | string;
  room: string;
  reason?: string;
}

export interface MemberFrame {
  type: 'member_joined' | 'member_left';
  room: string;
  user_id: string;
  connection_id: string;
}

export interface AckFrame {
  type: 'ack';
  id: number | string;
  epoch?: string;
  offset?: number;
}

export interface PongFrame {
  type: 'pong';
  id?: number | string;
}

export interface ErrorFrame {
  type: 'error';
  id?: number | string;
  code: ProtocolErrorCode;
  message: string;
}

/** `events_dropped`: a full server queue dropped events of these rooms (namespace `overflow = "drop"`). */
export interface EventsDroppedFrame {
  type: 'events_dropped';
  /** Each room and the position just before its first dropped event. */
  rooms: Array<{ room: string; epoch: string; offset: number }>;
}

/** What the client emits for each room of an `events_dropped` frame, after it started recovering the room. */
export interface EventsDropped {
  room: string;
  /** The position the room is resumed from (just before the first dropped event). */
  epoch: string;
  offset: number;
}

export interface DisconnectFrame {
  type: 'disconnect';
  code: number;
  reason: string;
  reconnect: boolean;
}

export type ServerFrame =
  | AuthenticatedFrame
  | RoomJoinedFrame
  | RoomLeftFrame
  | MemberFrame
  | AckFrame
  | PongFrame
  | ErrorFrame
  | DisconnectFrame
  | EventsDroppedFrame
  | RpcResultFrame
  | HeraldDirectEvent
  | (HeraldEvent & { type: 'event' | 'message' });

/** Minimal shape of a WebSocket constructor (the browser's, or `ws`'s in Node). */
export interface WebSocketLike {
  readonly readyState: number;
  onopen: ((ev: any) => void) | null;
  onmessage: ((ev: { data: any }) => void) | null;
  onclose: ((ev: { code: number; reason: string; wasClean?: boolean }) => void) | null;
  onerror: ((ev: any) => void) | null;
  /** Set to `'arraybuffer'` for MessagePack (browsers and `ws` both take it). */
  binaryType?: string;
  send(data: string | Uint8Array): void;
  close(code?: number, reason?: string): void;
}
export type WebSocketConstructor = new (url: string, protocols?: string | string[]) => WebSocketLike;

/** Minimal shape of an EventSource constructor. */
export interface EventSourceLike {
  readonly readyState: number;
  onopen: ((ev: any) => void) | null;
  onerror: ((ev: any) => void) | null;
  addEventListener(type: string, listener: (ev: any) => void): void;
  close(): void;
}
export type EventSourceConstructor = new (url: string, init?: any) => EventSourceLike;

export type TransportKind = 'websocket' | 'sse';

export type ConnectionState = 'idle' | 'connecting' | 'connected' | 'reconnecting' | 'disconnected';

/** Payload of every connection state event. */
export interface StateChange {
  state: ConnectionState;
  previous: ConnectionState;
  transport?: TransportKind;
  /** Close code of the connection that ended (WebSocket codes, or the `disconnect` frame's). */
  code?: number;
  reason?: string;
  /** Reconnect attempt number (from 1), with `reconnecting`. */
  attempt?: number;
  /** Delay before that attempt, with `reconnecting`. */
  delayMs?: number;
  /** With `disconnected`: the error that ended the client, if any. */
  error?: Error;
}

/** Emitted when a room could not be resumed: the app should reload its state. */
export interface RecoveryFailed {
  room: string;
  /** Where the client was. */
  previous: Position;
  /** Where the room's stream stands now; delivery continues from here. */
  epoch: string;
  offset: number;
}
