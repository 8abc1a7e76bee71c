"""The wire protocol, version 1 (docs/protocol.md): parse client messages, build server ones.

The only module that knows the JSON shape of frames. Parsing is hand-written rather
than a pydantic model because each failure must map to one protocol error code with a
message that says what was expected and what came, and because it runs per inbound
message. Server messages are built with orjson, whose compact output never contains a
raw newline, so several messages can share one frame separated by `\\n`.
"""

from __future__ import annotations

import enum
import json
import re
from dataclasses import dataclass
from typing import Any, Final, NamedTuple

import orjson

ROOM_PATTERN: Final = re.compile(r"[A-Za-z0-9_\-.:/]{1,128}")
MAX_REF_CHARS: Final = 64
MAX_ID_CHARS: Final = 64
INT_RANGE: Final = range(-(2**63), 2**64)
"""Integers JSON carries exactly here (orjson's range): others would turn into floats."""
_LONG_DIGITS: Final = re.compile(r"[0-9]{19}")
r"""A run of digits as long as the shortest integer outside INT_RANGE: check that line.
ASCII digits only, as in a JSON number (`\d` would also match other scripts' digits, and
searches each publish about 1.7x slower)."""


class ErrorCode(enum.StrEnum):
    BAD_REQUEST = "bad_request"
    UNKNOWN_OP = "unknown_op"
    TOO_LARGE = "too_large"
    RATE_LIMITED = "rate_limited"
    FORBIDDEN = "forbidden"
    NOT_JOINED = "not_joined"
    TOO_MANY_ROOMS = "too_many_rooms"
    UNAVAILABLE = "unavailable"
    INTERNAL = "internal"


NOT_REPLICATED: Final = (
    "stored, but not confirmed by the Redis replicas in time (RELAY_REDIS_ACK_REPLICAS): "
    "it may or may not survive a Redis failover; retry with the same id (stored once)"
)
"""The `unavailable` message of a durable publish its replicas did not confirm."""
NOT_REPLICATED_WITHOUT_ID: Final = (
    "stored, but not confirmed by the Redis replicas in time (RELAY_REDIS_ACK_REPLICAS): "
    "it may or may not survive a Redis failover; it had no id, so a retry would store it "
    "again (publish with an id to retry safely)"
)
"""The same for a publish without an id: a retry is not deduplicated."""


def not_replicated(msg_id: str | None) -> str:
    return NOT_REPLICATED if msg_id is not None else NOT_REPLICATED_WITHOUT_ID


class CloseCode(enum.IntEnum):
    NORMAL = 1000
    POLICY_VIOLATION = 1008
    TOO_BIG = 1009
    INTERNAL_ERROR = 1011
    SERVICE_RESTART = 1012
    TRY_AGAIN_LATER = 1013
    TOKEN_EXPIRED = 4001
    DISCONNECTED = 4003
    """Disconnected by the server (API): do not reconnect with the same credentials."""
    SLOW_CONSUMER = 4008


class ProtocolError(Exception):
    """A client message the server refuses; becomes an `error` message, not a close."""

    def __init__(
        self,
        code: ErrorCode,
        message: str,
        *,
        ref: str | None = None,
        id: str | None = None,
        room: str | None = None,
    ) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.ref = ref
        self.id = id
        self.room = room


@dataclass(frozen=True, slots=True)
class Position:
    offset: int
    epoch: str


@dataclass(frozen=True, slots=True)
class Join:
    room: str
    since: Position | None = None
    ref: str | None = None


@dataclass(frozen=True, slots=True)
class Leave:
    room: str
    ref: str | None = None


class Publish(NamedTuple):
    """A NamedTuple, unlike the other messages: one is built per published event, and a
    frozen dataclass's `__init__` costs about 3x a tuple's. Compare it by type first: as
    a tuple it equals any tuple of the same fields."""

    room: str
    data: Any
    id: str | None = None
    ref: str | None = None
    traceparent: str | None = None
    tracestate: str | None = None


@dataclass(frozen=True, slots=True)
class Ping:
    ref: str | None = None


@dataclass(frozen=True, slots=True)
class PresenceQuery:
    room: str
    ref: str | None = None


ClientMessage = Join | Leave | Publish | Ping | PresenceQuery


def split_frame(text: str) -> list[str]:
    """The messages of one client frame: one JSON object per non-empty line."""
    if "\n" not in text:  # most frames carry one message: no list of lines to filter
        return [text] if text.strip() else []
    return [line for line in text.split("\n") if line.strip()]


