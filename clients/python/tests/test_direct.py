"""Direct messages (``send_to_user``, ``send_to_connection``) against a real node."""

from __future__ import annotations

import asyncio
import json
import uuid
from contextlib import contextmanager
from typing import Any, Dict, Iterator

import httpx
import pytest

from conftest import ADMIN_KEY, AUDIENCE, ISSUER, PUBLISH_KEY, SECRET, Node
from herald_sdk import AsyncHerald, Herald, NotFoundError, mint_token


@contextmanager
def stream(node: Node, user: str) -> Iterator[Iterator[Dict[str, Any]]]:
    """An open SSE stream of ``user``, read up to its ``authenticated``;
    yields the JSON of the frames that follow."""
    token = mint_token(SECRET, user, issuer=ISSUER, audience=AUDIENCE)
    with httpx.stream("GET", f"{node.url}/sse", params={"token": token}, timeout=10.0) as r:
        assert r.status_code == 200, r.read()
        frames = (json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: "))
        for f in frames:
            if f.get("type") == "authenticated":
                break
        yield frames


def next_event(frames: Iterator[Dict[str, Any]]) -> Dict[str, Any]:
    """The next ``event`` frame (the stream's read timeout bounds the wait)."""
    for f in frames:
        if f.get("type") == "event":
            return f
    raise AssertionError("the stream ended before an event")


def test_send_to_user_and_connection_reach_the_stream(node: Node) -> None:
    user = f"d{uuid.uuid4().hex[:8]}"
    with Herald(node.url, PUBLISH_KEY) as h, stream(node, user) as frames:
        assert h.send_to_user(user, "invoice.ready", {"invoice": 91}) == 1
        got = next_event(frames)
        assert got["room"] is None and got["event"] == "invoice.ready" and got["data"] == {"invoice": 91}
        assert "epoch" not in got and "offset" not in got
        with Herald(node.url, ADMIN_KEY) as admin:
            (conn,) = admin.connections(user)
        assert h.send_to_connection(conn.connection_id, "only.you", [1, 2]) == 1
        got = next_event(frames)
        assert (got["room"], got["event"], got["data"]) == (None, "only.you", [1, 2])


def test_send_to_nobody_and_to_an_unknown_connection(node: Node) -> None:
    with Herald(node.url, PUBLISH_KEY) as h:
        assert h.send_to_user(f"nobody-{uuid.uuid4().hex[:8]}", "e", None) == 0
        assert h.send_to_user("nobody", "e", 1, tenant="acme") == 0
        with pytest.raises(NotFoundError) as nf:
            h.send_to_connection("0" * 32, "e", None)
        assert nf.value.status == 404 and nf.value.code == "not_found"


def test_async_send_and_another_tenants_connection(node: Node) -> None:
    user = f"a{uuid.uuid4().hex[:8]}"

    async def go(conn_id: str) -> None:
        async with AsyncHerald(node.url, PUBLISH_KEY) as h:
            assert await h.send_to_user(user, "hello", "x") == 1
            assert await h.send_to_connection(conn_id, "again", None) == 1
            with pytest.raises(NotFoundError):
                await h.send_to_connection(conn_id, "e", None, tenant="other")

    with stream(node, user) as frames, Herald(node.url, ADMIN_KEY) as admin:
        (conn,) = admin.connections(user)
        asyncio.run(go(conn.connection_id))
        assert next_event(frames)["event"] == "hello"
        assert next_event(frames)["event"] == "again"
