import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import type { EventsDropped, HeraldClient } from '../../src/index.js';
import { accept, ev, FakeWebSocket, flush, openWsClient } from './fakes.js';

let clients: HeraldClient[] = [];

beforeEach(() => {
  vi.useFakeTimers();
  FakeWebSocket.reset();
});
afterEach(() => {
  for (const c of clients) c.close();
  clients = [];
  vi.useRealTimers();
});

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

  it('ignores rooms it is not in', async () => {
    const { client, ws } = await joinedRoom('feed:1');
    const notices: EventsDropped[] = [];
    client.on('events_dropped', (d) => notices.push(d));
    ws.frame({ type: 'events_dropped', rooms: [{ room: 'feed:other', epoch: 'E', offset: 9 }] });
    expect(notices).toEqual([]);
    expect(ws.ofType('join_room')).toHaveLength(1);
  });
});
