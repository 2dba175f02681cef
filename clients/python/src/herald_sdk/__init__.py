"""Herald server SDK: publish events, read history and presence, manage
connections and mint tokens from Python backends.

>>> from herald_sdk import Herald
>>> herald = Herald("http://127.0.0.1:8080", api_key="...")  # doctest: +SKIP
>>> herald.publish("user:42", "agent.started", {"run": 7})  # doctest: +SKIP
"""

from ._core import Retry, new_idempotency_key
from .aio import AsyncHerald
from .client import Herald
from .errors import (
    BadRequestError,
    ForbiddenError,
    HeraldConnectionError,
    HeraldError,
    HeraldTimeoutError,
    IdempotencyConflictError,
    InternalError,
    LimitExceededError,
    NotFoundError,
    TooLargeError,
    TransportError,
    UnauthorizedError,
    UnavailableError,
)
from .ingest import AsyncRedisIngest, RedisIngest
from .tokens import mint_token
from .webhooks import WebhookEvent, WebhookVerificationError, sign_webhook, verify_webhook
from .types import (
    BroadcastResult,
    BrokerStats,
    Connection,
    Event,
    History,
    Member,
    NodeStats,
    Presence,
    PublishResult,
    Stats,
    Token,
)

__version__ = "0.1.0"

__all__ = [
    "Herald",
    "AsyncHerald",
    "Retry",
    "new_idempotency_key",
    "mint_token",
    "verify_webhook",
    "sign_webhook",
    "WebhookEvent",
    "WebhookVerificationError",
    "RedisIngest",
    "AsyncRedisIngest",
    "PublishResult",
    "BroadcastResult",
    "Event",
    "History",
    "Member",
    "Presence",
    "Connection",
    "NodeStats",
    "BrokerStats",
    "Stats",
    "Token",
    "HeraldError",
    "BadRequestError",
    "IdempotencyConflictError",
    "UnauthorizedError",
    "ForbiddenError",
    "NotFoundError",
    "TooLargeError",
    "LimitExceededError",
    "UnavailableError",
    "InternalError",
    "TransportError",
    "HeraldConnectionError",
    "HeraldTimeoutError",
]
