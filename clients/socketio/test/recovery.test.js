// Connection state recovery with socket.io-client 4.8's own
// `connectionStateRecovery` support (it sends back `pid` and `offset` in
// CONNECT once the server gave it a pid): the client's TCP connection is
// cut by a proxy while events are published, and, on a two-node Redis
// cluster, its node is SIGKILLed while another node publishes. Either way
// the client must end with every event exactly once, in order, and
// `socket.recovered === true`.

import assert from 'node:assert/strict';
import { after, describe, it } from 'node:test';
import { Herald, Proxy, Redis, client, connected, nextEvent, request, token, uniq, waitFor } from './harness.js';

const cleanup = [];
after(async () => {
  for (const f of cleanup.reverse()) await f();
});

/** The `n` of every `tick` event `socket` received, in arrival order. */
const ticks = (socket) => socket.events.filter((e) => e.event === 'tick').map((e) => e.args[0].n);

const range = (from, to) => Array.from({ length: to - from + 1 }, (_, i) => from + i);

/** Waits until the socket has seen `n` ticks and is connected; reports what it got otherwise. */
async function waitForTicks(socket, n, timeoutMs = 8000) {
  try {
    await waitFor(() => socket.connected && ticks(socket).length >= n, `${n} ticks`, timeoutMs);
  } catch (e) {
    e.message += `; got ${JSON.stringify(ticks(socket))}, connected=${socket.connected}`;
    throw e;
  }
}

