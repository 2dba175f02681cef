import { afterEach, beforeEach, vi } from 'vitest';
import { connect, type HeraldClient } from '../../src/index.js';

/** A WebSocket double: the test plays the server. */
export class FakeWebSocket {
  static instances: FakeWebSocket[] = [];
  static last(): FakeWebSocket {
    const ws = FakeWebSocket.instances[FakeWebSocket.instances.length - 1];
    if (!ws) throw new Error('no FakeWebSocket was created');
    return ws;
  }
  static reset(): void {
    FakeWebSocket.instances = [];
  }

  readyState = 0;
  onopen: ((ev: unknown) => void) | null = null;
  onmessage: ((ev: { data: unknown }) => void) | null = null;
  onclose: ((ev: { code: number; reason: string }) => void) | null = null;
  onerror: ((ev: unknown) => void) | null = null;
  sent: any[] = [];
  closedWith: { code?: number; reason?: string } | undefined;

  constructor(public url: string) {
    FakeWebSocket.instances.push(this);
  }

  send(data: string): void {
    this.sent.push(JSON.parse(data));
  }
  close(code?: number, reason?: string): void {
    this.closedWith = { code, reason };
    this.readyState = 3;
  }

  // ----- the server side -----
  open(): void {
    this.readyState = 1;
    this.onopen?.({});
  }
  frame(f: object): void {
    this.onmessage?.({ data: JSON.stringify(f) });
  }
  serverClose(code: number, reason = ''): void {
    this.readyState = 3;
    this.onclose?.({ code, reason });
  }
  /** Frames of one type the client sent. */
  ofType(type: string): any[] {
    return this.sent.filter((f) => f.type === type);
  }
  lastOf(type: string): any {
    const all = this.ofType(type);
    return all[all.length - 1];
  }
}

/** A WebSocket that never connects (blocked by a proxy, say). */
export class FailingWebSocket extends FakeWebSocket {
  constructor(url: string) {
    super(url);
    setTimeout(() => this.serverClose(1006, ''), 0);
  }
}

export class FakeEventSource {
  static instances: FakeEventSource[] = [];
  static last(): FakeEventSource {
    const es = FakeEventSource.instances[FakeEventSource.instances.length - 1];
    if (!es) throw new Error('no FakeEventSource was created');
    return es;
  }
  readyState = 0;
  onopen: ((ev: unknown) => void) | null = null;
  onerror: ((ev: unknown) => void) | null = null;
  listeners = new Map<string, Array<(ev: { data: string }) => void>>();
  closed = false;
  constructor(public url: string) {
    FakeEventSource.instances.push(this);
  }
  addEventListener(type: string, fn: (ev: { data: string }) => void): void {
    const list = this.listeners.get(type) ?? [];
    list.push(fn);
    this.listeners.set(type, list);
  }
  close(): void {
    this.closed = true;
    this.readyState = 2;
  }
  open(): void {
    this.readyState = 1;
    this.onopen?.({});
  }
  frame(f: { type: string } & Record<string, unknown>): void {
    for (const fn of this.listeners.get(f.type) ?? []) fn({ data: JSON.stringify(f) });
  }
  query(): URLSearchParams {
    return new URL(this.url).searchParams;
  }
}

export function jwt(payload: Record<string, unknown>): string {
  const b64 = (o: unknown) => Buffer.from(JSON.stringify(o)).toString('base64url');
  return `${b64({ alg: 'HS256', typ: 'JWT' })}.${b64(payload)}.c2ln`;
}

/** A token expiring `seconds` from the (fake) now. */
export function tokenFor(seconds: number, sub = 'u1'): string {
  return jwt({ sub, exp: Math.floor(Date.now() / 1000) + seconds });
}

export const flush = () => vi.advanceTimersByTimeAsync(0);

export function authenticated(id: number | undefined, rooms: Array<{ room: string; epoch: string; offset: number }> = [], conn = 'c1') {
  return {
    type: 'authenticated',
    ...(id !== undefined ? { id } : {}),
    connection_id: conn,
    user_id: 'u1',
    node_id: 'n1',
    rooms,
    heartbeat_interval_ms: 25_000,
  };
}

/** Opens the latest socket and answers its `authenticate`. */
export async function accept(ws: FakeWebSocket, rooms: Array<{ room: string; epoch: string; offset: number }> = [], conn = 'c1') {
  ws.open();
  const auth = ws.lastOf('authenticate');
  if (!auth) throw new Error('client sent no authenticate frame');
  ws.frame(authenticated(auth.id, rooms, conn));
  await flush();
}

export function ev(room: string, offset: number, event = 'e', epoch = 'E1', data: unknown = offset) {
  return { type: 'event', room, event, data, epoch, offset, ts: 0, event_id: `id${offset}` };
}

/**
 * Opens a client on a fake WebSocket with the unit tests' options
 * (fast backoff, a 1 s request timeout, no pings), recorded in `clients`
 * so the test file's `afterEach` closes it.
 */
export function openWsClient(clients: HeraldClient[], extra: Record<string, unknown> = {}): HeraldClient {
  const c = connect({
    url: 'https://herald.test/',
    token: tokenFor(3600),
    WebSocket: FakeWebSocket as any,
    transports: ['websocket'],
    backoff: { initialMs: 100, maxMs: 1000 },
    requestTimeoutMs: 1000,
    pingIntervalMs: 0,
    ...extra,
  });
  clients.push(c);
  return c;
}

/**
 * Fake timers (at `now`, when given) and fresh socket doubles around each
 * test of the calling file; the clients a test pushes are closed after it.
 */
export function useFakes(now?: string): HeraldClient[] {
  const clients: HeraldClient[] = [];
  beforeEach(() => {
    vi.useFakeTimers();
    if (now) vi.setSystemTime(new Date(now));
    FakeWebSocket.reset();
    FakeEventSource.instances = [];
  });
  afterEach(() => {
    for (const c of clients.splice(0)) c.close();
    vi.useRealTimers();
  });
  return clients;
}
