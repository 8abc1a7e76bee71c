"""The embedded single-node broker: every publish is delivered in-process.

The default when no Redis is configured, so `relay serve` works on a bare laptop and
tests of client logic need no Redis. It keeps the same guarantees as the Redis broker
on one node: offsets per room grow by one, durable rooms keep a bounded history that an
idle room loses after its TTL, and publish ids are deduplicated for the window. All of
it lives in this process: a restart starts a new epoch.

Rooms are forgotten when idle: past their history TTL, or after EMPTY_ROOM_SECONDS when
they never had an event (a join creates one), unless this server is subscribed to them;
and at most MAX_ROOMS are kept. A room created again gets a new epoch, so an offset is
never reused within one epoch.
"""

from __future__ import annotations

import secrets
import time
from collections import deque
from typing import Any

from relay import protocol
from relay.broker import keys
from relay.broker.base import Broker, Delivery, History, PublishResult
from relay.rooms import EMPTY_ROOM_SECONDS, RoomPolicy

MAX_ROOMS = 100_000
"""Rooms kept at most. Bound and overflow policy: past it, the least recently used
rooms nobody here is subscribed to are forgotten with their history (a resume there
gets `recovered: false`), as Redis would evict them."""
SWEEP_STEP = 4
"""Rooms looked at per room access when forgetting idle ones: amortised, no timer."""


class _Room:
    __slots__ = ("epoch", "history", "offset", "touched", "ttl")

    def __init__(self, policy: RoomPolicy) -> None:
        self.epoch = secrets.token_hex(4)
        self.offset = 0
        self.history: deque[Delivery] = deque(maxlen=policy.history_size)
        self.touched = time.monotonic()
        self.ttl = policy.history_ttl_seconds

    def idle_limit(self) -> float:
        """How long it is kept unused: its history TTL; briefly if it never had an event."""
        return self.ttl if self.offset else min(EMPTY_ROOM_SECONDS, self.ttl)


class MemoryBroker(Broker):
    def __init__(self, node_id: str, *, dedupe_seconds: float = 300) -> None:
        super().__init__()
        self._node_id = node_id
        self._rooms: dict[str, _Room] = {}
        """Roughly least recently used first: an access, or a sweep that keeps a room,
        moves it to the end."""
        self._subscribed: set[str] = set()
        self._dedupe_seconds = dedupe_seconds
        # Insertion-ordered, and every entry lives equally long: expired ones sit in front.
        self._seen: dict[str, tuple[float, PublishResult]] = {}

    @property
    def ready(self) -> bool:
        return True

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        self._subscribed.clear()

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
        key = keys.dedupe(room, subject, msg_id) if msg_id is not None else None
        if key is not None:
            seen = self._recall(key)
            if seen is not None:
                return PublishResult(seen.offset, seen.epoch, duplicate=True)
        state = self._room(room, policy)
        payload = protocol.event(
            room, state.offset + 1, data, ts, subject
        )  # may raise: nothing taken
        state.offset += 1
        delivery = Delivery(room, payload, ts, state.offset, state.epoch, self._node_id, trace)
        if policy.durable:
            state.history.append(delivery)
        result = PublishResult(state.offset, state.epoch)
        if key is not None:
            self._seen[key] = (time.monotonic() + self._dedupe_seconds, result)
        if room in self._subscribed:
            self._deliver(delivery)
        return result

    async def history(
        self, room: str, after: int | None, policy: RoomPolicy, *, limit: int | None = None
    ) -> History:
        state = self._room(room, policy, publishing=False)
        entries = [] if after is None else [d for d in state.history if (d.offset or 0) > after]
        if limit is not None:
            del entries[limit:]
        return History(state.epoch, state.offset, entries)

    async def subscribe(self, room: str) -> None:
        self._subscribed.add(room)

    async def unsubscribe(self, room: str) -> None:
        self._subscribed.discard(room)

    @property
    def room_count(self) -> int:
        return len(self._rooms)

    def _room(self, room: str, policy: RoomPolicy, *, publishing: bool = True) -> _Room:
        """The room's state; only a publish ends its idleness (as Redis's EXPIRE does)."""
        now = time.monotonic()
        state = self._rooms.pop(room, None)
        if state is None or now - state.touched > state.idle_limit():
            # New, or idle past its TTL: the history is gone; a new epoch tells resumes.
            state = _Room(policy)
            state.touched = now
        if publishing:
            state.touched = now
        self._sweep(now)  # before it is back in line: the room in hand is never swept
        self._rooms[room] = state
        return state

    def _sweep(self, now: float) -> None:
        """Look at the SWEEP_STEP oldest rooms: forget the idle ones (all unsubscribed
        ones while over MAX_ROOMS), send the others to the back of the line."""
        for _ in range(min(SWEEP_STEP, len(self._rooms))):
            name = next(iter(self._rooms))
            state = self._rooms.pop(name)
            full = len(self._rooms) + 1 >= MAX_ROOMS  # with the room in hand, once back
            idle = now - state.touched > state.idle_limit() or full
            if not idle or name in self._subscribed:
                self._rooms[name] = state

    def _recall(self, key: str) -> PublishResult | None:
        now = time.monotonic()
        while self._seen:
            oldest = next(iter(self._seen))
            if self._seen[oldest][0] > now:
                break
            del self._seen[oldest]
        entry = self._seen.get(key)
        return entry[1] if entry is not None else None
