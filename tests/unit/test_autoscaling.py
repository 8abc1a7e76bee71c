"""The autoscaler: HPA-style stabilisation and rate policies, with the review's traces."""

import itertools
from datetime import UTC, datetime, timedelta

import pytest

from gamecluster.autoscaling import (
    MAX_RECOMMENDATIONS,
    Decision,
    Sample,
    State,
    decide,
    next_status,
    recommend,
    state_from,
)
from gamecluster.spec import Autoscaling, parse

pytestmark = pytest.mark.unit

POLICY = Autoscaling(
    enabled=True,
    min_replicas=2,
    max_replicas=20,
    target_connections_per_replica=1000,
    scale_down_delay_seconds=300,
)
T0 = datetime(2026, 1, 1, tzinfo=UTC)
TICK = 10


@pytest.mark.parametrize(
    ("connections", "replicas"),
    [
        (0, 2),
        (1, 2),
        (2000, 2),
        (2001, 3),
        (5000, 5),
        (5001, 6),
        (20_000, 20),
        (10**9, 20),
        (-5, 2),
    ],
)
def test_recommendation_is_ceil_of_load_over_target_clamped(
    connections: int, replicas: int
) -> None:
    assert recommend(connections, POLICY) == replicas


def run(
    trace: list[tuple[int, int]], *, current: int, policy: Autoscaling = POLICY
) -> list[tuple[int, Decision]]:
    """Feed (seconds, connections) samples in order; returns (seconds, decision) per tick."""
    state = State()
    out = []
    for seconds, connections in trace:
        decision = decide(
            current=current,
            total_connections=connections,
            policy=policy,
            now=T0 + timedelta(seconds=seconds),
            state=state,
        )
        out.append((seconds, decision))
        current, state = decision.replicas, decision.state
    return out


def test_review_trace_one_low_sample_after_a_busy_stretch_changes_nothing() -> None:
    """20 pods at 19k connections for 290 s, one 2.5k sample at 300 s: the old autoscaler went
    to 3 pods at once. Now the window's highest recommendation (19) holds."""
    trace = [(t, 19_000) for t in range(0, 300, TICK)] + [(300, 2_500)]
    decisions = run(trace, current=20)
    assert [d.replicas for _, d in decisions[:-1]] == [19] * 30
    last = decisions[-1][1]
    assert (last.replicas, last.recommended, last.reason) == (19, 3, "ScaleDownStabilized")
    # And the load coming back changes nothing either.
    back = run([*trace, (310, 19_000)], current=20)
    assert back[-1][1].replicas == 19


def test_review_trace_19k_to_2500_steps_down_gradually() -> None:
    """The load really drops and stays low: nothing for the window, then at most 20% (or one
    pod) per minute, down to what 2.5k needs."""
    trace = [(t, 19_000) for t in range(0, 300, TICK)]
    trace += [(t, 2_500) for t in range(300, 1800, TICK)]
    decisions = run(trace, current=19)
    counts = {t: d.replicas for t, d in decisions}
    assert all(count == 19 for t, count in counts.items() if t < 590)
    assert counts[1790] == 3
    # Never more than the policies allow within any 60 s period.
    for t, count in counts.items():
        start = counts.get(t - 60, 19) if t >= 60 else 19
        # Max: the policy allowing the bigger change (20% from 19 is 4 pods, more than 1).
        allowed = min(int(start * 0.8), start - 1)
        assert count >= allowed, (t, start, count)
    steps = sorted({count for count in counts.values()}, reverse=True)
    assert len(steps) >= 5, steps  # gradual: many intermediate counts, not 19 -> 3
    reasons = {d.reason for _, d in decisions}
    assert "ScaleDownLimitedByPolicy" in reasons


def test_scale_up_is_immediate_but_limited_per_period() -> None:
    decisions = run([(0, 19_000), (5, 19_000), (15, 19_000), (30, 19_000)], current=2)
    counts = [d.replicas for _, d in decisions]
    # +100% or +4 pods per 15 s, whichever is more: 2 -> 6 -> (same period) 6 -> 12 -> 19.
    assert counts == [6, 6, 12, 19]
    assert decisions[0][1].reason == "ScaleUpLimitedByPolicy"
    assert decisions[-1][1].reason == "ScaleUp"


