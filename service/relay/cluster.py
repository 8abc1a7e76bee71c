"""What the cluster knows beyond rooms' events: live nodes, room member counts, presence.

Each relay server writes, every load-report interval, a node report (connections, rooms,
version) and its rooms' local member counts; the server API reads them back (GET
/nodes, GET /rooms). Members of presence rooms live per room, each tagged with its node,
and every node keeps a liveness score: when a node has not renewed its score for
`dead_after` seconds (a SIGKILLed pod), the first surviving node to claim it (ZREM
returns 1 for exactly one caller) removes that node's members and returns their leaves,
so they are announced once. With the memory broker all of it is this process's own.

Keys (Redis): per node `gamecluster:node:{id}` (report, TTL) and `gamecluster:rooms:{id}`
(hash room -> members, TTL) and `gamecluster:presence:{id}` (set of its presence rooms);
`gamecluster:alive` (sorted set node -> last renewal, ms); per room `room:{R}:presence`
(hash conn -> member JSON) on the room's shard.
"""

from __future__ import annotations

import abc
import logging
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any, Final, TypeVar, cast

import orjson
from redis.asyncio import Redis
from redis.exceptions import RedisError

from relay.broker import Broker, BrokerUnavailable, describe, keys
from relay.broker.redis import RedisBroker
from relay.broker.slots import RedisClusterBroker
from relay.contract import LOAD_REPORT_TTL_SECONDS

T = TypeVar("T")
log = logging.getLogger("relay.cluster")

_REAP: Final = """
-- KEYS: 1 alive set; ARGV: 1 node, 2 silent since (ms)
-- Removed only if still silent: a renewal between the read and this must keep it (a
-- shard map switch waits for every member, relay.broker.shardmap).
-- (ZRANGEBYSCORE, not ZSCORE: the relay's ACL grants it already; the silent are few.)
for _, node in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[2])) do
  if node == ARGV[1] then
    return redis.call('ZREM', KEYS[1], ARGV[1])
  end
end
return 0
"""

MAX_NODES: Final = 1000
"""Node reports read by one GET /nodes or /rooms; more are left out (a cluster this size
is far past what one Redis for reports is meant for)."""

Member = dict[str, Any]


@dataclass(frozen=True, slots=True)
class NodeReport:
    node: str
    connections: int
    rooms: int
    version: str


class ClusterState(abc.ABC):
    @abc.abstractmethod
    async def report(self, node: NodeReport, rooms: dict[str, int]) -> None:
        """Write this node's report and its rooms' local member counts."""

    @abc.abstractmethod
    async def nodes(self) -> list[NodeReport]: ...

    @abc.abstractmethod
    async def rooms(self) -> dict[str, int]:
        """Member counts per room, summed over live nodes."""

    @abc.abstractmethod
    async def presence_apply(
        self, room: str, joins: list[Member], leaves: list[str], node_empty: bool
    ) -> None:
        """Add `joins`, remove the connections `leaves`; `node_empty`: this node has no
        member left in the room."""

    @abc.abstractmethod
    async def presence_members(self, room: str, limit: int) -> tuple[int, list[Member] | None]:
        """The member count, and the members unless there are more than `limit`."""

    @abc.abstractmethod
    async def alive(self, node: str) -> bool:
        """Renew this node's liveness; False when it had been declared dead (re-add)."""

    @abc.abstractmethod
    async def reap(self, dead_after: float) -> list[tuple[str, list[Member]]]:
        """Claim nodes silent for `dead_after` seconds, remove their members, return them."""

    async def forget(self, node: str) -> None:
        """A node stopping cleanly: no longer watched."""
        return None


