"""A change of spec.redis.shards: the state machine (gamecluster.shards) and the children
desired at each of its stages."""

import dataclasses
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import jsonschema
import pytest
from crd_schema import prune, schema

from gamecluster import names
from gamecluster.children import Owner
from gamecluster.desired import Inputs, desired, shard_names
from gamecluster.manifests.secrets import RedisPasswords
from gamecluster.shards import (
    MESSAGE_MAX,
    MapReading,
    ShardState,
    after_reading,
    after_rollout,
    begin,
    retry_delay,
    rollout_complete,
)
from gamecluster.spec import parse
from relay import contract

pytestmark = pytest.mark.unit

META = {"name": "arena", "namespace": "games", "uid": "uid-1", "generation": 3}
OWNER = Owner.from_meta(META)
T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
INPUTS = Inputs(
    relay_image="img",
    jwt_secret="s3cret",
    redis_passwords=RedisPasswords(relay="relay-pw", operator="operator-pw"),
    api_key="k" * 64,
)


def names_of(count: int) -> Sequence[str]:
    return [f"arena-redis-{index}.arena-redis.games.svc:6379" for index in range(count)]


def stable(shards: Sequence[str], version: int = 2, last: str | None = None) -> MapReading:
    return MapReading(version=version, shards=tuple(shards), phase="stable", last=last)


# The state machine ---------------------------------------------------------------------


def test_status_without_shards_is_the_configured_count_stable() -> None:
    assert ShardState.from_status({}, fallback=3) == ShardState(active=3, target=3)
    recorded = ShardState(active=1, target=2, phase="Switching", message="m", version=4)
    assert ShardState.from_status({"shards": recorded.to_status()}, fallback=9) == recorded


def test_growing_runs_the_union_switches_after_the_rollout_then_is_stable() -> None:
    state = begin(ShardState(active=1, target=1), 2)
    assert (state.phase, state.redis_shards, state.relay_shards) == ("Rolling", 2, 2)
    # Relays still rolling onto the union: nothing is asked of them.
    assert after_rollout(state, rolled_out=False, now=T0) == (state, None)
    state, action = after_rollout(state, rolled_out=True, now=T0)
    assert (state.phase, action) == ("Switching", "switch")
    moving = MapReading(version=2, shards=tuple(names_of(1)), phase="prepare")
    state = after_reading(state, moving, names_of, now=T0)
    assert (state.phase, state.active, state.stalled) == ("Switching", 1, False)
    state = after_reading(state, stable(names_of(2)), names_of, now=T0)
    # Nothing to remove: the relays already list exactly the target.
    assert state == ShardState(active=2, target=2, phase="Stable", version=2)
    assert (state.redis_shards, state.relay_shards) == (2, 2)


def test_shrinking_rolls_relays_off_the_removed_shards_before_redis_shrinks() -> None:
    state = begin(ShardState(active=3, target=3), 1)
    assert (state.redis_shards, state.relay_shards) == (3, 3)
    state, _ = after_rollout(state, rolled_out=True, now=T0)
    state = after_reading(state, stable(names_of(1)), names_of, now=T0)
    assert (state.phase, state.active) == ("Shrinking", 1)
    # The map no longer names shards 1 and 2: the relays drop them, Redis still runs them.
    assert (state.redis_shards, state.relay_shards) == (3, 1)
    assert after_rollout(state, rolled_out=False, now=T0)[0].phase == "Shrinking"
    state, action = after_rollout(state, rolled_out=True, now=T0)
    assert (state.phase, action, state.redis_shards, state.relay_shards) == ("Stable", None, 1, 1)


def test_an_aborted_switch_goes_back_to_rolling_with_the_relays_reason() -> None:
    state, _ = after_rollout(begin(ShardState(active=1, target=1), 2), rolled_out=True, now=T0)
    why = "aborted: relay pod-a lacks shard arena-redis-1"
    state = after_reading(state, stable(names_of(1), last=why), names_of, now=T0)
    assert state.phase == "Rolling" and why in state.message
    # Union kept; asked again once the rollout is (still) complete and the backoff passed.
    assert (state.redis_shards, state.relay_shards) == (2, 2)
    assert after_rollout(state, rolled_out=True, now=T0 + timedelta(seconds=10))[1] == "switch"


def abort(state: ShardState, now: datetime) -> ShardState:
    """One aborted attempt: asked at ``now``, the relays answer with the old map."""
    state, action = after_rollout(state, rolled_out=True, now=now)
    assert (state.phase, action) == ("Switching", "switch")
    return after_reading(state, stable(names_of(1), last="aborted: deadline"), names_of, now=now)


