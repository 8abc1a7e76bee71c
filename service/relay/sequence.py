"""Keeps one durable room's live feed on this server gap-free and duplicate-free.

Redis Pub/Sub is at-most-once: a message published while this server's subscriber
connection was down or lagging is simply not delivered to it. Every durable event has
an offset (+1 per event within an epoch), so the server can tell: it remembers the last
offset it fanned out. The next one is delivered at once; an older one is a duplicate
and dropped; a jump means events are missing, so they are read from the room's history
before anything newer goes out (newer arrivals wait in a bounded buffer meanwhile).

When the history cannot close the gap (it was trimmed, or the epoch changed because
Redis lost the room), members are told with an unsolicited `joined` carrying
`recovered: false`, which the protocol defines as "re-sync your state", and the feed
continues from where the history resumes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from redis.backoff import FullJitterBackoff

from relay import tracing
from relay.broker import BrokerUnavailable, Delivery, History

log = logging.getLogger("relay.sequence")

PENDING_LIMIT = 10_000
"""Arrivals buffered during a history read; past it they are dropped (and re-read)."""
READ_BACKOFF = FullJitterBackoff(cap=2.0, base=0.05)
"""Pause between failed history reads: random up to 0.05 s * 2**n, at most 2 s."""
READ_GIVE_UP_SECONDS = 30.0
"""A history read failing this long is abandoned: the gap is skipped and members are
told to re-sync (unsolicited `joined`, `recovered: false`), as for a trimmed history."""

Fetch = Callable[[int], Awaitable[History]]


class RoomSequence:
    def __init__(
        self,
        room: str,
        history: History,
        *,
        fetch: Fetch,
        emit: Callable[[Delivery], None],
        resync: Callable[[int, str], None],
    ) -> None:
        self.room = room
        self.epoch = history.epoch
        self.last = history.top
        self._fetch = fetch
        self._emit = emit
        self._resync = resync
        self._pending: list[Delivery] = []
        self._filling: asyncio.Task[None] | None = None
        self._refill = False
        """Set when something may be missing that the running read started too early to
        see (a dropped arrival, a heal request): one more read follows it."""

    def accept(self, delivery: Delivery) -> None:
        """One event from the live feed (called by the broker's reader, must not block)."""
        if delivery.offset is None or delivery.epoch is None:
            return  # not a durable event (a pod with other room policies sent it)
        if self._filling is not None:
            if len(self._pending) < PENDING_LIMIT:
                self._pending.append(delivery)
            else:
                self._refill = True  # dropped here; the next history read brings it
            return
        offset = delivery.offset
        if delivery.epoch != self.epoch:
            log.info("room %s: epoch %s -> %s", self.room, self.epoch, delivery.epoch)
            self.epoch, self.last = delivery.epoch, 0
            self._resync(0, self.epoch)
        if offset <= self.last:
            return
        if offset == self.last + 1:
            self.last = offset
            self._emit(delivery)
            return
        log.info(
            "room %s: offset %d arrived after %d; reading the gap", self.room, offset, self.last
        )
        self._pending.append(delivery)
        self.fill()

    def fill(self) -> asyncio.Task[None]:
        """Read what is missing from history (once at a time) and deliver it in order."""
        if self._filling is None:
            self._filling = asyncio.create_task(self._fill(), name=f"fill {self.room}")
        else:
            self._refill = True
        return self._filling

    async def catch_up(self, offset: int, epoch: str) -> None:
        """Return once everything up to `offset` of `epoch` has been delivered here.

        `offset` and `epoch` come from the caller's read of the room's history; if the
        epoch differs from this server's feed, a read of its own settles which is current.
        """
        for _ in range(10):  # each read reaches the top it saw; more rounds are a guard
            if self._filling is None and self.epoch != epoch:
                # The caller saw another history than this server's feed: one read of our
                # own decides which is current (it adopts a newer one, members re-sync).
                await asyncio.shield(self.fill())
                return
            if self._filling is None and self.last >= offset:
                return
            await asyncio.shield(self.fill())

    def close(self) -> None:
        if self._filling is not None:
            self._filling.cancel()

    async def _fill(self) -> None:
        unreadable = False
        try:
            try:
                history = await self._read()
            except BrokerUnavailable:
                unreadable = True
            else:
                if history.epoch != self.epoch:
                    # The room's history was lost (Redis restarted without it, or the room
                    # moved shard): what came before is gone; continue from the new top.
                    self.epoch, self.last = history.epoch, history.top
                    self._resync(self.last, self.epoch)
                else:
                    self._replay(history)
        finally:
            self._filling = None
        # Arrivals of another epoch than the one now current are stale; the rest go in
        # offset order through the normal path (which may start another read).
        pending = sorted((d for d in self._pending if d.epoch == self.epoch), key=_offset)
        if len(pending) < len(self._pending):
            self._refill = True  # another epoch showed up meanwhile: read which is current
        self._pending = []
        if unreadable:
            self._give_up(pending)
        for delivery in pending:
            self.accept(delivery)
        if self._refill and self._filling is None:
            self._refill = False
            self.fill()

    async def _read(self) -> History:
        """The history after `last`; retried with backoff, BrokerUnavailable after the bound."""
        deadline = time.monotonic() + READ_GIVE_UP_SECONDS
        failures = 0
        while True:
            try:
                return await self._fetch(self.last)
            except BrokerUnavailable as exc:
                failures += 1
                delay = READ_BACKOFF.compute(failures)
                if time.monotonic() + delay > deadline:
                    raise
                log.info("room %s: history read failed (%s), retrying", self.room, exc)
                await asyncio.sleep(delay)

    def _give_up(self, pending: list[Delivery]) -> None:
        """The history stayed unreadable: continue after the gap; members re-sync.

        Nothing newer arrived (`pending` empty): nothing to skip; the next arrival past
        the gap starts a read of its own.
        """
        self._refill = False
        log.warning(
            "room %s: history unreadable for %.0fs; continuing after the gap",
            self.room,
            READ_GIVE_UP_SECONDS,
        )
        if pending and _offset(pending[0]) > self.last + 1:
            self.last = _offset(pending[0]) - 1
            self._resync(self.last, self.epoch)

    def _replay(self, history: History) -> None:
        entries = [d for d in history.entries if (d.offset or 0) > self.last]
        if entries and entries[0].offset != self.last + 1:
            first = entries[0].offset or 0
            log.warning(
                "room %s: offsets %d..%d were trimmed from history",
                self.room,
                self.last + 1,
                first - 1,
            )
            self.last = first - 1
            self._resync(self.last, self.epoch)
        elif not entries and history.top > self.last:
            self.last = history.top  # everything missing is gone from history
            self._resync(self.last, self.epoch)
        if not entries:
            return
        with tracing.replaying(self.room, entries, reason="gap"):
            for delivery in entries:
                if delivery.offset == self.last + 1:
                    self.last += 1
                    self._emit(delivery)


def _offset(delivery: Delivery) -> int:
    return delivery.offset or 0