def test_scale_up_policies_can_be_disabled_or_minimal() -> None:
    disabled = parse(
        {"autoscaling": {**_raw(), "behavior": {"scaleUp": {"selectPolicy": "Disabled"}}}}
    ).autoscaling
    assert run([(0, 19_000)], current=2, policy=disabled)[0][1].replicas == 2
    minimal = parse(
        {"autoscaling": {**_raw(), "behavior": {"scaleUp": {"selectPolicy": "Min"}}}}
    ).autoscaling
    # Min of (+100% = 4, +4 = 6): 4.
    assert run([(0, 19_000)], current=2, policy=minimal)[0][1].replicas == 4


def test_scale_down_policy_in_pods() -> None:
    one_per_minute = parse(
        {
            "autoscaling": {
                **_raw(),
                "scaleDownDelaySeconds": 0,
                "behavior": {
                    "scaleDown": {"policies": [{"type": "Pods", "value": 1, "periodSeconds": 60}]}
                },
            }
        }
    ).autoscaling
    decisions = run([(t, 0) for t in range(0, 181, TICK)], current=10, policy=one_per_minute)
    counts = {t: d.replicas for t, d in decisions}
    assert (counts[0], counts[50], counts[60], counts[120], counts[180]) == (9, 9, 8, 7, 6)


def test_a_dip_inside_the_window_keeps_the_pods() -> None:
    trace = [(0, 10_000), (10, 1_000), (20, 10_000), (30, 1_000), (40, 1_000)]
    assert [d.replicas for _, d in run(trace, current=10)] == [10] * 5


def test_bounds_edited_below_current_apply_at_once() -> None:
    policy = Autoscaling(
        enabled=True, min_replicas=2, max_replicas=5, target_connections_per_replica=1000
    )
    decision = run([(0, 19_000)], current=12, policy=policy)[0][1]
    assert (decision.replicas, decision.reason) == (5, "BoundsChanged")


def test_the_window_is_bounded_and_overflow_holds_pods_longer() -> None:
    """A load falling one step per tick for longer than the bound: the oldest two merge."""
    policy = Autoscaling(
        enabled=True,
        min_replicas=1,
        max_replicas=1000,
        target_connections_per_replica=1,
        scale_down_delay_seconds=86_400,
    )
    trace = [(t, 1000 - t) for t in range(0, MAX_RECOMMENDATIONS + 10)]
    decisions = run(trace, current=1000, policy=policy)
    window = decisions[-1][1].state.recommendations
    assert len(window) == MAX_RECOMMENDATIONS
    assert window[0].replicas == 1000  # the highest is never lost
    assert all(a.replicas > b.replicas for a, b in itertools.pairwise(window))
    assert decisions[-1][1].replicas == 1000


def test_state_round_trips_through_status_and_bad_entries_are_skipped() -> None:
    status: dict[str, object] = {"replicas": 4}
    after, decision = next_status(POLICY, status, 19_000, T0)
    assert after["desiredReplicas"] == decision.replicas == 8  # +4 pods per 15 s from 4
    assert after["currentReplicas"] == 4
    assert after["lastScaleTime"] == "2026-01-01T00:00:00Z"
    state = state_from(after)
    assert state.recommendations == (Sample(T0, 19),)
    assert [e.change for e in state.events] == [4]
    later, _ = next_status(POLICY, {"autoscaling": after}, 19_000, T0 + timedelta(seconds=5))
    assert later["desiredReplicas"] == 8  # same 15 s period: the policy allows no more yet
    assert later["reason"] == "ScaleUpLimitedByPolicy"
    assert later["lastScaleTime"] == "2026-01-01T00:00:00Z"
    broken = state_from(
        {"recommendations": [{"time": "x", "replicas": 3}, "junk"], "scaleEvents": [{}]}
    )
    assert broken == State()


def _raw() -> dict[str, object]:
    return {
        "enabled": True,
        "minReplicas": 2,
        "maxReplicas": 20,
        "targetConnectionsPerReplica": 1000,
    }
