"""How many relay pods the connection count calls for: a pure decision, unit-tested.

The HPA's behaviour API, with connections as the metric (the HPA's algorithm, read from
pkg/controller/podautoscaler/horizontal.go):

1. Recommend ``ceil(connections / targetConnectionsPerReplica)`` within [min, max].
2. Stabilise: scale-down goes only as low as the *highest* recommendation made within
   ``scaleDownDelaySeconds``; scale-up takes the recommendation at once (new players must
   find room now). One low sample after a busy hour therefore changes nothing until the
   window has seen only low samples.
3. Rate-limit: each direction has policies "at most N pods" or "at most P percent" per
   period, counted from the replica count at the start of the period (from the recorded scale
   events); ``selectPolicy`` Max takes the policy that allows the biggest change, Min the
   smallest, Disabled forbids that direction.

The state this needs (the window's recommendations and recent scale events) lives in
``status.autoscaling``, so a restarted or failed-over operator continues where the last one
stopped. Both lists are bounded (see ``MAX_RECOMMENDATIONS`` and ``MAX_SCALE_EVENTS``).
"""

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final

from gamecluster.spec import Autoscaling, ScalingRules

MAX_RECOMMENDATIONS: Final = 64
"""Window entries kept. The window is a strictly decreasing run, so it only grows while the
load keeps falling step by step; on overflow the two oldest entries merge into one with the
higher count and the newer time, which holds pods a little longer, never removes them sooner."""
MAX_SCALE_EVENTS: Final = 64
"""Scale events kept (older than the longest policy period are dropped first). On overflow the
two oldest merge (changes summed, newer time): a policy then counts them for longer, so the
limit is stricter, never looser."""


UNLIMITED: Final = 1_000_000
"""Scale-up limit with no policies (maxReplicas bounds the result anyway)."""


@dataclass(frozen=True)
class Sample:
    time: datetime
    replicas: int


@dataclass(frozen=True)
class ScaleEvent:
    time: datetime
    change: int
    """Pods added (positive) or removed (negative)."""


@dataclass(frozen=True)
class State:
    recommendations: tuple[Sample, ...] = ()
    events: tuple[ScaleEvent, ...] = ()


@dataclass(frozen=True)
class Decision:
    replicas: int
    """Relay pods to run now."""
    recommended: int
    """What the load alone calls for (step 1)."""
    reason: str
    """CamelCase: ScaleUp, ScaleDown, ScaleDownStabilized, ScaleUpLimitedByPolicy,
    ScaleDownLimitedByPolicy, AtRecommendation, BoundsChanged."""
    message: str
    state: State


def recommend(total_connections: int, policy: Autoscaling) -> int:
    """ceil(total / target), clamped to [minReplicas, maxReplicas]."""
    wanted = math.ceil(max(total_connections, 0) / policy.target_connections_per_replica)
    return max(policy.min_replicas, min(policy.max_replicas, wanted))


def _window(
    previous: Sequence[Sample], recommended: int, now: datetime, seconds: int
) -> tuple[Sample, ...]:
    """The stabilisation window after adding this recommendation (its first entry is its max)."""
    cutoff = now - timedelta(seconds=seconds)
    # Older than the window, or not above the new one (so never again the window's highest).
    kept = [s for s in previous if s.time > cutoff and s.replicas > recommended]
    kept.append(Sample(now, recommended))
    while len(kept) > MAX_RECOMMENDATIONS:
        kept[0:2] = [Sample(kept[1].time, kept[0].replicas)]
    return tuple(kept)


def _in_period(events: Sequence[ScaleEvent], now: datetime, seconds: int) -> tuple[int, int]:
    """(pods added, pods removed) by the events within the last ``seconds``."""
    cutoff = now - timedelta(seconds=seconds)
    recent = [e.change for e in events if e.time > cutoff]
    return sum(c for c in recent if c > 0), -sum(c for c in recent if c < 0)


def scale_up_limit(
    current: int, events: Sequence[ScaleEvent], rules: ScalingRules, now: datetime
) -> int:
    """The most pods the scale-up policies allow now."""
    if rules.select_policy == "Disabled":
        return current
    if not rules.policies:
        return UNLIMITED
    proposals = []
    for policy in rules.policies:
        added, removed = _in_period(events, now, policy.period_seconds)
        start = current - added + removed
        if policy.type == "Pods":
            proposals.append(start + policy.value)
        else:
            proposals.append(math.ceil(start * (1 + policy.value / 100)))
    chosen = max(proposals) if rules.select_policy == "Max" else min(proposals)
    return max(chosen, current)


def scale_down_limit(
    current: int, events: Sequence[ScaleEvent], rules: ScalingRules, now: datetime
) -> int:
    """The fewest pods the scale-down policies allow now."""
    if rules.select_policy == "Disabled":
        return current
    if not rules.policies:
        return 0
    proposals = []
    for policy in rules.policies:
        added, removed = _in_period(events, now, policy.period_seconds)
        start = current + removed - added
        if policy.type == "Pods":
            proposals.append(start - policy.value)
        else:
            proposals.append(int(start * (1 - policy.value / 100)))
    # Max: the policy allowing the biggest change, i.e. the lowest floor.
    chosen = min(proposals) if rules.select_policy == "Max" else max(proposals)
    return min(chosen, current)


