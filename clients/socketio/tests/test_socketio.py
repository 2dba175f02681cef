"""python-socketio's AsyncClient against one Herald node: connecting over
both transports, refusals, rooms, events with meta, messages, presence, rate
limits and a server-side kick (docs/protocol.md section 8). python-socketio
has no connection state recovery; the JS suite covers that."""

from __future__ import annotations

import asyncio
from typing import Any, Callable, List, Optional

import pytest
import socketio

from conftest import BURST, Client, Node, token, uniq, wait_for

TRANSPORTS: List[Optional[List[str]]] = [None, ["websocket"], ["polling"]]


@pytest.mark.parametrize("transports", TRANSPORTS, ids=["polling-then-upgrade", "websocket", "polling"])
async def test_connect_auto_join_and_ack(
    node: Node, clients: Callable[..., Client], transports: Optional[List[str]]
) -> None:
    user = f"u{uniq()}"
    c = await clients().connect(node.url, auth={"token": token(user)}, transports=transports)
    (auth, *_) = await c.next_event("authenticated")
    assert auth["user_id"] == user
    assert any(r["room"] == f"user:{user}" for r in auth["rooms"]), auth
    if transports is None:
        await wait_for(lambda: c.sio.transport() == "websocket", "the upgrade to websocket")
    # Auto-joined: the user room's event arrives without a join.
    pub = await node.publish(f"user:{user}", "note.created", {"n": 1})
    data, meta, *_ = await c.next_event("note.created")
    assert data == {"n": 1}
    assert meta["room"] == f"user:{user}"
    assert meta["offset"] == pub["offset"]
    room = f"sio:t{uniq()}"
    joined = await c.request("join_room", {"room": room})
    assert joined["room"] == room
    assert c.sio.transport() == (transports or ["websocket"])[0]


async def test_token_in_header_or_query(node: Node, clients: Callable[..., Client]) -> None:
    a = f"u{uniq()}"
    by_header = await clients().connect(node.url, headers={"Authorization": f"Bearer {token(a)}"})
    assert (await by_header.next_event("authenticated"))[0]["user_id"] == a
    b = f"u{uniq()}"
    by_query = await clients().connect(f"{node.url}?token={token(b)}", transports=["websocket"])
    assert (await by_query.next_event("authenticated"))[0]["user_id"] == b


@pytest.mark.parametrize(
    "auth",
    [{"token": token("x")[:-4] + "AAAA"}, {}],
    ids=["bad-signature", "no-token"],
)
async def test_refused_with_herald_code(
    node: Node, clients: Callable[..., Client], auth: Any
) -> None:
    c = clients()
    with pytest.raises(socketio.exceptions.ConnectionError):
        await c.connect(node.url, auth=auth, transports=["websocket"])
    assert c.connect_errors, "no connect_error"
    err = c.connect_errors[0]
    assert err["message"] == "unauthorized", err
    assert err["data"]["code"] == "unauthorized", err
    assert isinstance(err["data"]["message"], str)
    assert not c.sio.connected


async def test_other_namespace_is_invalid(node: Node, clients: Callable[..., Client]) -> None:
    c = clients("/admin")
    with pytest.raises(socketio.exceptions.ConnectionError):
        await c.connect(node.url, auth={"token": token(f"u{uniq()}")}, namespaces=["/admin"])
    assert c.connect_errors, "no connect_error"
    err = c.connect_errors[0]
    assert err["message"] == "invalid namespace", err


async def test_join_ack_and_forbidden(node: Node, clients: Callable[..., Client]) -> None:
    c = await clients().connect(node.url, auth={"token": token(f"u{uniq()}")})
    room = f"sio:j{uniq()}"
    await node.publish(room, "before", {"n": 0})
    ack = await c.request("join_room", {"room": room})
    assert ack["room"] == room
    assert isinstance(ack["epoch"], str)
    assert ack["offset"] == 1
    assert "type" not in ack
    await c.next_event("room_joined", lambda d, *_: d["room"] == room)
    denied = await c.request("join_room", {"room": "project:424242"})
    assert denied["code"] == "forbidden", denied
    left = await c.request("leave_room", {"room": room})
    assert left["room"] == room
    assert (await c.request("leave_room", {"room": room}))["code"] == "not_joined"
    # subscribe {room} is join_room's alias.
    alias = await c.request("subscribe", {"room": room})
    assert alias["room"] == room


async def test_events_by_name_with_meta(node: Node, clients: Callable[..., Client]) -> None:
    c = await clients().connect(node.url, auth={"token": token(f"u{uniq()}")}, transports=["websocket"])
    room = f"sio:e{uniq()}"
    await c.request("join_room", {"room": room})
    pubs = [await node.publish(room, "task.assigned", {"n": n}) for n in range(1, 6)]
    await wait_for(lambda: len(c.named("task.assigned")) == 5, "five events")
    for i, (data, meta, *_) in enumerate(c.named("task.assigned")):
        assert data == {"n": i + 1}
        assert meta["room"] == room
        assert meta["offset"] == pubs[i]["offset"]
        assert meta["epoch"] == pubs[i]["epoch"]
        assert isinstance(meta["ts"], int)
        assert isinstance(meta["event_id"], str)
        assert "from" not in meta


