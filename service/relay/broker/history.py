"""A Redis master's history: is it the one its rooms' epochs were started on?

Replication is asynchronous: a promoted replica may lack the last events acked by the
old master, and its offsets would then go backwards and be reused for new events, a gap
no client could see. So each master keeps a **history marker** (relay.broker.keys): the
replication id (`master_replid` of INFO replication) of the history its rooms' epochs
were started on, and the master that wrote it (`marker_value`). It replicates, so a
promoted replica holds it as its `master_replid2`.
A relay server compares the two before it serves a master (`classify`), and where the
history may have lost acked events it gives every room on the master a new epoch
(`new_epochs`, once per failover across every relay server: a SET NX claim).

Shared by both brokers that see failovers: Sentinel and standalone shards
(relay.broker.redis, RedisShard._check_history: one marker per shard) and Redis Cluster
nodes (relay.broker.slots: one marker per master node, in one of its slots).
"""

from __future__ import annotations

import enum
import secrets

from redis.asyncio import Redis
from redis.exceptions import OutOfMemoryError

from relay.broker import keys

FAILOVER_CLAIM_SECONDS = 300
"""How long a failover's claim keeps other relay servers from starting epochs a second time."""
FENCE_SECONDS = 30
"""How long a failover's claim holds while its relay server starts the new epochs (renewed
at each batch of rooms); past it (a claimer that died) another one claims."""
FENCE_BATCH = 500
"""Keys per SCAN (its COUNT) of a fence; the rooms among them get their new epochs, and the
claim its renewal, in one pipeline (one round trip)."""
FENCE_DONE = b"done"
"""The claim's value once every room of the promoted master has its new epoch; kept for
FAILOVER_CLAIM_SECONDS so late relay servers do not start epochs a second time."""
NO_HISTORY = "0" * 40
"""`master_replid2` of a master that continued no earlier history (INFO replication)."""


class Verdict(enum.Enum):
    """What a master's marker and replication ids say (`classify`)."""

    SAME = "same"
    """The marker is the master's own id: the rooms' history, nothing to do."""
    PROMOTED = "promoted"
    """A marker, and the master continued a history (`master_replid2` set: promoted since
    it started, whichever history the marker names: two failovers, or a restart and a
    failover, with no relay server checking in between), or this server saw the master
    change, or the marker names another writer (`other_writer`, passed as `moved`): new
    epochs, claimed by the marker."""
    UNMARKED = "unmarked"
    """No marker, but the master continued another history (promoted in place of a
    master that was never marked), or this server saw the master change: new epochs."""
    NEW = "new"
    """No marker and no earlier history: a new or emptied Redis (a room whose keys are
    gone starts a new epoch anyway): mark it (SET NX)."""
    RESTARTED = "restarted"
    """Another id, and the master continued no history: it restarted (its id changes on
    every restart, a clean SHUTDOWN too; a restart from the AOF never sets
    `master_replid2`): the rooms keep their epochs (the crash window of appendfsync
    everysec is not fenced, docs/operations.md); renew the marker, and log it."""

    @property
    def fences(self) -> bool:
        return self in (Verdict.PROMOTED, Verdict.UNMARKED)


def classify(marker: str | None, replid: str, replid2: str, *, moved: bool) -> Verdict:
    """The verdict on a master whose marker is `marker` (None: no marker) and whose
    replication ids are `replid` and `replid2` (NO_HISTORY: none). `moved`: this relay
    server saw the master change (another address, another cluster node), or the marker
    was written by another master (`other_writer`): new epochs whatever the marker says,
    unless it names this history (another server already marked it)."""
    if marker == replid:
        return Verdict.SAME
    continued = replid2 != NO_HISTORY
    if marker is None:
        return Verdict.UNMARKED if moved or continued else Verdict.NEW
    # A promotion always sets master_replid2; a restart from the AOF never does (one from
    # an RDB snapshot with replicas does: fenced, needlessly after a clean shutdown,
    # docs/operations.md).
    if moved or continued:
        return Verdict.PROMOTED
    return Verdict.RESTARTED


def claim_name(where: str, marker: str | None, replid: str) -> str:
    """The failover claim of the fence from history `marker` to `replid`: the same name on
    every relay server that sees this failover, whether it saw the map change or not."""
    return keys.failover_claim(where, "unmarked" if marker is None else marker, replid)


