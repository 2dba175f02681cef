import { describe, expect, it, vi } from 'vitest';
import { connect, HeraldError, TimeoutError, UnsupportedError, type HeraldClient, type StateChange } from '../../src/index.js';
import { accept, ev, FakeWebSocket, flush, openWsClient, tokenFor, useFakes } from './fakes.js';

const clients = useFakes('2026-01-01T00:00:00Z');

const open = (extra: Record<string, unknown> = {}): HeraldClient => openWsClient(clients, extra);

async function connected(extra: Record<string, unknown> = {}, rooms: any[] = []) {
  const client = open(extra);
  await flush();
  const ws = FakeWebSocket.last();
  await accept(ws, rooms);
  return { client, ws };
}

/** Answers the latest join_room of `room`. */
function joined(ws: FakeWebSocket, room: string, epoch = 'E1', offset = 0, more: Record<string, unknown> = {}) {
  const req = ws.ofType('join_room').filter((f) => f.room === room).pop();
  ws.frame({ type: 'room_joined', id: req.id, room, epoch, offset, ...more });
  return req;
}

describe('connecting', () => {
  it('authenticates with a frame on /ws and reports states', async () => {
    const states: string[] = [];
    const client = open();
    client.on('state', (s) => states.push(s.state));
    await flush();
    const ws = FakeWebSocket.last();
    expect(ws.url).toBe('wss://herald.test/ws');
    await accept(ws);
    expect(ws.ofType('authenticate')).toHaveLength(1);
    expect(typeof ws.sent[0].id).toBe('number');
    expect(client.state).toBe('connected');
    expect(client.connectionId).toBe('c1');
    expect(states).toEqual(['connected']); // `connecting` was emitted inside connect()
  });

  it('needs a token or a provider', () => {
    expect(() => connect({ url: 'http://x' } as any)).toThrow(TypeError);
  });
});

describe('requests', () => {
  it('correlates replies by numeric id, in any order', async () => {
    const { client, ws } = await connected();
    const a = client.join('chat:a');
    const b = client.join('chat:b');
    const [ja, jb] = ws.ofType('join_room');
    expect(ja.room).toBe('chat:a');
    expect(jb.id).toBeGreaterThan(ja.id);
    ws.frame({ type: 'room_joined', id: jb.id, room: 'chat:b', epoch: 'B', offset: 4 });
    ws.frame({ type: 'room_joined', id: ja.id, room: 'chat:a', epoch: 'A', offset: 7 });
    expect((await a).name).toBe('chat:a');
    expect((await b).position).toEqual({ epoch: 'B', offset: 4 });
    const sent = client.send('chat:a', { hi: 1 }, 'chat.text');
    const req = ws.lastOf('send_message');
    expect(req).toMatchObject({ room: 'chat:a', data: { hi: 1 }, event: 'chat.text' });
    ws.frame({ type: 'ack', id: req.id, epoch: 'A', offset: 8 });
    await expect(sent).resolves.toEqual({ epoch: 'A', offset: 8 });
  });

  it('rejects with a typed HeraldError carrying the protocol code', async () => {
    const { client, ws } = await connected();
    const p = client.join('project:9');
    const req = ws.lastOf('join_room');
    ws.frame({ type: 'error', id: req.id, code: 'forbidden', message: 'not allowed to join room `project:9`' });
    const err = await p.catch((e) => e);
    expect(err).toBeInstanceOf(HeraldError);
    expect(err.code).toBe('forbidden');
    expect(client.room('project:9').joined).toBe(false);
    expect(client.rooms).toHaveLength(0);

    const s = client.send('chat:x', 1);
    ws.frame({ type: 'error', id: ws.lastOf('send_message').id, code: 'not_joined', message: 'x' });
    await expect(s).rejects.toMatchObject({ code: 'not_joined', requestId: ws.lastOf('send_message').id });
  });

  it('times out with TimeoutError and ignores the late reply', async () => {
    const { client, ws } = await connected();
    const p = client.send('chat:a', 1);
    const caught = p.catch((e) => e);
    await vi.advanceTimersByTimeAsync(999);
    ws.frame({ type: 'pong' }); // unrelated
    await vi.advanceTimersByTimeAsync(1);
    const err = await caught;
    expect(err).toBeInstanceOf(TimeoutError);
    expect(err).toBeInstanceOf(HeraldError);
    expect(err.code).toBe('timeout');
    ws.frame({ type: 'ack', id: ws.lastOf('send_message').id, epoch: 'A', offset: 1 });
    expect(client.state).toBe('connected');
  });

  it('subscribe / unsubscribe send the patterns and resolve on ack', async () => {
    const { client, ws } = await connected();
    const s = client.subscribe(['project.*', 'task.moved']);
    ws.frame({ type: 'ack', id: ws.lastOf('subscribe').id });
    await s;
    const u = client.unsubscribe('task.moved');
    expect(ws.lastOf('unsubscribe').events).toEqual(['task.moved']);
    ws.frame({ type: 'ack', id: ws.lastOf('unsubscribe').id });
    await u;
  });

  it('leave sends leave_room and stops delivery', async () => {
    const { client, ws } = await connected();
    const p = client.join('chat:a');
    joined(ws, 'chat:a');
    const room = await p;
    const got: number[] = [];
    room.on('event', (e) => got.push(e.offset));
    ws.frame(ev('chat:a', 1));
    const l = client.leave('chat:a');
    ws.frame(ev('chat:a', 2));
    ws.frame({ type: 'room_left', id: ws.lastOf('leave_room').id, room: 'chat:a' });
    await l;
    expect(got).toEqual([1]);
    expect(room.joined).toBe(false);
  });
});