describe('recovery through a cut TCP connection', () => {
  for (const [label, opts] of [
    ['websocket only', { transports: ['websocket'] }],
    ['polling then upgrade', {}],
    ['polling only', { transports: ['polling'] }],
  ]) {
    it(`${label}: recovered === true and every event once, in order`, async () => {
      const node = await Herald.start();
      cleanup.push(() => node.stop());
      const proxy = await Proxy.start(node.port);
      cleanup.push(() => proxy.close());
      const user = `u${uniq()}`;
      const s = client(proxy.url, { auth: { token: token(user) }, ...opts });
      cleanup.push(() => s.close());
      await connected(s);
      assert.equal(s.recovered, false);
      const room = `sio:rc${uniq()}`;
      await request(s, 'join_room', { room });
      if (!opts.transports) {
        await waitFor(() => s.io.engine.transport.name === 'websocket', 'the upgrade to websocket');
      }
      for (let n = 1; n <= 3; n++) await node.publish(room, 'tick', { n });
      await waitForTicks(s, 3);

      proxy.cut();
      await waitFor(() => !s.connected, 'the client to notice the cut');
      // Into the joined room and the auto-joined user room, while the client is away.
      for (let n = 4; n <= 60; n++) await node.publish(room, 'tick', { n });
      await node.publish(`user:${user}`, 'note', { away: true });
      proxy.restore();

      await waitFor(() => s.connected, 'the client to reconnect', 8000);
      assert.equal(s.recovered, true, 'socket.recovered after the reconnect');
      for (let n = 61; n <= 63; n++) await node.publish(room, 'tick', { n });
      await waitForTicks(s, 63);
      assert.deepEqual(ticks(s), range(1, 63));
      await nextEvent(s, 'note', (d) => d.away === true);
      // The rooms are back: a send into the joined room is accepted.
      const ack = await request(s, 'send_message', { room, event: 'chat', data: 'back' });
      assert.equal(typeof ack.offset, 'number');
    });
  }

  it('a room left before the cut stays left; the rooms joined come back', async () => {
    const node = await Herald.start();
    cleanup.push(() => node.stop());
    const proxy = await Proxy.start(node.port);
    cleanup.push(() => proxy.close());
    const s = client(proxy.url, { auth: { token: token(`u${uniq()}`) }, transports: ['websocket'] });
    cleanup.push(() => s.close());
    await connected(s);
    const kept = `sio:k${uniq()}`;
    const left = `sio:l${uniq()}`;
    await request(s, 'join_room', { room: kept });
    // Joined and left without acks: the room_joined / room_left events keep
    // the client's offset current all the same.
    s.emit('join_room', { room: left });
    await nextEvent(s, 'room_joined', (d) => d.room === left);
    s.emit('leave_room', { room: left });
    await nextEvent(s, 'room_left', (d) => d.room === left);
    proxy.cut();
    await waitFor(() => !s.connected, 'the client to notice the cut');
    await node.publish(left, 'tick', { n: 0 });
    await node.publish(kept, 'tick', { n: 1 });
    proxy.restore();
    await waitFor(() => s.connected, 'the client to reconnect', 8000);
    assert.equal(s.recovered, true);
    await node.publish(kept, 'tick', { n: 2 });
    await waitForTicks(s, 2);
    assert.deepEqual(ticks(s), [1, 2]);
    const again = await request(s, 'leave_room', { room: left });
    assert.equal(again.code, 'not_joined', 'the left room was not joined again');
  });

  it('the server ends a connection whose token expired (4012) mid-stream: the client comes back, recovered', async () => {
    const node = await Herald.start();
    cleanup.push(() => node.stop());
    const user = `u${uniq()}`;
    let tokens = 0;
    const s = client(node.url, {
      transports: ['websocket'],
      // The first token expires within 2 s; every reconnect gets a fresh one
      // (socket.io-client calls this on each attempt and adds pid/offset).
      auth: (cb) => cb({ token: token(user, tokens++ === 0 ? { exp: Math.floor(Date.now() / 1000) + 2 } : {}) }),
    });
    cleanup.push(() => s.close());
    const reasons = [];
    s.on('disconnect', (reason) => reasons.push(reason));
    await connected(s);
    const room = `sio:tx${uniq()}`;
    await request(s, 'join_room', { room });

    // Publish all along, until a few events after the client came back.
    let n = 0;
    const deadline = Date.now() + 8000;
    let after = 0;
    while (after < 5) {
      assert.ok(Date.now() < deadline, `no reconnect after the expiry; reasons ${JSON.stringify(reasons)}`);
      await node.publish(room, 'tick', { n: ++n });
      if (tokens >= 2 && s.connected) after++;
      await new Promise((r) => setTimeout(r, 25));
    }
    await waitForTicks(s, n);
    const [info] = (await nextEvent(s, 'herald:disconnect')).args;
    assert.equal(info.code, 4012, JSON.stringify(info));
    assert.equal(info.reconnect, true);
    assert.equal(reasons[0], 'transport close', 'closed without DISCONNECT');
    assert.equal(s.recovered, true, 'socket.recovered after the reconnect');
    assert.deepEqual(ticks(s), range(1, n));
  });

  it('the server cuts a client that stops reading (4011): it comes back by itself, recovered', async () => {
    // A short send queue, and room history for the tens of MB that the
    // loopback TCP buffers take before the queue fills.
    const node = await Herald.start('', {
      send_queue_messages: 64,
      send_queue_bytes: 262144,
      history_room_bytes: 134217728,
    });
    cleanup.push(() => node.stop());
    const proxy = await Proxy.start(node.port);
    cleanup.push(() => proxy.close());
    const user = `u${uniq()}`;
    const s = client(proxy.url, { auth: { token: token(user) }, transports: ['websocket'] });
    cleanup.push(() => s.close());
    const reasons = [];
    s.on('disconnect', (reason) => reasons.push(reason));
    await connected(s);
    const room = `sio:sc${uniq()}`;
    await request(s, 'join_room', { room });
    for (let n = 1; n <= 3; n++) await node.publish(room, 'tick', { n });
    await waitForTicks(s, 3);

    proxy.freeze();
    const pad = 'x'.repeat(60000);
    let n = 3;
    // Until the node reports the overflow (the close itself then waits, a
    // bounded time, for its last packets to leave).
    const overflowed = async () => {
      const metrics = await (await fetch(`${node.url}/metrics`, { signal: AbortSignal.timeout(5000) })).text();
      return /^herald_send_queue_overflows_total 1$/m.test(metrics);
    };
    while (!(await overflowed())) {
      assert.ok(n < 1000, 'the node never cut the client that stopped reading');
      for (let i = 0; i < 10; i++) await node.publish(room, 'tick', { n: ++n, pad });
    }
    for (let i = 0; i < 3; i++) await node.publish(room, 'tick', { n: ++n });
    proxy.thaw();

    await waitForTicks(s, n, 10000);
    assert.equal(reasons[0], 'transport close', 'closed without DISCONNECT');
    assert.equal(s.recovered, true, 'socket.recovered after the cut');
    assert.deepEqual(ticks(s), range(1, n));
    const [info] = (await nextEvent(s, 'herald:disconnect')).args;
    assert.equal(info.code, 4011, JSON.stringify(info));
    assert.equal(info.reconnect, true);
  });

  it('a pid the server cannot recover gives recovered === false and a fresh connection', async () => {
    const node = await Herald.start();
    cleanup.push(() => node.stop());
    const proxy = await Proxy.start(node.port);
    cleanup.push(() => proxy.close());
    const user = `u${uniq()}`;
    const s = client(proxy.url, { auth: { token: token(user) }, transports: ['websocket'] });
    cleanup.push(() => s.close());
    await connected(s);
    const room = `sio:rf${uniq()}`;
    await request(s, 'join_room', { room });
    proxy.cut();
    await waitFor(() => !s.connected, 'the client to notice the cut');
    // `global` (auto-joined) keeps no history: this event cannot be replayed.
    await node.publish('global', 'lost', {});
    proxy.restore();
    await waitFor(() => s.connected, 'the client to reconnect', 8000);
    assert.equal(s.recovered, false);
    // As a fresh connection: auto-joined rooms only.
    const authenticated = () => s.events.filter((e) => e.event === 'authenticated');
    await waitFor(() => authenticated().length >= 2, 'an authenticated event for each connection');
    const [auth] = authenticated().at(-1).args;
    assert.ok(auth.rooms.some((r) => r.room === `user:${user}`));
    const left = await request(s, 'leave_room', { room });
    assert.equal(left.code, 'not_joined');
  });
});

