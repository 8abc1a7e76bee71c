"""The Redis Cluster broker: rooms where Redis Cluster places them, by hash slot.

RELAY_REDIS_CLUSTER=true: RELAY_REDIS_URLS are seed nodes of one external Redis Cluster.
Every room's names share the hash tag `{room}` (relay.broker.keys), so a room is one slot
and its scripts run on one node. The relay reads the slot map (CLUSTER SLOTS) and keeps
one `RedisShard` per master node: the same lean publish connection, redis-py pool and
hiredis Pub/Sub connection as a shard of the sharded broker, with the room channels as
shard channels (SSUBSCRIBE on the node that owns the slot; the scripts SPUBLISH, so an
event goes to that node only) and a probe on a shard channel of one of the node's slots.

Why the relay routes by itself rather than through redis-py's RedisCluster client:
RedisCluster follows MOVED and ASK on its own, so after a failover it would read and
write a promoted replica at once, before anything made sure that a history that may
have lost acked events is not served as the same history. Here a command goes only to
the node this server's slot map names; a MOVED/ASK/TRYAGAIN/CLUSTERDOWN reply ran
nothing, fails that request with SlotMoved (the client retries with its id: the dedupe
key keeps a retry single) and makes the server read the slot map again. Reading it:

- Every master's **history** is checked before its slots are served (relay.broker.
  history: a marker per node, in its lowest slot, naming the replication id its rooms'
  epochs were started on and the node that wrote it; see `_check`): on first sight, so
  a server started after a promotion, or a fleet restarted during one, still sees that a
  promoted replica's history may lack acked events; and again when its marker's slot changes or its
  Pub/Sub session ends (a restarted node: the rooms keep their epochs, the marker is
  renewed).
- A slot whose master is now a node that was one of its replicas, or no master at all,
  in the previous map has **failed over**: replication is asynchronous, so the new
  master may lack events the old one acked. Before its slots are served, the first relay
  server to see it (a SET NX claim on the new master, named by the histories, so the same
  claim as a server that sees the promotion by the marker alone) gives every room on the
  new master a new epoch; members and resuming clients get `recovered: false` (the
  Sentinel rule of relay.broker.redis, per slot owner). Until then its slots are refused
  and their channels unsubscribed here (the check is tried again at every read), while
  every other slot follows the new map.
- A slot whose master is any other node was **migrated** (resharding): MIGRATE moves
  each key whole, with its history, offsets and epoch, and while the slot is half moved
  every script of a room whose keys are on the other side is refused (ASK, TRYAGAIN):
  nothing runs on a partial room. So a migrated room keeps its epoch; its channel is
  subscribed on the new owner and its members read the history they missed.

Subscriptions: a node sends `sunsubscribe` for the shard channels of a slot it gave away;
such a channel goes to the new owner once the slot map names it (tests/integration/
test_redis_cluster.py proves both rules with a real cluster).

What does not apply: the shard map (relay.broker.shardmap; Redis Cluster places the
rooms), and PUBLISH is only for the control channel (a PUBLISH reaches every node of a
cluster; it is subscribed on the node holding the cluster keys' slot).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from redis.crc import key_slot
from redis.exceptions import AskError, RedisError, TryAgainError

from relay.broker import history, keys
from relay.broker.base import (
    BrokerUnavailable,
    History,
    PublishResult,
    SlotMoved,
    describe,
)
from relay.broker.history import Verdict
from relay.broker.options import RedisOptions
from relay.broker.redis import (
    SHARDED_SCRIPTS,
    EnvelopeReader,
    RedisShard,
    RoomWriter,
)
from relay.config import RedisEndpoint
from relay.contract import LOAD_REPORT_TTL_SECONDS, load_report_key
from relay.rooms import RoomPolicy

log = logging.getLogger("relay.broker.slots")

REFRESH_SECONDS = 5.0
"""How often the slot map is read when nothing asked for it (a redirect, a lost
connection or a `sunsubscribe` ask at once)."""
REFRESH_PAUSE = 0.2
"""Least time between two reads of the slot map."""
MAX_NODES = 100
"""Master nodes this server connects to; a slot map naming more is refused (each costs a
publish connection, a Pub/Sub connection and a pool). Overflow policy: the slot map is
not installed, the error is logged, the server stays on its last map (unready at start)."""


@dataclass(frozen=True, slots=True)
class Node:
    address: str
    """`host:port` as the cluster announces it: the node's name in metrics and /readyz."""
    node_id: str


