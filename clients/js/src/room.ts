import { Emitter, type Unsubscribe } from './emitter.js';
import { TimeoutError } from './errors.js';
import type { EventsDropped, HeraldEvent, Member, Position, RecoveryFailed } from './types.js';

/** Room lifecycle and catch-all listeners; any other name is an event name. */
export interface RoomLifecycleEvents {
  /** Every `event` and `message` frame of the room, in offset order. */
  event: HeraldEvent;
  /** `message` frames (from `send`), and events named `message`. */
  message: HeraldEvent;
  /** The room was joined (or re-joined after a reconnect). */
  joined: { room: string; epoch: string; offset: number; recovered?: boolean; replayed?: number };
  /** The room was left, or the server removed the connection (`reason`). */
  left: { room: string; reason?: string };
  member_joined: Member & { room: string };
  member_left: Member & { room: string };
  /** The room could not be resumed after a reconnect: reload its state. */
  recovery_failed: RecoveryFailed;
  /** The server dropped events of this room (slow link); they are being replayed. */
  events_dropped: EventsDropped;
}

const RESERVED = new Set<string>([
  'event',
  'message',
  'joined',
  'left',
  'member_joined',
  'member_left',
  'recovery_failed',
  'events_dropped',
]);

/** The client's side of a room; the library calls these. */
export interface RoomOwner {
  join(room: string): Promise<Room<any>>;
  leave(room: string): Promise<void>;
  send(room: string, data: unknown, event?: string): Promise<Position>;
}

interface Waiter {
  resolve(room: Room<any>): void;
  reject(err: Error): void;
  timer: ReturnType<typeof setTimeout> | undefined;
}

function globToRegExp(glob: string): RegExp {
  const escaped = glob.replace(/[.+?^${}()|[\]\\]/g, '\\$&').replace(/\*/g, '.*');
  return new RegExp(`^${escaped}$`);
}

/**
 * A room handle. Get it with `client.room(name)` (to attach listeners before
 * joining) or from `await client.join(name)`.
 *
 * `E` maps event names to their data types, for typed handlers:
 * `client.room<{ 'project.updated': Project }>('project:7')`.
 */
export class Room<E extends Record<string, unknown> = Record<string, unknown>> extends Emitter<RoomLifecycleEvents> {
  readonly name: string;
  /** @internal position of the last frame delivered (or of `room_joined`). */
  _position: Position | undefined;
  /** @internal the application wants to be in the room. */
  _desired = false;
  /** @internal the current connection is in the room. */
  _joined = false;
  /** @internal auto-joined by the server at connect. */
  _auto = false;
  /** @internal a (re)join is under way: frames before its `room_joined` are dropped (the replay carries them). */
  _resyncing = false;
  /** @internal */
  _waiters: Waiter[] = [];
  private memberMap = new Map<string, Member>();
  private byName = new Map<string, { re: RegExp | null; fns: Set<(e: HeraldEvent) => void> }>();

  /** @internal */
  constructor(name: string, private owner: RoomOwner) {
    super();
    this.name = name;
  }

  /** Whether the room is joined on the live connection. */
  get joined(): boolean {
    return this._joined && this._desired;
  }

  /** Epoch and offset of the last event delivered (or of the join). */
  get position(): Position | undefined {
    return this._position ? { ...this._position } : undefined;
  }

  /** Current members, for rooms with presence on. */
  get members(): Member[] {
    return [...this.memberMap.values()];
  }

  join(): Promise<this> {
    return this.owner.join(this.name) as Promise<this>;
  }

  leave(): Promise<void> {
    return this.owner.leave(this.name);
  }

  /** `send_message` to this room; WebSocket only. */
  send<K extends keyof E & string>(data: E[K], event?: K): Promise<Position>;
  send(data: unknown, event?: string): Promise<Position>;
  send(data: unknown, event?: string): Promise<Position> {
    return this.owner.send(this.name, data, event);
  }

