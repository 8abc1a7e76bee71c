"""The active shard map: which Redis shards rooms are placed on, switched without split-brain.

RELAY_REDIS_URLS names the shards a relay server *can* reach; the shards rooms are
*placed* on are the active map, kept on the control shard (the first of
RELAY_REDIS_URLS) in the hash `gamecluster:shardmap`: a version and a list of shard
names. Placement is rendezvous hashing over the map's names. With no map in Redis, the
first relay server writes its configured names as version 1 (HSETNX, in a script), so a
deployment that never switches behaves as before the map existed.

A switch to a new list of names (`relay shards switch`) is a barrier over the live relay
servers (the `gamecluster:alive` set, members renewed within `dead_after`), driven by the
relays themselves: whoever's ack completes a phase advances it, in one script, so no
coordinator is needed and a relay that starts or reconnects mid-switch reads the phase
from the hash. A room *moves* when its place differs between the old and the new map;
rooms that do not move are never paused.

1. prepare: every relay refuses publishes of moving rooms (`unavailable`, which clients
   retry: never accepted and lost), waits for its publishes already sent to finish, and
   acks. A relay that lacks a shard of the new map does not ack (it logs why). If the
   prepare phase is not complete by the switch's deadline, it is aborted: the old map
   stays, publishes resume; nothing had moved yet, so nothing needs undoing.
2. move (the map has flipped to the new version): every relay subscribes its moving rooms
   on their new shard, unsubscribes them on the old, writes its local presence members of
   those rooms on the new shard, and acks; once every live relay has acked, one relay (a
   SET NX claim that expires if its holder dies) deletes the moved rooms' history, meta and
   presence from their old shards (after the acks: a relay still on the old map could
   write there again), so a later switch back cannot resurrect a stale epoch (an old shard
   it cannot reach, a dead one being switched out, is marked *dirty* instead: see below).
   Publishes of moving rooms stay refused until every live relay has acked: no publish
   goes to a shard where a member is not yet listening. This phase does not abort (relays
   have moved): past the deadline it is reported as stalled (log, metric, `relay shards
   show`) and keeps waiting; a relay that died drops out of the barrier once it is
   `dead_after` silent.
3. stable: publishes of the moved rooms go to their new shard.

A dirty shard (the set `gamecluster:shardmap:dirty`) may still hold the history and epoch
of rooms that moved away from it. No switch may place rooms on it (BEGIN refuses a map
that names it) until a relay server that can reach it has deleted, while the map is
stable, every room there that the active map does not place there; then it is clean.
So switching out a shard that is gone does not wait for it, and its stale epochs can
never be served again.

A relay server left out of a barrier (silent for `dead_after`: cut off from the control
shard, or its process paused) would still place rooms by the map it last read, and
publish to (or write presence on) a shard the others have left. So a server publishes
and writes presence only while it holds a *lease*: each read of the map renews its
liveness in the same script, and the lease runs for LEASE_FRACTION of `dead_after` from
the moment that read was sent (a liveness renewal by presence, while the lease holds,
extends it). Past it, publishes are refused (`unavailable`), presence changes wait
(retried), and the server is unready until a read of the map succeeds: a barrier can
leave a server out only once that server has stopped writing by its map. The margin
(the rest of `dead_after`) covers a publish still on its way and clock skew between
servers, whose wall clocks the alive set compares.

Durable rooms that move start a new epoch on their new shard: members are told
(`joined`, `recovered: false`) and resuming clients get `recovered: false`. History is not
copied. The dedupe window of a publish id does not cross a move either.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal, cast

from redis.asyncio import Redis
from redis.exceptions import AskError, ClusterCrossSlotError, RedisError

from relay.broker import keys
from relay.broker.base import BrokerUnavailable, describe
from relay.contract import CLUSTER_KEY_PREFIX

log = logging.getLogger("relay.broker.shardmap")

MAP_KEY: Final = f"{CLUSTER_KEY_PREFIX}shardmap"
"""Hash on the control shard: version, shards, phase and the switch in progress."""
DIRTY_KEY: Final = f"{MAP_KEY}:dirty"
"""Set on the control shard: shards that rooms moved away from while unreachable."""
ANNOUNCE: Final = b"shardmap"
"""Sent on the control channel when the map's phase changed: read it now, not at the
next poll."""
SWITCH_TIMEOUT_SECONDS: Final = 30.0
"""Default bound of a switch: an unfinished prepare phase aborts, a move phase is stalled."""
POLL_SECONDS: Final = 1.0
"""How often a relay reads the map while none is switching (announcements may be missed
while a Pub/Sub connection is rebuilt); more often with a short `dead_after`."""
SWITCH_POLL_SECONDS: Final = 0.2
"""How often a relay reads and advances the map during a switch: bounds how long a dead
relay's departure or a deadline goes unnoticed past its time."""
CLEANUP_CLAIM_SECONDS: Final = 30
"""A cleanup claim's lifetime: if its holder dies, another relay takes it over after it."""
LEASE_FRACTION: Final = 2 / 3
"""How much of `dead_after` a read of the map lets this server publish by it (see above)."""
ACK_TTL_SECONDS: Final = 3600
"""Ack sets of a switch expire: an aborted or finished switch leaves nothing behind."""
SCAN_COUNT: Final = 500

