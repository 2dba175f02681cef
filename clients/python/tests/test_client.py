"""Every call of ``Herald`` and ``AsyncHerald`` against a real node."""

from __future__ import annotations

import json
import uuid
from contextlib import contextmanager
from typing import Iterator, List

import httpx
import pytest

from conftest import ADMIN_KEY, AUDIENCE, ISSUER, PUBLISH_KEY, SECRET, Node
from herald_sdk import AsyncHerald, Herald, UnauthorizedError, mint_token


def room() -> str:
    return f"sdk:{uuid.uuid4().hex[:12]}"


@contextmanager
def sse(node: Node, token: str, rooms: str) -> Iterator[Iterator[str]]:
    """An open SSE stream, read up to the ``room_joined`` of ``rooms`` (one
    room); yields the rest of its ``event:`` names."""
    with httpx.stream("GET", f"{node.url}/sse", params={"rooms": rooms, "token": token}, timeout=10.0) as r:
        assert r.status_code == 200, r.read()
        lines = r.iter_lines()
        # Auto-joined rooms come first; wait for the requested room's join.
        for line in lines:
            if line.startswith("data: ") and json.loads(line[6:]).get("type") == "room_joined":
                if json.loads(line[6:]).get("room") == rooms:
                    break
        yield (line[len("event: ") :] for line in lines if line.startswith("event: "))


def test_publish_answers_offsets_and_dedupes_by_key(node: Node) -> None:
    r = room()
    with Herald(node.url, PUBLISH_KEY) as h:
        first = h.publish(r, "agent.started", {"n": 1})
        second = h.publish(r, "agent.started", {"n": 2}, idempotency_key="fixed-key-" + r)
        again = h.publish(r, "agent.started", {"n": 3}, idempotency_key="fixed-key-" + r)
    assert (first.offset, second.offset, again.offset) == (1, 2, 2)
    assert first.room == r and first.epoch == second.epoch and len(first.epoch) == 16
    assert first.idempotency_key and len(first.idempotency_key) == 32
    assert not first.duplicate and not second.duplicate and again.duplicate
    with Herald(node.url, ADMIN_KEY) as h:
        assert [e.data for e in h.history(r).events] == [{"n": 1}, {"n": 2}]


def test_publish_tenant_and_broadcast(node: Node) -> None:
    a, b = room(), room()
    with Herald(node.url, ADMIN_KEY) as h:
        h.publish(a, "e", "acme only", tenant="acme")
        # The node takes exclude_connection (an unknown field would be a 400).
        assert h.publish(b, "e", 0, exclude_connection="0" * 32).offset == 1
        h.broadcast([a, b], "all", [1, 2])
        results = h.broadcast([a, b], "all", [3])
        assert [(x.room, x.offset) for x in results] == [(a, 2), (b, 3)]
        assert [e.data for e in h.history(a, tenant="acme").events] == ["acme only"]
        assert [e.data for e in h.history(a).events] == [[1, 2], [3]]
        with pytest.raises(TypeError):
            h.broadcast(a, "e", 1)


def test_history_pages_and_epochs(node: Node) -> None:
    r = room()
    with Herald(node.url, ADMIN_KEY) as h:
        for i in range(5):
            h.publish(r, "tick", i)
        page = h.history(r, since=2, limit=2)
        assert [e.offset for e in page.events] == [3, 4] and not page.complete
        assert page.offset == 5 and page.events[0].data == 2 and page.events[0].type == "event"
        rest = h.history(r, since=4, epoch=page.epoch)
        assert [e.data for e in rest.events] == [4] and rest.complete
        assert h.history(r, since=0, epoch="0" * 16).events == []


def test_presence_connections_disconnect_against_a_live_stream(node: Node) -> None:
    r, user = room(), f"u{uuid.uuid4().hex[:8]}"
    token = mint_token(SECRET, user, issuer=ISSUER, audience=AUDIENCE)
    with Herald(node.url, ADMIN_KEY) as h, sse(node, token, r) as events:
        assert [m.user_id for m in h.presence(r).members] == [user]
        conns = h.connections(user)
        assert len(conns) == 1 and conns[0].transport == "sse" and r in conns[0].rooms
        assert conns[0].node_id == f"sdk-py-{node.port}" and conns[0].connected_at > 0
        assert h.disconnect(user) == 1
        assert "disconnect" in list(events)
        assert h.connections(user) == []