def marker_value(replid: str, writer: str) -> str:
    """A marker's value: the history its rooms' epochs were started on, and the master
    that wrote it (a Redis Cluster node's id, the address a Sentinel names; "" for a
    standalone shard, whose address says nothing about the server behind it). A marker
    of another writer means this master is not the one that marked it, whatever its ids
    say: a promoted replica restarted (from its AOF) before any relay server checked it
    has no `master_replid2` left, the ids of the old master restarted."""
    return f"{replid} {writer}" if writer else replid


def parse_marker(value: str) -> tuple[str, str]:
    """(history, writer) of a marker's value; the writer "" when not named (a standalone
    shard's, or one written before markers named their writer)."""
    replid, _, writer = value.partition(" ")
    return replid, writer


def other_writer(marked_by: str, writer: str) -> bool:
    """The marker was written by another master than this one (`marker_value`); unknown
    when either is not named."""
    return bool(marked_by) and bool(writer) and marked_by != writer


async def replication(client: Redis) -> dict[str, str]:
    """INFO replication's fields as the server spelled them. Not redis-py's parsed INFO:
    it turns a value of digits into a number, so `master_replid2` of a master that
    continued no history (forty zeros) would read as 0, and a replication id of digits
    and one `e` as a float. `client` must be the caller's own: its INFO reply is left raw."""
    client.set_response_callback("INFO", lambda response, **options: response)
    raw = await client.execute_command("INFO", "replication")  # type: ignore[no-untyped-call]
    lines = _text(raw).splitlines()
    return dict(line.split(":", 1) for line in lines if ":" in line and not line.startswith("#"))


async def mark(client: Redis, marker: str, replid: str, *, nx: bool = False) -> bool | None:
    """Set the marker (the key `marker`) to `replid` (its whole value, `marker_value`;
    only if there is none: `nx`); False
    when another server set it first, None when Redis refused it as full (maxmemory
    reached, noeviction). Then the marker is left as it is and the master is served all
    the same, as a full Redis is (reads and deliveries go on, publishes are refused),
    rather than refused until memory frees up. Safe: the marker is only written for a
    history that continued none (`master_replid2` unset) or that this server checked
    already, and a server promoted later continues it, so it gets new epochs whatever the
    marker names (`classify`)."""
    try:
        return bool(await client.set(marker, replid, nx=nx))
    except OutOfMemoryError:
        return None


class FenceBusy(Exception):
    """Another relay server holds the failover's claim and is starting the new epochs."""


async def new_epochs(
    client: Redis, *, claim: str, holder: bytes, marker: str, replid: str
) -> tuple[str, int] | None:
    """A new epoch in every room on the master `client` reaches, then `marker` (the key)
    is set to `replid` (its whole value, `marker_value`: the history and its writer);
    returns (the epoch, rooms), or None when another relay server
    had done it (the claim's done mark). One relay server does it (a SET NX claim held
    by `holder`); the others get FenceBusy until it is done and retry. A claimer that
    died leaves a claim that expires after FENCE_SECONDS (renewed with each batch of
    rooms while the fence runs), and the next server starts
    epochs again (a second new epoch is harmless); a claim of the caller's own, left by
    a fence that failed midway (a lost connection, a refused HSET), is finished now
    rather than waited for with the master's rooms refused. Redis errors propagate."""
    claimed = await client.set(claim, holder, nx=True, ex=FENCE_SECONDS)
    held = None if claimed else await client.get(claim)
    if held == holder:
        claimed = await client.set(claim, holder, xx=True, ex=FENCE_SECONDS)
        held = None if claimed else await client.get(claim)
    if not claimed:
        if held == FENCE_DONE:
            return None
        raise FenceBusy(claim)
    epoch, rooms, cursor = secrets.token_hex(4), 0, 0
    while True:
        # One pipeline per SCAN batch, not a round trip per room: the rooms are unavailable
        # until the fence ends (50,000 rooms took 8 s a room at a time on loopback, 1.1 s so).
        cursor, found = await client.scan(cursor, match=keys.META_PATTERN, count=FENCE_BATCH)
        if found:
            async with client.pipeline(transaction=False) as batch:
                for key in found:
                    batch.hset(key, "epoch", epoch)
                # Still at work: the claim must not expire under a long fence (another
                # server would start a second one, and the rooms wait for both).
                batch.expire(claim, FENCE_SECONDS)
                await batch.execute()
            rooms += len(found)
        if cursor == 0:
            break
    # The marker after the epochs: a server that reads it marked serves this history.
    await client.set(marker, replid)
    await client.set(claim, FENCE_DONE, ex=FAILOVER_CLAIM_SECONDS)
    return epoch, rooms


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
