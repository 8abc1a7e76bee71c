"""kopf handlers, registered into a registry built on demand (no import-time globals).

- GameCluster create/update/resume: a full reconcile pass. A spec that cannot be honoured
  gives status Degraded, a Warning Event, and ``kopf.TemporaryError`` (it may pass: a Secret
  created later) or ``kopf.PermanentError`` (only a spec change helps). Nothing crashes.
- Child events (Deployment, StatefulSet, Service, ConfigMap, PDB labelled as ours): a drift
  pass for the owner, so hand edits and deletions are reverted and child status flows into
  the GameCluster's status.
- A timer per GameCluster: read the load reports, let the autoscaler decide, then a drift
  pass (this also catches the generated Secret, which is not watched).

Handlers are sync: kopf runs them in worker threads, where the blocking API client is fine.
They return None, since kopf would store return values under status where the strict
schema prunes them; status is patched by the reconciler instead.
"""

import logging
from dataclasses import dataclass
from typing import Any

import kopf

from gamecluster import autoscaling, names, redis_auth
from gamecluster.children import ChildRef, Owner
from gamecluster.cluster import ClusterError
from gamecluster.desired import redis_urls
from gamecluster.load import LoadSource
from gamecluster.reconcile import Outcome, Reconciler
from gamecluster.spec import InvalidSpec, parse

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


def _ctx(memo: Any) -> Context:
    ctx = memo.ctx
    if not isinstance(ctx, Context):
        raise TypeError(f"Expected memo.ctx to be a Context, but got {type(ctx).__name__}")
    return ctx


def _raise_for(body: kopf.Body, outcome: Outcome) -> None:
    if outcome.problem is None:
        return
    kopf.warn(body, reason=outcome.problem.reason, message=outcome.problem.message)
    if outcome.retryable:
        raise kopf.TemporaryError(outcome.problem.message, delay=RETRY_SECONDS)
    raise kopf.PermanentError(outcome.problem.message)


def reconcile(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    ctx = _ctx(memo)
    try:
        outcome = ctx.reconciler.run(body, full=True)
    except ClusterError as exc:
        kopf.warn(body, reason="ApplyFailed", message=str(exc))
        if exc.retryable:
            raise kopf.TemporaryError(str(exc), delay=RETRY_SECONDS) from exc
        # Rejected by the API (RBAC, admission): the timer retries at the resync interval.
        raise kopf.PermanentError(str(exc)) from exc
    _raise_for(body, outcome)


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
    logger.debug("%s event on %s/%s", type, namespace, body.get("metadata", {}).get("name"))
    ctx.reconciler.run(gamecluster, full=False)


def tick(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    ctx = _ctx(memo)
    snapshot: dict[str, Any] = {
        "metadata": dict(body["metadata"]),
        "spec": dict(body.get("spec") or {}),
        "status": dict(body.get("status") or {}),
    }
    connections: int | None = None
    try:
        spec = parse(snapshot["spec"])
    except InvalidSpec:
        spec = None
    if spec is not None:
        owner = Owner.from_meta(snapshot["metadata"])
        auth = redis_auth.operator_auth(ctx.reconciler.cluster, spec, owner)
        connections = ctx.load.total_connections(redis_urls(spec, owner), auth)
    if spec is not None and spec.autoscaling.enabled and connections is not None:
        before = snapshot["status"].get("autoscaling") or {}
        after = autoscaling.next_status(
            spec.autoscaling, snapshot["status"], connections, ctx.reconciler.clock()
        )
        if after != before:
            patch = {key: after.get(key) for key in {*before, *after}}  # None deletes a key
            ctx.reconciler.cluster.patch_status(owner.namespace, owner.name, {"autoscaling": patch})
            snapshot["status"]["autoscaling"] = after
    outcome = ctx.reconciler.run(snapshot, full=False, connections=connections)
    if outcome.problem is not None:
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