describe('socketio.recovery = false', () => {
  it('no pid, no token argument, and a reconnect is a fresh connection', async () => {
    const node = await Herald.start('\n[socketio]\nrecovery = false\n');
    cleanup.push(() => node.stop());
    const proxy = await Proxy.start(node.port);
    cleanup.push(() => proxy.close());
    const s = client(proxy.url, { auth: { token: token(`u${uniq()}`) }, transports: ['websocket'] });
    cleanup.push(() => s.close());
    await connected(s);
    const room = `sio:nr${uniq()}`;
    await request(s, 'join_room', { room });
    await node.publish(room, 'tick', { n: 1 });
    const { args } = await nextEvent(s, 'tick');
    assert.equal(args.length, 2, `(data, meta) only: ${JSON.stringify(args)}`);
    proxy.cut();
    await waitFor(() => !s.connected, 'the client to notice the cut');
    await node.publish(room, 'tick', { n: 2 });
    proxy.restore();
    await waitFor(() => s.connected, 'the client to reconnect', 8000);
    // socket.io-client leaves `recovered` falsy (undefined) without a pid.
    assert.ok(!s.recovered, `recovered: ${s.recovered}`);
    const left = await request(s, 'leave_room', { room });
    assert.equal(left.code, 'not_joined', 'the room is not joined again');
    assert.deepEqual(ticks(s), [1]);
  });
});

describe('recovery on another node of a Redis cluster', () => {
  for (const [label, stopA, transports] of [
    ['SIGKILLed', (a) => a.kill(), ['websocket']],
    ['SIGKILLed', (a) => a.kill(), ['polling']],
    ['drained (SIGTERM)', (a) => a.terminate(), ['websocket']],
    ['drained (SIGTERM)', (a) => a.terminate(), ['polling']],
  ]) {
    it(`node A is ${label} while node B publishes (${transports}): recovered on B, 1..N exactly once`, async () => {
      const redis = await Redis.start();
      cleanup.push(() => redis.stop());
      const broker = `
  [broker]
  kind = "redis"
  redis_url = "${redis.url}"
  prefix = "sio${uniq()}"
  `;
      const a = await Herald.start(broker);
      cleanup.push(() => a.stop());
      const b = await Herald.start(broker);
      cleanup.push(() => b.stop());
      const proxy = await Proxy.start(a.port);
      cleanup.push(() => proxy.close());

      const s = client(proxy.url, { auth: { token: token(`u${uniq()}`) }, transports });
      cleanup.push(() => s.close());
      const reasons = [];
      s.on('disconnect', (reason) => reasons.push(reason));
      await connected(s);
      const room = `sio:cl${uniq()}`;
      await request(s, 'join_room', { room });

      const N = 40;
      let published = 0;
      const publisher = (async () => {
        for (let n = 1; n <= N; n++) {
          await b.publish(room, 'tick', { n });
          published = n;
          await new Promise((r) => setTimeout(r, 20));
        }
      })();
      await waitFor(() => ticks(s).length >= 8, 'the first events through node A');
      if (label.startsWith('drained')) {
        // A drain tells its clients before closing: the proxy keeps pointing
        // at A until the client has the event, since over polling it comes
        // with the client's next GET, which a proxy already moved to B would
        // send to a node that does not know the session (as a non-sticky
        // balancer would; docs/operations.md says polling needs stickiness).
        const stopping = stopA(a);
        const [info] = (await nextEvent(s, 'herald:disconnect')).args;
        assert.equal(info.code, 1001, JSON.stringify(info));
        assert.equal(info.reconnect, true, JSON.stringify(info));
        proxy.retarget(b.port);
        await stopping;
      } else {
        proxy.retarget(b.port);
        await stopA(a);
      }
      await publisher;
      assert.equal(published, N);
      await waitForTicks(s, N, 10000);
      assert.equal(s.recovered, true, 'socket.recovered after moving to node B');
      assert.deepEqual(ticks(s), range(1, N));
      assert.ok(proxy.accepted >= 2, 'the client reconnected through the proxy');
      // The first connection ended as a lost transport: a dead node, or a
      // drain, which closes without DISCONNECT so the client comes back.
      assert.ok(
        ['transport close', 'transport error', 'ping timeout'].includes(reasons[0]),
        `the connection to node A ended with "${reasons[0]}"`,
      );
    });
  }
});
