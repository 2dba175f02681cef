import { HeraldError, TimeoutError } from './errors.js';
import type { Transport } from './transport.js';
import type { ServerFrame } from './types.js';

export type RequestKind = 'authenticate' | 'join' | 'leave' | 'subscribe' | 'unsubscribe' | 'send' | 'ping' | 'rpc';

interface Pending {
  kind: RequestKind;
  resolve(frame: any): void;
  reject(err: Error): void;
  timer: ReturnType<typeof setTimeout> | undefined;
}

interface Waiter {
  resolve(): void;
  reject(err: Error): void;
  timer: ReturnType<typeof setTimeout> | undefined;
}

/** What request tracking needs from the connection. */
export interface RequestHost {
  readonly closed: boolean;
  /** The live connection is authenticated. */
  readonly authed: boolean;
  /** The live transport, if any. */
  readonly transport: Transport | null;
  /** A `ping` or `authenticate` got no reply: treat the connection as dead. */
  dropConnection(reason: string): void;
}

/**
 * Request/response correlation: numbers each request frame (`id`), matches
 * the reply carrying that id, and rejects requests that get no reply in time
 * or whose connection drops. Also holds callers waiting for the connection,
 * and the keepalive pings whose timeout reveals a dead connection.
 */
export class Requests {
  private nextId = 1;
  private pending = new Map<number, Pending>();
  private waiters: Waiter[] = [];
  private pingTimer: ReturnType<typeof setInterval> | undefined;

  constructor(
    private readonly host: RequestHost,
    private readonly timeoutMs: number,
  ) {}

  /** A fresh request id. */
  allocateId(): number {
    return this.nextId++;
  }

  /** Whether request `id` is waiting for its reply. */
  has(id: number): boolean {
    return this.pending.has(id);
  }

  /** Waits for the reply to request `id` (sent by the caller); `timeoutMs` 0 waits without limit. */
  track(id: number, kind: RequestKind, timeoutMs: number): Promise<any> {
    return new Promise((resolve, reject) => {
      const p: Pending = { kind, resolve, reject, timer: undefined };
      if (timeoutMs > 0) {
        p.timer = setTimeout(() => {
          this.pending.delete(id);
          reject(new TimeoutError(`${kind} (request ${id}) got no reply within ${timeoutMs} ms`, id));
          if (kind === 'ping' || kind === 'authenticate') this.host.dropConnection(`${kind} timed out`);
        }, timeoutMs);
      }
      this.pending.set(id, p);
    });
  }

  /** Sends `frame` with a new id over the WebSocket; resolves with the reply, rejects on an `error` reply. */
  request(frame: Record<string, unknown>, kind: RequestKind, timeoutMs = this.timeoutMs): Promise<any> {
    const t = this.host.transport;
    if (!t || t.kind !== 'websocket') {
      return Promise.reject(new HeraldError('disconnected', 'not connected'));
    }
    const id = this.nextId++;
    const p = this.track(id, kind, timeoutMs);
    if (!t.send({ ...frame, id })) {
      const pend = this.pending.get(id);
      this.pending.delete(id);
      if (pend?.timer) clearTimeout(pend.timer);
      return Promise.reject(new HeraldError('disconnected', 'the connection is not open'));
    }
    return p;
  }

  /** Settles the request a frame answers, if it carries the id of one. */
  settle(f: ServerFrame): void {
    const id = (f as { id?: unknown }).id;
    if (typeof id !== 'number') return;
    const p = this.pending.get(id);
    if (!p) return;
    this.pending.delete(id);
    if (p.timer) clearTimeout(p.timer);
    if (f.type === 'error') p.reject(new HeraldError(f.code, f.message, id));
    else p.resolve(f);
  }

  /** Ends every pending request: the connection dropped, or the client closed. */
  failAll(code: 'disconnected' | 'closed'): void {
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

  /** Resolves once authenticated; rejects after the request timeout or when the client ends. */
  whenConnected(): Promise<void> {
    if (this.host.closed) return Promise.reject(new HeraldError('closed', 'the client is closed'));
    if (this.host.authed) return Promise.resolve();
    return new Promise((resolve, reject) => {
      const w: Waiter = { resolve, reject, timer: undefined };
      w.timer = setTimeout(() => {
        this.waiters = this.waiters.filter((x) => x !== w);
        reject(new TimeoutError(`not connected within ${this.timeoutMs} ms`));
      }, this.timeoutMs);
      this.waiters.push(w);
    });
  }

  /** Settles the `whenConnected` callers: the connection is up, or (with `err`) the client ended. */
  releaseWaiters(err?: Error): void {
    const ws = this.waiters;
    this.waiters = [];
    for (const w of ws) {
      if (w.timer) clearTimeout(w.timer);
      if (err) w.reject(err);
      else w.resolve();
    }
  }

  /** Sends a `ping` every `everyMs` (0: never) while authenticated on a WebSocket. */
  startPings(everyMs: number): void {
    this.stopPings();
    if (!everyMs || everyMs <= 0) return;
    this.pingTimer = setInterval(() => {
      if (this.host.authed && this.host.transport?.kind === 'websocket') this.request({ type: 'ping' }, 'ping').catch(() => {});
    }, everyMs);
  }

  stopPings(): void {
    clearInterval(this.pingTimer);
    this.pingTimer = undefined;
  }
}
