import { backoffDelay } from './backoff.js';
import { HeraldError } from './errors.js';
import type { ClientStats, ConnectOptions, EmitFn } from './options.js';
import { Requests, type RequestHost, type RequestKind } from './requests.js';
import type { RoomOwner } from './room.js';
import { RoomBook, type RoomsHost } from './rooms.js';
import { TokenKeeper, type TokenHost } from './token.js';
import { SseTransport, type CloseInfo, type Transport } from './transport.js';
import { TransportChoice } from './transport-choice.js';
import type { AuthenticatedFrame, ConnectionState, DisconnectFrame, ServerFrame, StateChange, TransportKind } from './types.js';

/** Close codes after which the client does not reconnect (PROTOCOL.md 3). */
const NO_RECONNECT = new Set([1000, 1002, 1007, 1009, 4001, 4008, 4010, 4013, 4029]);

/**
 * The connection lifecycle behind a `HeraldClient`: connects (authenticating
 * over WebSocket, or with the token in the SSE URL), dispatches the frames
 * it receives, reconnects with backoff after a close (or gives up, after a
 * close code that forbids it), and reopens SSE streams whose rooms, filter
 * or token changed. Owns the client's other parts: requests, rooms, token.
 */
export class Connection implements RequestHost, RoomsHost, TokenHost {
  readonly requests: Requests;
  readonly tokens: TokenKeeper;
  readonly rooms: RoomBook;
  readonly choice: TransportChoice;
  /** Event-name patterns (`subscribe`); untouched, the server's default `*` applies. */
  readonly filter = { touched: false, patterns: ['*'] };
  private _state: ConnectionState = 'idle';
  private t: Transport | null = null;
  private _gen = 0;
  private _authed = false;
  private _closed = false;
  private authReqId: number | undefined;
  private attempt = 0;
  private advice: DisconnectFrame | undefined;
  private reconnectTimer: ReturnType<typeof setTimeout> | undefined;
  private reopenQueued = false;
  /** Rooms and filter the current SSE stream was opened with. */
  private sseSnapshot = { rooms: '', events: '' };
  private heartbeatMs: number | undefined;
  connectionId: string | undefined;
  userId: string | undefined;
  nodeId: string | undefined;

  constructor(
    private readonly opts: ConnectOptions,
    owner: RoomOwner,
    private readonly emit: EmitFn,
    private readonly stats: ClientStats,
    readonly timeoutMs: number,
  ) {
    this.choice = new TransportChoice(opts);
    this.tokens = new TokenKeeper(opts, this, emit, stats);
    this.requests = new Requests(this, timeoutMs);
    this.rooms = new RoomBook(owner, this, emit, stats, timeoutMs);
  }

  get state(): ConnectionState {
    return this._state;
  }
  get transport(): Transport | null {
    return this.t;
  }
  get transportKind(): TransportKind | undefined {
    return this.t?.kind;
  }
  get gen(): number {
    return this._gen;
  }
  /** The live connection is authenticated. */
  get authed(): boolean {
    return this._authed;
  }
  get closed(): boolean {
    return this._closed;
  }

  request(frame: Record<string, unknown>, kind: RequestKind, timeoutMs?: number): Promise<any> {
    return this.requests.request(frame, kind, timeoutMs);
  }

  open(): void {
    if (this._state !== 'idle') return;
    this.setState('connecting', {});
    void this.attemptConnect();
  }

  close(): void {
    if (this._closed) return;
    this._closed = true;
    this.t?.close(1000, 'client closed');
    this.t = null;
    this._authed = false;
    this.finish(1000, 'client closed');
  }

  /** SSE streams are read-only: a new room list or filter means a new stream, resumed from the positions. */
  queueReopen(): void {
    if (this.reopenQueued) return;
    this.reopenQueued = true;
    queueMicrotask(() => {
      this.reopenQueued = false;
      if (this._closed || this.t?.kind !== 'sse') return;
      this.t.close();
      this.t = null;
      this._authed = false;
      this.rooms.reopening();
      void this.attemptConnect();
    });
  }

