"""Rooms and their local members; one broker subscription per room in use.

A room is subscribed on the broker while at least one local connection is in it
(reference counting by membership). When the last member leaves, the subscription is
kept for `unsubscribe_delay` seconds so that clients flapping in and out do not churn
SUBSCRIBE/UNSUBSCRIBE. An arriving event is handed, as the same bytes, to every local
member's outbox; nothing in the fan-out loop awaits or encodes.

Durable rooms add ordering (relay.sequence) and resume: a joining member is first
"catching up": live events for it are buffered (bounded: see _CatchUp) while its missed
events are read from history; then it gets `joined`, the missed events and the buffered
live ones newer than those, paced by its socket's write readiness so a replay never
sits in memory beyond the send queue; after the last buffered event, with no await in
between, it becomes a live member. Subscribe first, read history second, merge by
offset: no gap and no duplicate across the switch.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Protocol, TypeVar

from relay import protocol, tracing
from relay.broker import Broker, BrokerUnavailable, Delivery, History
from relay.core import Core
from relay.metrics import Metrics
from relay.protocol import Position
from relay.rooms import RoomPolicies, RoomPolicy
from relay.sequence import PENDING_LIMIT, RoomSequence

log = logging.getLogger("relay.hub")

T = TypeVar("T")


CATCH_UP_SECONDS = 10.0
"""Longest a join waits for this server's feed of a durable room to reach the position
it read (a history read that keeps failing): then the join fails with `unavailable`, so
a stuck catch-up never holds the session's reader."""

JOIN_READS = 32
"""History reads of joins in flight on this server at once, per Redis shard (a slow shard
holds up only its own rooms' joins): a join's position and first page, a resume's later
pages, a room's first read. More joins wait their turn, first come first served; how
many can wait is bounded by the connections (a session handles one message at a time:
RELAY_MAX_CONNECTIONS). The bound sits below redis-py's pool (100 connections per shard),
which fails a command at once when it is empty: without it, a resume storm (a dead pod's
clients all rejoining here) emptied the pool and most joins failed with `unavailable` and
were retried (bench/resume_storm.py: 5,119 refusals for 5,000 resumes). The rest of the
pool stays for other commands, among them the reads that keep live feeds gap-free
(sequence fills: not bounded here, at most one per room).
"""


JOIN_READ_WAIT_SECONDS = CATCH_UP_SECONDS
"""Longest a join waits for one of the JOIN_READS slots: then `unavailable` (the client
retries with backoff). Without it a shard that stalls under a queue of joins held each
queued session for (its place / JOIN_READS) command timeouts: minutes for thousands."""


class Member(Protocol):
    def push(self, payload: bytes) -> None:
        """Queue one message (no await); the member applies its own send-queue bound."""

    async def replay(self, payloads: list[bytes]) -> None:
        """Send these in order, paced by the socket's write readiness; returns early when
        the member is closed (nothing more can reach it)."""

    def overflow(self) -> None:
        """Its catch-up buffer is full: drop it as a slow consumer (it resumes with since)."""


class MemberSet(Protocol):
    """A room's local members: a set of them that pushes to all at once (relay.hub.Members,
    or the compiled core's, see `member_sets`, which looks a member's `push` up once, when
    it is added: a session's is its outbox's, fixed for the session's life)."""

    def add(self, member: Member) -> None: ...
    def discard(self, member: Member) -> None: ...
    def __contains__(self, member: object) -> bool: ...
    def __len__(self) -> int: ...
    def push_all(self, payload: bytes) -> int:
        """`member.push(payload)` for each member; how many were pushed to. A member whose
        push raises costs the others nothing: the first such error is raised at the end."""


class Members(set[Member]):
    """The pure-Python MemberSet: the fallback (RELAY_CORE=off, no core installed) and the
    reference for the compiled core's (gamecluster_core.Members; tests/unit/test_hub.py
    runs both)."""

    __slots__ = ()

    def push_all(self, payload: bytes) -> int:
        # Over a snapshot: a push may change the set (an overflow drops a slow consumer,
        # which may leave its rooms); a member removed meanwhile is still pushed to (a
        # no-op on its closed outbox), one added meanwhile is not.
        members = tuple(self)
        failure: Exception | None = None
        for member in members:
            try:
                member.push(payload)
            except Exception as exc:  # one member's failure costs the others nothing
                failure = failure or exc
        if failure is not None:
            raise failure
        return len(members)


