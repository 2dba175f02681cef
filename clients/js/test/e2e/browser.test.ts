/**
 * The built library (dist/, plain ES modules) in headless Chromium: a page
 * served from 127.0.0.1 connects to the herald node, and the test asserts
 * from Node through page.evaluate.
 */
import { execSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import { dirname, join, normalize, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium, type Browser, type Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { api, freePort, until } from './herald.js';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
const DIST = join(ROOT, 'dist');
const CHROMIUM = process.env.CHROMIUM ?? '/usr/bin/chromium';
const url = inject('heraldUrl');
const herald = api(url);

const PAGE = `<!doctype html>
<html><head><meta charset="utf-8"><title>herald client e2e</title></head>
<body>
<script type="module">
  import { connect } from './herald-client/index.js';
  window.herald = { connect };
  window.ready = true;
</script>
</body></html>`;

let server: Server;
let origin: string;
let browser: Browser;
let page: Page;

beforeAll(async () => {
  if (!existsSync(join(DIST, 'index.js'))) execSync('npm run build', { cwd: ROOT, stdio: 'inherit' });
  server = createServer((req, res) => {
    const path = new URL(req.url ?? '/', 'http://x').pathname;
    if (path === '/' || path === '/index.html') {
      res.writeHead(200, { 'content-type': 'text/html' }).end(PAGE);
      return;
    }
    if (path.startsWith('/herald-client/')) {
      const file = normalize(join(DIST, path.slice('/herald-client/'.length)));
      if (file.startsWith(DIST) && existsSync(file)) {
        const type = file.endsWith('.js') ? 'text/javascript' : 'application/json';
        res.writeHead(200, { 'content-type': type }).end(readFileSync(file));
        return;
      }
    }
    res.writeHead(404).end();
  });
  const port = await freePort();
  await new Promise<void>((r) => server.listen(port, '127.0.0.1', r));
  origin = `http://127.0.0.1:${port}`;
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: [
      '--headless',
      '--no-sandbox',
      '--disable-gpu',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
      '--no-first-run',
      '--disable-quic',
    ],
  });
  page = await browser.newPage();
  page.on('pageerror', (e) => console.error('[page error]', e));
  await page.goto(`${origin}/`);
  await page.waitForFunction(() => (window as any).ready === true);
});

afterAll(async () => {
  await browser?.close();
  await new Promise((r) => server?.close(r));
});

async function openInPage(token: string, transports: string[], room: string): Promise<void> {
  await page.evaluate(
    async ({ url, token, transports, room }) => {
      const w = window as any;
      w.got = w.got ?? {};
      w.got[room] = [];
      const client = w.herald.connect({ url, token, transports });
      w.clients = [...(w.clients ?? []), client];
      client.room(room).on('browser.hello', (e: any) => w.got[room].push({ data: e.data, offset: e.offset }));
      await client.join(room);
      w.transport = w.transport ?? {};
      w.transport[room] = client.transport;
    },
    { url, token, transports, room },
  );
}

describe('in headless Chromium', () => {
  it('the built ESM library connects over WebSocket and receives a published event', async () => {
    await openInPage(await herald.token('browser-ws'), ['websocket'], 'stream:browser');
    expect(await page.evaluate(() => (window as any).transport['stream:browser'])).toBe('websocket');
    await herald.publish('stream:browser', 'browser.hello', { from: 'node' });
    await until(async () => (await page.evaluate(() => (window as any).got['stream:browser'].length)) === 1, 5000, 'event in page');
    expect(await page.evaluate(() => (window as any).got['stream:browser'])).toEqual([{ data: { from: 'node' }, offset: 1 }]);
  });

  it('and over the browser\'s own EventSource', async () => {
    await openInPage(await herald.token('browser-sse'), ['sse'], 'stream:browser-sse');
    expect(await page.evaluate(() => (window as any).transport['stream:browser-sse'])).toBe('sse');
    await herald.publish('stream:browser-sse', 'browser.hello', 42);
    await until(async () => (await page.evaluate(() => (window as any).got['stream:browser-sse'].length)) === 1, 5000, 'event in page');
    expect(await page.evaluate(() => (window as any).got['stream:browser-sse'])).toEqual([{ data: 42, offset: 1 }]);
  });
});