  /** Treats the connection as dead (no pong): close it and reconnect. */
  dropConnection(reason: string): void {
    const t = this.t;
    if (!t || t.kind !== 'websocket') return;
    t.close(4000, reason);
    this.onClose({ code: 1006, reason, opened: true });
  }

  private async attemptConnect(): Promise<void> {
    this.reconnectTimer = undefined;
    const gen = ++this._gen;
    let token: string;
    try {
      token = await this.tokens.current();
    } catch (err) {
      if (this._closed || gen !== this._gen) return;
      this.emit('error', err instanceof Error ? err : new Error(String(err)));
      this.scheduleReconnect(1006, 'getToken failed');
      return;
    }
    if (this._closed || gen !== this._gen) return;
    const kind = this.choice.choose();
    if (!kind) {
      this.finish(1006, 'no usable transport', new HeraldError('unsupported', 'no WebSocket or EventSource implementation available'));
      return;
    }
    if (kind === 'websocket' && !this.choice.codecReady) {
      try {
        await this.choice.loadCodec();
      } catch (err) {
        if (this._closed || gen !== this._gen) return;
        const why = err instanceof Error ? err.message : String(err);
        this.finish(1006, 'encoding unavailable', new HeraldError('unsupported', `encoding 'msgpack' needs the @msgpack/msgpack package: ${why}`));
        return;
      }
      if (this._closed || gen !== this._gen) return;
    }
    const { transport, previous: prev } = this.choice.open(
      kind,
      {
        onOpen: () => gen === this._gen && this.onOpen(token),
        onFrame: (f: ServerFrame) => gen === this._gen && this.onFrame(f),
        onClose: (info: CloseInfo) => gen === this._gen && this.onClose(info),
        onInterrupted: () => gen === this._gen && this.onInterrupted(),
      },
      () => this.sseQuery(token),
    );
    this.t = transport;
    if (prev !== kind && (prev || kind === 'sse')) this.emit('transport', { ...(prev ? { from: prev } : {}), to: kind });
  }

  private sseQuery(token: string): string {
    const q: string[] = [];
    const rooms = this.rooms.streamRooms();
    if (rooms.length) q.push(`rooms=${encodeURIComponent(rooms.join(','))}`);
    const events = this.filter.touched ? this.filter.patterns.join(',') : '';
    if (events) q.push(`events=${encodeURIComponent(events)}`);
    this.sseSnapshot = { rooms: rooms.join(','), events };
    q.push(`token=${encodeURIComponent(token)}`);
    const positions = this.rooms.positions();
    if (positions.length) q.push(`last_event_id=${encodeURIComponent(positions.join(','))}`);
    return q.join('&');
  }

  private onOpen(token: string): void {
    if (this.t?.kind !== 'websocket') return;
    // The token goes in a frame, not the URL: it stays out of access logs,
    // and a bad one is answered with an `error` instead of a bare HTTP 401.
    const id = this.requests.allocateId();
    this.authReqId = id;
    this.requests.track(id, 'authenticate', this.timeoutMs).catch(() => {
      /* the close that follows is handled by onClose */
    });
    this.t.send({ type: 'authenticate', id, token });
  }

  private onInterrupted(): void {
    // The EventSource reconnects by itself; frames stop until `authenticated`.
    this._authed = false;
    this.requests.stopPings();
    this.rooms.interrupted();
    if (this._state === 'connected') this.setState('reconnecting', { attempt: 1, delayMs: 0 });
  }

