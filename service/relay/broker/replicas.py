"""Durable publishes confirmed by replicas before their ack (RELAY_REDIS_ACK_REPLICAS).

Redis replicates asynchronously: a master can ack a write and die before any replica has
it. Sentinel then promotes a replica without it, and the relay gives every room of that
shard a new epoch (relay.broker.redis `_after_failover`): nothing is served as the same
history, but the acked event is gone. With `replicas` > 0 a durable publish is acked only
once that many replicas have it (Redis `WAIT numreplicas timeout`), so a failover to any
of them keeps every acked event.

One WAIT for many publishes: Redis answers WAIT with the replicas that have every write
*this connection* sent before it (the client's last write offset), and the publish
connection (relay.broker.commands) carries every publish of this pod to the shard in
order. So one WAIT queued after a publish's EVALSHA confirms it and every publish sent
before it on that connection; a publish awaits the newest WAIT queued after its script
rather than sending its own. When to queue one:
- No WAIT unanswered (a quiet shard): at the end of the loop turn that sent publishes, in
  the same write as their EVALSHAs, so a publish costs one round trip plus the replica's.
- A WAIT unanswered: Redis runs nothing else of the connection while it waits for the
  replicas, so publishes sent meanwhile queue behind it; each turn adding a WAIT of its own
  would make Redis wait for the replicas once per turn, in series. Instead the first of
  them whose reply comes back queues one WAIT for all whose replies came with it.
bench/ack_replicas.py measures what sharing saves over one WAIT per publish
(docs/benchmarks.md).

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
the original event. (On redis-server the WAIT alone would do, see above; the EXPIRE keeps
it true by the documented rule, for one command per duplicate.)

Failure: fewer replicas than asked within `timeout` -> NotReplicated (the client gets
`unavailable`, docs/protocol.md: the event is stored on the master and may or may not
survive a failover; retrying with the same id is safe). While Redis waits, it answers no
other command of this connection, so `timeout` is kept below the command timeout of the
connection (relay.config) and every command waits behind at most one WAIT.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from relay.broker.base import BrokerUnavailable, NotReplicated
from relay.broker.commands import Arg, CommandConnection, Script, Sent

log = logging.getLogger("relay.broker.replicas")

UNCONFIRMED_LOG_SECONDS = 10.0
"""At most one log line per this interval about publishes the replicas did not confirm."""


class ReplicaAcks:
    """Publishes on one shard's publish connection, each confirmed by `replicas` replicas."""

    def __init__(self, connection: CommandConnection, *, replicas: int, timeout: float) -> None:
        if replicas < 1:
            raise ValueError(f"replicas must be at least 1, got {replicas}")
        self._connection = connection
        self.replicas = replicas
        self.timeout = timeout
        self._timeout_ms = max(1, round(timeout * 1000))  # WAIT's 0 would wait forever
        self._wait: tuple[Sent, asyncio.Future[Any]] | None = None
        """The newest WAIT queued, and its reply: it covers what ran before it."""
        self._turn_scheduled = False
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
        if not self._turn_scheduled and (self._wait is None or self._wait[1].done()):
            # Runs after this turn's publishes are queued and before their write.
            self._turn_scheduled = True
            asyncio.get_running_loop().call_soon(self._wait_after_turn)
        sent, reply = await self._connection.evalsha_sent(script, keys, args)
        if reply[0] and window > 0:
            sent, expired = self._connection.after(sent, "EXPIRE", dedupe, window)
            expired.add_done_callback(_ignore)  # only its place matters: the WAIT follows
        await self.confirm(sent)
        return reply

    def _wait_after_turn(self) -> None:
        """Queue a WAIT after the publishes this loop turn queued (nothing when no
        connection is open yet: each publish then queues one after its reply)."""
        self._turn_scheduled = False
        try:
            queued = self._connection.queue("WAIT", self.replicas, self._timeout_ms)
        except BrokerUnavailable:
            return  # too many commands in flight: each publish will fail or queue its own
        if queued is not None:
            queued[1].add_done_callback(_ignore)  # no publish may await it (script failed)
            self._wait = queued

    async def confirm(self, sent: Sent) -> None:
        """Return once `replicas` replicas have every write up to `sent`; NotReplicated
        when they do not within the timeout."""
        wait = self._wait
        if wait is None or wait[0].pipe is not sent.pipe or wait[0].position <= sent.position:
            wait = self._wait = self._connection.after(
                sent, "WAIT", self.replicas, self._timeout_ms
            )
            wait[1].add_done_callback(_ignore)
        # Shielded: a cancelled publisher must not cancel a reply others share.
        reply = await asyncio.shield(wait[1])
        if not isinstance(reply, int):
            raise BrokerUnavailable(f"Redis {self._connection.url} refused WAIT: {reply}")
        if reply < self.replicas:
            self._unconfirmed += 1
            now = asyncio.get_running_loop().time()
            if now - self._logged_at >= UNCONFIRMED_LOG_SECONDS:
                log.warning(
                    "Redis %s: %d of %d replicas confirmed a write within %.3fs; %d durable "
                    "publishes refused as unconfirmed since the last line (they are on the "
                    "master, a failover may lose them)",
                    self._connection.url,
                    reply,
                    self.replicas,
                    self.timeout,
                    self._unconfirmed,
                )
                self._logged_at, self._unconfirmed = now, 0
            raise NotReplicated(
                f"Redis {self._connection.url}: {reply} of {self.replicas} replicas confirmed "
                f"the write within {self.timeout}s"
            )


def _ignore(future: asyncio.Future[Any]) -> None:
    """Retrieve a reply nobody awaits (asyncio would log an exception never retrieved)."""
    if not future.cancelled():
        future.exception()
