"""kopf handlers, registered into a registry built on demand (no import-time globals).

- GameCluster create/update/resume: a full reconcile pass. A spec that cannot be honoured
  gives status Degraded, a Warning Event, and ``kopf.TemporaryError`` (it may pass: a Secret
  created later) or ``kopf.PermanentError`` (only a spec change helps). Nothing crashes.
- Child events (Deployment, StatefulSet, Service, ConfigMap, PDB labelled as ours): a drift
  pass for the owner, so hand edits and deletions are reverted and child status flows into
  the GameCluster's status.
- A timer per GameCluster: read the ready relay pods' load reports, let the autoscaler
  decide (a Normal Event when the count changes; before a scale-down the pods get a
  pod-deletion-cost from their connection count, so the least-loaded go first), then a drift
  pass (this also catches the generated Secret, which is not watched).
- ``gamecluster.io/paused: "true"`` on a GameCluster: every handler leaves it alone (no apply,
  no status write, no scaling) until the annotation goes; removing it is an update, and the
  next pass catches up with everything that changed meanwhile.

Handlers are sync: kopf runs them in worker threads, where the blocking API client is fine.
They return None, since kopf would store return values under status where the strict
schema prunes them; status is patched by the reconciler instead.
"""

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import kopf

from gamecluster import autoscaling, names, redis_auth
from gamecluster import load as load_mod
from gamecluster.children import ChildRef, Owner
from gamecluster.cluster import ClusterError
from gamecluster.desired import redis_urls
from gamecluster.load import LoadSource, Reading
from gamecluster.metrics import OperatorMetrics
from gamecluster.reconcile import Outcome, Reconciler
from gamecluster.spec import GameClusterSpec, InvalidSpec, parse

logger = logging.getLogger(__name__)

_WATCHED_CHILDREN = (
    ("apps", "v1", "deployments"),
    ("apps", "v1", "statefulsets"),
    ("", "v1", "services"),
    ("", "v1", "configmaps"),
    ("policy", "v1", "poddisruptionbudgets"),
)
RETRY_SECONDS = 30.0


@dataclass(frozen=True)
class Context:
    """What every handler needs; handed to kopf as ``memo.ctx``."""

    reconciler: Reconciler
    load: LoadSource
    metrics: OperatorMetrics = field(default_factory=OperatorMetrics)


def _ctx(memo: Any) -> Context:
    ctx = memo.ctx
    if not isinstance(ctx, Context):
        raise TypeError(f"Expected memo.ctx to be a Context, but got {type(ctx).__name__}")
    return ctx


def paused(body: Mapping[str, Any]) -> bool:
    annotations = (body.get("metadata") or {}).get("annotations") or {}
    return bool(annotations.get(names.ANNOTATION_PAUSED) == "true")


def _raise_for(body: kopf.Body, ctx: Context, outcome: Outcome) -> None:
    if outcome.problem is None:
        return
    ctx.metrics.errors.labels(outcome.problem.reason).inc()
    kopf.warn(body, reason=outcome.problem.reason, message=outcome.problem.message)
    if outcome.retryable:
        raise kopf.TemporaryError(outcome.problem.message, delay=RETRY_SECONDS)
    # Only a spec change (or someone else's object going) helps; the timer re-checks anyway.
    raise kopf.PermanentError(outcome.problem.message)


