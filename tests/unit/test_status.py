"""Status from children: counts, phase, metav1-style conditions with stable transition times."""

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from gamecluster.spec import GameClusterSpec, parse
from gamecluster.status import Observed, Problem, compute

pytestmark = pytest.mark.unit

META = {"name": "arena", "namespace": "games", "uid": "u", "generation": 2}
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def deployment(
    replicas: int, ready: int, updated: int | None = None, generation: int = 1
) -> dict[str, Any]:
    return {
        "metadata": {"generation": generation},
        "status": {
            "observedGeneration": generation,
            "replicas": replicas,
            "readyReplicas": ready,
            "availableReplicas": ready,
            "updatedReplicas": replicas if updated is None else updated,
        },
    }


def statefulset(ready: int) -> dict[str, Any]:
    return {"status": {"readyReplicas": ready}}


def status_of(
    spec: GameClusterSpec,
    observed: Observed,
    *,
    previous: Mapping[str, Any] | None = None,
    autoscaled_replicas: int | None = None,
    now: datetime = T0,
    meta: Mapping[str, Any] = META,
) -> dict[str, Any]:
    """compute() for META's cluster at T0 on a first pass (no previous status), not
    autoscaled: a test names only what differs."""
    return compute(
        spec,
        meta,
        observed,
        previous={} if previous is None else previous,
        autoscaled_replicas=autoscaled_replicas,
        now=now,
    )


def conditions(status: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in status["conditions"]}


def test_all_ready() -> None:
    spec = parse({"replicas": 3, "redis": {"shards": 2}})
    status = status_of(spec, Observed(deployment(3, 3), statefulset(2), 42))
    assert status["phase"] == "Ready"
    assert (status["replicas"], status["readyReplicas"], status["connections"]) == (3, 3, 42)
    assert status["redis"] == {"shards": 2, "readyShards": 2}
    assert (
        status["selector"] == "app.kubernetes.io/instance=arena,app.kubernetes.io/component=relay"
    )
    assert status["endpoint"] == "ws://arena.games.svc:80/ws"
    conds = conditions(status)
    assert {t: c["status"] for t, c in conds.items()} == {
        "Ready": "True",
        "Stalled": "False",
        "Reconciling": "False",
        "Available": "True",
        "Progressing": "False",
        "RedisReady": "True",
    }
    for cond in conds.values():
        assert cond["reason"]
        assert cond["lastTransitionTime"] == "2026-01-01T00:00:00Z"


def test_nothing_yet_is_pending() -> None:
    status = status_of(parse({}), Observed(None, None))
    assert status["phase"] == "Pending"
    assert conditions(status)["Ready"]["status"] == "False"
    assert "connections" not in status


def test_rolling_out_is_progressing() -> None:
    spec = parse({"replicas": 3})
    status = status_of(spec, Observed(deployment(4, 3, updated=1), statefulset(1)))
    assert status["phase"] == "Progressing"
    assert conditions(status)["Progressing"]["status"] == "True"
    assert conditions(status)["Reconciling"]["status"] == "True"
    assert conditions(status)["Reconciling"]["reason"] == "RollingOut"
    assert conditions(status)["Ready"]["status"] == "True"  # 3 of 3 ready while surging


def test_redis_not_ready_keeps_ready_false() -> None:
    spec = parse({"replicas": 1, "redis": {"shards": 3}})
    status = status_of(spec, Observed(deployment(1, 1), statefulset(2)))
    assert status["phase"] == "Progressing"
    assert conditions(status)["Ready"]["reason"] == "RedisNotReady"
    assert status["redis"] == {"shards": 3, "readyShards": 2}


def test_problem_is_degraded_with_its_reason() -> None:
    problem = Problem("SecretNotFound", "Secret x not found")
    status = status_of(parse({}), Observed(deployment(2, 2), statefulset(1), problem=problem))
    assert status["phase"] == "Degraded"
    stalled = conditions(status)["Stalled"]
    assert (stalled["status"], stalled["reason"], stalled["message"]) == (
        "True",
        "SecretNotFound",
        "Secret x not found",
    )
    assert conditions(status)["Reconciling"]["status"] == "False"
    # The pods that exist still serve: Ready says so, Stalled says the operator is stuck.
    assert conditions(status)["Ready"]["status"] == "True"


def test_transition_time_moves_only_when_status_flips() -> None:
    spec = parse({"replicas": 1})
    first = status_of(spec, Observed(deployment(1, 0), statefulset(1)))
    later = T0 + timedelta(minutes=5)
    same = status_of(spec, Observed(deployment(1, 0), statefulset(1)), previous=first, now=later)
    assert conditions(same)["Ready"]["lastTransitionTime"] == "2026-01-01T00:00:00Z"
    flipped = status_of(spec, Observed(deployment(1, 1), statefulset(1)), previous=same, now=later)
    assert conditions(flipped)["Ready"]["lastTransitionTime"] == "2026-01-01T00:05:00Z"
    assert conditions(flipped)["RedisReady"]["lastTransitionTime"] == "2026-01-01T00:00:00Z"


