// socket.io-client 4.8 against one Herald node: connecting over each
// transport, refusals, rooms, events with meta, messages, presence, rate
// limits and a server-side kick (docs/protocol.md section 8).

import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import {
  BURST,
  Herald,
  client,
  connectError,
  connected,
  nextEvent,
  request,
  token,
  uniq,
  waitFor,
} from './harness.js';

let node;
const sockets = [];

/** A tracked client of the test node (closed after the suite). */
function open(opts) {
  const s = client(node.url, opts);
  sockets.push(s);
  return s;
}

before(async () => {
  node = await Herald.start();
});

after(async () => {
  for (const s of sockets) s.close();
  await node?.stop();
});

const TRANSPORTS = [
  ['polling then upgrade (the default)', {}],
  ['websocket only', { transports: ['websocket'] }],
  ['polling only', { transports: ['polling'] }],
];

describe('connect', () => {
  for (const [label, opts] of TRANSPORTS) {
    it(`auth.token, ${label}: authenticated, auto-joined user room, round trip`, async () => {
      const user = `u${uniq()}`;
      const s = await connected(open({ auth: { token: token(user) }, ...opts }));
      assert.equal(typeof s.id, 'string');
      const [auth] = (await nextEvent(s, 'authenticated')).args;
      assert.equal(auth.user_id, user);
      assert.ok(auth.rooms.some((r) => r.room === `user:${user}`), JSON.stringify(auth));
      if (!opts.transports) {
        await waitFor(() => s.io.engine.transport.name === 'websocket', 'the upgrade to websocket');
      }
      // Auto-joined: no join, yet the user room's event arrives.
      const pub = await node.publish(`user:${user}`, 'note.created', { n: 1 });
      const [data, meta] = (await nextEvent(s, 'note.created')).args;
      assert.deepEqual(data, { n: 1 });
      assert.equal(meta.room, `user:${user}`);
      assert.equal(meta.offset, pub.offset);
      // A client request and its ack over the same transport.
      const room = `sio:t${uniq()}`;
      const joined = await request(s, 'join_room', { room });
      assert.equal(joined.room, room);
      assert.equal(s.io.engine.transport.name, opts.transports?.[0] ?? 'websocket');
    });
  }

  it('token in the query string or the Authorization header', async () => {
    const a = `u${uniq()}`;
    const byQuery = await connected(open({ query: { token: token(a) }, transports: ['websocket'] }));
    assert.equal((await nextEvent(byQuery, 'authenticated')).args[0].user_id, a);
    const b = `u${uniq()}`;
    const byHeader = await connected(open({ extraHeaders: { authorization: `Bearer ${token(b)}` } }));
    assert.equal((await nextEvent(byHeader, 'authenticated')).args[0].user_id, b);
  });

  for (const [label, auth] of [
    ['a bad signature', { token: `${token('x').slice(0, -4)}AAAA` }],
    ['no token at all', {}],
  ]) {
    it(`refused with ${label}: connect_error "unauthorized" with data.code`, async () => {
      const s = open({ auth, transports: ['websocket'], reconnection: false });
      const err = await connectError(s);
      assert.equal(err.message, 'unauthorized');
      assert.equal(err.data?.code, 'unauthorized');
      assert.equal(typeof err.data?.message, 'string');
      assert.equal(s.connected, false);
    });
  }

  it('over limits.max_connections_per_user: connect_error "limit_exceeded"', async () => {
    const limited = await Herald.start('', { max_connections_per_user: 1 });
    try {
      const auth = { token: token(`u${uniq()}`) };
      const a = client(limited.url, { auth, transports: ['websocket'] });
      sockets.push(a);
      await connected(a);
      const b = client(limited.url, { auth, transports: ['websocket'], reconnection: false });
      sockets.push(b);
      const err = await connectError(b);
      assert.equal(err.message, 'limit_exceeded');
      assert.equal(err.data?.code, 'limit_exceeded');
      assert.ok(a.connected, 'the first connection stays');
    } finally {
      await limited.stop();
    }
  });

  it('another namespace: connect_error "invalid namespace"', async () => {
    const s = client(`${node.url}/admin`, { auth: { token: token(`u${uniq()}`) }, reconnection: false });
    sockets.push(s);
    const err = await connectError(s);
    assert.equal(err.message, 'invalid namespace');
  });
});

