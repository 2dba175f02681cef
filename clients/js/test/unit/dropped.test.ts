import { describe, expect, it } from 'vitest';
import { connect, type EventsDropped } from '../../src/index.js';
import { accept, ev, FakeEventSource, FakeWebSocket, flush, openWsClient, useFakes } from './fakes.js';

const clients = useFakes();

async function joinedRoom(room: string) {
  const client = openWsClient(clients, {});
  await flush();
  const ws = FakeWebSocket.last();
  await accept(ws, []);
  const p = client.join(room);
  const req = ws.ofType('join_room').pop();
  ws.frame({ type: 'room_joined', id: req.id, room, epoch: 'E', offset: 0 });
  await p;
  return { client, ws };
}

describe('events_dropped', () => {
  it('re-joins from the gap and delivers every offset once, in order', async () => {
    const { client, ws } = await joinedRoom('feed:1');
    const got: number[] = [];
    const notices: EventsDropped[] = [];
    const roomNotices: EventsDropped[] = [];
    client.on('event', (e) => got.push(e.offset));
    client.on('events_dropped', (d) => notices.push(d));
    client.room('feed:1').on('events_dropped', (d) => roomNotices.push(d));
    for (const o of [1, 2]) ws.frame(ev('feed:1', o, 'e', 'E'));
    // 3 and 4 were dropped by the server; 5 (critical) and 6 were kept.
    ws.frame({ type: 'events_dropped', rooms: [{ room: 'feed:1', epoch: 'E', offset: 2 }] });
    const rejoin = ws.ofType('join_room').pop();
    expect(rejoin).toEqual({ type: 'join_room', id: expect.any(Number), room: 'feed:1', since: { epoch: 'E', offset: 2 } });
    expect(notices).toEqual([{ room: 'feed:1', epoch: 'E', offset: 2 }]);
    expect(roomNotices).toEqual(notices);
    // Kept events queued after the gap arrive before the rejoin's reply...
    ws.frame(ev('feed:1', 5, 'e', 'E'));
    // ...and a second notice for the same gap changes nothing.
    ws.frame({ type: 'events_dropped', rooms: [{ room: 'feed:1', epoch: 'E', offset: 4 }] });
    ws.frame(ev('feed:1', 6, 'e', 'E'));
    expect(ws.ofType('join_room')).toHaveLength(2);
    ws.frame({ type: 'room_joined', id: rejoin.id, room: 'feed:1', epoch: 'E', offset: 6, recovered: true, replayed: 4 });
    for (const o of [3, 4, 5, 6, 7]) ws.frame(ev('feed:1', o, 'e', 'E'));
    expect(got).toEqual([1, 2, 3, 4, 5, 6, 7]);
    expect(client.stats.eventsDropped).toBe(1);
  });

  it('on SSE, reopens the stream from the gap and delivers every offset once, in order', async () => {
    const client = connect({
      url: 'http://127.0.0.1:9/',
      token: 'tok',
      EventSource: FakeEventSource as any,
      transports: ['sse'],
      requestTimeoutMs: 1000,
      fetch: (async () => new Response('{}', { status: 200 })) as any,
    });
    clients.push(client);
    const got: string[] = [];
    const notices: EventsDropped[] = [];
    client.on('event', (e) => got.push(`${e.room}@${e.offset}`));
    client.on('events_dropped', (d) => notices.push(d));
    const pa = client.join('feed:1');
    const pb = client.join('feed:2');
    await flush();
    let es = FakeEventSource.last();
    es.open();
    es.frame({ type: 'authenticated', connection_id: 'c1', user_id: 'u1', node_id: 'n1', rooms: [], heartbeat_interval_ms: 25000 });
    es.frame({ type: 'room_joined', room: 'feed:1', epoch: 'E', offset: 0 });
    es.frame({ type: 'room_joined', room: 'feed:2', epoch: 'F', offset: 0 });
    await Promise.all([pa, pb]);
    for (const o of [1, 2]) es.frame(ev('feed:1', o, 'e', 'E'));
    es.frame(ev('feed:2', 1, 'e', 'F'));
    // feed:1's 3 and 4 were dropped; 5 was kept and follows the notice.
    es.frame({ type: 'events_dropped', rooms: [{ room: 'feed:1', epoch: 'E', offset: 2 }] });
    es.frame(ev('feed:1', 5, 'e', 'E'));
    es.frame(ev('feed:2', 2, 'e', 'F'));
    expect(notices).toEqual([{ room: 'feed:1', epoch: 'E', offset: 2 }]);
    await flush();
    expect(es.closed).toBe(true);
    es = FakeEventSource.last();
    expect(FakeEventSource.instances).toHaveLength(2);
    expect(es.query().get('last_event_id')).toBe('feed:1~E~2,feed:2~F~2');
    es.open();
    es.frame({ type: 'authenticated', connection_id: 'c2', user_id: 'u1', node_id: 'n1', rooms: [], heartbeat_interval_ms: 25000 });
    es.frame({ type: 'room_joined', room: 'feed:1', epoch: 'E', offset: 5, recovered: true, replayed: 3 });
    for (const o of [3, 4, 5]) es.frame(ev('feed:1', o, 'e', 'E'));
    es.frame({ type: 'room_joined', room: 'feed:2', epoch: 'F', offset: 2, recovered: true, replayed: 0 });
    es.frame(ev('feed:2', 3, 'e', 'F'));
    expect(got).toEqual(['feed:1@1', 'feed:1@2', 'feed:2@1', 'feed:2@2', 'feed:1@3', 'feed:1@4', 'feed:1@5', 'feed:2@3']);
    expect(client.stats.eventsDropped).toBe(1);
  });

  it('ignores rooms it is not in', async () => {
    const { client, ws } = await joinedRoom('feed:1');
    const notices: EventsDropped[] = [];
    client.on('events_dropped', (d) => notices.push(d));
    ws.frame({ type: 'events_dropped', rooms: [{ room: 'feed:other', epoch: 'E', offset: 9 }] });
    expect(notices).toEqual([]);
    expect(ws.ofType('join_room')).toHaveLength(1);
  });
});
