"""The Redis ingest transport against real Redis and a Redis-broker node."""

from __future__ import annotations

import asyncio
import uuid

import redis

from conftest import Node, Redis, history_data, wait_until
from herald_sdk import AsyncRedisIngest, RedisIngest


def test_ingest_publishes_once_per_key(redis_node: Node, redis_server: Redis) -> None:
    room = f"sdk:{uuid.uuid4().hex[:12]}"
    prefix = redis_node.prefix
    with RedisIngest(redis_server.url, prefix=prefix) as ingest:
        first = ingest.publish(room, "agent.started", {"run": 1}, idempotency_key="run-1-started")
        ingest.publish(room, "agent.started", {"run": 1}, idempotency_key="run-1-started")
        ingest.publish(room, "agent.completed", {"run": 1})
        ingest.publish("bad room", "e", 1)
    assert "-" in first  # a stream entry id, <ms>-<seq>
    wait_until(lambda: len(history_data(redis_node.url, room)) >= 2, "the ingested events")
    r = redis.Redis.from_url(redis_server.url)
    wait_until(lambda: r.xlen(f"{prefix}:ingest:dead") >= 1, "the bad entry in the dead-letter stream")
    # The repeated key was consumed too (it came before the dead one) and
    # published nothing.
    assert sorted(e["run"] for e in history_data(redis_node.url, room)) == [1, 1]
    dead = r.xrange(f"{prefix}:ingest:dead")
    assert b"bad room" in dead[0][1][b"payload"]
    r.close()


async def test_async_ingest(redis_node: Node, redis_server: Redis) -> None:
    room = f"sdk:{uuid.uuid4().hex[:12]}"
    async with AsyncRedisIngest(redis_server.url, prefix=redis_node.prefix) as ingest:
        for i in range(3):
            await ingest.publish(room, "tick", i, tenant="acme")
    deadline = asyncio.get_running_loop().time() + 15
    while len(history_data(redis_node.url, room, tenant="acme")) < 3:
        assert asyncio.get_running_loop().time() < deadline, "ingested events never arrived"
        await asyncio.sleep(0.05)
    assert sorted(history_data(redis_node.url, room, tenant="acme")) == [0, 1, 2]
