"""The autoscaling decision: up at once, down only after the delay, always within bounds."""

from datetime import UTC, datetime, timedelta

import pytest

from gamecluster.autoscaling import decide, next_status, recommend
from gamecluster.spec import Autoscaling

pytestmark = pytest.mark.unit

POLICY = Autoscaling(
    enabled=True,
    min_replicas=2,
    max_replicas=10,
    target_connections_per_replica=1000,
    scale_down_delay_seconds=300,
)
T0 = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.mark.parametrize(
    ("connections", "replicas"),
    [
        (0, 2),
        (1, 2),
        (2000, 2),
        (2001, 3),
        (5000, 5),
        (5001, 6),
        (10_000, 10),
        (10**9, 10),
        (-5, 2),
    ],
)
def test_recommendation_is_ceil_of_load_over_target_clamped(
    connections: int, replicas: int
) -> None:
    assert recommend(connections, POLICY) == replicas


def test_scale_up_is_immediate() -> None:
    decision = decide(
        current=2, total_connections=7500, policy=POLICY, now=T0, scale_down_pending_since=None
    )
    assert decision.replicas == 8
    assert decision.scale_down_pending_since is None


def test_scale_down_waits_for_the_delay_then_happens() -> None:
    first = decide(
        current=8, total_connections=1000, policy=POLICY, now=T0, scale_down_pending_since=None
    )
    assert (first.replicas, first.scale_down_pending_since, first.recommended) == (8, T0, 2)
    almost = decide(
        current=8,
        total_connections=1000,
        policy=POLICY,
        now=T0 + timedelta(seconds=299),
        scale_down_pending_since=first.scale_down_pending_since,
    )
    assert (almost.replicas, almost.scale_down_pending_since) == (8, T0)
    done = decide(
        current=8,
        total_connections=1000,
        policy=POLICY,
        now=T0 + timedelta(seconds=300),
        scale_down_pending_since=almost.scale_down_pending_since,
    )
    assert (done.replicas, done.scale_down_pending_since) == (2, None)


def test_load_coming_back_cancels_a_pending_scale_down() -> None:
    waiting = decide(
        current=8, total_connections=1000, policy=POLICY, now=T0, scale_down_pending_since=None
    )
    back = decide(
        current=8,
        total_connections=8000,
        policy=POLICY,
        now=T0 + timedelta(seconds=200),
        scale_down_pending_since=waiting.scale_down_pending_since,
    )
    assert (back.replicas, back.scale_down_pending_since) == (8, None)
    # the clock starts over: 200 s later is not enough
    again = decide(
        current=8,
        total_connections=1000,
        policy=POLICY,
        now=T0 + timedelta(seconds=400),
        scale_down_pending_since=back.scale_down_pending_since,
    )
    assert again.replicas == 8


def test_zero_delay_scales_down_at_once() -> None:
    policy = POLICY.model_copy(update={"scale_down_delay_seconds": 0})
    decision = decide(
        current=8, total_connections=0, policy=policy, now=T0, scale_down_pending_since=None
    )
    assert decision.replicas == 2


def test_current_outside_new_bounds_is_brought_inside_at_once() -> None:
    above = decide(
        current=50, total_connections=50_000, policy=POLICY, now=T0, scale_down_pending_since=None
    )
    assert above.replicas == 10
    below = decide(
        current=0, total_connections=0, policy=POLICY, now=T0, scale_down_pending_since=None
    )
    assert below.replicas == 2


def test_next_status_records_the_decision_and_the_clock() -> None:
    status = {"replicas": 8}
    waiting = next_status(POLICY, status, 0, T0)
    assert waiting == {"desiredReplicas": 8, "scaleDownPendingSince": "2026-01-01T00:00:00Z"}
    later = next_status(POLICY, {"autoscaling": waiting}, 0, T0 + timedelta(seconds=301))
    assert later == {"desiredReplicas": 2, "lastScaleTime": "2026-01-01T00:05:01Z"}
    steady = next_status(POLICY, {"autoscaling": later}, 0, T0 + timedelta(seconds=400))
    assert steady == later
