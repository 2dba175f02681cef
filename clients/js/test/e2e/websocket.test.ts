import { afterEach, describe, expect, inject, it } from 'vitest';
import WebSocket from 'ws';
import { connect, HeraldError, type HeraldClient, type HeraldEvent, type StateChange } from '../../src/index.js';
import { api, sleep, startHerald, until } from './herald.js';

const url = inject('heraldUrl');
const herald = api(url);
const clients: HeraldClient[] = [];
afterEach(() => {
  while (clients.length) clients.pop()!.close();
});

function open(opts: Partial<Parameters<typeof connect>[0]> & { token?: string }): HeraldClient {
  const c = connect({
    url,
    WebSocket: WebSocket as any,
    transports: ['websocket'],
    backoff: { initialMs: 200, maxMs: 1000 },
    requestTimeoutMs: 5000,
    ...opts,
  } as any);
  clients.push(c);
  return c;
}

/** `ws` that never answers the server's pings: the server sees silence and closes with 4014. */
class SilentWebSocket extends WebSocket {
  constructor(address: string, protocols?: string | string[]) {
    super(address, protocols, { autoPong: false });
  }
}

/** Publishes `count` events to `room`, one every `everyMs`. */
async function publishMany(room: string, count: number, everyMs: number): Promise<number[]> {
  const offsets: number[] = [];
  for (let i = 1; i <= count; i++) {
    offsets.push((await herald.publish(room, 'tick', { i })).offset);
    await sleep(everyMs);
  }
  return offsets;
}

function expectGapFree(got: HeraldEvent[], expected: number[]): void {
  const offsets = got.map((e) => e.offset);
  expect(offsets).toEqual(expected);
  expect(got.map((e) => (e.data as { i: number }).i)).toEqual(expected.map((_, k) => k + 1));
}

