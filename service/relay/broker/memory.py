"""The embedded single-node broker: every publish is delivered in-process.

The default when no Redis is configured, so `relay serve` works on a bare laptop and
tests of client logic need no Redis. It keeps the same guarantees as the Redis broker
on one node: offsets per room grow by one, durable rooms keep a bounded history that an
idle room loses after its TTL, and publish ids are deduplicated for the window. All of
it lives in this process: a restart starts a new epoch.
"""

from __future__ import annotations

import secrets
import time
from collections import deque
from typing import Any

from relay import protocol
from relay.broker import keys
from relay.broker.base import Broker, Delivery, History, PublishResult
from relay.rooms import RoomPolicy


class _Room:
    __slots__ = ("history", "offset", "touched")

    def __init__(self, size: int) -> None:
        self.offset = 0
        self.history: deque[Delivery] = deque(maxlen=size)
        self.touched = time.monotonic()


class MemoryBroker(Broker):
    def __init__(self, node_id: str, *, dedupe_seconds: float = 300) -> None:
        super().__init__()
        self._node_id = node_id
        self._epoch = secrets.token_hex(4)
        self._rooms: dict[str, _Room] = {}
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
        delivery = Delivery(room, payload, ts, state.offset, self._epoch, self._node_id, trace)
        if policy.durable:
            state.history.append(delivery)
        result = PublishResult(state.offset, self._epoch)
        if key is not None:
            self._seen[key] = (time.monotonic() + self._dedupe_seconds, result)
        if room in self._subscribed:
            self._deliver(delivery)
        return result

    async def history(self, room: str, after: int | None, policy: RoomPolicy) -> History:
        state = self._room(room, policy, publishing=False)
        entries = [] if after is None else [d for d in state.history if (d.offset or 0) > after]
        return History(self._epoch, state.offset, entries)

    async def subscribe(self, room: str) -> None:
        self._subscribed.add(room)

    async def unsubscribe(self, room: str) -> None:
        self._subscribed.discard(room)

    def _room(self, room: str, policy: RoomPolicy, *, publishing: bool = True) -> _Room:
        """The room's state; only a publish ends its idleness (as Redis's EXPIRE does)."""
        state = self._rooms.get(room)
        now = time.monotonic()
        if state is None or now - state.touched > policy.history_ttl_seconds:
            # Idle past its TTL: the history is gone. Offsets continue (one epoch per
            # process), so a resume from before the gap reports recovered: false.
            fresh = _Room(policy.history_size)
            fresh.offset = state.offset if state is not None else 0
            state = self._rooms[room] = fresh
        if publishing:
            state.touched = now
        return state

    def _recall(self, key: str) -> PublishResult | None:
        now = time.monotonic()
        while self._seen:
            oldest = next(iter(self._seen))
            if self._seen[oldest][0] > now:
                break
            del self._seen[oldest]
        entry = self._seen.get(key)
        return entry[1] if entry is not None else None