def test_a_switch_that_keeps_aborting_waits_longer_each_time_up_to_the_cap() -> None:
    state = begin(ShardState(active=1, target=1), 2)
    now, waits = T0, []
    for attempt in range(1, 8):
        state = abort(state, now)
        assert state.attempts == attempt and state.retry_after is not None
        wait = state.retry_after - now
        waits.append(wait.total_seconds())
        # Not asked before the time (the relays stay unbothered), asked at it.
        assert after_rollout(state, rolled_out=True, now=now + wait / 2) == (state, None)
        assert (
            after_rollout(state, rolled_out=True, now=state.retry_after - timedelta(seconds=1))[1]
            is None
        )
        now = state.retry_after
    assert waits == [10, 20, 40, 80, 160, 300, 300]
    assert [retry_delay(n).total_seconds() for n in (1, 6, 100)] == [10, 300, 300]
    # The message says which attempt failed and when the next is, before the relays' reason
    # (which may be cut to fit the status).
    assert state.message.startswith(
        "switch to 2 shards did not complete (attempt 7); next attempt at "
        f"{(now).strftime('%Y-%m-%dT%H:%M:%SZ')} (in 300 s): aborted: deadline"
    )
    asked, _ = after_rollout(state, rolled_out=True, now=now)
    assert asked.message == "switch requested (attempt 8)"


def test_the_backoff_resets_when_a_switch_completes_or_the_target_changes() -> None:
    failed = abort(abort(begin(ShardState(active=1, target=1), 2), T0), T0 + timedelta(seconds=10))
    assert failed.attempts == 2
    # Completed: nothing left to wait for.
    switching, _ = after_rollout(failed, rolled_out=True, now=T0 + timedelta(seconds=30))
    done = after_reading(switching, stable(names_of(2), version=3), names_of, now=T0)
    assert (done.phase, done.attempts, done.retry_after) == ("Stable", 0, None)
    # A new target is a new change: asked as soon as the relays run its union.
    retargeted = begin(failed, 3)
    assert (retargeted.attempts, retargeted.retry_after) == (0, None)
    assert after_rollout(retargeted, rolled_out=True, now=T0)[1] == "switch"
    back = begin(failed, 1)
    assert (back.phase, back.attempts, back.retry_after) == ("Stable", 0, None)
    # Still failing on the same target: the count goes on.
    assert begin(failed, 2) == failed


def test_the_backoff_survives_a_restart_through_status() -> None:
    failed = abort(begin(ShardState(active=1, target=1), 2), T0)
    written = failed.to_status()
    assert (written["attempts"], written["retryAfter"]) == (1, "2026-12-01T12:00:10Z")
    resumed = ShardState.from_status({"shards": written}, fallback=9)
    assert resumed == failed
    assert after_rollout(resumed, rolled_out=True, now=T0 + timedelta(seconds=5))[1] is None
    # Before this state existed (or unreadable): no backoff.
    assert (
        ShardState.from_status({"shards": {**written, "retryAfter": ""}}, fallback=9).retry_after
        is None
    )
    assert (
        ShardState.from_status(
            {"shards": {**written, "retryAfter": "soon"}}, fallback=9
        ).retry_after
        is None
    )


def test_a_stalled_move_is_reported_and_keeps_waiting() -> None:
    state, _ = after_rollout(begin(ShardState(active=1, target=1), 2), rolled_out=True, now=T0)
    reading = MapReading(version=3, shards=tuple(names_of(2)), phase="move", stalled=True)
    state = after_reading(state, reading, names_of, now=T0)
    assert state.phase == "Switching" and state.stalled and "deadline" in state.message


def test_a_map_switched_by_hand_is_reported_not_overridden() -> None:
    state, _ = after_rollout(begin(ShardState(active=1, target=1), 3), rolled_out=True, now=T0)
    state = after_reading(state, stable(names_of(3)[1:]), names_of, now=T0)
    assert state.phase == "Switching" and state.stalled and "by hand" in state.message


def test_a_spec_edit_waits_for_a_switch_in_flight_and_retargets_otherwise() -> None:
    switching = ShardState(active=1, target=2, phase="Switching")
    assert begin(switching, 4) == switching
    rolling = begin(ShardState(active=1, target=1), 2)
    assert begin(rolling, 4).target == 4 and begin(rolling, 4).redis_shards == 4
    # Back to the active count before anything moved: nothing to switch.
    assert begin(rolling, 1) == ShardState(active=1, target=1, phase="Stable")
    # During Shrinking the map is already the target: a new count starts a new change.
    shrinking = ShardState(active=1, target=1, phase="Shrinking")
    assert begin(shrinking, 2).phase == "Rolling"


