"""The imperative shell around ``desired()``: read, apply, prune, report.

One pass for one GameCluster, in order:

1. Parse the spec and check what it refers to (the named JWT Secret). A spec that cannot be
   honoured ends the pass with a ``Problem``; nothing is applied, status says Degraded.
2. Gather the outside inputs of ``desired()``: the stored value of a generated JWT secret
   (or a fresh one), the autoscaler's last decision from status.
3. Apply every desired child with server-side apply: all of them (``full``, on create,
   update and resume), or only those missing or drifted from what is desired (on child
   events and timer ticks; this keeps a no-op from writing anything). Each child is read
   first: one that exists but is not owned by this GameCluster is left alone (reason
   ``NameConflict``), since a forced apply would take it over and the garbage collector
   would later delete it with the GameCluster. A child the API server refuses (a 422 on a
   field it cannot change, an admission webhook) does not stop the pass: the other children
   are still applied, so the Deployment keeps scaling, and the first failure is reported as
   ``Stalled`` with the child and the API error.
4. Delete owned children no spec produces any more (managed -> external, a named secret).
   Managed Redis: move a change of ``spec.redis.shards`` on by a stage (``gamecluster.shards``:
   the union of old and new shards first, the map switched by a relay once the relays run
   it, removed shards last), asking the relays' server API when the stage needs it; when the
   stage changes what Redis or the relays run, its children are applied in the same pass.
5. Compute status from the children and patch it when it changed.

Passes for the same GameCluster are serialised by a per-object lock, since kopf may run a
handler, a timer and a child event for it in different worker threads at once; each pass
reads the GameCluster again once it holds the lock (the one before may have moved status on).

Operator upgrades roll relay images one GameCluster at a time. A GameCluster without
``spec.image`` runs the operator's own image, recorded in ``status.relayImage``. When a new
operator brings a new image, only one such GameCluster at a time moves to it (it holds the
"upgrade slot" until its rollout is done, or ``UPGRADE_SLOT_SECONDS`` at most, so a stuck
one cannot block the rest); the others keep the recorded image and move in later passes.
A ``spec.image`` is the user's explicit choice and applies at once.
"""

import base64
import binascii
import dataclasses
import logging
import secrets
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from gamecluster import children as children_mod
from gamecluster import names, redis_auth
from gamecluster import shards as shards_mod
from gamecluster import status as status_mod
from gamecluster.children import ChildRef, Manifest, Owner
from gamecluster.cluster import Cluster, ClusterError
from gamecluster.desired import Inputs, desired, generates_jwt_secret, relay_replicas, shard_names
from gamecluster.manifests import relay as relay_manifests
from gamecluster.manifests.secrets import RedisPasswords
from gamecluster.relay_admin import HttpRelayAdmin, RelayAdmin, RelayAdminError
from gamecluster.shards import ShardState
from gamecluster.spec import JWT_PUBLIC_KEY_KEY, JWT_SECRET_KEY, GameClusterSpec, InvalidSpec, parse
from gamecluster.status import Observed, Problem
from relay import contract

logger = logging.getLogger(__name__)

UPGRADE_SLOT_SECONDS: Final = 600.0
"""Longest a GameCluster holds the upgrade slot (its rollout may be stuck)."""


@dataclass(frozen=True)
class Outcome:
    problem: Problem | None
    retryable: bool
    """For a problem: can it pass without a spec change (a Secret created later)?"""
    applied: tuple[ChildRef, ...]
    status: dict[str, Any]


def contains(actual: Any, wanted: Any) -> bool:
    """Whether ``actual`` holds every field of ``wanted`` (server defaults may add more)."""
    if isinstance(wanted, Mapping):
        return isinstance(actual, Mapping) and all(
            key in actual and contains(actual[key], value) for key, value in wanted.items()
        )
    if isinstance(wanted, list):
        return (
            isinstance(actual, list)
            and len(actual) == len(wanted)
            and all(contains(a, w) for a, w in zip(actual, wanted, strict=True))
        )
    return bool(actual == wanted or str(actual) == str(wanted))


