import { HeraldError } from './errors.js';
import type { ClientStats, EmitFn } from './options.js';
import type { RequestKind } from './requests.js';
import { Room, type RoomOwner } from './room.js';
import type {
  AuthenticatedFrame,
  EventsDropped,
  EventsDroppedFrame,
  HeraldEvent,
  MemberFrame,
  RecoveryFailed,
  RoomJoinedFrame,
  RoomLeftFrame,
  TransportKind,
} from './types.js';

/** What the room book needs from the connection. */
export interface RoomsHost {
  readonly closed: boolean;
  readonly authed: boolean;
  /** Kind of the live transport, if any. */
  readonly transportKind: TransportKind | undefined;
  request(frame: Record<string, unknown>, kind: RequestKind, timeoutMs?: number): Promise<any>;
  /** Reopens the SSE stream with the current room list and filter. */
  queueReopen(): void;
}

/**
 * Every room handle of a client, and where each stands: whether the
 * application wants it, whether the live connection is in it, and the
 * position of the last frame delivered, from which it is resumed (`since`
 * on WebSocket, `last_event_id` on SSE) and below which duplicates are dropped.
 */
export class RoomBook {
  private map = new Map<string, Room<any>>();
  /** Rooms the server auto-joins at connect that the application left. */
  private leftAuto = new Set<string>();

  constructor(
    private readonly owner: RoomOwner,
    private readonly host: RoomsHost,
    private readonly emit: EmitFn,
    private readonly stats: ClientStats,
    private readonly timeoutMs: number,
  ) {}

  /** The handle of a room, created on first use. */
  room<E extends Record<string, unknown> = Record<string, unknown>>(name: string): Room<E> {
    let r = this.map.get(name);
    if (!r) {
      r = new Room<E>(name, this.owner);
      this.map.set(name, r);
    }
    return r as Room<E>;
  }

  /** Rooms the application is in (or joining). */
  desired(): Room<any>[] {
    return [...this.map.values()].filter((r) => r._desired);
  }

  join<E extends Record<string, unknown> = Record<string, unknown>>(name: string): Promise<Room<E>> {
    if (this.host.closed) return Promise.reject(new HeraldError('closed', 'the client is closed'));
    const room = this.room<E>(name);
    if (room._desired && room._joined && !room._resyncing) return Promise.resolve(room);
    const first = !room._desired;
    room._desired = true;
    this.leftAuto.delete(name);
    const p = room._wait(this.timeoutMs, () => {
      if (!room._joined && room._waiters.length === 0) room._desired = false;
    }) as Promise<Room<E>>;
    if (first && this.host.authed && this.host.transportKind) {
      if (this.host.transportKind === 'websocket') this.sendJoin(room);
      else this.host.queueReopen();
    }
    return p;
  }

  async leave(name: string): Promise<void> {
    const room = this.map.get(name);
    if (!room || !room._desired) return;
    room._desired = false;
    room._resyncing = false;
    room._position = undefined;
    room._settle(new HeraldError('not_joined', `left ${name} while joining it`));
    if (room._auto) this.leftAuto.add(name);
    const wasJoined = room._joined;
    room._joined = false;
    if (this.host.authed && this.host.transportKind === 'websocket' && wasJoined) {
      try {
        await this.host.request({ type: 'leave_room', room: name }, 'leave');
      } catch (err) {
        if (!(err instanceof HeraldError) || err.code !== 'not_joined') throw err;
      }
    } else if (this.host.authed && this.host.transportKind === 'sse') {
      this.host.queueReopen();
    }
    room._setMembers(undefined);
    room._emit('left', { room: name });
  }

