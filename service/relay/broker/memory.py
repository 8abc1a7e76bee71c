"""The embedded single-node broker: every publish is delivered in-process.

The default when no Redis is configured, so `relay serve` works on a bare laptop and
tests of client logic need no Redis. Offsets per room grow by one, under one epoch
chosen at start (a restart loses everything, hence a new epoch).
"""

from __future__ import annotations

import secrets
from typing import Any

from relay import protocol
from relay.broker.base import Broker, Delivery, PublishResult


class MemoryBroker(Broker):
    def __init__(self, node_id: str) -> None:
        super().__init__()
        self._node_id = node_id
        self._epoch = secrets.token_hex(4)
        self._offsets: dict[str, int] = {}
        self._subscribed: set[str] = set()

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
        trace: dict[str, str] | None = None,
        sender: str | None = None,
    ) -> PublishResult:
        offset = self._offsets.get(room, 0) + 1
        payload = protocol.event(room, offset, data, ts, sender)  # raises before taking the offset
        self._offsets[room] = offset
        if room in self._subscribed:
            self._deliver(Delivery(room, payload, ts, offset, self._epoch, self._node_id, trace))
        return PublishResult(offset, self._epoch)

    async def subscribe(self, room: str) -> None:
        self._subscribed.add(room)

    async def unsubscribe(self, room: str) -> None:
        self._subscribed.discard(room)

    async def position(self, room: str) -> PublishResult:
        return PublishResult(self._offsets.get(room, 0), self._epoch)
