import { backoffDelay, type BackoffOptions } from './backoff.js';
import { Emitter } from './emitter.js';
import { HeraldError, TimeoutError, UnsupportedError } from './errors.js';
import { tokenExpiryMs } from './jwt.js';
import { Room, type RoomOwner } from './room.js';
import { SseTransport, WebSocketTransport, type CloseInfo, type Transport } from './transport.js';
import type {
  AuthenticatedFrame,
  ConnectionState,
  DisconnectFrame,
  EventSourceConstructor,
  HeraldEvent,
  Position,
  RecoveryFailed,
  RoomJoinedFrame,
  ServerFrame,
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
  /** A room could not be resumed after a reconnect; reload it. */
  recovery_failed: RecoveryFailed;
  /** An error not tied to a request: an unsolicited `error` frame, a failed token refresh. */
  error: Error;
  /** A new token was accepted (sent with `authenticate`, or a reopened SSE stream). */
  token_refreshed: { expiresAt?: number };
  /** The client switched transports (e.g. fell back to SSE). */
  transport: { from?: TransportKind; to: TransportKind };
}

/** Close codes after which the client does not reconnect (PROTOCOL.md 3). */
const NO_RECONNECT = new Set([1000, 1007, 1009, 4001, 4008, 4010, 4013, 4029]);

type RequestKind = 'authenticate' | 'join' | 'leave' | 'subscribe' | 'unsubscribe' | 'send' | 'ping';

interface Pending {
  kind: RequestKind;
  gen: number;
  resolve(frame: any): void;
  reject(err: Error): void;
  timer: ReturnType<typeof setTimeout> | undefined;
}

interface Waiter {
  resolve(): void;
  reject(err: Error): void;
  timer: ReturnType<typeof setTimeout> | undefined;
}

