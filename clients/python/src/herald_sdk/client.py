"""``Herald``: the blocking client. One ``httpx.Client`` per instance, so
calls reuse keep-alive connections; share one instance per process."""

from __future__ import annotations

import time
from typing import Any, List, Mapping, Optional, Sequence, Tuple

import httpx

from . import _core
from ._core import JSON, Call, Retry
from .types import (
    BroadcastResult,
    Connection,
    History,
    Presence,
    PublishResult,
    Stats,
    Token,
    parse_broadcast,
    parse_connections,
    parse_history,
    parse_presence,
    parse_publish,
    parse_stats,
    parse_token,
)

__all__ = ["Herald"]


class Herald:
    """Blocking client for Herald's HTTP API.

    ``base_url`` is the node (or load balancer) root, ``api_key`` a key with
    the ``publish`` scope (publish, broadcast) or ``admin`` (everything).
    ``timeout`` is seconds per request; ``retry`` says how failed calls are
    retried (see :class:`Retry`). Pass ``http_client`` to bring your own
    ``httpx.Client`` (proxies, TLS settings); it is then yours to close.
    """

    def __init__(
        self,
        base_url: str = _core.DEFAULT_URL,
        api_key: str = "",
        *,
        timeout: float = 10.0,
        retry: Optional[Retry] = None,
        http_client: Optional[httpx.Client] = None,
    ) -> None:
        if not api_key:
            raise ValueError("api_key is required (a Herald API key with the publish or admin scope)")
        self._base = base_url.rstrip("/")
        self._headers = _core.headers(api_key)
        self._retry = retry or Retry()
        self._own_client = http_client is None
        self._http = http_client or httpx.Client(timeout=timeout)
        self._timeout = timeout

    def close(self) -> None:
        """Closes the pooled connections (only of a client this object made)."""
        if self._own_client:
            self._http.close()

    def __enter__(self) -> "Herald":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _send(self, call: Call) -> Tuple[Any, int]:
        body = _core.encode(call)
        hdrs = dict(self._headers)
        if body is not None:
            hdrs["Content-Type"] = "application/json"
        attempt = 0
        while True:
            attempt += 1
            try:
                response = self._http.request(
                    call.method,
                    self._base + call.path,
                    content=body,
                    params=call.params,
                    headers=hdrs,
                    timeout=self._timeout,
                )
            except httpx.TransportError as exc:
                if attempt < self._retry.attempts and _core.may_retry(call, exc, None):
                    time.sleep(self._retry.delay(attempt - 1))
                    continue
                raise _core.transport_error(exc) from exc
            if response.status_code >= 400 and attempt < self._retry.attempts and _core.may_retry(
                call, None, response.status_code
            ):
                time.sleep(self._retry.delay(attempt - 1))
                continue
            return _core.decode(response), attempt

    def publish(
        self,
        room: str,
        event: str,
        data: JSON = None,
        *,
        tenant: Optional[str] = None,
        idempotency_key: Optional[str] = None,
        exclude_connection: Optional[str] = None,
    ) -> PublishResult:
        """Publishes one event to ``room``.

        Without ``idempotency_key`` a random one is made, so retries after a
        timeout, a broken connection or a 503 never deliver twice.
        """
        key = idempotency_key or _core.new_idempotency_key()
        body = _core.publish_body(room, event, data, tenant, key, exclude_connection)
        value, attempts = self._send(Call("POST", "/api/v1/publish", True, body))
        return parse_publish(_core.as_object(value), key, attempts)

    def broadcast(
        self, rooms: Sequence[str], event: str, data: JSON = None, *, tenant: Optional[str] = None
    ) -> List[BroadcastResult]:
        """Publishes one event to each of 1 to 1000 rooms.

        Broadcast takes no idempotency key, so it is retried only when the
        connection could not be made at all.
        """
        body = _core.broadcast_body(rooms, event, data, tenant)
        value, _ = self._send(Call("POST", "/api/v1/broadcast", False, body))
        return parse_broadcast(_core.as_object(value))

    def history(
        self,
        room: str,
        *,
        since: int = 0,
        epoch: Optional[str] = None,
        limit: Optional[int] = None,
        tenant: Optional[str] = None,
    ) -> History:
        """Stored events of ``room`` after offset ``since`` (``limit`` at most 1000)."""
        params = _core.tenant_params(tenant, since=since, epoch=epoch, limit=limit)
        value, _ = self._send(Call("GET", f"/api/v1/rooms/{_core.seg(room)}/history", True, params=params))
        return parse_history(_core.as_object(value))

    def presence(self, room: str, *, tenant: Optional[str] = None) -> Presence:
        """Members of ``room``."""
        params = _core.tenant_params(tenant)
        value, _ = self._send(Call("GET", f"/api/v1/rooms/{_core.seg(room)}/presence", True, params=params))
        return parse_presence(_core.as_object(value))

    def connections(self, user_id: str, *, tenant: Optional[str] = None) -> List[Connection]:
        """Connections of ``user_id``, across the cluster."""
        params = _core.tenant_params(tenant)
        value, _ = self._send(Call("GET", f"/api/v1/users/{_core.seg(user_id)}/connections", True, params=params))
        return parse_connections(_core.as_object(value))

    def disconnect(self, user_id: str, *, tenant: Optional[str] = None) -> int:
        """Closes every connection of ``user_id`` (close code 4013); returns how many."""
        params = _core.tenant_params(tenant)
        value, _ = self._send(Call("POST", f"/api/v1/users/{_core.seg(user_id)}/disconnect", True, params=params))
        count = _core.as_object(value).get("disconnected")
        return count if isinstance(count, int) else 0

    def send_to_user(self, user_id: str, event: str, data: JSON = None, *, tenant: Optional[str] = None) -> int:
        """Sends one event to every connection of ``user_id`` on any node,
        outside any room; returns how many connections it was delivered to
        (``0`` when the user has none: not an error).

        Clients get an ``event`` frame with ``room`` null, no epoch and no
        offset: it is **not resumable** (a client not connected at that
        moment never gets it). Not retried once the request may have
        reached the node (it has no idempotency key).
        """
        body = _core.direct_body(event, data, tenant)
        value, _ = self._send(Call("POST", f"/api/v1/users/{_core.seg(user_id)}/send", False, body))
        return _core.delivered(value)

    def send_to_connection(
        self, connection_id: str, event: str, data: JSON = None, *, tenant: Optional[str] = None
    ) -> int:
        """Sends one event to one connection (on any node), outside any room;
        returns ``1``. Raises :class:`NotFoundError` when no such connection
        is registered (or it belongs to another tenant than ``tenant``).
        Not resumable, like :meth:`send_to_user`.
        """
        body = _core.direct_body(event, data, tenant)
        value, _ = self._send(Call("POST", f"/api/v1/connections/{_core.seg(connection_id)}/send", False, body))
        return _core.delivered(value)

    def stats(self) -> Stats:
        """Per-node and cluster totals."""
        value, _ = self._send(Call("GET", "/api/v1/stats", True))
        return parse_stats(_core.as_object(value))

    def create_token(
        self,
        sub: str,
        *,
        roles: Optional[Sequence[str]] = None,
        tenant: Optional[str] = None,
        ttl: Optional[str] = None,
        claims: Optional[Mapping[str, Any]] = None,
    ) -> Token:
        """Has the node mint an HS256 token (``ttl`` like ``"1h"``). To mint
        without a round trip, use :func:`herald_sdk.mint_token`."""
        body = _core.token_body(sub, roles, tenant, ttl, claims)
        value, _ = self._send(Call("POST", "/api/v1/tokens", True, body))
        return parse_token(_core.as_object(value))

    def ready(self) -> bool:
        """True when the node accepts connections and reaches its broker."""
        try:
            response = self._http.get(self._base + "/ready", timeout=self._timeout)
        except httpx.TransportError:
            return False
        return response.status_code == 200
