import { JSON_WIRE, type WireCodec } from './codec.js';
import type {
  EventSourceConstructor,
  EventSourceLike,
  ServerFrame,
  TransportKind,
  WebSocketConstructor,
  WebSocketLike,
} from './types.js';

/** Why an SSE stream could not open, read from the HTTP answer. */
export interface HttpFailure {
  status: number;
  code?: string;
  message?: string;
}

export interface CloseInfo {
  code: number;
  reason: string;
  /** The transport had opened (WebSocket `open`, or an SSE stream answered 200). */
  opened: boolean;
  /** SSE only: the HTTP answer of a stream that failed to open, when it could be read. */
  http?: HttpFailure;
}

export interface TransportHandlers {
  onOpen(): void;
  onFrame(frame: ServerFrame): void;
  onClose(info: CloseInfo): void;
  /** SSE only: the stream broke and the EventSource is reconnecting by itself. */
  onInterrupted?(): void;
}

export interface Transport {
  readonly kind: TransportKind;
  /** Sends one frame; false when the transport cannot send (not open, or SSE). */
  send(frame: object): boolean;
  /** Closes without calling `onClose`. */
  close(code?: number, reason?: string): void;
}

const OPEN = 1;

export class WebSocketTransport implements Transport {
  readonly kind = 'websocket' as const;
  private ws: WebSocketLike | null = null;
  private opened = false;
  private done = false;

  constructor(
    Ctor: WebSocketConstructor,
    url: string,
    private h: TransportHandlers,
    private readonly codec: WireCodec = JSON_WIRE,
  ) {
    try {
      // JSON offers no subprotocol, as before encodings could be chosen.
      this.ws = codec.subprotocol ? new Ctor(url, codec.subprotocol) : new Ctor(url);
      if (codec.binary) this.ws.binaryType = 'arraybuffer';
    } catch (err) {
      // Bad URL, blocked scheme, or a test double that always fails.
      const reason = err instanceof Error ? err.message : String(err);
      setTimeout(() => this.finish({ code: 1006, reason, opened: false }), 0);
      return;
    }
    const ws = this.ws;
    ws.onopen = () => {
      this.opened = true;
      if (!this.done) this.h.onOpen();
    };
    ws.onmessage = (ev) => {
      if (this.done) return;
      const frame = this.codec.decode(ev.data);
      if (frame) this.h.onFrame(frame);
    };
    ws.onerror = () => {
      // A `close` event always follows; it carries the code.
    };
    ws.onclose = (ev) => this.finish({ code: ev.code || 1006, reason: ev.reason || '', opened: this.opened });
  }

  private finish(info: CloseInfo): void {
    if (this.done) return;
    this.done = true;
    this.h.onClose(info);
  }

  send(frame: object): boolean {
    if (this.done || !this.ws || this.ws.readyState !== OPEN) return false;
    try {
      this.ws.send(this.codec.encode(frame));
      return true;
    } catch {
      return false;
    }
  }

  close(code = 1000, reason = ''): void {
    this.done = true;
    const ws = this.ws;
    if (!ws) return;
    ws.onopen = ws.onmessage = ws.onclose = null;
    ws.onerror = () => {};
    try {
      ws.close(code, reason);
    } catch {
      try {
        ws.close();
      } catch {
        /* already closed */
      }
    }
  }
}

/** Every frame type the server sends over SSE (each is an SSE `event:` name). */
const SSE_TYPES = [
  'authenticated',
  'room_joined',
  'room_left',
  'event',
  'message',
  'member_joined',
  'member_left',
  'events_dropped',
  'disconnect',
] as const;

const CLOSED = 2;

export class SseTransport implements Transport {
  readonly kind = 'sse' as const;
  private es: EventSourceLike | null = null;
  private opened = false;
  private done = false;

  constructor(
    Ctor: EventSourceConstructor,
    private url: string,
    private h: TransportHandlers,
    private probe?: typeof fetch,
  ) {
    try {
      this.es = new Ctor(url);
    } catch (err) {
      const reason = err instanceof Error ? err.message : String(err);
      setTimeout(() => this.finish({ code: 1006, reason, opened: false }), 0);
      return;
    }
    const es = this.es;
    es.onopen = () => {
      this.opened = true;
      if (!this.done) this.h.onOpen();
    };
    for (const type of SSE_TYPES) {
      es.addEventListener(type, (ev: { data?: unknown }) => {
        if (this.done) return;
        const frame = JSON_WIRE.decode(ev.data);
        if (frame) this.h.onFrame(frame);
      });
    }
    es.onerror = () => {
      if (this.done) return;
      if (es.readyState === CLOSED) {
        void this.failed();
      } else {
        // CONNECTING: the EventSource reconnects by itself and sends
        // Last-Event-ID; the server resumes every room from it.
        this.h.onInterrupted?.();
      }
    };
  }

  /** The stream was refused or failed for good: learn why over plain HTTP. */
  private async failed(): Promise<void> {
    const opened = this.opened;
    let http: HttpFailure | undefined;
    const f = this.probe ?? (typeof fetch === 'function' ? fetch : undefined);
    if (f) {
      const ctl = typeof AbortController === 'function' ? new AbortController() : undefined;
      try {
        const res = await f(this.url, {
          headers: { accept: 'text/event-stream' },
          ...(ctl ? { signal: ctl.signal } : {}),
        });
        if (res.ok) {
          ctl?.abort();
        } else {
          http = { status: res.status };
          try {
            const body = (await res.json()) as { error?: { code?: string; message?: string } };
            if (body?.error?.code) http.code = body.error.code;
            if (body?.error?.message) http.message = body.error.message;
          } catch {
            /* not JSON */
          }
        }
      } catch {
        /* network error: no HTTP answer */
      }
    }
    this.finish({
      code: 1006,
      reason: http ? `HTTP ${http.status}${http.code ? ` ${http.code}` : ''}` : 'stream failed',
      opened,
      ...(http ? { http } : {}),
    });
  }

  private finish(info: CloseInfo): void {
    if (this.done) return;
    this.done = true;
    this.es?.close();
    this.h.onClose(info);
  }

  /** Ends the stream as if the server had (used for `disconnect` frames). */
  end(code: number, reason: string): void {
    this.finish({ code, reason, opened: true });
  }

  send(): boolean {
    return false;
  }

  close(): void {
    this.done = true;
    this.es?.close();
  }
}