def _keep_events(
    events: list[ScaleEvent], policy: Autoscaling, now: datetime
) -> tuple[ScaleEvent, ...]:
    behavior = policy.behavior
    periods = [
        p.period_seconds for p in (*behavior.scale_up.policies, *behavior.scale_down.policies)
    ]
    cutoff = now - timedelta(seconds=max(periods, default=0))
    kept = [e for e in events if e.time > cutoff]
    while len(kept) > MAX_SCALE_EVENTS:
        kept[0:2] = [ScaleEvent(kept[1].time, kept[0].change + kept[1].change)]
    return tuple(kept)


def decide(
    *, current: int, total_connections: int, policy: Autoscaling, now: datetime, state: State
) -> Decision:
    """The replica count to apply now, given the current count, the load and the history.

    ``current`` outside the bounds (the bounds were just edited) is brought inside at once.
    """
    recommended = recommend(total_connections, policy)
    window = _window(state.recommendations, recommended, now, policy.scale_down_delay_seconds)
    highest = window[0].replicas
    bounded = max(policy.min_replicas, min(policy.max_replicas, current))
    # The HPA's stabilisation: never above the window's highest, never below the newest.
    target = min(max(bounded, recommended), highest)
    load = f"{recommended} recommended for {total_connections} connections"
    if target > bounded:
        limit = scale_up_limit(bounded, state.events, policy.behavior.scale_up, now)
        reason, message = "ScaleUp", load
        if target > limit:
            reason, message = "ScaleUpLimitedByPolicy", f"{load}; scale-up policies allow {limit}"
            target = limit
    elif target < bounded:
        limit = scale_down_limit(bounded, state.events, policy.behavior.scale_down, now)
        reason, message = "ScaleDown", load
        if target < limit:
            reason, message = (
                "ScaleDownLimitedByPolicy",
                f"{load}; scale-down policies allow {limit}",
            )
            target = limit
    elif bounded != current:
        reason, message = "BoundsChanged", f"{current} pods is outside [min, max]; {bounded} now"
    elif recommended < target:
        reason, message = (
            "ScaleDownStabilized",
            (
                f"{load}; {highest} is the highest recommendation of the last "
                f"{policy.scale_down_delay_seconds} s"
            ),
        )
    else:
        reason, message = "AtRecommendation", load
    events = list(state.events)
    if target != current:
        events.append(ScaleEvent(now, target - current))
    return Decision(
        target, recommended, reason, message, State(window, _keep_events(events, policy, now))
    )


def _parse_time(value: object) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def format_time(value: datetime) -> str:
    return value.strftime("%Y-%m-%dT%H:%M:%SZ")


def state_from(autoscaling_status: Mapping[str, Any]) -> State:
    """The window and events stored in ``status.autoscaling`` (bad entries are skipped)."""
    samples = []
    for item in autoscaling_status.get("recommendations") or []:
        time = _parse_time(item.get("time")) if isinstance(item, Mapping) else None
        if time is not None and isinstance(item.get("replicas"), int):
            samples.append(Sample(time, item["replicas"]))
    events = []
    for item in autoscaling_status.get("scaleEvents") or []:
        time = _parse_time(item.get("time")) if isinstance(item, Mapping) else None
        if time is not None and isinstance(item.get("change"), int):
            events.append(ScaleEvent(time, item["change"]))
    return State(tuple(samples), tuple(events))


def next_status(
    policy: Autoscaling,
    previous_status: Mapping[str, Any],
    total_connections: int,
    now: datetime,
) -> tuple[dict[str, Any], Decision]:
    """``status.autoscaling`` after one autoscaler tick, and the decision (pure).

    The current count is the last decision, or the pods that exist when autoscaling was just
    switched on, so switching it on never drops pods at once.
    """
    before = previous_status.get("autoscaling") or {}
    current = before.get("desiredReplicas")
    if not isinstance(current, int):
        current = int(previous_status.get("replicas") or policy.min_replicas)
    decision = decide(
        current=current,
        total_connections=total_connections,
        policy=policy,
        now=now,
        state=state_from(before),
    )
    after: dict[str, Any] = {
        "desiredReplicas": decision.replicas,
        "currentReplicas": current,
        "recommendedReplicas": decision.recommended,
        "reason": decision.reason,
        "recommendations": [
            {"time": format_time(s.time), "replicas": s.replicas}
            for s in decision.state.recommendations
        ],
        "scaleEvents": [
            {"time": format_time(e.time), "change": e.change} for e in decision.state.events
        ],
    }
    if decision.replicas != current:
        after["lastScaleTime"] = format_time(now)
    elif before.get("lastScaleTime"):
        after["lastScaleTime"] = before["lastScaleTime"]
    return after, decision
