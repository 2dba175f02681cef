import { Connection } from './connection.js';
import { Emitter } from './emitter.js';
import { HeraldError, UnsupportedError } from './errors.js';
import type { ClientEvents, ConnectOptions } from './options.js';
import type { RequestKind } from './requests.js';
import type { Room, RoomOwner } from './room.js';
import type { ConnectionState, Position, TransportKind } from './types.js';

export type { ClientEvents, ConnectOptions } from './options.js';

/** Options of {@link HeraldClient.rpc}. */
export interface RpcOptions {
  /** Time allowed for the reply, in ms. Default: the client's `requestTimeoutMs`. */
  timeoutMs?: number;
}

/** Opens a client and starts connecting. */
export function connect(options: ConnectOptions): HeraldClient {
  const client = new HeraldClient(options);
  client.open();
  return client;
}

/**
 * A Herald connection that stays up: it reconnects with backoff, resumes
 * every room without gaps or duplicates, refreshes its token, and falls back
 * to SSE when WebSocket cannot connect.
 */
export class HeraldClient extends Emitter<ClientEvents> implements RoomOwner {
  /** Counters, for monitoring and tests. */
  readonly stats = { reconnects: 0, duplicatesDropped: 0, tokenRefreshes: 0, recoveryFailures: 0, eventsDropped: 0 };
  private readonly conn: Connection;

  constructor(options: ConnectOptions) {
    super();
    if (!options || typeof options.url !== 'string') throw new TypeError('connect: `url` is required');
    if (!options.token && !options.getToken) throw new TypeError('connect: give `token` or `getToken`');
    const emit = (name: string, arg: unknown) => this.emit(name, arg);
    this.conn = new Connection({ ...options }, this, emit, this.stats, options.requestTimeoutMs ?? 10_000);
  }

  get state(): ConnectionState {
    return this.conn.state;
  }
  /** The transport in use (or being tried). */
  get transport(): TransportKind | undefined {
    return this.conn.transportKind;
  }
  get connectionId(): string | undefined {
    return this.conn.connectionId;
  }
  get userId(): string | undefined {
    return this.conn.userId;
  }
  get nodeId(): string | undefined {
    return this.conn.nodeId;
  }
  /** Rooms the application is in (or joining). */
  get rooms(): Room<any>[] {
    return this.conn.rooms.desired();
  }

  /** Starts connecting (done by `connect`). */
  open(): void {
    this.conn.open();
  }

  /** The handle of a room, created on first use; attach listeners before joining to see every event. */
  room<E extends Record<string, unknown> = Record<string, unknown>>(name: string): Room<E> {
    return this.conn.rooms.room<E>(name);
  }

  /**
   * Joins a room; resolves once the server confirmed it. The room stays
   * joined across reconnects (resumed with `since`) until `leave`.
   */
  join<E extends Record<string, unknown> = Record<string, unknown>>(name: string): Promise<Room<E>> {
    return this.conn.rooms.join<E>(name);
  }

  /** Leaves a room. Resolves when the server confirmed it (at once when offline). */
  leave(name: string): Promise<void> {
    return this.conn.rooms.leave(name);
  }

  /**
   * `send_message`: delivers `data` to the room's members as a `message`
   * frame; resolves with its position. WebSocket only: over SSE it rejects
   * with `UnsupportedError`. Waits for the connection (up to the request
   * timeout) while reconnecting.
   */
  send(room: string, data: unknown, event?: string): Promise<Position> {
    const conn = this.conn;
    if (conn.closed) return Promise.reject(new HeraldError('closed', 'the client is closed'));
    const unsupported = () => new UnsupportedError('send is not available over SSE (a one-way transport)');
    const go = (): Promise<Position> => {
      if (conn.transportKind === 'sse') return Promise.reject(unsupported());
      if (!conn.transportKind || !conn.authed) return Promise.reject(new HeraldError('disconnected', 'not connected'));
      const frame: Record<string, unknown> = { type: 'send_message', room, data };
      if (event !== undefined) frame.event = event;
      return conn.request(frame, 'send').then((ack) => ({ epoch: ack.epoch, offset: ack.offset }));
    };
    if (conn.authed) return go();
    if (conn.transportKind === 'sse' || !conn.choice.canUse('websocket') || conn.choice.sseOnly) {
      return Promise.reject(unsupported());
    }
    return conn.requests.whenConnected().then(go);
  }