@dataclass(frozen=True, slots=True)
class Checked:
    """A master whose history this server checked (and marked)."""

    node_id: str
    slot: int
    """The slot its marker is in: its lowest (see `RedisClusterBroker._check`)."""
    replid: str
    """Its replication id then: while it is still the node's, so is the history."""
    sessions: int
    """The node's Pub/Sub sessions ended here before the check began: a later end (the
    server behind the address may have restarted) makes this check stale."""


@dataclass(frozen=True)
class SlotMap:
    """One reading of CLUSTER SLOTS: per slot its master and that master's replicas."""

    masters: tuple[Node | None, ...]
    replicas: tuple[frozenset[str], ...]
    """Per slot: the node ids of its master's replicas."""

    @classmethod
    def parse(cls, reply: Any) -> SlotMap:
        masters: list[Node | None] = [None] * keys.SLOTS
        replicas: list[frozenset[str]] = [frozenset()] * keys.SLOTS
        for start, end, master, *others in reply:
            node = Node(f"{_text(master[0])}:{int(master[1])}", _text(master[2]))
            ids = frozenset(_text(other[2]) for other in others)
            for slot in range(int(start), int(end) + 1):
                masters[slot], replicas[slot] = node, ids
        return cls(tuple(masters), tuple(replicas))

    @property
    def complete(self) -> bool:
        return all(node is not None for node in self.masters)

    def nodes(self) -> dict[str, Node]:
        return {node.address: node for node in self.masters if node is not None}

    def first_slot(self, address: str) -> int:
        """The lowest slot of master `address` (its probe channel's and its marker's)."""
        return self._first_slots[address]

    @functools.cached_property
    def _first_slots(self) -> dict[str, int]:
        # One pass over the slots for every master, not one per master and per read.
        found: dict[str, int] = {}
        for slot, node in enumerate(self.masters):
            if node is not None:
                found.setdefault(node.address, slot)
        return found


