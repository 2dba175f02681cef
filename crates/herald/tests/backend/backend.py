#!/usr/bin/env python3
"""The application backend the integration tests run beside Herald.

One real process (standard library only) plays every part a backend plays
for Herald: the connect proxy, the join and send proxies, the RPC handler
and the webhook receiver. Tests steer it through `/_control/*` and read what
it received there. Its behaviour is specified in the Rust wrapper,
crates/herald/tests/common/backend.rs.

Usage: backend.py --port 0 [--secret S]; prints `LISTENING <port>` once
it accepts connections.
"""

import argparse
import copy
import hashlib
import hmac
import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ENDPOINTS = ("connect", "join", "send", "rpc", "webhooks")


def default_config():
    return {name: {"mode": "ok"} for name in ENDPOINTS}


def deep_merge(into, update):
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            deep_merge(into[key], value)
        else:
            into[key] = value


class State:
    """Configuration and everything received, behind one lock."""

    def __init__(self, secret):
        self.secret = secret.encode()
        self.lock = threading.Lock()
        self.reset()

    def reset(self):
        with self.lock:
            self.config = default_config()
            self.calls = {name: [] for name in ENDPOINTS}
            self.events = []
            self.posts = []

    def endpoint(self, name):
        with self.lock:
            return copy.deepcopy(self.config.get(name, {}))


def now_ms():
    return int(time.time() * 1000)


def signature_ok(secret, header, body):
    """Checks `Herald-Signature: t=<unix>,v1=<hex>` as docs/protocol.md says."""
    if not header:
        return False
    parts = dict(p.split("=", 1) for p in header.split(",") if "=" in p)
    if "t" not in parts or "v1" not in parts:
        return False
    expected = hmac.new(secret, parts["t"].encode() + b"." + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, parts["v1"])


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "herald-test-backend"

    def log_message(self, *args):
        pass

    # -- plumbing -----------------------------------------------------------

    def read_body(self):
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def answer(self, status, payload):
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    @property
    def state(self):
        return self.server.state

    # -- control ------------------------------------------------------------

    def do_GET(self):
        state = self.state
        path = self.path.split("?", 1)[0]
        with state.lock:
            if path.startswith("/_control/calls/"):
                name = path[len("/_control/calls/"):]
                return self.answer(200, state.calls.get(name, []))
            if path == "/_control/webhooks":
                return self.answer(200, state.events)
            if path == "/_control/webhook_posts":
                return self.answer(200, state.posts)
            if path == "/_control/config":
                return self.answer(200, state.config)
        self.answer(404, {"message": "no such path"})

    def do_POST(self):
        raw = self.read_body()
        path = self.path.split("?", 1)[0]
        if path == "/_control/config":
            with self.state.lock:
                deep_merge(self.state.config, json.loads(raw or b"{}"))
            return self.answer(200, {"ok": True})
        if path == "/_control/reset":
            self.state.reset()
            return self.answer(200, {"ok": True})
        name = path.strip("/")
        if name not in ENDPOINTS:
            return self.answer(404, {"message": "no such path"})
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            return self.answer(400, {"message": "the body is not JSON"})
        if name == "webhooks":
            return self.webhooks(raw, body)
        with self.state.lock:
            self.state.calls[name].append(body)
        config = self.state.endpoint(name)
        if self.failing(config):
            return self.answer(500, {"message": "backend failure"})
        status, payload = getattr(self, "answer_" + name)(body or {}, config)
        self.answer(status, payload)

    def failing(self, config):
        """Applies the endpoint's mode; true when it must answer 500."""
        mode = config.get("mode", "ok")
        if mode == "fail":
            return True
        if mode == "fail_for":
            return now_ms() < int(config.get("until_ms", 0))
        if mode == "slow":
            time.sleep(int(config.get("delay_ms", 5000)) / 1000.0)
        return False

    # -- the backend's answers -------------------------------------------------

    def answer_connect(self, body, config):
        credential = str(body.get("credential", ""))
        users = config.get("users", {})
        if credential in users:
            return 200, users[credential]
        kind, _, rest = credential.partition(":")
        if kind == "opaque" and rest:
            user, _, tenant = rest.partition(":")
            answer = {"user_id": user}
            if tenant:
                answer["tenant"] = tenant
            return 200, answer
        if kind == "refuse":
            return 401, {"message": rest}
        if kind == "forbid":
            return 403, {"message": rest}
        return 401, {"message": "unknown credential"}

    def decision(self, allowed, config):
        answer = {"allow": bool(allowed)}
        if config.get("cache_ttl") is not None:
            answer["cache_ttl"] = config["cache_ttl"]
        return 200, answer

    def answer_join(self, body, config):
        return self.decision(config.get("allow", {}).get(body.get("room")), config)

    def answer_send(self, body, config):
        allow = config.get("allow", {})
        room, event = body.get("room"), body.get("event")
        allowed = allow.get(f"{room} {event}", allow.get(room))
        return self.decision(allowed, config)

    def answer_rpc(self, body, config):
        if body.get("method") == "error":
            return 400, {"message": "rpc error requested"}
        return 200, {
            "method": body.get("method"),
            "data": body.get("data"),
            "user_id": body.get("user_id"),
        }

    def webhooks(self, raw, body):
        ok = signature_ok(self.state.secret, self.headers.get("Herald-Signature"), raw)
        config = self.state.endpoint("webhooks")
        status = 500 if self.failing(config) else 200
        events = (body or {}).get("events", []) if isinstance(body, dict) else []
        with self.state.lock:
            self.state.posts.append({"status": status, "count": len(events), "signature_ok": ok})
            if status == 200:
                for event in events:
                    event = dict(event)
                    event["_signature_ok"] = ok
                    self.state.events.append(event)
        if status == 200:
            self.answer(200, {"ok": True})
        else:
            self.answer(500, {"message": "backend failure"})


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--secret", default="hook-secret")
    args = parser.parse_args()
    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    server.daemon_threads = True
    server.state = State(args.secret)
    print(f"LISTENING {server.server_address[1]}", flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
