import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { EventSource } from 'eventsource';
import { afterAll, afterEach, beforeAll, describe, expect, inject, it } from 'vitest';
import WebSocket from 'ws';
import { connect, HeraldError, type HeraldClient, type HeraldDirectEvent, type HeraldEvent } from '../../src/index.js';
import { api, freePort, startHerald, until, type Node } from './herald.js';

const url = inject('heraldUrl');
const herald = api(url);
const clients: HeraldClient[] = [];
afterEach(() => {
  while (clients.length) clients.pop()!.close();
});

function open(nodeUrl: string, token: string, transport: 'websocket' | 'sse' = 'websocket'): HeraldClient {
  const c = connect({
    url: nodeUrl,
    token,
    WebSocket: WebSocket as any,
    EventSource: EventSource as any,
    transports: [transport],
    backoff: { initialMs: 200, maxMs: 1000 },
    requestTimeoutMs: 5000,
  });
  clients.push(c);
  return c;
}

const whenConnected = (c: HeraldClient) => until(() => c.state === 'connected', 10_000, 'connected');

describe('direct messages against a real node', () => {
  it('a message sent to a user arrives as `direct` on each of its connections; to a connection, on that one only', async () => {
    const token = await herald.token('direct-user');
    const ws = open(url, token);
    const sse = open(url, token, 'sse');
    const viaWs: HeraldDirectEvent[] = [];
    const viaSse: HeraldDirectEvent[] = [];
    const roomEvents: HeraldEvent[] = [];
    ws.on('direct', (d) => viaWs.push(d));
    sse.on('direct', (d) => viaSse.push(d));
    ws.on('event', (e) => roomEvents.push(e));
    await ws.join('stream:direct');
    await whenConnected(sse);
    await until(async () => (await herald.connections('direct-user')).connections?.length === 2, 10_000, 'both connections listed');
    const before = ws.room('stream:direct').position;

    const sent = await herald.sendToUser('direct-user', 'invoice.ready', { invoice: 91 });
    expect(sent).toEqual({ user_id: 'direct-user', delivered: 2 });
    await until(() => viaWs.length === 1 && viaSse.length === 1, 10_000, 'the direct message on both transports');
    for (const d of [viaWs[0]!, viaSse[0]!]) {
      expect(d).toMatchObject({ type: 'event', room: null, event: 'invoice.ready', data: { invoice: 91 } });
      expect(d).not.toHaveProperty('epoch');
      expect(d).not.toHaveProperty('offset');
      expect(typeof d.event_id).toBe('string');
    }
    expect(viaWs[0]!.event_id).toBe(viaSse[0]!.event_id);

    const one = await herald.sendToConnection(ws.connectionId!, 'only.you', 1);
    expect(one).toEqual({ connection_id: ws.connectionId, delivered: 1 });
    await until(() => viaWs.length === 2, 10_000, 'the connection-addressed message');
    expect(viaWs[1]).toMatchObject({ room: null, event: 'only.you', data: 1 });

    // Room delivery is untouched: positions did not move, and the next
    // published event is delivered with no duplicate and no gap.
    expect(ws.room('stream:direct').position).toEqual(before);
    const pub = await herald.publish('stream:direct', 'after', 'x');
    await until(() => roomEvents.length === 1, 10_000, 'the room event');
    expect(roomEvents[0]).toMatchObject({ room: 'stream:direct', offset: pub.offset });
    expect(viaSse).toHaveLength(1);
  });

  it('rpc without proxy.rpc_url rejects with not_found', async () => {
    const c = open(url, await herald.token('rpc-off'));
    const err = (await c.rpc('anything', { a: 1 }).catch((e: HeraldError) => e)) as HeraldError;
    expect(err).toBeInstanceOf(HeraldError);
    expect(err.code).toBe('not_found');
    expect(c.state).toBe('connected');
  });
});

/** A tiny application backend playing `proxy.rpc_url`. */
function rpcBackend(): Promise<{ server: Server; port: number; calls: any[] }> {
  const calls: any[] = [];
  const server = createServer((req: IncomingMessage, res: ServerResponse) => {
    let body = '';
    req.on('data', (d) => (body += d));
    req.on('end', () => {
      let call: any;
      try {
        call = JSON.parse(body);
      } catch {
        res.writeHead(400, { 'content-type': 'application/json' }).end('{"message":"not json"}');
        return;
      }
      calls.push(call);
      const reply = (status: number, json: unknown) =>
        res.writeHead(status, { 'content-type': 'application/json' }).end(JSON.stringify(json));
      if (call.method === 'echo') reply(200, { method: call.method, data: call.data, user_id: call.user_id, connection_id: call.connection_id });
      else if (call.method === 'deny') reply(403, { message: 'not yours' });
      else if (call.method === 'broken') reply(500, {});
      else reply(404, { message: `no method ${call.method}` });
    });
  });
  return new Promise((resolve) => {
    freePort().then((port) => server.listen(port, '127.0.0.1', () => resolve({ server, port, calls })));
  });
}

describe('rpc against a real node with proxy.rpc_url', () => {
  let node: Node;
  let backend: Awaited<ReturnType<typeof rpcBackend>>;
  beforeAll(async () => {
    backend = await rpcBackend();
    node = await startHerald(undefined, `
[proxy]
rpc_url = "http://127.0.0.1:${backend.port}/rpc"
timeout = "2s"
`);
  });
  afterAll(async () => {
    await node?.stop();
    await new Promise((r) => backend?.server.close(r));
  });

  it('round trips through the backend and maps its refusals and failures to error codes', async () => {
    const c = open(node.url, await api(node.url).token('rpc-user'));
    const answer = await c.rpc<any>('echo', { chat: 9 });
    expect(answer).toEqual({ method: 'echo', data: { chat: 9 }, user_id: 'rpc-user', connection_id: c.connectionId });
    expect(backend.calls[0]).toMatchObject({ method: 'echo', user_id: 'rpc-user', tenant: null });

    expect(await c.rpc('nothing').catch((e) => e)).toMatchObject({ code: 'not_found', message: 'no method nothing' });
    expect(await c.rpc('deny').catch((e) => e)).toMatchObject({ code: 'forbidden', message: 'not yours' });
    expect(await c.rpc('broken').catch((e) => e)).toMatchObject({ code: 'unavailable' });
    await expect(c.rpc('echo')).resolves.toMatchObject({ data: null });
  });
});