  /**
   * `rpc`: asks the application backend (the node's `proxy.rpc_url`) and
   * resolves with its JSON answer (the `rpc_result` frame's `data`).
   * Rejects with a {@link HeraldError} carrying the `error` frame's code
   * (`unavailable`: the backend could not answer, retry later; `not_found`:
   * unknown method, or rpc not enabled on the node; `forbidden`;
   * `bad_request`; `limit_exceeded`: 8 calls already in flight), with
   * `timeout` when no reply came within `options.timeoutMs`, and with
   * `disconnected` when the connection dropped first (the call is not
   * retried: the backend may or may not have run it). WebSocket only: over
   * SSE it rejects with `UnsupportedError`. Waits for the connection (up to
   * the request timeout) while reconnecting.
   */
  rpc<T = unknown>(method: string, data?: unknown, options: RpcOptions = {}): Promise<T> {
    const conn = this.conn;
    if (conn.closed) return Promise.reject(new HeraldError('closed', 'the client is closed'));
    if (typeof method !== 'string' || method.length === 0) {
      return Promise.reject(new TypeError('rpc: `method` must be a non-empty string'));
    }
    const timeout = options.timeoutMs;
    if (timeout !== undefined && !(Number.isFinite(timeout) && timeout > 0)) {
      return Promise.reject(new TypeError('rpc: `timeoutMs` must be a positive number of ms'));
    }
    const unsupported = () => new UnsupportedError('rpc is not available over SSE (a one-way transport)');
    const go = (): Promise<T> => {
      if (conn.transportKind === 'sse') return Promise.reject(unsupported());
      if (!conn.transportKind || !conn.authed) return Promise.reject(new HeraldError('disconnected', 'not connected'));
      const frame: Record<string, unknown> = { type: 'rpc', method, data: data === undefined ? null : data };
      return conn.request(frame, 'rpc', timeout).then((reply) => reply.data as T);
    };
    if (conn.authed) return go();
    if (conn.transportKind === 'sse' || !conn.choice.canUse('websocket') || conn.choice.sseOnly) {
      return Promise.reject(unsupported());
    }
    return conn.requests.whenConnected().then(go);
  }

  /**
   * Adds event-name patterns to the filter (the first call replaces the
   * initial `*`). Only `event` frames are filtered; `message` frames always
   * pass. Kept across reconnects.
   */
  async subscribe(patterns: string | string[]): Promise<void> {
    const list = Array.isArray(patterns) ? patterns : [patterns];
    const filter = this.conn.filter;
    if (!filter.touched) filter.patterns = [];
    filter.touched = true;
    for (const p of list) if (!filter.patterns.includes(p)) filter.patterns.push(p);
    await this.applyFilter({ type: 'subscribe', events: list }, 'subscribe');
  }

  /** Removes patterns given earlier. */
  async unsubscribe(patterns: string | string[]): Promise<void> {
    const list = Array.isArray(patterns) ? patterns : [patterns];
    const filter = this.conn.filter;
    filter.touched = true;
    filter.patterns = filter.patterns.filter((p) => !list.includes(p));
    await this.applyFilter({ type: 'unsubscribe', events: list }, 'unsubscribe');
  }

  /** Round trip time of a `ping` frame, in ms (WebSocket only). */
  async ping(): Promise<number> {
    await this.conn.requests.whenConnected();
    if (this.conn.transportKind !== 'websocket') throw new UnsupportedError('ping is not available over SSE');
    const start = Date.now();
    await this.conn.request({ type: 'ping' }, 'ping');
    return Date.now() - start;
  }

  /** Closes the connection for good. */
  close(): void {
    this.conn.close();
  }

  /** Sends a filter change over WebSocket; on SSE, reopens the stream with the new filter. */
  private async applyFilter(frame: Record<string, unknown>, kind: RequestKind): Promise<void> {
    if (!this.conn.authed || !this.conn.transportKind) return;
    if (this.conn.transportKind === 'sse') {
      this.conn.queueReopen();
      return;
    }
    await this.conn.request(frame, kind);
  }
}