def parse_message(line: str, max_bytes: int) -> ClientMessage:
    """Parse one client message, or raise ProtocolError saying exactly what is wrong."""
    # A character is at most 4 bytes of UTF-8: most lines need no encoding to be measured.
    if len(line) > max_bytes or (len(line) * 4 > max_bytes and len(line.encode()) > max_bytes):
        raise ProtocolError(ErrorCode.TOO_LARGE, f"message over the {max_bytes} byte limit")
    try:
        obj = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        raise ProtocolError(ErrorCode.BAD_REQUEST, f"not JSON: {exc}") from exc
    if not isinstance(obj, dict):
        raise ProtocolError(
            ErrorCode.BAD_REQUEST, f"expected a JSON object, got {type(obj).__name__}"
        )
    ref = _optional_str(obj, "ref", MAX_REF_CHARS, None)
    if _LONG_DIGITS.search(line):
        _check_integers(line, ref)
    op = obj.get("op")
    if not isinstance(op, str):
        raise ProtocolError(ErrorCode.BAD_REQUEST, "missing string field 'op'", ref=ref)
    if op == "publish":
        return _parse_publish(obj, ref)
    if op == "join":
        return Join(room=_room(obj, ref), since=_since(obj, ref), ref=ref)
    if op == "leave":
        return Leave(room=_room(obj, ref), ref=ref)
    if op == "ping":
        return Ping(ref=ref)
    if op == "presence":
        return PresenceQuery(room=_room(obj, ref), ref=ref)
    raise ProtocolError(ErrorCode.UNKNOWN_OP, f"unknown op {op[:32]!r}", ref=ref)


class _InexactInteger(ValueError):
    pass


def _exact_int(text: str) -> int:
    # Length first: int() of thousands of digits is slow (and limited) by itself.
    value = int(text) if len(text) <= 21 else None
    if value is None or value not in INT_RANGE:
        raise _InexactInteger(text)
    return value


def _check_integers(line: str, ref: str | None) -> None:
    """Refuse integers that orjson would silently turn into floats (a changed value).

    Runs only for lines with a long run of digits (rare), so the common path pays one
    regex search. The stdlib parser hands every integer literal to `_exact_int`.
    """
    try:
        json.loads(line, parse_int=_exact_int)
    except _InexactInteger as exc:
        literal = str(exc)
        shown = literal if len(literal) <= 24 else literal[:21] + "..."
        raise ProtocolError(
            ErrorCode.BAD_REQUEST,
            f"integer {shown} is outside -2**63 .. 2**64-1, the range carried exactly",
            ref=ref,
        ) from None
    except ValueError:
        return  # orjson accepted it; anything else the stdlib dislikes is not our concern


def _parse_publish(obj: dict[str, Any], ref: str | None) -> Publish:
    msg_id = _optional_str(obj, "id", MAX_ID_CHARS, ref)
    room = _room(obj, ref, msg_id)
    if "data" not in obj:
        raise ProtocolError(
            ErrorCode.BAD_REQUEST, "publish needs a 'data' field", ref=ref, id=msg_id, room=room
        )
    # Positional: keywords cost a NamedTuple's construction about twice as much.
    return Publish(
        room,
        obj["data"],
        msg_id,
        ref,
        _optional_str(obj, "traceparent", 128, ref),
        _optional_str(obj, "tracestate", 512, ref),
    )


def _room(obj: dict[str, Any], ref: str | None, msg_id: str | None = None) -> str:
    room = obj.get("room")
    if not isinstance(room, str):
        raise ProtocolError(
            ErrorCode.BAD_REQUEST, "missing string field 'room'", ref=ref, id=msg_id
        )
    if not ROOM_PATTERN.fullmatch(room):
        raise ProtocolError(
            ErrorCode.BAD_REQUEST,
            "bad room name: 1 to 128 characters of A-Z a-z 0-9 _ - . : /",
            ref=ref,
            id=msg_id,
        )
    return room


def _since(obj: dict[str, Any], ref: str | None) -> Position | None:
    since = obj.get("since")
    if since is None:
        return None
    if not isinstance(since, dict):
        raise ProtocolError(ErrorCode.BAD_REQUEST, "'since' must be an object", ref=ref)
    offset, epoch = since.get("offset"), since.get("epoch")
    if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
        raise ProtocolError(
            ErrorCode.BAD_REQUEST, "'since.offset' must be an integer >= 0", ref=ref
        )
    if not isinstance(epoch, str):
        raise ProtocolError(ErrorCode.BAD_REQUEST, "'since.epoch' must be a string", ref=ref)
    return Position(offset=offset, epoch=epoch)


