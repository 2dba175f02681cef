// Real processes for the Socket.IO compatibility tests: `herald serve`
// nodes and redis-server on free loopback ports with their own configs,
// HS256 tokens minted with node's crypto, the HTTP API, and a TCP proxy the
// tests cut and re-point to simulate lost connections and dead nodes.
//
// The binary is $HERALD_BIN, else the repo's target/debug/herald. Every
// process started here is stopped by `stop()`, on process exit, and, as a
// last resort, by run-tests.sh's trap: each pid is written to
// $SIO_TEST_PIDS (a directory) when that is set.

import { spawn } from 'node:child_process';
import { createHmac, randomBytes } from 'node:crypto';
import {
  closeSync,
  existsSync,
  mkdtempSync,
  openSync,
  readFileSync,
  rmSync,
  unlinkSync,
  writeFileSync,
} from 'node:fs';
import { connect as tcpConnect, createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { io } from 'socket.io-client';

export const REPO = resolve(dirname(fileURLToPath(import.meta.url)), '../../..');
export const BINARY = process.env.HERALD_BIN || join(REPO, 'target/debug/herald');
export const SECRET = 'sio-compat-secret-0123456789abcdef0123';
export const ADMIN_KEY = 'sio-compat-admin-key-0123456789';
/** The test config's rate limit burst: tests/test_socketio.py uses the same. */
export const BURST = 20;

const children = new Set();
process.on('exit', () => {
  for (const c of children) {
    try {
      c.kill('SIGKILL');
    } catch {
      // already gone
    }
  }
});

function trackPid(child) {
  children.add(child);
  const dir = process.env.SIO_TEST_PIDS;
  const file = dir ? join(dir, String(child.pid)) : null;
  if (file) writeFileSync(file, '');
  child.once('exit', () => {
    children.delete(child);
    if (file && existsSync(file)) unlinkSync(file);
  });
}

/** A loopback port nobody listens on right now. */
export function freePort() {
  return new Promise((res, rej) => {
    const srv = createServer();
    srv.once('error', rej);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => res(port));
    });
  });
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Polls `check` until it returns truthy or `timeoutMs` passes (then throws naming `what`). */
export async function waitFor(check, what, timeoutMs = 5000) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await check();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(20);
  }
}

/** A unique suffix for user ids and room names, so tests never share state. */
export function uniq() {
  return randomBytes(4).toString('hex');
}

const b64url = (v) => Buffer.from(typeof v === 'string' ? v : JSON.stringify(v)).toString('base64url');

/** An HS256 JWT for `sub`, valid for an hour, with extra `claims`. */
export function token(sub, claims = {}) {
  const head = b64url({ alg: 'HS256', typ: 'JWT' });
  const body = b64url({ sub, exp: Math.floor(Date.now() / 1000) + 3600, ...claims });
  const sig = createHmac('sha256', SECRET).update(`${head}.${body}`).digest('base64url');
  return `${head}.${body}.${sig}`;
}

function config(port, extra, limits) {
  return `[server]
listen = "127.0.0.1:${port}"
node_id = "sio-${port}"
shutdown_drain = "100ms"

[auth]
hs256_secret = "${SECRET}"

[[auth.api_keys]]
key = "${ADMIN_KEY}"
scopes = ["admin"]

[limits]
${Object.entries({ max_connections_per_user: 50, messages_per_second: 20, burst: BURST, ...limits })
  .map(([k, v]) => `${k} = ${JSON.stringify(v)}`)
  .join('\n')}

# Chat-like rooms with presence and history, for joins, messages and recovery.
[namespaces.sio]
join = "any"
send = "any"
presence = true
history_size = 1000
history_ttl = "10m"
${extra}`;
}

/** One `herald serve` process. */
export class Herald {
  constructor(port, dir, child) {
    this.port = port;
    this.url = `http://127.0.0.1:${port}`;
    this.dir = dir;
    this.child = child;
  }

