"""GameCluster status from its children: a pure function, unit-tested.

Conditions follow metav1.Condition: ``lastTransitionTime`` moves only when a condition's
status flips, and every condition carries the generation this pass read, so
``kubectl wait --for=condition=Ready`` after an edit returns as soon as the edit is handled.

What tools read (kstatus, used by Helm 4's ``--wait``, Flux, Argo CD):

- ``Stalled`` True: the operator cannot make progress without a change (a spec it cannot
  honour, a child the API server refuses, a name taken by someone else's object, a
  Deployment past its progress deadline). The reason says which, the message names the child
  and the API error. kstatus: Failed.
- ``Reconciling`` True: work in flight (children being created, a rollout, a scale change,
  Redis shards starting). kstatus: InProgress. Both False and observedGeneration current:
  Current.
- ``Ready``: serving. True while at least the floor of relay pods is ready (``minReplicas``
  while autoscaling, else ``replicas``) and every Redis shard is; a scale-up or a surge
  rollout keeps it True, ``Progressing`` says that pods are moving.
- ``Available``, ``Progressing``, ``RedisReady`` as before; ``ScalingActive`` (autoscaling
  only) False with reason ``LoadUnknown`` while the load cannot be read (no decision then).
"""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from gamecluster import names
from gamecluster.children import SENTINEL_QUORUM, SENTINELS, Owner
from gamecluster.desired import relay_replicas
from gamecluster.spec import GameClusterSpec
from relay import contract


@dataclass(frozen=True)
class Problem:
    """Why a spec cannot be honoured; shown as phase Degraded and the Ready condition."""

    reason: str
    message: str


@dataclass(frozen=True)
class Observed:
    """What the operator read from the cluster for one GameCluster."""

    deployment: Mapping[str, Any] | None
    statefulset: Mapping[str, Any] | None
    connections: int | None = None
    problem: Problem | None = None
    """Why the operator is stuck (spec, a refused or conflicting child): Stalled."""
    load_unknown: str | None = None
    """Why the load could not be read this tick (autoscaling only); None when it was."""
    retrying: Problem | None = None
    """A child failed in a way a retry may fix (a conflict, a timeout): Reconciling."""
    shard_sets: tuple[Mapping[str, Any] | None, ...] = ()
    """``redis.replicas`` > 0: each shard's StatefulSet, in shard order (None: not read)."""
    sentinels: Mapping[str, Any] | None = None
    """``redis.replicas`` > 0: the Sentinel StatefulSet."""
    shard_work: tuple[str, str] | None = None
    """A shard change in flight (reason, message): Reconciling (``status.shards``)."""


def _timestamp(now: datetime) -> str:
    return now.strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class _Conditions:
    """Builds conditions that keep lastTransitionTime while their status does not change."""

    previous: Sequence[Mapping[str, Any]]
    generation: int
    now: datetime

    def make(self, type_: str, status: str, reason: str, message: str) -> dict[str, Any]:
        before = next((c for c in self.previous if c.get("type") == type_), None)
        kept = (
            before.get("lastTransitionTime") if before and before.get("status") == status else None
        )
        return {
            "type": type_,
            "status": status,
            "observedGeneration": self.generation,
            "lastTransitionTime": kept or _timestamp(self.now),
            "reason": reason,
            "message": message,
        }


def _int(obj: Mapping[str, Any] | None, *path: str) -> int:
    value: Any = obj
    for key in path:
        value = value.get(key) if isinstance(value, Mapping) else None
    return int(value) if isinstance(value, int) else 0


def _deployment_condition(deployment: Mapping[str, Any] | None, type_: str) -> Mapping[str, Any]:
    for condition in (deployment or {}).get("status", {}).get("conditions", []) or []:
        if condition.get("type") == type_:
            return condition  # type: ignore[no-any-return]
    return {}


