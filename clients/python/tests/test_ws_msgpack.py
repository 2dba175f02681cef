"""`herald.v1.msgpack` from Python: the real `websockets` and `msgpack`
packages against a `herald serve` node, beside a JSON WebSocket client in
the same room, with events published as JSON and as MessagePack."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any, Callable, Dict

import httpx
import msgpack
import websockets
from websockets.asyncio.client import ClientConnection

from conftest import ADMIN_KEY, AUDIENCE, ISSUER, SECRET, Node
from herald_sdk import mint_token

WAIT = 10.0


def ws_url(node: Node) -> str:
    return node.url.replace("http://", "ws://") + "/ws"


def token(user: str) -> str:
    return mint_token(SECRET, user, issuer=ISSUER, audience=AUDIENCE)


async def next_frame(ws: ClientConnection, want: Callable[[Dict[str, Any]], bool]) -> Dict[str, Any]:
    """Reads until a frame matching ``want`` arrives; MessagePack for binary
    messages, JSON for text ones."""

    async def read() -> Dict[str, Any]:
        while True:
            message = await ws.recv()
            if isinstance(message, bytes):
                frame: Dict[str, Any] = msgpack.unpackb(message)
            else:
                frame = json.loads(message)
            if want(frame):
                return frame

    return await asyncio.wait_for(read(), WAIT)


async def request(ws: ClientConnection, frame: Dict[str, Any], rid: int) -> Dict[str, Any]:
    await ws.send(msgpack.packb({**frame, "id": rid}))
    return await next_frame(ws, lambda f: f.get("id") == rid)


def publish_msgpack(node: Node, body: Any) -> httpx.Response:
    return httpx.post(
        f"{node.url}/api/v1/publish",
        content=msgpack.packb(body),
        headers={"Authorization": f"Bearer {ADMIN_KEY}", "Content-Type": "application/msgpack"},
        timeout=WAIT,
    )


def test_msgpack_round_trip_beside_a_json_client(node: Node) -> None:
    room = f"sdk:{uuid.uuid4().hex[:12]}"

    async def run() -> None:
        async with websockets.connect(ws_url(node), subprotocols=["herald.v1.msgpack"]) as m, websockets.connect(
            ws_url(node), additional_headers={"Authorization": f"Bearer {token('py-json')}"}
        ) as j:
            assert m.subprotocol == "herald.v1.msgpack"
            auth = await request(m, {"type": "authenticate", "token": token("py-msgpack")}, 1)
            assert auth["type"] == "authenticated" and auth["user_id"] == "py-msgpack"
            joined = await request(m, {"type": "join_room", "room": room}, 2)
            assert joined["type"] == "room_joined", joined
            await next_frame(j, lambda f: f["type"] == "authenticated")
            await j.send(json.dumps({"type": "join_room", "id": 1, "room": room}))
            await next_frame(j, lambda f: f.get("id") == 1)
            member = await next_frame(m, lambda f: f["type"] == "member_joined")
            assert member["user_id"] == "py-json"
            presence = await request(m, {"type": "presence", "room": room}, 3)
            assert len(presence["members"]) == 2
            assert (await request(m, {"type": "ping"}, 4))["type"] == "pong"

            # Published as JSON: native values in MessagePack.
            data = {"n": 3, "f": 2.5, "s": "é", "list": [1, None, True]}
            r = httpx.post(
                f"{node.url}/api/v1/publish",
                json={"room": room, "event": "tick", "data": data},
                headers={"Authorization": f"Bearer {ADMIN_KEY}"},
                timeout=WAIT,
            )
            assert r.status_code == 200, r.text
            event = await next_frame(m, lambda f: f["type"] == "event")
            assert event["data"] == data and isinstance(event["data"]["n"], int)
            assert (await next_frame(j, lambda f: f["type"] == "event"))["data"] == data

            # Published as MessagePack: the JSON client reads JSON.
            r = publish_msgpack(node, {"room": room, "event": "packed", "data": {"k": [7, -8]}})
            assert r.status_code == 200, r.text
            assert (await next_frame(m, lambda f: f["type"] == "event"))["data"] == {"k": [7, -8]}
            assert (await next_frame(j, lambda f: f["type"] == "event"))["data"] == {"k": [7, -8]}

            ack = await request(m, {"type": "send_message", "room": room, "data": {"hi": 1}}, 5)
            assert ack["type"] == "ack", ack
            message = await next_frame(j, lambda f: f["type"] == "message")
            assert message["data"] == {"hi": 1} and message["from"]["user_id"] == "py-msgpack"

            # Bad input: the same replies as bad JSON, the connection stays.
            await m.send(b"\xc1")
            assert (await next_frame(m, lambda f: f["type"] == "error"))["code"] == "bad_request"
            err = await request(m, {"type": "send_message", "room": room, "data": b"\x00\x01"}, 6)
            assert err["code"] == "bad_request" and "`data`" in err["message"], err
            await m.send('{"type":"ping"}')
            err = await next_frame(m, lambda f: f["type"] == "error")
            assert "text" in err["message"], err

        # Resume from the join's position over MessagePack.
        async with websockets.connect(
            ws_url(node),
            subprotocols=["herald.v1.msgpack"],
            additional_headers={"Authorization": f"Bearer {token('py-late')}"},
        ) as late:
            await next_frame(late, lambda f: f["type"] == "authenticated")
            since = {"epoch": joined["epoch"], "offset": joined["offset"]}
            rejoined = await request(late, {"type": "join_room", "room": room, "since": since}, 1)
            assert rejoined["recovered"] is True and rejoined["replayed"] == 3, rejoined
            names = []
            for _ in range(3):
                replayed = await next_frame(late, lambda f: f["type"] in ("event", "message"))
                names.append(replayed["event"])
            assert names == ["tick", "packed", "message"]

    asyncio.run(run())


def test_msgpack_publish_refuses_binary_data_naming_it(node: Node) -> None:
    r = publish_msgpack(node, {"room": "sdk:bin", "event": "x", "data": {"blob": b"\x00"}})
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["code"] == "bad_request" and "`data.blob`" in error["message"], error
