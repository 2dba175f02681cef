// Socket.IO peer for herald-bench: WebSocket transport only. A client
// connects with `auth: {token}` (an HS256 JWT: verified against
// HS256_SECRET when that is set, else only required to be a string), joins
// rooms with `emit("join_room", {room}, ack)` (ack `{room}`, or
// `{code, message}` when refused), as it does on Herald's Socket.IO
// endpoint, and `POST /publish {room, event, data}` emits `event` with
// `data` to that room. connectionStateRecovery stays off (its default).
// Listens on 127.0.0.1:$PORT (loopback only). With REDIS_URL set, servers
// share rooms through the Redis adapter (@socket.io/redis-adapter), so a
// publish on one reaches sockets on the others. PERMESSAGE_DEFLATE=1 (with
// DEFLATE_THRESHOLD, DEFLATE_LEVEL) turns on perMessageDeflate, see below.
'use strict';

const crypto = require('crypto');
const http = require('http');
const { Server } = require('socket.io');

const port = Number(process.env.PORT || 18081);
const host = '127.0.0.1';
const MAX_BODY = 64 * 1024;

const httpServer = http.createServer((req, res) => {
  if (req.method !== 'POST' || req.url !== '/publish') {
    res.writeHead(404).end();
    return;
  }
  let body = '';
  let tooBig = false;
  req.setEncoding('utf8');
  req.on('data', (chunk) => {
    body += chunk;
    if (body.length > MAX_BODY) tooBig = true;
  });
  req.on('end', () => {
    if (tooBig) {
      res.writeHead(413).end();
      return;
    }
    let msg;
    try {
      msg = JSON.parse(body);
    } catch {
      res.writeHead(400).end();
      return;
    }
    if (typeof msg.room !== 'string' || typeof msg.event !== 'string') {
      res.writeHead(400).end();
      return;
    }
    io.to(msg.room).emit(msg.event, msg.data);
    res.writeHead(200, { 'content-type': 'application/json' }).end('{"ok":true}');
  });
});

// PERMESSAGE_DEFLATE=1 turns on Socket.IO's `perMessageDeflate` (the ws
// package's permessage-deflate, compressed per connection) for messages of
// at least DEFLATE_THRESHOLD bytes (default 1024, Socket.IO's own) at zlib
// level DEFLATE_LEVEL (default 6, zlib's). Off by default, as before.
function deflateOption() {
  if (!['1', 'true', 'on'].includes(String(process.env.PERMESSAGE_DEFLATE || '').toLowerCase())) {
    return false;
  }
  const threshold = Number(process.env.DEFLATE_THRESHOLD || 1024);
  const level = Number(process.env.DEFLATE_LEVEL || 6);
  if (!Number.isInteger(threshold) || threshold < 0) {
    console.error(`DEFLATE_THRESHOLD must be a non-negative integer, got ${process.env.DEFLATE_THRESHOLD}`);
    process.exit(2);
  }
  if (!Number.isInteger(level) || level < 0 || level > 9) {
    console.error(`DEFLATE_LEVEL must be 0-9, got ${process.env.DEFLATE_LEVEL}`);
    process.exit(2);
  }
  return { threshold, zlibDeflateOptions: { level } };
}
const perMessageDeflate = deflateOption();

const io = new Server(httpServer, {
  transports: ['websocket'],
  serveClient: false,
  perMessageDeflate,
});

async function useRedis(url) {
  const { createClient } = require('redis');
  const { createAdapter } = require('@socket.io/redis-adapter');
  const pub = createClient({ url });
  const sub = pub.duplicate();
  await Promise.all([pub.connect(), sub.connect()]);
  io.adapter(createAdapter(pub, sub));
}

const secret = process.env.HS256_SECRET || '';

// An HS256 JWT's signature and `exp`, with node's own crypto (no package):
// the same work per connect as Herald's token check.
function tokenValid(token) {
  const parts = token.split('.');
  if (parts.length !== 3) return false;
  const mac = crypto.createHmac('sha256', secret).update(`${parts[0]}.${parts[1]}`).digest();
  const sig = Buffer.from(parts[2], 'base64url');
  if (sig.length !== mac.length || !crypto.timingSafeEqual(sig, mac)) return false;
  try {
    const claims = JSON.parse(Buffer.from(parts[1], 'base64url').toString('utf8'));
    return typeof claims.exp !== 'number' || claims.exp * 1000 > Date.now();
  } catch {
    return false;
  }
}

io.use((socket, next) => {
  const token = socket.handshake.auth && socket.handshake.auth.token;
  if (typeof token !== 'string' || (secret && !tokenValid(token))) {
    next(new Error('unauthorized'));
    return;
  }
  next();
});

io.on('connection', (socket) => {
  socket.on('join_room', (req, ack) => {
    const room = req && req.room;
    const reply = typeof ack === 'function' ? ack : () => {};
    if (typeof room !== 'string' || room.length === 0) {
      reply({ code: 'bad_request', message: 'room must be a non-empty string' });
      return;
    }
    socket.join(room);
    reply({ room });
  });
});

(process.env.REDIS_URL ? useRedis(process.env.REDIS_URL) : Promise.resolve())
  .then(() => {
    httpServer.listen(port, host, () => {
      const adapter = process.env.REDIS_URL ? ' with the Redis adapter' : '';
      const deflate = perMessageDeflate ? ` perMessageDeflate ${JSON.stringify(perMessageDeflate)}` : '';
      console.log(`socket.io ${require('socket.io/package.json').version} on ${host}:${port}${adapter}${deflate}`);
    });
  })
  .catch((e) => {
    console.error(`cannot reach Redis at ${process.env.REDIS_URL}: ${e.message}`);
    process.exit(1);
  });

function stop() {
  io.close();
  httpServer.close();
  setTimeout(() => process.exit(0), 2000).unref();
}
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
