"""permessage-deflate on /ws with the real `websockets` library.

A client with compression on (websockets' default) negotiates it and reads
room events the node sent compressed; a client with ``compression=None`` in
the same fan-out gets the same events plain.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import asyncio
import json
import time
import uuid
from typing import Any, Dict, Iterator

import httpx
import pytest
import websockets
from websockets.extensions.permessage_deflate import PerMessageDeflate

from conftest import ADMIN_KEY, AUDIENCE, ISSUER, SECRET, Node


@pytest.fixture
def deflate_node() -> Iterator[Node]:
    node = Node(extra_toml="\n[compression]\nenabled = true\nmin_bytes = 256\n")
    yield node
    node.close()


def token(sub: str) -> str:
    """An HS256 JWT for ``sub`` signed with the test secret."""

    def b64(raw: bytes) -> str:
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    now = int(time.time())
    claims = {"sub": sub, "iat": now, "exp": now + 600, "iss": ISSUER, "aud": AUDIENCE}
    head = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = b64(json.dumps(claims).encode())
    sig = hmac.new(SECRET.encode(), f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64(sig)}"


async def recv_type(ws: Any, kind: str) -> Dict[str, Any]:
    """The next frame of type ``kind`` (others skipped)."""
    while True:
        frame = json.loads(await asyncio.wait_for(ws.recv(), 10))
        if frame["type"] == kind:
            return frame


async def test_compressed_and_plain_clients_get_the_same_events(deflate_node: Node) -> None:
    room = f"sdk:z{uuid.uuid4().hex[:8]}"
    ws_url = deflate_node.url.replace("http", "ws") + "/ws?token="
    async with websockets.connect(ws_url + token("zip")) as zipped, websockets.connect(
        ws_url + token("plain"), compression=None
    ) as plain:
        assert any(isinstance(e, PerMessageDeflate) for e in zipped.protocol.extensions)
        assert plain.protocol.extensions == []
        answer = zipped.response.headers["Sec-WebSocket-Extensions"]
        assert "server_no_context_takeover" in answer
        for i, ws in enumerate([zipped, plain]):
            await recv_type(ws, "authenticated")
            # The join request goes compressed from the compressing client.
            await ws.send(json.dumps({"type": "join_room", "id": i + 1, "room": room, "pad": "x" * 600}))
            await recv_type(ws, "room_joined")
        text = "pack my box with five dozen liquor jugs " * 50
        async with httpx.AsyncClient() as http:
            for n in range(3):
                r = await http.post(
                    deflate_node.url + "/api/v1/publish",
                    headers={"Authorization": f"Bearer {ADMIN_KEY}"},
                    json={"room": room, "event": "big", "data": {"n": n, "text": text}},
                )
                assert r.status_code == 200, r.text
        for ws in [zipped, plain]:
            for n in range(3):
                event = await recv_type(ws, "event")
                assert event["event"] == "big"
                assert event["data"] == {"n": n, "text": text}
        metrics = httpx.get(deflate_node.url + "/metrics").text
        sent = [line for line in metrics.splitlines() if line.startswith("herald_ws_compressed_frames_total")]
        assert sent and float(sent[0].split()[-1]) == 3.0, sent
