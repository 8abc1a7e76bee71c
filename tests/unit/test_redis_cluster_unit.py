"""Redis Cluster mode without a server: settings, the operator's part, the slot map rules.

The behaviour against a real cluster is tests/integration/test_redis_cluster.py's.
"""

from __future__ import annotations

import base64
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from redis.crc import key_slot

from gamecluster.children import Owner
from gamecluster.desired import Inputs, desired
from gamecluster.manifests.secrets import RedisPasswords
from gamecluster.redis_auth import operator_auth
from gamecluster.spec import InvalidSpec, parse
from relay import contract
from relay.broker import BrokerUnavailable, keys, lua
from relay.broker.options import RedisOptions
from relay.broker.slots import Checked, RedisClusterBroker, SlotMap, _failovers
from relay.config import ConfigError, load_settings

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("env", "words"),
    [
        ({"RELAY_REDIS_URLS": ""}, "without RELAY_REDIS_URLS"),
        (
            {"RELAY_REDIS_URLS": "sentinel://gc", "RELAY_REDIS_SENTINELS": "s:26379"},
            "with RELAY_REDIS_SENTINELS",
        ),
        ({"RELAY_REDIS_URLS": "a=redis://h:1,b=redis://h:2"}, "names a shard"),
        ({"RELAY_REDIS_URLS": "redis://h:1/2"}, "database 0 only"),
        ({"RELAY_REDIS_URLS": "unix:///tmp/r.sock"}, "host:port"),
        ({"RELAY_REDIS_URLS": "redis://h:1,rediss://h:2"}, "mix redis:// and rediss://"),
        ({"RELAY_REDIS_URLS": "redis://u:s3cret@h:1/5"}, "database 0 only"),
    ],
)
def test_cluster_settings_are_refused_clearly_and_never_print_a_secret(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], words: str
) -> None:
    monkeypatch.setenv("RELAY_AUTH", "none")
    monkeypatch.setenv("RELAY_REDIS_CLUSTER", "true")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as error:
        load_settings()
    assert words in str(error.value) and "s3cret" not in str(error.value)


def test_cluster_seeds_are_accepted_and_off_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RELAY_AUTH", "none")
    monkeypatch.setenv("RELAY_REDIS_URLS", "redis://n1:7000, redis://n2:7000/0")
    assert load_settings().redis_cluster is False
    monkeypatch.setenv("RELAY_REDIS_CLUSTER", "true")
    settings = load_settings()
    assert settings.redis_cluster is True
    assert [e.url for e in settings.redis_endpoints] == ["redis://n1:7000", "redis://n2:7000/0"]


def _reply(*ranges: tuple[int, int, tuple[str, int, str], list[tuple[str, int, str]]]) -> Any:
    return [
        [
            start,
            end,
            [h.encode(), p, i.encode()],
            *[[rh.encode(), rp, ri.encode()] for rh, rp, ri in r],
        ]
        for start, end, (h, p, i), r in ranges
    ]


A, B, C = ("10.0.0.1", 7000, "id-a"), ("10.0.0.2", 7000, "id-b"), ("10.0.0.3", 7000, "id-c")
A_REPLICA = ("10.0.0.4", 7000, "id-a2")


def test_a_promoted_replica_is_a_failover_and_another_master_is_a_migration() -> None:
    before = SlotMap.parse(_reply((0, 8191, A, [A_REPLICA]), (8192, 16383, B, [])))
    assert before.complete and set(before.nodes()) == {"10.0.0.1:7000", "10.0.0.2:7000"}
    assert before.masters[100] is not None and before.masters[100].node_id == "id-a"
    assert before.replicas[100] == frozenset({"id-a2"})
    # Slot 0 migrated to B (keys moved whole: keep the epoch); A's replica took over the
    # rest of A's slots (it may lack acked writes: new epochs).
    after = SlotMap.parse(_reply((0, 0, B, []), (1, 8191, A_REPLICA, []), (8192, 16383, B, [])))
    found = _failovers(before, after)
    assert list(found) == ["10.0.0.4:7000"]
    old, new = found["10.0.0.4:7000"]
    assert (old.node_id, new.node_id) == ("id-a", "id-a2")
    # A migration to another master alone is no failover; nor is an unchanged map.
    migrated = SlotMap.parse(_reply((0, 8191, B, []), (8192, 16383, B, [])))
    assert _failovers(before, migrated) == {} and _failovers(before, before) == {}
    # A map with unassigned slots is not complete (the broker stays unready on it).
    assert not SlotMap.parse(_reply((0, 100, A, []))).complete


