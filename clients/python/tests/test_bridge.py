"""The ingest bridges as a Python service meets them: it publishes with
nats-py and redis-py exactly as it does today (``json.dumps`` on a subject
or channel), and a node with a ``[bridge]`` section puts the messages into
rooms. The node runs the memory broker: bridges do not need a cluster."""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path
from typing import Iterator

import httpx
import nats
import pytest
import redis

from conftest import Node, Redis, free_port, history_data, wait_until


class NatsServer:
    """One nats-server with JetStream on a free loopback port."""

    def __init__(self) -> None:
        exe = shutil.which("nats-server")
        if exe is None:
            pytest.fail("nats-server not found: apt-get install -y nats-server")
        self.dir = Path(tempfile.mkdtemp(prefix="herald-sdk-nats-"))
        self.port = free_port()
        self.monitor = free_port()
        self.url = f"nats://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [exe, "-a", "127.0.0.1", "-p", str(self.port), "-m", str(self.monitor),
             "-js", "-sd", str(self.dir)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_until(self._up, f"nats-server on port {self.port}")

    def _up(self) -> bool:
        try:
            return httpx.get(f"http://127.0.0.1:{self.monitor}/jsz", timeout=0.5).status_code == 200
        except httpx.TransportError:
            return False

    def subscriptions(self, subject: str) -> int:
        """Subscriptions the server holds on ``subject``."""
        body = httpx.get(f"http://127.0.0.1:{self.monitor}/subsz?subs=1&limit=1000", timeout=2.0).json()
        return sum(1 for s in body.get("subscriptions_list") or [] if s.get("subject") == subject)

    def close(self) -> None:
        """Stops the server and removes its store."""
        self.proc.kill()
        self.proc.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture()
def nats_server() -> Iterator[NatsServer]:
    server = NatsServer()
    yield server
    server.close()


@pytest.fixture()
def bridge_node(nats_server: NatsServer, redis_server: Redis) -> Iterator[Node]:
    prefix = f"sdk{free_port()}"
    n = Node(
        f"""
[broker]
prefix = "{prefix}"

[bridge]
nats_url = "{nats_server.url}"
redis_url = "{redis_server.url}"
redis_leader_ttl = "1s"

[bridge.nats_publish]
enabled = true

[[bridge.mappings]]
name = "agents"
nats_subject = "agents.*.events"
room = "sdk:agent-{{1}}"
event = "{{body.type}}"

[[bridge.mappings]]
name = "projects"
redis_channel = "{prefix}:events:project:*"
room = "sdk:project-{{1}}"
event = "{{body.type}}"
""",
        prefix,
    )
    yield n
    n.close()


async def test_a_python_service_publishing_to_nats_and_redis_reaches_the_rooms(
    bridge_node: Node, nats_server: NatsServer, redis_server: Redis
) -> None:
    agent = uuid.uuid4().hex[:8]
    project = uuid.uuid4().hex[:8]
    channel = f"{bridge_node.prefix}:events:project:{project}"
    r = redis.Redis.from_url(redis_server.url)
    wait_until(lambda: nats_server.subscriptions("agents.*.events") == 1, "the NATS bridge subscribed")
    wait_until(lambda: nats_server.subscriptions(f"{bridge_node.prefix}.publish") == 1, "nats_publish subscribed")
    wait_until(lambda: int(r.execute_command("PUBSUB", "NUMPAT")) >= 1, "the Redis bridge subscribed")

    nc = await nats.connect(nats_server.url)
    try:
        for n in range(3):
            await nc.publish(f"agents.{agent}.events", json.dumps({"type": "agent.step", "n": n}).encode())
            r.publish(channel, json.dumps({"type": "build", "n": n}))
        # A bad message is skipped; the next good one still arrives.
        await nc.publish(f"agents.{agent}.events", b"not json")
        await nc.publish(f"agents.{agent}.events", json.dumps({"type": "agent.done", "n": 3}).encode())
        body = {"room": f"sdk:agent-{agent}", "event": "direct", "data": {"n": 4}, "idempotency_key": "py-1"}
        await nc.publish(f"{bridge_node.prefix}.publish", json.dumps(body).encode())
        await nc.publish(f"{bridge_node.prefix}.publish", json.dumps(body).encode())
        await nc.flush()
    finally:
        await nc.close()
    r.close()

    agent_room = f"sdk:agent-{agent}"
    wait_until(lambda: len(history_data(bridge_node.url, agent_room)) >= 5, "the agent's events")
    wait_until(
        lambda: len(history_data(bridge_node.url, f"sdk:project-{project}")) >= 3, "the project's events"
    )
    # Each once (the repeated idempotency key published once); one node
    # and one subscription keep the mapping's order (the publish subject is
    # another subscription, so n=4 may come anywhere).
    ns = [e["n"] for e in history_data(bridge_node.url, agent_room)]
    assert sorted(ns) == [0, 1, 2, 3, 4], ns
    assert [n for n in ns if n != 4] == [0, 1, 2, 3], ns
    assert [e["n"] for e in history_data(bridge_node.url, f"sdk:project-{project}")] == [0, 1, 2]
    metrics = httpx.get(f"{bridge_node.url}/metrics", timeout=5.0).text
    assert 'herald_bridge_invalid_total{bridge="agents",reason="not_json"} 1' in metrics, metrics