describe('rooms and events', () => {
  it('join_room acks with room, epoch and offset; a forbidden join acks with code forbidden', async () => {
    const s = await connected(open({ auth: { token: token(`u${uniq()}`) } }));
    const room = `sio:j${uniq()}`;
    await node.publish(room, 'before', { n: 0 });
    const ack = await request(s, 'join_room', { room });
    assert.equal(ack.room, room);
    assert.equal(typeof ack.epoch, 'string');
    assert.equal(ack.offset, 1);
    assert.equal(ack.type, undefined, 'the ack has no type envelope');
    // The join is also announced as an event (recovery keeps its token current).
    await nextEvent(s, 'room_joined', (d) => d.room === room);

    const denied = await request(s, 'join_room', { room: 'project:424242' });
    assert.equal(denied.code, 'forbidden');
    assert.equal(typeof denied.message, 'string');

    const left = await request(s, 'leave_room', { room });
    assert.equal(left.room, room);
    const notJoined = await request(s, 'leave_room', { room });
    assert.equal(notJoined.code, 'not_joined');
  });

  it('join_room with since replays the missed events after the ack', async () => {
    const s = await connected(open({ auth: { token: token(`u${uniq()}`) }, transports: ['websocket'] }));
    const room = `sio:h${uniq()}`;
    const first = await node.publish(room, 'tick', { n: 1 });
    for (let n = 2; n <= 4; n++) await node.publish(room, 'tick', { n });
    const ack = await request(s, 'join_room', { room, since: { epoch: first.epoch, offset: first.offset } });
    assert.equal(ack.recovered, true, JSON.stringify(ack));
    assert.equal(ack.replayed, 3);
    await waitFor(() => s.events.filter((e) => e.event === 'tick').length === 3, 'three replayed events');
    assert.deepEqual(
      s.events.filter((e) => e.event === 'tick').map((e) => e.args[0].n),
      [2, 3, 4],
    );
  });

  it('subscribe {room} joins; a request without an ack gets its reply as an event', async () => {
    const s = await connected(open({ auth: { token: token(`u${uniq()}`) }, transports: ['websocket'] }));
    const a = `sio:s${uniq()}`;
    const ack = await request(s, 'subscribe', { room: a });
    assert.equal(ack.room, a);
    const b = `sio:s${uniq()}`;
    s.emit('join_room', { room: b });
    await nextEvent(s, 'room_joined', (d) => d.room === b);
    s.emit('join_room', { room: 'project:424242' });
    const [err] = (await nextEvent(s, 'error', (d) => d.code === 'forbidden')).args;
    assert.equal(typeof err.message, 'string');
  });

  it('events by name with (data, meta) in publish order', async () => {
    const s = await connected(open({ auth: { token: token(`u${uniq()}`) }, transports: ['websocket'] }));
    const room = `sio:e${uniq()}`;
    await request(s, 'join_room', { room });
    const pubs = [];
    for (let n = 1; n <= 5; n++) pubs.push(await node.publish(room, 'task.assigned', { n, who: 'ada' }));
    await waitFor(() => s.events.filter((e) => e.event === 'task.assigned').length === 5, 'five events');
    const got = s.events.filter((e) => e.event === 'task.assigned');
    got.forEach(({ args: [data, meta] }, i) => {
      assert.deepEqual(data, { n: i + 1, who: 'ada' });
      assert.equal(meta.room, room);
      assert.equal(meta.offset, pubs[i].offset);
      assert.equal(meta.epoch, pubs[i].epoch);
      assert.equal(typeof meta.ts, 'number');
      assert.equal(typeof meta.event_id, 'string');
      assert.equal(meta.from, undefined);
    });
  });

  it('subscribe {events} filters events by name', async () => {
    const s = await connected(open({ auth: { token: token(`u${uniq()}`) }, transports: ['websocket'] }));
    const room = `sio:f${uniq()}`;
    await request(s, 'join_room', { room });
    await request(s, 'subscribe', { events: ['keep.*'] });
    await node.publish(room, 'drop.me', { n: 1 });
    await node.publish(room, 'keep.me', { n: 2 });
    await nextEvent(s, 'keep.me');
    assert.equal(s.events.filter((e) => e.event === 'drop.me').length, 0);
  });

  it('send_message reaches another member, with meta.from', async () => {
    const room = `sio:m${uniq()}`;
    const alice = `u${uniq()}`;
    const bob = `u${uniq()}`;
    const a = await connected(open({ auth: { token: token(alice) } }));
    const b = await connected(open({ auth: { token: token(bob) }, transports: ['websocket'] }));
    await request(a, 'join_room', { room });
    await request(b, 'join_room', { room });
    const ack = await request(a, 'send_message', { room, event: 'chat.said', data: { text: 'hi' } });
    assert.equal(typeof ack.epoch, 'string');
    assert.equal(typeof ack.offset, 'number');
    const [data, meta] = (await nextEvent(b, 'chat.said')).args;
    assert.deepEqual(data, { text: 'hi' });
    assert.equal(meta.room, room);
    assert.equal(meta.offset, ack.offset);
    assert.equal(meta.from.user_id, alice);
    assert.equal(meta.from.connection_id, a.id);
    const refused = await request(a, 'send_message', { room: `user:${bob}`, event: 'x', data: 1 });
    assert.ok(['forbidden', 'not_joined'].includes(refused.code), JSON.stringify(refused));
  });

  it('presence: member_joined, member_left and the presence request', async () => {
    const room = `sio:p${uniq()}`;
    const alice = `u${uniq()}`;
    const bob = `u${uniq()}`;
    const a = await connected(open({ auth: { token: token(alice) }, transports: ['websocket'] }));
    await request(a, 'join_room', { room });
    const b = await connected(open({ auth: { token: token(bob) } }));
    const joined = await request(b, 'join_room', { room });
    assert.ok(joined.members.some((m) => m.user_id === alice), JSON.stringify(joined));
    const [mj] = (await nextEvent(a, 'member_joined', (d) => d.user_id === bob)).args;
    assert.equal(mj.room, room);
    assert.equal(mj.connection_id, b.id);

    const p = await request(a, 'presence', { room });
    assert.equal(p.room, room);
    assert.deepEqual(p.members.map((m) => m.user_id).sort(), [alice, bob].sort());

    b.close();
    const [ml] = (await nextEvent(a, 'member_left', (d) => d.user_id === bob)).args;
    assert.equal(ml.room, room);
    const after = await request(a, 'presence', { room });
    assert.deepEqual(after.members.map((m) => m.user_id), [alice]);
  });

  it('an event named like a Socket.IO reserved event arrives as herald:<name>', async () => {
    const user = `u${uniq()}`;
    const s = await connected(open({ auth: { token: token(user) }, transports: ['websocket'] }));
    await node.publish(`user:${user}`, 'connect', { n: 1 });
    await node.publish(`user:${user}`, 'after', { n: 2 });
    const [data, meta] = (await nextEvent(s, 'herald:connect')).args;
    assert.deepEqual(data, { n: 1 });
    assert.equal(meta.room, `user:${user}`);
    await nextEvent(s, 'after');
    assert.ok(s.connected, 'the reserved name did not break the connection');
  });

  it('an emit of an unknown name acks unknown_type', async () => {
    const s = await connected(open({ auth: { token: token(`u${uniq()}`) }, transports: ['websocket'] }));
    const ack = await request(s, 'fly_to_moon', { room: 'sio:x' });
    assert.equal(ack.code, 'unknown_type', JSON.stringify(ack));
    assert.ok(s.connected);
  });

  for (const [label, opts] of TRANSPORTS.slice(1)) {
    it(`binary attachments are refused with an error ack (${label}); the connection stays usable`, async () => {
      const s = await connected(open({ auth: { token: token(`u${uniq()}`) }, ...opts }));
      const room = `sio:b${uniq()}`;
      await request(s, 'join_room', { room });
      const refused = await request(s, 'send_message', { room, event: 'blob', data: Buffer.from([1, 2, 3]) });
      assert.equal(refused.code, 'bad_request', JSON.stringify(refused));
      assert.equal(typeof refused.message, 'string');
      const ack = await request(s, 'send_message', { room, event: 'text', data: 'still here' });
      assert.equal(typeof ack.offset, 'number', JSON.stringify(ack));
      assert.ok(s.connected);
    });
  }

  it('a burst of emits past limits.burst gets rate_limited acks', async () => {
    const s = await connected(open({ auth: { token: token(`u${uniq()}`) }, transports: ['websocket'] }));
    const room = `sio:r${uniq()}`;
    await request(s, 'join_room', { room });
    const total = BURST * 2;
    const acks = await Promise.all(
      Array.from({ length: total }, (_, n) =>
        request(s, 'send_message', { room, event: 'burst', data: { n } }),
      ),
    );
    const limited = acks.filter((a) => a.code === 'rate_limited').length;
    const ok = acks.filter((a) => typeof a.offset === 'number').length;
    assert.equal(ok + limited, total, JSON.stringify(acks));
    assert.ok(limited >= 1, `no rate_limited ack among ${total}`);
    assert.ok(ok >= 1 && ok < total, `${ok} accepted`);
  });
});

