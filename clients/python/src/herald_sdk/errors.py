"""Exceptions raised by the SDK, one class per Herald error code.

Every error the node answers is JSON ``{"error": {"code", "message"}}``
(docs/protocol.md, section 2); :func:`error_from_response` turns it into the
class named after its code. Transport failures (no connection, timeout)
have their own classes so callers can tell "Herald said no" from "Herald
did not answer".
"""

from __future__ import annotations

import json
from typing import Dict, Optional, Type

__all__ = [
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
    "error_from_response",
]


class HeraldError(Exception):
    """Base of every SDK error.

    ``status`` is the HTTP status (``None`` when no answer arrived), ``code``
    Herald's error code (``bad_request``, ``unavailable``...) and
    ``message`` the node's explanation.
    """

    def __init__(self, status: Optional[int], code: str, message: str) -> None:
        super().__init__(f"{code} ({status}): {message}" if status else f"{code}: {message}")
        self.status = status
        self.code = code
        self.message = message


class BadRequestError(HeraldError):
    """400 ``bad_request``: malformed body, bad room name, bad query (405 too)."""


class IdempotencyConflictError(BadRequestError):
    """409 ``bad_request``: the idempotency key was first used for another room."""


class UnauthorizedError(HeraldError):
    """401 ``unauthorized``: missing or unknown API key."""


class ForbiddenError(HeraldError):
    """403 ``forbidden``: the API key lacks the scope for this call."""


class NotFoundError(HeraldError):
    """404 ``not_found``: unknown route (usually a wrong base URL)."""


class TooLargeError(HeraldError):
    """413 ``too_large``: request body over the node's 2 MiB limit."""


class LimitExceededError(HeraldError):
    """429 ``limit_exceeded``: a per-user connection limit was hit."""


class UnavailableError(HeraldError):
    """503 ``unavailable``: broker unreachable, node full or draining."""


class InternalError(HeraldError):
    """500 ``internal``: a bug in the node."""


class TransportError(HeraldError):
    """No usable answer arrived: the connection failed or timed out."""


class HeraldConnectionError(TransportError):
    """The node could not be reached, or the connection broke mid-call."""


class HeraldTimeoutError(TransportError):
    """The node did not answer within the client's timeout."""


_BY_CODE: Dict[str, Type[HeraldError]] = {
    "bad_request": BadRequestError,
    "unauthorized": UnauthorizedError,
    "forbidden": ForbiddenError,
    "not_found": NotFoundError,
    "too_large": TooLargeError,
    "limit_exceeded": LimitExceededError,
    "unavailable": UnavailableError,
    "internal": InternalError,
}

# For answers without Herald's JSON body (a proxy's 502 page, say).
_BY_STATUS: Dict[int, str] = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    413: "too_large",
    429: "limit_exceeded",
    502: "unavailable",
    503: "unavailable",
    504: "unavailable",
}


def error_from_response(status: int, body: bytes) -> HeraldError:
    """Builds the exception for an error answer of status ``status``."""
    code: Optional[str] = None
    message = ""
    try:
        parsed = json.loads(body)
        err = parsed.get("error") if isinstance(parsed, dict) else None
        if isinstance(err, dict):
            if isinstance(err.get("code"), str):
                code = err["code"]
            if isinstance(err.get("message"), str):
                message = err["message"]
    except ValueError:
        pass
    if code is None:
        code = _BY_STATUS.get(status, "internal" if status >= 500 else "bad_request")
        message = message or body[:200].decode("utf-8", "replace") or f"HTTP {status}"
    if status == 409 and code == "bad_request":
        return IdempotencyConflictError(status, code, message)
    return _BY_CODE.get(code, HeraldError)(status, code, message)
