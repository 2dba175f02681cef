"""Retries against real failures: a node whose Redis stops answering (503)
and a node SIGKILLed and restarted mid-publish. Either way every event is
in the room's history exactly once, in order."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from typing import Callable, List

from conftest import ADMIN_KEY, Node, Redis, history_data, wait_until
from herald_sdk import AsyncHerald, Herald, PublishResult, Retry

N = 120
# Generous enough to span a node restart or a paused Redis (~1 s).
PATIENT = Retry(attempts=80, backoff=0.02, max_backoff=0.2)


def publish_all_sync(url: str, room: str, fault: Callable[[], None]) -> List[PublishResult]:
    results: List[PublishResult] = []
    errors: List[BaseException] = []

    def run() -> None:
        try:
            with Herald(url, ADMIN_KEY, timeout=2.0, retry=PATIENT) as h:
                for i in range(N):
                    results.append(h.publish(room, "seq", i))
        except BaseException as exc:  # reported below, not swallowed
            errors.append(exc)

    t = threading.Thread(target=run)
    t.start()
    wait_until(lambda: len(results) >= N // 4 or bool(errors), "a quarter of the events")
    fault()
    t.join(60)
    assert not errors, errors
    return results


def check_exactly_once(url: str, room: str, results: List[PublishResult]) -> None:
    assert [r.offset for r in results] == list(range(1, N + 1))
    assert history_data(url, room) == list(range(N))
    assert any(r.attempts > 1 for r in results), "the fault never hit a publish"


def test_sync_publish_survives_a_node_killed_mid_call(redis_node: Node) -> None:
    room = f"sdk:{uuid.uuid4().hex[:12]}"
    results = publish_all_sync(redis_node.url, room, redis_node.restart)
    check_exactly_once(redis_node.url, room, results)


def test_sync_publish_rides_out_503_while_redis_is_stopped(redis_node: Node, redis_server: Redis) -> None:
    room = f"sdk:{uuid.uuid4().hex[:12]}"

    def outage() -> None:
        redis_server.pause()
        time.sleep(1.0)
        redis_server.resume()

    results = publish_all_sync(redis_node.url, room, outage)
    check_exactly_once(redis_node.url, room, results)


async def publish_all_async(url: str, room: str, fault: Callable[[], None]) -> List[PublishResult]:
    results: List[PublishResult] = []

    async def run() -> None:
        async with AsyncHerald(url, ADMIN_KEY, timeout=2.0, retry=PATIENT) as h:
            for i in range(N):
                results.append(await h.publish(room, "seq", i))

    task = asyncio.ensure_future(run())
    deadline = time.monotonic() + 15
    while len(results) < N // 4 and not task.done():
        assert time.monotonic() < deadline, "timed out waiting for a quarter of the events"
        await asyncio.sleep(0.01)
    # The fault blocks (kill, wait, restart): run it off the event loop.
    await asyncio.get_running_loop().run_in_executor(None, fault)
    await asyncio.wait_for(task, 60)
    return results


async def test_async_publish_survives_a_node_killed_mid_call(redis_node: Node) -> None:
    room = f"sdk:{uuid.uuid4().hex[:12]}"
    results = await publish_all_async(redis_node.url, room, redis_node.restart)
    check_exactly_once(redis_node.url, room, results)


async def test_async_publish_rides_out_503_while_redis_is_stopped(redis_node: Node, redis_server: Redis) -> None:
    room = f"sdk:{uuid.uuid4().hex[:12]}"

    def outage() -> None:
        redis_server.pause()
        time.sleep(1.0)
        redis_server.resume()

    results = await publish_all_async(redis_node.url, room, outage)
    check_exactly_once(redis_node.url, room, results)