describe('WebSocket against a real node', () => {
  it('joins, receives published events, sends, and gets typed errors', async () => {
    const client = open({ token: await herald.token('ws-basic') });
    const room = client.room('stream:basic');
    const got: HeraldEvent[] = [];
    room.on('e2e.thing', (e) => got.push(e));
    const messages: HeraldEvent[] = [];
    room.on('message', (e) => messages.push(e));
    await client.join('stream:basic');
    expect(client.state).toBe('connected');
    expect(client.userId).toBe('ws-basic');
    expect(room.members.map((m) => m.user_id)).toEqual(['ws-basic']);
    await herald.publish('stream:basic', 'e2e.thing', { n: 1 });
    await herald.publish('stream:basic', 'e2e.thing', { n: 2 });
    await until(() => got.length === 2, 5000, 'two events');
    expect(got.map((e) => e.data)).toEqual([{ n: 1 }, { n: 2 }]);
    const ack = await client.send('stream:basic', { text: 'hi' });
    expect(ack.offset).toBe(3);
    await until(() => messages.length === 1, 5000, 'own message');
    expect(messages[0]!.from?.user_id).toBe('ws-basic');

    const forbidden = await client.join('secret:x').catch((e) => e);
    expect(forbidden).toBeInstanceOf(HeraldError);
    expect(forbidden.code).toBe('forbidden');
    const notJoined = await client.send('stream:elsewhere', 1).catch((e) => e);
    expect(notJoined.code).toBe('not_joined');

    // Presence: a second user shows up in room.members.
    const other = open({ token: await herald.token('ws-basic-2') });
    await other.join('stream:basic');
    await until(() => room.members.length === 2, 5000, 'member_joined');
    other.close();
    await until(() => room.members.length === 1, 5000, 'member_left');
    await client.leave('stream:basic');
    expect(room.joined).toBe(false);
  });

  it('the server kills a silent socket (4014 stale): the client reconnects and resumes with no gap', async () => {
    // Real server behaviour: the node pings every 500 ms and closes a
    // connection it has heard nothing from for 1.5 s. This client's `ws`
    // does not answer pings and its own pings are off, so the node kills
    // it again and again while events keep coming.
    const client = open({ token: await herald.token('ws-stale'), WebSocket: SilentWebSocket as any, pingIntervalMs: 0 });
    const got: HeraldEvent[] = [];
    const states: StateChange[] = [];
    const joins: Array<{ recovered?: boolean; replayed?: number }> = [];
    client.on('state', (s) => states.push(s));
    const room = client.room('stream:stale');
    room.on('event', (e) => got.push(e));
    room.on('joined', (j) => joins.push(j));
    await client.join('stream:stale');
    const expected = await publishMany('stream:stale', 120, 35);
    await until(() => got.length >= expected.length, 15_000, 'every event');
    await sleep(200);
    const kills = states.filter((s) => s.state === 'reconnecting' && s.code === 4014);
    expect(kills.length).toBeGreaterThanOrEqual(2);
    expect(joins.filter((j) => j.recovered === true).length).toBeGreaterThanOrEqual(2);
    expect(joins.some((j) => (j.replayed ?? 0) > 0)).toBe(true);
    expectGapFree(got, expected);
  });

  it('a node restart loses the memory broker history: recovery_failed with the new epoch', async () => {
    const node = await startHerald();
    try {
      const local = api(node.url);
      const c = connect({
        url: node.url,
        token: await local.token('ws-restart'),
        WebSocket: WebSocket as any,
        transports: ['websocket'],
        backoff: { initialMs: 100, maxMs: 300 },
      });
      clients.push(c);
      const got: HeraldEvent[] = [];
      const failed: unknown[] = [];
      const reasons: StateChange[] = [];
      c.on('event', (e) => got.push(e));
      c.on('recovery_failed', (f) => failed.push(f));
      c.on('reconnecting', (s) => reasons.push(s));
      await c.join('stream:restart');
      const first = await local.publish('stream:restart', 'x', 1);
      await local.publish('stream:restart', 'x', 2);
      await until(() => got.length === 2, 5000, 'events before restart');
      await node.stop();
      const again = await startHerald(node.port);
      try {
        const mine = () => failed.find((f: any) => f.room === 'stream:restart') as any;
        await until(() => !!mine(), 10_000, 'recovery_failed');
        const f = mine();
        // Auto-joined rooms lost their history too (global has none kept).
        expect(failed.map((x: any) => x.room).sort()).toEqual(['global', 'stream:restart', 'user:ws-restart']);
        expect(f.previous).toEqual({ epoch: first.epoch, offset: 2 });
        expect(f.epoch).not.toBe(first.epoch);
        expect(reasons[0]?.code).toBe(1001); // node shutting down, reconnect: true
        const next = await api(again.url).publish('stream:restart', 'x', 3);
        expect(next.offset).toBe(1);
        await until(() => got.length === 3, 5000, 'event after restart');
        expect(got[2]).toMatchObject({ epoch: f.epoch, offset: 1, data: 3 });
      } finally {
        c.close();
        await again.stop();
      }
    } finally {
      await node.stop();
    }
  });

  it('token refresh: short-lived tokens are renewed over the live socket', async () => {
    const minted: string[] = [];
    const client = open({
      getToken: async () => {
        const t = await herald.token('ws-refresh', '2s');
        minted.push(t);
        return t;
      },
    });
    const got: HeraldEvent[] = [];
    client.on('event', (e) => got.push(e));
    await client.join('stream:refresh');
    const conn = client.connectionId;
    const states: StateChange[] = [];
    client.on('state', (s) => states.push(s));
    // 5 s: well past the first token's expiry (2 s).
    const expected = await publishMany('stream:refresh', 25, 200);
    await until(() => got.length === expected.length, 5000, 'events');
    expect(client.connectionId).toBe(conn);
    expect(states).toEqual([]);
    expect(client.stats.tokenRefreshes).toBeGreaterThanOrEqual(2);
    expect(minted.length).toBeGreaterThanOrEqual(3);
    expectGapFree(got, expected);
  });

  it('a failed refresh ends in 4012; the client reconnects with a fresh token and resumes', async () => {
    let failing = true;
    let calls = 0;
    const client = open({
      getToken: async () => {
        calls++;
        if (calls > 1 && failing) throw new Error('identity provider down');
        return herald.token('ws-4012', failing ? '2s' : '1h');
      },
    });
    client.on('error', () => {});
    const states: StateChange[] = [];
    client.on('reconnecting', (s) => {
      states.push(s);
      if (s.code === 4012) failing = false;
    });
    const got: HeraldEvent[] = [];
    client.on('event', (e) => got.push(e));
    await client.join('stream:4012');
    const expected = await publishMany('stream:4012', 20, 200);
    await until(() => got.length === expected.length, 8000, 'events');
    expect(states.map((s) => s.code)).toContain(4012);
    expect(client.state).toBe('connected');
    expectGapFree(got, expected);
  });
});