describe('events', () => {
  it('dispatches per room, per event name, by glob, and to the client', async () => {
    const { client, ws } = await connected();
    const room = client.room<{ 'project.updated': { name: string } }>('project:7');
    const byName: string[] = [];
    const byGlob: string[] = [];
    const all: number[] = [];
    const messages: unknown[] = [];
    room.on('project.updated', (e) => byName.push(e.data.name));
    room.on('task.*', (e) => byGlob.push(e.event));
    room.on('message', (e) => messages.push(e.data));
    client.on('event', (e) => all.push(e.offset));
    const p = client.join('project:7');
    joined(ws, 'project:7', 'P', 0);
    await p;
    ws.frame(ev('project:7', 1, 'project.updated', 'P', { name: 'x' }));
    ws.frame(ev('project:7', 2, 'task.moved.far', 'P'));
    ws.frame({ ...ev('project:7', 3, 'message', 'P', 'hello'), type: 'message', from: { user_id: 'u2', connection_id: 'c2' } });
    ws.frame(ev('other', 1)); // not joined: ignored
    expect(byName).toEqual(['x']);
    expect(byGlob).toEqual(['task.moved.far']);
    expect(messages).toEqual(['hello']);
    expect(all).toEqual([1, 2, 3]);
  });

  it('tracks presence', async () => {
    const { client, ws } = await connected();
    const p = client.join('project:7');
    joined(ws, 'project:7', 'P', 0, { members: [{ user_id: 'u1', connection_id: 'c1', node_id: 'n1' }] });
    const room = await p;
    const seen: string[] = [];
    room.on('member_joined', (m) => seen.push(`+${m.user_id}`));
    room.on('member_left', (m) => seen.push(`-${m.user_id}`));
    ws.frame({ type: 'member_joined', room: 'project:7', user_id: 'u2', connection_id: 'c2' });
    expect(room.members.map((m) => m.user_id)).toEqual(['u1', 'u2']);
    ws.frame({ type: 'member_left', room: 'project:7', user_id: 'u2', connection_id: 'c2' });
    expect(room.members.map((m) => m.user_id)).toEqual(['u1']);
    expect(seen).toEqual(['+u2', '-u2']);
  });

  it('drops duplicates by offset', async () => {
    const { client, ws } = await connected();
    const p = client.join('r');
    joined(ws, 'r', 'E1', 0);
    await p;
    const got: number[] = [];
    client.on('event', (e) => got.push(e.offset));
    for (const o of [1, 2, 2, 1, 3, 3, 4]) ws.frame(ev('r', o));
    expect(got).toEqual([1, 2, 3, 4]);
    expect(client.stats.duplicatesDropped).toBe(3);
    // A new epoch starts a fresh stream at offset 1.
    ws.frame(ev('r', 1, 'e', 'E2'));
    expect(got).toEqual([1, 2, 3, 4, 1]);
  });
});