async def test_send_message_with_from(node: Node, clients: Callable[..., Client]) -> None:
    room = f"sio:m{uniq()}"
    alice, bob = f"u{uniq()}", f"u{uniq()}"
    a = await clients().connect(node.url, auth={"token": token(alice)})
    b = await clients().connect(node.url, auth={"token": token(bob)}, transports=["websocket"])
    await a.request("join_room", {"room": room})
    await b.request("join_room", {"room": room})
    ack = await a.request("send_message", {"room": room, "event": "chat.said", "data": {"text": "hi"}})
    assert isinstance(ack["offset"], int), ack
    data, meta, *_ = await b.next_event("chat.said")
    assert data == {"text": "hi"}
    assert meta["offset"] == ack["offset"]
    assert meta["from"]["user_id"] == alice
    assert meta["from"]["connection_id"] == a.sio.get_sid()


async def test_presence(node: Node, clients: Callable[..., Client]) -> None:
    room = f"sio:p{uniq()}"
    alice, bob = f"u{uniq()}", f"u{uniq()}"
    a = await clients().connect(node.url, auth={"token": token(alice)}, transports=["websocket"])
    await a.request("join_room", {"room": room})
    b = await clients().connect(node.url, auth={"token": token(bob)})
    await b.request("join_room", {"room": room})
    joined, *_ = await a.next_event("member_joined", lambda d, *_: d["user_id"] == bob)
    assert joined["room"] == room
    assert joined["connection_id"] == b.sio.get_sid()
    p = await a.request("presence", {"room": room})
    assert sorted(m["user_id"] for m in p["members"]) == sorted([alice, bob])
    await b.sio.disconnect()
    left, *_ = await a.next_event("member_left", lambda d, *_: d["user_id"] == bob)
    assert left["room"] == room
    p = await a.request("presence", {"room": room})
    assert [m["user_id"] for m in p["members"]] == [alice]


async def test_rate_limited_acks(node: Node, clients: Callable[..., Client]) -> None:
    c = await clients().connect(node.url, auth={"token": token(f"u{uniq()}")}, transports=["websocket"])
    room = f"sio:r{uniq()}"
    await c.request("join_room", {"room": room})
    total = BURST * 2
    acks = await asyncio.gather(
        *(c.request("send_message", {"room": room, "event": "burst", "data": n}) for n in range(total))
    )
    limited = sum(1 for a in acks if a.get("code") == "rate_limited")
    ok = sum(1 for a in acks if isinstance(a.get("offset"), int))
    assert ok + limited == total, acks
    assert limited >= 1
    assert 1 <= ok < total


@pytest.mark.parametrize("transports", TRANSPORTS, ids=["polling-then-upgrade", "websocket", "polling"])
async def test_kick_through_the_api(
    node: Node, clients: Callable[..., Client], transports: Optional[List[str]]
) -> None:
    user = f"u{uniq()}"
    c = await clients().connect(node.url, auth={"token": token(user)}, transports=transports)
    await c.next_event("authenticated")
    res = await node.api("POST", f"/api/v1/users/{user}/disconnect")
    assert res["disconnected"] == 1
    info, *_ = await c.next_event("herald:disconnect")
    assert info["code"] == 4013
    assert info["reason"] == "disconnected"
    assert info["reconnect"] is False
    await wait_for(lambda: not c.sio.connected, "the client to be disconnected")
    # The server's DISCONNECT, not a lost transport: python-socketio reports
    # it as SERVER_DISCONNECT and does not reconnect.
    await c.next_event("disconnect", lambda *a: a == (c.sio.reason.SERVER_DISCONNECT,))
    await asyncio.sleep(0.6)  # past the 0.1 s reconnection delay
    assert not c.sio.connected
    conns = await node.api("GET", f"/api/v1/users/{user}/connections")
    assert conns["connections"] == []


async def test_reserved_event_name_and_unknown_emit(node: Node, clients: Callable[..., Client]) -> None:
    user = f"u{uniq()}"
    c = await clients().connect(node.url, auth={"token": token(user)}, transports=["websocket"])
    # A room event named `connect` would run python-socketio's own handler.
    await node.publish(f"user:{user}", "connect", {"n": 1})
    data, meta, *_ = await c.next_event("herald:connect")
    assert data == {"n": 1}
    assert meta["room"] == f"user:{user}"
    unknown = await c.request("fly_to_moon", {"room": "sio:x"})
    assert unknown["code"] == "unknown_type", unknown
    assert c.sio.connected


@pytest.mark.parametrize("transports", [["websocket"], ["polling"]], ids=["websocket", "polling"])
async def test_binary_attachments_refused(
    node: Node, clients: Callable[..., Client], transports: List[str]
) -> None:
    c = await clients().connect(node.url, auth={"token": token(f"u{uniq()}")}, transports=transports)
    room = f"sio:b{uniq()}"
    await c.request("join_room", {"room": room})
    refused = await c.request("send_message", {"room": room, "event": "blob", "data": b"\x01\x02\x03"})
    assert refused["code"] == "bad_request", refused
    ack = await c.request("send_message", {"room": room, "event": "text", "data": "still here"})
    assert isinstance(ack["offset"], int), ack
    assert c.sio.connected
