import { checkEncoding, JSON_WIRE, loadCodec, type WireCodec } from './codec.js';
import type { ConnectOptions } from './options.js';
import { SseTransport, WebSocketTransport, type Transport, type TransportHandlers } from './transport.js';
import type { EventSourceConstructor, TransportKind, WebSocketConstructor } from './types.js';

function endpoints(url: string): { ws: string; sse: string } {
  const base = (globalThis as { location?: { href: string } }).location?.href;
  const u = base ? new URL(url, base) : new URL(url);
  let path = u.pathname.replace(/\/+$/, '');
  if (path.endsWith('/ws')) path = path.slice(0, -3);
  else if (path.endsWith('/sse')) path = path.slice(0, -4);
  const secure = u.protocol === 'https:' || u.protocol === 'wss:';
  return {
    ws: `${secure ? 'wss' : 'ws'}://${u.host}${path}/ws`,
    sse: `${secure ? 'https' : 'http'}://${u.host}${path}/sse`,
  };
}

/**
 * Which transport to connect with: the first of `transports` that has an
 * implementation, skipping WebSocket once it failed to connect
 * `fallbackAfter` times in a row (then SSE is used from there on).
 */
export class TransportChoice {
  private readonly urls: { ws: string; sse: string };
  private wsFailures = 0;
  private _sseOnly = false;
  private lastKind: TransportKind | undefined;
  private codec: WireCodec = JSON_WIRE;
  private _codecReady: boolean;

  constructor(private readonly opts: ConnectOptions) {
    this.urls = endpoints(opts.url);
    checkEncoding(opts.encoding);
    this._codecReady = (opts.encoding ?? 'json') === 'json';
  }

  /** The WebSocket codec of the `encoding` option is loaded (JSON always is). */
  get codecReady(): boolean {
    return this._codecReady;
  }

  /** Loads the `encoding` option's codec (MessagePack is imported on first use). */
  async loadCodec(): Promise<void> {
    this.codec = await loadCodec(this.opts.encoding);
    this._codecReady = true;
  }

  /** WebSocket was given up for SSE. */
  get sseOnly(): boolean {
    return this._sseOnly;
  }

  /** `kind` is allowed by `transports` and has an implementation. */
  canUse(kind: TransportKind): boolean {
    const list = this.opts.transports ?? ['websocket', 'sse'];
    if (!list.includes(kind)) return false;
    if (kind === 'websocket') return !!this.wsCtor();
    return !!this.esCtor();
  }

  private wsCtor(): WebSocketConstructor | undefined {
    return this.opts.WebSocket ?? (globalThis as { WebSocket?: WebSocketConstructor }).WebSocket;
  }

  private esCtor(): EventSourceConstructor | undefined {
    return this.opts.EventSource ?? (globalThis as { EventSource?: EventSourceConstructor }).EventSource;
  }

  /** The transport for the next connect, if any is usable. */
  choose(): TransportKind | undefined {
    const list = this.opts.transports ?? ['websocket', 'sse'];
    for (const kind of list) {
      if (kind === 'websocket' && this._sseOnly) continue;
      if (this.canUse(kind)) return kind;
    }
    return undefined;
  }

  /**
   * Opens a transport of `kind` (from `choose`); an SSE stream's URL carries
   * `sseQuery()`. Returns it with the kind of the transport opened before.
   */
  open(
    kind: TransportKind,
    handlers: TransportHandlers,
    sseQuery: () => string,
  ): { transport: Transport; previous: TransportKind | undefined } {
    const previous = this.lastKind;
    this.lastKind = kind;
    if (kind === 'websocket') {
      return { transport: new WebSocketTransport(this.wsCtor()!, this.urls.ws, handlers, this.codec), previous };
    }
    const f = this.opts.fetch ?? (typeof fetch === 'function' ? fetch.bind(globalThis) : undefined);
    return { transport: new SseTransport(this.esCtor()!, `${this.urls.sse}?${sseQuery()}`, handlers, f), previous };
  }

  /** A WebSocket closed before it was authenticated. */
  wsFailed(): void {
    this.wsFailures++;
    const limit = this.opts.fallbackAfter ?? 3;
    if (this.wsFailures >= limit && this.canUse('sse')) this._sseOnly = true;
  }

  /** A WebSocket was authenticated. */
  wsConnected(): void {
    this.wsFailures = 0;
  }
}