class LocalState(ClusterState):
    """One node (memory broker): everything is this process's own."""

    def __init__(self) -> None:
        self._node: NodeReport | None = None
        self._rooms: dict[str, int] = {}
        self._presence: dict[str, dict[str, Member]] = {}

    async def report(self, node: NodeReport, rooms: dict[str, int]) -> None:
        self._node, self._rooms = node, rooms

    async def nodes(self) -> list[NodeReport]:
        return [self._node] if self._node is not None else []

    async def rooms(self) -> dict[str, int]:
        return dict(self._rooms)

    async def presence_apply(
        self, room: str, joins: list[Member], leaves: list[str], node_empty: bool
    ) -> None:
        members = self._presence.setdefault(room, {})
        for conn in leaves:
            members.pop(conn, None)
        for member in joins:
            members[member["conn"]] = member
        if not members:
            del self._presence[room]

    async def presence_members(self, room: str, limit: int) -> tuple[int, list[Member] | None]:
        members = self._presence.get(room, {})
        listed = list(members.values()) if len(members) <= limit else None
        return len(members), listed

    async def alive(self, node: str) -> bool:
        return True

    async def reap(self, dead_after: float) -> list[tuple[str, list[Member]]]:
        return []


class RedisState(ClusterState):
    """Sharded Redis: the cluster keys on the control shard. Redis Cluster: under one
    hash tag (keys.SLOTTED), on the node of that slot, which can change: looked up per
    call."""

    def __init__(self, broker: RedisBroker | RedisClusterBroker, node: str) -> None:
        self._broker = broker
        self._node = node
        self._names = keys.SLOTTED if isinstance(broker, RedisClusterBroker) else keys.PLAIN

    @property
    def _commands(self) -> Redis:
        """Raises BrokerUnavailable while a cluster's slot map is not read yet."""
        return self._broker.control_shard.commands

    async def report(self, node: NodeReport, rooms: dict[str, int]) -> None:
        ttl = LOAD_REPORT_TTL_SECONDS
        body = orjson.dumps(
            {
                "node": node.node,
                "connections": node.connections,
                "rooms": node.rooms,
                "version": node.version,
            }
        )
        async with self._commands.pipeline(transaction=True) as pipe:
            pipe.set(self._names.node_report(node.node), body, ex=ttl)
            pipe.delete(self._names.node_rooms(node.node))
            if rooms:
                pipe.hset(self._names.node_rooms(node.node), mapping=rooms)  # type: ignore[arg-type]
                pipe.expire(self._names.node_rooms(node.node), ttl)
            await _redis(pipe.execute())

    async def nodes(self) -> list[NodeReport]:
        # Known keys, not a SCAN of the keyspace: the live nodes are the liveness set's
        # members (a dead node's entry is removed by the survivor that claims it).
        names = await _redis(self._commands.zrange(self._names.alive, 0, MAX_NODES - 1))
        if not names:
            return []
        report_keys = [self._names.node_report(_text(name)) for name in names]
        reports = []
        for raw in await _redis(self._commands.mget(report_keys)):
            if raw is None:
                continue  # a node alive but with no report yet, or an expired one
            obj = orjson.loads(raw)
            reports.append(
                NodeReport(obj["node"], int(obj["connections"]), int(obj["rooms"]), obj["version"])
            )
        return sorted(reports, key=lambda r: r.node)

    async def rooms(self) -> dict[str, int]:
        totals: dict[str, int] = {}
        for node in await self.nodes():
            counts = await _redis(self._commands.hgetall(self._names.node_rooms(node.node)))
            for room, count in counts.items():
                name = _text(room)
                totals[name] = totals.get(name, 0) + int(count)
        return totals

    async def presence_apply(
        self, room: str, joins: list[Member], leaves: list[str], node_empty: bool
    ) -> None:
        key = keys.presence(room)
        # Placed by the map, like a publish: not past the lease, when the room may have
        # moved without this server and the shard it places it on was cleaned (ghosts).
        self._broker.require_lease()
        async with self._broker.shard_for(room).live().commands.pipeline(transaction=True) as pipe:
            if leaves:
                pipe.hdel(key, *leaves)
            if joins:
                pipe.hset(key, mapping={m["conn"]: orjson.dumps(m) for m in joins})
            await _redis(pipe.execute())
        rooms = self._names.node_presence_rooms(self._node)
        if node_empty:
            await _redis(self._commands.srem(rooms, room))
        elif joins:
            await _redis(self._commands.sadd(rooms, room))

    async def presence_members(self, room: str, limit: int) -> tuple[int, list[Member] | None]:
        commands = self._broker.shard_for(room).live().commands
        count = int(await _redis(commands.hlen(keys.presence(room))))
        if count > limit:
            return count, None
        values = await _redis(commands.hvals(keys.presence(room)))
        members = sorted((orjson.loads(v) for v in values), key=lambda m: (m["sub"], m["conn"]))
        return len(members), members

    async def alive(self, node: str) -> bool:
        sent = time.monotonic()
        added = await _redis(self._commands.zadd(self._names.alive, {node: time.time() * 1000}))
        if isinstance(self._broker, RedisClusterBroker):
            return not added  # no shard map in a Redis Cluster (relay.broker.slots)
        watcher = self._broker.shard_map
        # Still in the alive set: the shard map's lease goes on (relay.broker.shardmap).
        watcher.renewed(sent, present=not added)
        # Re-added by a read of the map since the last tick: it had been reaped as well.
        return not added and not watcher.take_rejoined()

    async def reap(self, dead_after: float) -> list[tuple[str, list[Member]]]:
        limit = (time.time() - dead_after) * 1000
        silent = await _redis(
            self._commands.zrangebyscore(self._names.alive, "-inf", limit, 0, 100, withscores=True)
        )
        reaped: list[tuple[str, list[Member]]] = []
        for raw, score in cast(list[tuple[bytes, float]], silent):
            dead = _text(raw)
            # Registered on the client of the moment (a cluster's keys node can change):
            # redis-py's Script, EVALSHA and SCRIPT LOAD on NOSCRIPT.
            reap = self._commands.register_script(_REAP)
            if not await _redis(reap(keys=[self._names.alive], args=[dead, limit])):
                continue  # another node claimed it (it announces the leaves), or it came back
            rooms_key = self._names.node_presence_rooms(dead)
            unreachable = False
            for room_raw in await _redis(self._commands.smembers(rooms_key)):
                room = _text(room_raw)
                try:
                    reaped.append((room, await self._remove_node_members(room, dead)))
                except BrokerUnavailable as exc:
                    # That room's shard is down: the node's other rooms are still reaped
                    # now, and this one on a later tick (below).
                    log.info("members of dead node %s in %s left for later: %s", dead, room, exc)
                    unreachable = True
            if unreachable:
                # Dead again at its old score, so a later tick claims it once more; the rooms
                # done now have none of its members left, so nothing is announced twice.
                await _redis(self._commands.zadd(self._names.alive, {dead: score}))
                continue
            await _redis(self._commands.delete(rooms_key, self._names.node_rooms(dead)))
        return reaped

    async def forget(self, node: str) -> None:
        await _redis(self._commands.zrem(self._names.alive, node))

    async def _remove_node_members(self, room: str, dead: str) -> list[Member]:
        commands = self._broker.shard_for(room).live().commands
        key = keys.presence(room)
        gone = []
        try:
            async for _, value in commands.hscan_iter(key, count=500):
                member = orjson.loads(value)
                if member.get("node") == dead:
                    gone.append(member)
        except (RedisError, OSError) as exc:
            raise BrokerUnavailable(f"Redis: {describe(exc)}") from exc
        if gone:
            await _redis(commands.hdel(key, *(m["conn"] for m in gone)))
        return gone


def make_state(broker: Broker, node: str) -> ClusterState:
    if isinstance(broker, RedisBroker | RedisClusterBroker):
        return RedisState(broker, node)
    return LocalState()


async def _redis(call: Awaitable[T]) -> T:
    """Await a redis-py call; its failures become BrokerUnavailable."""
    try:
        return await call
    except (RedisError, OSError) as exc:
        raise BrokerUnavailable(f"Redis: {describe(exc)}") from exc


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
