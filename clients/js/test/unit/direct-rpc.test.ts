import { describe, expect, it, vi } from 'vitest';
import {
  HeraldError,
  TimeoutError,
  UnsupportedError,
  type HeraldClient,
  type HeraldDirectEvent,
  type HeraldEvent,
} from '../../src/index.js';
import { accept, ev, FakeEventSource, FakeWebSocket, flush, openWsClient, useFakes } from './fakes.js';

const clients = useFakes('2026-01-01T00:00:00Z');

const open = (extra: Record<string, unknown> = {}): HeraldClient => openWsClient(clients, extra);

async function connected(extra: Record<string, unknown> = {}) {
  const client = open(extra);
  await flush();
  const ws = FakeWebSocket.last();
  await accept(ws, [{ room: 'user:u1', epoch: 'E1', offset: 3 }]);
  return { client, ws };
}

const direct = (event = 'invoice.ready', data: unknown = { invoice: 91 }) => ({
  type: 'event',
  room: null,
  event,
  data,
  ts: 1795504388779,
  event_id: '9f0c1e7d2a4b6c8e0f1a3b5c7d9e1f20',
});

describe('direct messages', () => {
  it('emits `direct` for an event with room null, never touching room positions or `event`', async () => {
    const { client, ws } = await connected();
    const got: HeraldDirectEvent[] = [];
    const events: HeraldEvent[] = [];
    client.on('direct', (d) => got.push(d));
    client.on('event', (e) => events.push(e));
    const room = client.room('user:u1');
    const roomEvents: unknown[] = [];
    room.on('*', (e) => roomEvents.push(e));

    ws.frame(direct());
    ws.frame(direct('second', 2));
    expect(got.map((d) => [d.event, d.data, d.room])).toEqual([
      ['invoice.ready', { invoice: 91 }, null],
      ['second', 2, null],
    ]);
    expect(got[0]!.event_id).toBe('9f0c1e7d2a4b6c8e0f1a3b5c7d9e1f20');
    expect(events).toEqual([]);
    expect(roomEvents).toEqual([]);
    expect(room.position).toEqual({ epoch: 'E1', offset: 3 });

    // Room events keep flowing from the same position afterwards.
    ws.frame(ev('user:u1', 4));
    expect(events.map((e) => e.offset)).toEqual([4]);
    expect(room.position).toEqual({ epoch: 'E1', offset: 4 });
    expect(client.stats.duplicatesDropped).toBe(0);
  });

  it('delivers direct messages over SSE too, without touching last_event_id', async () => {
    const client = open({
      transports: ['sse'],
      EventSource: FakeEventSource as any,
      fetch: (async () => new Response('{}', { status: 200 })) as any,
    });
    const got: HeraldDirectEvent[] = [];
    client.on('direct', (d) => got.push(d));
    await flush();
    const es = FakeEventSource.last();
    es.open();
    es.frame({
      type: 'authenticated', connection_id: 'c1', user_id: 'u1', node_id: 'n1',
      rooms: [{ room: 'user:u1', epoch: 'E1', offset: 3 }], heartbeat_interval_ms: 25000,
    });
    es.frame({ type: 'room_joined', room: 'user:u1', epoch: 'E1', offset: 3 });
    await flush();
    es.frame(direct());
    expect(got).toHaveLength(1);
    expect(client.room('user:u1').position).toEqual({ epoch: 'E1', offset: 3 });
  });
});

describe('rpc', () => {
  it('sends an rpc frame with an id and resolves with the rpc_result data', async () => {
    const { client, ws } = await connected();
    const p = client.rpc('select_chat', { chat: 9 });
    const req = ws.lastOf('rpc');
    expect(req).toMatchObject({ type: 'rpc', method: 'select_chat', data: { chat: 9 } });
    expect(typeof req.id).toBe('number');
    ws.frame({ type: 'rpc_result', id: req.id, data: { selected: 9 } });
    await expect(p).resolves.toEqual({ selected: 9 });
  });

  it('sends data null when none is given, and matches concurrent replies by id', async () => {
    const { client, ws } = await connected();
    const a = client.rpc('a');
    const b = client.rpc('b', [1]);
    const [ra, rb] = ws.ofType('rpc');
    expect(ra.data).toBeNull();
    ws.frame({ type: 'rpc_result', id: rb.id, data: 'B' });
    ws.frame({ type: 'rpc_result', id: ra.id, data: null });
    await expect(b).resolves.toBe('B');
    await expect(a).resolves.toBeNull();
  });

  it('rejects with the error frame code', async () => {
    const { client, ws } = await connected();
    for (const code of ['not_found', 'unavailable', 'forbidden', 'limit_exceeded'] as const) {
      const p = client.rpc('m').catch((e) => e);
      const req = ws.lastOf('rpc');
      ws.frame({ type: 'error', id: req.id, code, message: `says ${code}` });
      const err = await p;
      expect(err).toBeInstanceOf(HeraldError);
      expect(err).toMatchObject({ code, message: `says ${code}`, requestId: req.id });
    }
    expect(client.state).toBe('connected');
  });

  it('times out after its own timeout and ignores the late reply', async () => {
    const { client, ws } = await connected();
    const p = client.rpc('slow', null, { timeoutMs: 300 }).catch((e) => e);
    await vi.advanceTimersByTimeAsync(299);
    await vi.advanceTimersByTimeAsync(1);
    const err = await p;
    expect(err).toBeInstanceOf(TimeoutError);
    ws.frame({ type: 'rpc_result', id: ws.lastOf('rpc').id, data: 1 });
    expect(client.state).toBe('connected');
  });

  it('rejects with disconnected when the connection drops before the reply', async () => {
    const { client, ws } = await connected();
    const p = client.rpc('m').catch((e) => e);
    ws.serverClose(1006);
    expect(await p).toMatchObject({ code: 'disconnected' });
  });

  it('waits for the connection while connecting', async () => {
    const client = open();
    const p = client.rpc('early', 1);
    await flush();
    const ws = FakeWebSocket.last();
    await accept(ws);
    await flush();
    ws.frame({ type: 'rpc_result', id: ws.lastOf('rpc').id, data: 'ok' });
    await expect(p).resolves.toBe('ok');
  });

  it('refuses bad arguments, SSE and a closed client', async () => {
    const { client } = await connected();
    await expect(client.rpc('')).rejects.toBeInstanceOf(TypeError);
    await expect(client.rpc('m', null, { timeoutMs: -1 })).rejects.toBeInstanceOf(TypeError);
    client.close();
    await expect(client.rpc('m')).rejects.toMatchObject({ code: 'closed' });
    const sse = open({ transports: ['sse'], EventSource: FakeEventSource as any });
    await expect(sse.rpc('m')).rejects.toBeInstanceOf(UnsupportedError);
  });
});