describe('server-side close', () => {
  for (const [label, opts] of TRANSPORTS) {
    it(`a kick through the API (${label}): disconnect event 4013, then no reconnect`, async () => {
      const user = `u${uniq()}`;
      const s = await connected(open({ auth: { token: token(user) }, ...opts }));
      await nextEvent(s, 'authenticated');
      const reasons = [];
      s.on('disconnect', (reason) => reasons.push(reason));
      let attempts = 0;
      s.io.on('reconnect_attempt', () => attempts++);
      const res = await node.api('POST', `/api/v1/users/${user}/disconnect`);
      assert.equal(res.disconnected, 1);
      const [info] = (await nextEvent(s, 'herald:disconnect')).args;
      assert.equal(info.code, 4013);
      assert.equal(info.reason, 'disconnected');
      assert.equal(info.reconnect, false);
      const ended = await waitFor(() => reasons[0], 'the connection to end');
      assert.equal(ended, 'io server disconnect', `the connection ended with "${ended}", not with the server's DISCONNECT`);
      assert.equal(s.connected, false);
      // With a 100 ms reconnection delay, an automatic reconnect would have started by now.
      await new Promise((r) => setTimeout(r, 600));
      assert.equal(attempts, 0);
      assert.equal(s.connected, false);
      const conns = await node.api('GET', `/api/v1/users/${user}/connections`);
      assert.equal(conns.connections.length, 0);
    });
  }

  it('connections, stats and metrics count the socketio transport', async () => {
    const user = `u${uniq()}`;
    const s = await connected(open({ auth: { token: token(user) }, transports: ['websocket'] }));
    const conns = await node.api('GET', `/api/v1/users/${user}/connections`);
    assert.equal(conns.connections.length, 1);
    assert.equal(conns.connections[0].transport, 'socketio');
    assert.equal(conns.connections[0].connection_id, s.id);
    const stats = await node.api('GET', '/api/v1/stats');
    assert.ok(stats.connections >= 1, JSON.stringify(stats));
    const metrics = await (await fetch(`${node.url}/metrics`, { signal: AbortSignal.timeout(5000) })).text();
    const open_ = metrics.match(/^herald_connections_by_transport\{transport="socketio"\} (\d+)/m);
    assert.ok(open_ && Number(open_[1]) >= 1, 'herald_connections_by_transport{transport="socketio"}');
  });
});