def _push_all(members: MemberSet, payload: bytes, room: str) -> int:
    """`members.push_all`, whose error (the first member's that failed, raised once every
    member was pushed to) is logged here: the fan-out is complete by then."""
    try:
        return members.push_all(payload)
    except Exception:
        log.exception("a member of room %r failed to take a message", room)
        return len(members)


def member_sets(core: Core) -> Callable[[], MemberSet]:
    """What makes a room's member set: the compiled core's when it is in use (its loop
    pushes to the sessions' core outboxes without a Python call each), else Members."""
    if core.module is not None:
        made: Callable[[], MemberSet] = core.module.Members
        return made
    return Members


class PresenceObserver(Protocol):
    """Told of every local membership change (relay.presence); must not block."""

    def joined(self, room: str, member: object) -> None: ...
    def left(self, room: str, member: object) -> None: ...


@dataclass(frozen=True, slots=True)
class JoinResult:
    offset: int | None
    epoch: str | None
    recovered: bool | None
    """None when the join asked for no recovery."""


class _CatchUp:
    """Live events of a room for a member still catching up (reading or replaying history).

    Bound and overflow policy: at most `limit` events (the member's send queue). One more
    and the member is dropped as a slow consumer (close 4008; it resumes with `since`,
    losing nothing), and this buffer stops taking events.

    It takes events only once `open`: when the member's history read holds its read slot
    (JOIN_READS). Events before that are in the read; buffering them while the join
    waits its turn in a storm filled the buffer of a busy room's joiner, which was
    dropped and queued again. Registered (not open) from the start of the join all the
    same, so the room is not released while the join waits.
    """

    __slots__ = ("events", "limit", "member", "open", "overflowed")

    def __init__(self, member: Member, limit: int) -> None:
        self.member = member
        self.limit = limit
        self.events: list[Delivery] = []
        self.open = False
        self.overflowed = False

    def add(self, delivery: Delivery) -> None:
        if self.overflowed or not self.open:
            return
        if len(self.events) >= self.limit:
            self.overflowed = True
            self.events = []
            self.member.overflow()
            return
        self.events.append(delivery)

    def take(self) -> list[Delivery]:
        events, self.events = self.events, []
        return events


class _Room:
    __slots__ = (
        "catching_up",
        "early",
        "early_dropped",
        "members",
        "sequence",
        "subscribed",
        "unsubscribe_timer",
    )

    def __init__(self, subscribed: asyncio.Future[None], members: MemberSet) -> None:
        self.members = members
        self.catching_up: dict[Member, _CatchUp] = {}
        self.subscribed = subscribed
        self.unsubscribe_timer: asyncio.TimerHandle | None = None
        self.sequence: RoomSequence | None = None
        self.early: list[Delivery] | None = None
        """Durable rooms: arrivals between SUBSCRIBE and the first history read. Bound
        and overflow policy: PENDING_LIMIT (relay.sequence); past it arrivals are dropped
        and the sequence reads history once it starts (the history has them)."""
        self.early_dropped = False


