"""Local HS256 token minting (docs/protocol.md, section 3.2), with no
round trip to the node and no JWT library."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from datetime import timedelta
from typing import Any, Dict, Mapping, Optional, Sequence, Union

__all__ = ["mint_token", "RESERVED_CLAIMS"]

RESERVED_CLAIMS = frozenset({"sub", "exp", "iat", "nbf", "iss", "aud", "tenant", "roles"})
"""Claims set by :func:`mint_token`'s own arguments; ``claims`` may not hold them."""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def mint_token(
    secret: Union[str, bytes],
    sub: str,
    *,
    ttl: Union[int, float, timedelta, None] = 3600,
    tenant: Optional[str] = None,
    roles: Optional[Sequence[str]] = None,
    issuer: Optional[str] = None,
    audience: Union[str, Sequence[str], None] = None,
    claims: Optional[Mapping[str, Any]] = None,
    not_before: Optional[int] = None,
    now: Optional[int] = None,
) -> str:
    """Signs a Herald user token with HS256.

    ``secret`` is the node's ``auth.hs256_secret``; ``sub`` the user id.
    ``ttl`` (seconds or a ``timedelta``; ``None`` for no ``exp``) sets
    ``exp`` from ``now`` (default: the current time). ``issuer`` and
    ``audience`` must match ``auth.issuer`` / ``auth.audience`` when the
    node sets them. ``claims`` adds others, for namespace rules such as
    ``{"projects": [7]}``.
    """
    if not sub:
        raise ValueError("sub must be a non-empty user id")
    if isinstance(roles, str):
        raise TypeError("roles must be a list of strings, not one string")
    key = secret.encode("utf-8") if isinstance(secret, str) else secret
    if not key:
        raise ValueError("secret must not be empty")
    issued = int(time.time()) if now is None else int(now)
    payload: Dict[str, Any] = {}
    if claims:
        clash = sorted(RESERVED_CLAIMS.intersection(claims))
        if clash:
            raise ValueError(f"claims may not set {', '.join(clash)}; use the matching argument")
        payload.update(claims)
    payload["sub"] = sub
    payload["iat"] = issued
    if ttl is not None:
        seconds = ttl.total_seconds() if isinstance(ttl, timedelta) else float(ttl)
        if seconds <= 0:
            raise ValueError("ttl must be positive")
        payload["exp"] = issued + int(seconds)
    if not_before is not None:
        payload["nbf"] = int(not_before)
    if tenant is not None:
        payload["tenant"] = tenant
    if roles is not None:
        payload["roles"] = list(roles)
    if issuer is not None:
        payload["iss"] = issuer
    if audience is not None:
        payload["aud"] = audience if isinstance(audience, str) else list(audience)
    header = _b64(json.dumps({"alg": "HS256", "typ": "JWT"}, separators=(",", ":")).encode())
    body = _b64(json.dumps(payload, separators=(",", ":")).encode())
    signing_input = f"{header}.{body}".encode("ascii")
    signature = _b64(hmac.new(key, signing_input, hashlib.sha256).digest())
    return f"{header}.{body}.{signature}"