  /**
   * Starts a node and waits for /ready: `extra` TOML is appended to the base
   * config, `limits` (`{key: value}`) override keys of its `[limits]` table.
   */
  static async start(extra = '', limits = {}) {
    if (!existsSync(BINARY)) throw new Error(`no herald binary at ${BINARY}: run \`cargo build -p herald\``);
    const port = await freePort();
    const dir = mkdtempSync(join(tmpdir(), 'herald-sio-'));
    writeFileSync(join(dir, 'herald.toml'), config(port, extra, limits));
    // The node reads every HERALD_* variable as config: pass none of them.
    const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('HERALD_')));
    const logFd = openSync(join(dir, 'herald.log'), 'a');
    const child = spawn(BINARY, ['serve', '--config', join(dir, 'herald.toml')], {
      stdio: ['ignore', logFd, logFd],
      env,
    });
    closeSync(logFd);
    trackPid(child);
    const node = new Herald(port, dir, child);
    await waitFor(async () => {
      if (child.exitCode !== null) throw new Error(`herald exited: ${node.log().slice(-2000)}`);
      try {
        return (await fetch(`${node.url}/ready`, { signal: AbortSignal.timeout(1000) })).status === 200;
      } catch {
        return false;
      }
    }, `herald on port ${port} to be ready`, 20000);
    return node;
  }

  /** The node's log so far (for failure messages). */
  log() {
    try {
      return readFileSync(join(this.dir, 'herald.log'), 'utf8');
    } catch {
      return '';
    }
  }

  /** SIGKILL: no drain, no goodbye to any client. */
  async kill() {
    if (this.child.exitCode !== null || this.child.signalCode !== null) return;
    const exited = new Promise((r) => this.child.once('exit', r));
    this.child.kill('SIGKILL');
    await exited;
  }

  /** SIGTERM: the node drains (clients get a reconnect close) and exits; waits at most 10 s. */
  async terminate() {
    if (this.child.exitCode !== null || this.child.signalCode !== null) return;
    const exited = new Promise((r) => this.child.once('exit', r));
    this.child.kill('SIGTERM');
    await Promise.race([exited, new Promise((r) => setTimeout(r, 10000))]);
    if (this.child.exitCode === null && this.child.signalCode === null) {
      throw new Error(`herald on port ${this.port} still running 10 s after SIGTERM`);
    }
  }

  /** Kills the node and removes its directory. */
  async stop() {
    await this.kill();
    rmSync(this.dir, { recursive: true, force: true });
  }

  /** An HTTP API call with the admin key; returns the parsed JSON body (throws on non-2xx). */
  async api(method, path, body) {
    const res = await fetch(this.url + path, {
      method,
      headers: { authorization: `Bearer ${ADMIN_KEY}`, 'content-type': 'application/json' },
      body: body === undefined ? undefined : JSON.stringify(body),
      signal: AbortSignal.timeout(5000),
    });
    const text = await res.text();
    if (!res.ok) throw new Error(`${method} ${path}: ${res.status} ${text}`);
    return JSON.parse(text);
  }

  /** Publishes one event; answers `{room, epoch, offset}`. */
  publish(room, event, data) {
    return this.api('POST', '/api/v1/publish', { room, event, data });
  }
}

/** One redis-server on a free loopback port, without persistence. */
export class Redis {
  static async start() {
    const port = await freePort();
    const child = spawn(
      'redis-server',
      ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'],
      { stdio: 'ignore' },
    );
    trackPid(child);
    const r = new Redis();
    r.port = port;
    r.url = `redis://127.0.0.1:${port}`;
    r.child = child;
    await waitFor(
      () =>
        new Promise((res) => {
          const s = tcpConnect(port, '127.0.0.1');
          s.once('error', () => res(false));
          s.once('connect', () => s.write('PING\r\n'));
          s.once('data', (d) => {
            s.destroy();
            res(d.toString().startsWith('+PONG'));
          });
        }),
      `redis-server on port ${port}`,
    );
    return r;
  }

  async stop() {
    if (this.child.exitCode !== null || this.child.signalCode !== null) return;
    const exited = new Promise((r) => this.child.once('exit', r));
    this.child.kill('SIGKILL');
    await exited;
  }
}

