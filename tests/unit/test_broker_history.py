"""relay.broker.history: the verdict on a master's history, shared by the Sentinel and
standalone shards (relay.broker.redis) and the Redis Cluster nodes (relay.broker.slots).
The Redis side of it runs for real in test_redis_sentinel.py and test_redis_cluster.py."""

from __future__ import annotations

import pytest
from redis.crc import key_slot

from relay.broker import keys
from relay.broker.history import (
    NO_HISTORY,
    Verdict,
    claim_name,
    classify,
    marker_value,
    other_writer,
    parse_marker,
)

OLD, NEW, OTHER = "a" * 40, "b" * 40, "c" * 40


@pytest.mark.parametrize(
    ("marker", "replid", "replid2", "moved", "verdict"),
    [
        # The marker is the master's own id: its rooms' history, even after a move that
        # another relay server has fenced already.
        (NEW, NEW, NO_HISTORY, False, Verdict.SAME),
        (NEW, NEW, OLD, True, Verdict.SAME),
        # The master's previous id: a replica promoted in place of the marked master.
        (OLD, NEW, OLD, False, Verdict.PROMOTED),
        # This server saw the master change: new epochs whatever the marker names.
        (OLD, NEW, NO_HISTORY, True, Verdict.PROMOTED),
        (OTHER, NEW, OLD, True, Verdict.PROMOTED),
        # No marker: a new Redis is marked; one that continued a history (promoted in
        # place of an unmarked master) or that this server saw replace another is fenced.
        (None, NEW, NO_HISTORY, False, Verdict.NEW),
        (None, NEW, OLD, False, Verdict.UNMARKED),
        (None, NEW, NO_HISTORY, True, Verdict.UNMARKED),
        # Neither id, and no history continued: a restart (the id changes on every
        # restart, a clean one too; one from the AOF leaves master_replid2 unset).
        (OLD, NEW, NO_HISTORY, False, Verdict.RESTARTED),
        # Neither id, but a history continued: promoted since it started (two failovers,
        # or a restart and a failover, with no relay server checking in between).
        (OTHER, NEW, OLD, False, Verdict.PROMOTED),
    ],
)
def test_classify(
    marker: str | None, replid: str, replid2: str, moved: bool, verdict: Verdict
) -> None:
    assert classify(marker, replid, replid2, moved=moved) is verdict


def test_only_a_promotion_fences() -> None:
    assert {v for v in Verdict if v.fences} == {Verdict.PROMOTED, Verdict.UNMARKED}


def test_a_failover_has_one_claim_whoever_sees_it() -> None:
    """A server that saw the slot map change and one started after the promotion read the
    same marker and ids on the promoted master: the same claim, so one new epoch."""
    tag = keys.slot_tag(42)
    seen = claim_name(f"{{{tag}}}", OLD, NEW)
    assert seen == claim_name(f"{{{tag}}}", OLD, NEW)
    assert claim_name(f"{{{tag}}}", None, NEW) != seen
    # In the node's slot, as its marker is.
    assert key_slot(seen.encode()) == key_slot(keys.node_history_marker(tag).encode()) == 42


def test_a_marker_names_its_writer_and_an_older_one_names_none() -> None:
    """A Sentinel master's marker names its address, a cluster node's its id; a standalone
    shard's, and one written before markers named their writer, name none: no writer is
    never taken for another one."""
    value = marker_value(NEW, "redis-0.redis:6379")
    assert parse_marker(value) == (NEW, "redis-0.redis:6379")
    assert marker_value(NEW, "") == NEW and parse_marker(NEW) == (NEW, "")
    assert other_writer("redis-0.redis:6379", "redis-1.redis:6379")
    assert not other_writer("redis-0.redis:6379", "redis-0.redis:6379")
    assert not other_writer("", "redis-1.redis:6379")  # an older marker: the ids decide
    assert not other_writer("redis-0.redis:6379", "")  # a standalone shard
