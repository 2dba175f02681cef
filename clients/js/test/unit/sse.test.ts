import { describe, expect, it, vi } from 'vitest';
import { connect, UnsupportedError, type HeraldClient } from '../../src/index.js';
import { FailingWebSocket, FakeEventSource, FakeWebSocket, flush, tokenFor, useFakes } from './fakes.js';

const clients = useFakes();

function open(extra: Record<string, unknown> = {}): HeraldClient {
  const c = connect({
    url: 'http://127.0.0.1:9/base/',
    token: 'tok',
    EventSource: FakeEventSource as any,
    transports: ['sse'],
    backoff: { initialMs: 100, maxMs: 1000 },
    requestTimeoutMs: 1000,
    fetch: (async () => new Response('{}', { status: 200 })) as any,
    ...extra,
  });
  clients.push(c);
  return c;
}

const authenticated = (rooms: any[] = []) => ({
  type: 'authenticated', connection_id: 'c1', user_id: 'u1', node_id: 'n1', rooms, heartbeat_interval_ms: 25000,
});
const ev = (room: string, offset: number, epoch = 'E') => ({ type: 'event', room, event: 'x', data: offset, epoch, offset });

describe('SSE', () => {
  it('falls back after 3 failed WebSocket attempts', async () => {
    const transports: unknown[] = [];
    const client = open({ WebSocket: FailingWebSocket as any, transports: ['websocket', 'sse'], requestTimeoutMs: 10_000 });
    client.on('transport', (t) => transports.push(t));
    const joined = client.join('chat:a');
    await vi.advanceTimersByTimeAsync(5_000);
    expect(FakeWebSocket.instances).toHaveLength(3);
    expect(FakeEventSource.instances).toHaveLength(1);
    expect(transports).toEqual([{ from: 'websocket', to: 'sse' }]);
    const es = FakeEventSource.last();
    expect(es.url.startsWith('http://127.0.0.1:9/base/sse?')).toBe(true);
    expect(es.query().get('rooms')).toBe('chat:a');
    expect(es.query().get('token')).toBe('tok');
    es.open();
    es.frame(authenticated());
    es.frame({ type: 'room_joined', room: 'chat:a', epoch: 'E', offset: 0 });
    await expect(joined).resolves.toMatchObject({ name: 'chat:a' });
    expect(client.transport).toBe('sse');
  });

  it('goes straight to SSE when no WebSocket exists', async () => {
    const client = open({ transports: ['websocket', 'sse'], WebSocket: undefined });
    await flush();
    expect(FakeEventSource.instances).toHaveLength(1);
    expect(client.state).toBe('connecting');
  });

  it('receives with the same API, rejects send with UnsupportedError, and resumes via last_event_id', async () => {
    const client = open();
    const got: string[] = [];
    client.room('chat:a').on('event', (e) => got.push(`a${e.offset}`));
    client.room('user:u1').on('event', (e) => got.push(`u${e.offset}`));
    const p = client.join('chat:a');
    await flush();
    let es = FakeEventSource.last();
    es.open();
    es.frame(authenticated([{ room: 'user:u1', epoch: 'U', offset: 0 }]));
    es.frame({ type: 'room_joined', room: 'user:u1', epoch: 'U', offset: 0 });
    es.frame({ type: 'room_joined', room: 'chat:a', epoch: 'E', offset: 0 });
    await p;
    es.frame(ev('chat:a', 1));
    es.frame(ev('user:u1', 1, 'U'));
    await expect(client.send('chat:a', 1)).rejects.toBeInstanceOf(UnsupportedError);

    // Joining another room reopens the stream with the new list and the positions.
    const pb = client.join('chat:b');
    await flush();
    expect(es.closed).toBe(true);
    es = FakeEventSource.last();
    expect(es.query().get('rooms')).toBe('chat:a,chat:b');
    expect(es.query().get('last_event_id')).toBe('chat:a~E~1,user:u1~U~1');
    es.open();
    es.frame(authenticated([{ room: 'user:u1', epoch: 'U', offset: 2 }]));
    es.frame({ type: 'room_joined', room: 'user:u1', epoch: 'U', offset: 2, recovered: true, replayed: 1 });
    es.frame(ev('user:u1', 2, 'U'));
    es.frame({ type: 'room_joined', room: 'chat:a', epoch: 'E', offset: 1, recovered: true, replayed: 0 });
    es.frame({ type: 'room_joined', room: 'chat:b', epoch: 'B', offset: 0 });
    await pb;
    es.frame(ev('chat:a', 1)); // duplicate
    es.frame(ev('chat:a', 2));
    expect(got).toEqual(['a1', 'u1', 'u2', 'a2']);
  });

  it('lets the EventSource reconnect by itself, then continues', async () => {
    const client = open();
    const got: number[] = [];
    client.on('event', (e) => got.push(e.offset));
    const p = client.join('chat:a');
    await flush();
    const es = FakeEventSource.last();
    es.open();
    es.frame(authenticated());
    es.frame({ type: 'room_joined', room: 'chat:a', epoch: 'E', offset: 0 });
    await p;
    es.frame(ev('chat:a', 1));
    es.readyState = 0;
    es.onerror!({});
    expect(client.state).toBe('reconnecting');
    es.open();
    es.frame(authenticated());
    es.frame({ type: 'room_joined', room: 'chat:a', epoch: 'E', offset: 3, recovered: true, replayed: 2 });
    es.frame(ev('chat:a', 2));
    es.frame(ev('chat:a', 3));
    expect(client.state).toBe('connected');
    expect(got).toEqual([1, 2, 3]);
    expect(FakeEventSource.instances).toHaveLength(1);
  });

  it('honours the disconnect frame', async () => {
    const client = open();
    await flush();
    const es = FakeEventSource.last();
    es.open();
    es.frame(authenticated());
    es.frame({ type: 'disconnect', code: 4013, reason: 'disconnected', reconnect: false });
    expect(es.closed).toBe(true);
    expect(client.state).toBe('disconnected');
  });

  it('reopens with a fresh token before exp and after 4012', async () => {
    const getToken = vi.fn(async () => tokenFor(60));
    const client = open({ token: undefined, getToken });
    await flush();
    let es = FakeEventSource.last();
    es.open();
    es.frame(authenticated());
    await vi.advanceTimersByTimeAsync(30_000);
    expect(getToken).toHaveBeenCalledTimes(2);
    expect(FakeEventSource.instances).toHaveLength(2);
    es = FakeEventSource.last();
    es.open();
    es.frame(authenticated());
    es.frame({ type: 'disconnect', code: 4012, reason: 'token_expired', reconnect: true });
    expect(client.state).toBe('reconnecting');
    await vi.advanceTimersByTimeAsync(100);
    expect(getToken).toHaveBeenCalledTimes(3);
    expect(FakeEventSource.instances).toHaveLength(3);
  });

  it('fails a join the server refuses (HTTP 403 on the reopened stream)', async () => {
    const client = open({
      fetch: (async () =>
        new Response(JSON.stringify({ error: { code: 'forbidden', message: 'not allowed to join room `secret`' } }), {
          status: 403,
        })) as any,
    });
    await flush();
    let es = FakeEventSource.last();
    es.open();
    es.frame(authenticated());
    const p = client.join('secret').catch((e) => e);
    await flush();
    es = FakeEventSource.last();
    es.readyState = 2;
    es.onerror!({});
    expect(await p).toMatchObject({ code: 'forbidden' });
    await flush();
    expect(FakeEventSource.last().query().get('rooms')).toBeNull();
  });
});