def _optional_str(obj: dict[str, Any], key: str, max_chars: int, ref: str | None) -> str | None:
    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value or len(value) > max_chars:
        raise ProtocolError(
            ErrorCode.BAD_REQUEST,
            f"'{key}' must be a string of 1 to {max_chars} characters",
            ref=ref,
        )
    return value


# Server messages. Each returns the encoded bytes of one message (no trailing newline).


def encode(message: dict[str, Any]) -> bytes:
    return orjson.dumps(message)


def welcome(session: str, node: str, heartbeat: float) -> bytes:
    return encode({"op": "welcome", "session": session, "node": node, "heartbeat": heartbeat})


def joined(
    room: str, offset: int | None, epoch: str | None, recovered: bool | None, ref: str | None
) -> bytes:
    message: dict[str, Any] = {"op": "joined", "room": room, "offset": offset, "epoch": epoch}
    if recovered is not None:
        message["recovered"] = recovered
    if ref is not None:
        message["ref"] = ref
    return encode(message)


def left(room: str, ref: str | None) -> bytes:
    return encode({"op": "left", "room": room} | ({"ref": ref} if ref is not None else {}))


def ack(msg_id: str, room: str, offset: int | None, ref: str | None) -> bytes:
    message: dict[str, Any] = {"op": "ack", "id": msg_id, "room": room, "offset": offset}
    if ref is not None:
        message["ref"] = ref
    return encode(message)


def pong(ref: str | None) -> bytes:
    return encode({"op": "pong"} | ({"ref": ref} if ref is not None else {}))


def error(exc: ProtocolError) -> bytes:
    message: dict[str, Any] = {"op": "error", "code": str(exc.code), "message": exc.message}
    for key in ("ref", "id", "room"):
        value = getattr(exc, key)
        if value is not None:
            message[key] = value
    return encode(message)


def disconnect(reason: str) -> bytes:
    """Sent before close 4003: the server ended the connection; do not reconnect."""
    return encode({"op": "disconnect", "reason": reason, "reconnect": False})


def removed(room: str) -> bytes:
    """Unsolicited `left`: the server API removed this connection from the room."""
    return encode({"op": "left", "room": room, "reason": "removed"})


def members(room: str, count: int, listed: list[dict[str, Any]] | None, ref: str | None) -> bytes:
    """Reply to op `presence`; `members` is left out when the room reports counts only."""
    message: dict[str, Any] = {"op": "members", "room": room, "count": count}
    if listed is not None:
        message["members"] = listed
    if ref is not None:
        message["ref"] = ref
    return encode(message)


def presence(room: str, joins: list[dict[str, Any]], leaves: list[dict[str, Any]]) -> bytes:
    """Coalesced joins and leaves of a presence room, to its members."""
    return encode({"op": "presence", "room": room, "joins": joins, "leaves": leaves})


def reconnect(reason: str) -> bytes:
    return encode({"op": "reconnect", "reason": reason})


def event(room: str, offset: int | None, data: Any, ts: int, sender: str | None = None) -> bytes:
    """The `event` message every member of the room receives: encoded once per event.

    `sender` is the publisher's authenticated subject, sent as `from`; None (auth off)
    leaves `from` out.

    Raises ProtocolError(bad_request) for data JSON cannot carry (e.g. integers beyond
    64 bits), so the publisher hears about it instead of the event vanishing.
    """
    if offset is None:
        message: dict[str, Any] = {"op": "event", "room": room, "data": data, "ts": ts}
        if sender is not None:
            message["from"] = sender
        return _dumps(message)
    head, tail = event_parts(room, data, ts, sender)
    return head + str(offset).encode() + tail


def event_parts(room: str, data: Any, ts: int, sender: str | None = None) -> tuple[bytes, bytes]:
    """An `event` message split where its offset goes: `head + offset + tail`.

    For brokers that learn the offset only where the event is stored (a Redis script).
    """
    fields: dict[str, Any] = {"data": data, "ts": ts}
    if sender is not None:
        fields["from"] = sender
    body = _dumps(fields)
    return b'{"op":"event","room":' + orjson.dumps(room) + b',"offset":', b"," + body[1:]


def _dumps(message: dict[str, Any]) -> bytes:
    try:
        return orjson.dumps(message)
    except TypeError as exc:
        raise ProtocolError(ErrorCode.BAD_REQUEST, f"'data' cannot be encoded: {exc}") from exc
