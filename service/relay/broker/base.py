"""What every broker offers the hub: publish, subscribe by room, and deliveries back.

A broker turns one publish into one `Delivery` on every relay server that subscribed
the room (this one included). It encodes the client-facing `event` message once, on the
publishing side, so no receiving server re-serialises anything: the hub hands the same
bytes to every local member.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


class BrokerUnavailable(Exception):
    """The broker cannot take the request now (Redis down or unreachable); retry later."""


@dataclass(frozen=True, slots=True)
class Delivery:
    """One event arriving for a room, ready to fan out."""

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


@dataclass(frozen=True, slots=True)
class PublishResult:
    offset: int | None
    epoch: str | None


Listener = Callable[[Delivery], None]


class Broker(abc.ABC):
    """The bus between relay servers.

    Deliveries are handed to the listener synchronously from the broker's reader; the
    listener must not block (the hub only queues bytes).
    """

    def __init__(self) -> None:
        self._listener: Listener | None = None

    def set_listener(self, listener: Listener) -> None:
        self._listener = listener

    def _deliver(self, delivery: Delivery) -> None:
        if self._listener is not None:
            self._listener(delivery)

    @property
    @abc.abstractmethod
    def ready(self) -> bool:
        """True while the broker can publish and deliver (feeds /readyz)."""

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
        trace: dict[str, str] | None = None,
        sender: str | None = None,
    ) -> PublishResult:
        """Send an event to every server subscribed to `room`.

        `sender` (the publisher's authenticated subject) goes into the event as `from`.

        Raises BrokerUnavailable when the event could not be handed over; it was then
        not sent, so the caller may report failure without risking a silent loss.
        Raises relay.protocol.ProtocolError when `data` cannot be encoded.
        """

    @abc.abstractmethod
    async def subscribe(self, room: str) -> None:
        """Start receiving the room's events; returns once the subscription is active."""

    @abc.abstractmethod
    async def unsubscribe(self, room: str) -> None:
        """Stop receiving the room's events."""

    @abc.abstractmethod
    async def position(self, room: str) -> PublishResult:
        """The room's last offset and epoch, as reported in `joined` (None where not kept)."""