/**
 * A TCP proxy on a free loopback port to `targetPort`. `cut()` drops every
 * proxied connection and refuses new ones until `restore()`; `retarget()`
 * sends new connections elsewhere (existing ones stay where they are).
 */
export class Proxy {
  static async start(targetPort) {
    const p = new Proxy();
    p.target = targetPort;
    p.down = false;
    p.pairs = new Set();
    p.accepted = 0;
    p.server = createServer((client) => {
      if (p.down) {
        client.destroy();
        return;
      }
      p.accepted++;
      const upstream = tcpConnect(p.target, '127.0.0.1');
      const pair = { client, upstream };
      p.pairs.add(pair);
      const drop = () => {
        client.destroy();
        upstream.destroy();
        p.pairs.delete(pair);
      };
      client.on('error', drop).on('close', drop);
      upstream.on('error', drop).on('close', drop);
      client.pipe(upstream);
      upstream.pipe(client);
    });
    await new Promise((r) => p.server.listen(0, '127.0.0.1', r));
    p.port = p.server.address().port;
    p.url = `http://127.0.0.1:${p.port}`;
    return p;
  }

  /** Drops every connection and refuses new ones. */
  cut() {
    this.down = true;
    for (const { client, upstream } of this.pairs) {
      client.destroy();
      upstream.destroy();
    }
    this.pairs.clear();
  }

  restore() {
    this.down = false;
  }

  /** Stops passing the server's bytes on (they back up in the kernel); the connections stay. */
  freeze() {
    for (const { client, upstream } of this.pairs) {
      upstream.unpipe(client);
      upstream.pause();
    }
  }

  /** Passes the server's bytes on again. */
  thaw() {
    for (const { client, upstream } of this.pairs) upstream.pipe(client);
  }

  retarget(port) {
    this.target = port;
  }

  close() {
    this.cut();
    return new Promise((r) => this.server.close(() => r()));
  }
}

/**
 * A socket.io-client socket that records every event it receives (name and
 * arguments, in order) in `events`; `connect()` resolves once connected.
 */
export function client(url, opts = {}) {
  const socket = io(url, {
    reconnectionDelay: 100,
    reconnectionDelayMax: 300,
    timeout: 5000,
    forceNew: true,
    ...opts,
  });
  socket.events = [];
  socket.onAny((event, ...args) => socket.events.push({ event, args }));
  return socket;
}

/** Resolves when `socket` connects; rejects with its `connect_error`. */
export function connected(socket, timeoutMs = 5000) {
  if (socket.connected) return Promise.resolve(socket);
  return new Promise((res, rej) => {
    const t = setTimeout(() => rej(new Error('no connect within deadline')), timeoutMs);
    socket.once('connect', () => {
      clearTimeout(t);
      res(socket);
    });
    socket.once('connect_error', (err) => {
      clearTimeout(t);
      rej(err);
    });
  });
}

/** Resolves with the `connect_error` of `socket` (fails if it connects instead). */
export function connectError(socket, timeoutMs = 5000) {
  return new Promise((res, rej) => {
    const t = setTimeout(() => rej(new Error('no connect_error within deadline')), timeoutMs);
    socket.once('connect', () => {
      clearTimeout(t);
      rej(new Error('connected, expected a connect_error'));
    });
    socket.once('connect_error', (err) => {
      clearTimeout(t);
      res(err);
    });
  });
}

/** The first recorded event named `name` matching `pred`, waited for. */
export function nextEvent(socket, name, pred = () => true, timeoutMs = 5000) {
  return waitFor(
    () => socket.events.find((e) => e.event === name && pred(...e.args)),
    `event ${name} on ${socket.id}`,
    timeoutMs,
  );
}

/** `emit(name, payload)` with an ack, within a deadline; resolves with the ack's argument. */
export function request(socket, name, payload, timeoutMs = 5000) {
  return socket.timeout(timeoutMs).emitWithAck(name, payload);
}