  override on<K extends keyof RoomLifecycleEvents>(name: K, fn: (arg: RoomLifecycleEvents[K]) => void): Unsubscribe;
  override on<K extends keyof E & string>(name: K, fn: (e: HeraldEvent<E[K], K>) => void): Unsubscribe;
  override on(name: string, fn: (e: HeraldEvent) => void): Unsubscribe;
  override on(name: string, fn: (arg: any) => void): Unsubscribe {
    if (RESERVED.has(name)) return super.on(name, fn);
    return this.onEvent(name, fn);
  }

  /**
   * Listens to frames whose event name matches `pattern` (`*` matches any
   * run of characters, as in the server's filter). Unlike `on`, reserved
   * names like `message` are taken as event names here.
   */
  onEvent<K extends keyof E & string>(pattern: K, fn: (e: HeraldEvent<E[K], K>) => void): Unsubscribe;
  onEvent(pattern: string, fn: (e: HeraldEvent) => void): Unsubscribe;
  onEvent(pattern: string, fn: (e: any) => void): Unsubscribe {
    let entry = this.byName.get(pattern);
    if (!entry) {
      entry = { re: pattern.includes('*') ? globToRegExp(pattern) : null, fns: new Set() };
      this.byName.set(pattern, entry);
    }
    entry.fns.add(fn);
    return () => {
      const e = this.byName.get(pattern);
      if (!e) return;
      e.fns.delete(fn);
      if (e.fns.size === 0) this.byName.delete(pattern);
    };
  }

  override off(name: string, fn: (arg: any) => void): void {
    super.off(name, fn);
    const e = this.byName.get(name);
    if (e) {
      e.fns.delete(fn);
      if (e.fns.size === 0) this.byName.delete(name);
    }
  }

  /** @internal */
  _deliver(e: HeraldEvent): void {
    this.emit('event', e);
    if (e.type === 'message' || e.event === 'message') this.emit('message', e);
    for (const [pattern, entry] of [...this.byName]) {
      if (entry.re ? entry.re.test(e.event) : pattern === e.event) {
        for (const fn of [...entry.fns]) {
          try {
            fn(e);
          } catch (err) {
            setTimeout(() => {
              throw err;
            }, 0);
          }
        }
      }
    }
  }

  /** @internal */
  _emit<K extends keyof RoomLifecycleEvents>(name: K, arg: RoomLifecycleEvents[K]): void {
    this.emit(name, arg);
  }

  /** @internal */
  _setMembers(members: Member[] | undefined): void {
    this.memberMap.clear();
    for (const m of members ?? []) this.memberMap.set(m.connection_id, { ...m });
  }

  /** @internal */
  _memberJoined(m: Member): void {
    this.memberMap.set(m.connection_id, { ...m });
    this.emit('member_joined', { ...m, room: this.name });
  }

  /** @internal */
  _memberLeft(m: Member): void {
    const known = this.memberMap.get(m.connection_id);
    this.memberMap.delete(m.connection_id);
    this.emit('member_left', { ...(known ?? {}), ...m, room: this.name });
  }

  /** @internal */
  _wait(timeoutMs: number, onTimeout: () => void): Promise<Room<any>> {
    return new Promise((resolve, reject) => {
      const w: Waiter = { resolve, reject, timer: undefined };
      if (timeoutMs > 0) {
        w.timer = setTimeout(() => {
          this._waiters = this._waiters.filter((x) => x !== w);
          onTimeout();
          reject(new TimeoutError(`join ${this.name}: no room_joined within ${timeoutMs} ms`));
        }, timeoutMs);
      }
      this._waiters.push(w);
    });
  }

  /** @internal */
  _settle(err?: Error): void {
    const ws = this._waiters;
    this._waiters = [];
    for (const w of ws) {
      if (w.timer) clearTimeout(w.timer);
      if (err) w.reject(err);
      else w.resolve(this);
    }
  }
}
