"""Request and response bodies of the server API; the OpenAPI schema is built from these."""

from __future__ import annotations

from typing import Annotated, Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue

from relay.protocol import MAX_ID_CHARS

ROOM_REGEX: Final = r"^[A-Za-z0-9_\-.:/]{1,128}$"
MAX_BATCH_ITEMS: Final = 100
"""Events in one POST /publish; more is refused whole with 400 (split the batch)."""
MAX_BODY_BYTES: Final = 1024 * 1024
"""Largest request body; more is refused with 413 `too_large` before it is parsed."""
MAX_HISTORY_PAGE: Final = 1000
"""Largest `limit` of one history page."""

ErrorCodeName = Literal[
    "bad_request",
    "unauthorized",
    "forbidden",
    "not_found",
    "too_large",
    "not_durable",
    "epoch_mismatch",
    "unavailable",
    "internal",
]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)


class ApiError(_Model):
    """The body of every 4xx/5xx answer of the API."""

    code: ErrorCodeName
    """Stable, machine-readable: what went wrong (see docs/api.md)."""
    message: str
    """For humans: what was expected and what came."""


class PublishRequest(_Model):
    """One event for one room (POST /rooms/{room}/events)."""

    data: JsonValue
    """The event's payload, delivered to members as the event's `data`."""
    id: str | None = Field(None, min_length=1, max_length=MAX_ID_CHARS)
    """Publish id: a retry with the same id within the dedupe window is stored once.
    The `Idempotency-Key` header does the same; the body's `id` wins."""


class Published(_Model):
    """Where an event went: `offset`/`epoch` in durable rooms, null in volatile ones."""

    room: str
    offset: int | None
    epoch: str | None
    duplicate: bool
    """True when this was a retry of an id already stored: nothing new was sent."""


class BatchItem(_Model):
    """One event of a batch. A bad room or id fails this item only (its `error`)."""

    room: str = Field(max_length=1024)
    data: JsonValue
    id: str | None = Field(None, max_length=1024)


class BatchRequest(_Model):
    """Many events to many rooms (POST /publish); each item succeeds or fails alone."""

    items: list[BatchItem] = Field(min_length=1, max_length=MAX_BATCH_ITEMS)


class BatchResult(_Model):
    """The outcome of one batch item: `result` or `error`, never both."""

    index: int
    result: Published | None = None
    error: ApiError | None = None


class BatchResponse(_Model):
    results: list[BatchResult]


class HistoryEvent(_Model):
    """A stored event, as members received it."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, use_attribute_docstrings=True)

    offset: int
    ts: int
    data: JsonValue
    sender: str | None = Field(None, alias="from")
    """The publisher's token subject; null for events published through this API."""


class HistoryPage(_Model):
    """One page of a durable room's history."""

    room: str
    epoch: str
    top: int
    """The room's last offset."""
    events: list[HistoryEvent]
    cursor: str | None
    """Pass as `cursor` for the next page; null on the last one."""


class Member(_Model):
    """One connection in a presence room (docs/protocol.md, presence)."""

    sub: str
    conn: str
    node: str
    info: Any = None


class PresenceList(_Model):
    room: str
    count: int
    members: list[Member] | None
    """Null when the room has more than RELAY_PRESENCE_MAX_MEMBERS members (counts only)."""


class PresenceStats(_Model):
    room: str
    count: int
    """Connections in the room."""
    subjects: int
    """Distinct token subjects among them."""


class Disconnect(_Model):
    reason: str = Field("disconnected", min_length=1, max_length=64, pattern=r"^[a-z0-9_]+$")
    """Sent to the client in the `disconnect` message."""


class Accepted(_Model):
    """A command sent to every relay server; each acts on its own connections."""

    subject: str
    room: str | None = None
    reason: str | None = None


class RoomInfo(_Model):
    room: str
    members: int
    """Local members summed over live relay servers (from their load reports)."""


class RoomList(_Model):
    rooms: list[RoomInfo]
    cursor: str | None


class NodeInfo(_Model):
    node: str
    connections: int
    rooms: int
    version: str


class NodeList(_Model):
    nodes: list[NodeInfo]


SHARD_NAME_REGEX: Final = r"^[A-Za-z0-9/][A-Za-z0-9._:/-]{0,127}$"
MAX_SHARDS: Final = 64


class ShardSwitch(_Model):
    """Switch every relay server to these shards (POST /shards/switch)."""

    shards: list[Annotated[str, Field(pattern=SHARD_NAME_REGEX)]] = Field(
        min_length=1, max_length=MAX_SHARDS
    )
    """Shard names from RELAY_REDIS_URLS; the control shard (its first) must be one."""
    timeout: float = Field(30.0, gt=0, le=600)
    """Seconds: a prepare phase not done by then aborts; a move phase is reported stalled."""


class ShardMapInfo(_Model):
    """The active shard map and the switch in progress, if any (docs/operations.md)."""

    version: int
    shards: list[str]
    phase: Literal["stable", "prepare", "move"]
    next: list[str] | None = None
    """prepare: the shards being switched to."""
    previous: list[str] | None = None
    """move: the shards switched from."""
    deadline_ms: int | None = None
    stalled: bool | None = None
    """True past the deadline (a move phase keeps waiting for the relays named in the log)."""
    last: str | None = None
    """How the last switch ended."""
