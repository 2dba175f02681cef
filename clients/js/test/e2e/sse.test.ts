import { EventSource } from 'eventsource';
import { afterEach, describe, expect, inject, it } from 'vitest';
import { connect, UnsupportedError, type HeraldClient, type HeraldEvent } from '../../src/index.js';
import { api, sleep, until } from './herald.js';

const url = inject('heraldUrl');
const herald = api(url);
const clients: HeraldClient[] = [];
afterEach(() => {
  while (clients.length) clients.pop()!.close();
});

/** A WebSocket that can never connect (say, a proxy that strips upgrades). */
class BrokenWebSocket {
  constructor() {
    throw new Error('WebSocket blocked');
  }
}

function publishMany(room: string, count: number, everyMs: number) {
  return (async () => {
    const offsets: number[] = [];
    for (let i = 1; i <= count; i++) {
      offsets.push((await herald.publish(room, 'tick', { i })).offset);
      await sleep(everyMs);
    }
    return offsets;
  })();
}

describe('SSE against a real node', () => {
  it('falls back to SSE when WebSocket cannot connect, receives, joins by reopening, resumes with no gap', async () => {
    const client = connect({
      url,
      token: await herald.token('sse-fallback'),
      WebSocket: BrokenWebSocket as any,
      EventSource: EventSource as any,
      backoff: { initialMs: 50, maxMs: 100 },
    });
    clients.push(client);
    const transports: unknown[] = [];
    client.on('transport', (t) => transports.push(t));
    const a: HeraldEvent[] = [];
    const b: HeraldEvent[] = [];
    client.room('stream:sse-a').on('tick', (e) => a.push(e));
    client.room('stream:sse-b').on('tick', (e) => b.push(e));
    await client.join('stream:sse-a');
    expect(client.transport).toBe('sse');
    expect(transports).toEqual([{ from: 'websocket', to: 'sse' }]);
    const conns = await herald.connections('sse-fallback');
    expect(conns.connections.map((c: any) => c.transport)).toEqual(['sse']);

    // Events keep flowing into room a while room b is joined (the stream is
    // reopened with both rooms and resumed from last_event_id).
    const publishing = publishMany('stream:sse-a', 30, 25);
    await sleep(200);
    await client.join('stream:sse-b');
    const expected = await publishing;
    // The single event of room b must arrive on its own. (With herald at
    // bc99b02 it often sits in the SSE queue until the next push: the SSE
    // slow-reader watch awaits queue.closed() on the same Notify as the
    // stream's next_batch(), and push()'s notify_one can wake the watch.)
    await herald.publish('stream:sse-b', 'tick', { i: 1 });
    await until(() => a.length === expected.length && b.length === 1, 5000, 'events over SSE').catch((err) => {
      throw new Error(`${err.message}: a=${JSON.stringify(a.map((e) => e.offset))} b=${b.length} expected ${expected.length}, state ${client.state}`);
    });
    expect(a.map((e) => e.offset)).toEqual(expected);
    expect(b[0]!.data).toEqual({ i: 1 });

    await expect(client.send('stream:sse-a', 'x')).rejects.toBeInstanceOf(UnsupportedError);
  });

  it('resumes across stream reopens for token refresh (transports: ["sse"])', async () => {
    const client = connect({
      url,
      getToken: () => herald.token('sse-refresh', '2s'),
      EventSource: EventSource as any,
      transports: ['sse'],
      backoff: { initialMs: 50, maxMs: 200 },
    });
    clients.push(client);
    const got: HeraldEvent[] = [];
    client.on('event', (e) => got.push(e));
    await client.join('stream:sse-refresh');
    const expected = await publishMany('stream:sse-refresh', 40, 110);
    await until(() => got.length >= expected.length, 5000, 'events');
    await sleep(100);
    expect(client.stats.tokenRefreshes).toBeGreaterThanOrEqual(2);
    expect(got.map((e) => e.offset)).toEqual(expected);
    expect(client.state).toBe('connected');
  });

  it('the event filter is applied to the stream', async () => {
    const client = connect({
      url,
      token: await herald.token('sse-filter'),
      EventSource: EventSource as any,
      transports: ['sse'],
    });
    clients.push(client);
    const got: string[] = [];
    client.on('event', (e) => got.push(e.event));
    await client.subscribe('keep.*');
    await client.join('stream:sse-filter');
    await herald.publish('stream:sse-filter', 'drop.me', 1);
    await herald.publish('stream:sse-filter', 'keep.me', 2);
    await until(() => got.length === 1, 5000, 'filtered event');
    await sleep(100);
    expect(got).toEqual(['keep.me']);
  });
});
