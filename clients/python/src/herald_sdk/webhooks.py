"""Verifying Herald's webhook batches (docs/protocol.md, section 10).

Herald POSTs ``{"events": [...]}`` with the header
``Herald-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>``.
:func:`verify_webhook` checks it on the raw body bytes, before any JSON
parsing, and returns the batch's events.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Union

__all__ = ["WebhookEvent", "WebhookVerificationError", "verify_webhook", "sign_webhook"]


class WebhookVerificationError(Exception):
    """A webhook request failed verification; answer it 400 (or 401).

    ``reason`` says why: ``malformed_header`` (no ``t=`` or no ``v1=``, or
    ``t`` not an integer), ``timestamp_out_of_tolerance`` (``t`` too far
    from the local clock: a replay, or a skewed clock), ``signature_mismatch``
    (no ``v1=`` value matches: wrong secret or altered body) or
    ``bad_body`` (signed correctly but not a JSON ``{"events": [...]}``
    batch of objects).
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message


@dataclass(frozen=True)
class WebhookEvent:
    """One event of a batch: ``id`` (dedupe on it: delivery is at least
    once), ``type`` (``connection.opened``, ``user.online``, ...),
    ``time_ms``, and ``fields``, the whole flat JSON object (``tenant``,
    ``user_id``, ``room``... depending on the type)."""

    id: str
    type: str
    time_ms: int
    fields: Dict[str, Any] = field(default_factory=dict)

    def get(self, key: str, default: Any = None) -> Any:
        """A field of the event (``tenant``, ``user_id``, ``room``, ...)."""
        return self.fields.get(key, default)


def _as_bytes(value: Union[str, bytes], what: str) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8")
    raise TypeError(f"{what} must be bytes or str")


def sign_webhook(secret: Union[str, bytes], timestamp: int, body: Union[str, bytes]) -> str:
    """The ``Herald-Signature`` value Herald would send (for tests and tools)."""
    mac = hmac.new(_as_bytes(secret, "secret"), str(timestamp).encode() + b"." + _as_bytes(body, "body"), hashlib.sha256)
    return f"t={timestamp},v1={mac.hexdigest()}"


def verify_webhook(
    secret: Union[str, bytes],
    signature_header: Optional[str],
    body: Union[str, bytes],
    tolerance: float = 300.0,
    *,
    now: Optional[float] = None,
) -> List[WebhookEvent]:
    """Checks a webhook request and returns its events, oldest first.

    ``secret`` is ``webhooks.secret``; ``signature_header`` the request's
    ``Herald-Signature``; ``body`` the raw request body exactly as received.
    The signature is compared in constant time; any of several ``v1=``
    values may match (a secret being rotated). ``t`` must be within
    ``tolerance`` seconds of ``now`` (default: the clock) either way.
    Raises :class:`WebhookVerificationError` on any failure.
    """
    key = _as_bytes(secret, "secret")
    if not key:
        raise ValueError("secret is empty")
    raw = _as_bytes(body, "body")
    if not signature_header:
        raise WebhookVerificationError("malformed_header", "no Herald-Signature header")
    timestamp: Optional[str] = None
    candidates: List[str] = []
    for part in signature_header.split(","):
        name, sep, value = part.strip().partition("=")
        if not sep:
            continue
        if name == "t":
            timestamp = value
        elif name == "v1":
            candidates.append(value)
    if timestamp is None or not (timestamp.isascii() and timestamp.isdigit()):
        raise WebhookVerificationError("malformed_header", "Herald-Signature has no integer `t=`")
    if not candidates:
        raise WebhookVerificationError("malformed_header", "Herald-Signature has no `v1=`")
    clock = time.time() if now is None else now
    if abs(clock - int(timestamp)) > tolerance:
        raise WebhookVerificationError(
            "timestamp_out_of_tolerance", f"t={timestamp} is more than {tolerance:g} s from now"
        )
    expected = hmac.new(key, timestamp.encode() + b"." + raw, hashlib.sha256).hexdigest().encode()
    # Check every candidate (no early exit), so timing reveals nothing.
    matched = False
    for candidate in candidates:
        matched |= hmac.compare_digest(expected, candidate.lower().encode("ascii", "replace"))
    if not matched:
        raise WebhookVerificationError("signature_mismatch", "no v1= signature matches the body")
    return _parse(raw)


def _parse(raw: bytes) -> List[WebhookEvent]:
    try:
        batch = json.loads(raw)
    except ValueError as exc:
        raise WebhookVerificationError("bad_body", f"body is not JSON: {exc}") from None
    events = batch.get("events") if isinstance(batch, dict) else None
    if not isinstance(events, list):
        raise WebhookVerificationError("bad_body", 'body is not {"events": [...]}')
    out: List[WebhookEvent] = []
    for i, ev in enumerate(events):
        if not isinstance(ev, dict):
            raise WebhookVerificationError("bad_body", f"events[{i}] is not an object")
        ev_id, ev_type, ev_time = ev.get("id"), ev.get("type"), ev.get("time_ms")
        if not isinstance(ev_id, str) or not isinstance(ev_type, str):
            raise WebhookVerificationError("bad_body", f"events[{i}] lacks a string `id` or `type`")
        if not isinstance(ev_time, int) or isinstance(ev_time, bool):
            raise WebhookVerificationError("bad_body", f"events[{i}] lacks an integer `time_ms`")
        out.append(WebhookEvent(ev_id, ev_type, ev_time, dict(ev)))
    return out
