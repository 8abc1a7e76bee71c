"""Room delivery policies: which rooms are durable (history, resume) and which volatile.

Chosen by server configuration (`RELAY_ROOMS`, glob patterns on the room name, first
match wins), never by the client. Rooms that match no rule are durable with the
default history.
"""

from __future__ import annotations

from collections.abc import Sequence
from fnmatch import fnmatchcase
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

CACHE_SIZE = 10_000
EMPTY_ROOM_SECONDS = 60
"""A durable room that never had an event is forgotten after this long without a join
(capped by its history TTL): joins alone, to any number of names, keep little state.
A client that resumes such a room later gets `recovered: false` (nothing was lost)."""


class RoomPolicy(BaseModel):
    """One rule of RELAY_ROOMS, e.g. {"match": "pos:*", "policy": "volatile"}."""

    model_config = ConfigDict(frozen=True, populate_by_name=True, extra="forbid")

    match: str = Field("*", min_length=1)
    """Glob pattern on the room name (`*`, `?`, `[...]`)."""
    policy: Literal["durable", "volatile"] = "durable"
    """durable: history with offsets and resume; volatile: plain Pub/Sub, no history."""
    history_size: int = Field(1000, alias="historySize", ge=1, le=1_000_000)
    """Events kept per room (durable)."""
    history_ttl_seconds: int = Field(3600, alias="historyTTLSeconds", ge=1)
    """A durable room's history is dropped after it has been idle this long (new epoch)."""
    presence: bool = False
    """Members see who else is in the room (`presence` messages, op `presence`)."""

    @property
    def durable(self) -> bool:
        return self.policy == "durable"


DEFAULT_POLICY = RoomPolicy()


class RoomPolicies:
    """First-match-wins lookup over the configured rules, cached per room name."""

    def __init__(self, rules: Sequence[RoomPolicy]) -> None:
        self._rules = tuple(rules)
        self._cache: dict[str, RoomPolicy] = {}

    def for_room(self, room: str) -> RoomPolicy:
        policy = self._cache.get(room)
        if policy is None:
            policy = next((r for r in self._rules if fnmatchcase(room, r.match)), DEFAULT_POLICY)
            if len(self._cache) >= CACHE_SIZE:
                self._cache.clear()
            self._cache[room] = policy
        return policy
