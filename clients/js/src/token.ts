import { HeraldError } from './errors.js';
import { tokenExpiryMs } from './jwt.js';
import type { ClientStats, ConnectOptions, EmitFn } from './options.js';
import type { RequestKind } from './requests.js';
import type { TransportKind } from './types.js';

/** What token refresh needs from the connection. */
export interface TokenHost {
  readonly closed: boolean;
  readonly authed: boolean;
  /** Generation of the current connect attempt. */
  readonly gen: number;
  /** Kind of the live transport, if any. */
  readonly transportKind: TransportKind | undefined;
  request(frame: Record<string, unknown>, kind: RequestKind): Promise<any>;
  /** Reopens the SSE stream (which cannot take an `authenticate` frame). */
  queueReopen(): void;
}

/**
 * The token and its refresh: hands out a fresh token for each connect,
 * renews it shortly before `exp` (over the live WebSocket, or by reopening
 * the SSE stream), and drops it after the server refused or expired it.
 */
export class TokenKeeper {
  private token: string | undefined;
  /** The token's `exp`, in ms since the Unix epoch. */
  private exp: number | undefined;
  private retriedAuth = false;
  private refreshTimer: ReturnType<typeof setTimeout> | undefined;

  constructor(
    private readonly opts: ConnectOptions,
    private readonly host: TokenHost,
    private readonly emit: EmitFn,
    private readonly stats: ClientStats,
  ) {
    this.token = opts.token;
    this.exp = opts.token ? tokenExpiryMs(opts.token) : undefined;
  }

  /** The token to connect with: the current one while it has over a second left, else a new one from `getToken`. */
  async current(): Promise<string> {
    const { getToken } = this.opts;
    const fresh = this.token && (this.exp === undefined || this.exp - Date.now() > 1000);
    if (fresh || !getToken) {
      if (!this.token) throw new HeraldError('unauthorized', 'no token');
      return this.token;
    }
    this.set(await getToken());
    return this.token!;
  }

  private set(token: string): void {
    if (typeof token !== 'string' || !token) throw new HeraldError('unauthorized', 'getToken returned no token');
    this.token = token;
    this.exp = tokenExpiryMs(token);
  }

  /** The server accepted the token. */
  accepted(): void {
    this.retriedAuth = false;
  }

  /**
   * After a close with `code`: when it was 4012 (token expired) or a first
   * 4001 (refused) and `getToken` can supply another, drops the token so the
   * next connect fetches a fresh one, and returns true (reconnect).
   */
  retryWithFreshToken(code: number): boolean {
    if (!((code === 4001 || code === 4012) && this.opts.getToken && !(code === 4001 && this.retriedAuth))) return false;
    if (code === 4001) this.retriedAuth = true;
    this.token = undefined;
    this.exp = undefined;
    return true;
  }

  clearRefresh(): void {
    clearTimeout(this.refreshTimer);
    this.refreshTimer = undefined;
  }

  /** Schedules the next refresh: `refreshLeadMs` before `exp` (at most half the remaining life), or in `retryMs`. */
  scheduleRefresh(retryMs?: number): void {
    this.clearRefresh();
    if (!this.opts.getToken || this.exp === undefined || this.host.closed) return;
    const remaining = this.exp - Date.now();
    const lead = Math.min(this.opts.refreshLeadMs ?? 30_000, remaining / 2);
    const delay = retryMs ?? Math.max(0, remaining - lead);
    this.refreshTimer = setTimeout(() => void this.refresh(), delay);
  }

  private async refresh(): Promise<void> {
    this.refreshTimer = undefined;
    const host = this.host;
    const gen = host.gen;
    const retry = () => {
      const remaining = (this.exp ?? 0) - Date.now();
      if (remaining > 1000) this.scheduleRefresh(Math.min(5000, remaining / 4));
    };
    let token: string;
    try {
      token = await this.opts.getToken!();
      if (typeof token !== 'string' || !token) throw new HeraldError('unauthorized', 'getToken returned no token');
    } catch (err) {
      this.emit('error', err instanceof Error ? err : new Error(String(err)));
      retry();
      return;
    }
    if (host.closed) return;
    if (!host.authed || gen !== host.gen || !host.transportKind) {
      this.set(token); // used by the next connect
      return;
    }
    if (host.transportKind === 'websocket') {
      try {
        await host.request({ type: 'authenticate', token }, 'authenticate');
      } catch (err) {
        if (err instanceof HeraldError && err.code === 'disconnected') {
          this.set(token);
          return;
        }
        this.emit('error', err instanceof Error ? err : new Error(String(err)));
        retry();
        return;
      }
      this.set(token);
      this.stats.tokenRefreshes++;
      this.emit('token_refreshed', this.exp !== undefined ? { expiresAt: this.exp } : {});
      this.scheduleRefresh();
    } else {
      // EventSource cannot send frames: reopen the stream with the new token.
      this.set(token);
      this.stats.tokenRefreshes++;
      this.emit('token_refreshed', this.exp !== undefined ? { expiresAt: this.exp } : {});
      host.queueReopen();
    }
  }
}
