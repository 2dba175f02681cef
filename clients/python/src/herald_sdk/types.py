"""Typed results of the HTTP API (docs/protocol.md, section 2).

Responses may gain fields in later Herald versions; the parsers read the
fields they know and ignore the rest, and history events keep their whole
frame in ``raw``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, List, Mapping, Optional

__all__ = [
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
]


@dataclass(frozen=True)
class PublishResult:
    """Where a published event landed.

    ``duplicate`` is true when the idempotency key had been seen before and
    nothing new was published; after a retry this means an earlier attempt
    of the same call had landed. ``attempts`` counts the HTTP requests made.
    """

    room: str
    epoch: str
    offset: int
    duplicate: bool
    idempotency_key: Optional[str] = None
    attempts: int = 1


@dataclass(frozen=True)
class BroadcastResult:
    """Where a broadcast event landed in one room."""

    room: str
    epoch: str
    offset: int


@dataclass(frozen=True)
class Event:
    """One stored ``event`` or ``message`` frame from the history API."""

    type: str
    room: str
    event: str
    data: Any
    epoch: str
    offset: int
    ts: int
    event_id: str
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)


@dataclass(frozen=True)
class History:
    """A page of a room's history and the stream's current position."""

    room: str
    epoch: str
    offset: int
    complete: bool
    events: List[Event]


@dataclass(frozen=True)
class Member:
    """One connection in a room."""

    user_id: str
    connection_id: str
    node_id: str


@dataclass(frozen=True)
class Presence:
    """Members of a room."""

    room: str
    members: List[Member]


@dataclass(frozen=True)
class Connection:
    """One connection of a user."""

    connection_id: str
    node_id: str
    transport: str
    rooms: List[str]
    connected_at: int


@dataclass(frozen=True)
class NodeStats:
    """Totals of one node."""

    node_id: str
    connections: int
    users: int
    rooms: int


@dataclass(frozen=True)
class BrokerStats:
    """The broker engine and what it holds."""

    kind: str
    streams: int
    history_events: int
    history_bytes: int


@dataclass(frozen=True)
class Stats:
    """Cluster totals, per-node figures and broker figures."""

    connections: int
    users: int
    rooms: int
    nodes: List[NodeStats]
    broker: Optional[BrokerStats]


@dataclass(frozen=True)
class Token:
    """A token minted by the node, with its ``exp`` in seconds since the epoch."""

    token: str
    expires_at: int


def _str(obj: Mapping[str, Any], key: str) -> str:
    value = obj.get(key)
    return value if isinstance(value, str) else ""


def _int(obj: Mapping[str, Any], key: str) -> int:
    value = obj.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _list(obj: Mapping[str, Any], key: str) -> List[Any]:
    value = obj.get(key)
    return value if isinstance(value, list) else []


def parse_publish(obj: Mapping[str, Any], key: Optional[str], attempts: int) -> PublishResult:
    """Parses the publish answer."""
    return PublishResult(
        room=_str(obj, "room"),
        epoch=_str(obj, "epoch"),
        offset=_int(obj, "offset"),
        duplicate=obj.get("duplicate") is True,
        idempotency_key=key,
        attempts=attempts,
    )


def parse_broadcast(obj: Mapping[str, Any]) -> List[BroadcastResult]:
    """Parses the broadcast answer, in the order of the request's rooms."""
    return [
        BroadcastResult(room=_str(r, "room"), epoch=_str(r, "epoch"), offset=_int(r, "offset"))
        for r in _list(obj, "results")
        if isinstance(r, dict)
    ]


def parse_history(obj: Mapping[str, Any]) -> History:
    """Parses the history answer."""
    events = [
        Event(
            type=_str(e, "type"),
            room=_str(e, "room"),
            event=_str(e, "event"),
            data=e.get("data"),
            epoch=_str(e, "epoch"),
            offset=_int(e, "offset"),
            ts=_int(e, "ts"),
            event_id=_str(e, "event_id"),
            raw=e,
        )
        for e in _list(obj, "events")
        if isinstance(e, dict)
    ]
    return History(
        room=_str(obj, "room"),
        epoch=_str(obj, "epoch"),
        offset=_int(obj, "offset"),
        complete=obj.get("complete") is True,
        events=events,
    )


def parse_presence(obj: Mapping[str, Any]) -> Presence:
    """Parses the presence answer."""
    members = [
        Member(_str(m, "user_id"), _str(m, "connection_id"), _str(m, "node_id"))
        for m in _list(obj, "members")
        if isinstance(m, dict)
    ]
    return Presence(room=_str(obj, "room"), members=members)


def parse_connections(obj: Mapping[str, Any]) -> List[Connection]:
    """Parses the connections answer."""
    return [
        Connection(
            connection_id=_str(c, "connection_id"),
            node_id=_str(c, "node_id"),
            transport=_str(c, "transport"),
            rooms=[r for r in _list(c, "rooms") if isinstance(r, str)],
            connected_at=_int(c, "connected_at"),
        )
        for c in _list(obj, "connections")
        if isinstance(c, dict)
    ]


def parse_stats(obj: Mapping[str, Any]) -> Stats:
    """Parses the stats answer."""
    broker = obj.get("broker")
    return Stats(
        connections=_int(obj, "connections"),
        users=_int(obj, "users"),
        rooms=_int(obj, "rooms"),
        nodes=[
            NodeStats(_str(n, "node_id"), _int(n, "connections"), _int(n, "users"), _int(n, "rooms"))
            for n in _list(obj, "nodes")
            if isinstance(n, dict)
        ],
        broker=BrokerStats(
            kind=_str(broker, "kind"),
            streams=_int(broker, "streams"),
            history_events=_int(broker, "history_events"),
            history_bytes=_int(broker, "history_bytes"),
        )
        if isinstance(broker, dict)
        else None,
    )


def parse_token(obj: Mapping[str, Any]) -> Token:
    """Parses the token answer."""
    return Token(token=_str(obj, "token"), expires_at=_int(obj, "expires_at"))
