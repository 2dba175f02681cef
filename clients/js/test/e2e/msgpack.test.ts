import { encode } from '@msgpack/msgpack';
import { afterEach, describe, expect, inject, it } from 'vitest';
import WebSocket from 'ws';
import { connect, HeraldError, type HeraldClient, type HeraldEvent } from '../../src/index.js';
import { API_KEY, api, until } from './herald.js';

const url = inject('heraldUrl');
const herald = api(url);
const clients: HeraldClient[] = [];
afterEach(() => {
  while (clients.length) clients.pop()!.close();
});

/** `ws` that records the subprotocol the server chose. */
const chosen: string[] = [];
class RecordingWebSocket extends WebSocket {
  constructor(address: string, protocols?: string | string[]) {
    super(address, protocols);
    this.once('open', () => chosen.push(this.protocol));
  }
}

function open(sub: string, encoding: 'json' | 'msgpack'): Promise<HeraldClient> {
  return herald.token(sub).then((token) => {
    const c = connect({ url, token, encoding, WebSocket: RecordingWebSocket as any, transports: ['websocket'], requestTimeoutMs: 5000 });
    clients.push(c);
    return c;
  });
}

describe('encoding: msgpack against a real node', () => {
  it('shares a room with a JSON client: events, messages, errors and publishes in MessagePack', async () => {
    chosen.length = 0;
    const m = await open('js-msgpack', 'msgpack');
    const j = await open('js-json', 'json');
    const room = 'stream:msgpack';
    const fromM: HeraldEvent[] = [];
    const fromJ: HeraldEvent[] = [];
    m.room(room).on('*', (e) => fromM.push(e));
    j.room(room).on('*', (e) => fromJ.push(e));
    await m.join(room);
    await j.join(room);
    expect(chosen).toEqual(['herald.v1.msgpack', '']);
    // member_joined, decoded from MessagePack, updates the member list.
    await until(() => m.room(room).members.length === 2, 10_000, 'member_joined on the msgpack client');
    expect(m.room(room).members.map((x) => x.user_id).sort()).toEqual(['js-json', 'js-msgpack']);

    const data = { n: 3, f: 2.5, s: 'é', list: [1, null, true] };
    await herald.publish(room, 'tick', data);
    // Published as MessagePack over HTTP.
    const r = await fetch(`${url}/api/v1/publish`, {
      method: 'POST',
      headers: { authorization: `Bearer ${API_KEY}`, 'content-type': 'application/msgpack' },
      body: encode({ room, event: 'packed', data: { k: [7, -8] } }),
    });
    expect(r.status).toBe(200);
    await m.room(room).send({ hi: 1 }, 'chat');
    await until(() => fromM.length >= 3 && fromJ.length >= 3, 10_000, 'three events on both clients');
    expect(fromM.map((e) => [e.event, e.data])).toEqual([
      ['tick', data],
      ['packed', { k: [7, -8] }],
      ['chat', { hi: 1 }],
    ]);
    expect(fromJ.map((e) => e.data)).toEqual(fromM.map((e) => e.data));
    expect(fromJ.map((e) => e.offset)).toEqual(fromM.map((e) => e.offset));

    // A refused request is a typed error, as over JSON.
    await expect(m.join('nope:1')).rejects.toBeInstanceOf(HeraldError);
    expect(m.state).toBe('connected');
  });
});