def reconcile(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    if paused(body):
        logger.info(
            "%s is paused (%s); not reconciling", body["metadata"]["name"], names.ANNOTATION_PAUSED
        )
        return
    ctx = _ctx(memo)
    ctx.metrics.reconciles.labels("full").inc()
    try:
        outcome = ctx.reconciler.run(body, full=True)
    except ClusterError as exc:
        ctx.metrics.errors.labels("ApiError").inc()
        kopf.warn(body, reason="ApiError", message=str(exc))
        if exc.retryable:
            raise kopf.TemporaryError(str(exc), delay=RETRY_SECONDS) from exc
        # Rejected by the API (RBAC, admission): the timer retries at the resync interval.
        raise kopf.PermanentError(str(exc)) from exc
    _raise_for(body, ctx, outcome)


def child_event(body: kopf.Body, memo: kopf.Memo, type: str | None, **_: Any) -> None:
    owner_ref = next(
        (
            ref
            for ref in body.get("metadata", {}).get("ownerReferences") or []
            if ref.get("kind") == names.KIND
            and str(ref.get("apiVersion", "")).startswith(f"{names.GROUP}/")
        ),
        None,
    )
    namespace = body.get("metadata", {}).get("namespace")
    if owner_ref is None or not namespace:
        return
    ctx = _ctx(memo)
    ref = ChildRef(names.API_VERSION, names.KIND, namespace, owner_ref["name"])
    gamecluster = ctx.reconciler.cluster.get(ref)
    if gamecluster is None or gamecluster["metadata"].get("deletionTimestamp"):
        return  # the garbage collector takes the children away
    if owner_ref.get("uid") and gamecluster["metadata"].get("uid") != owner_ref.get("uid"):
        return  # a child of an earlier GameCluster of the same name
    if paused(gamecluster):
        return
    logger.debug("%s event on %s/%s", type, namespace, body.get("metadata", {}).get("name"))
    ctx.metrics.reconciles.labels("drift").inc()
    ctx.reconciler.run(gamecluster, full=False)


def _read_load(ctx: Context, spec: GameClusterSpec, owner: Owner) -> Reading:
    pods = ctx.reconciler.cluster.list_pods(
        owner.namespace, owner.selector_string(names.COMPONENT_RELAY)
    )
    urls = redis_urls(spec, owner)
    ready = load_mod.ready_pods(pods)
    # Per GameCluster, read every tick: a rotated password is used at the next one.
    auth = redis_auth.operator_auth(ctx.reconciler.cluster, spec, owner)
    return ctx.load.read(urls[0] if urls else None, ready, ctx.reconciler.clock(), auth)


def _set_deletion_costs(ctx: Context, owner: Owner, reading: Reading) -> None:
    """Before a scale-down: cost = connections, so the ReplicaSet removes the emptiest pods.

    (Pods that are not ready go first anyway: the ReplicaSet ranks them below ready ones.)
    """
    for pod, connections in reading.per_pod.items():
        try:
            ctx.reconciler.cluster.annotate_pod(
                owner.namespace, pod, {names.ANNOTATION_DELETION_COST: str(connections)}
            )
        except ClusterError as exc:  # the pod may be gone; the ReplicaSet still picks one
            logger.info("pod-deletion-cost on %s/%s failed: %s", owner.namespace, pod, exc)


def tick(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    ctx = _ctx(memo)
    # Re-read: the timer's body may predate an edit the update handler already applied.
    gc_ref = ChildRef(
        names.API_VERSION, names.KIND, body["metadata"]["namespace"], body["metadata"]["name"]
    )
    fresh = ctx.reconciler.cluster.get(gc_ref)
    if fresh is None or fresh["metadata"].get("deletionTimestamp") or paused(fresh):
        return
    snapshot: dict[str, Any] = {
        "metadata": dict(fresh["metadata"]),
        "spec": dict(fresh.get("spec") or {}),
        "status": dict(fresh.get("status") or {}),
    }
    try:
        spec: GameClusterSpec | None = parse(snapshot["spec"])
    except InvalidSpec:
        spec = None
    reading = Reading(unknown="the spec is invalid")
    owner = Owner.from_meta(snapshot["metadata"])
    if spec is not None:
        reading = _read_load(ctx, spec, owner)
    if reading.total is None:
        ctx.metrics.load_unknown.inc()
    if spec is not None and spec.autoscaling.enabled and reading.total is not None:
        before = snapshot["status"].get("autoscaling") or {}
        after, decision = autoscaling.next_status(
            spec.autoscaling, snapshot["status"], reading.total, ctx.reconciler.clock()
        )
        current = after["currentReplicas"]
        if decision.replicas < current:
            _set_deletion_costs(ctx, owner, reading)
        if after != before:
            patch = {key: after.get(key) for key in {*before, *after}}  # None deletes a key
            ctx.reconciler.cluster.patch_status(owner.namespace, owner.name, {"autoscaling": patch})
            snapshot["status"]["autoscaling"] = after
        if decision.replicas != current:
            direction = "up" if decision.replicas > current else "down"
            ctx.metrics.scale_decisions.labels(direction).inc()
            # kopf.event, not kopf.info: posting.level (WARNING, see configure) filters info().
            kopf.event(
                body,
                type="Normal",
                reason="ScaledUp" if direction == "up" else "ScaledDown",
                message=f"relay pods {current} -> {decision.replicas}: {decision.message}",
            )
    ctx.metrics.reconciles.labels("drift").inc()
    outcome = ctx.reconciler.run(
        snapshot,
        full=False,
        connections=reading.total,
        load_unknown=reading.unknown,
    )
    if outcome.problem is not None:
        ctx.metrics.errors.labels(outcome.problem.reason).inc()
        logger.info("%s: %s", outcome.problem.reason, outcome.problem.message)


def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    # State in annotations under our group: the strict status schema would prune kopf's.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=names.GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=names.GROUP, key="last-handled-configuration"
    )
    # Events for problems only; a success Event per handler run is noise.
    settings.posting.level = logging.WARNING
    # Re-list now and then: a watch that silently stalls must not stall the operator.
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330


def build_registry(*, resync_seconds: float) -> kopf.OperatorRegistry:
    """All handlers of the operator in a fresh registry."""
    registry = kopf.OperatorRegistry()
    kopf.on.startup(registry=registry)(configure)
    gc = (names.GROUP, names.VERSION, names.PLURAL)
    for decorate in (kopf.on.resume, kopf.on.create, kopf.on.update):
        decorate(*gc, registry=registry, id="reconcile")(reconcile)
    kopf.timer(*gc, registry=registry, interval=resync_seconds, id="tick")(tick)
    ours = {names.LABEL_MANAGED_BY: names.MANAGED_BY}
    for group, version, plural in _WATCHED_CHILDREN:
        kopf.on.event(
            group=group,
            version=version,
            plural=plural,
            labels=ours,
            registry=registry,
            id=f"child-{plural}",
        )(child_event)
    return registry
