"""Publish throughput on one connection: the SDK (sync and async) against
raw httpx requests with the same body, one request at a time.

    HERALD_BIN=target/release/herald clients/python/.venv/bin/python clients/python/bench.py

Starts its own memory-broker node from $HERALD_BIN (or uses --url with
--api-key), publishes --events events per mode after a warm-up, and prints
events/s per mode. Run it on an otherwise idle machine: the node and the
client share the cores.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from typing import Callable, Dict, List, Optional

import httpx

from herald_sdk import AsyncHerald, Herald

KEY = "bench-admin-key-0123456789"


def start_node(binary: str) -> "tuple[subprocess.Popen[bytes], str, Path]":
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    d = Path(tempfile.mkdtemp(prefix="herald-bench-py-"))
    (d / "herald.toml").write_text(
        f'[server]\nlisten = "127.0.0.1:{port}"\n[auth]\nhs256_secret = "bench-secret-0123456789abcdef"\n'
        f'api_keys = [{{ key = "{KEY}", scopes = ["admin"] }}]\n'
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("HERALD_")}
    proc = subprocess.Popen(
        [binary, "serve", "--config", str(d / "herald.toml")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/ready", timeout=1).status_code == 200:
                return proc, url, d
        except httpx.TransportError:
            time.sleep(0.05)
    proc.kill()
    raise SystemExit("herald did not become ready")


def body(room: str, i: int) -> bytes:
    return json.dumps(
        {"room": room, "event": "bench", "data": {"i": i}, "idempotency_key": uuid.uuid4().hex},
        separators=(",", ":"),
    ).encode()


def timed(n: int, run: Callable[[int], None]) -> float:
    run(max(n // 10, 50))  # warm-up: connection open, caches hot
    start = time.perf_counter()
    run(n)
    return n / (time.perf_counter() - start)


def bench_sync_sdk(url: str, key: str, n: int) -> float:
    with Herald(url, key) as h:
        room = f"bench:{uuid.uuid4().hex[:8]}"
        return timed(n, lambda k: [h.publish(room, "bench", {"i": i}) for i in range(k)] and None)


def bench_sync_raw(url: str, key: str, n: int) -> float:
    hdrs = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    with httpx.Client() as c:
        room = f"bench:{uuid.uuid4().hex[:8]}"

        def run(k: int) -> None:
            for i in range(k):
                c.post(url + "/api/v1/publish", content=body(room, i), headers=hdrs).raise_for_status()

        return timed(n, run)


async def atimed(n: int, run: Callable[[int], "asyncio.Future[None]"]) -> float:
    await run(max(n // 10, 50))
    start = time.perf_counter()
    await run(n)
    return n / (time.perf_counter() - start)


async def bench_async_sdk(url: str, key: str, n: int) -> float:
    async with AsyncHerald(url, key) as h:
        room = f"bench:{uuid.uuid4().hex[:8]}"

        async def run(k: int) -> None:
            for i in range(k):
                await h.publish(room, "bench", {"i": i})

        return await atimed(n, run)  # type: ignore[arg-type]


async def bench_async_raw(url: str, key: str, n: int) -> float:
    hdrs = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    async with httpx.AsyncClient() as c:
        room = f"bench:{uuid.uuid4().hex[:8]}"

        async def run(k: int) -> None:
            for i in range(k):
                (await c.post(url + "/api/v1/publish", content=body(room, i), headers=hdrs)).raise_for_status()

        return await atimed(n, run)  # type: ignore[arg-type]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url")
    p.add_argument("--api-key", default=KEY)
    p.add_argument("--events", type=int, default=5000)
    p.add_argument("--rounds", type=int, default=5, help="each mode runs this often, interleaved with the others")
    args = p.parse_args()
    proc: Optional[subprocess.Popen[bytes]] = None
    tmp: Optional[Path] = None
    url = args.url
    if url is None:
        binary = os.environ.get("HERALD_BIN") or str(Path(__file__).resolve().parents[2] / "target/release/herald")
        proc, url, tmp = start_node(binary)
        print(f"node: {binary}")
    try:
        best: Dict[str, List[float]] = {}
        for _ in range(args.rounds):
            for name, fn in [
                ("python sync sdk", lambda: bench_sync_sdk(url, args.api_key, args.events)),
                ("python sync raw httpx", lambda: bench_sync_raw(url, args.api_key, args.events)),
                ("python async sdk", lambda: asyncio.run(bench_async_sdk(url, args.api_key, args.events))),
                ("python async raw httpx", lambda: asyncio.run(bench_async_raw(url, args.api_key, args.events))),
            ]:
                best.setdefault(name, []).append(fn())
        for name, rates in best.items():
            print(
                f"{name:24s} best {max(rates):6.0f}  median {statistics.median(rates):6.0f} events/s"
                f"  (rounds: {', '.join(f'{r:.0f}' for r in rates)})"
            )
    finally:
        if proc is not None:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