def test_external_redis_counts_urls() -> None:
    spec = parse(
        {
            "replicas": 1,
            "redis": {"mode": "external", "external": {"urls": ["redis://a", "redis://b"]}},
        }
    )
    status = status_of(spec, Observed(deployment(1, 1), None))
    assert status["redis"] == {"shards": 2, "readyShards": 2}
    assert conditions(status)["RedisReady"]["reason"] == "External"
    assert status["phase"] == "Ready"


def test_stalled_rollout_is_degraded() -> None:
    deploy = deployment(2, 1)
    deploy["status"]["conditions"] = [
        {"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded"}
    ]
    status = status_of(parse({}), Observed(deploy, statefulset(1)))
    assert status["phase"] == "Degraded"
    assert conditions(status)["Stalled"]["reason"] == "ProgressDeadlineExceeded"


def test_status_validates_against_the_crd_status_schema() -> None:
    import jsonschema
    from crd_schema import schema

    spec = parse({"replicas": 3, "redis": {"shards": 2}})
    status = status_of(spec, Observed(deployment(3, 3), statefulset(2), 42))
    status["autoscaling"] = {
        "desiredReplicas": 3,
        "currentReplicas": 4,
        "recommendedReplicas": 2,
        "reason": "ScaleDownLimitedByPolicy",
        "lastScaleTime": "2026-01-01T00:00:00Z",
        "recommendations": [{"time": "2026-01-01T00:00:00Z", "replicas": 3}],
        "scaleEvents": [{"time": "2026-01-01T00:00:00Z", "change": -1}],
    }
    status_schema = schema()["properties"]["status"]
    jsonschema.validate(status, status_schema)
    declared = set(status_schema["properties"])
    assert set(status) <= declared  # nothing a strict schema would prune


def test_every_condition_carries_the_current_generation() -> None:
    """kubectl wait ignores a condition whose observedGeneration lags metadata.generation."""
    spec = parse({"replicas": 2})
    before = status_of(spec, Observed(deployment(2, 2), statefulset(1)))
    edited = {**META, "generation": 3}
    after = status_of(
        spec,
        Observed(deployment(2, 2), statefulset(1)),
        previous=before,
        now=T0 + timedelta(seconds=1),
        meta=edited,
    )
    assert after["observedGeneration"] == 3
    assert {c["observedGeneration"] for c in after["conditions"]} == {3}
    assert conditions(after)["Ready"]["lastTransitionTime"] == "2026-01-01T00:00:00Z"


def test_ready_holds_through_an_autoscaled_scale_up() -> None:
    spec = parse({"autoscaling": {"enabled": True, "minReplicas": 2, "maxReplicas": 20}})
    status = status_of(
        spec, Observed(deployment(8, 3), statefulset(1), 30000), autoscaled_replicas=8
    )
    conds = conditions(status)
    assert status["desiredReplicas"] == 8
    assert conds["Ready"]["status"] == "True"
    assert conds["Progressing"]["status"] == "True"
    assert conds["Reconciling"]["status"] == "True"
    assert conds["ScalingActive"]["status"] == "True"
    below = status_of(
        spec,
        Observed(deployment(8, 1), statefulset(1), 30000),
        previous=status,
        autoscaled_replicas=8,
    )
    assert conditions(below)["Ready"]["status"] == "False"


def test_unknown_load_is_scaling_inactive_and_kept_by_passes_that_read_none() -> None:
    spec = parse({"autoscaling": {"enabled": True}})
    unknown = status_of(
        spec,
        Observed(deployment(1, 1), statefulset(1), load_unknown="no report from p"),
        autoscaled_replicas=1,
    )
    active = conditions(unknown)["ScalingActive"]
    assert (active["status"], active["reason"]) == ("False", "LoadUnknown")
    assert unknown["connections"] is None  # deletes a stale count from the stored status
    kept = status_of(
        spec, Observed(deployment(1, 1), statefulset(1)), previous=unknown, autoscaled_replicas=1
    )
    assert conditions(kept)["ScalingActive"]["reason"] == "LoadUnknown"


def test_a_retryable_child_failure_is_reconciling_not_stalled() -> None:
    status = status_of(
        parse({}),
        Observed(
            deployment(2, 2), statefulset(1), retrying=Problem("ApplyFailed", "Service x: 409")
        ),
    )
    conds = conditions(status)
    assert conds["Stalled"]["status"] == "False"
    assert (conds["Reconciling"]["status"], conds["Reconciling"]["reason"]) == (
        "True",
        "ApplyFailed",
    )
