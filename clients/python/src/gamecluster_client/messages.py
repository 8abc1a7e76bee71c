"""The wire format, in one place: frames to and from dicts, dicts to typed messages.

Frames are UTF-8 JSON text; one frame may carry several messages separated by `\\n`
(docs/protocol.md). The typed messages are frozen dataclasses: what `Client` hands to
the application. Unknown fields are ignored, as the protocol says.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from gamecluster_client.errors import ProtocolError


def encode(message: dict[str, Any]) -> str:
    """One message as a compact JSON text frame (compact JSON holds no raw newline)."""
    return json.dumps(message, separators=(",", ":"), ensure_ascii=False)


def decode(frame: str | bytes) -> list[dict[str, Any]]:
    """The messages of one frame, in order."""
    text = frame if isinstance(frame, str) else frame.decode()
    messages = []
    for line in text.split("\n"):
        if not line:
            continue
        try:
            message = json.loads(line)
        except ValueError as exc:
            raise ProtocolError(f"the server sent a line that is not JSON: {line[:80]!r}") from exc
        if not isinstance(message, dict):
            raise ProtocolError(f"the server sent a message that is not an object: {line[:80]!r}")
        messages.append(message)
    return messages


def _str(message: dict[str, Any], key: str) -> str:
    value = message.get(key)
    if not isinstance(value, str):
        raise ProtocolError(f"expected a string {key!r} in {message.get('op')!r}, got {value!r}")
    return value


def _opt_int(message: dict[str, Any], key: str) -> int | None:
    value = message.get(key)
    if value is None or (isinstance(value, int) and not isinstance(value, bool)):
        return value
    raise ProtocolError(f"expected an integer or null {key!r} in {message.get('op')!r}")


def _opt_str(message: dict[str, Any], key: str) -> str | None:
    value = message.get(key)
    return value if isinstance(value, str) else None


@dataclass(frozen=True)
class Position:
    """Where a durable room's feed stands: an offset means something only with its epoch."""

    epoch: str
    offset: int

    def as_since(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "offset": self.offset}


@dataclass(frozen=True)
class Welcome:
    session: str
    node: str
    heartbeat: float | None

    @classmethod
    def parse(cls, message: dict[str, Any]) -> Welcome:
        if message.get("op") != "welcome":
            raise ProtocolError(f"expected welcome first, got {message.get('op')!r}")
        heartbeat = message.get("heartbeat")
        return cls(
            session=_str(message, "session"),
            node=_str(message, "node"),
            heartbeat=float(heartbeat) if isinstance(heartbeat, int | float) else None,
        )


@dataclass(frozen=True)
class Joined:
    """The join took effect. `offset`/`epoch` are None in volatile rooms served by Redis.
    `recovered` is None when no `since` was sent, else whether the replay is complete."""

    room: str
    offset: int | None
    epoch: str | None
    recovered: bool | None

    @classmethod
    def parse(cls, message: dict[str, Any]) -> Joined:
        recovered = message.get("recovered")
        return cls(
            room=_str(message, "room"),
            offset=_opt_int(message, "offset"),
            epoch=_opt_str(message, "epoch"),
            recovered=recovered if isinstance(recovered, bool) else None,
        )

    @property
    def position(self) -> Position | None:
        if self.epoch is None or self.offset is None:
            return None
        return Position(self.epoch, self.offset)


@dataclass(frozen=True)
class Event:
    """An event published to a room. `sender` is the publisher's token `sub` (the wire's
    `from`; None when auth is off); `ts` is the publish time in ms since the Unix epoch."""

    room: str
    data: Any
    offset: int | None
    ts: int | None
    sender: str | None

    @classmethod
    def parse(cls, message: dict[str, Any]) -> Event:
        return cls(
            room=_str(message, "room"),
            data=message.get("data"),
            offset=_opt_int(message, "offset"),
            ts=_opt_int(message, "ts"),
            sender=_opt_str(message, "from"),
        )


@dataclass(frozen=True)
class Ack:
    """The publish with this `id` is stored (durable) or handed to the broker (volatile)."""

    id: str
    room: str
    offset: int | None

    @classmethod
    def parse(cls, message: dict[str, Any]) -> Ack:
        return cls(
            id=_str(message, "id"), room=_str(message, "room"), offset=_opt_int(message, "offset")
        )


@dataclass(frozen=True)
class Member:
    """One connection in a presence room; `info` comes from the token's `info` claim."""

    sub: str
    conn: str
    node: str
    info: Any = None

    @classmethod
    def parse(cls, value: Any) -> Member:
        if not isinstance(value, dict):
            raise ProtocolError(f"expected a member object, got {value!r}")
        return cls(_str(value, "sub"), _str(value, "conn"), _str(value, "node"), value.get("info"))


def _members(value: Any) -> tuple[Member, ...]:
    if not isinstance(value, list):
        raise ProtocolError(f"expected a list of members, got {value!r}")
    return tuple(Member.parse(item) for item in value)


@dataclass(frozen=True)
class Members:
    """A `presence()` reply: `members` is None (counts only) when the room has more
    members than the server lists (RELAY_PRESENCE_MAX_MEMBERS)."""

    room: str
    count: int
    members: tuple[Member, ...] | None

    @classmethod
    def parse(cls, message: dict[str, Any]) -> Members:
        count = message.get("count")
        if not isinstance(count, int) or isinstance(count, bool):
            raise ProtocolError(f"expected an integer count in members, got {count!r}")
        listed = message.get("members")
        return cls(_str(message, "room"), count, None if listed is None else _members(listed))


@dataclass(frozen=True)
class PresenceChange:
    """Members joined and/or left a presence room (the server coalesces many into one)."""

    room: str
    joins: tuple[Member, ...]
    leaves: tuple[Member, ...]

    @classmethod
    def parse(cls, message: dict[str, Any]) -> PresenceChange:
        return cls(
            _str(message, "room"),
            _members(message.get("joins", [])),
            _members(message.get("leaves", [])),
        )


@dataclass(frozen=True)
class Lost:
    """Events of this room could not be recovered (after a reconnect, or the history was
    lost while you were in it). Game state built from earlier events is stale: re-sync
    it (e.g. fetch a snapshot). The feed continues after `offset` of `epoch`."""

    room: str
    epoch: str | None
    offset: int | None


@dataclass(frozen=True)
class Recovered:
    """Rejoined after a reconnect with nothing missed: the events you missed follow, in
    order, then live events (informational)."""

    room: str
    epoch: str | None
    offset: int | None


@dataclass(frozen=True)
class Removed:
    """You are no longer in this room and the client will not rejoin it: the server
    removed you (`reason` "removed"), or refused the rejoin after a reconnect (`reason` is
    the error code, e.g. "forbidden"). The room's stream ends after this message."""

    room: str
    reason: str


RoomMessage = Event | Lost | Recovered | PresenceChange | Removed
"""What a room's stream yields, in arrival order."""


@dataclass(frozen=True)
class Connecting:
    url: str
    attempt: int
    """0 for the first try after a connection ended, then 1, 2, ... (backoff grows)."""


@dataclass(frozen=True)
class Connected:
    url: str
    node: str
    session: str


@dataclass(frozen=True)
class Disconnected:
    url: str
    code: int | None
    """The WebSocket close code, None when the socket never opened or was cut."""
    reason: str
    will_reconnect: bool


StateChange = Connecting | Connected | Disconnected
"""What `Client(on_state=...)` is called with."""
