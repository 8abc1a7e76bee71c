"""Per-connection send queues, flushed once per event-loop turn.

Messages for one connection are appended to its outbox (no await, no per-recipient
work beyond a list append). One callback per loop turn writes every dirty outbox: a
lone message goes out as a frame shared with every other socket that got the same
event; several pending messages are joined with `\\n` into one frame (the protocol's
batching), which saves a syscall per message at high rates.

Bound and overflow policy: while the transport is paused (its buffer is over the
high-water mark because the client is not reading), an outbox holds at most `limit`
messages. Past the limit the connection is a slow consumer: its queue is dropped, it
gets `reconnect` (slow_consumer) and close 4008, and nobody else waits. Unpaused, what
one loop turn pushes is written at once. Replays (a `join` with `since`) do not push:
`replay` hands over at most `limit` messages (and about BATCH_BYTES) at a time and waits
for the socket to take them first, so a resume of any length holds at most one send
queue's worth in memory, and a client that stops reading stalls only its own replay
(until the heartbeat ends its connection).

A write that raises (a socket in a state nothing expected) costs that connection alone:
the flush goes on with every other outbox of its turn (they are off the dirty list
already, and would otherwise wait for a drain an idle socket never has), the failed one
is closed with 1011 (`fail`: what was taken for the write may be lost, so its client
resumes rather than go on with a silent gap), and the first such error is raised once
the turn is written, for the event loop to log.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any, Protocol

from relay.core import Core
from relay.protocol import CloseCode
from relay.transport import RawSocket

BATCH_BYTES = 64 * 1024
"""Largest batched frame; a batch is split before it would pass this size."""


class SendQueue(Protocol):
    """One connection's outbox, whichever implementation (Outbox, or the compiled core's)."""

    @property
    def closed(self) -> bool: ...
    @property
    def close_code(self) -> int | None: ...
    def push(self, payload: bytes) -> None: ...
    async def replay(self, payloads: list[bytes]) -> None: ...
    def close(self, final: bytes | None, code: int, *, drop_pending: bool = False) -> None: ...


class Scheduler(Protocol):
    """A relay server's flush scheduler, which makes its connections' outboxes."""

    def outbox(
        self, socket: RawSocket, *, limit: int, on_overflow: Callable[[], None]
    ) -> SendQueue: ...


def scheduler(core: Core) -> Scheduler:
    """The compiled core's scheduler and outboxes when it is in use (relay.core), else
    the ones below: the same behaviour, the same tests (tests/unit/test_outbox.py)."""
    if core.module is not None:
        made: Scheduler = _core_classes(core.module)[1]()
        return made
    return FlushScheduler()


class FlushScheduler:
    """Writes all dirty outboxes in one callback per event-loop turn."""

    def __init__(self) -> None:
        self._dirty: list[Outbox] = []
        self._scheduled = False
        self._loop: asyncio.AbstractEventLoop | None = None
        """The running loop, looked up once: asyncio.get_running_loop() makes a getpid()
        system call each time (CPython 3.11), here once per loop turn."""

    def mark(self, outbox: Outbox) -> None:
        self._dirty.append(outbox)
        if not self._scheduled:
            self._scheduled = True
            loop = self._loop
            if loop is None:
                loop = self._loop = asyncio.get_running_loop()
            loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._scheduled = False
        dirty, self._dirty = self._dirty, []
        frames: dict[bytes, bytes] = {}  # event bytes -> frame, shared across sockets
        failure: Exception | None = None
        for outbox in dirty:
            try:
                outbox.flush(frames)
            except Exception as exc:  # that connection alone: see the module's docstring
                outbox.fail()
                failure = failure or exc
        if failure is not None:
            raise failure

    def outbox(self, socket: RawSocket, *, limit: int, on_overflow: Callable[[], None]) -> Outbox:
        return Outbox(socket, self, limit=limit, on_overflow=on_overflow)


class Outbox:
    __slots__ = (
        "_limit",
        "_on_overflow",
        "_pending",
        "_scheduler",
        "_socket",
        "_waiter",
        "close_code",
        "closed",
    )

    def __init__(
        self,
        socket: RawSocket,
        scheduler: FlushScheduler,
        *,
        limit: int,
        on_overflow: Callable[[], None],
    ) -> None:
        self._socket = socket
        self._scheduler = scheduler
        self._limit = limit
        self._on_overflow = on_overflow
        self._pending: list[bytes] = []
        self.closed = False
        self.close_code: int | None = None
        self._waiter: asyncio.Future[None] | None = None
        socket.on_resume = self._resumed

    def push(self, payload: bytes) -> None:
        if self.closed:
            return
        pending = self._pending
        # Only a paused socket (its client is not reading) makes messages wait; a burst
        # pushed within one loop turn (a resume replay, a healed gap) is written at the
        # next flush, however long, and must not count as a slow consumer.
        if len(pending) >= self._limit and self._socket.paused:
            self._on_overflow()
            return
        pending.append(payload)
        if len(pending) == 1:
            # Paused or not: the flush skips a paused socket and `_resumed` marks it again
            # once it drains, so the common push reads no socket state.
            self._scheduler.mark(self)

    async def replay(self, payloads: list[bytes]) -> None:
        """Send `payloads` in order, a send queue's worth at a time, as the socket drains.

        Returns early once the outbox or the connection is closed. Messages pushed
        meanwhile (other rooms, replies) go out between two chunks, in push order.
        """
        start = 0
        while start < len(payloads):
            await self._drained()
            if self.closed or self._socket.closed:
                return
            end, size = start, 0
            while end < len(payloads) and end - start < self._limit and size < BATCH_BYTES:
                size += len(payloads[end])
                end += 1
            self._pending.extend(payloads[start:end])
            self._scheduler.mark(self)
            start = end

    async def _drained(self) -> None:
        """Wait until nothing is pending and the socket takes writes (or it closed)."""
        while (self._pending or self._socket.paused) and not (self.closed or self._socket.closed):
            if self._waiter is None or self._waiter.done():
                self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def flush(self, frames: dict[bytes, bytes] | None = None) -> None:
        pending = self._pending
        if self.closed or not pending or self._socket.paused:
            return
        if len(pending) == 1:  # the common case, once per recipient: nothing to join
            self._pending = []
            self._socket.send(pending[0], frames)
            if self._waiter is not None:
                self._wake()
            return
        self._write_all(frames)

    def close(self, final: bytes | None, code: int, *, drop_pending: bool = False) -> None:
        """Write what is pending (unless dropped), then `final`, then close with `code`."""
        if self.closed:
            return
        if drop_pending:
            self._pending = []
        try:
            self._write_all(None)
            if final is not None:
                self._socket.send(final)
        except Exception:
            self.fail()  # the connection ends all the same (1011), then the error is raised
            raise
        self.closed = True
        self.close_code = code
        self._socket.close(code)
        self._wake()

    def fail(self) -> None:
        """Writing to the socket raised: end the connection with 1011 (the module's
        docstring says why). Raises nothing: the socket's own close may fail too."""
        if self.closed:
            return
        self._pending = []
        self.closed = True
        self.close_code = CloseCode.INTERNAL_ERROR
        with contextlib.suppress(Exception):  # the write's own error is the one raised
            self._socket.close(CloseCode.INTERNAL_ERROR)
        self._wake()

    def _write_all(self, frames: dict[bytes, bytes] | None) -> None:
        pending, self._pending = self._pending, []
        if len(pending) == 1:
            self._socket.send(pending[0], frames)
            self._wake()
            return
        batch: list[bytes] = []
        size = 0
        for payload in pending:
            if batch and size + len(payload) > BATCH_BYTES:
                self._socket.send(b"\n".join(batch))
                batch, size = [], 0
            batch.append(payload)
            size += len(payload) + 1
        if batch:
            self._socket.send(b"\n".join(batch))
        self._wake()

    def _resumed(self) -> None:
        """The socket drained below its low-water mark, or the connection is gone."""
        if self._pending and not self.closed:
            self._scheduler.mark(self)
        self._wake()


