"""What the sync and async clients share: request shapes, the retry
policy, and turning answers into results or exceptions. Only the sending
and the sleeping differ between the two."""

from __future__ import annotations

import json
import random
import uuid
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union
from urllib.parse import quote

import httpx

from .errors import (
    HeraldConnectionError,
    HeraldError,
    HeraldTimeoutError,
    TooLargeError,
    error_from_response,
)

JSON = Any
"""Any value :func:`json.dumps` accepts."""

DEFAULT_URL = "http://127.0.0.1:8080"
USER_AGENT = "herald-sdk-python/0.1.0"


@dataclass(frozen=True)
class Retry:
    """How calls are retried.

    ``attempts`` is the total number of requests per call (1 disables
    retries). The wait before retry ``n`` (from 0) is
    ``min(max_backoff, backoff * 2**n)``, scaled by a random factor in
    [0.5, 1] so many clients do not retry in step.
    """

    attempts: int = 4
    backoff: float = 0.1
    max_backoff: float = 2.0

    def delay(self, retry: int) -> float:
        """Seconds to wait before retry number ``retry`` (0-based)."""
        base: float = min(self.max_backoff, self.backoff * (2 ** min(retry, 30)))
        return base * random.uniform(0.5, 1.0)


# Statuses a retry may cure: the broker was unreachable or a proxy in front
# of the node could not reach it (a restart, say).
RETRY_STATUSES = frozenset({502, 503, 504})


@dataclass(frozen=True)
class Call:
    """One API call. ``idempotent`` calls may be retried after the request
    could have reached the node (publish carries an idempotency key; reads,
    disconnect and token minting are harmless to repeat); the others only
    when the connection was never made."""

    method: str
    path: str
    idempotent: bool
    body: Optional[Mapping[str, Any]] = None
    params: Optional[Mapping[str, Union[str, int]]] = None


def new_idempotency_key() -> str:
    """A fresh random idempotency key (32 hex characters)."""
    return uuid.uuid4().hex


def seg(value: str) -> str:
    """Percent-encodes one path segment (room names hold ``:`` and ``/``)."""
    return quote(value, safe="")


def tenant_params(tenant: Optional[str], **extra: Union[str, int, None]) -> Dict[str, Union[str, int]]:
    """Query parameters without the ``None`` ones."""
    out: Dict[str, Union[str, int]] = {k: v for k, v in extra.items() if v is not None}
    if tenant is not None:
        out["tenant"] = tenant
    return out


def publish_body(
    room: str,
    event: str,
    data: JSON,
    tenant: Optional[str],
    idempotency_key: str,
    exclude_connection: Optional[str],
) -> Dict[str, Any]:
    """The publish request body (unknown fields are a 400, so only set ones)."""
    body: Dict[str, Any] = {"room": room, "event": event, "data": data, "idempotency_key": idempotency_key}
    if tenant is not None:
        body["tenant"] = tenant
    if exclude_connection is not None:
        body["exclude_connection"] = exclude_connection
    return body


def broadcast_body(rooms: Sequence[str], event: str, data: JSON, tenant: Optional[str]) -> Dict[str, Any]:
    """The broadcast request body."""
    if isinstance(rooms, str):
        raise TypeError("rooms must be a list of room names, not one string")
    body: Dict[str, Any] = {"rooms": list(rooms), "event": event, "data": data}
    if tenant is not None:
        body["tenant"] = tenant
    return body


def direct_body(event: str, data: JSON, tenant: Optional[str]) -> Dict[str, Any]:
    """The body of ``POST /api/v1/users/{id}/send`` and ``/connections/{id}/send``."""
    body: Dict[str, Any] = {"event": event, "data": data}
    if tenant is not None:
        body["tenant"] = tenant
    return body


def delivered(value: Any) -> int:
    """The ``delivered`` count of a direct message's answer."""
    count = as_object(value).get("delivered")
    if not isinstance(count, int) or isinstance(count, bool):
        raise HeraldError(200, "bad_response", "answer has no integer `delivered`")
    return count


def token_body(
    sub: str,
    roles: Optional[Sequence[str]],
    tenant: Optional[str],
    ttl: Optional[str],
    claims: Optional[Mapping[str, Any]],
) -> Dict[str, Any]:
    """The ``POST /api/v1/tokens`` request body."""
    body: Dict[str, Any] = {"sub": sub}
    if roles is not None:
        body["roles"] = list(roles)
    if tenant is not None:
        body["tenant"] = tenant
    if ttl is not None:
        body["ttl"] = ttl
    if claims is not None:
        body["claims"] = dict(claims)
    return body


def headers(api_key: str) -> Dict[str, str]:
    """Headers sent with every call."""
    return {"Authorization": f"Bearer {api_key}", "User-Agent": USER_AGENT, "Accept": "application/json"}


MAX_BODY_BYTES = 2 << 20
"""The node's fixed limit on an API request body (413 ``too_large`` beyond)."""


def encode(call: Call) -> Optional[bytes]:
    """The JSON body, encoded once so retries send the same bytes.

    A body over the node's limit raises :class:`TooLargeError` without being
    sent: the node answers such a request at once and closes the
    connection, which a client still writing the body may see as a reset
    instead of the answer.
    """
    if call.body is None:
        return None
    body = json.dumps(call.body, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    if len(body) > MAX_BODY_BYTES:
        raise TooLargeError(413, "too_large", f"request body is {len(body)} bytes, over the node's limit of {MAX_BODY_BYTES} (not sent)")
    return body


def may_retry(call: Call, exc: Optional[httpx.TransportError], status: Optional[int]) -> bool:
    """Whether a failed attempt may be sent again."""
    if exc is not None:
        # These fail before any byte of the request left: always safe.
        if isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)):
            return True
        return call.idempotent
    return status in RETRY_STATUSES and call.idempotent


def transport_error(exc: httpx.TransportError) -> HeraldError:
    """The SDK exception for an httpx transport failure."""
    if isinstance(exc, httpx.TimeoutException):
        return HeraldTimeoutError(None, "timeout", f"no answer in time: {exc!r}")
    return HeraldConnectionError(None, "connection", f"could not reach the node: {exc!r}")


def decode(response: httpx.Response) -> Any:
    """The JSON of a successful answer, or the exception for an error one."""
    if response.status_code >= 400:
        raise error_from_response(response.status_code, response.content)
    try:
        return response.json()
    except ValueError as exc:
        raise HeraldError(response.status_code, "bad_response", f"answer is not JSON: {exc}") from None


def as_object(value: Any) -> Dict[str, Any]:
    """Checks that an answer is a JSON object."""
    if not isinstance(value, dict):
        raise HeraldError(200, "bad_response", "answer is not a JSON object")
    return value


def as_list_of_str(value: Sequence[str]) -> List[str]:
    """Copies a sequence of strings, refusing a bare string."""
    if isinstance(value, str):
        raise TypeError("expected a list of strings, not one string")
    return list(value)
