"""Durable publishes confirmed by replicas before their ack (RELAY_REDIS_ACK_REPLICAS).

Redis replicates asynchronously: a master can ack a write and die before any replica has
it. Sentinel then promotes a replica without it, and the relay gives every room of that
shard a new epoch (relay.broker.redis `_after_failover`): nothing is served as the same
history, but the acked event is gone. With `replicas` > 0 a durable publish is acked only
once that many replicas have it (Redis `WAIT numreplicas timeout`), so a failover to any
of them keeps every acked event.

One WAIT for many publishes: Redis answers WAIT with the replicas that have every write
*this connection* sent before it (the client's last write offset), and the acked publish
connection (relay.broker.commands; its own, see below) carries every durable publish of
this pod to the shard in order. So one WAIT queued after a publish's EXPIRE or EVALSHA
confirms it and every publish sent before it on that connection. A publish whose script
ran before the newest WAIT was queued awaits that one; the others of one event-loop turn
(their replies arrive together) share one WAIT, queued once the turn's publishes have
queued what they send, so a batch of retries (each with its EXPIRE, below) still costs one
WAIT, not one each held back to back. bench/ack_replicas.py measures what sharing saves
over one WAIT per publish (docs/benchmarks.md).

The connection is not the one of the other publishes (volatile rooms, and every publish
with ackReplicas 0): while Redis holds a WAIT it answers no other command of that
connection, so a volatile publish behind it would wait for the replicas too.

What WAIT is documented to cover is the writes of its own connection sent before it, and
this module relies on no more. (redis-server itself, 7.x as tested here, sets a
connection's offset to the master's after every command it runs, writes or not, so a WAIT
covers all the master had when the connection's previous command ran; Redis-compatible
servers need not.) So a WAIT follows its publish on the same connection: when that
connection is lost between the two, the publish fails with BrokerUnavailable rather than
being confirmed by a WAIT on the next one.

A retry of an id already stored (a duplicate: the script wrote nothing) may have been
stored through another connection, or another relay server, and not be on the replicas
yet. The dedupe key's TTL is set again (EXPIRE: a write, replicated after the original
event, and allowed on a full Redis) on this connection first, so the WAIT after it covers
the original event. (Redis 7.0 moves a connection's offset after every command, writes or
not, so there the WAIT alone would do; the EXPIRE keeps it true on a Redis that counts
only a connection's own writes, and costs one command per duplicate.)

Failure: fewer replicas than asked within `timeout` -> NotReplicated (the client gets
`unavailable`, docs/protocol.md: the event is stored on the master and may or may not
survive a failover; retrying with the same id is safe). While Redis waits, it answers no
other command of this connection, so `timeout` is kept below the command timeout of the
connection (relay.config). A new WAIT is queued only for a publish whose reply came in a
later loop turn than the newest WAIT was queued, so commands wait behind one WAIT (a few
only when the replies of retried duplicates, which queue an EXPIRE behind a WAIT not
answered yet, come in several reads of the socket).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

from relay.broker.base import BrokerUnavailable, NotReplicated
from relay.broker.commands import Arg, CommandConnection, Script, Sent

log = logging.getLogger("relay.broker.replicas")

UNCONFIRMED_LOG_SECONDS = 10.0
"""At most one log line per this interval about publishes the replicas did not confirm."""


@dataclass(slots=True)
class _Wait:
    """One WAIT shared by publishes: queued at the end of the loop turn that asked for it
    (`position` None until then), so it follows everything they queued."""

    covers: Sent
    """A command it must follow; its connection is the one the WAIT goes on."""
    reply: asyncio.Future[Any]
    position: int | None = None


class ReplicaAcks:
    """Publishes on one shard's acked publish connection, each confirmed by `replicas`
    replicas."""

    def __init__(self, connection: CommandConnection, *, replicas: int, timeout: float) -> None:
        if replicas < 1:
            raise ValueError(f"replicas must be at least 1, got {replicas}")
        self.connection = connection
        """Durable publishes and their WAITs only (see the module's docstring)."""
        self.replicas = replicas
        self.timeout = timeout
        self._timeout_ms = max(1, round(timeout * 1000))  # WAIT's 0 would wait forever
        self._wait: _Wait | None = None
        """The newest WAIT, queued or to be queued this turn: it covers what ran before it."""
        self._unconfirmed = 0
        """Publishes not confirmed since the last log line about them."""
        self._logged_at = float("-inf")

    async def publish(
        self, script: Script, keys: list[str], args: list[Arg], *, dedupe: str, window: int
    ) -> Any:
        """Run a durable publish script, then return its reply once `replicas` replicas
        have the event. The reply is the script's `{duplicate, offset, epoch}`
        (relay.broker.lua); a duplicate's dedupe key `dedupe` gets its TTL `window` again
        first (see the module's docstring).

        Raises NotReplicated when the replicas do not confirm within the timeout (the script
        ran), BrokerUnavailable when the script failed or the connection was lost after it."""
        sent, reply = await self.connection.evalsha_sent(script, keys, args)
        if reply[0] and window > 0:
            sent, expired = self.connection.after(sent, "EXPIRE", dedupe, window)
            expired.add_done_callback(_ignore)  # only its place matters: the WAIT follows
        await self.confirm(sent)
        return reply

    async def confirm(self, sent: Sent) -> None:
        """Return once `replicas` replicas have every write up to `sent`; NotReplicated
        when they do not within the timeout."""
        wait = self._wait
        if (
            wait is None
            or wait.covers.pipe is not sent.pipe
            or (wait.position is not None and wait.position <= sent.position)
        ):
            loop = asyncio.get_running_loop()
            wait = self._wait = _Wait(sent, loop.create_future())
            wait.reply.add_done_callback(_ignore)  # its failure may find all sharers gone
            # After the other publishes woken in this turn (their wake-ups are already
            # scheduled) have queued their EXPIREs: one WAIT for all of them.
            loop.call_soon(self._queue, wait)
        # Shielded: a cancelled publisher must not cancel a reply others share.
        reply = await asyncio.shield(wait.reply)
        if not isinstance(reply, int):
            raise BrokerUnavailable(f"Redis {self.connection.url} refused WAIT: {reply}")
        if reply < self.replicas:
            self._unconfirmed += 1
            now = asyncio.get_running_loop().time()
            if now - self._logged_at >= UNCONFIRMED_LOG_SECONDS:
                log.warning(
                    "Redis %s: %d of %d replicas confirmed a write within %.3fs; %d durable "
                    "publishes refused as unconfirmed since the last line (they are on the "
                    "master, a failover may lose them)",
                    self.connection.url,
                    reply,
                    self.replicas,
                    self.timeout,
                    self._unconfirmed,
                )
                self._logged_at, self._unconfirmed = now, 0
            raise NotReplicated(
                f"Redis {self.connection.url}: {reply} of {self.replicas} replicas confirmed "
                f"the write within {self.timeout}s"
            )

    def _queue(self, wait: _Wait) -> None:
        """Send `wait`'s WAIT on its connection, behind everything queued there so far."""
        try:
            queued, reply = self.connection.after(
                wait.covers, "WAIT", self.replicas, self._timeout_ms
            )
        except BrokerUnavailable as exc:  # the connection is gone: nothing is confirmed
            wait.reply.set_exception(exc)
            return
        wait.position = queued.position
        reply.add_done_callback(lambda done: _pass_on(done, wait.reply))


def _pass_on(source: asyncio.Future[Any], target: asyncio.Future[Any]) -> None:
    """The connection's WAIT reply (or failure) to the publishes sharing it."""
    if target.done():
        return
    if source.cancelled():
        target.set_exception(BrokerUnavailable("the WAIT was cancelled"))
    elif (error := source.exception()) is not None:
        target.set_exception(error)
    else:
        target.set_result(source.result())


def _ignore(future: asyncio.Future[Any]) -> None:
    """Retrieve a reply nobody awaits (asyncio would log an exception never retrieved)."""
    if not future.cancelled():
        future.exception()
