"""Commands between relay servers, on the broker's control channel (one per cluster).

A server API call that concerns connections anywhere (disconnect a subject, remove it
from a room) and the coalesced presence changes of a room travel as one versioned JSON
message to every relay server; each acts on its own connections. JSON only, never
pickle, and each message carries its origin node.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final, Literal

import orjson

VERSION: Final = 1
Op = Literal["disconnect", "leave", "presence"]


class ControlError(ValueError):
    """Bytes on the control channel that are not a command this version understands."""


@dataclass(frozen=True, slots=True)
class Command:
    op: Op
    origin: str
    subject: str | None = None
    room: str | None = None
    reason: str | None = None
    joins: list[dict[str, Any]] = field(default_factory=list)
    leaves: list[dict[str, Any]] = field(default_factory=list)


def disconnect(origin: str, subject: str, reason: str) -> bytes:
    return _dump({"op": "disconnect", "node": origin, "sub": subject, "reason": reason})


def leave(origin: str, subject: str, room: str) -> bytes:
    return _dump({"op": "leave", "node": origin, "sub": subject, "room": room})


def presence(
    origin: str, room: str, joins: list[dict[str, Any]], leaves: list[dict[str, Any]]
) -> bytes:
    return _dump({"op": "presence", "node": origin, "room": room, "joins": joins, "leaves": leaves})


def parse(message: bytes) -> Command:
    try:
        obj = orjson.loads(message)
    except orjson.JSONDecodeError as exc:
        raise ControlError(f"not JSON: {exc}") from exc
    if not isinstance(obj, dict) or obj.get("v") != VERSION:
        raise ControlError(f"unsupported control message {message[:80]!r}")
    op, origin = obj.get("op"), obj.get("node")
    if op not in ("disconnect", "leave", "presence") or not isinstance(origin, str):
        raise ControlError(f"unknown control op {str(op)[:32]!r}")
    subject, room, reason = obj.get("sub"), obj.get("room"), obj.get("reason")
    joins, leaves = obj.get("joins", []), obj.get("leaves", [])
    if not (
        (subject is None or isinstance(subject, str))
        and (room is None or isinstance(room, str))
        and (reason is None or isinstance(reason, str))
        and isinstance(joins, list)
        and isinstance(leaves, list)
    ):
        raise ControlError(f"control message fields of the wrong type: {message[:120]!r}")
    return Command(op, origin, subject, room, reason, joins, leaves)


def _dump(message: dict[str, Any]) -> bytes:
    return orjson.dumps({"v": VERSION, **message})