class RedisClusterBroker(EnvelopeReader):
    """Rooms on the master node of their slot, per this server's slot map."""

    def __init__(
        self,
        seeds: Sequence[str | RedisEndpoint],
        node_id: str,
        options: RedisOptions,
        *,
        refresh_seconds: float = REFRESH_SECONDS,
    ) -> None:
        super().__init__()
        if not seeds:
            raise ValueError("RedisClusterBroker needs at least one seed URL")
        self._seeds = [RedisEndpoint.parse(u) if isinstance(u, str) else u for u in seeds]
        self._scheme = self._seeds[0].url.partition("://")[0]
        self._node_id = node_id
        self._options = options
        self._connector = options.connector
        self._timeout = options.timeout
        self._refresh_seconds = refresh_seconds
        self._writer = RoomWriter(node_id, options.dedupe_seconds, SHARDED_SCRIPTS)
        self._seed_clients = [
            self._connector.client(seed, timeout=self._timeout, retries=0) for seed in self._seeds
        ]
        self._nodes: dict[str, RedisShard] = {}
        """Per master address: its connections (kept while it still carries channels)."""
        self._map: SlotMap | None = None
        """The slot map in force; None until read: every room is refused until then."""
        self._homeless: set[bytes] = set()
        """Channels wanted here whose slot left their node, until the slot map names the
        node that has it now (bounded by the channels this server subscribes)."""
        self._control_node: str | None = None
        self._ask_first: set[str] = set()
        """Nodes whose slot map is read first next time (they just gave a slot away)."""
        self._unfenced: dict[str, tuple[Node | None, Node]] = {}
        """Masters whose history is not checked here yet (address -> (the master it
        replaced in the slot map, or None: first sight; the master)): a promoted one
        whose fence failed, a new one whose check failed. Their slots are refused and
        their channels left unsubscribed until a later slot map read checks them; every
        other slot follows the map. Bounded by MAX_NODES."""
        self._checked: dict[str, Checked] = {}
        """Per master address: the history checked there (pruned to the map's masters:
        bounded by MAX_NODES)."""
        self._recheck: set[str] = set()
        """Checked masters to check again at the next read while still served (a check
        after their marker's slot moved failed)."""
        self._session_ends: dict[str, int] = {}
        """Per master address: its Pub/Sub sessions ended here. A node whose session ended
        since its check is refused until checked again: the server behind the address
        may have restarted (its replication id changes, a restart from an RDB snapshot
        older than the acked events is fenced), and the publish connection reconnects as
        soon as it is up. Pruned to the map's masters: bounded by MAX_NODES."""
        self._unplaced_logged = 0
        self._refresh_wanted = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.failovers = 0
        """Failovers this server started new epochs for (or saw claimed): for tests, logs."""

    # -- readiness -------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        """The slot map covers every slot, the control node is live and so are at least
        half of the master nodes (the rule of the sharded broker, per node: a node down
        refuses only its rooms, with SlotMoved or ShardDown)."""
        if self._map is None or not self._map.complete or self._control_node is None:
            return False
        control = self._nodes.get(self._control_node)
        masters = list(self._map.nodes())
        live = sum(self._live(address) for address in masters)
        return control is not None and control.ready and 2 * live >= len(masters) > 0

    def shards(self) -> dict[str, bool]:
        """Per master: live, and (a promoted one) fenced; a node waiting for its fence
        counts as down here, in `relay_redis_shard_up` and in /readyz's `shardsDown`."""
        if self._map is None:
            return {}
        return {address: self._live(address) for address in self._map.nodes()}

    def _live(self, address: str) -> bool:
        node = self._nodes.get(address)
        return node is not None and node.ready and address not in self._unfenced

    @property
    def unplaced(self) -> int:
        """Room channels subscribed nowhere, waiting for their slot's owner to be named,
        reachable or fenced: their members get no live event meanwhile (a metric, and a
        warning in the log while it is not 0)."""
        return sum(keys.room_of(channel) is not None for channel in self._homeless)

    def placement(self, room: str) -> str:
        if self._map is None:
            return ""
        node = self._map.masters[keys.slot_of_room(room)]
        return "" if node is None else node.address

    def shard_for(self, room: str) -> RedisShard:
        """The node holding the room's slot in this server's slot map."""
        if self._map is None:
            raise BrokerUnavailable("the Redis Cluster slot map has not been read yet")
        slot = keys.slot_of_room(room)
        node = self._map.masters[slot]
        if node is not None and node.address in self._unfenced:
            # Its rooms' history may lack acked events until they have new epochs.
            self.refresh_soon()  # the check is tried again at the next read
            if self._unfenced[node.address][0] is None:
                raise BrokerUnavailable(
                    f"the history of slot {slot}'s master {node.address} is not checked yet"
                )
            raise BrokerUnavailable(
                f"slot {slot}'s master {node.address} was promoted and its rooms' new "
                "epochs are not started yet"
            )
        shard = None if node is None else self._nodes.get(node.address)
        if shard is None:
            raise SlotMoved(f"slot {slot} has no master in the Redis Cluster slot map")
        return shard

    def require_lease(self) -> None:
        """No shard map (and no lease) in cluster mode: Redis Cluster places the rooms."""

    @property
    def control_shard(self) -> RedisShard:
        """The node of the cluster keys' slot (`{gamecluster}`): node reports, liveness,
        presence bookkeeping, load reports, and the control channel's subscription."""
        if self._control_node is None or self._control_node not in self._nodes:
            raise BrokerUnavailable("the Redis Cluster slot map has not been read yet")
        return self._nodes[self._control_node]

    # -- life ----------------------------------------------------------------------

    async def start(self) -> None:
        self._task = asyncio.create_task(self._watch(), name="redis cluster slot map")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait({self._task}, timeout=1.0)
        await asyncio.gather(
            *(node.close() for node in self._nodes.values()), return_exceptions=True
        )
        closing = [asyncio.create_task(client.aclose()) for client in self._seed_clients]
        await asyncio.wait(closing, timeout=self._timeout)
        await self._connector.aclose()

    def refresh_soon(self) -> None:
        """Read the slot map again now (a redirect, a lost connection, a moved channel)."""
        self._refresh_wanted.set()

    async def _watch(self) -> None:
        failing = False
        while True:
            self._refresh_wanted.clear()
            try:
                await self.refresh()
                failing = False
            except (RedisError, OSError, BrokerUnavailable) as exc:
                # Loud once per outage (or wait for another pod's fence), then at debug.
                level = logging.DEBUG if failing else logging.WARNING
                log.log(level, "reading the Redis Cluster slot map failed: %s", describe(exc))
                failing = True
            except Exception:
                log.exception("reading the Redis Cluster slot map failed")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._refresh_seconds):
                    await self._refresh_wanted.wait()
            # At most five reads a second, however many redirects asked for one.
            await asyncio.sleep(REFRESH_PAUSE)

    async def refresh(self) -> None:
        """Read the slot map, check the masters' histories (new epochs on failed-over
        ones), then use it."""
        found = await self._read_slot_map()
        if len(found.nodes()) > MAX_NODES:
            raise BrokerUnavailable(f"the Redis Cluster has more than {MAX_NODES} masters")
        previous = self._map
        if previous is not None and previous.complete and not found.complete:
            # A slot without a master in this reading would also lose what the last map
            # knows about its replicas: a promotion seen next would pass for a migration.
            raise BrokerUnavailable(
                "the Redis Cluster slot map read leaves slots without a master; "
                "keeping the last complete one"
            )
        failovers: dict[str, tuple[Node | None, Node]] = {}
        if previous is not None:
            failovers.update(_failovers(previous, found))
        # A check that failed before is tried again while its node still masters slots
        # (the installed map no longer shows that node's promotion).
        masters = found.nodes()
        for address, (old, new) in self._unfenced.items():
            if address in masters and masters[address].node_id == new.node_id:
                failovers.setdefault(address, (old, new))
        # Every master is checked before its slots are served: on first sight (this
        # server may have started after a promotion), when the slot map shows it promoted,
        # and again when its marker's slot changed or its session ended (a restart).
        checks = {
            address: failovers[address][0] if address in failovers else None
            for address, node in masters.items()
            if address in failovers or self._stale(node, found)
        }
        served = {
            address
            for address, old in checks.items()
            if old is None
            and (checked := self._checked.get(address)) is not None
            and checked.node_id == masters[address].node_id
            and checked.sessions == self._session_ends.get(address, 0)
        }
        self._checked = {a: c for a, c in self._checked.items() if a in masters}
        self._session_ends = {a: n for a, n in self._session_ends.items() if a in masters}
        self._recheck &= masters.keys()
        # 1. The map is used for every slot at once, the unchecked nodes' slots refused
        #    (shard_for) and their rooms' channels left unsubscribed: checks wait for
        #    Redis, and one node this server cannot check (or a slow one) must not hold
        #    the others' slots (a migrated room would stay unsubscribed here meanwhile).
        self._unfenced = {a: (old, masters[a]) for a, old in checks.items() if a not in served}
        await self._install(found)
        # 2. The checks, at once: a node that does not answer costs one timeout, not one
        #    per node.
        results = await asyncio.gather(
            *(self._check(masters[a], found.first_slot(a), old) for a, old in checks.items()),
            return_exceptions=True,
        )
        errors: list[str] = []
        placed = False
        for address, result in zip(checks, results, strict=True):
            if result is None:
                if self._current(address):
                    placed |= self._unfenced.pop(address, None) is not None
                continue
            if not isinstance(result, BrokerUnavailable):
                raise result
            if address in served:
                # A node checked here before, checked again (a restart, its marker's slot
                # moved away): still served, and checked again at the next read.
                log.info("%s; still served, checked again at the next read", result)
                self._recheck.add(address)
                continue
            errors.append(str(result))
        # 3. The nodes checked now serve their slots: their rooms' channels placed.
        if placed:
            await self._install(found)
        if errors:
            raise BrokerUnavailable(
                f"{'; '.join(errors)}; their rooms get unavailable until a slot map read "
                "checks them, every other slot follows the new map"
            )

    def _stale(self, node: Node, found: SlotMap) -> bool:
        """The master's history is to be checked (again) before (or while) it is served."""
        checked = self._checked.get(node.address)
        return (
            checked is None
            or checked.node_id != node.node_id
            or checked.slot != found.first_slot(node.address)
            or node.address in self._recheck
            or not self._current(node.address)
        )

    def _current(self, address: str) -> bool:
        """No Pub/Sub session of the master ended since its last check began."""
        checked = self._checked.get(address)
        return checked is not None and checked.sessions == self._session_ends.get(address, 0)

    async def _read_slot_map(self) -> SlotMap:
        """CLUSTER SLOTS from a live node this server knows, else from a seed, else from
        the others: the first map that covers every slot (a node that has just lost
        touch with the cluster may still answer with gaps), else the first one read."""
        # First the nodes that just said a slot is no longer theirs (a MOVED, a
        # sunsubscribe): their own view of that slot is current, a third node's may lag
        # (resharding tells the two nodes first, the others by gossip).
        first, self._ask_first = self._ask_first, set()
        live = [
            node.commands
            for node in sorted(self._nodes.values(), key=lambda n: n.name not in first)
            if node.ready
        ]
        others = [node.commands for node in self._nodes.values() if not node.ready]
        partial: SlotMap | None = None
        errors = []
        for client in [*live, *self._seed_clients, *others]:
            try:
                reply = await client.execute_command("CLUSTER SLOTS")  # type: ignore[no-untyped-call]
                found = SlotMap.parse(reply)
            except (RedisError, OSError) as exc:
                errors.append(describe(exc))
                continue
            if found.complete:
                return found
            partial = partial or found
        if partial is not None:
            return partial
        raise BrokerUnavailable(f"no Redis Cluster node answered CLUSTER SLOTS: {errors[:3]}")

    async def _check(self, node: Node, slot: int, old: Node | None) -> None:
        """The history marker of master `node` against its replication ids (relay.broker.
        history): new epochs for every room on it when its history may lack acked events
        (one relay server does it, the others wait: raising, the slot map is read again
        shortly), else it is marked. `old`: the master it replaced in the slot map.

        Where the marker lives: a node owns no key of its own, only slots, and any slot
        can migrate. The marker is in the node's lowest slot (keys.node_history_marker):
        a promoted replica takes every slot of its master, so it finds its master's marker
        there, replicated with the rest. When that slot migrates away the marker goes with
        it and the node's lowest slot changes: the node is checked again there, and a
        server that checked this very history (the same replication id: no restart, no
        promotion since) marks it again; one that did not (started after the migration)
        finds no marker, which is new epochs on a node that once was promoted (a needless
        fence, never a missed one) and a mark on any other. The marker also names the
        node that wrote it (history.marker_value): a promoted replica restarted (from its AOF)
        before any server checked it has the ids of its old master restarted, no
        `master_replid2`, but its marker names the old master's node: new epochs. So does
        a marker that migrated into another node's lowest slot, for a server that did not
        check that node's history before (one that did marks it again): needless, never
        missed (docs/operations.md, "Redis Cluster", says what this leaves)."""
        tag = keys.slot_tag(slot)
        marker_key = keys.node_history_marker(tag)
        checked = self._checked.get(node.address)
        sessions = self._session_ends.get(node.address, 0)
        same_node = old is None and checked is not None and checked.node_id == node.node_id
        known = checked.replid if same_node and checked is not None else None
        # A client of its own: history.replication leaves INFO raw on it.
        client = self._connector.client(
            self._endpoint(node.address), timeout=self._timeout, retries=0
        )
        try:
            info = await history.replication(client)
            if info.get("role") != "master":
                raise BrokerUnavailable(f"{node.address} is a replica, not a master")
            replid, replid2 = info["master_replid"], info["master_replid2"]
            await self._mark(client, marker_key, tag, node, old, replid, replid2, known)
        except (RedisError, OSError) as exc:
            raise BrokerUnavailable(
                f"checking the history of {node.address} failed: {describe(exc)}"
            ) from exc
        finally:
            await asyncio.wait({asyncio.create_task(client.aclose())}, timeout=1.0)
        self._checked[node.address] = Checked(node.node_id, slot, replid, sessions)
        self._recheck.discard(node.address)

    async def _mark(
        self,
        client: Redis,
        marker_key: str,
        tag: str,
        node: Node,
        old: Node | None,
        replid: str,
        replid2: str,
        known: str | None,
    ) -> None:
        value = history.marker_value(replid, node.node_id)
        for _ in range(2):  # a second look if another server marked it meanwhile
            try:
                found = await client.get(marker_key)
            except (AskError, TryAgainError):
                if known != replid:
                    raise
                # The marker's slot is half migrated away, the marker gone with it (ASK):
                # the history is the one checked here all the same (served, not refused
                # until the migration ends); the marker is written again in the node's
                # next lowest slot once the slot map names it.
                return
            if known == replid:
                # The history this server checked before (no restart, no promotion since):
                # only the marker moved (its slot migrated away, another node's came in).
                if found is None or _text(found) != value:
                    await self._renew(client, marker_key, node, replid)
                return
            marker, writer = (None, "") if found is None else history.parse_marker(_text(found))
            # Written by another node: this one is not the master that marked it, whatever
            # its ids say (a promoted replica restarted before any server checked it has
            # no `master_replid2` left, the ids of the old master restarted).
            moved = old is not None or history.other_writer(writer, node.node_id)
            verdict = history.classify(marker, replid, replid2, moved=moved)
            if verdict is Verdict.SAME:
                if old is not None:  # another relay server fenced it
                    self.failovers += 1
                    log.warning("Redis Cluster failover: %s replaced %s", node.address, old.address)
                return
            if verdict.fences:
                await self._fence(client, tag, marker_key, node, old, marker, replid, replid2)
                return
            if verdict is Verdict.NEW:
                marked = await self._renew(client, marker_key, node, replid, nx=True)
                if marked is not False:
                    if marked:
                        log.info("Redis Cluster: %s marked as history %s", node.address, replid[:8])
                    return
                continue
            log.warning(
                "Redis Cluster: %s restarted (history %s, its rooms' epochs were started on "
                "%s): the rooms keep their epochs",
                node.address, replid[:8], (marker or "")[:8],
            )  # fmt: skip
            await self._renew(client, marker_key, node, replid)
            return
        raise BrokerUnavailable(f"the history marker on {node.address} keeps changing")

    async def _renew(
        self, client: Redis, marker_key: str, node: Node, replid: str, *, nx: bool = False
    ) -> bool | None:
        """history.mark of `node`'s marker, a full node logged."""
        marked = await history.mark(
            client, marker_key, history.marker_value(replid, node.node_id), nx=nx
        )
        if marked is None:
            log.warning(
                "Redis Cluster: %s is full (maxmemory), its history marker is left unchanged",
                node.address,
            )
        return marked

    async def _fence(
        self,
        client: Redis,
        tag: str,
        marker_key: str,
        node: Node,
        old: Node | None,
        marker: str | None,
        replid: str,
        replid2: str,
    ) -> None:
        """New epochs for every room on `node`, a replica promoted in place of `old` (or,
        `old` None, of the master its marker names: seen by its history alone) (see the
        module's docstring): history.new_epochs, with its claim in the node's slot of
        `tag`, named by the histories (the same on every relay server, whether it saw
        the slot map change or not: one new epoch per failover)."""
        claim = history.claim_name(f"{{{tag}}}", marker, replid)
        if old is not None:
            whence = old.address
        elif marker is not None:
            whence = f"the master of history {marker[:8]}"
        else:
            whence = f"an unmarked master {replid2[:8]}"
        try:
            started = await history.new_epochs(
                client, claim=claim, holder=self._node_id.encode(), marker=marker_key,
                replid=history.marker_value(replid, node.node_id),
            )  # fmt: skip
        except history.FenceBusy:
            self.refresh_soon()
            raise BrokerUnavailable(
                f"{node.address} replaced {whence}: another relay server is starting its "
                "rooms' new epochs; waiting for it"
            ) from None
        self.failovers += 1
        if started is None:
            log.warning("Redis Cluster failover: %s replaced %s", node.address, whence)
            return
        epoch, rooms = started
        log.warning(
            "Redis Cluster failover: %s replaced %s; %d rooms start epoch %s",
            node.address, whence, rooms, epoch,
        )  # fmt: skip

    def _node(self, address: str, found: SlotMap) -> RedisShard:
        """The connections of master `address`, made (and started) on first sight."""
        shard = self._nodes.get(address)
        if shard is None:
            shard = RedisShard(
                self._endpoint(address),
                self._node_id,
                self._options,
                on_message=self._received,
                on_reconnect=lambda: self._reconnected(address),
                on_resubscribed=self._resubscribed,
                on_slot_left=self._slot_left,
            )
            shard.set_probe_channel(self._probe_channel(address, found))
            self._nodes[address] = shard
            shard.start()
        return shard

    def _endpoint(self, address: str) -> RedisEndpoint:
        seed = self._seeds[0]
        return RedisEndpoint(address, f"{self._scheme}://{address}", seed.username, seed.password)

    def _probe_channel(self, address: str, found: SlotMap) -> bytes:
        return keys.node_channel(self._node_id, keys.slot_tag(found.first_slot(address)))

    async def _install(self, found: SlotMap) -> None:
        """Use `found`: route by it, move the channels whose slot has a new master."""
        masters = found.nodes()
        for address in masters:
            self._node(address, found).set_probe_channel(self._probe_channel(address, found))
        self._map = found
        control = found.masters[key_slot(keys.SLOTTED.alive.encode())]
        control_address = None if control is None else control.address
        if control_address != self._control_node:
            if self._control_node in self._nodes:
                self._nodes[self._control_node].set_control(None)
            if control_address is not None:
                self._nodes[control_address].set_control(self._control_received)
            self._control_node = control_address
        # Channels on a node that no longer has their slot: homeless until placed.
        for address, node in self._nodes.items():
            for channel in node.channels - {keys.CONTROL_CHANNEL}:
                owner = found.masters[key_slot(channel)]
                if owner is None or owner.address != address:
                    await node.unsubscribe(channel)
                    self._homeless.add(channel)
        moved: list[str] = []
        for channel in sorted(self._homeless):
            owner = found.masters[key_slot(channel)]
            target = None if owner is None else self._nodes.get(owner.address)
            if owner is None or target is None or owner.address in self._unfenced:
                continue  # subscribed (and its members resynced) once the node is fenced
            if target.ready:
                try:
                    await target.subscribe(channel)
                except BrokerUnavailable as exc:
                    log.info("resubscribing a moved channel on %s failed: %s", target.url, exc)
                    self.refresh_soon()
                    continue
                if (room := keys.room_of(channel)) is not None:
                    moved.append(room)
            else:
                target.want(channel)  # subscribed (and healed) when that node is live
            self._homeless.discard(channel)
        if moved:
            log.info("Redis Cluster slots moved: %d rooms resubscribed", len(moved))
            self._gap(moved)
        if self.unplaced != self._unplaced_logged:
            # Members of these rooms hear nothing live meanwhile: not silently.
            level = logging.WARNING if self.unplaced else logging.INFO
            log.log(level, "Redis Cluster: %d room channels subscribed nowhere", self.unplaced)
            self._unplaced_logged = self.unplaced
        # Masters no more (demoted, removed) and holding nothing: closed.
        for address in [a for a, n in self._nodes.items() if a not in masters and not n.channels]:
            await self._nodes.pop(address).close()

    def _slot_left(self, node: RedisShard, channel: bytes) -> None:
        """A channel's slot left `node`: a room channel waits for the slot map to name its
        new owner; the probe channel only needs the map read (a new probe channel)."""
        if keys.room_of(channel) is not None:
            self._homeless.add(channel)
        self._ask_first.add(node.name)
        self.refresh_soon()

    def _reconnected(self, address: str) -> None:
        """A master's Pub/Sub session ended: perhaps a restart, which changes the node's
        replication id; its slots are refused until the next read has checked its
        history again (the marker follows the new id, so a later promotion is still
        recognised by its `master_replid2`; a restart from an RDB snapshot older than
        the acked events is fenced), not served meanwhile: the publish connection
        reconnects as soon as the server is up, and would reuse a lost offset under the
        old epoch. Connections already open are left alone, as for a Sentinel shard."""
        self._session_ends[address] = self._session_ends.get(address, 0) + 1
        checked = self._checked.get(address)
        if checked is not None and address not in self._unfenced:
            self._unfenced[address] = (None, Node(address, checked.node_id))
        self._options.on_reconnect()
        self.refresh_soon()

    # -- rooms ---------------------------------------------------------------------

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
        shard = self.shard_for(room).live()
        try:
            return await self._writer.publish(shard, room, data, ts, policy, msg_id, subject, trace)
        except SlotMoved:
            self._ask_first.add(shard.name)
            self.refresh_soon()
            raise
        except (RedisError, OSError) as exc:
            raise BrokerUnavailable(f"publish on {shard.url} failed: {describe(exc)}") from exc

    async def history(
        self, room: str, after: int | None, policy: RoomPolicy, *, limit: int | None = None
    ) -> History:
        shard = self.shard_for(room).live()
        try:
            return await self._writer.history(shard, room, after, policy, limit)
        except SlotMoved:
            self._ask_first.add(shard.name)
            self.refresh_soon()
            raise

    async def subscribe(self, room: str) -> None:
        channel = keys.channel(room)
        self._homeless.discard(channel)
        await self._guarded(self.shard_for(room).live().subscribe(channel))

    async def unsubscribe(self, room: str) -> None:
        channel = keys.channel(room)
        self._homeless.discard(channel)
        for node in list(self._nodes.values()):
            if channel in node.channels:
                await node.unsubscribe(channel)

    async def _guarded(self, call: Awaitable[None]) -> None:
        try:
            await call
        except BrokerUnavailable:
            self.refresh_soon()  # a SSUBSCRIBE refused as MOVED ends the node's connection
            raise

    async def broadcast(self, message: bytes) -> None:
        # A PUBLISH (not SPUBLISH) reaches the subscribers of every node of the cluster.
        node = self.control_shard
        try:
            await node.commands.publish(keys.CONTROL_CHANNEL, message)
        except (RedisError, OSError) as exc:
            reason = f"control PUBLISH on {node.url} failed: {describe(exc)}"
            raise BrokerUnavailable(reason) from exc

    async def report_load(self, connections: int) -> None:
        """This server's connection count, for the operator's autoscaler: in the cluster
        keys' slot, so the operator reads every pod's with one MGET on one node."""
        key = load_report_key(self._node_id, cluster=True)
        try:
            await self.control_shard.commands.set(key, connections, ex=LOAD_REPORT_TTL_SECONDS)
        except (RedisError, OSError, BrokerUnavailable) as exc:
            log.debug("load report failed: %r", exc)


def _failovers(before: SlotMap, after: SlotMap) -> dict[str, tuple[Node, Node]]:
    """New master address -> (old master, new master), for every slot whose new master
    was one of its replicas in `before`, or no master at all there (a promotion the
    previous map did not show, e.g. of a replica that moved between masters), rather
    than another master of `before` (a migration). The cost: a slot migrated to a
    brand-new master (a node added, then resharded onto) restarts its rooms' epochs."""
    was_master = {node.node_id for node in before.masters if node is not None}
    found: dict[str, tuple[Node, Node]] = {}
    for slot, (old, new) in enumerate(zip(before.masters, after.masters, strict=True)):
        if old is None or new is None or old.node_id == new.node_id:
            continue
        promoted = new.node_id in before.replicas[slot] or new.node_id not in was_master
        if promoted and new.address not in found:
            found[new.address] = (old, new)
    return found


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