def test_rollout_complete_needs_every_pod_on_the_latest_template() -> None:
    hash_key = names.ANNOTATION_CONFIG_HASH
    deploy: dict[str, Any] = {
        "metadata": {"generation": 5},
        "spec": {"template": {"metadata": {"annotations": {hash_key: "union"}}}},
        "status": {
            "observedGeneration": 5,
            "replicas": 3,
            "updatedReplicas": 3,
            "availableReplicas": 3,
        },
    }
    current = [{"metadata": {"annotations": {hash_key: "union"}}}] * 3
    assert rollout_complete(deploy, 3, current)
    assert not rollout_complete({**deploy, "metadata": {"generation": 6}}, 3, current)
    surged = {**deploy, "status": {**deploy["status"], "replicas": 4}}
    assert not rollout_complete(surged, 3, current)
    assert not rollout_complete(None, 3, current)
    # An old pod still draining (terminating: not in the Deployment's counts) is a live
    # relay without the union: a switch now would wait on it, then abort.
    draining = {"metadata": {"annotations": {hash_key: "old"}, "deletionTimestamp": "t"}}
    assert not rollout_complete(deploy, 3, [*current, draining])


# The children at each stage ------------------------------------------------------------


def children(spec: dict[str, Any], state: ShardState | None) -> dict[str, Any]:
    inputs = Inputs(**{**INPUTS.__dict__, "shards": state})
    return {f"{m['kind']}/{m['metadata']['name']}": m for m in desired(parse(spec), META, inputs)}


def relay_urls(built: dict[str, Any]) -> list[str]:
    return str(built["ConfigMap/arena-relay"]["data"][contract.ENV_REDIS_URLS]).split(",")


def test_desired_runs_the_union_while_rolling_and_the_target_once_shrinking() -> None:
    spec = {"redis": {"shards": 1}}
    rolling = children(spec, ShardState(active=3, target=1, phase="Rolling"))
    assert rolling["StatefulSet/arena-redis"]["spec"]["replicas"] == 3
    assert len(relay_urls(rolling)) == 3
    shrinking = children(spec, ShardState(active=1, target=1, phase="Shrinking", draining=3))
    assert shrinking["StatefulSet/arena-redis"]["spec"]["replicas"] == 3
    assert len(relay_urls(shrinking)) == 1
    stable_children = children(spec, ShardState(active=1, target=1))
    assert stable_children["StatefulSet/arena-redis"]["spec"]["replicas"] == 1
    # The shard names the operator switches to are the relay's default names of its URLs.
    assert [url.split("://")[1] for url in relay_urls(rolling)] == shard_names(
        parse(spec), OWNER, 3
    )


def test_desired_with_replicas_runs_one_set_per_shard_of_the_union() -> None:
    spec = {"redis": {"shards": 1, "replicas": 1}}
    built = children(spec, ShardState(active=1, target=2, phase="Rolling"))
    assert {"StatefulSet/arena-rs0", "StatefulSet/arena-rs1"} <= built.keys()
    assert relay_urls(built) == [
        "shard-0=sentinel://shard-0",
        "shard-1=sentinel://shard-1",
    ]
    assert shard_names(parse(spec), OWNER, 2) == ["shard-0", "shard-1"]


def test_the_api_key_reaches_the_relays_by_secret_ref_only() -> None:
    built = children({}, None)
    secret = built["Secret/arena-api"]
    assert secret["type"] == "Opaque" and "apiKey" in secret["data"]
    container = built["Deployment/arena-relay"]["spec"]["template"]["spec"]["containers"][0]
    env = {item["name"]: item for item in container["env"]}
    assert env[contract.ENV_API_KEYS]["valueFrom"] == {
        "secretKeyRef": {"name": "arena-api", "key": "apiKey"}
    }
    assert contract.ENV_API_KEYS not in built["ConfigMap/arena-relay"]["data"]
    assert "k" * 64 not in repr(built["Deployment/arena-relay"])


def test_status_shards_fits_the_crd_and_survives_pruning() -> None:
    """The operator resumes from status.shards: a field the schema lacks would be pruned."""
    status_schema = schema()["properties"]["status"]
    long_reason = "aborted: " + "x" * 5000
    for state in (
        ShardState(active=3, target=1, phase="Shrinking", version=7, draining=3),
        ShardState(active=1, target=2, phase="Rolling", message=long_reason, stalled=True),
        ShardState(active=1, target=2, phase="Rolling", attempts=3, retry_after=T0),
    ):
        written = {"shards": state.to_status()}
        jsonschema.validate(written, status_schema)
        kept, dropped = prune(status_schema, written)
        assert dropped == []
        assert ShardState.from_status(kept, fallback=9) == dataclasses.replace(
            state, message=state.message[:MESSAGE_MAX]
        )
