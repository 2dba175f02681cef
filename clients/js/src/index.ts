export { connect, HeraldClient } from './client.js';
export type { ConnectOptions, ClientEvents, RpcOptions } from './client.js';
export { Room } from './room.js';
export type { RoomLifecycleEvents } from './room.js';
export { HeraldError, TimeoutError, UnsupportedError } from './errors.js';
export type { HeraldErrorCode, ProtocolErrorCode, ClientErrorCode } from './errors.js';
export { backoffDelay } from './backoff.js';
export type { BackoffOptions } from './backoff.js';
export type { Encoding } from './codec.js';
export { decodeJwtPayload, tokenExpiryMs } from './jwt.js';
export type { Unsubscribe } from './emitter.js';
export type {
  ConnectionState,
  EventSourceConstructor,
  EventSourceLike,
  EventsDropped,
  HeraldDirectEvent,
  HeraldEvent,
  Member,
  Position,
  RecoveryFailed,
  RpcResultFrame,
  ServerFrame,
  StateChange,
  TransportKind,
  WebSocketConstructor,
  WebSocketLike,
} from './types.js';
