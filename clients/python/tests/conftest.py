"""Real processes for the SDK tests: `herald serve` nodes on free loopback
ports with temp configs, and redis-server for the Redis-backed ones.

The binary is $HERALD_BIN, else the repo's target/debug/herald. Every
process is stopped at the end of the session (or of its test).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional

import httpx
import pytest

REPO = Path(__file__).resolve().parents[3]
SECRET = "sdk-test-secret-0123456789abcdef"
ISSUER = "herald-sdk-tests"
AUDIENCE = "herald"
ADMIN_KEY = "sdk-admin-key-0123456789"
PUBLISH_KEY = "sdk-publish-key-0123456789"

BASE_TOML = f"""
[auth]
hs256_secret = "{SECRET}"
issuer = "{ISSUER}"
audience = "{AUDIENCE}"
api_keys = [
  {{ key = "{ADMIN_KEY}", scopes = ["admin"] }},
  {{ key = "{PUBLISH_KEY}", scopes = ["publish"] }},
]

[namespaces.sdk]
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


def wait_until(check: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
    """Polls ``check`` until it holds or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


class Node:
    """One `herald serve` process; ``restart`` reuses its port and config."""

    def __init__(self, extra_toml: str = "", prefix: str = "herald") -> None:
        self.prefix = prefix
        self.dir = Path(tempfile.mkdtemp(prefix="herald-sdk-py-"))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = f'[server]\nlisten = "127.0.0.1:{self.port}"\nnode_id = "sdk-py-{self.port}"\n'
        (self.dir / "herald.toml").write_text(config + BASE_TOML + extra_toml)
        self.proc: Optional[subprocess.Popen[bytes]] = None
        self.start()

    def start(self) -> None:
        """Starts the process and waits until /ready answers 200."""
        # The node reads every HERALD_* variable as config (HERALD_BIN too).
        env = {k: v for k, v in os.environ.items() if not k.startswith("HERALD_")}
        log = open(self.dir / "herald.log", "ab")
        self.proc = subprocess.Popen(
            [herald_bin(), "serve", "--config", str(self.dir / "herald.toml")],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            env=env,
        )
        log.close()
        wait_until(self._ready, f"herald on port {self.port} to be ready ({self.dir / 'herald.log'})", 30.0)

    def _ready(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"herald exited: {(self.dir / 'herald.log').read_text()[-2000:]}")
        try:
            return httpx.get(self.url + "/ready", timeout=1.0).status_code == 200
        except httpx.TransportError:
            return False

    def kill(self) -> None:
        """SIGKILL: no drain, in-flight requests see their connection break."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def restart(self) -> None:
        """Kills the node and starts it again on the same port."""
        self.kill()
        self.start()

    def close(self) -> None:
        """Stops the node and removes its directory."""
        self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


class Redis:
    """One redis-server on a free loopback port, without persistence."""

    def __init__(self) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            pytest.fail("redis-server not found: apt-get install -y redis-server")
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_until(self._up, f"redis-server on port {self.port}")

    def _up(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def pause(self) -> None:
        """SIGSTOP: commands queue unanswered, so the node's time out (503)."""
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT: queued commands run, in order."""
        self.proc.send_signal(signal.SIGCONT)

    def close(self) -> None:
        """Stops the server."""
        self.resume()
        self.proc.kill()
        self.proc.wait(10)


@pytest.fixture(scope="session")
def node() -> Iterator[Node]:
    """A memory-broker node shared by the tests that do not restart it."""
    n = Node()
    yield n
    n.close()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[Redis]:
    """A redis-server shared by the Redis-backed tests."""
    r = Redis()
    yield r
    r.close()


@pytest.fixture()
def redis_node(redis_server: Redis) -> Iterator[Node]:
    """A fresh Redis-broker node per test (tests kill it), with a short
    command timeout so a paused Redis turns into 503 quickly."""
    prefix = f"sdk{free_port()}"
    n = Node(
        f"""
[broker]
kind = "redis"
redis_url = "{redis_server.url}"
prefix = "{prefix}"
command_timeout = "300ms"
""",
        prefix,
    )
    yield n
    n.close()


def history_data(url: str, room: str, tenant: Optional[str] = None) -> List[Any]:
    """Every stored event's data of ``room``, oldest first (raw HTTP)."""
    params: Dict[str, Any] = {"since": 0, "limit": 1000}
    if tenant:
        params["tenant"] = tenant
    r = httpx.get(
        f"{url}/api/v1/rooms/{room}/history",
        params=params,
        headers={"Authorization": f"Bearer {ADMIN_KEY}"},
        timeout=5.0,
    )
    r.raise_for_status()
    return [e["data"] for e in r.json()["events"]]