async def test_a_reading_with_unassigned_slots_does_not_replace_a_complete_map(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Installed, it would forget the replicas of those slots' last master, and the
    promotion read next would pass for a migration (no new epoch)."""
    broker = _unstarted_broker()
    complete = SlotMap.parse(_reply((0, 8191, A, [A_REPLICA]), (8192, 16383, B, [])))
    partial = SlotMap.parse(_reply((8192, 16383, B, [])))
    broker._map = complete

    async def read() -> SlotMap:
        return partial

    monkeypatch.setattr(broker, "_read_slot_map", read)
    with pytest.raises(BrokerUnavailable, match="keeping the last complete one"):
        await broker.refresh()
    assert broker._map is complete
    await broker.close()


def test_names_about_a_node_land_in_its_slot_and_room_names_share_the_room_slot() -> None:
    for slot in (0, 1, 5460, 16383):
        tag = keys.slot_tag(slot)
        assert key_slot(keys.node_channel("pod-1", tag)) == slot
        assert key_slot(keys.failover_claim("{" + tag + "}", "x", "y").encode()) == slot
    room = "match:42"
    slot = keys.slot_of_room(room)
    for name in (keys.meta(room), keys.log(room), keys.dedupe(room, "alice", "m1")):
        assert key_slot(name.encode()) == slot
    # Every key about the cluster of relays, and every load report, in one slot.
    cluster_names = [
        keys.SLOTTED.alive,
        keys.SLOTTED.node_report("a"),
        keys.SLOTTED.node_rooms("b"),
        keys.SLOTTED.node_presence_rooms("c"),
        contract.load_report_key("pod-9", cluster=True),
    ]
    assert len({key_slot(name.encode()) for name in cluster_names}) == 1
    assert contract.load_report_key("pod-9", cluster=True).startswith(
        contract.LOAD_REPORT_KEY_PREFIX
    )  # the operator's ACL pattern still matches
    assert keys.PLAIN.alive == "gamecluster:alive"  # sharded fleets keep their names
    with pytest.raises(ValueError, match="slot"):
        keys.slot_tag(16384)


def test_cluster_scripts_spublish_and_nothing_else_changes() -> None:
    sharded = lua.sharded(lua.PUBLISH_DURABLE)
    assert "'SPUBLISH'" in sharded and "'PUBLISH'" not in sharded
    assert sharded.replace("SPUBLISH", "PUBLISH") == lua.PUBLISH_DURABLE
    with pytest.raises(ValueError, match="publishes nothing"):
        lua.sharded(lua.HISTORY)


def test_the_cluster_acl_rules_add_only_sharded_pubsub_and_the_slot_map() -> None:
    extra = contract.RELAY_CLUSTER_ACL_RULES[len(contract.RELAY_ACL_RULES) :]
    assert contract.RELAY_CLUSTER_ACL_RULES[: len(contract.RELAY_ACL_RULES)] == (
        contract.RELAY_ACL_RULES
    )
    assert extra == ("+spublish", "+ssubscribe", "+sunsubscribe", "+cluster|slots")


META = {"name": "arena", "namespace": "games", "uid": "uid-1", "generation": 3}
CLUSTER = {
    "redis": {
        "mode": "external",
        "external": {
            "urls": ["redis://node-1.cache:6379", "redis://node-2.cache:6379"],
            "cluster": True,
            "secretRef": {"name": "cache", "usernameKey": "user"},
        },
    }
}


def _config(spec: dict[str, Any]) -> dict[str, str]:
    inputs = Inputs(
        relay_image="img",
        jwt_secret="s3cret",
        redis_passwords=RedisPasswords(relay="r" * 20, operator="o" * 20),
    )
    children = {
        f"{m['kind']}/{m['metadata']['name']}": m for m in desired(parse(spec), META, inputs)
    }
    return children["ConfigMap/arena-relay"]["data"]  # type: ignore[no-any-return]


class _Secrets:
    def __init__(self, stored: dict[str, Any]) -> None:
        self.stored = stored

    def get(self, ref: Any) -> dict[str, Any]:
        return self.stored


def test_the_operator_passes_an_external_cluster_to_the_relays_and_its_load_reader() -> None:
    config = _config(CLUSTER)
    assert config[contract.ENV_REDIS_CLUSTER] == "true"
    assert config[contract.ENV_REDIS_URLS] == "redis://node-1.cache:6379,redis://node-2.cache:6379"
    assert contract.ENV_REDIS_SENTINELS not in config
    plain = {"redis": {"mode": "external", "external": {"urls": ["redis://a:1"]}}}
    assert contract.ENV_REDIS_CLUSTER not in _config(plain)
    stored = {
        "data": {
            k: base64.b64encode(v.encode()).decode() for k, v in (("user", "u"), ("password", "p"))
        }
    }
    auth = operator_auth(_Secrets(stored), parse(CLUSTER), Owner("arena", "games", "u"))  # type: ignore[arg-type]
    assert auth is not None and auth.cluster is True and auth.username == "u"


def test_a_cluster_with_sentinels_is_refused() -> None:
    spec = {
        "redis": {
            "mode": "external",
            "external": {"urls": ["sentinel://gc"], "sentinels": ["s:26379"], "cluster": True},
        }
    }
    with pytest.raises(InvalidSpec) as error:
        parse(spec)
    assert error.value.reason == "ClusterWithSentinels"


def test_a_new_owner_that_was_no_master_before_is_fenced_too() -> None:
    """The previous map's replica list may be stale (a replica moved to another master,
    then promoted): a slot's new owner that was no master in the previous map is fenced
    as well. The cost: a slot migrated to a brand-new master restarts its epochs."""
    before = SlotMap.parse(_reply((0, 8191, A, []), (8192, 16383, B, [])))
    after = SlotMap.parse(_reply((0, 8191, C, []), (8192, 16383, B, [])))
    found = _failovers(before, after)
    assert list(found) == ["10.0.0.3:7000"]
    assert [node.node_id for node in found["10.0.0.3:7000"]] == ["id-a", "id-c"]


async def test_a_fence_that_fails_refuses_its_node_only_and_is_tried_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A promoted master this server cannot fence: the new map is used for every other
    slot, that node's slots are refused and it counts as down; the next read tries the
    fence again (though the installed map no longer shows the promotion)."""
    broker = _unstarted_broker()
    before = SlotMap.parse(
        _reply((0, 8191, A, [A_REPLICA]), (8192, 12000, B, []), (12001, 16383, C, []))
    )
    # A failed over to its replica; slot 9000 (B's) migrated to C meanwhile.
    after = SlotMap.parse(
        _reply((0, 8191, A_REPLICA, []), (8192, 8999, B, []), (9000, 9000, C, []),
               (9001, 12000, B, []), (12001, 16383, C, []))
    )  # fmt: skip
    broker._map = before
    fenced: list[tuple[str, str]] = []
    failing = True

    async def check(node: Any, slot: int, old: Any) -> None:
        if old is not None:
            fenced.append((old.node_id, node.node_id))
            if failing:
                raise BrokerUnavailable("checking the history of 10.0.0.4:7000 failed")
        # First sight of B and C, or the fence done: their history checked.
        broker._checked[node.address] = Checked(node.node_id, slot, "r", 0)

    _read_and_check_offline(monkeypatch, broker, after, check)
    with pytest.raises(BrokerUnavailable, match="every other slot follows the new map"):
        await broker.refresh()
    assert broker._map is after  # installed: the migrated slot follows C
    assert broker.placement(_room_in_slot(9000)) == "10.0.0.3:7000"
    assert broker.shards()["10.0.0.4:7000"] is False
    with pytest.raises(BrokerUnavailable, match="new epochs are not started"):
        broker.shard_for(_room_in_slot(100))
    assert broker.unplaced == 0
    failing = False
    await broker.refresh()  # the installed map shows no promotion: tried from memory
    assert fenced == [("id-a", "id-a2"), ("id-a", "id-a2")]
    assert broker._unfenced == {}
    await broker.close()


