/**
 * Starts real `herald` nodes for the end-to-end tests: a temp TOML config,
 * a free loopback port, and the debug binary (built when missing).
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

export const REPO = resolve(dirname(fileURLToPath(import.meta.url)), '../../../..');
export const BINARY = process.env.HERALD_BIN ?? join(REPO, 'target/debug/herald');
export const API_KEY = 'e2e-admin-key-0123456789abcdef';
const SECRET = 'e2e-hs256-secret-0123456789abcdef0123456789';

export function ensureBinary(): void {
  if (existsSync(BINARY)) return;
  console.log(`[e2e] ${BINARY} missing: cargo build -p herald`);
  const r = spawnSync('cargo', ['build', '-p', 'herald'], { cwd: REPO, stdio: 'inherit' });
  if (r.status !== 0 || !existsSync(BINARY)) throw new Error('cargo build -p herald failed');
}

export function freePort(): Promise<number> {
  return new Promise((res, rej) => {
    const srv = createServer();
    srv.once('error', rej);
    srv.listen(0, '127.0.0.1', () => {
      const addr = srv.address();
      const port = typeof addr === 'object' && addr ? addr.port : 0;
      srv.close(() => res(port));
    });
  });
}

export interface Node {
  url: string;
  port: number;
  stop(): Promise<void>;
  log(): string;
}

/** Starts a node; `extraConfig` is TOML appended to the config (e.g. a `[proxy]` table). */
export async function startHerald(port?: number, extraConfig = ''): Promise<Node> {
  ensureBinary();
  const p = port ?? (await freePort());
  const dir = mkdtempSync(join(tmpdir(), 'herald-js-e2e-'));
  const config = join(dir, 'herald.toml');
  writeFileSync(
    config,
    `[server]
listen = "127.0.0.1:${p}"
node_id = "e2e"
shutdown_drain = "100ms"

[auth]
hs256_secret = "${SECRET}"

[[auth.api_keys]]
key = "${API_KEY}"
scopes = ["admin"]

[limits]
# Short liveness windows so the "server kills a silent socket" test is fast.
heartbeat_interval = "500ms"
stale_timeout = "1500ms"
max_connections_per_user = 50

[namespaces.stream]
join = "any"
send = "any"
presence = true
history_size = 1000
history_ttl = "1h"
${extraConfig}`,
  );
  const child: ChildProcess = spawn(BINARY, ['serve', '--config', config], {
    stdio: ['ignore', 'pipe', 'pipe'],
    // The node reads every HERALD_* variable as config (HERALD_BIN would
    // be refused as an unknown key), so only the test's own reach it.
    env: {
      ...Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('HERALD_'))),
      RUST_LOG: process.env.RUST_LOG ?? 'warn',
    },
  });
  let output = '';
  child.stdout!.on('data', (d) => (output += d));
  child.stderr!.on('data', (d) => (output += d));
  const url = `http://127.0.0.1:${p}`;
  const deadline = Date.now() + 20_000;
  for (;;) {
    if (child.exitCode !== null) throw new Error(`herald exited (${child.exitCode}):\n${output}`);
    try {
      const r = await fetch(`${url}/ready`);
      if (r.ok) break;
    } catch {
      /* not up yet */
    }
    if (Date.now() > deadline) {
      child.kill('SIGKILL');
      throw new Error(`herald did not become ready:\n${output}`);
    }
    await new Promise((r) => setTimeout(r, 50));
  }
  return {
    url,
    port: p,
    log: () => output,
    stop: () =>
      new Promise<void>((res) => {
        if (child.exitCode !== null) {
          rmSync(dir, { recursive: true, force: true });
          return res();
        }
        const t = setTimeout(() => child.kill('SIGKILL'), 3000);
        child.once('exit', () => {
          clearTimeout(t);
          rmSync(dir, { recursive: true, force: true });
          res();
        });
        child.kill('SIGTERM');
      }),
  };
}

/** The admin HTTP API of a node. */
export function api(url: string) {
  const call = async (method: string, path: string, body?: unknown) => {
    const r = await fetch(`${url}${path}`, {
      method,
      headers: { authorization: `Bearer ${API_KEY}`, 'content-type': 'application/json' },
      ...(body !== undefined ? { body: JSON.stringify(body) } : {}),
    });
    const json = (await r.json()) as any;
    if (!r.ok) throw new Error(`${method} ${path}: ${r.status} ${JSON.stringify(json)}`);
    return json;
  };
  return {
    token: async (sub: string, ttl = '1h', extra: Record<string, unknown> = {}): Promise<string> =>
      (await call('POST', '/api/v1/tokens', { sub, ttl, ...extra })).token,
    publish: (room: string, event: string, data: unknown): Promise<{ room: string; epoch: string; offset: number }> =>
      call('POST', '/api/v1/publish', { room, event, data }),
    connections: (user: string) => call('GET', `/api/v1/users/${encodeURIComponent(user)}/connections`),
    disconnect: (user: string) => call('POST', `/api/v1/users/${encodeURIComponent(user)}/disconnect`),
    sendToUser: (user: string, event: string, data: unknown): Promise<{ user_id: string; delivered: number }> =>
      call('POST', `/api/v1/users/${encodeURIComponent(user)}/send`, { event, data }),
    sendToConnection: (conn: string, event: string, data: unknown): Promise<{ connection_id: string; delivered: number }> =>
      call('POST', `/api/v1/connections/${encodeURIComponent(conn)}/send`, { event, data }),
  };
}

export const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Polls `check` until it returns true. */
export async function until(check: () => boolean | Promise<boolean>, ms = 10_000, what = 'condition'): Promise<void> {
  const deadline = Date.now() + ms;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(20);
  }
}