describe('reconnect and resume', () => {
  it('re-joins every room with since = last delivered position, without gap or duplicate', async () => {
    const { client, ws } = await connected();
    const pa = client.join('chat:a');
    const pb = client.join('chat:b');
    joined(ws, 'chat:a', 'A', 10);
    joined(ws, 'chat:b', 'B', 0);
    await Promise.all([pa, pb]);
    const got: string[] = [];
    client.on('event', (e) => got.push(`${e.room}@${e.offset}`));
    ws.frame(ev('chat:a', 11, 'e', 'A'));
    ws.frame(ev('chat:a', 12, 'e', 'A'));
    ws.frame(ev('chat:b', 1, 'e', 'B'));

    const states: StateChange[] = [];
    client.on('state', (s) => states.push(s));
    ws.serverClose(1006);
    expect(client.state).toBe('reconnecting');
    expect(states[0]).toMatchObject({ state: 'reconnecting', code: 1006, attempt: 1 });
    expect(states[0].delayMs).toBeLessThanOrEqual(100);
    await vi.advanceTimersByTimeAsync(100);
    const ws2 = FakeWebSocket.last();
    expect(ws2).not.toBe(ws);
    await accept(ws2, [], 'c2');
    const joins = ws2.ofType('join_room');
    expect(joins).toEqual([
      { type: 'join_room', id: expect.any(Number), room: 'chat:a', since: { epoch: 'A', offset: 12 } },
      { type: 'join_room', id: expect.any(Number), room: 'chat:b', since: { epoch: 'B', offset: 1 } },
    ]);
    // Replay overlaps what was delivered (defensive dedupe), then goes on live.
    joined(ws2, 'chat:a', 'A', 14, { recovered: true, replayed: 2 });
    ws2.frame(ev('chat:a', 12, 'e', 'A'));
    ws2.frame(ev('chat:a', 13, 'e', 'A'));
    ws2.frame(ev('chat:a', 14, 'e', 'A'));
    joined(ws2, 'chat:b', 'B', 1, { recovered: true, replayed: 0 });
    ws2.frame(ev('chat:b', 2, 'e', 'B'));
    ws2.frame(ev('chat:a', 15, 'e', 'A'));
    expect(got).toEqual(['chat:a@11', 'chat:a@12', 'chat:b@1', 'chat:a@13', 'chat:a@14', 'chat:b@2', 'chat:a@15']);
    expect(client.stats.duplicatesDropped).toBe(1);
    expect(client.state).toBe('connected');
  });

  it('resumes auto-joined rooms: re-joins with since only when it missed events', async () => {
    const { client, ws } = await connected({}, [
      { room: 'user:u1', epoch: 'U', offset: 3 },
      { room: 'global', epoch: 'G', offset: 0 },
    ]);
    expect(client.room('user:u1').joined).toBe(true);
    const got: number[] = [];
    client.room('user:u1').on('event', (e) => got.push(e.offset));
    ws.frame(ev('user:u1', 4, 'e', 'U'));
    ws.serverClose(1001, 'shutdown');
    await vi.advanceTimersByTimeAsync(100);
    const ws2 = FakeWebSocket.last();
    await accept(ws2, [
      { room: 'user:u1', epoch: 'U', offset: 6 },
      { room: 'global', epoch: 'G', offset: 0 },
    ]);
    expect(ws2.ofType('join_room')).toEqual([
      { type: 'join_room', id: expect.any(Number), room: 'user:u1', since: { epoch: 'U', offset: 4 } },
    ]);
    // A live frame before room_joined is part of the replay: dropped here.
    ws2.frame(ev('user:u1', 6, 'e', 'U'));
    joined(ws2, 'user:u1', 'U', 6, { recovered: true, replayed: 2 });
    ws2.frame(ev('user:u1', 5, 'e', 'U'));
    ws2.frame(ev('user:u1', 6, 'e', 'U'));
    ws2.frame(ev('user:u1', 7, 'e', 'U'));
    expect(got).toEqual([4, 5, 6, 7]);
  });

  it('emits recovery_failed with the old and new positions when recovered is false', async () => {
    const { client, ws } = await connected();
    const p = client.join('chat:a');
    joined(ws, 'chat:a', 'A', 5);
    await p;
    const failed: unknown[] = [];
    client.room('chat:a').on('recovery_failed', (f) => failed.push(f));
    const clientLevel: unknown[] = [];
    client.on('recovery_failed', (f) => clientLevel.push(f));
    ws.serverClose(4011, 'slow_consumer');
    await vi.advanceTimersByTimeAsync(100);
    const ws2 = FakeWebSocket.last();
    await accept(ws2);
    joined(ws2, 'chat:a', 'NEW', 2, { recovered: false, replayed: 0 });
    const expected = { room: 'chat:a', previous: { epoch: 'A', offset: 5 }, epoch: 'NEW', offset: 2 };
    expect(failed).toEqual([expected]);
    expect(clientLevel).toEqual([expected]);
    const got: number[] = [];
    client.on('event', (e) => got.push(e.offset));
    ws2.frame(ev('chat:a', 3, 'e', 'NEW'));
    expect(got).toEqual([3]);
  });

  it('re-applies the event filter before re-joining', async () => {
    const { client, ws } = await connected();
    const s = client.subscribe('task.*');
    ws.frame({ type: 'ack', id: ws.lastOf('subscribe').id });
    await s;
    const p = client.join('r');
    joined(ws, 'r');
    await p;
    ws.serverClose(1006);
    await vi.advanceTimersByTimeAsync(100);
    const ws2 = FakeWebSocket.last();
    await accept(ws2);
    expect(ws2.sent.map((f) => f.type)).toEqual(['authenticate', 'subscribe', 'join_room']);
    expect(ws2.ofType('subscribe')[0].events).toEqual(['task.*']);
  });

  it('joins requested while offline complete after connecting; send waits for the connection', async () => {
    const client = open();
    const p = client.join('chat:a');
    const s = client.send('chat:a', 'hi');
    await flush();
    const ws = FakeWebSocket.last();
    await accept(ws);
    joined(ws, 'chat:a');
    await expect(p).resolves.toMatchObject({ name: 'chat:a' });
    await flush();
    ws.frame({ type: 'ack', id: ws.lastOf('send_message').id, epoch: 'E1', offset: 1 });
    await expect(s).resolves.toEqual({ epoch: 'E1', offset: 1 });
  });

  it('rejects an unacknowledged send when the connection drops', async () => {
    const { client, ws } = await connected();
    const s = client.send('chat:a', 'hi').catch((e) => e);
    ws.serverClose(1006);
    expect(await s).toMatchObject({ code: 'disconnected' });
  });

  it('backs off with growing, jittered, bounded delays and resets after a success', async () => {
    const { client, ws } = await connected();
    const delays: number[] = [];
    client.on('reconnecting', (s) => delays.push(s.delayMs!));
    ws.serverClose(1006);
    for (let i = 0; i < 6; i++) {
      await vi.advanceTimersByTimeAsync(1000);
      FakeWebSocket.last().serverClose(1006);
    }
    expect(delays).toHaveLength(7);
    delays.forEach((d, n) => expect(d).toBeLessThanOrEqual(Math.min(1000, 100 * 2 ** n)));
    expect(client.stats.reconnects).toBe(7);
    await vi.advanceTimersByTimeAsync(1000);
    await accept(FakeWebSocket.last());
    FakeWebSocket.last().serverClose(1006);
    expect(delays[7]).toBeLessThanOrEqual(100);
  });

  it('closes a connection whose pings go unanswered and reconnects', async () => {
    const { client, ws } = await connected({ pingIntervalMs: 500 });
    await vi.advanceTimersByTimeAsync(500);
    expect(ws.ofType('ping')).toHaveLength(1);
    ws.frame({ type: 'pong', id: ws.lastOf('ping').id });
    await vi.advanceTimersByTimeAsync(500);
    expect(client.state).toBe('connected');
    await vi.advanceTimersByTimeAsync(1000); // second ping unanswered
    expect(client.state).toBe('reconnecting');
    expect(ws.closedWith?.code).toBe(4000);
  });
});