Phase = Literal["stable", "prepare", "move"]
PHASES: Final[tuple[Phase, ...]] = ("stable", "prepare", "move")


class ShardMapError(ValueError):
    """A shard list that cannot become the active map."""


def rendezvous_score(shard: str, room: str) -> int:
    digest = hashlib.blake2b(f"{shard}\x00{room}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


@dataclass(frozen=True, slots=True)
class ShardMap:
    version: int
    names: tuple[str, ...]

    def place(self, room: str) -> str:
        """The room's shard: rendezvous hashing over the names (about 1/N of the rooms
        move when a shard is added; none move when a shard's URL or password changes)."""
        if len(self.names) == 1:  # once per publish: no hashing when there is no choice
            return self.names[0]
        return max(self.names, key=lambda name: rendezvous_score(name, room))


def validate(names: Sequence[str], control: str, known: Iterable[str] | None = None) -> None:
    """Raise ShardMapError unless `names` can be a map whose control shard is `control`."""
    if not names:
        raise ShardMapError("a shard map needs at least one shard")
    if len(set(names)) != len(names):
        raise ShardMapError(f"shard names repeat in {','.join(names)}")
    if control not in names:
        raise ShardMapError(
            f"the control shard {control!r} (the first of RELAY_REDIS_URLS) must be in every "
            f"shard map; {','.join(names)} leaves it out"
        )
    if known is not None:
        unknown = [n for n in names if n not in set(known)]
        if unknown:
            raise ShardMapError(
                f"shard {unknown[0]!r} is not in RELAY_REDIS_URLS: add its endpoint to every "
                "relay first (roll them), then switch"
            )


@dataclass(frozen=True, slots=True)
class MapState:
    """The map hash as read: the active map and, during a switch, its phase."""

    active: ShardMap
    phase: Phase = "stable"
    other: ShardMap | None = None
    """prepare: the map being switched to; move: the map switched from."""
    switch: str = ""
    """The switch's id (its ack sets are named by it); empty when stable."""
    deadline_ms: int = 0
    cleaned: bool = False
    last: str = ""
    """How the last switch ended (done, aborted and why): shown by `relay shards show`."""

    @classmethod
    def parse(cls, fields: dict[Any, Any]) -> MapState:
        f = {_text(k): _text(v) for k, v in fields.items()}
        try:
            version = int(f["version"])
            active = ShardMap(version, _names(f["shards"]))
            phase = f.get("phase", "stable")
            if phase not in PHASES:
                raise ValueError(f"phase {phase!r}")
            other = None
            if phase == "prepare":
                other = ShardMap(version + 1, _names(f["next"]))
            elif phase == "move":
                other = ShardMap(version - 1, _names(f["previous"]))
        except (KeyError, ValueError) as exc:
            raise ShardMapError(f"{MAP_KEY} in Redis is not a shard map: {exc!r}") from exc
        return cls(
            active,
            phase,
            other,
            f.get("switch", "") if phase != "stable" else "",
            int(f.get("deadline", "0") or 0),
            f.get("cleaned") == "1",
            f.get("last", ""),
        )

    @property
    def switching(self) -> bool:
        return self.phase != "stable"

    @property
    def old(self) -> ShardMap:
        return self.other if self.phase == "move" and self.other is not None else self.active

    @property
    def new(self) -> ShardMap:
        return self.other if self.phase == "prepare" and self.other is not None else self.active

    def moving(self, room: str) -> bool:
        """True while `room`'s publishes are refused: it changes shard in this switch."""
        return self.switching and self.old.place(room) != self.new.place(room)

    def stalled(self, now_ms: int) -> bool:
        return self.switching and now_ms > self.deadline_ms

    def describe(self) -> dict[str, Any]:
        """For `relay shards show` and logs: no URL, names only."""
        shown: dict[str, Any] = {
            "version": self.active.version,
            "shards": list(self.active.names),
            "phase": self.phase,
        }
        if self.phase == "prepare" and self.other is not None:
            shown["next"] = list(self.other.names)
        if self.phase == "move" and self.other is not None:
            shown["previous"] = list(self.other.names)
        if self.switching:
            shown["deadline_ms"] = self.deadline_ms
            shown["stalled"] = self.stalled(now_ms())
        if self.last:
            shown["last"] = self.last
        return shown


# Scripts: each runs atomically on the control shard. The relay's ACL grants every
# command they call (relay.contract.RELAY_REDIS_COMMANDS).

_INIT: Final = """
-- KEYS: 1 map, 2 alive set; ARGV: 1 names (comma-separated), 2 version, 3 node, 4 now (ms)
if redis.call('HSETNX', KEYS[1], 'version', ARGV[2]) == 1 then
  redis.call('HSET', KEYS[1], 'shards', ARGV[1], 'phase', 'stable')
end
-- Liveness renewed with the read: a barrier cannot leave this server out for dead_after.
local added = redis.call('ZADD', KEYS[2], ARGV[4], ARGV[3])
return {redis.call('HGETALL', KEYS[1]), added, redis.call('SMEMBERS', KEYS[3])}
"""

_BEGIN: Final = """
-- KEYS: 1 map, 2 dirty shards; ARGV: 1 names, 2 switch id, 3 now (ms), 4 timeout (ms)
if redis.call('HGET', KEYS[1], 'version') == false then
  return redis.error_reply('no shard map yet: start a relay server first')
end
local phase = redis.call('HGET', KEYS[1], 'phase')
if phase ~= 'stable' then
  return redis.error_reply('a switch is in progress (phase ' .. phase .. ')')
end
if redis.call('HGET', KEYS[1], 'shards') ~= ARGV[1] then
  for _, dirty in ipairs(redis.call('SMEMBERS', KEYS[2])) do
    for name in string.gmatch(ARGV[1], '[^,]+') do
      if name == dirty then
        return redis.error_reply('shard ' .. dirty .. ' is not cleaned yet: rooms moved ' ..
          'away from it while it was unreachable, and no map may place rooms on it until ' ..
          'a relay server that can reach it has removed what they left there')
      end
    end
  end
  redis.call('HSET', KEYS[1], 'phase', 'prepare', 'next', ARGV[1], 'switch', ARGV[2],
    'deadline', tonumber(ARGV[3]) + tonumber(ARGV[4]), 'timeout', ARGV[4], 'cleaned', '0')
end
return redis.call('HGETALL', KEYS[1])
"""

_ADVANCE: Final = """
-- KEYS: 1 map, 2 alive set, 3 prepare acks, 4 move acks
-- ARGV: 1 switch id, 2 now (ms), 3 dead after (ms), 4 this node ('' to only advance),
--       5 the phase it acks ('' for none), 6 '1' when it finished the cleanup
local map = KEYS[1]
local phase = redis.call('HGET', map, 'phase')
if redis.call('HGET', map, 'switch') ~= ARGV[1] or (phase ~= 'prepare' and phase ~= 'move') then
  return {redis.call('HGETALL', map), {}}
end
local acks = phase == 'prepare' and KEYS[3] or KEYS[4]
if ARGV[4] ~= '' and ARGV[5] == phase then
  redis.call('SADD', acks, ARGV[4])
  redis.call('EXPIRE', acks, 3600)
end
if ARGV[6] == '1' and phase == 'move' then
  redis.call('HSET', map, 'cleaned', '1')
end
local acked = {}
for _, node in ipairs(redis.call('SMEMBERS', acks)) do acked[node] = true end
local now = tonumber(ARGV[2])
local missing = {}
for _, node in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], now - tonumber(ARGV[3]), '+inf')) do
  if not acked[node] then table.insert(missing, node) end
end
local deadline = tonumber(redis.call('HGET', map, 'deadline'))
if phase == 'prepare' then
  if #missing == 0 then
    local version = tonumber(redis.call('HGET', map, 'version')) + 1
    redis.call('HSET', map, 'version', version, 'previous', redis.call('HGET', map, 'shards'),
      'shards', redis.call('HGET', map, 'next'), 'phase', 'move',
      'deadline', now + tonumber(redis.call('HGET', map, 'timeout')))
    redis.call('HDEL', map, 'next')
  elseif now > deadline then
    redis.call('HSET', map, 'phase', 'stable', 'last', 'switch to ' ..
      redis.call('HGET', map, 'next') .. ' aborted: not prepared in time by ' ..
      table.concat(missing, ','))
    redis.call('HDEL', map, 'next', 'switch', 'deadline', 'timeout', 'cleaned')
  end
elseif #missing == 0 and redis.call('HGET', map, 'cleaned') == '1' then
  redis.call('HSET', map, 'phase', 'stable', 'last', 'switched to version ' ..
    redis.call('HGET', map, 'version'))
  redis.call('HDEL', map, 'previous', 'switch', 'deadline', 'timeout', 'cleaned')
end
return {redis.call('HGETALL', map), missing}
"""


def now_ms() -> int:
    return int(time.time() * 1000)


def _acks(switch: str, phase: Phase) -> str:
    return f"{MAP_KEY}:ack:{switch}:{phase}"


def _cleanup_claim(switch: str) -> str:
    return f"{MAP_KEY}:cleanup:{switch}"


def _pairs(reply: Sequence[Any]) -> dict[str, str]:
    """HGETALL as a script returns it: a flat list of field, value."""
    items = [_text(x) for x in reply]
    return dict(zip(items[::2], items[1::2], strict=True))


async def read(control: Redis) -> MapState | None:
    """The map as stored, or None when no relay server has written one yet."""
    fields = await control.hgetall(MAP_KEY)
    return MapState.parse(fields) if fields else None


async def begin(
    control: Redis, names: Sequence[str], *, control_name: str, timeout: float
) -> MapState:
    """Start a switch to `names` (the relays carry it out); returns the new state.

    Raises ShardMapError for a list that cannot be a map or when a switch is running.
    """
    validate(names, control_name)
    start = now_ms()
    try:
        fields = await control.register_script(_BEGIN)(
            keys=[MAP_KEY, DIRTY_KEY],
            args=[",".join(names), secrets.token_hex(6), start, int(timeout * 1000)],
        )
    except RedisError as exc:
        if any(m in str(exc) for m in ("in progress", "no shard map", "not cleaned yet")):
            raise ShardMapError(str(exc)) from None
        raise
    await control.publish(keys.CONTROL_CHANNEL, ANNOUNCE)
    return MapState.parse(_pairs(fields))


async def unacked(control: Redis, state: MapState) -> dict[str, float]:
    """Relay servers of the alive set that have not acked the switch's current phase, with
    the seconds since each last renewed its liveness (the barrier waits for those seen
    within `dead_after`; older ones are about to drop out of it): for `relay shards`."""
    if not state.switching:
        return {}
    acked = {_text(node) for node in await control.smembers(_acks(state.switch, state.phase))}
    alive = cast(
        "list[tuple[bytes, float]]", await control.zrange(keys.ALIVE, 0, -1, withscores=True)
    )
    now = now_ms()
    return {
        _text(node): max(0.0, (now - score) / 1000)
        for node, score in alive
        if _text(node) not in acked
    }


class InFlight:
    """Publishes sent and not yet answered, by generation.

    A prepare must not ack while a publish of a moving room sent before it is still on
    its way to the old shard: it could land after the flip, where no member listens.
    `drain()` starts a new generation and waits for the older ones to finish (bounded by
    the publish timeout, after which a publish has failed anyway).
    """

    __slots__ = ("_counts", "_drained", "_generation")

    def __init__(self) -> None:
        self._generation = 0
        self._counts: dict[int, int] = {0: 0}
        self._drained: dict[int, asyncio.Event] = {}

    def enter(self) -> int:
        generation = self._generation
        self._counts[generation] += 1
        return generation

    def exit(self, generation: int) -> None:
        left = self._counts[generation] - 1
        if left or generation == self._generation:
            self._counts[generation] = left
            return
        del self._counts[generation]
        drained = self._drained.pop(generation, None)
        if drained is not None:
            drained.set()

    async def drain(self, timeout: float) -> bool:
        """True when every publish sent before this call has finished within `timeout`."""
        old = self._generation
        self._generation += 1
        self._counts[self._generation] = 0
        waits = []
        for generation in [g for g in self._counts if g <= old]:
            if self._counts[generation] == 0:
                del self._counts[generation]
                continue
            waits.append(self._drained.setdefault(generation, asyncio.Event()).wait())
        if not waits:
            return True
        try:
            async with asyncio.timeout(timeout):
                await asyncio.gather(*waits)
        except TimeoutError:
            return False
        return True


Mover = Callable[[MapState], Awaitable[None]]
Stale = Callable[[str], bool]
Cleaner = Callable[[str, Stale], Awaitable[int]]
"""The broker's: delete on shard `name` the rooms `stale` says are not placed there any
more; returns how many; raises BrokerUnavailable when it cannot reach the shard."""


class Watcher:
    """Keeps this relay server's view of the map current and takes part in switches.

    `apply(state)` is the broker's: it installs a state (placement, refusals) and, on a
    flip, moves this server's subscriptions and presence; the watcher acks a phase only
    once `apply` has returned for it.
    """

    def __init__(
        self,
        node_id: str,
        control: Redis,
        configured: Sequence[str],
        *,
        dead_after: float,
        drain: Callable[[], Awaitable[bool]],
        apply: Mover,
        cleanup: Cleaner,
    ) -> None:
        self._node = node_id
        self._control = control
        # EVALSHA (SCRIPT LOAD after NOSCRIPT), never EVAL: the relay's ACL grants no EVAL.
        self._init = control.register_script(_INIT)
        self._advance = control.register_script(_ADVANCE)
        self._configured = tuple(configured)
        self._dead_after_ms = int(dead_after * 1000)
        self._drain = drain
        self._apply = apply
        self._cleanup = cleanup
        self.state: MapState | None = None
        self.missing: tuple[str, ...] = ()
        """Live relays a switch waits for (as of this server's last advance)."""
        self.unknown: tuple[str, ...] = ()
        """Shards of the active map this server has no endpoint for: it is unready."""
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()
        """One sync at a time: the loop's, or a first publish's before the map is known."""
        self._lease_seconds = dead_after * LEASE_FRACTION
        self._lease_until = 0.0
        """Monotonic time until which this server may publish by the map it holds."""
        self._granted = 0.0
        """Monotonic time the read that granted the lease was answered."""
        self._cleaned: str = ""
        """The switch whose cleanup this server finished (its ack of it may be pending)."""
        self.dirty: tuple[str, ...] = ()
        """Shards not cleaned after rooms moved away from them (as of the last read)."""
        self._rejoined = False
        """A read found this server missing from the alive set (reaped while silent, or the
        control shard lost its data) and added it again: presence rewrites its members."""
        self._poll_seconds = min(POLL_SECONDS, dead_after / 4)
        self._acked: tuple[str, Phase] | None = None
        self._reported: tuple[str, str] | None = None
        self._error = ""

    def wake(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        while True:
            try:
                async with self._lock:
                    await self.sync()
            except (ClusterCrossSlotError, AskError) as exc:  # MovedError is an AskError
                # The control shard is a Redis Cluster node: the shard map's scripts span
                # keys of several slots. Said once: a setting is missing, not Redis down.
                hint = (
                    f"shard map read failed ({describe(exc)}): RELAY_REDIS_URLS names a Redis "
                    "Cluster node; set RELAY_REDIS_CLUSTER=true (redis.external.cluster)"
                )
                if hint != self._error:
                    log.error("%s", hint)
                self._error = hint
            except (RedisError, OSError, BrokerUnavailable) as exc:
                log.debug("shard map read failed: %s", describe(exc))
            except ShardMapError as exc:
                if str(exc) != self._error:  # once per distinct problem, not every poll
                    log.error("%s", exc)
                self._error = str(exc)
            except Exception:
                log.exception("shard map sync failed")
            switching = self.state is not None and self.state.switching
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(
                    SWITCH_POLL_SECONDS if switching else self._poll_seconds
                ):
                    await self._wake.wait()
            self._wake.clear()

    def leased(self) -> bool:
        """True while a barrier cannot have left this server out: it may publish."""
        return time.monotonic() < self._lease_until

    def renewed(self, sent: float, present: bool) -> None:
        """This server's liveness was renewed by a call sent at monotonic time `sent`
        (presence's tick). It extends a lease that still held then; `present` False ends
        it when the call was sent after the read that granted it was answered (so it ran
        after that read's own renewal: the server was reaped, or the control shard lost
        its data, since), and the map must be read again first. Sent earlier (presence's
        first tick racing the first read), it says nothing about that read."""
        if not present:
            if sent > self._granted:
                self._lease_until = 0.0
        elif sent < self._lease_until:
            self._lease_until = max(self._lease_until, sent + self._lease_seconds)

    def take_rejoined(self) -> bool:
        """True once after a read of the map re-added this server to the alive set."""
        rejoined, self._rejoined = self._rejoined, False
        return rejoined

    async def ensure(self) -> None:
        """Read the map now unless it is known (raises what sync raises)."""
        async with self._lock:
            if self.state is None:
                await self.sync()

    async def sync(self) -> None:
        # No map in Redis: the configured names become version 1; or, when the control
        # shard lost its data (a restart without persistence), the map this server knows.
        # The same script renews this server's liveness: in the barrier as of this read,
        # so a switch that begins after it waits for our ack, and one already running is
        # in what we read.
        known = self.state.active if self.state is not None else ShardMap(1, self._configured)
        sent = time.monotonic()
        fields, added, dirty = await self._init(
            keys=[MAP_KEY, keys.ALIVE, DIRTY_KEY],
            args=[",".join(known.names), known.version, self._node, now_ms()],
        )
        state = MapState.parse(_pairs(fields))
        if added and self.state is not None:
            self._rejoined = True
        # No await from here until the broker holds `state` (its apply sets it first).
        self._lease_until = sent + self._lease_seconds
        self._granted = time.monotonic()
        await self._install(state)
        self.dirty = tuple(sorted(_text(d) for d in dirty))
        if state.switching:
            await self._take_part(state)
        elif self.dirty:
            await self._clean_dirty(state.active)

    async def _install(self, state: MapState) -> None:
        unknown = self._lacking(state.active)
        if unknown and unknown != self.unknown:
            log.error(
                "shard map version %d (%s) names shard(s) %s that RELAY_REDIS_URLS lacks: "
                "this relay server is unready until its configuration has them",
                state.active.version, ",".join(state.active.names), ",".join(unknown),
            )  # fmt: skip
        self.unknown = unknown
        previous = self.state
        if previous == state:
            return
        if previous is None or previous.active != state.active or previous.phase != state.phase:
            log.info("shard map: %s", state.describe())
        await self._apply(state)
        if (
            previous is not None
            and previous.active.names != state.active.names
            and not (previous.phase == "prepare" and state.phase == "move")
        ):
            # The active map changed other than by a flip this server saw: the control
            # shard lost its data and a relay that knew no map wrote its configured shards,
            # or lost its last writes in a failover (the map went back), or this server
            # missed a whole switch. Rooms moved that no cleanup may follow: what they left
            # on their old shards must not be served again (cleaned while stable).
            log.warning(
                "shard map changed from %s to %s without a switch seen; cleaning shards %s",
                ",".join(previous.active.names), ",".join(state.active.names),
                ",".join(previous.active.names),
            )  # fmt: skip
            await self._control.sadd(DIRTY_KEY, *previous.active.names)
        # Only once applied: a failed apply (a SUBSCRIBE on the new shard) runs again.
        self.state = state

    def _lacking(self, shard_map: ShardMap) -> tuple[str, ...]:
        return tuple(n for n in shard_map.names if n not in self._configured)

    async def _take_part(self, state: MapState) -> None:
        phase = state.phase
        ack = ""
        lacking = self._lacking(state.new)
        if lacking and self._reported != (state.switch, "lacking"):
            self._reported = (state.switch, "lacking")
            log.error(
                "cannot take part in the switch to %s: RELAY_REDIS_URLS lacks %s",
                ",".join(state.new.names), ",".join(lacking),
            )  # fmt: skip
        if self._acked != (state.switch, phase) and not lacking:
            if phase == "prepare" and not await self._drain():
                log.warning("publishes still in flight after the prepare's wait; acking later")
            else:
                ack = phase
        cleaned = phase == "move" and not state.cleaned and self._cleaned == state.switch
        now = now_ms()
        fields, missing = await self._advance(
            keys=[
                MAP_KEY,
                keys.ALIVE,
                _acks(state.switch, "prepare"),
                _acks(state.switch, "move"),
            ],
            args=[
                state.switch,
                now,
                self._dead_after_ms,
                self._node if ack else "",
                ack,
                "1" if cleaned else "0",
            ],
        )
        if ack:
            self._acked = (state.switch, phase)
        self.missing = tuple(_text(m) for m in missing)
        after = MapState.parse(_pairs(fields))
        if (
            phase == "move"
            and after.phase == "move"
            and after.switch == state.switch
            and not after.cleaned
            and not self.missing
            and self._cleaned != state.switch
            and await self._clean(after)
        ):
            # Only now that every live relay has moved: one still placing rooms by the
            # old map could write them (presence, a history read's epoch) on the old
            # shard after the cleanup, and they would come back with a later switch.
            self._wake.set()  # reports it done in the next round
        if after.phase != state.phase or after.active != state.active:
            await self._control.publish(keys.CONTROL_CHANNEL, ANNOUNCE)
            if after.phase == "stable" and after.last:
                aborted = "aborted" in after.last
                log.log(logging.WARNING if aborted else logging.INFO, "shard map: %s", after.last)
            await self._install(after)
            self._wake.set()  # the next phase may be ackable right away
        elif after.stalled(now) and self._reported != (after.switch, after.phase):
            self._reported = (after.switch, after.phase)
            log.warning(
                "shard map switch %s stalled in phase %s past its deadline, waiting for: %s",
                after.switch, after.phase, ",".join(self.missing) or "the cleanup",
            )  # fmt: skip

    async def _clean(self, state: MapState) -> bool:
        """Run the moved rooms' cleanup if no other live relay holds its claim. An old
        shard it cannot reach (or has no endpoint for) is marked dirty: the switch does not
        wait for a shard that may never come back, and no map places rooms on it until it
        is cleaned (_clean_dirty)."""
        claim = _cleanup_claim(state.switch)
        if not await self._control.set(claim, self._node, nx=True, ex=CLEANUP_CLAIM_SECONDS):
            return False
        old, new = state.old, state.new
        left = []
        try:
            for name in old.names:
                try:
                    rooms = await self._cleanup(name, _moved_away(old, new, name))
                except BrokerUnavailable as exc:
                    left.append(name)
                    log.warning(
                        "shard %s: cannot remove what rooms that moved away left there (%s); "
                        "it is dirty: no shard map may place rooms on it until it is cleaned",
                        name, exc,
                    )  # fmt: skip
                else:
                    log.info("shard %s: removed what %d moved rooms left behind", name, rooms)
            if left:
                await self._control.sadd(DIRTY_KEY, *left)
        except BaseException:
            # Not done: let this server or another claim it again at once, not in 30 s.
            with contextlib.suppress(RedisError, OSError):
                await self._control.delete(claim)
            raise
        self._cleaned = state.switch
        return True

    async def _clean_dirty(self, active: ShardMap) -> None:
        """Clean the dirty shards this server reaches: delete every room there that the
        active map places elsewhere (stable only, and no switch may place rooms on a
        dirty shard meanwhile, so none of them is live there)."""
        for name in self.dirty:
            if name not in self._configured:
                continue
            claim = f"{MAP_KEY}:cleanup:dirty:{name}"
            if not await self._control.set(claim, self._node, nx=True, ex=CLEANUP_CLAIM_SECONDS):
                continue
            try:
                rooms = await self._cleanup(name, _placed_elsewhere(active, name))
                await self._control.srem(DIRTY_KEY, name)
                log.info("shard %s: cleaned (%d rooms that had moved away removed)", name, rooms)
            except BrokerUnavailable as exc:
                log.debug("dirty shard %s not cleaned yet: %s", name, exc)
            finally:
                with contextlib.suppress(RedisError, OSError):
                    await self._control.delete(claim)


def _moved_away(old: ShardMap, new: ShardMap, name: str) -> Stale:
    return lambda room: old.place(room) == name and new.place(room) != name


def _placed_elsewhere(active: ShardMap, name: str) -> Stale:
    return lambda room: active.place(room) != name


async def clean_shard(shard: Redis, stale: Stale) -> int:
    """Delete, on `shard`, what the rooms `stale` names left behind there: history, meta
    (the epoch) and presence. Returns how many rooms."""
    rooms = 0
    for pattern in (keys.META_PATTERN, keys.PRESENCE_PATTERN):
        async for key in shard.scan_iter(match=pattern, count=SCAN_COUNT):
            room = keys.room_of_key(_text(key))
            if room is None or not stale(room):
                continue
            await shard.delete(keys.meta(room), keys.log(room), keys.presence(room))
            rooms += 1
    return rooms


def _names(text: str) -> tuple[str, ...]:
    names = tuple(n for n in text.split(",") if n)
    if not names:
        raise ValueError("no shard names")
    return names


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
