// permessage-deflate with socket.io-client 4.8 (Node's `ws` offers it by
// default): with `[compression] enabled = true` the client's WebSocket
// negotiates it, events over min_bytes arrive whole (compressed once per
// event on the node, each client's recovery token appended uncompressed),
// and a client with perMessageDeflate off gets the same events plain.

import assert from 'node:assert/strict';
import { after, describe, it } from 'node:test';
import { Herald, client, connected, nextEvent, request, token, uniq, waitFor } from './harness.js';

const cleanup = [];
after(async () => {
  for (const f of cleanup.reverse()) await f();
});

/** The sum of a counter in the node's /metrics (0 when absent). */
async function metric(node, name) {
  const text = await (await fetch(`${node.url}/metrics`)).text();
  return text
    .split('\n')
    .filter((l) => l.startsWith(name) && /[ {]/.test(l[name.length]))
    .reduce((sum, l) => sum + Number(l.split(' ').pop()), 0);
}

describe('permessage-deflate on the Socket.IO WebSocket', () => {
  for (const [label, opts] of [
    ['websocket only', { transports: ['websocket'] }],
    ['polling then upgrade', {}],
  ]) {
    it(`${label}: compressed events arrive whole next to a plain client`, async () => {
      const node = await Herald.start('\n[compression]\nenabled = true\nmin_bytes = 512\n');
      cleanup.push(() => node.stop());
      const room = `sio:z${uniq()}`;
      const zipped = client(node.url, { auth: { token: token(`z${uniq()}`) }, ...opts });
      const plain = client(node.url, {
        auth: { token: token(`p${uniq()}`) },
        ...opts,
        perMessageDeflate: false,
      });
      cleanup.push(() => zipped.close(), () => plain.close());
      for (const s of [zipped, plain]) {
        await connected(s);
        await request(s, 'join_room', { room });
        await waitFor(() => s.io.engine.transport.name === 'websocket', 'the websocket transport');
      }
      assert.equal(zipped.io.engine.transport.ws.extensions, 'permessage-deflate');
      assert.equal(plain.io.engine.transport.ws.extensions, '');
      const text = 'all work and no play makes jack a dull boy '.repeat(30);
      for (let n = 1; n <= 5; n++) await node.publish(room, 'big', { n, text });
      await node.publish(room, 'small', { n: 6 });
      for (const s of [zipped, plain]) {
        await nextEvent(s, 'small');
        const got = s.events.filter((e) => e.event === 'big').map((e) => e.args[0]);
        assert.deepEqual(got, [1, 2, 3, 4, 5].map((n) => ({ n, text })));
      }
      assert.equal(await metric(node, 'herald_ws_compressed_frames_total'), 5, 'only the big events, only to one client');
      assert.equal(await metric(node, 'herald_ws_compressed_events_total'), 5, 'once per event');
    });
  }
});
