"""What every broker offers the hub: publish, subscribe by room, history, deliveries back.

A broker turns one publish into one `Delivery` on every relay server that subscribed
the room (this one included). It encodes the client-facing `event` message once, on the
publishing side, so no receiving server re-serialises anything: the hub hands the same
bytes to every local member.

Durable rooms (see relay.rooms) get an offset per event, strictly +1 within an epoch,
and a history the hub reads to resume clients and to heal gaps. Publishes with an `id`
are remembered for the dedupe window: a retry returns the original result, stored once.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from relay.rooms import RoomPolicy


class BrokerUnavailable(Exception):
    """The broker cannot take the request now (Redis down or unreachable); retry later."""

    client_message = "the broker is unreachable; retry later"
    """What a client is told with `unavailable`: never an address or a library's error."""


class ShardDown(BrokerUnavailable):
    """The Redis shard a room is placed on is down on this relay server: that room's
    publishes, joins and history reads fail at once (no wait for a timeout), while rooms
    on live shards go on."""

    client_message = "the Redis shard of this room is down; other rooms work; retry later"

    def __init__(self, shard: str, url: str, cause: str | None) -> None:
        # The shard's clean URL (never credentials) and its last failure, for logs and
        # the server API's own callers; clients get only client_message.
        super().__init__(f"Redis shard {shard} ({url}) is down: {cause or 'not connected yet'}")
        self.shard = shard


class SlotMoved(BrokerUnavailable):
    """Redis Cluster: the node this relay server sent a room's command to does not serve
    the room's slot now (MOVED, ASK: a migration or a failover; TRYAGAIN: the slot is half
    migrated; CLUSTERDOWN). Nothing ran; the server reads the slot map again and a retry
    goes where the slot is."""

    client_message = "this room's Redis slot is moving; retry"


class NotReplicated(BrokerUnavailable):
    """A durable write the master stored but fewer replicas than asked for confirmed in time
    (RELAY_REDIS_ACK_REPLICAS). It may survive a failover or be lost with the master; it is
    not acked. A retry with the same id stores nothing twice (dedupe) and waits again."""


def describe(exc: BaseException) -> str:
    """An error's class and message for a log line or a BrokerUnavailable reason.

    Not ``repr``: redis-py 8's exceptions print as ``network:ConnectionError`` there, without
    the message that says what happened ("Error 111 connecting to ... Connection refused").
    """
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


class Delivery(NamedTuple):
    """One event arriving for a room, ready to fan out.

    A NamedTuple, not a frozen dataclass: one is built per event and pod (the envelope's
    unpack), and a frozen dataclass's `__init__` (one `object.__setattr__` per field)
    costs about 3x a tuple's construction. Immutable all the same.
    """

    room: str
    payload: bytes
    """The encoded `event` message, exactly as clients receive it."""
    ts: int
    """Publish time, ms since the Unix epoch (publish-to-delivery latency is measured from it)."""
    offset: int | None
    epoch: str | None
    origin: str
    """Node id of the relay server the event was published through."""
    trace: dict[str, str] | None = None
    """W3C trace context of the publish, when tracing is on."""


class PublishResult(NamedTuple):
    """What a publish got: one per publish, so a NamedTuple like Delivery."""

    offset: int | None
    epoch: str | None
    duplicate: bool = False
    """True when this was a retry of an `id` already stored: nothing new was sent."""


@dataclass(frozen=True, slots=True)
class History:
    """A durable room's position, and the stored events after a given offset."""

    epoch: str
    top: int
    """The room's last offset (0 before its first event)."""
    entries: list[Delivery] = field(default_factory=list)
    """Stored events with offsets greater than the one asked for, in order."""


Listener = Callable[[Delivery], None]
ResyncListener = Callable[[list[str]], None]
ControlListener = Callable[[bytes], None]


class Broker(abc.ABC):
    """The bus between relay servers.

    Deliveries are handed to the listener synchronously from the broker's reader; the
    listener must not block (the hub only queues bytes).
    """

    def __init__(self) -> None:
        self._listener: Listener | None = None
        self._resync: ResyncListener | None = None
        self._control: ControlListener | None = None

    def set_listener(self, listener: Listener, resync: ResyncListener | None = None) -> None:
        """`listener` gets deliveries; `resync` gets the rooms whose live feed had a gap
        (a rebuilt Pub/Sub connection), so their missed events can be read from history."""
        self._listener = listener
        self._resync = resync

    def _deliver(self, delivery: Delivery) -> None:
        if self._listener is not None:
            self._listener(delivery)

    def set_control_listener(self, listener: ControlListener) -> None:
        """`listener` gets every message of the control channel (relay.control), this
        server's own included; it must not block."""
        self._control = listener

    def _control_received(self, message: bytes) -> None:
        if self._control is not None:
            self._control(message)

    async def broadcast(self, message: bytes) -> None:
        """Send `message` to every relay server's control listener, this one included.

        Raises BrokerUnavailable when the broker did not take it.
        """
        self._control_received(message)

    def _gap(self, rooms: list[str]) -> None:
        if self._resync is not None and rooms:
            self._resync(rooms)

    @property
    @abc.abstractmethod
    def ready(self) -> bool:
        """True while the broker can publish and deliver (feeds /readyz)."""

    def shards(self) -> dict[str, bool]:
        """Each shard's name and whether it is live on this server (/readyz, metrics);
        empty for a broker without shards."""
        return {}

    @abc.abstractmethod
    async def start(self) -> None:
        """Connect; returns once the broker is usable or has started retrying in the background."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Release connections and tasks; bounded in time."""

    @abc.abstractmethod
    async def publish(
        self,
        room: str,
        data: Any,
        *,
        ts: int,
        policy: RoomPolicy,
        msg_id: str | None = None,
        subject: str | None = None,
        trace: dict[str, str] | None = None,
    ) -> PublishResult:
        """Store (durable) and send an event to every server subscribed to `room`.

        `subject` (the publisher's authenticated identity) keys the dedupe of `msg_id`
        and goes into the event as `from`.

        Raises BrokerUnavailable when the broker did not confirm the event: usually it
        was not stored; after a timeout it may have been. Either way the publisher is told
        (never a silent loss), and its retry with the same id is stored at most once.
        Raises relay.protocol.ProtocolError when `data` cannot be encoded.
        """

    @abc.abstractmethod
    async def history(
        self, room: str, after: int | None, policy: RoomPolicy, *, limit: int | None = None
    ) -> History:
        """The durable room's epoch and last offset, plus stored events after `after`
        (the first `limit` of them when given: a replay reads page by page).

        Creates the room's epoch when it has none yet, so a position can be handed out
        before the first event. Raises BrokerUnavailable.
        """

    def placement(self, room: str) -> str:
        """Which of the broker's stores holds `room` (a Redis shard's name; "" when there
        is one). Work bounded per store is bounded per placement (relay.hub.JOIN_READS),
        so a slow store cannot hold up the rooms of the others."""
        return ""

    @abc.abstractmethod
    async def subscribe(self, room: str) -> None:
        """Start receiving the room's events; returns once the subscription is active."""

    @abc.abstractmethod
    async def unsubscribe(self, room: str) -> None:
        """Stop receiving the room's events."""