def owned_by(obj: Mapping[str, Any], owner: Owner) -> bool:
    refs = obj.get("metadata", {}).get("ownerReferences") or []
    return any(ref.get("uid") == owner.uid and ref.get("name") == owner.name for ref in refs)


def _shard_work(state: ShardState | None) -> tuple[str, str] | None:
    """A shard change in flight, for the Reconciling condition."""
    if state is None or state.phase == "Stable":
        return None
    if state.stalled:
        reason = "ShardSwitchStalled"
    elif state.phase == "Rolling" and state.attempts:
        reason = "ShardSwitchRetrying"  # the message says when
    else:
        reason = f"Shards{state.phase}"
    return reason, f"{state.active} -> {state.target} shards: {state.message}"


class Reconciler:
    def __init__(
        self,
        cluster: Cluster,
        *,
        relay_image: str,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        new_secret: Callable[[], str] = lambda: secrets.token_urlsafe(48),
        operator_namespace: str | None = None,
        relay_admin: RelayAdmin | None = None,
    ) -> None:
        self.cluster = cluster
        self.relay_admin: RelayAdmin = relay_admin or HttpRelayAdmin()
        """How the shard map is read and switched (the relays' server API)."""
        self.operator_namespace = operator_namespace
        """Where the operator runs (GAMECLUSTER_NAMESPACE): admitted to Redis for load reads."""
        self.relay_image = relay_image
        self.clock = clock
        self._new_secret = new_secret
        self._locks: dict[tuple[str, str], threading.Lock] = {}
        self._locks_guard = threading.Lock()
        self._upgrade_slot: tuple[tuple[str, str], datetime] | None = None

    def _relay_image(self, spec: GameClusterSpec, owner: Owner, previous: Mapping[str, Any]) -> str:
        """spec.image, else the operator's image, moving one GameCluster at a time to a new one."""
        if spec.image:
            return spec.image
        recorded = previous.get("relayImage") or self._running_image(owner)
        if not recorded or recorded == self.relay_image:
            return self.relay_image
        key, now = (owner.namespace, owner.name), self.clock()
        with self._locks_guard:
            slot = self._upgrade_slot
            if (
                slot is None
                or slot[0] == key
                or (now - slot[1]).total_seconds() > UPGRADE_SLOT_SECONDS
            ):
                if slot is None or slot[0] != key:
                    self._upgrade_slot = (key, now)
                    logger.info("%s/%s: relay image %s -> %s", *key, recorded, self.relay_image)
                return self.relay_image
        return str(recorded)

    def _running_image(self, owner: Owner) -> str | None:
        """The relay Deployment's image (status written by an operator before relayImage)."""
        deploy = self.cluster.get(ChildRef("apps/v1", "Deployment", owner.namespace, owner.relay))
        containers = ((deploy or {}).get("spec") or {}).get("template", {}).get("spec", {})
        for container in containers.get("containers") or []:
            if container.get("name") == "relay" and isinstance(container.get("image"), str):
                return str(container["image"])
        return None

    def _release_slot(self, owner: Owner, status: Mapping[str, Any]) -> None:
        """The slot's holder has rolled out the new image: the next GameCluster may go."""
        reconciling: Mapping[str, Any] = next(
            (c for c in status.get("conditions", []) if c.get("type") == "Reconciling"), {}
        )
        with self._locks_guard:
            if (
                self._upgrade_slot is not None
                and self._upgrade_slot[0] == (owner.namespace, owner.name)
                and status.get("relayImage") == self.relay_image
                and reconciling.get("status") == "False"
            ):
                self._upgrade_slot = None

    def _lock(self, owner: Owner) -> threading.Lock:
        with self._locks_guard:
            return self._locks.setdefault((owner.namespace, owner.name), threading.Lock())

    def run(
        self,
        body: Mapping[str, Any],
        *,
        full: bool,
        connections: int | None = None,
        load_unknown: str | None = None,
    ) -> Outcome:
        """One pass (see the module docstring). Raises ClusterError when the API fails."""
        owner = Owner.from_meta(body["metadata"])
        with self._lock(owner):
            body = self._latest(owner, body)
            meta = body["metadata"]
            previous = body.get("status") or {}
            try:
                spec = parse(body.get("spec") or {})
            except InvalidSpec as exc:
                return self._report_problem(
                    body, None, Problem(exc.reason, exc.message), connections, load_unknown
                )
            problem = self._check_references(spec, owner) or redis_auth.check_external(
                self.cluster, spec, owner
            )
            redis_passwords: tuple[RedisPasswords, bool] | None = None
            if problem is None and spec.redis.mode == "managed":
                found = redis_auth.managed_passwords(
                    self.cluster, owner, self._new_secret, replicas=spec.redis.replicas > 0
                )
                if isinstance(found, Problem):
                    problem = found
                else:
                    redis_passwords = found
            tls = redis_auth.managed_tls(self.cluster, spec, owner) if problem is None else None
            if isinstance(tls, Problem):
                problem = tls
            if problem is not None:
                return self._report_problem(body, spec, problem, connections, load_unknown)

            autoscaled = (previous.get("autoscaling") or {}).get("desiredReplicas")
            image = self._relay_image(spec, owner, previous)
            api_key = self._generated_value(owner, owner.api_secret, relay_manifests.API_KEY_KEY)
            state: ShardState | None = None
            if spec.redis.mode == "managed":
                state = shards_mod.begin(
                    ShardState.from_status(previous, fallback=self._configured_shards(owner, spec)),
                    spec.redis.shards,
                )
            inputs = Inputs(
                relay_image=image,
                autoscaled_replicas=autoscaled if spec.autoscaling.enabled else None,
                jwt_secret=self._jwt_value(spec, owner),
                redis_passwords=redis_passwords[0] if redis_passwords else None,
                redis_secret_exists=redis_passwords[1] if redis_passwords else False,
                operator_namespace=self.operator_namespace,
                redis_tls=None if isinstance(tls, Problem) else tls,
                api_key=api_key,
                shards=state,
            )
            manifests = desired(spec, meta, inputs)
            live, applied, failures = self._apply(owner, manifests, full=full)
            self._prune(owner, {ChildRef.of(m) for m in manifests}, full=full)
            if state is not None:
                moved = self._advance_shards(spec, owner, state, live, inputs, api_key)
                if (moved.redis_shards, moved.relay_shards) != (
                    state.redis_shards,
                    state.relay_shards,
                ):
                    # The next stage's children now, not a resync later: relays roll onto
                    # the target list, or Redis shrinks (its shard sets are listed to prune).
                    inputs = dataclasses.replace(inputs, shards=moved)
                    manifests = desired(spec, meta, inputs)
                    live2, applied2, failures2 = self._apply(owner, manifests, full=False)
                    live.update(live2)
                    applied += applied2
                    failures += failures2
                    self._prune(owner, {ChildRef.of(m) for m in manifests}, full=True)
                state = moved

            first = failures[0] if failures else None
            # Stalled only for what a retry cannot fix; a conflict or a timeout is in flight.
            stuck = next((problem for problem, retryable in failures if not retryable), None)
            observed = Observed(
                deployment=live.get("Deployment"),
                statefulset=live.get("StatefulSet"),
                connections=connections,
                problem=stuck,
                load_unknown=load_unknown,
                retrying=first[0] if first and stuck is None else None,
                shard_sets=tuple(
                    live.get(f"StatefulSet/{owner.redis_shard(shard)}")
                    for shard in range(spec.redis.shards)
                ),
                sentinels=live.get(f"StatefulSet/{owner.sentinel}"),
                shard_work=_shard_work(state),
            )
            status = status_mod.compute(
                spec,
                meta,
                observed,
                previous=previous,
                autoscaled_replicas=inputs.autoscaled_replicas,
                now=self.clock(),
            )
            if not spec.image:
                status["relayImage"] = image
            if state is not None:
                status["shards"] = state.to_status()
            self._write_status(owner, previous, status)
            self._release_slot(owner, status)
            if first is None:
                return Outcome(None, False, tuple(applied), status)
            retryable = all(is_retryable for _, is_retryable in failures)
            return Outcome(first[0], retryable, tuple(applied), status)

    def _latest(self, owner: Owner, body: Mapping[str, Any]) -> Mapping[str, Any]:
        """The GameCluster as stored now, else ``body``.

        Passes queue on the lock with the body they were handed (a watch event, a read
        before the wait), and the pass before may have written status since: acting on the
        older status would ask the relays for a switch again (a second one, past an
        aborted switch's backoff), and an older spec would undo a stage of a shard change.
        """
        current = self.cluster.get(
            ChildRef(names.API_VERSION, names.KIND, owner.namespace, owner.name)
        )
        if current is None or (current.get("metadata") or {}).get("uid") != owner.uid:
            return body  # deleted meanwhile (the garbage collector takes the children)
        return current

    def _check_references(self, spec: GameClusterSpec, owner: Owner) -> Problem | None:
        """A named Secret must exist and hold the key the relay will read."""
        if not spec.auth.secret_name:
            return None
        key = JWT_PUBLIC_KEY_KEY if spec.auth.algorithm == "RS256" else JWT_SECRET_KEY
        ref = ChildRef("v1", "Secret", owner.namespace, spec.auth.secret_name)
        secret = self.cluster.get(ref)
        if secret is None:
            return Problem("SecretNotFound", f"Secret {ref.name} (spec.auth.secretName) not found")
        if key not in (secret.get("data") or {}) and key not in (secret.get("stringData") or {}):
            return Problem("SecretKeyMissing", f"Secret {ref.name} has no key {key!r}")
        return None

    def _configured_shards(self, owner: Owner, spec: GameClusterSpec) -> int:
        """No recorded shard state: the shards the relays were configured with (their first
        map), else spec.redis.shards (a new GameCluster)."""
        configmap = self.cluster.get(ChildRef("v1", "ConfigMap", owner.namespace, owner.relay))
        urls = ((configmap or {}).get("data") or {}).get(contract.ENV_REDIS_URLS)
        if configmap is None or not owned_by(configmap, owner) or not urls:
            return spec.redis.shards
        return len([url for url in urls.split(",") if url.strip()])

    def _advance_shards(
        self,
        spec: GameClusterSpec,
        owner: Owner,
        state: ShardState,
        live: Mapping[str, Manifest],
        inputs: Inputs,
        api_key: str,
    ) -> ShardState:
        """The shard change's next stage (gamecluster.shards), asking a relay when it is
        switching. A relay that cannot be asked leaves the stage as it was, with why."""
        replicas = relay_replicas(spec, inputs.autoscaled_replicas)
        # Only children applied (or found as desired) in this pass are keyed by name: a
        # failed apply leaves the old Deployment, whose finished rollout is of the old list.
        applied = f"ConfigMap/{owner.relay}" in live
        deployment = live.get(f"Deployment/{owner.relay}") if applied else None
        complete = shards_mod.rollout_complete(deployment, replicas, ())
        if complete and state.phase in ("Rolling", "Shrinking"):
            # The pods only when the next stage depends on them (a list per pass otherwise).
            try:
                pods = self.cluster.list_pods(
                    owner.namespace, owner.selector_string(names.COMPONENT_RELAY)
                )
            except ClusterError as exc:
                logger.warning("%s/%s: relay pods: %s", owner.namespace, owner.name, exc)
                return dataclasses.replace(state, message=f"cannot list the relay pods: {exc}")
            complete = shards_mod.rollout_complete(deployment, replicas, pods)
        now = self.clock()
        state, action = shards_mod.after_rollout(state, complete, now=now)
        if state.phase != "Switching":
            return state
        target = shard_names(spec, owner, state.target)
        try:
            if action == "switch":
                logger.info(
                    "%s/%s: switching the shard map to %d shards (attempt %d)",
                    owner.namespace,
                    owner.name,
                    state.target,
                    state.attempts + 1,
                )
                reading = self.relay_admin.switch(
                    owner, api_key, target, shards_mod.SWITCH_TIMEOUT_SECONDS
                )
            else:
                reading = self.relay_admin.shards(owner, api_key)
        except RelayAdminError as exc:
            logger.warning("%s/%s: shard map: %s", owner.namespace, owner.name, exc)
            if action == "switch" and exc.refused:
                # Refused: nothing started (no room was refused either, so no backoff);
                # ask again at the next pass.
                return dataclasses.replace(
                    state, phase="Rolling", message=f"cannot ask a relay: {exc}", stalled=False
                )
            # No clear answer (a timeout, a 5xx, a switch already running): it may have
            # started. Stay Switching and read the map next pass, which goes back to
            # Rolling if the old map is stable; Rolling now would let a spec edit back to
            # the old count remove shards that the new map names.
            return dataclasses.replace(
                state, phase="Switching", message=f"cannot ask a relay: {exc}", stalled=False
            )
        moved = shards_mod.after_reading(
            state, reading, lambda count: shard_names(spec, owner, count), now=now
        )
        if (moved.phase, moved.stalled) != (state.phase, state.stalled):
            log = logger.warning if moved.stalled or moved.phase == "Rolling" else logger.info
            log("%s/%s: shards %s: %s", owner.namespace, owner.name, moved.phase, moved.message)
        return moved

    def _generated_value(self, owner: Owner, name: str, key: str) -> str:
        """A generated Secret's stored value (re-applying never rotates it), else a fresh one."""
        stored = self.cluster.get(ChildRef("v1", "Secret", owner.namespace, name))
        if stored is not None and not owned_by(stored, owner):
            stored = None  # someone else's Secret: never read it (the apply reports NameConflict)
        encoded = ((stored or {}).get("data") or {}).get(key)
        if encoded:
            try:
                return base64.b64decode(encoded, validate=True).decode()
            except (binascii.Error, UnicodeDecodeError):
                logger.warning("generated secret %s is unreadable; replacing it", name)
        return self._new_secret()

    def _jwt_value(self, spec: GameClusterSpec, owner: Owner) -> str | None:
        """The generated JWT secret's stored value, so re-applying never rotates it."""
        if not generates_jwt_secret(spec):
            return None
        return self._generated_value(owner, owner.jwt_secret, JWT_SECRET_KEY)

    def _apply(
        self, owner: Owner, manifests: list[Manifest], *, full: bool
    ) -> tuple[dict[str, Manifest], list[ChildRef], list[tuple[Problem, bool]]]:
        """Apply what is missing or drifted; returns live objects, applied refs, failures.

        Failures are (problem, retryable) per child; the pass goes on past each one.
        """
        live: dict[str, Manifest] = {}
        applied: list[ChildRef] = []
        failures: list[tuple[Problem, bool]] = []
        config = ChildRef("v1", "ConfigMap", owner.namespace, owner.relay)
        config_failed = False
        for manifest in manifests:
            ref = ChildRef.of(manifest)
            where = f"{ref.kind} {ref.namespace}/{ref.name}"
            current = None
            try:
                current = self.cluster.get(ref)
                if config_failed and ref.kind == "Deployment" and current is not None:
                    # Its template's config hash would roll pods onto the ConfigMap as it
                    # still is, and call that the new config (a shard change would then
                    # shrink Redis under relays that still list the removed shards).
                    logger.info("%s left as it is: its ConfigMap was not applied", where)
                    live.setdefault(ref.kind, current)
                    continue
                if current is not None and not owned_by(current, owner):
                    failures.append(
                        (
                            Problem(
                                "NameConflict",
                                f"{where} exists and is not owned by this GameCluster; "
                                "left alone (rename or delete it)",
                            ),
                            False,
                        )
                    )
                    continue
                if not full and current is not None and contains(current, manifest):
                    live.setdefault(ref.kind, current)
                    live[f"{ref.kind}/{ref.name}"] = current
                    continue
                if not full:
                    logger.info("%s drifted or missing; re-applying", where)
                stored = self.cluster.apply(manifest)
                live.setdefault(ref.kind, stored)
                live[f"{ref.kind}/{ref.name}"] = stored
                applied.append(ref)
            except ClusterError as exc:
                logger.warning("apply of %s failed: %s", where, exc)
                failures.append((Problem("ApplyFailed", f"{where}: {exc}"), exc.retryable))
                config_failed = config_failed or ref == config
                if current is not None:
                    live.setdefault(ref.kind, current)
        return live, applied, failures

    def _prune(self, owner: Owner, wanted: set[ChildRef], *, full: bool) -> None:
        candidates = children_mod.every_possible_child(owner)
        if full:  # only a spec change (a full pass) can make a shard set unwanted
            listed = self.cluster.list_objects(
                "apps/v1",
                "StatefulSet",
                owner.namespace,
                owner.selector_string(names.COMPONENT_REDIS),
            )
            candidates += [
                ChildRef("apps/v1", "StatefulSet", owner.namespace, item["metadata"]["name"])
                for item in listed
                if children_mod.is_shard_set(owner, item["metadata"]["name"])
            ]
        for ref in candidates:
            if ref in wanted:
                continue
            obj = self.cluster.get(ref)
            if obj is not None and owned_by(obj, owner):
                logger.info(
                    "deleting %s %s/%s: no longer desired", ref.kind, ref.namespace, ref.name
                )
                self.cluster.delete(ref)

    def _report_problem(
        self,
        body: Mapping[str, Any],
        spec: GameClusterSpec | None,
        problem: Problem,
        connections: int | None,
        load_unknown: str | None = None,
    ) -> Outcome:
        meta = body["metadata"]
        owner = Owner.from_meta(meta)
        previous = body.get("status") or {}
        deployment = self.cluster.get(
            ChildRef("apps/v1", "Deployment", owner.namespace, owner.relay)
        )
        statefulset = self.cluster.get(
            ChildRef("apps/v1", "StatefulSet", owner.namespace, owner.redis)
        )
        shard_sets: tuple[Manifest | None, ...] = ()
        sentinels = None
        if spec is not None and spec.redis.mode == "managed" and spec.redis.replicas > 0:
            shard_sets = tuple(
                self.cluster.get(
                    ChildRef("apps/v1", "StatefulSet", owner.namespace, owner.redis_shard(shard))
                )
                for shard in range(spec.redis.shards)
            )
            sentinels = self.cluster.get(
                ChildRef("apps/v1", "StatefulSet", owner.namespace, owner.sentinel)
            )
        status = status_mod.compute(
            spec or GameClusterSpec(),
            meta,
            Observed(
                deployment,
                statefulset,
                connections,
                problem,
                load_unknown,
                shard_sets=shard_sets,
                sentinels=sentinels,
            ),
            previous=previous,
            autoscaled_replicas=None,
            now=self.clock(),
        )
        self._write_status(owner, previous, status)
        retryable = {"SecretNotFound", "SecretKeyMissing", *redis_auth.RETRYABLE_REASONS}
        return Outcome(problem, problem.reason in retryable, (), status)

    def _write_status(
        self, owner: Owner, previous: Mapping[str, Any], status: dict[str, Any]
    ) -> None:
        if all(previous.get(key) == value for key, value in status.items()):
            return
        self.cluster.patch_status(owner.namespace, owner.name, status)
