"""Every name a room has in Redis, spelled once: its channel and its keys.

All of a room's names start with `room:{<room>}`. The braces make the room name a hash
tag, so a room's channel and keys stay on one slot should a shard ever be a Redis Cluster
node (the Lua scripts touch several of them at once). `room_of` is the one inverse.

The memory broker uses `dedupe` too, so a publish id means the same in both brokers.
The prefixes come from relay.contract, where the Redis ACL rules are built from them too.
"""

from __future__ import annotations

import functools

from redis.crc import key_slot

from relay.contract import CLUSTER_HASH_TAG, CLUSTER_KEY_PREFIX, NODE_CHANNEL_PREFIX, ROOM_PREFIX

_OPEN = ROOM_PREFIX
_CLOSE = "}"


def _tag(room: str) -> str:
    return f"{_OPEN}{room}{_CLOSE}"


def channel(room: str) -> bytes:
    """The Pub/Sub channel of the room's live events."""
    return _tag(room).encode()


def room_of(name: bytes) -> str | None:
    """The room whose channel is `name`, or None when `name` is no room's channel."""
    text = name.decode(errors="replace")
    if text.startswith(_OPEN) and text.endswith(_CLOSE):
        return text[len(_OPEN) : -len(_CLOSE)]
    return None


def meta(room: str) -> str:
    """The durable room's hash: `epoch` and the last `offset`."""
    return f"{_tag(room)}:meta"


def log(room: str) -> str:
    """The durable room's history stream (entry ids `<offset>-0`)."""
    return f"{_tag(room)}:log"


def dedupe(room: str, subject: str | None, msg_id: str) -> str:
    """Where a publish id is remembered: per subject and room (per room when auth is off).

    The subject's length goes first, so no (subject, id) pair can spell another's key.
    """
    who = subject or ""
    return f"{_tag(room)}:id:{len(who)}:{who}:{msg_id}"


META_PATTERN = f"{_OPEN}*{_CLOSE}:meta"
"""Matches every room's meta hash (SCAN MATCH): the failover fence rewrites their epochs."""


HISTORY_MARKER = f"{CLUSTER_KEY_PREFIX}history"
"""On each shard's master: the replication id (`master_replid` of INFO replication) of the
history its rooms' current epochs were started on, and the master that wrote it (its value
is history.marker_value's `<replid> <writer>`). It replicates, so a promoted replica
holds its old master's id as its `master_replid2`: the failover fence of a relay server
that never saw the old master (relay.broker.redis, RedisShard._check_history)."""


def node_history_marker(tag: str) -> str:
    """Redis Cluster: a master node's HISTORY_MARKER, in the slot of hash tag `tag` (see
    `slot_tag`): the node's lowest slot, per relay.broker.slots, which says why."""
    return f"{HISTORY_MARKER}:{{{tag}}}"


def failover_claim(shard: str, old: str, new: str) -> str:
    """Claimed (SET NX) by the one relay server that starts new epochs after a failover."""
    return f"{CLUSTER_KEY_PREFIX}failover:{shard}:{old}->{new}"


def node_channel(node_id: str, tag: str | None = None) -> bytes:
    """The relay server's own channel: its Pub/Sub self-probe travels through it.

    On a Redis Cluster node the probe is a shard channel: `tag` (see `slot_tag`) puts it
    in a slot of the node it probes."""
    if tag is None:
        return f"{NODE_CHANNEL_PREFIX}node:{node_id}".encode()
    return f"{NODE_CHANNEL_PREFIX}node:{node_id}:{{{tag}}}".encode()


SLOTS = 16384
"""Hash slots of a Redis Cluster."""


@functools.cache
def slot_tag(slot: int) -> str:
    """A short hash tag whose CRC16 lands on `slot` (Redis Cluster): it puts a name that is
    about a node rather than a room (the probe channel, a failover claim) on that node.
    Found by trying `t0`, `t1`, ...: about 16,000 CRC16s on average, once per slot."""
    if not 0 <= slot < SLOTS:
        raise ValueError(f"slot {slot} is not in 0..{SLOTS - 1}")
    n = 0
    while key_slot(f"t{n}".encode()) != slot:
        n += 1
    return f"t{n}"


def slot_of_room(room: str) -> int:
    """The Redis Cluster slot of every name of the room (they share its hash tag)."""
    return key_slot(channel(room))


CONTROL_CHANNEL = f"{NODE_CHANNEL_PREFIX}control".encode()
"""Commands between relay servers (relay.control: disconnect, forced leave, presence), on
the first shard."""


def presence(room: str) -> str:
    """A presence room's members (hash connection -> member JSON), on the room's shard."""
    return f"{_tag(room)}:presence"


class ClusterKeys:
    """The keys about the cluster of relay servers rather than a room (relay.cluster).

    Sharded Redis: on the first shard, plain names (`PLAIN`). Redis Cluster: every one of
    them under the hash tag `{gamecluster}` (`SLOTTED`), so they share one slot, as the
    node report's transaction and the GET /nodes MGET need. Two spellings, not one with
    the tag everywhere: relay servers of the same fleet must agree on the names during a
    rolling update, and the sharded fleets in use spell them without a tag.
    """

    def __init__(self, tag: str = "") -> None:
        self.prefix = CLUSTER_KEY_PREFIX + tag
        self.alive = f"{self.prefix}alive"
        """Sorted set node -> last liveness renewal (ms)."""

    def node_report(self, node_id: str) -> str:
        """Per node: its report (connections, rooms, version) for GET /nodes, with a TTL."""
        return f"{self.prefix}node:{node_id}"

    def node_rooms(self, node_id: str) -> str:
        """Per node: hash room -> local member count, for GET /rooms, with a TTL."""
        return f"{self.prefix}rooms:{node_id}"

    def node_presence_rooms(self, node_id: str) -> str:
        """Per node: the set of presence rooms it has members in (cleared by a survivor)."""
        return f"{self.prefix}presence:{node_id}"


PLAIN = ClusterKeys()
SLOTTED = ClusterKeys(f"{CLUSTER_HASH_TAG}:")
ALIVE = PLAIN.alive
"""The shard map's view of the alive set (relay.broker.shardmap: sharded Redis only)."""


PRESENCE_PATTERN = f"{_OPEN}*{_CLOSE}:presence"
"""Matches every room's presence hash (SCAN MATCH): a shard switch cleans moved rooms'."""


def room_of_key(key: str) -> str | None:
    """The room whose key (meta, log, presence, ...) `key` is, or None."""
    if not key.startswith(_OPEN):
        return None
    end = key.rfind(_CLOSE + ":")
    return key[len(_OPEN) : end] if end > len(_OPEN) else None
