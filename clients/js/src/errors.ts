/** Error codes the server sends in `error` frames (PROTOCOL.md 3). */
export type ProtocolErrorCode =
  | 'bad_request'
  | 'unknown_type'
  | 'unauthorized'
  | 'forbidden'
  | 'not_joined'
  | 'rate_limited'
  | 'too_large'
  | 'limit_exceeded'
  | 'unavailable'
  | 'internal'
  | 'not_found';

/**
 * Codes the client itself produces:
 * - `timeout`: no reply within `requestTimeoutMs` ({@link TimeoutError});
 * - `disconnected`: the connection dropped before a `send` was acknowledged
 *   or an `rpc` answered (it may or may not have been delivered, or run);
 * - `closed`: the client was closed, or gave up reconnecting;
 * - `unsupported`: the operation is not possible on the current transport
 *   (`send` or `rpc` over SSE).
 */
export type ClientErrorCode = 'timeout' | 'disconnected' | 'closed' | 'unsupported';

export type HeraldErrorCode = ProtocolErrorCode | ClientErrorCode;

/** Every error the client rejects a promise with. */
export class HeraldError extends Error {
  readonly code: HeraldErrorCode;
  /** The id of the request this error answers, when there was one. */
  readonly requestId?: number;

  constructor(code: HeraldErrorCode, message: string, requestId?: number) {
    super(message);
    this.name = 'HeraldError';
    this.code = code;
    if (requestId !== undefined) this.requestId = requestId;
  }
}

/** A request got no reply within `requestTimeoutMs`. */
export class TimeoutError extends HeraldError {
  constructor(message: string, requestId?: number) {
    super('timeout', message, requestId);
    this.name = 'TimeoutError';
  }
}

/** `send` (or another request) is not possible on the current transport. */
export class UnsupportedError extends HeraldError {
  constructor(message: string) {
    super('unsupported', message);
    this.name = 'UnsupportedError';
  }
}
