// Types only: the package is imported on first use (see loadCodec), so a
// JSON-only page, or one loading dist/ as plain ES modules, never needs it.
import type * as Msgpack from '@msgpack/msgpack';
import type { ServerFrame } from './types.js';

/** How frames are written on a WebSocket: Herald JSON text, or MessagePack binary. */
export type Encoding = 'json' | 'msgpack';

/**
 * @internal The one place frames are encoded and decoded on WebSocket: the
 * rest of the client works with plain objects whatever the encoding.
 */
export interface WireCodec {
  /** The WebSocket subprotocol to offer; none for JSON (what every Herald speaks). */
  readonly subprotocol?: string;
  /** Frames travel as binary messages. */
  readonly binary: boolean;
  encode(frame: object): string | Uint8Array;
  /** A server message as a frame; undefined when it is not one. */
  decode(data: unknown): ServerFrame | undefined;
}

function asFrame(v: unknown): ServerFrame | undefined {
  return v && typeof v === 'object' && !Array.isArray(v) && typeof (v as { type?: unknown }).type === 'string'
    ? (v as ServerFrame)
    : undefined;
}

const JSON_CODEC: WireCodec = {
  binary: false,
  encode: (frame) => JSON.stringify(frame),
  decode(data) {
    if (typeof data !== 'string') return undefined;
    try {
      return asFrame(JSON.parse(data));
    } catch {
      return undefined;
    }
  },
};

function msgpackCodec({ decode, encode }: typeof Msgpack): WireCodec {
  return {
    subprotocol: 'herald.v1.msgpack',
    binary: true,
    // Undefined fields are left out, as JSON.stringify does.
    encode: (frame) => encode(frame, { ignoreUndefined: true }),
    decode(data) {
      let bytes: Uint8Array;
      if (data instanceof ArrayBuffer) bytes = new Uint8Array(data);
      else if (ArrayBuffer.isView(data)) bytes = new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
      else return undefined;
      try {
        return asFrame(decode(bytes));
      } catch {
        return undefined;
      }
    },
  };
}

/** @internal The JSON codec, usable at once. */
export const JSON_WIRE: WireCodec = JSON_CODEC;

/** @internal Throws a TypeError for an `encoding` option that is neither 'json' nor 'msgpack'. */
export function checkEncoding(encoding: unknown): asserts encoding is Encoding | undefined {
  if (encoding === undefined || encoding === 'json' || encoding === 'msgpack') return;
  throw new TypeError(`connect: \`encoding\` must be 'json' or 'msgpack', not ${JSON.stringify(encoding)}`);
}

let msgpack: Promise<WireCodec> | undefined;

/**
 * @internal The codec of an `encoding` option (default JSON). MessagePack
 * imports `@msgpack/msgpack` the first time; in a browser without a bundler
 * that bare name needs an import map.
 */
export function loadCodec(encoding: Encoding | undefined): Promise<WireCodec> {
  checkEncoding(encoding);
  if (encoding !== 'msgpack') return Promise.resolve(JSON_CODEC);
  msgpack ??= import('@msgpack/msgpack').then(msgpackCodec, (err: unknown) => {
    msgpack = undefined; // a later connect may try again
    throw err;
  });
  return msgpack;
}
