"""Publishing through the Redis ingest stream instead of HTTP.

With ``broker.kind = "redis"``, Herald nodes consume the stream
``<prefix>:ingest``: each entry's field ``payload`` is a publish body
(docs/protocol.md, section 5). An append is fire-and-forget: it returns
the entry id, not an offset; a payload the node cannot publish lands in
``<prefix>:ingest:dead``. Needs the ``redis`` extra
(``pip install 'herald-sdk[redis]'``).
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any, Optional

from . import _core
from ._core import JSON, Retry

__all__ = ["RedisIngest", "AsyncRedisIngest"]


def _payload(
    room: str,
    event: str,
    data: JSON,
    tenant: Optional[str],
    idempotency_key: Optional[str],
) -> str:
    # A key of our own (rather than the node's `ingest:<entry id>`) keeps an
    # append retried after a lost reply from publishing twice.
    key = idempotency_key or _core.new_idempotency_key()
    return json.dumps(_core.publish_body(room, event, data, tenant, key, None), separators=(",", ":"))


def _entry_id(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


class RedisIngest:
    """Appends publish bodies to ``<prefix>:ingest`` with redis-py.

    Pass ``url`` (``redis://host:port/db``) or a ready ``redis.Redis`` as
    ``client`` (then it is yours to close).
    """

    def __init__(
        self,
        url: Optional[str] = None,
        *,
        prefix: str = "herald",
        client: Any = None,
        retry: Optional[Retry] = None,
    ) -> None:
        if client is None:
            if url is None:
                raise ValueError("give a Redis url or a redis.Redis client")
            try:
                import redis
            except ImportError as exc:  # pragma: no cover - depends on the extra
                raise ImportError("the ingest transport needs `pip install 'herald-sdk[redis]'`") from exc
            client = redis.Redis.from_url(url)
            self._own = True
        else:
            self._own = False
        self._redis = client
        self._stream = f"{prefix}:ingest"
        self._retry = retry or Retry()

    def publish(
        self,
        room: str,
        event: str,
        data: JSON = None,
        *,
        tenant: Optional[str] = None,
        idempotency_key: Optional[str] = None,
    ) -> str:
        """Appends one publish; returns the stream entry id."""
        import redis

        payload = _payload(room, event, data, tenant, idempotency_key)
        attempt = 0
        while True:
            attempt += 1
            try:
                return _entry_id(self._redis.xadd(self._stream, {"payload": payload}))
            except (redis.ConnectionError, redis.TimeoutError):
                if attempt >= self._retry.attempts:
                    raise
                time.sleep(self._retry.delay(attempt - 1))

    def close(self) -> None:
        """Closes the Redis connection (only one this object opened)."""
        if self._own:
            self._redis.close()

    def __enter__(self) -> "RedisIngest":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncRedisIngest:
    """The asyncio form of :class:`RedisIngest`, on ``redis.asyncio``."""

    def __init__(
        self,
        url: Optional[str] = None,
        *,
        prefix: str = "herald",
        client: Any = None,
        retry: Optional[Retry] = None,
    ) -> None:
        if client is None:
            if url is None:
                raise ValueError("give a Redis url or a redis.asyncio.Redis client")
            try:
                import redis.asyncio as aioredis
            except ImportError as exc:  # pragma: no cover - depends on the extra
                raise ImportError("the ingest transport needs `pip install 'herald-sdk[redis]'`") from exc
            client = aioredis.Redis.from_url(url)
            self._own = True
        else:
            self._own = False
        self._redis = client
        self._stream = f"{prefix}:ingest"
        self._retry = retry or Retry()

    async def publish(
        self,
        room: str,
        event: str,
        data: JSON = None,
        *,
        tenant: Optional[str] = None,
        idempotency_key: Optional[str] = None,
    ) -> str:
        """Appends one publish; returns the stream entry id."""
        import redis

        payload = _payload(room, event, data, tenant, idempotency_key)
        attempt = 0
        while True:
            attempt += 1
            try:
                return _entry_id(await self._redis.xadd(self._stream, {"payload": payload}))
            except (redis.ConnectionError, redis.TimeoutError):
                if attempt >= self._retry.attempts:
                    raise
                await asyncio.sleep(self._retry.delay(attempt - 1))

    async def aclose(self) -> None:
        """Closes the Redis connection (only one this object opened)."""
        if self._own:
            # redis-py 5 renamed close() to aclose() on asyncio clients.
            closer = getattr(self._redis, "aclose", None) or self._redis.close
            await closer()

    async def __aenter__(self) -> "AsyncRedisIngest":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