  private onAuthenticated(f: AuthenticatedFrame): void {
    const t = this.t!;
    this._authed = true;
    this.attempt = 0;
    this.tokens.accepted();
    if (t.kind === 'websocket') this.choice.wsConnected();
    this.connectionId = f.connection_id;
    this.userId = f.user_id;
    this.nodeId = f.node_id;
    this.heartbeatMs = f.heartbeat_interval_ms;
    const auto = new Set((f.rooms ?? []).map((r) => r.room));
    this.rooms.markAuto(auto);

    if (t.kind === 'websocket') {
      // Filter first, so replays of the re-joins below are filtered too.
      if (this.filter.touched) {
        this.request({ type: 'subscribe', events: this.filter.patterns }, 'subscribe').catch((e) => this.emit('error', e));
      }
      this.rooms.resumeOverWebSocket(f.rooms ?? [], auto);
    } else {
      this.rooms.resumeOverSse(f.rooms ?? []);
      // Joins or filter changes made while this stream was opening.
      const rooms = this.rooms.streamRooms().join(',');
      const events = this.filter.touched ? this.filter.patterns.join(',') : '';
      if (rooms !== this.sseSnapshot.rooms || events !== this.sseSnapshot.events) this.queueReopen();
    }
    this.tokens.scheduleRefresh();
    this.startPing();
    this.requests.releaseWaiters();
    this.setState('connected', {});
  }

  private onFrame(f: ServerFrame): void {
    switch (f.type) {
      case 'authenticated':
        if (!this._authed && (f.id === undefined || f.id === this.authReqId)) this.onAuthenticated(f);
        break;
      case 'room_joined':
        this.rooms.onJoined(f);
        break;
      case 'room_left':
        this.rooms.onLeft(f);
        break;
      case 'event':
      case 'message':
        // A direct message is in no room: it never moves a room's position.
        if (f.room === null) this.emit('direct', f);
        else this.rooms.onPublication(f);
        break;
      case 'member_joined':
      case 'member_left':
        this.rooms.onMember(f);
        break;
      case 'events_dropped':
        this.rooms.onDropped(f);
        break;
      case 'disconnect':
        this.advice = f;
        if (this.t instanceof SseTransport) this.t.end(f.code, f.reason);
        break;
      case 'error':
        if (f.id === undefined || !this.requests.has(Number(f.id))) {
          this.emit('error', new HeraldError(f.code, f.message));
        }
        break;
      default:
        break;
    }
    this.requests.settle(f);
  }

  private onClose(info: CloseInfo): void {
    const kind = this.t?.kind;
    const wasAuthed = this._authed;
    this.t = null;
    this._authed = false;
    this.requests.stopPings();
    this.tokens.clearRefresh();
    this.requests.failAll('disconnected');
    this.rooms.disconnected();
    const advice = this.advice;
    this.advice = undefined;
    let code = advice?.code ?? info.code;
    const reason = advice?.reason ?? info.reason;
    if (this._closed) return;

    if (kind === 'websocket' && !wasAuthed && !advice && (info.code === 1006 || !info.opened)) {
      this.choice.wsFailed();
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
        if (this.rooms.refused(h.message, err)) {
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

    if (this.tokens.retryWithFreshToken(code)) {
      // Expired (or refused) token: reconnect with a fresh one.
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
    if (this._closed) return;
    const delayMs = backoffDelay(this.attempt, this.opts.backoff);
    this.attempt++;
    this.stats.reconnects++;
    this.setState('reconnecting', { code, reason, attempt: this.attempt, delayMs });
    clearTimeout(this.reconnectTimer);
    this.reconnectTimer = setTimeout(() => void this.attemptConnect(), delayMs);
  }

  private finish(code: number, reason: string, error?: Error): void {
    this._closed = true;
    clearTimeout(this.reconnectTimer);
    this.tokens.clearRefresh();
    this.requests.stopPings();
    this.t?.close();
    this.t = null;
    this._authed = false;
    this.requests.failAll('closed');
    const err = error ?? new HeraldError('closed', `connection closed (${code} ${reason})`);
    this.rooms.closed(err);
    this.requests.releaseWaiters(err);
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

  /** Keepalive pings on WebSocket, which detect dead connections the browser cannot see. */
  private startPing(): void {
    if (this.t?.kind === 'websocket') this.requests.startPings(this.opts.pingIntervalMs ?? this.heartbeatMs ?? 25_000);
    else this.requests.stopPings();
  }
}