async def test_a_master_seen_first_is_refused_until_its_history_is_checked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A server with no previous map (started after a promotion, perhaps) serves no slot of
    a master before its history marker is checked (relay.broker.history); a master whose
    check fails is refused alone, with its own reason, and checked again at the next read."""
    broker = _unstarted_broker()
    found = SlotMap.parse(_reply((0, 8191, A, []), (8192, 16383, B, [])))
    checked: list[tuple[str, int, Any]] = []
    failing = {"10.0.0.1:7000"}

    async def check(node: Any, slot: int, old: Any) -> None:
        checked.append((node.address, slot, old))
        if node.address in failing:
            raise BrokerUnavailable(f"checking the history of {node.address} failed")
        broker._checked[node.address] = Checked(node.node_id, slot, "r", 0)

    _read_and_check_offline(monkeypatch, broker, found, check)
    with pytest.raises(BrokerUnavailable, match=r"checking the history of 10\.0\.0\.1:7000"):
        await broker.refresh()
    assert checked == [("10.0.0.1:7000", 0, None), ("10.0.0.2:7000", 8192, None)]
    with pytest.raises(BrokerUnavailable, match="is not checked yet"):
        broker.shard_for(_room_in_slot(100))
    assert broker.shards()["10.0.0.1:7000"] is False
    failing.clear()
    await broker.refresh()  # only the unchecked one again
    assert checked[2:] == [("10.0.0.1:7000", 0, None)]
    assert broker._unfenced == {}
    await broker.refresh()  # nothing to check
    assert len(checked) == 3
    await broker.close()


async def test_a_master_whose_session_ended_is_refused_until_checked_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A checked master whose Pub/Sub session ends may be a restarted server behind the
    same address (one back from an RDB snapshot is fenced by its check): its slots are
    refused from that moment until a check that began after it has passed; a session
    that ends while a check runs makes that check stale."""
    broker = _unstarted_broker()
    found = SlotMap.parse(_reply((0, 8191, A, []), (8192, 16383, B, [])))
    checked: list[str] = []
    end_during_check = False

    async def check(node: Any, slot: int, old: Any) -> None:
        sessions = broker._session_ends.get(node.address, 0)
        checked.append(node.address)
        if end_during_check and node.address == "10.0.0.1:7000":
            broker._reconnected(node.address)
        broker._checked[node.address] = Checked(node.node_id, slot, "r", sessions)

    _read_and_check_offline(monkeypatch, broker, found, check)
    room = _room_in_slot(100)
    await broker.refresh()
    assert broker._unfenced == {}
    broker._reconnected("10.0.0.1:7000")  # the session ended: refused at once
    with pytest.raises(BrokerUnavailable, match="is not checked yet"):
        broker.shard_for(room)
    assert broker.shards()["10.0.0.1:7000"] is False
    end_during_check = True
    await broker.refresh()  # checked, but it ended again meanwhile: still refused
    assert checked[2:] == ["10.0.0.1:7000"]
    with pytest.raises(BrokerUnavailable, match="is not checked yet"):
        broker.shard_for(room)
    end_during_check = False
    await broker.refresh()
    assert checked[3:] == ["10.0.0.1:7000"]
    assert broker._unfenced == {}
    await broker.refresh()  # nothing to check
    assert len(checked) == 4
    await broker.close()


def _unstarted_broker() -> RedisClusterBroker:
    """A cluster broker never started: it opens no connection until a test makes it."""
    return RedisClusterBroker(
        ["redis://10.0.0.1:7000"],
        "n",
        RedisOptions(timeout=1.0, probe_interval=1.0, probe_timeout=1.0),
    )


def _read_and_check_offline(
    monkeypatch: pytest.MonkeyPatch,
    broker: RedisClusterBroker,
    found: SlotMap,
    check: Callable[[Any, int, Any], Awaitable[None]],
) -> None:
    """Make `broker.refresh()` read `found` as the slot map, check each master it fences
    or sees first with `check`, and install the map without connecting to its nodes."""

    async def read() -> SlotMap:
        return found

    async def install(slot_map: SlotMap) -> None:
        broker._map = slot_map

    monkeypatch.setattr(broker, "_read_slot_map", read)
    monkeypatch.setattr(broker, "_check", check)
    monkeypatch.setattr(broker, "_install", install)


def _room_in_slot(slot: int) -> str:
    return next(f"r{n}" for n in range(200_000) if keys.slot_of_room(f"r{n}") == slot)
