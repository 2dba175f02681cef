"""Every error class: the ones a real node gives for the SDK's own calls,
transport failures, and (through httpx.MockTransport) the codes no SDK call
can provoke and the retry rules per call."""

from __future__ import annotations

import json
import socket
import threading
import uuid
from typing import Iterator, List

import httpx
import pytest

from conftest import ADMIN_KEY, PUBLISH_KEY, Node, Redis
from herald_sdk import (
    BadRequestError,
    ForbiddenError,
    Herald,
    HeraldConnectionError,
    HeraldError,
    HeraldTimeoutError,
    IdempotencyConflictError,
    InternalError,
    LimitExceededError,
    NotFoundError,
    Retry,
    TooLargeError,
    UnauthorizedError,
    UnavailableError,
)

FAST = Retry(attempts=3, backoff=0.01, max_backoff=0.02)


def test_node_errors_map_to_their_classes(node: Node) -> None:
    with Herald(node.url, PUBLISH_KEY, retry=FAST) as h:
        with pytest.raises(BadRequestError) as bad:
            h.publish("bad room", "e", 1)
        assert bad.value.status == 400 and bad.value.code == "bad_request" and "bad room" in bad.value.message
        key = uuid.uuid4().hex
        h.publish("sdk:one", "e", 1, idempotency_key=key)
        with pytest.raises(IdempotencyConflictError) as conflict:
            h.publish("sdk:two", "e", 1, idempotency_key=key)
        assert conflict.value.status == 409 and "sdk:one" in conflict.value.message
        with pytest.raises(ForbiddenError) as forbidden:
            h.stats()
        assert forbidden.value.status == 403
        with pytest.raises(TooLargeError) as large:
            h.publish("sdk:big", "e", "x" * (3 << 20))
        assert large.value.status == 413
    with Herald(node.url, "unknown-key-0123456789") as h, pytest.raises(UnauthorizedError) as unauth:
        h.publish("sdk:x", "e", 1)
    assert unauth.value.status == 401
    with Herald(node.url + "/wrong-prefix", ADMIN_KEY) as h, pytest.raises(NotFoundError) as nf:
        h.stats()
    assert nf.value.status == 404 and nf.value.code == "not_found"
    with pytest.raises(ValueError):
        Herald(node.url, "")


def test_unavailable_when_the_broker_is_down(redis_node: Node, redis_server: Redis) -> None:
    with Herald(redis_node.url, ADMIN_KEY, retry=Retry(attempts=1)) as h:
        redis_server.pause()
        try:
            with pytest.raises(UnavailableError) as err:
                h.publish("sdk:down", "e", 1)
        finally:
            redis_server.resume()
    assert err.value.status == 503 and err.value.code == "unavailable"


def test_connection_refused_is_retried_then_raised() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, never listening: refused
        with Herald(f"http://127.0.0.1:{port}", ADMIN_KEY, retry=FAST) as h:
            with pytest.raises(HeraldConnectionError) as err:
                h.publish("sdk:x", "e", 1)
            with pytest.raises(HeraldConnectionError):
                h.broadcast(["sdk:x"], "e", 1)
    assert err.value.status is None and err.value.code == "connection"


@pytest.fixture()
def silent_server() -> Iterator[str]:
    """A TCP server that accepts and reads but never answers."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    conns: List[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        srv.settimeout(0.1)
        while not stop.is_set():
            try:
                conns.append(srv.accept()[0])
            except OSError:
                continue

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.getsockname()[1]}"
    stop.set()
    t.join()
    for c in conns:
        c.close()
    srv.close()


def test_timeout_is_retried_for_publish_not_for_broadcast(silent_server: str) -> None:
    with Herald(silent_server, ADMIN_KEY, timeout=0.2, retry=FAST) as h:
        with pytest.raises(HeraldTimeoutError) as err:
            h.publish("sdk:x", "e", 1)
        assert err.value.code == "timeout"
        with pytest.raises(HeraldTimeoutError):
            h.broadcast(["sdk:x"], "e", 1)


def mock(responses: List[httpx.Response], seen: List[httpx.Request]) -> httpx.Client:
    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return responses[min(len(seen) - 1, len(responses) - 1)]

    return httpx.Client(transport=httpx.MockTransport(handler))


def err(status: int, code: str) -> httpx.Response:
    return httpx.Response(status, json={"error": {"code": code, "message": f"{code} happened"}})


@pytest.mark.parametrize(
    "status,code,cls",
    [(429, "limit_exceeded", LimitExceededError), (500, "internal", InternalError), (418, "teapot", HeraldError)],
)
def test_codes_no_call_provokes_still_get_their_class(status: int, code: str, cls: type) -> None:
    seen: List[httpx.Request] = []
    with Herald("http://herald.test", ADMIN_KEY, http_client=mock([err(status, code)], seen), retry=FAST) as h:
        with pytest.raises(cls) as e:
            h.stats()
    assert type(e.value) is cls and e.value.code == code and e.value.message == f"{code} happened"
    assert len(seen) == 1


def test_publish_retries_503_with_one_key_and_broadcast_does_not() -> None:
    ok = httpx.Response(200, json={"room": "r", "epoch": "e" * 16, "offset": 4, "duplicate": True})
    seen: List[httpx.Request] = []
    with Herald("http://herald.test", ADMIN_KEY, http_client=mock([err(503, "unavailable")] * 2 + [ok], seen), retry=FAST) as h:
        result = h.publish("r", "e", 1)
    assert result.offset == 4 and result.attempts == 3
    keys = {json.loads(r.content)["idempotency_key"] for r in seen}
    assert keys == {result.idempotency_key}
    seen2: List[httpx.Request] = []
    with Herald("http://herald.test", ADMIN_KEY, http_client=mock([err(503, "unavailable"), ok], seen2), retry=FAST) as h:
        with pytest.raises(UnavailableError):
            h.broadcast(["r"], "e", 1)
    assert len(seen2) == 1


def test_a_proxy_error_page_without_json_still_maps() -> None:
    seen: List[httpx.Request] = []
    page = httpx.Response(502, text="<html>Bad Gateway</html>")
    with Herald("http://herald.test", ADMIN_KEY, http_client=mock([page], seen), retry=FAST) as h:
        with pytest.raises(UnavailableError) as e:
            h.history("r")
    assert e.value.status == 502 and "Bad Gateway" in e.value.message and len(seen) == 3
