import { decode, encode } from '@msgpack/msgpack';
import { describe, expect, it } from 'vitest';
import { connect, type HeraldEvent } from '../../src/index.js';
import { loadCodec } from '../../src/codec.js';
import { authenticated, ev, FakeWebSocket, flush, openWsClient, useFakes } from './fakes.js';

/** A WebSocket double speaking MessagePack: records the offered subprotocols and binaryType. */
class MsgpackWebSocket extends FakeWebSocket {
  binaryType = 'blob';
  constructor(
    url: string,
    public protocols?: string | string[],
  ) {
    super(url);
  }
  override send(data: string | Uint8Array): void {
    if (typeof data === 'string') throw new Error(`text frame sent on a msgpack socket: ${data}`);
    this.sent.push(decode(data));
  }
  override frame(f: object): void {
    const bytes = encode(f);
    // Browsers (binaryType 'arraybuffer') hand over an ArrayBuffer.
    this.onmessage?.({ data: bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength) });
  }
}

const clients = useFakes();

describe('the codec seam', () => {
  it('JSON stays text and offers no subprotocol', async () => {
    const json = await loadCodec(undefined);
    expect(json.subprotocol).toBeUndefined();
    expect(json.binary).toBe(false);
    expect(json.encode({ type: 'ping', id: 1, x: undefined })).toBe('{"type":"ping","id":1}');
    expect(json.decode('{"type":"pong","id":1}')).toEqual({ type: 'pong', id: 1 });
    expect(json.decode(new Uint8Array([1]))).toBeUndefined();
    expect(json.decode('[1]')).toBeUndefined();
  });

  it('MessagePack carries the same tree in binary', async () => {
    const mp = await loadCodec('msgpack');
    expect(mp.subprotocol).toBe('herald.v1.msgpack');
    expect(mp.binary).toBe(true);
    const frame = { type: 'send_message', id: 3, room: 'r', data: { a: [1, 2.5, null, 'é'] }, event: undefined };
    const bytes = mp.encode(frame) as Uint8Array;
    expect(decode(bytes)).toEqual({ type: 'send_message', id: 3, room: 'r', data: { a: [1, 2.5, null, 'é'] } });
    const event = ev('r', 4, 'tick', 'E', { n: 1 });
    const packed = encode(event);
    expect(mp.decode(packed)).toEqual(event);
    expect(mp.decode(packed.buffer.slice(packed.byteOffset, packed.byteOffset + packed.byteLength))).toEqual(event);
    expect(mp.decode('{"type":"pong"}')).toBeUndefined();
    expect(mp.decode(new Uint8Array([0xc1]))).toBeUndefined();
    expect(mp.decode(encode([1, 2]))).toBeUndefined();
  });

  it('refuses an unknown encoding', () => {
    expect(() => connect({ url: 'http://x', token: 't', encoding: 'xml' as any })).toThrow(/encoding/);
  });
});

describe('a client with encoding: msgpack', () => {
  it('offers herald.v1.msgpack, reads ArrayBuffers and sends binary frames', async () => {
    // The package is imported on first use; load it outside the fake clock.
    await loadCodec('msgpack');
    const client = openWsClient(clients, { WebSocket: MsgpackWebSocket, encoding: 'msgpack' });
    await flush();
    const ws = FakeWebSocket.last() as MsgpackWebSocket;
    expect(ws.protocols).toBe('herald.v1.msgpack');
    expect(ws.binaryType).toBe('arraybuffer');
    ws.open();
    const auth = ws.lastOf('authenticate');
    expect(typeof auth.token).toBe('string');
    ws.frame(authenticated(auth.id));
    await flush();
    expect(client.state).toBe('connected');

    const got: HeraldEvent[] = [];
    client.on('event', (e) => got.push(e));
    const join = client.join('chat:1');
    await flush();
    const req = ws.lastOf('join_room');
    ws.frame({ type: 'room_joined', id: req.id, room: 'chat:1', epoch: 'E1', offset: 0 });
    await join;
    ws.frame(ev('chat:1', 1, 'tick', 'E1', { n: 7 }));
    expect(got.map((e) => e.data)).toEqual([{ n: 7 }]);
  });

  it('a JSON client still constructs its socket with the URL alone', async () => {
    openWsClient(clients, { WebSocket: MsgpackWebSocket });
    await flush();
    expect((FakeWebSocket.last() as MsgpackWebSocket).protocols).toBeUndefined();
  });
});