function endpoints(url: string): { ws: string; sse: string } {
  const base = (globalThis as { location?: { href: string } }).location?.href;
  const u = base ? new URL(url, base) : new URL(url);
  let path = u.pathname.replace(/\/+$/, '');
  if (path.endsWith('/ws')) path = path.slice(0, -3);
  else if (path.endsWith('/sse')) path = path.slice(0, -4);
  const secure = u.protocol === 'https:' || u.protocol === 'wss:';
  return {
    ws: `${secure ? 'wss' : 'ws'}://${u.host}${path}/ws`,
    sse: `${secure ? 'https' : 'http'}://${u.host}${path}/sse`,
  };
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
  private readonly opts: ConnectOptions;
  private readonly urls: { ws: string; sse: string };
  private readonly timeoutMs: number;
  private _state: ConnectionState = 'idle';
  private t: Transport | null = null;
  private gen = 0;
  private authed = false;
  private authReqId: number | undefined;
  private nextId = 1;
  private pending = new Map<number, Pending>();
  private waiters: Waiter[] = [];
  private roomMap = new Map<string, Room<any>>();
  private leftAuto = new Set<string>();
  private filter = { touched: false, patterns: ['*'] };
  private token: string | undefined;
  private tokenExp: number | undefined;
  private retriedAuth = false;
  private attempt = 0;
  private wsFailures = 0;
  private sseOnly = false;
  private closed = false;
  private advice: DisconnectFrame | undefined;
  private reconnectTimer: ReturnType<typeof setTimeout> | undefined;
  private refreshTimer: ReturnType<typeof setTimeout> | undefined;
  private pingTimer: ReturnType<typeof setInterval> | undefined;
  private reopenQueued = false;
  private lastKind: TransportKind | undefined;
  /** Rooms and filter the current SSE stream was opened with. */
  private sseSnapshot = { rooms: '', events: '' };
  private _connectionId: string | undefined;
  private _userId: string | undefined;
  private _nodeId: string | undefined;
  private heartbeatMs: number | undefined;
  /** Counters, for monitoring and tests. */
  readonly stats = { reconnects: 0, duplicatesDropped: 0, tokenRefreshes: 0, recoveryFailures: 0 };

  constructor(options: ConnectOptions) {
    super();
    if (!options || typeof options.url !== 'string') throw new TypeError('connect: `url` is required');
    if (!options.token && !options.getToken) throw new TypeError('connect: give `token` or `getToken`');
    this.opts = { ...options };
    this.urls = endpoints(options.url);
    this.timeoutMs = options.requestTimeoutMs ?? 10_000;
    this.token = options.token;
    this.tokenExp = options.token ? tokenExpiryMs(options.token) : undefined;
  }

  // ----- public surface -------------------------------------------------

  get state(): ConnectionState {
    return this._state;
  }
  /** The transport in use (or being tried). */
  get transport(): TransportKind | undefined {
    return this.t?.kind;
  }
  get connectionId(): string | undefined {
    return this._connectionId;
  }
  get userId(): string | undefined {
    return this._userId;
  }
  get nodeId(): string | undefined {
    return this._nodeId;
  }
  /** Rooms the application is in (or joining). */
  get rooms(): Room<any>[] {
    return [...this.roomMap.values()].filter((r) => r._desired);
  }

  /** Starts connecting (done by `connect`). */
  open(): void {
    if (this._state !== 'idle') return;
    this.setState('connecting', {});
    void this.attemptConnect();
  }

  /** The handle of a room, created on first use; attach listeners before joining to see every event. */
  room<E extends Record<string, unknown> = Record<string, unknown>>(name: string): Room<E> {
    let r = this.roomMap.get(name);
    if (!r) {
      r = new Room<E>(name, this);
      this.roomMap.set(name, r);
    }
    return r as Room<E>;
  }

  /**
   * Joins a room; resolves once the server confirmed it. The room stays
   * joined across reconnects (resumed with `since`) until `leave`.
   */
  join<E extends Record<string, unknown> = Record<string, unknown>>(name: string): Promise<Room<E>> {
    if (this.closed) return Promise.reject(new HeraldError('closed', 'the client is closed'));
    const room = this.room<E>(name);
    if (room._desired && room._joined && !room._resyncing) return Promise.resolve(room);
    const first = !room._desired;
    room._desired = true;
    this.leftAuto.delete(name);
    const p = room._wait(this.timeoutMs, () => {
      if (!room._joined && room._waiters.length === 0) room._desired = false;
    }) as Promise<Room<E>>;
    if (first && this.authed && this.t) {
      if (this.t.kind === 'websocket') this.sendJoin(room);
      else this.queueReopen();
    }
    return p;
  }

  /** Leaves a room. Resolves when the server confirmed it (at once when offline). */
  async leave(name: string): Promise<void> {
    const room = this.roomMap.get(name);
    if (!room || !room._desired) return;
    room._desired = false;
    room._resyncing = false;
    room._position = undefined;
    room._settle(new HeraldError('not_joined', `left ${name} while joining it`));
    if (room._auto) this.leftAuto.add(name);
    const wasJoined = room._joined;
    room._joined = false;
    if (this.authed && this.t?.kind === 'websocket' && wasJoined) {
      try {
        await this.request({ type: 'leave_room', room: name }, 'leave');
      } catch (err) {
        if (!(err instanceof HeraldError) || err.code !== 'not_joined') throw err;
      }
    } else if (this.authed && this.t?.kind === 'sse') {
      this.queueReopen();
    }
    room._setMembers(undefined);
    room._emit('left', { room: name });
  }

  /**
   * `send_message`: delivers `data` to the room's members as a `message`
   * frame; resolves with its position. WebSocket only: over SSE it rejects
   * with `UnsupportedError`. Waits for the connection (up to the request
   * timeout) while reconnecting.
   */
  send(room: string, data: unknown, event?: string): Promise<Position> {
    if (this.closed) return Promise.reject(new HeraldError('closed', 'the client is closed'));
    const unsupported = () => new UnsupportedError('send is not available over SSE (a one-way transport)');
    const go = (): Promise<Position> => {
      if (this.t?.kind === 'sse') return Promise.reject(unsupported());
      if (!this.t || !this.authed) return Promise.reject(new HeraldError('disconnected', 'not connected'));
      const frame: Record<string, unknown> = { type: 'send_message', room, data };
      if (event !== undefined) frame.event = event;
      return this.request(frame, 'send').then((ack) => ({ epoch: ack.epoch, offset: ack.offset }));
    };
    if (this.authed) return go();
    if (this.t?.kind === 'sse' || !this.canUse('websocket') || this.sseOnly) return Promise.reject(unsupported());
    return this.whenConnected().then(go);
  }

  /**
   * Adds event-name patterns to the filter (the first call replaces the
   * initial `*`). Only `event` frames are filtered; `message` frames always
   * pass. Kept across reconnects.
   */
  async subscribe(patterns: string | string[]): Promise<void> {
    const list = Array.isArray(patterns) ? patterns : [patterns];
    if (!this.filter.touched) this.filter.patterns = [];
    this.filter.touched = true;
    for (const p of list) if (!this.filter.patterns.includes(p)) this.filter.patterns.push(p);
    await this.applyFilter({ type: 'subscribe', events: list }, 'subscribe');
  }

  /** Removes patterns given earlier. */
  async unsubscribe(patterns: string | string[]): Promise<void> {
    const list = Array.isArray(patterns) ? patterns : [patterns];
    this.filter.touched = true;
    this.filter.patterns = this.filter.patterns.filter((p) => !list.includes(p));
    await this.applyFilter({ type: 'unsubscribe', events: list }, 'unsubscribe');
  }

  /** Round trip time of a `ping` frame, in ms (WebSocket only). */
  async ping(): Promise<number> {
    await this.whenConnected();
    if (this.t?.kind !== 'websocket') throw new UnsupportedError('ping is not available over SSE');
    const start = Date.now();
    await this.request({ type: 'ping' }, 'ping');
    return Date.now() - start;
  }

  /** Closes the connection for good. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.t?.close(1000, 'client closed');
    this.t = null;
    this.authed = false;
    this.finish(1000, 'client closed');
  }

  // ----- connecting -----------------------------------------------------

  private canUse(kind: TransportKind): boolean {
    const list = this.opts.transports ?? ['websocket', 'sse'];
    if (!list.includes(kind)) return false;
    if (kind === 'websocket') return !!this.wsCtor();
    return !!this.esCtor();
  }

  private wsCtor(): WebSocketConstructor | undefined {
    return this.opts.WebSocket ?? (globalThis as { WebSocket?: WebSocketConstructor }).WebSocket;
  }

  private esCtor(): EventSourceConstructor | undefined {
    return this.opts.EventSource ?? (globalThis as { EventSource?: EventSourceConstructor }).EventSource;
  }

  private chooseTransport(): TransportKind | undefined {
    const list = this.opts.transports ?? ['websocket', 'sse'];
    for (const kind of list) {
      if (kind === 'websocket' && this.sseOnly) continue;
      if (this.canUse(kind)) return kind;
    }
    return undefined;
  }

  private async currentToken(): Promise<string> {
    const { getToken } = this.opts;
    const fresh = this.token && (this.tokenExp === undefined || this.tokenExp - Date.now() > 1000);
    if (fresh || !getToken) {
      if (!this.token) throw new HeraldError('unauthorized', 'no token');
      return this.token;
    }
    this.setToken(await getToken());
    return this.token!;
  }

  private setToken(token: string): void {
    if (typeof token !== 'string' || !token) throw new HeraldError('unauthorized', 'getToken returned no token');
    this.token = token;
    this.tokenExp = tokenExpiryMs(token);
  }

  private async attemptConnect(): Promise<void> {
    this.reconnectTimer = undefined;
    const gen = ++this.gen;
    let token: string;
    try {
      token = await this.currentToken();
    } catch (err) {
      if (this.closed || gen !== this.gen) return;
      this.emit('error', err instanceof Error ? err : new Error(String(err)));
      this.scheduleReconnect(1006, 'getToken failed');
      return;
    }
    if (this.closed || gen !== this.gen) return;
    const kind = this.chooseTransport();
    if (!kind) {
      this.finish(1006, 'no usable transport', new HeraldError('unsupported', 'no WebSocket or EventSource implementation available'));
      return;
    }
    const prev = this.lastKind;
    this.lastKind = kind;
    const handlers = {
      onOpen: () => gen === this.gen && this.onOpen(token),
      onFrame: (f: ServerFrame) => gen === this.gen && this.onFrame(f),
      onClose: (info: CloseInfo) => gen === this.gen && this.onClose(info),
      onInterrupted: () => gen === this.gen && this.onInterrupted(),
    };
    if (kind === 'websocket') {
      this.t = new WebSocketTransport(this.wsCtor()!, this.urls.ws, handlers);
    } else {
      const f = this.opts.fetch ?? (typeof fetch === 'function' ? fetch.bind(globalThis) : undefined);
      this.t = new SseTransport(this.esCtor()!, this.sseUrl(token), handlers, f);
    }
    if (prev !== kind && (prev || kind === 'sse')) this.emit('transport', { ...(prev ? { from: prev } : {}), to: kind });
  }

  private sseUrl(token: string): string {
    const q: string[] = [];
    const rooms = [...this.roomMap.values()].filter((r) => r._desired && !r._auto).map((r) => r.name);
    if (rooms.length) q.push(`rooms=${encodeURIComponent(rooms.join(','))}`);
    const events = this.filter.touched ? this.filter.patterns.join(',') : '';
    if (events) q.push(`events=${encodeURIComponent(events)}`);
    this.sseSnapshot = { rooms: rooms.join(','), events };
    q.push(`token=${encodeURIComponent(token)}`);
    const positions = [...this.roomMap.values()]
      .filter((r) => r._desired && r._position)
      .sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0))
      .map((r) => `${r.name}~${r._position!.epoch}~${r._position!.offset}`);
    if (positions.length) q.push(`last_event_id=${encodeURIComponent(positions.join(','))}`);
    return `${this.urls.sse}?${q.join('&')}`;
  }

  private onOpen(token: string): void {
    if (this.t?.kind !== 'websocket') return;
    // The token goes in a frame, not the URL: it stays out of access logs,
    // and a bad one is answered with an `error` instead of a bare HTTP 401.
    const id = this.nextId++;
    this.authReqId = id;
    this.trackRequest(id, 'authenticate', this.timeoutMs).catch(() => {
      /* the close that follows is handled by onClose */
    });
    this.t.send({ type: 'authenticate', id, token });
  }

  private onInterrupted(): void {
    // The EventSource reconnects by itself; frames stop until `authenticated`.
    this.authed = false;
    this.stopPing();
    for (const r of this.roomMap.values()) if (r._desired) r._resyncing = true;
    if (this._state === 'connected') this.setState('reconnecting', { attempt: 1, delayMs: 0 });
  }

  private onAuthenticated(f: AuthenticatedFrame): void {
    const t = this.t!;
    this.authed = true;
    this.attempt = 0;
    this.retriedAuth = false;
    if (t.kind === 'websocket') this.wsFailures = 0;
    this._connectionId = f.connection_id;
    this._userId = f.user_id;
    this._nodeId = f.node_id;
    this.heartbeatMs = f.heartbeat_interval_ms;
    const auto = new Set((f.rooms ?? []).map((r) => r.room));
    for (const r of this.roomMap.values()) r._auto = auto.has(r.name);

    if (t.kind === 'websocket') {
      // Filter first, so replays of the re-joins below are filtered too.
      if (this.filter.touched) {
        this.request({ type: 'subscribe', events: this.filter.patterns }, 'subscribe').catch((e) => this.emit('error', e));
      }
      for (const a of f.rooms ?? []) {
        const room = this.room(a.room);
        room._auto = true;
        if (this.leftAuto.has(a.room)) {
          this.request({ type: 'leave_room', room: a.room }, 'leave').catch(() => {});
          continue;
        }
        room._desired = true;
        const prev = room._position;
        if (prev && (prev.epoch !== a.epoch || prev.offset !== a.offset)) {
          // Missed events: re-join with `since`; frames that arrive before
          // its `room_joined` are part of the replay, so they are dropped.
          this.sendJoin(room);
        } else {
          const fresh = !prev;
          room._position = { epoch: a.epoch, offset: a.offset };
          room._joined = true;
          room._resyncing = false;
          room._settle();
          if (fresh) room._emit('joined', { room: a.room, epoch: a.epoch, offset: a.offset });
        }
      }
      for (const room of this.roomMap.values()) {
        if (room._desired && !auto.has(room.name)) this.sendJoin(room);
      }
    } else {
      // SSE: the server joined every room of the URL (resuming them from
      // `last_event_id`) and announces each with `room_joined`.
      for (const a of f.rooms ?? []) {
        const room = this.room(a.room);
        room._auto = true;
        room._desired = true;
      }
      for (const room of this.roomMap.values()) {
        if (room._desired) {
          room._resyncing = true;
          room._joined = false;
        }
      }
      // Joins or filter changes made while this stream was opening.
      const rooms = [...this.roomMap.values()].filter((r) => r._desired && !r._auto).map((r) => r.name).join(',');
      const events = this.filter.touched ? this.filter.patterns.join(',') : '';
      if (rooms !== this.sseSnapshot.rooms || events !== this.sseSnapshot.events) this.queueReopen();
    }
    this.scheduleRefresh();
    this.startPing();
    const ws = this.waiters;
    this.waiters = [];
    for (const w of ws) {
      if (w.timer) clearTimeout(w.timer);
      w.resolve();
    }
    this.setState('connected', {});
  }

  private sendJoin(room: Room<any>): void {
    room._resyncing = true;
    const frame: Record<string, unknown> = { type: 'join_room', room: room.name };
    if (room._position) frame.since = { ...room._position };
    this.request(frame, 'join', 0).catch((err: Error) => {
      if (!(err instanceof HeraldError) || err.code === 'disconnected') return;
      room._resyncing = false;
      if (err.code !== 'timeout') {
        room._desired = false;
        room._joined = false;
        room._position = undefined;
      }
      room._settle(err);
      this.emit('error', err);
    });
  }

  private onRoomJoined(f: RoomJoinedFrame): void {
    const room = this.roomMap.get(f.room);
    if (!room || !room._desired) {
      // A join that completed after the app gave up on it.
      if (this.t?.kind === 'websocket') this.request({ type: 'leave_room', room: f.room }, 'leave').catch(() => {});
      return;
    }
    const prev = room._position;
    const wasJoined = room._joined;
    room._resyncing = false;
    room._joined = true;
    room._setMembers(f.members);
    if (f.recovered === true && prev && prev.epoch === f.epoch) {
      // The replay (offsets after `prev`) follows; keep `prev` so it is delivered.
    } else {
      room._position = { epoch: f.epoch, offset: f.offset };
      if (f.recovered === false && prev) {
        const info: RecoveryFailed = { room: f.room, previous: { ...prev }, epoch: f.epoch, offset: f.offset };
        this.stats.recoveryFailures++;
        room._emit('recovery_failed', info);
        this.emit('recovery_failed', info);
      }
    }
    room._settle();
    const joined = { room: f.room, epoch: f.epoch, offset: f.offset } as {
      room: string; epoch: string; offset: number; recovered?: boolean; replayed?: number;
    };
    if (f.recovered !== undefined) joined.recovered = f.recovered;
    if (f.replayed !== undefined) joined.replayed = f.replayed;
    if (!wasJoined || f.recovered !== undefined) room._emit('joined', joined);
  }

  private onPublication(f: HeraldEvent): void {
    const room = this.roomMap.get(f.room);
    if (!room || !room._desired || !room._joined || room._resyncing) return;
    const pos = room._position;
    if (pos && pos.epoch === f.epoch && f.offset <= pos.offset) {
      this.stats.duplicatesDropped++;
      return;
    }
    room._position = { epoch: f.epoch, offset: f.offset };
    room._deliver(f);
    this.emit('event', f);
    if (f.type === 'message') this.emit('message', f);
  }

  private onFrame(f: ServerFrame): void {
    switch (f.type) {
      case 'authenticated':
        if (!this.authed && (f.id === undefined || f.id === this.authReqId)) this.onAuthenticated(f);
        break;
      case 'room_joined':
        this.onRoomJoined(f);
        break;
      case 'room_left': {
        const room = this.roomMap.get(f.room);
        if (room && room._desired && f.reason) {
          // Removed by the server.
          room._desired = false;
          room._joined = false;
          room._position = undefined;
          room._setMembers(undefined);
          room._emit('left', { room: f.room, reason: f.reason });
        } else if (room && !room._desired) {
          room._joined = false;
        }
        break;
      }
      case 'event':
      case 'message':
        this.onPublication(f);
        break;
      case 'member_joined':
      case 'member_left': {
        const room = this.roomMap.get(f.room);
        if (room && room._desired) {
          const m = { user_id: f.user_id, connection_id: f.connection_id };
          if (f.type === 'member_joined') room._memberJoined(m);
          else room._memberLeft(m);
        }
        break;
      }
      case 'disconnect':
        this.advice = f;
        if (this.t instanceof SseTransport) this.t.end(f.code, f.reason);
        break;
      case 'error':
        if (f.id === undefined || !this.pending.has(Number(f.id))) {
          this.emit('error', new HeraldError(f.code, f.message));
        }
        break;
      default:
        break;
    }
    const id = (f as { id?: unknown }).id;
    if (typeof id === 'number') {
      const p = this.pending.get(id);
      if (p) {
        this.pending.delete(id);
        if (p.timer) clearTimeout(p.timer);
        if (f.type === 'error') p.reject(new HeraldError(f.code, f.message, id));
        else p.resolve(f);
      }
    }
  }

  private onClose(info: CloseInfo): void {
    const kind = this.t?.kind;
    const wasAuthed = this.authed;
    this.t = null;
    this.authed = false;
    this.stopPing();
    this.clearRefresh();
    this.failPending('disconnected');
    for (const r of this.roomMap.values()) {
      r._resyncing = false;
      r._joined = false;
    }
    const advice = this.advice;
    this.advice = undefined;
    let code = advice?.code ?? info.code;
    let reason = advice?.reason ?? info.reason;
    if (this.closed) return;

    if (kind === 'websocket' && !wasAuthed && !advice && (info.code === 1006 || !info.opened)) {
      this.wsFailures++;
      const limit = this.opts.fallbackAfter ?? 3;
      if (this.wsFailures >= limit && this.canUse('sse')) this.sseOnly = true;
    }

    if (info.http) {
      const h = info.http;
      const err = new HeraldError((h.code as HeraldError['code']) ?? 'unavailable', h.message ?? reason);
      if (h.status === 401) {
        code = 4001;
      } else if (h.status === 429) {
        code = 4029;
      } else if (h.status === 403 || h.status === 400) {
        // A room of the stream is refused: fail the joins under way.
        const named = /room `([^`]+)`/.exec(h.message ?? '')?.[1];
        const suspects = [...this.roomMap.values()].filter(
          (r) => r._desired && (named ? r.name === named : r._waiters.length > 0 && !r._position),
        );
        if (suspects.length) {
          for (const r of suspects) {
            r._desired = false;
            r._settle(err);
          }
          this.emit('error', err);
          this.attemptConnect();
          return;
        }
        this.finish(4000 + h.status, reason, err);
        return;
      } else {
        code = 1013;
      }
    }

    if ((code === 4001 || code === 4012) && this.opts.getToken && !(code === 4001 && this.retriedAuth)) {
      // Expired (or refused) token: reconnect with a fresh one.
      if (code === 4001) this.retriedAuth = true;
      this.token = undefined;
      this.tokenExp = undefined;
      this.scheduleReconnect(code, reason);
      return;
    }
    if ((advice && !advice.reconnect) || NO_RECONNECT.has(code) || code === 4012) {
      this.finish(code, reason);
      return;
    }
    this.scheduleReconnect(code, reason);
  }

  private scheduleReconnect(code: number, reason: string): void {
    if (this.closed) return;
    const delayMs = backoffDelay(this.attempt, this.opts.backoff);
    this.attempt++;
    this.stats.reconnects++;
    this.setState('reconnecting', { code, reason, attempt: this.attempt, delayMs });
    clearTimeout(this.reconnectTimer);
    this.reconnectTimer = setTimeout(() => void this.attemptConnect(), delayMs);
  }

  private finish(code: number, reason: string, error?: Error): void {
    this.closed = true;
    clearTimeout(this.reconnectTimer);
    this.clearRefresh();
    this.stopPing();
    this.t?.close();
    this.t = null;
    this.authed = false;
    this.failPending('closed');
    const err = error ?? new HeraldError('closed', `connection closed (${code} ${reason})`);
    for (const r of this.roomMap.values()) {
      r._joined = false;
      r._settle(err);
    }
    const ws = this.waiters;
    this.waiters = [];
    for (const w of ws) {
      if (w.timer) clearTimeout(w.timer);
      w.reject(err);
    }
    this.setState('disconnected', { code, reason, ...(error ? { error } : {}) });
  }

  private setState(state: ConnectionState, extra: Partial<StateChange>): void {
    const previous = this._state;
    if (previous === state && state !== 'reconnecting') return;
    this._state = state;
    const change: StateChange = { state, previous, ...extra };
    const kind = this.t?.kind;
    if (kind && change.transport === undefined) change.transport = kind;
    this.emit('state', change);
    this.emit(state, change);
  }

  // ----- requests ---------------------------------------------------------

  private trackRequest(id: number, kind: RequestKind, timeoutMs: number): Promise<any> {
    return new Promise((resolve, reject) => {
      const p: Pending = { kind, gen: this.gen, resolve, reject, timer: undefined };
      if (timeoutMs > 0) {
        p.timer = setTimeout(() => {
          this.pending.delete(id);
          reject(new TimeoutError(`${kind} (request ${id}) got no reply within ${timeoutMs} ms`, id));
          if (kind === 'ping' || kind === 'authenticate') this.dropConnection(`${kind} timed out`);
        }, timeoutMs);
      }
      this.pending.set(id, p);
    });
  }

  private request(frame: Record<string, unknown>, kind: RequestKind, timeoutMs = this.timeoutMs): Promise<any> {
    if (!this.t || this.t.kind !== 'websocket') {
      return Promise.reject(new HeraldError('disconnected', 'not connected'));
    }
    const id = this.nextId++;
    const p = this.trackRequest(id, kind, timeoutMs);
    if (!this.t.send({ ...frame, id })) {
      const pend = this.pending.get(id);
      this.pending.delete(id);
      if (pend?.timer) clearTimeout(pend.timer);
      return Promise.reject(new HeraldError('disconnected', 'the connection is not open'));
    }
    return p;
  }

  private failPending(code: 'disconnected' | 'closed'): void {
    const all = [...this.pending.values()];
    this.pending.clear();
    for (const p of all) {
      if (p.timer) clearTimeout(p.timer);
      if (p.kind === 'leave' || p.kind === 'subscribe' || p.kind === 'unsubscribe') {
        // Recorded in the client's state and re-applied on reconnect.
        if (code === 'disconnected') p.resolve({});
        else p.reject(new HeraldError(code, 'the client is closed'));
      } else {
        p.reject(new HeraldError(code, code === 'closed' ? 'the client is closed' : 'the connection dropped before the reply'));
      }
    }
  }

  private whenConnected(): Promise<void> {
    if (this.closed) return Promise.reject(new HeraldError('closed', 'the client is closed'));
    if (this.authed) return Promise.resolve();
    return new Promise((resolve, reject) => {
      const w: Waiter = { resolve, reject, timer: undefined };
      w.timer = setTimeout(() => {
        this.waiters = this.waiters.filter((x) => x !== w);
        reject(new TimeoutError(`not connected within ${this.timeoutMs} ms`));
      }, this.timeoutMs);
      this.waiters.push(w);
    });
  }

  private async applyFilter(frame: Record<string, unknown>, kind: RequestKind): Promise<void> {
    if (!this.authed || !this.t) return;
    if (this.t.kind === 'sse') {
      this.queueReopen();
      return;
    }
    await this.request(frame, kind);
  }

  /** SSE streams are read-only: a new room list or filter means a new stream, resumed from the positions. */
  private queueReopen(): void {
    if (this.reopenQueued) return;
    this.reopenQueued = true;
    queueMicrotask(() => {
      this.reopenQueued = false;
      if (this.closed || this.t?.kind !== 'sse') return;
      this.t.close();
      this.t = null;
      this.authed = false;
      for (const r of this.roomMap.values()) r._joined = false;
      void this.attemptConnect();
    });
  }

  /** Treats the connection as dead (no pong): close it and reconnect. */
  private dropConnection(reason: string): void {
    const t = this.t;
    if (!t || t.kind !== 'websocket') return;
    t.close(4000, reason);
    this.onClose({ code: 1006, reason, opened: true });
  }

  // ----- token refresh and pings --------------------------------------------

  private clearRefresh(): void {
    clearTimeout(this.refreshTimer);
    this.refreshTimer = undefined;
  }

  private scheduleRefresh(retryMs?: number): void {
    this.clearRefresh();
    if (!this.opts.getToken || this.tokenExp === undefined || this.closed) return;
    const remaining = this.tokenExp - Date.now();
    const lead = Math.min(this.opts.refreshLeadMs ?? 30_000, remaining / 2);
    const delay = retryMs ?? Math.max(0, remaining - lead);
    this.refreshTimer = setTimeout(() => void this.refresh(), delay);
  }

  private async refresh(): Promise<void> {
    this.refreshTimer = undefined;
    const gen = this.gen;
    const retry = () => {
      const remaining = (this.tokenExp ?? 0) - Date.now();
      if (remaining > 1000) this.scheduleRefresh(Math.min(5000, remaining / 4));
    };
    let token: string;
    try {
      token = await this.opts.getToken!();
      if (typeof token !== 'string' || !token) throw new HeraldError('unauthorized', 'getToken returned no token');
    } catch (err) {
      this.emit('error', err instanceof Error ? err : new Error(String(err)));
      retry();
      return;
    }
    if (this.closed) return;
    if (!this.authed || gen !== this.gen || !this.t) {
      this.setToken(token); // used by the next connect
      return;
    }
    if (this.t.kind === 'websocket') {
      try {
        await this.request({ type: 'authenticate', token }, 'authenticate');
      } catch (err) {
        if (err instanceof HeraldError && err.code === 'disconnected') {
          this.setToken(token);
          return;
        }
        this.emit('error', err instanceof Error ? err : new Error(String(err)));
        retry();
        return;
      }
      this.setToken(token);
      this.stats.tokenRefreshes++;
      this.emit('token_refreshed', this.tokenExp !== undefined ? { expiresAt: this.tokenExp } : {});
      this.scheduleRefresh();
    } else {
      // EventSource cannot send frames: reopen the stream with the new token.
      this.setToken(token);
      this.stats.tokenRefreshes++;
      this.emit('token_refreshed', this.tokenExp !== undefined ? { expiresAt: this.tokenExp } : {});
      this.queueReopen();
    }
  }

  private startPing(): void {
    this.stopPing();
    if (this.t?.kind !== 'websocket') return;
    const every = this.opts.pingIntervalMs ?? this.heartbeatMs ?? 25_000;
    if (!every || every <= 0) return;
    this.pingTimer = setInterval(() => {
      if (this.authed && this.t?.kind === 'websocket') this.request({ type: 'ping' }, 'ping').catch(() => {});
    }, every);
  }

  private stopPing(): void {
    clearInterval(this.pingTimer);
    this.pingTimer = undefined;
  }
}