def compute(
    spec: GameClusterSpec,
    meta: Mapping[str, Any],
    observed: Observed,
    *,
    previous: Mapping[str, Any],
    autoscaled_replicas: int | None,
    now: datetime,
) -> dict[str, Any]:
    """The status fields the operator owns (observedGeneration and autoscaling excluded)."""
    owner = Owner.from_meta(meta)
    generation = int(meta.get("generation") or 0)
    prev_conditions = previous.get("conditions") or []
    deploy = observed.deployment
    sts = observed.statefulset

    desired = relay_replicas(spec, autoscaled_replicas)
    replicas = _int(deploy, "status", "replicas")
    ready = _int(deploy, "status", "readyReplicas")
    updated = _int(deploy, "status", "updatedReplicas")
    available = _int(deploy, "status", "availableReplicas")
    deploy_generation = _int(deploy, "metadata", "generation")
    rolled_out = (
        deploy is not None
        and _int(deploy, "status", "observedGeneration") >= deploy_generation
        and updated >= desired
        and replicas == desired
        and available >= desired
    )

    if spec.redis.mode == "managed" and spec.redis.replicas > 0:
        # A shard serves while one of its pods is ready (Sentinel promotes a ready replica
        # if the master is gone); failovers need a Sentinel quorum.
        shards = spec.redis.shards
        sets = (*observed.shard_sets, *([None] * shards))[:shards]
        ready_shards = sum(1 for one in sets if _int(one, "status", "readyReplicas") >= 1)
        sentinels = _int(observed.sentinels, "status", "readyReplicas")
        redis_ok = ready_shards >= shards and sentinels >= SENTINEL_QUORUM
        redis_cond = ("True", "AllShardsReady") if redis_ok else ("False", "ShardsNotReady")
        redis_msg = f"{ready_shards}/{shards} Redis shards ready, {sentinels}/{SENTINELS} Sentinels"
    elif spec.redis.mode == "managed":
        shards = spec.redis.shards
        ready_shards = min(_int(sts, "status", "readyReplicas"), shards)
        redis_ok = ready_shards >= shards
        redis_cond = ("True", "AllShardsReady") if redis_ok else ("False", "ShardsNotReady")
        redis_msg = f"{ready_shards}/{shards} Redis shards ready"
    else:
        shards = len(spec.redis.external.urls) if spec.redis.external else 0
        ready_shards = shards
        redis_ok = True
        redis_cond = ("True", "External")
        redis_msg = f"{shards} external Redis URLs; reachability is checked by the relay pods"

    stalled = _deployment_condition(deploy, "Progressing").get("reason") == (
        "ProgressDeadlineExceeded"
    )
    problem = observed.problem or (
        Problem("ProgressDeadlineExceeded", "the relay Deployment stopped making progress")
        if stalled
        else None
    )

    cond = _Conditions(prev_conditions, generation, now).make
    deploy_available = _deployment_condition(deploy, "Available")
    if deploy_available:
        available_cond = cond(
            "Available",
            deploy_available.get("status", "Unknown"),
            deploy_available.get("reason") or "DeploymentAvailable",
            deploy_available.get("message") or "",
        )
    else:
        is_available = deploy is not None and available >= desired
        available_cond = cond(
            "Available",
            "True" if is_available else "False",
            "MinimumReplicasAvailable" if is_available else "MinimumReplicasUnavailable",
            f"{available}/{desired} relay pods available",
        )
    progressing_cond = cond(
        "Progressing",
        "False" if rolled_out else "True",
        "RolloutComplete" if rolled_out else "RollingOut",
        f"{updated}/{desired} relay pods updated, {replicas} exist",
    )
    redis_condition = cond("RedisReady", redis_cond[0], redis_cond[1], redis_msg)

    floor = spec.autoscaling.min_replicas if spec.autoscaling.enabled else spec.replicas
    floor = min(floor, desired)
    serving = deploy is not None and ready >= floor and redis_ok
    if floor == 0:
        ready_cond = cond("Ready", "False", "ScaledToZero", "replicas is 0: no relay pod runs")
    elif serving:
        ready_cond = cond(
            "Ready", "True", "Serving", f"{ready}/{desired} relay pods ready (at least {floor})"
        )
    else:
        reason = "RedisNotReady" if not redis_ok else "ReplicasNotReady"
        ready_cond = cond(
            "Ready", "False", reason, f"{ready}/{desired} relay pods ready; {redis_msg}"
        )

    if problem is not None:
        stalled_cond = cond("Stalled", "True", problem.reason, problem.message)
        reconciling_cond = cond("Reconciling", "False", problem.reason, "stalled: see Stalled")
        phase = "Degraded"
    else:
        stalled_cond = cond("Stalled", "False", "NoProblem", "")
        if observed.retrying is not None:
            work = (observed.retrying.reason, observed.retrying.message)
        elif deploy is None:
            work = ("Creating", "the relay Deployment does not exist yet")
        elif observed.shard_work is not None:
            work = observed.shard_work
        elif not rolled_out:
            work = ("RollingOut", progressing_cond["message"])
        elif not redis_ok:
            work = ("RedisNotReady", redis_msg)
        else:
            work = None
        if work is None:
            reconciling_cond = cond("Reconciling", "False", "Reconciled", "all work done")
            phase = "Ready" if serving or floor == 0 else "Progressing"
        else:
            reconciling_cond = cond("Reconciling", "True", work[0], work[1])
            phase = "Pending" if deploy is None else "Progressing"

    conditions = [
        ready_cond,
        stalled_cond,
        reconciling_cond,
        available_cond,
        progressing_cond,
        redis_condition,
    ]
    if spec.autoscaling.enabled:
        if observed.load_unknown is not None:
            conditions.append(cond("ScalingActive", "False", "LoadUnknown", observed.load_unknown))
        elif observed.connections is not None:
            conditions.append(
                cond("ScalingActive", "True", "ValidLoadReports", "every ready pod reported")
            )
        else:  # a pass that read no load (an edit, a child event) keeps what the timer saw
            before = next((c for c in prev_conditions if c.get("type") == "ScalingActive"), None)
            conditions.append(
                cond(
                    "ScalingActive",
                    before.get("status", "Unknown") if before else "Unknown",
                    before.get("reason", "NotYetRead") if before else "NotYetRead",
                    before.get("message", "") if before else "the load is read every resync",
                )
            )

    status: dict[str, Any] = {
        "phase": phase,
        "observedGeneration": generation,
        "desiredReplicas": desired,
        "replicas": replicas,
        "readyReplicas": ready,
        "updatedReplicas": updated,
        "selector": owner.selector_string(names.COMPONENT_RELAY),
        "endpoint": owner.endpoint(spec.service.port, contract.WS_PATH),
        "redis": {"shards": shards, "readyShards": ready_shards},
        "conditions": conditions,
    }
    if observed.connections is not None:
        status["connections"] = observed.connections
    elif observed.load_unknown is not None:
        status["connections"] = None  # merge patch: an unknown count is absent, not stale
    return status
