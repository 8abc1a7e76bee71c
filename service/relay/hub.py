"""Rooms and their local members; one broker subscription per room in use.

A room is subscribed on the broker while at least one local connection is in it
(reference counting by membership). When the last member leaves, the subscription is
kept for `unsubscribe_delay` seconds so that clients flapping in and out do not churn
SUBSCRIBE/UNSUBSCRIBE. An arriving event is handed, as the same bytes, to every local
member's outbox; nothing in the fan-out loop awaits or encodes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Protocol

from relay import tracing
from relay.broker import Broker, Delivery
from relay.metrics import Metrics

log = logging.getLogger("relay.hub")


class Member(Protocol):
    def push(self, payload: bytes) -> None: ...


class _Room:
    __slots__ = ("members", "subscribed", "unsubscribe_timer")

    def __init__(self, subscribed: asyncio.Future[None]) -> None:
        self.members: set[Member] = set()
        self.subscribed = subscribed
        self.unsubscribe_timer: asyncio.TimerHandle | None = None


class Hub:
    def __init__(self, broker: Broker, metrics: Metrics, *, unsubscribe_delay: float) -> None:
        self._broker = broker
        self._metrics = metrics
        self._unsubscribe_delay = unsubscribe_delay
        self._rooms: dict[str, _Room] = {}
        self._unsubscribing: dict[str, asyncio.Task[None]] = {}
        broker.set_listener(self.deliver)

    @property
    def room_count(self) -> int:
        return len(self._rooms)

    def is_subscribed(self, room: str) -> bool:
        return room in self._rooms

    async def join(self, member: Member, room: str) -> None:
        """Add `member` to `room` once the broker delivers the room's events here.

        Raises BrokerUnavailable when the subscription cannot be made; the member is then
        not in the room. On return the member is in the room, with no await in between,
        so the caller's next message (e.g. `joined`) precedes any event.
        """
        entry = self._rooms.get(room)
        if entry is None:
            entry = await self._subscribe(room)
        elif not entry.subscribed.done():
            await asyncio.shield(entry.subscribed)
        if entry.unsubscribe_timer is not None:
            entry.unsubscribe_timer.cancel()
            entry.unsubscribe_timer = None
        entry.members.add(member)

    def leave(self, member: Member, room: str) -> None:
        entry = self._rooms.get(room)
        if entry is None:
            return
        entry.members.discard(member)
        if not entry.members and entry.unsubscribe_timer is None and entry.subscribed.done():
            loop = asyncio.get_running_loop()
            entry.unsubscribe_timer = loop.call_later(
                self._unsubscribe_delay, self._release, room, entry
            )

    def deliver(self, delivery: Delivery) -> None:
        entry = self._rooms.get(delivery.room)
        if entry is None or not entry.members:
            return
        span = tracing.process_start(delivery) if tracing.tracer is not None else None
        payload = delivery.payload
        for member in entry.members:
            member.push(payload)
        self._metrics.delivered.inc(len(entry.members))
        self._metrics.delivery_latency.observe(max(0.0, time.time() - delivery.ts / 1000))
        if span is not None:
            tracing.process_end(span, len(entry.members))

    async def close(self) -> None:
        for entry in self._rooms.values():
            if entry.unsubscribe_timer is not None:
                entry.unsubscribe_timer.cancel()
        self._rooms.clear()
        await asyncio.gather(*self._unsubscribing.values(), return_exceptions=True)

    async def _subscribe(self, room: str) -> _Room:
        # Wait out an UNSUBSCRIBE still in flight, so it cannot land after our SUBSCRIBE.
        pending = self._unsubscribing.get(room)
        if pending is not None:
            await asyncio.shield(pending)
        entry = self._rooms.get(room)
        if entry is not None:  # another member subscribed it while we waited
            await asyncio.shield(entry.subscribed)
            return entry
        entry = _Room(asyncio.get_running_loop().create_future())
        self._rooms[room] = entry
        try:
            await self._broker.subscribe(room)
        except BaseException as exc:
            if self._rooms.get(room) is entry:
                del self._rooms[room]
            if isinstance(exc, asyncio.CancelledError):
                entry.subscribed.cancel()
            else:
                entry.subscribed.set_exception(exc)
                entry.subscribed.exception()  # retrieved here; other waiters re-raise it
            raise
        entry.subscribed.set_result(None)
        return entry

    def _release(self, room: str, entry: _Room) -> None:
        entry.unsubscribe_timer = None
        if entry.members or self._rooms.get(room) is not entry:
            return
        del self._rooms[room]
        task = asyncio.create_task(self._broker.unsubscribe(room), name=f"unsubscribe {room}")
        self._unsubscribing[room] = task
        task.add_done_callback(lambda done: self._forget_unsubscribe(room, done))

    def _forget_unsubscribe(self, room: str, task: asyncio.Task[None]) -> None:
        if self._unsubscribing.get(room) is task:
            del self._unsubscribing[room]
