"""``verify_webhook``: known vectors (computed with openssl), and a batch
signed by a real node."""

from __future__ import annotations

import json
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Iterator, List, Tuple

import httpx
import pytest

from conftest import AUDIENCE, ISSUER, SECRET, Node, free_port, wait_until
from herald_sdk import WebhookEvent, WebhookVerificationError, mint_token, sign_webhook, verify_webhook

# docs/protocol.md section 10: secret `hook-secret`, t = 1700000000, body {"events":[]}.
EMPTY = b'{"events":[]}'
EMPTY_SIG = "27280736c7cafb7aec9359086c53e14f0ffc89a52d00d864281f063dc146a2de"
# printf '%s' "1765060000.$BODY" | openssl dgst -sha256 -hmac hook-secret
OPENED = (
    b'{"events":[{"id":"0c40ba3b7d711e2c73379e1672ff1a87.opened","type":"connection.opened",'
    b'"time_ms":1765060000123,"tenant":null,"user_id":"alice",'
    b'"connection_id":"0c40ba3b7d711e2c73379e1672ff1a87","node_id":"web-1-4f2a","transport":"websocket"}]}'
)
OPENED_SIG = "074d8c27a3a04d4b1505008761f44a74ddf266af6138e7d288a28ead8d5c1dc4"


def test_known_vectors() -> None:
    assert verify_webhook("hook-secret", f"t=1700000000,v1={EMPTY_SIG}", EMPTY, now=1700000000) == []
    assert sign_webhook("hook-secret", 1700000000, EMPTY) == f"t=1700000000,v1={EMPTY_SIG}"
    (ev,) = verify_webhook(b"hook-secret", f"t=1765060000,v1={OPENED_SIG}", OPENED, now=1765060100)
    assert (ev.id, ev.type, ev.time_ms) == ("0c40ba3b7d711e2c73379e1672ff1a87.opened", "connection.opened", 1765060000123)
    assert ev.get("user_id") == "alice" and ev.get("tenant") is None and ev.fields["transport"] == "websocket"


def test_rotation_accepts_any_v1() -> None:
    header = f"t=1700000000,v1={'0' * 64},v1={EMPTY_SIG}"
    assert verify_webhook("hook-secret", header, EMPTY, now=1700000000) == []


@pytest.mark.parametrize(
    "header,body,now,reason",
    [
        (f"t=1700000000,v1={EMPTY_SIG}", b'{"events": []}', 1700000000, "signature_mismatch"),
        (f"t=1700000001,v1={EMPTY_SIG}", EMPTY, 1700000001, "signature_mismatch"),
        (f"t=1700000000,v1={EMPTY_SIG[:-1]}", EMPTY, 1700000000, "signature_mismatch"),
        (f"t=1700000000,v1={EMPTY_SIG}", EMPTY, 1700000301, "timestamp_out_of_tolerance"),
        (f"t=1700000000,v1={EMPTY_SIG}", EMPTY, 1699999699, "timestamp_out_of_tolerance"),
        (f"v1={EMPTY_SIG}", EMPTY, 1700000000, "malformed_header"),
        ("t=1700000000", EMPTY, 1700000000, "malformed_header"),
        (f"t=abc,v1={EMPTY_SIG}", EMPTY, 1700000000, "malformed_header"),
        (f"t=\u00b2,v1={EMPTY_SIG}", EMPTY, 1700000000, "malformed_header"),
        ("", EMPTY, 1700000000, "malformed_header"),
    ],
)
def test_refusals(header: str, body: bytes, now: int, reason: str) -> None:
    with pytest.raises(WebhookVerificationError) as err:
        verify_webhook("hook-secret", header, body, now=now)
    assert err.value.reason == reason


def test_wrong_secret_and_bad_bodies() -> None:
    with pytest.raises(WebhookVerificationError) as err:
        verify_webhook("other-secret", f"t=1700000000,v1={EMPTY_SIG}", EMPTY, now=1700000000)
    assert err.value.reason == "signature_mismatch"
    for body in (b"not json", b"[]", b'{"events":[1]}', b'{"events":[{"id":"x","type":"t"}]}'):
        with pytest.raises(WebhookVerificationError) as err:
            verify_webhook("k", sign_webhook("k", 1700000000, body), body, now=1700000000)
        assert err.value.reason == "bad_body"
    # Inside the tolerance either way, and a custom tolerance.
    assert verify_webhook("hook-secret", f"t=1700000000,v1={EMPTY_SIG}", EMPTY, now=1700000300) == []
    with pytest.raises(WebhookVerificationError):
        verify_webhook("hook-secret", f"t=1700000000,v1={EMPTY_SIG}", EMPTY, tolerance=10, now=1700000011)


class Receiver:
    """A webhook receiver on loopback that records (signature, body) pairs."""

    def __init__(self) -> None:
        self.got: List[Tuple[str, bytes]] = []
        received = self.got

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                received.append((self.headers.get("Herald-Signature", ""), body))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture()
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def test_a_real_nodes_batch_verifies(receiver: Receiver) -> None:
    secret = "py-hook-secret-" + uuid.uuid4().hex
    node = Node(f'\n[webhooks]\nurl = "{receiver.url}"\nsecret = "{secret}"\nevents = ["connection.opened", "user.online"]\n')
    try:
        user = f"w{uuid.uuid4().hex[:8]}"
        token = mint_token(SECRET, user, issuer=ISSUER, audience=AUDIENCE)
        with httpx.stream("GET", f"{node.url}/sse", params={"token": token}, timeout=10.0) as r:
            assert r.status_code == 200

            def mine() -> List[WebhookEvent]:
                events: List[WebhookEvent] = []
                for header, body in list(receiver.got):
                    events += verify_webhook(secret, header, body)
                return [e for e in events if e.get("user_id") == user]

            wait_until(lambda: len(mine()) >= 2, "the webhook batches")
        for header, body in receiver.got:
            with pytest.raises(WebhookVerificationError):
                verify_webhook("wrong", header, body)
        mine_ = mine()
        assert sorted(e.type for e in mine_) == ["connection.opened", "user.online"]
        opened = next(e for e in mine_ if e.type == "connection.opened")
        assert opened.id == f"{opened.get('connection_id')}.opened" and opened.get("transport") == "sse"
        assert json.loads(receiver.got[0][1])["events"]
    finally:
        node.close()