def test_stats_and_ready(node: Node) -> None:
    with Herald(node.url, ADMIN_KEY) as h:
        h.publish(room(), "e", None)
        stats = h.stats()
        assert stats.nodes[0].node_id == f"sdk-py-{node.port}"
        assert stats.broker is not None and stats.broker.kind == "memory" and stats.broker.streams >= 1
        assert h.ready()
    with Herald("http://127.0.0.1:9", ADMIN_KEY) as down:
        assert not down.ready()


def test_tokens_minted_locally_and_by_the_node_open_a_stream(node: Node) -> None:
    r = room()
    local = mint_token(SECRET, "7", issuer=ISSUER, audience=[AUDIENCE], roles=["x"], claims={"plan": "pro"})
    with sse(node, local, r):
        pass
    with Herald(node.url, ADMIN_KEY) as h:
        # The node sets iss and aud from its own auth.issuer and auth.audience.
        minted = h.create_token("8", ttl="5m", roles=["y"])
    assert minted.token.count(".") == 2 and minted.expires_at > 0
    with sse(node, minted.token, r):
        pass
    # The node checks what mint_token signs: wrong secret, missing issuer.
    for bad in (
        mint_token(SECRET + "x", "7", issuer=ISSUER, audience=AUDIENCE),
        mint_token(SECRET, "7", audience=AUDIENCE),
        mint_token(SECRET, "7", issuer=ISSUER, audience=AUDIENCE, ttl=1, now=1_000_000),
    ):
        status = httpx.get(f"{node.url}/sse", params={"rooms": r, "token": bad}, timeout=5.0).status_code
        assert status == 401
    with pytest.raises(ValueError):
        mint_token(SECRET, "7", claims={"sub": "8"})
    with pytest.raises(UnauthorizedError):
        with Herald(node.url, "not-a-key-0123456789") as h:
            h.stats()


def test_mint_token_is_standard_hs256() -> None:
    import base64
    import hashlib
    import hmac

    token = mint_token("k", "42", ttl=60, tenant="acme", roles=["a"], claims={"projects": [7]}, now=100)
    header, payload, sig = token.split(".")
    pad = lambda s: s + "=" * (-len(s) % 4)  # noqa: E731
    assert json.loads(base64.urlsafe_b64decode(pad(header))) == {"alg": "HS256", "typ": "JWT"}
    claims = json.loads(base64.urlsafe_b64decode(pad(payload)))
    assert claims == {"sub": "42", "iat": 100, "exp": 160, "tenant": "acme", "roles": ["a"], "projects": [7]}
    expect = hmac.new(b"k", f"{header}.{payload}".encode(), hashlib.sha256).digest()
    assert base64.urlsafe_b64decode(pad(sig)) == expect


async def test_async_client_every_call(node: Node) -> None:
    r, user = room(), f"u{uuid.uuid4().hex[:8]}"
    async with AsyncHerald(node.url, ADMIN_KEY) as h:
        first = await h.publish(r, "e", {"i": 0})
        dup = await h.publish(r, "e", {"i": 0}, idempotency_key=first.idempotency_key)
        assert dup.duplicate and dup.offset == first.offset == 1
        results = await h.broadcast([r], "b", 1)
        assert results[0].offset == 2
        hist = await h.history(r, since=0)
        assert [e.event for e in hist.events] == ["e", "b"] and hist.complete
        token = mint_token(SECRET, user, issuer=ISSUER, audience=AUDIENCE)
        with sse(node, token, r) as events:
            assert [m.user_id for m in (await h.presence(r)).members] == [user]
            assert [c.transport for c in await h.connections(user)] == ["sse"]
            assert await h.disconnect(user) == 1
            names: List[str] = list(events)
            assert "disconnect" in names
        stats = await h.stats()
        assert stats.broker is not None and stats.broker.kind == "memory"
        tok = await h.create_token("9", tenant="acme")
        assert tok.expires_at > 0
        assert await h.ready()