  private sendJoin(room: Room<any>): void {
    room._resyncing = true;
    const frame: Record<string, unknown> = { type: 'join_room', room: room.name };
    if (room._position) frame.since = { ...room._position };
    this.host.request(frame, 'join', 0).catch((err: Error) => {
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

  /** Flags the rooms the server auto-joined at connect. */
  markAuto(auto: Set<string>): void {
    for (const r of this.map.values()) r._auto = auto.has(r.name);
  }

  /** A WebSocket was authenticated: take up the auto-joined rooms, and (re-)join the others from their positions. */
  resumeOverWebSocket(rooms: AuthenticatedFrame['rooms'], auto: Set<string>): void {
    for (const a of rooms) {
      const room = this.room(a.room);
      room._auto = true;
      if (this.leftAuto.has(a.room)) {
        this.host.request({ type: 'leave_room', room: a.room }, 'leave').catch(() => {});
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
    for (const room of this.map.values()) {
      if (room._desired && !auto.has(room.name)) this.sendJoin(room);
    }
  }

  /**
   * An SSE stream was authenticated: the server joined every room of the URL
   * (resuming them from `last_event_id`) and announces each with `room_joined`.
   */
  resumeOverSse(rooms: AuthenticatedFrame['rooms']): void {
    for (const a of rooms) {
      const room = this.room(a.room);
      room._auto = true;
      room._desired = true;
    }
    for (const room of this.map.values()) {
      if (room._desired) {
        room._resyncing = true;
        room._joined = false;
      }
    }
  }

  onJoined(f: RoomJoinedFrame): void {
    const room = this.map.get(f.room);
    if (!room || !room._desired) {
      // A join that completed after the app gave up on it.
      if (this.host.transportKind === 'websocket') this.host.request({ type: 'leave_room', room: f.room }, 'leave').catch(() => {});
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

  onLeft(f: RoomLeftFrame): void {
    const room = this.map.get(f.room);
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
  }

  onMember(f: MemberFrame): void {
    const room = this.map.get(f.room);
    if (room && room._desired) {
      const m = { user_id: f.user_id, connection_id: f.connection_id };
      if (f.type === 'member_joined') room._memberJoined(m);
      else room._memberLeft(m);
    }
  }

  /**
   * `events_dropped`: the server's queue for this connection dropped events
   * of these rooms after `offset`. Each room resumes from that position: on
   * WebSocket it is re-joined with `since`; on SSE the stream is reopened
   * with it in `last_event_id` (the stream's own id has moved past the gap
   * with the kept events). Until the room's `room_joined`, its frames are
   * dropped (as during any resync): the kept events that follow the gap
   * come again in the replay, so every event is delivered once, in offset
   * order. A room already re-joining resumes from an earlier position,
   * which covers this gap too.
   */
  onDropped(f: EventsDroppedFrame): void {
    const kind = this.host.transportKind;
    let reopen = false;
    for (const d of f.rooms ?? []) {
      const room = this.map.get(d.room);
      if (!room || !room._desired || !room._joined || room._resyncing || !kind) continue;
      const pos = room._position;
      // Never move forward past events not yet delivered, nor back past
      // ones that were (those would come twice).
      if (!pos || pos.epoch !== d.epoch || pos.offset > d.offset) {
        room._position = { epoch: d.epoch, offset: d.offset };
      }
      if (kind === 'websocket') {
        this.sendJoin(room);
      } else {
        room._resyncing = true;
        reopen = true;
      }
      const info: EventsDropped = { room: d.room, epoch: room._position!.epoch, offset: room._position!.offset };
      this.stats.eventsDropped++;
      room._emit('events_dropped', info);
      this.emit('events_dropped', info);
    }
    if (reopen) this.host.queueReopen();
  }

  /** Delivers an `event` or `message` frame, dropping it when it is at or before the room's position. */
  onPublication(f: HeraldEvent): void {
    const room = this.map.get(f.room);
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

  /** Names of the rooms an SSE stream must ask for (`rooms=`): wanted and not auto-joined. */
  streamRooms(): string[] {
    return [...this.map.values()].filter((r) => r._desired && !r._auto).map((r) => r.name);
  }

  /** `room~epoch~offset` of every wanted room with a position, by name: the SSE `last_event_id`. */
  positions(): string[] {
    return [...this.map.values()]
      .filter((r) => r._desired && r._position)
      .sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0))
      .map((r) => `${r.name}~${r._position!.epoch}~${r._position!.offset}`);
  }

  /** The SSE stream broke and is reconnecting by itself: frames wait for the resume. */
  interrupted(): void {
    for (const r of this.map.values()) if (r._desired) r._resyncing = true;
  }

  /** The connection closed: no room is joined until the next one resumes it. */
  disconnected(): void {
    for (const r of this.map.values()) {
      r._resyncing = false;
      r._joined = false;
    }
  }

  /** The SSE stream is being replaced. */
  reopening(): void {
    for (const r of this.map.values()) r._joined = false;
  }

  /** The client ended: joins under way fail with `err`. */
  closed(err: Error): void {
    for (const r of this.map.values()) {
      r._joined = false;
      r._settle(err);
    }
  }

  /**
   * An SSE stream was refused (HTTP 400 or 403) with `message`: fails the
   * room it names or, when it names none, the joins under way that have no
   * position yet. Returns false when no room fits (the refusal is not a room's).
   */
  refused(message: string | undefined, err: Error): boolean {
    const named = /room `([^`]+)`/.exec(message ?? '')?.[1];
    const suspects = [...this.map.values()].filter(
      (r) => r._desired && (named ? r.name === named : r._waiters.length > 0 && !r._position),
    );
    for (const r of suspects) {
      r._desired = false;
      r._settle(err);
    }
    return suspects.length > 0;
  }
}