describe('close codes', () => {
  for (const code of [4001, 4008, 4010, 4013, 4029, 1000, 1009]) {
    it(`does not reconnect after ${code}`, async () => {
      const { client, ws } = await connected();
      const seen: StateChange[] = [];
      client.on('disconnected', (s) => seen.push(s));
      const pending = client.join('chat:a').catch((e) => e);
      ws.serverClose(code, 'x');
      await vi.advanceTimersByTimeAsync(60_000);
      expect(client.state).toBe('disconnected');
      expect(seen[0]).toMatchObject({ code, reason: 'x' });
      expect(FakeWebSocket.instances).toHaveLength(1);
      expect(await pending).toMatchObject({ code: 'closed' });
    });
  }

  for (const code of [1001, 4011, 4014, 1006, 1011]) {
    it(`reconnects after ${code}`, async () => {
      const { client, ws } = await connected();
      ws.serverClose(code);
      expect(client.state).toBe('reconnecting');
      await vi.advanceTimersByTimeAsync(100);
      expect(FakeWebSocket.instances).toHaveLength(2);
    });
  }

  it('follows reconnect:false in a disconnect frame', async () => {
    const { client, ws } = await connected();
    ws.frame({ type: 'disconnect', code: 4011, reason: 'slow_consumer', reconnect: false });
    ws.serverClose(4011, 'slow_consumer');
    expect(client.state).toBe('disconnected');
  });

  it('uses the disconnect frame code when the close frame is lost', async () => {
    const { client, ws } = await connected();
    ws.frame({ type: 'disconnect', code: 4013, reason: 'disconnected', reconnect: false });
    ws.serverClose(1006);
    expect(client.state).toBe('disconnected');
  });

  it('4012 with a token provider: gets a fresh token and reconnects', async () => {
    const getToken = vi.fn(async () => tokenFor(3600));
    const { client, ws } = await connected({ token: undefined, getToken });
    expect(getToken).toHaveBeenCalledTimes(1);
    ws.frame({ type: 'disconnect', code: 4012, reason: 'token_expired', reconnect: true });
    ws.serverClose(4012, 'token_expired');
    expect(client.state).toBe('reconnecting');
    await vi.advanceTimersByTimeAsync(100);
    expect(getToken).toHaveBeenCalledTimes(2);
    const ws2 = FakeWebSocket.last();
    ws2.open();
    expect(ws2.lastOf('authenticate').token).toBe(await getToken.mock.results[1]!.value);
  });

  it('4012 with a fixed token: stops', async () => {
    const { client, ws } = await connected();
    ws.serverClose(4012, 'token_expired');
    expect(client.state).toBe('disconnected');
  });
});