class Hub:
    def __init__(
        self,
        broker: Broker,
        metrics: Metrics,
        policies: RoomPolicies,
        *,
        unsubscribe_delay: float,
        catch_up_limit: int = 1000,
        member_set: Callable[[], MemberSet] = Members,
    ) -> None:
        self._member_set = member_set
        """Makes a room's MemberSet (`member_sets`)."""
        self._join_reads: dict[str, asyncio.Semaphore] = {}
        self._waiting: set[Member] = set()
        """Joining members whose join waits for a read slot or for another join's first
        read of the room (nothing of theirs in flight): see `waiting`. Bound: one entry
        per session (a session handles one message at a time)."""
        """Per broker placement (shard), held for one history read of a join: see
        JOIN_READS. Bound: one entry per shard of the configuration."""
        self._catch_up_limit = catch_up_limit
        """Live events buffered per joining member (RELAY_SEND_QUEUE); see _CatchUp."""
        self._broker = broker
        self._metrics = metrics
        self._policies = policies
        self._unsubscribe_delay = unsubscribe_delay
        self._rooms: dict[str, _Room] = {}
        self._unsubscribing: dict[str, asyncio.Task[None]] = {}
        self.presence: PresenceObserver | None = None
        broker.set_listener(self.deliver, self.heal)

    @property
    def room_count(self) -> int:
        return len(self._rooms)

    def is_subscribed(self, room: str) -> bool:
        return room in self._rooms

    def waiting(self, member: Member) -> bool:
        """Whether `member`'s join is only waiting (for a JOIN_READS slot, or for the
        room's first read by another join): cancelling it there is safe, nothing of its
        own is in flight. A session that ends meanwhile cancels it, so a client gone
        from a queue of joins neither stays counted nor takes its turn at Redis."""
        return member in self._waiting

    def local_rooms(self) -> dict[str, int]:
        """Rooms with local members, and how many (node reports, GET /rooms)."""
        return {room: len(entry.members) for room, entry in self._rooms.items() if entry.members}

    async def join(
        self,
        member: Member,
        room: str,
        since: Position | None,
        announce: Callable[[JoinResult], None],
    ) -> None:
        """Add `member` to `room`; `announce` is called right before its first event.

        Raises BrokerUnavailable when the room cannot be subscribed or its history not
        read; the member is then not in the room.
        """
        policy = self._policies.for_room(room)
        entry = await self._subscribed(room, policy, member)
        if entry.unsubscribe_timer is not None:
            entry.unsubscribe_timer.cancel()
            entry.unsubscribe_timer = None
        if entry.sequence is None:  # volatile: no history, no positions
            announce(JoinResult(None, None, None if since is None else False))
            entry.members.add(member)
            if self.presence is not None:
                self.presence.joined(room, member)
            return
        buffered = entry.catching_up[member] = _CatchUp(member, self._catch_up_limit)
        sequence = entry.sequence
        try:
            for _ in range(2):
                result, missed = await self._recover(buffered, room, policy, since)
                await self._caught_up(sequence, result)
                if sequence.epoch == result.epoch:
                    break
                # The room's history was replaced while we read it: read it again.
            announce(result)
            # The missed events, a page at a time, then what arrived meanwhile, paced by
            # the member's socket; live events go to `buffered` until the last await.
            top = result.offset or 0
            page = missed
            while page:
                with tracing.replaying(room, page, reason="resume"):
                    await member.replay([d.payload for d in page])
                last = page[-1].offset or 0
                if last >= top or buffered.overflowed:
                    break
                page = await self._next_page(member, room, policy, result, last)
            while not buffered.overflowed:
                fresh = [
                    d for d in buffered.take() if d.epoch == result.epoch and (d.offset or 0) > top
                ]
                if not fresh:
                    break
                top = fresh[-1].offset or top
                await member.replay([d.payload for d in fresh])
        except BaseException:
            del entry.catching_up[member]
            self.leave(member, room)  # not a member: an emptied room is released as usual
            raise
        del entry.catching_up[member]
        entry.members.add(member)
        if self.presence is not None:
            self.presence.joined(room, member)
        if entry.unsubscribe_timer is not None:  # a leave elsewhere emptied it meanwhile
            entry.unsubscribe_timer.cancel()
            entry.unsubscribe_timer = None

    async def _caught_up(self, sequence: RoomSequence, result: JoinResult) -> None:
        """Wait, within CATCH_UP_SECONDS, until this server's feed reached `result`."""
        try:
            async with asyncio.timeout(CATCH_UP_SECONDS):
                await _shared(sequence.catch_up(result.offset or 0, result.epoch or ""))
        except TimeoutError:
            raise BrokerUnavailable(
                f"the room's feed did not catch up within {CATCH_UP_SECONDS:g}s"
            ) from None

    @contextlib.asynccontextmanager
    async def _reading(self, room: str, member: Member | None = None) -> AsyncIterator[None]:
        """Hold one of the room's shard's JOIN_READS slots, waited for at most
        JOIN_READ_WAIT_SECONDS (else BrokerUnavailable); `member`, whose join waits for
        it, is `waiting` meanwhile."""
        slot = self._read_slot(room)
        try:
            with self._waiting_for(member):
                async with asyncio.timeout(JOIN_READ_WAIT_SECONDS):
                    await slot.acquire()
        except TimeoutError:
            raise BrokerUnavailable(
                f"{JOIN_READS} history reads are in flight on the shard of {room!r} and none "
                f"ended within {JOIN_READ_WAIT_SECONDS:g}s"
            ) from None
        try:
            yield
        finally:
            slot.release()

    @contextlib.contextmanager
    def _waiting_for(self, member: Member | None) -> Iterator[None]:
        """Mark `member` `waiting` around an await that is safe to cancel. Unmarked with
        no await after the wait ends, so a cancel can never reach what follows it (a
        redis-py command must not be cancelled mid-flight: RedisShard._supervise)."""
        if member is None:
            yield
            return
        self._waiting.add(member)
        try:
            yield
        finally:
            self._waiting.discard(member)

    def _read_slot(self, room: str) -> asyncio.Semaphore:
        """The bound on joins' history reads of the shard that holds `room`."""
        placement = self._broker.placement(room)
        slot = self._join_reads.get(placement)
        if slot is None:
            slot = self._join_reads[placement] = asyncio.Semaphore(JOIN_READS)
        return slot

    def leave(self, member: Member, room: str) -> None:
        entry = self._rooms.get(room)
        if entry is None:
            return
        if member in entry.members and self.presence is not None:
            self.presence.left(room, member)
        entry.members.discard(member)
        if (
            not entry.members
            and not entry.catching_up
            and entry.unsubscribe_timer is None
            and entry.subscribed.done()
        ):
            loop = asyncio.get_running_loop()
            entry.unsubscribe_timer = loop.call_later(
                self._unsubscribe_delay, self._release, room, entry
            )

    def deliver(self, delivery: Delivery) -> None:
        """A delivery from the broker: ordered (durable rooms), then fanned out."""
        entry = self._rooms.get(delivery.room)
        if entry is None:
            return
        if entry.sequence is not None:
            entry.sequence.accept(delivery)
        elif entry.early is not None:
            if len(entry.early) < PENDING_LIMIT:
                entry.early.append(delivery)
            else:
                entry.early_dropped = True  # read from history once the sequence starts
        else:
            self._fan_out(entry, delivery)

    def heal(self, rooms: list[str]) -> None:
        """The live feed of these rooms may have a gap: read their histories."""
        for room in rooms:
            entry = self._rooms.get(room)
            if entry is not None and entry.sequence is not None:
                entry.sequence.fill()

    async def refill(self, rooms: list[str]) -> None:
        """These rooms moved shard: read their histories there now (a new epoch: members
        re-sync), before anything is published on the new shard. Bounded by the
        sequence's read give-up time."""
        for room in rooms:
            entry = self._rooms.get(room)
            if entry is not None and entry.sequence is not None:
                # Twice: a read already running may have started before the move.
                for _ in range(2):
                    await _shared(asyncio.shield(entry.sequence.fill()))

    async def close(self) -> None:
        for entry in self._rooms.values():
            if entry.unsubscribe_timer is not None:
                entry.unsubscribe_timer.cancel()
            if entry.sequence is not None:
                entry.sequence.close()
        self._rooms.clear()
        await asyncio.gather(*self._unsubscribing.values(), return_exceptions=True)

    def _fan_out(self, entry: _Room, delivery: Delivery) -> None:
        """Never raises: one member's failure costs the others nothing, and the callers (a
        broker's reader, a gap fill, the embedded broker's publish) could only stop short."""
        span = tracing.process_start(delivery) if tracing.tracer is not None else None
        delivered = _push_all(entry.members, delivery.payload, delivery.room)
        for buffer in entry.catching_up.values():
            try:
                buffer.add(delivery)
            except Exception:  # its overflow (the member's drop) failed: that member alone
                log.exception("a joining member of room %r failed to take an event", delivery.room)
        self._metrics.delivered.inc(delivered)
        self._metrics.delivery_latency.observe(max(0.0, time.time() - delivery.ts / 1000))
        if span is not None:
            tracing.process_end(span, len(entry.members))

    def _notify_resync(self, entry: _Room, room: str, offset: int, epoch: str) -> None:
        _push_all(entry.members, protocol.joined(room, offset, epoch, False, None), room)

    async def _next_page(
        self, member: Member, room: str, policy: RoomPolicy, result: JoinResult, last: int
    ) -> list[Delivery]:
        """The replay's next page after `last`, up to the joined position.

        If it cannot be read, or the history changed since the join read it (trimmed past
        `last`, another epoch), the member is told to re-sync (unsolicited `joined`,
        `recovered: false`, at the joined position) and the replay stops there.
        """
        top = result.offset or 0
        try:
            async with self._reading(room, member):
                history = await self._broker.history(room, last, policy, limit=self._catch_up_limit)
        except BrokerUnavailable:
            history = None
        entries = [] if history is None else history.entries
        if (
            history is None
            or history.epoch != result.epoch
            or not entries
            or entries[0].offset != last + 1
        ):
            log.info("room %s: history changed during a replay; the joiner re-syncs", room)
            member.push(protocol.joined(room, top, result.epoch, False, None))
            return []
        return [d for d in entries if (d.offset or 0) <= top]

    async def _recover(
        self, buffered: _CatchUp, room: str, policy: RoomPolicy, since: Position | None
    ) -> tuple[JoinResult, list[Delivery]]:
        """The position to announce and the first page of events to replay for a join;
        the join's buffer takes live events from the moment its read holds a slot."""
        after = since.offset if since is not None else None
        async with self._reading(room, buffered.member):
            # No await between the slot and the read's command: an event fanned out
            # before this line was published before the read, so the read has it.
            buffered.open = True
            history = await self._broker.history(room, after, policy, limit=self._catch_up_limit)
        if since is None:
            return JoinResult(history.top, history.epoch, None), []
        if since.epoch != history.epoch or since.offset > history.top:
            return JoinResult(history.top, history.epoch, False), []
        entries = history.entries
        more = len(entries) >= self._catch_up_limit  # a full page: later ones are read later
        complete = since.offset == history.top or (
            bool(entries)
            and entries[0].offset == since.offset + 1
            and (entries[-1].offset == history.top or more)
        )
        if not complete:
            return JoinResult(history.top, history.epoch, False), []
        return JoinResult(history.top, history.epoch, True), entries

    async def _subscribed(self, room: str, policy: RoomPolicy, member: Member) -> _Room:
        entry = self._rooms.get(room)
        if entry is not None:
            if not entry.subscribed.done():
                with self._waiting_for(member):  # shielded: another join's work goes on
                    await _shared(asyncio.shield(entry.subscribed))
            return entry
        # Wait out an UNSUBSCRIBE still in flight, so it cannot land after our SUBSCRIBE.
        pending = self._unsubscribing.get(room)
        if pending is not None:
            await _shared(asyncio.shield(pending))
            # Done, but its done callback (which forgets it) may not have run yet: awaiting
            # a finished task does not yield, so forget it here or this would recurse on it
            # until RecursionError (seen in a resume storm: bench/resume_storm.py).
            self._forget_unsubscribe(room, pending)
            return await self._subscribed(room, policy, member)
        entry = _Room(asyncio.get_running_loop().create_future(), self._member_set())
        self._rooms[room] = entry
        subscribed = False
        try:
            if policy.durable:
                entry.early = []
            await self._broker.subscribe(room)
            subscribed = True
            if policy.durable:
                # After SUBSCRIBE, so no event falls between the position and the feed.
                async with self._reading(room):
                    history = await self._broker.history(room, None, policy)
                self._start_sequence(room, entry, policy, history)
        except BaseException as exc:
            if self._rooms.get(room) is entry:
                del self._rooms[room]
                if subscribed:  # no member will come for it: do not leave it subscribed
                    self._release_now(room)
            if isinstance(exc, asyncio.CancelledError):
                entry.subscribed.cancel()
            else:
                entry.subscribed.set_exception(exc)
                entry.subscribed.exception()  # retrieved here; other waiters re-raise it
            raise
        entry.subscribed.set_result(None)
        return entry

    def _start_sequence(
        self, room: str, entry: _Room, policy: RoomPolicy, history: History
    ) -> None:
        async def fetch(after: int) -> History:
            return await self._broker.history(room, after, policy)

        entry.sequence = RoomSequence(
            room,
            history,
            fetch=fetch,
            emit=lambda delivery: self._fan_out(entry, delivery),
            resync=lambda offset, epoch: self._notify_resync(entry, room, offset, epoch),
        )
        early, entry.early = entry.early or [], None
        for delivery in early:
            entry.sequence.accept(delivery)
        if entry.early_dropped:
            entry.sequence.fill()

    def _release(self, room: str, entry: _Room) -> None:
        entry.unsubscribe_timer = None
        if entry.members or entry.catching_up or self._rooms.get(room) is not entry:
            return
        del self._rooms[room]
        if entry.sequence is not None:
            entry.sequence.close()
        self._release_now(room)

    def _release_now(self, room: str) -> None:
        task = asyncio.create_task(self._broker.unsubscribe(room), name=f"unsubscribe {room}")
        self._unsubscribing[room] = task
        task.add_done_callback(lambda done: self._forget_unsubscribe(room, done))

    def _forget_unsubscribe(self, room: str, task: asyncio.Task[None]) -> None:
        if self._unsubscribing.get(room) is task:
            del self._unsubscribing[room]


async def _shared(awaitable: Awaitable[T]) -> T:
    """Await work shared with other joiners; its cancellation is not ours.

    When the task that owns a shared subscription or history read is cancelled (its
    client left, the server stops), the others waiting on it get BrokerUnavailable, a
    refusal their session reports, instead of a CancelledError that would end them.
    """
    try:
        return await awaitable
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise
        raise BrokerUnavailable("the room's subscription was abandoned; retry") from None
