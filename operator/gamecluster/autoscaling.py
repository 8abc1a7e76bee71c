"""How many relay pods the connection count calls for: a pure decision, unit-tested.

Up at once, down only late: a recommendation above the current count is taken immediately
(new players must find room now); one below it must hold for ``scaleDownDelaySeconds`` before
pods are removed, because removing a pod makes its players reconnect elsewhere. While waiting,
the decision remembers since when a lower count has been recommended; any recommendation at or
above the current count resets that clock.
"""

import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from gamecluster.spec import Autoscaling


@dataclass(frozen=True)
class Decision:
    replicas: int
    """Relay pods to run now."""
    scale_down_pending_since: datetime | None
    """When a lower recommendation started holding; None when none is pending."""
    recommended: int
    """What the load alone calls for, before the delay (for status and logs)."""


def recommend(total_connections: int, policy: Autoscaling) -> int:
    """ceil(total / target), clamped to [minReplicas, maxReplicas]."""
    wanted = math.ceil(max(total_connections, 0) / policy.target_connections_per_replica)
    return max(policy.min_replicas, min(policy.max_replicas, wanted))


def decide(
    *,
    current: int,
    total_connections: int,
    policy: Autoscaling,
    now: datetime,
    scale_down_pending_since: datetime | None,
) -> Decision:
    """The replica count to apply now, given the current count and the load.

    ``current`` outside the bounds (the bounds were just edited) is brought inside at once.
    """
    recommended = recommend(total_connections, policy)
    bounded_current = max(policy.min_replicas, min(policy.max_replicas, current))
    if recommended >= bounded_current:
        return Decision(max(recommended, bounded_current), None, recommended)
    since = scale_down_pending_since or now
    if now - since >= timedelta(seconds=policy.scale_down_delay_seconds):
        return Decision(recommended, None, recommended)
    return Decision(bounded_current, since, recommended)


def _parse_time(value: object) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def _format_time(value: datetime) -> str:
    return value.strftime("%Y-%m-%dT%H:%M:%SZ")


def next_status(
    policy: Autoscaling,
    previous_status: Mapping[str, Any],
    total_connections: int,
    now: datetime,
) -> dict[str, Any]:
    """``status.autoscaling`` after one autoscaler tick (pure; the caller writes it).

    The current count is the last decision, or the pods that exist when autoscaling was just
    switched on, so switching it on never drops pods before the delay has passed.
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
        scale_down_pending_since=_parse_time(before.get("scaleDownPendingSince")),
    )
    after: dict[str, Any] = {"desiredReplicas": decision.replicas}
    if decision.replicas != current:
        after["lastScaleTime"] = _format_time(now)
    elif before.get("lastScaleTime"):
        after["lastScaleTime"] = before["lastScaleTime"]
    if decision.scale_down_pending_since is not None:
        after["scaleDownPendingSince"] = _format_time(decision.scale_down_pending_since)
    return after
