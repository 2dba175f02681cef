"""Real processes and clients for the python-socketio compatibility tests:
one `herald serve` node on a free loopback port with its own config, HS256
tokens minted with the standard library, the HTTP API over aiohttp, and
python-socketio AsyncClients that record every event they receive.

The binary is $HERALD_BIN, else the repo's target/debug/herald. The node is
stopped at the end of the session; its pid is also written to
$SIO_TEST_PIDS (a directory) when set, for run-tests.sh's trap.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any, AsyncIterator, Callable, Iterator, List, Optional, Tuple

import aiohttp
import pytest
import socketio

REPO = Path(__file__).resolve().parents[3]
SECRET = "sio-compat-secret-0123456789abcdef0123"
ADMIN_KEY = "sio-compat-admin-key-0123456789"
# The rate limit burst of the test config (test/harness.js uses the same).
BURST = 20

CONFIG = """
[server]
listen = "127.0.0.1:{port}"
node_id = "sio-py-{port}"
shutdown_drain = "100ms"

[auth]
hs256_secret = "{secret}"

[[auth.api_keys]]
key = "{admin}"
scopes = ["admin"]

[limits]
max_connections_per_user = 50
messages_per_second = 20
burst = {burst}

[namespaces.sio]
join = "any"
send = "any"
presence = true
history_size = 1000
history_ttl = "10m"
"""


def herald_bin() -> str:
    """The herald binary under test."""
    path = os.environ.get("HERALD_BIN") or str(REPO / "target" / "debug" / "herald")
    if not os.access(path, os.X_OK):
        pytest.fail(f"no herald binary at {path}: run `cargo build -p herald` or set HERALD_BIN")
    return path


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def uniq() -> str:
    """A unique suffix for user ids and room names."""
    return secrets.token_hex(4)


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def token(sub: str, **claims: Any) -> str:
    """An HS256 JWT for ``sub``, valid for an hour."""
    head = _b64url(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = _b64url(json.dumps({"sub": sub, "exp": int(time.time()) + 3600, **claims}).encode())
    sig = hmac.new(SECRET.encode(), f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{_b64url(sig)}"


class Node:
    """One `herald serve` process."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="herald-sio-py-"))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        (self.dir / "herald.toml").write_text(
            CONFIG.format(port=self.port, secret=SECRET, admin=ADMIN_KEY, burst=BURST)
        )
        # The node reads every HERALD_* variable as config (HERALD_BIN too).
        env = {k: v for k, v in os.environ.items() if not k.startswith("HERALD_")}
        with open(self.dir / "herald.log", "ab") as log:
            self.proc = subprocess.Popen(
                [herald_bin(), "serve", "--config", str(self.dir / "herald.toml")],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env=env,
            )
        pids = os.environ.get("SIO_TEST_PIDS")
        self.pid_file = Path(pids) / str(self.proc.pid) if pids else None
        if self.pid_file:
            self.pid_file.touch()
        deadline = time.monotonic() + 20
        while not self._ready():
            if time.monotonic() > deadline:
                self.close()
                pytest.fail(f"herald on port {self.port} not ready in 20 s")
            time.sleep(0.05)

    def _ready(self) -> bool:
        if self.proc.poll() is not None:
            log = (self.dir / "herald.log").read_text()[-2000:]
            raise AssertionError(f"herald exited: {log}")
        try:
            with urllib.request.urlopen(self.url + "/ready", timeout=1) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    async def api(self, method: str, path: str, body: Any = None) -> Any:
        """An HTTP API call with the admin key; the parsed JSON answer."""
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http:
            async with http.request(
                method,
                self.url + path,
                json=body,
                headers={"Authorization": f"Bearer {ADMIN_KEY}"},
            ) as r:
                text = await r.text()
                assert r.status < 300, f"{method} {path}: {r.status} {text}"
                return json.loads(text)

    async def publish(self, room: str, event: str, data: Any) -> Any:
        """Publishes one event; answers ``{room, epoch, offset}``."""
        return await self.api("POST", "/api/v1/publish", {"room": room, "event": event, "data": data})

    def close(self) -> None:
        """Kills the node and removes its directory."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
        if self.pid_file:
            self.pid_file.unlink(missing_ok=True)
        shutil.rmtree(self.dir, ignore_errors=True)


async def wait_for(check: Callable[[], Any], what: str, timeout: float = 5.0) -> Any:
    """Polls ``check`` until it returns something truthy or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while True:
        v = check()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.02)


class Client:
    """A python-socketio AsyncClient that records what it receives:
    ``events`` (name, args) for every event, reserved ``disconnect`` calls
    included, and ``connect_errors`` (the argument of each ``connect_error``)."""

    def __init__(self, namespace: str = "/") -> None:
        self.sio = socketio.AsyncClient(reconnection_delay=0.1, reconnection_delay_max=0.3)
        self.events: List[Tuple[str, Tuple[Any, ...]]] = []
        self.connect_errors: List[Any] = []

        async def on_any(event: str, *args: Any) -> None:
            self.events.append((event, args))

        async def on_disconnect(*args: Any) -> None:
            self.events.append(("disconnect", args))

        async def on_connect_error(*args: Any) -> None:
            self.connect_errors.append(args[0] if args else None)

        self.sio.on("*", on_any, namespace=namespace)
        self.sio.on("disconnect", on_disconnect, namespace=namespace)
        self.sio.on("connect_error", on_connect_error, namespace=namespace)

    async def connect(self, url: str, **kwargs: Any) -> "Client":
        """Connects (``kwargs`` as for ``AsyncClient.connect``), waiting up to 5 s."""
        await self.sio.connect(url, wait_timeout=5, **kwargs)
        return self

    async def request(self, name: str, payload: Any) -> Any:
        """``emit`` with an ack; the ack's argument."""
        return await self.sio.call(name, payload, timeout=5)

    def named(self, name: str) -> List[Tuple[Any, ...]]:
        """The argument tuples of every recorded event called ``name``."""
        return [args for event, args in self.events if event == name]

    async def next_event(
        self, name: str, pred: Callable[..., bool] = lambda *a: True, timeout: float = 5.0
    ) -> Tuple[Any, ...]:
        """The first recorded ``name`` event whose args satisfy ``pred``, waited for."""

        def find() -> Optional[Tuple[Any, ...]]:
            return next((a for a in self.named(name) if pred(*a)), None)

        found: Tuple[Any, ...] = await wait_for(find, f"event {name}", timeout)
        return found


@pytest.fixture(scope="session")
def node() -> Iterator[Node]:
    """A memory-broker node shared by the whole session."""
    n = Node()
    yield n
    n.close()


@pytest.fixture()
async def clients() -> AsyncIterator[Callable[..., Client]]:
    """A factory of Clients, each disconnected after the test."""
    made: List[Client] = []

    def make(namespace: str = "/") -> Client:
        c = Client(namespace)
        made.append(c)
        return c

    yield make
    for c in made:
        try:
            await asyncio.wait_for(c.sio.disconnect(), 5)
        except Exception:  # already gone, or the server closed it first
            pass
