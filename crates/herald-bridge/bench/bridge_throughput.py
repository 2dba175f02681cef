#!/usr/bin/env python3
"""Throughput of one bridge on one Herald node (docs/operations.md, "Bridges").

Starts nats-server (JetStream, temp store), optionally redis-server, and
`herald serve` with one mapping `bench.*.ev` -> room `stream:bench-{1}`;
one producer (nats-py) publishes MESSAGES messages spread round-robin over
ROOMS rooms, and the script times from the first publish until the node's
`herald_bridge_messages_total{bridge="bench",outcome="published"}` reaches
MESSAGES. One room is the unpipelined rate (one publish at a time);
several rooms run side by side (per-room lanes).

    python3 bridge_throughput.py --herald target/release/herald \
        --engine memory|redis --mode core|jetstream --rooms 8 --messages 20000

Needs nats-py, nats-server and (for --engine redis) redis-server. With
--mode core, keep --messages under about 8,000: core NATS drops what a slow
subscriber cannot buffer, and the run would never reach the count.
"""

import argparse
import asyncio
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request

import nats


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(what, probe, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = probe()
            if value:
                return value
        except Exception:  # noqa: BLE001 - not up yet
            pass
        time.sleep(0.05)
    raise SystemExit(f"timed out waiting for {what}")


def published(port):
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
    for line in text.splitlines():
        if line.startswith("herald_bridge_messages_total{") and 'bridge="bench"' in line \
                and 'outcome="published"' in line:
            return int(float(line.rsplit(" ", 1)[1]))
    return 0


async def produce(args, nats_url, port):
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    if args.mode == "jetstream":
        await js.add_stream(name="BENCH", subjects=["bench.*.ev"])
    # Ready: core, the leader's subscription; JetStream, a pull waiting.
    def ready():
        if args.mode == "core":
            subs = json.loads(urllib.request.urlopen(
                f"http://127.0.0.1:{args.monitor}/subsz?subs=1", timeout=2).read())
            return any(s["subject"] == "bench.*.ev" for s in subs.get("subscriptions_list", []))
        info = json.loads(urllib.request.urlopen(
            f"http://127.0.0.1:{args.monitor}/jsz?consumers=1", timeout=2).read())
        for acc in info.get("account_details", []):
            for st in acc.get("stream_detail", []):
                for c in st.get("consumer_detail", []) or []:
                    if c.get("num_waiting", 0) > 0:
                        return True
        return False
    await asyncio.get_running_loop().run_in_executor(None, wait_for, "the bridge", ready)
    start = time.monotonic()
    for i in range(args.messages):
        room = i % args.rooms
        payload = json.dumps({"seq": i // args.rooms + 1}).encode()
        if args.mode == "core":
            await nc.publish(f"bench.{room}.ev", payload)
        else:
            # Async publish: the acks are collected in flight.
            await js.publish(f"bench.{room}.ev", payload) if i % 256 == 255 else \
                await nc.publish(f"bench.{room}.ev", payload)
    await nc.flush()
    if args.progress:
        def show():
            last = -1
            while True:
                n = published(port)
                info = json.loads(urllib.request.urlopen(
                    f"http://127.0.0.1:{args.monitor}/jsz?consumers=1", timeout=2).read())
                consumers = [c for a in info.get("account_details", [])
                             for st in a.get("stream_detail", [])
                             for c in st.get("consumer_detail", []) or []]
                state = [(c.get("num_ack_pending"), c.get("num_redelivered"),
                          c.get("num_pending")) for c in consumers]
                print(f"  {time.monotonic() - start:6.2f}s published {n}; "
                      f"consumer (ack pending, redelivered, pending) {state}", flush=True)
                if n >= args.messages:
                    return
                last = n
                time.sleep(0.5)
        await asyncio.get_running_loop().run_in_executor(None, show)
    done = await asyncio.get_running_loop().run_in_executor(
        None, wait_for, "every message published",
        lambda: published(port) >= args.messages and time.monotonic(), 120.0)
    await nc.close()
    return args.messages / (done - start)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--herald", required=True)
    p.add_argument("--engine", choices=["memory", "redis"], default="memory")
    p.add_argument("--mode", choices=["core", "jetstream"], default="jetstream")
    p.add_argument("--rooms", type=int, default=8)
    p.add_argument("--messages", type=int, default=20000)
    p.add_argument("--unordered", action="store_true", help="ordered = false on the mapping")
    p.add_argument("--history-size", type=int, default=1000,
                   help="the rooms' history_size (namespace stream)")
    p.add_argument("--progress", action="store_true", help="print the published count every 0.5 s")
    args = p.parse_args()
    tmp = tempfile.mkdtemp(prefix="bridge-bench-")
    procs = []
    try:
        nport, args.monitor, hport = free_port(), free_port(), free_port()
        procs.append(subprocess.Popen(
            ["nats-server", "-a", "127.0.0.1", "-p", str(nport), "-m", str(args.monitor),
             "-js", "-sd", os.path.join(tmp, "js")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        broker = '[broker]\nkind = "memory"\n'
        if args.engine == "redis":
            rport = free_port()
            procs.append(subprocess.Popen(
                ["redis-server", "--port", str(rport), "--save", "", "--appendonly", "no"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            broker = f'[broker]\nkind = "redis"\nredis_url = "redis://127.0.0.1:{rport}"\n'
        jetstream = 'jetstream_stream = "BENCH"\n' if args.mode == "jetstream" else ""
        config = f"""
[server]
listen = "127.0.0.1:{hport}"
{broker}
[auth]
hs256_secret = "bench-secret-bench-secret-bench-secret"

[namespaces.stream]
join = "any"
history_size = {args.history_size}
history_ttl = "1h"

[bridge]
nats_url = "nats://127.0.0.1:{nport}"

[[bridge.mappings]]
name = "bench"
nats_subject = "bench.*.ev"
{jetstream}ordered = {"false" if args.unordered else "true"}
room = "stream:bench-{{1}}"
event = "step"
"""
        path = os.path.join(tmp, "herald.toml")
        with open(path, "w") as f:
            f.write(config)
        env = {k: v for k, v in os.environ.items() if not k.startswith("HERALD_")}
        env["RUST_LOG"] = "warn"
        log = open(os.path.join(tmp, "herald.log"), "w")
        procs.append(subprocess.Popen([args.herald, "serve", "--config", path],
                                      stdout=log, stderr=log, env=env))
        wait_for("herald /ready", lambda: urllib.request.urlopen(
            f"http://127.0.0.1:{hport}/ready", timeout=2).status == 200)
        rate = asyncio.run(produce(args, f"nats://127.0.0.1:{nport}", hport))
        print(f"engine={args.engine} mode={args.mode} rooms={args.rooms} "
              f"messages={args.messages}: {rate:,.0f} messages/s")
    finally:
        for proc in reversed(procs):
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