describe('token refresh', () => {
  it('calls getToken shortly before exp and sends authenticate on the live socket', async () => {
    let n = 0;
    const getToken = vi.fn(async () => tokenFor(120, `u1`) + (n++ ? '' : ''));
    const refreshed: unknown[] = [];
    const { client, ws } = await connected({ token: undefined, getToken });
    client.on('token_refreshed', (r) => refreshed.push(r));
    expect(getToken).toHaveBeenCalledTimes(1);
    // exp in 120 s, lead 30 s: refresh at 90 s.
    await vi.advanceTimersByTimeAsync(89_000);
    expect(getToken).toHaveBeenCalledTimes(1);
    await vi.advanceTimersByTimeAsync(1_000);
    expect(getToken).toHaveBeenCalledTimes(2);
    const auth = ws.ofType('authenticate');
    expect(auth).toHaveLength(2);
    ws.frame({ type: 'authenticated', id: auth[1].id, connection_id: 'c1', user_id: 'u1', node_id: 'n1', rooms: [], heartbeat_interval_ms: 25000 });
    await flush();
    expect(refreshed).toHaveLength(1);
    expect(client.stats.tokenRefreshes).toBe(1);
    expect(FakeWebSocket.instances).toHaveLength(1);
    // The next refresh is scheduled from the new token's exp.
    await vi.advanceTimersByTimeAsync(90_000);
    expect(getToken).toHaveBeenCalledTimes(3);
  });

  it('refreshes short-lived tokens at half their remaining life', async () => {
    const getToken = vi.fn(async () => tokenFor(4));
    await connected({ token: undefined, getToken });
    await vi.advanceTimersByTimeAsync(1_900);
    expect(getToken).toHaveBeenCalledTimes(1);
    await vi.advanceTimersByTimeAsync(200);
    expect(getToken).toHaveBeenCalledTimes(2);
  });

  it('a refused refresh is reported and retried', async () => {
    const getToken = vi.fn(async () => tokenFor(60));
    const { client, ws } = await connected({ token: undefined, getToken });
    const errors: Error[] = [];
    client.on('error', (e) => errors.push(e));
    await vi.advanceTimersByTimeAsync(30_000);
    const auth = ws.lastOf('authenticate');
    ws.frame({ type: 'error', id: auth.id, code: 'unauthorized', message: 'bad signature' });
    await flush();
    expect(errors[0]).toMatchObject({ code: 'unauthorized' });
    await vi.advanceTimersByTimeAsync(5_000);
    expect(getToken).toHaveBeenCalledTimes(3);
  });

  it('does not refresh a fixed token', async () => {
    const { ws } = await connected({ token: tokenFor(10) });
    await vi.advanceTimersByTimeAsync(20_000);
    expect(ws.ofType('authenticate')).toHaveLength(1);
  });
});

describe('typed errors', () => {
  it('form a hierarchy', () => {
    const t = new TimeoutError('x', 3);
    expect(t).toBeInstanceOf(HeraldError);
    expect(t.requestId).toBe(3);
    expect(new UnsupportedError('y').code).toBe('unsupported');
  });
});