_CORE_CLASSES: dict[int, tuple[type, type]] = {}


def _core_classes(module: object) -> tuple[type, type]:
    """The compiled core's Outbox and FlushScheduler (gamecluster_core, Rust) with what
    stays in Python: the async replay, paced by the socket, as Outbox.replay above."""
    if id(module) in _CORE_CLASSES:
        return _CORE_CLASSES[id(module)]
    base_outbox: Any = module.Outbox  # type: ignore[attr-defined]
    base_scheduler: Any = module.FlushScheduler  # type: ignore[attr-defined]

    class CoreOutbox(base_outbox):  # type: ignore[misc]
        __slots__ = ()

        def __init__(
            self,
            socket: RawSocket,
            scheduler: object,
            *,
            limit: int,
            on_overflow: Callable[[], None],
        ) -> None:
            socket.on_resume = self._resumed

        async def replay(self, payloads: list[bytes]) -> None:
            start = 0
            while start < len(payloads):
                await self._drained()
                if self.closed or self._socket.closed:
                    return
                end, size = start, 0
                while end < len(payloads) and end - start < self._limit and size < BATCH_BYTES:
                    size += len(payloads[end])
                    end += 1
                self._queue_chunk(payloads[start:end])
                start = end

        async def _drained(self) -> None:
            socket = self._socket
            while (self._has_pending or socket.paused) and not (self.closed or socket.closed):
                waiter: asyncio.Future[None] | None = self._waiter
                if waiter is None or waiter.done():
                    waiter = asyncio.get_running_loop().create_future()
                    setattr(self, "_waiter", waiter)  # noqa: B010 (the core's property)
                await waiter

    class CoreFlushScheduler(base_scheduler):  # type: ignore[misc]
        __slots__ = ()

        def outbox(
            self, socket: RawSocket, *, limit: int, on_overflow: Callable[[], None]
        ) -> SendQueue:
            queue: SendQueue = CoreOutbox(socket, self, limit=limit, on_overflow=on_overflow)
            return queue

    _CORE_CLASSES[id(module)] = (CoreOutbox, CoreFlushScheduler)
    return CoreOutbox, CoreFlushScheduler
