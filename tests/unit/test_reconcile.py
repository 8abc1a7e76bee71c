"""The reconciler's apply loop against an in-memory Cluster: failures and conflicts per child."""

import base64
import logging
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from gamecluster import names
from gamecluster.children import ChildRef, Manifest, Owner
from gamecluster.cluster import ClusterError
from gamecluster.reconcile import Reconciler
from gamecluster.relay_admin import HttpRelayAdmin, RelayAdminError
from gamecluster.shards import MapReading
from relay import contract

pytestmark = pytest.mark.unit

NS = "games"
META = {"name": "arena", "namespace": NS, "uid": "uid-1", "generation": 4}


class MemoryCluster:
    """Stores applied objects; ``refuse`` maps a kind to the ClusterError its apply raises."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str], Manifest] = {}
        self.refuse: dict[str, ClusterError] = {}
        self.applied: list[str] = []
        self.status: dict[str, Any] = {}
        self.pods: list[Manifest] = []

    def apply(self, manifest: Manifest) -> Manifest:
        ref = ChildRef.of(manifest)
        if ref.kind in self.refuse:
            raise self.refuse[ref.kind]
        self.applied.append(f"{ref.kind}/{ref.name}")
        before = self.objects.get((ref.kind, ref.name))
        if before is not None and "status" in before:
            # As the API server: status survives an apply; a changed spec is a new generation.
            manifest = {**manifest, "status": before["status"]}
            manifest["metadata"] = {
                **manifest["metadata"],
                "generation": before["metadata"].get("generation", 1)
                + (before.get("spec") != manifest.get("spec")),
            }
        self.objects[(ref.kind, ref.name)] = manifest
        return manifest

    def get(self, ref: ChildRef) -> Manifest | None:
        return self.objects.get((ref.kind, ref.name))

    def delete(self, ref: ChildRef) -> None:
        self.objects.pop((ref.kind, ref.name), None)

    def patch_status(self, namespace: str, name: str, status: Mapping[str, Any]) -> None:
        self.status.update(status)

    def list_pods(self, namespace: str, selector: str) -> list[Manifest]:
        return self.pods

    def list_objects(
        self, api_version: str, kind: str, namespace: str, selector: str
    ) -> list[Manifest]:
        wanted = dict(pair.split("=") for pair in selector.split(","))
        return [
            obj
            for (found, _), obj in self.objects.items()
            if found == kind and wanted.items() <= obj["metadata"].get("labels", {}).items()
        ]

    def annotate_pod(self, namespace: str, name: str, annotations: Mapping[str, str]) -> None:
        pass


def run(cluster: MemoryCluster, spec: dict[str, Any]) -> Any:
    reconciler = Reconciler(
        cluster,
        relay_image="img",
        clock=lambda: datetime(2026, 1, 1, tzinfo=UTC),
        new_secret=lambda: "s" * 48,
    )
    return reconciler.run({"metadata": META, "spec": spec}, full=True)


def conditions(status: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in status["conditions"]}


def test_a_refused_statefulset_does_not_stop_the_deployment() -> None:
    cluster = MemoryCluster()
    cluster.refuse["StatefulSet"] = ClusterError(
        422,
        "StatefulSet.apps arena-redis is invalid: spec: Forbidden: updates to "
        "statefulset spec for fields other than ... are forbidden",
    )
    outcome = run(cluster, {"replicas": 5})
    assert "Deployment/arena-relay" in cluster.applied
    assert cluster.objects[("Deployment", "arena-relay")]["spec"]["replicas"] == 5
    assert {"Service/arena", "PodDisruptionBudget/arena-relay"} <= set(cluster.applied)
    assert outcome.problem is not None and not outcome.retryable
    stalled = conditions(cluster.status)["Stalled"]
    assert (stalled["status"], stalled["reason"]) == ("True", "ApplyFailed")
    assert stalled["message"].startswith(f"StatefulSet {NS}/arena-redis: 422: ")
    assert "Forbidden" in stalled["message"]
    assert cluster.status["phase"] == "Degraded"
    assert {c["observedGeneration"] for c in cluster.status["conditions"]} == {4}


def test_a_retryable_failure_is_reconciling_and_retried() -> None:
    cluster = MemoryCluster()
    cluster.refuse["Service"] = ClusterError(409, "conflict")
    outcome = run(cluster, {})
    assert outcome.retryable
    conds = conditions(cluster.status)
    assert conds["Stalled"]["status"] == "False"
    assert (conds["Reconciling"]["status"], conds["Reconciling"]["reason"]) == (
        "True",
        "ApplyFailed",
    )


def test_an_object_not_owned_by_the_gamecluster_is_left_alone() -> None:
    cluster = MemoryCluster()
    theirs = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "arena", "namespace": NS},
        "spec": {"selector": {"app": "web"}},
    }
    cluster.objects[("Service", "arena")] = theirs
    # The generated Secret's name is taken too: its value must never be read.
    cluster.objects[("Secret", "arena-jwt")] = {
        "metadata": {"name": "arena-jwt", "namespace": NS},
        "data": {"secret": "dGhlaXJz"},
    }
    outcome = run(cluster, {})
    assert "Service/arena" not in cluster.applied
    assert "Secret/arena-jwt" not in cluster.applied
    assert cluster.objects[("Service", "arena")] is theirs
    assert "Deployment/arena-relay" in cluster.applied
    assert outcome.problem is not None and outcome.problem.reason == "NameConflict"
    assert "Secret games/arena-jwt exists and is not owned" in outcome.problem.message
    assert conditions(cluster.status)["Stalled"]["reason"] == "NameConflict"


def test_owned_children_are_reapplied() -> None:
    cluster = MemoryCluster()
    run(cluster, {})
    cluster.applied.clear()
    outcome = run(cluster, {"replicas": 3})
    assert outcome.problem is None
    assert "Service/arena" in cluster.applied
    assert conditions(cluster.status)["Stalled"]["status"] == "False"


def test_an_operator_upgrade_rolls_one_gamecluster_at_a_time() -> None:
    cluster = MemoryCluster()
    clock = [datetime(2026, 1, 1, tzinfo=UTC)]
    old = Reconciler(cluster, relay_image="img:1", clock=lambda: clock[0], new_secret=lambda: "s")
    metas = [{**META, "name": name, "uid": name} for name in ("a", "b")]
    statuses: dict[str, dict[str, Any]] = {}
    for meta in metas:
        old.run({"metadata": meta, "spec": {}}, full=True)
        statuses[meta["name"]] = dict(cluster.status)
        assert cluster.status["relayImage"] == "img:1"

    def image(name: str) -> str:
        deploy = cluster.objects[("Deployment", f"{name}-relay")]
        return deploy["spec"]["template"]["spec"]["containers"][0]["image"]  # type: ignore[no-any-return]

    new = Reconciler(cluster, relay_image="img:2", clock=lambda: clock[0], new_secret=lambda: "s")
    for meta in metas:
        new.run({"metadata": meta, "spec": {}, "status": statuses[meta["name"]]}, full=True)
        statuses[meta["name"]] = dict(cluster.status)
    assert (image("a"), image("b")) == ("img:2", "img:1")  # b waits for a's rollout
    # a's Deployment reports its rollout done: the slot frees, b moves on its next pass.
    cluster.objects[("Deployment", "a-relay")]["status"] = {
        "observedGeneration": 0,
        "replicas": 2,
        "readyReplicas": 2,
        "updatedReplicas": 2,
        "availableReplicas": 2,
    }
    cluster.objects[("StatefulSet", "a-redis")]["status"] = {"readyReplicas": 1}
    new.run({"metadata": metas[0], "spec": {}, "status": statuses["a"]}, full=False)
    new.run({"metadata": metas[1], "spec": {}, "status": statuses["b"]}, full=True)
    assert image("b") == "img:2"
    # An explicit spec.image is the user's choice and is applied at once.
    new.run({"metadata": metas[1], "spec": {"image": "mine:7"}, "status": statuses["b"]}, full=True)
    assert image("b") == "mine:7"


class FakeRelayAdmin:
    """The relays' shard map as a server API answers about it: a switch starts in ``prepare``
    and ends when the test says (``finish``)."""

    def __init__(self, shards: Sequence[str]) -> None:
        self.map = MapReading(version=1, shards=tuple(shards), phase="stable")
        self.calls: list[tuple[str, tuple[str, ...]]] = []
        self.keys: set[str] = set()
        self.next: tuple[str, ...] = ()
        self.down: RelayAdminError | None = None
        self.lose_answer = False
        """The switch starts but its answer is lost (the client's timeout)."""

    def shards(self, owner: Owner, api_key: str) -> MapReading:
        self.keys.add(api_key)
        self.calls.append(("GET", ()))
        if self.down is not None:
            raise self.down
        return self.map

    def switch(
        self, owner: Owner, api_key: str, shards: Sequence[str], timeout: float
    ) -> MapReading:
        self.keys.add(api_key)
        self.calls.append(("POST", tuple(shards)))
        if self.down is not None:
            raise self.down
        if tuple(shards) != self.map.shards:
            self.next = tuple(shards)
            self.map = MapReading(version=self.map.version, shards=self.map.shards, phase="prepare")
        if self.lose_answer:
            raise RelayAdminError("POST http://arena-admin.games.svc:9090/...: ReadTimeout")
        return self.map

    def finish(self, *, abort: str | None = None) -> None:
        if abort is not None:
            self.map = MapReading(self.map.version, self.map.shards, "stable", last=abort)
        else:
            self.map = MapReading(self.map.version + 1, self.next, "stable")


def roll_out(cluster: MemoryCluster) -> None:
    """The Deployment controller's part: every relay pod runs the latest template."""
    deploy = cluster.objects[("Deployment", "arena-relay")]
    replicas = deploy["spec"]["replicas"]
    generation = deploy["metadata"].setdefault("generation", 1)
    deploy["status"] = {
        "observedGeneration": generation,
        "replicas": replicas,
        "updatedReplicas": replicas,
        "availableReplicas": replicas,
        "readyReplicas": replicas,
    }


ANNOTATION = names.ANNOTATION_CONFIG_HASH


def relay_config_hash(cluster: MemoryCluster) -> str:
    template = cluster.objects[("Deployment", "arena-relay")]["spec"]["template"]
    return str(template["metadata"]["annotations"][ANNOTATION])


def relay_shard_count(cluster: MemoryCluster) -> int:
    urls = cluster.objects[("ConfigMap", "arena-relay")]["data"][contract.ENV_REDIS_URLS]
    return len(urls.split(","))


class ShardRun:
    """Passes of one operator (``restart`` makes a new one) over one GameCluster."""

    def __init__(self, cluster: MemoryCluster, admin: FakeRelayAdmin) -> None:
        self.cluster, self.admin = cluster, admin
        self.now = datetime(2026, 1, 1, tzinfo=UTC)
        """The operator's clock (tests move it on)."""
        self.restart()

    def restart(self) -> None:
        self.reconciler = Reconciler(
            self.cluster,
            relay_image="img",
            clock=lambda: self.now,
            new_secret=lambda: "s" * 48,
            relay_admin=self.admin,
        )

    def __call__(self, spec: dict[str, Any], *, full: bool = False) -> dict[str, Any]:
        body = {"metadata": META, "spec": spec, "status": dict(self.cluster.status)}
        self.reconciler.run(body, full=full)
        return dict(self.cluster.status["shards"])


def names(count: int) -> list[str]:
    return [f"arena-redis-{index}.arena-redis.games.svc:6379" for index in range(count)]


def test_growing_switches_the_map_after_relays_run_the_union(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    cluster, admin = MemoryCluster(), FakeRelayAdmin(names(1))
    passes = ShardRun(cluster, admin)
    assert passes({"redis": {"shards": 1}}, full=True)["phase"] == "Stable"
    roll_out(cluster)

    shards = passes({"redis": {"shards": 2}}, full=True)
    assert (shards["phase"], shards["active"], shards["target"]) == ("Rolling", 1, 2)
    assert cluster.objects[("StatefulSet", "arena-redis")]["spec"]["replicas"] == 2
    assert relay_shard_count(cluster) == 2
    assert admin.calls == []  # the relays are still rolling: none may lack the new shard
    reconciling = conditions(cluster.status)["Reconciling"]
    assert reconciling["status"] == "True" and reconciling["reason"] == "ShardsRolling"

    roll_out(cluster)
    shards = passes({"redis": {"shards": 2}})
    assert shards["phase"] == "Switching"
    assert admin.calls == [("POST", tuple(names(2)))]

    # An operator restart mid-switch reads the map; it does not start another switch.
    passes.restart()
    assert passes({"redis": {"shards": 2}}, full=True)["phase"] == "Switching"
    assert admin.calls[-1] == ("GET", ())
    admin.finish()
    shards = passes({"redis": {"shards": 2}})
    assert (shards["phase"], shards["active"], shards["mapVersion"]) == ("Stable", 2, 2)
    assert conditions(cluster.status)["Reconciling"]["reason"] != "ShardsSwitching"
    # The key the operator used is the one in the Secret the relays read, and never logged.
    stored = cluster.objects[("Secret", "arena-api")]["data"]["apiKey"]
    assert admin.keys == {base64.b64decode(stored).decode()}
    assert all(key not in record.getMessage() for record in caplog.records for key in admin.keys)


def test_shrinking_keeps_redis_until_relays_left_the_removed_shards() -> None:
    cluster, admin = MemoryCluster(), FakeRelayAdmin(names(3))
    passes = ShardRun(cluster, admin)
    passes({"redis": {"shards": 3, "replicas": 1}}, full=True)
    admin.map = MapReading(1, ("shard-0", "shard-1", "shard-2"), "stable")
    roll_out(cluster)

    assert passes({"redis": {"shards": 1, "replicas": 1}}, full=True)["phase"] == "Switching"
    assert admin.calls == [("POST", ("shard-0",))]
    admin.finish()
    shards = passes({"redis": {"shards": 1, "replicas": 1}})
    assert (shards["phase"], shards["active"]) == ("Shrinking", 1)
    assert relay_shard_count(cluster) == 1
    sets = {name for kind, name in cluster.objects if kind == "StatefulSet"}
    assert sets == {"arena-rs0", "arena-rs1", "arena-rs2", "arena-sent"}

    roll_out(cluster)
    assert passes({"redis": {"shards": 1, "replicas": 1}})["phase"] == "Stable"
    sets = {name for kind, name in cluster.objects if kind == "StatefulSet"}
    assert sets == {"arena-rs0", "arena-sent"}


def shrink_switched(cluster: MemoryCluster, admin: FakeRelayAdmin) -> ShardRun:
    """3 -> 1 shards up to the switch's end: the map is 1 shard, the relays still run 3."""
    passes = ShardRun(cluster, admin)
    passes({"redis": {"shards": 3}}, full=True)
    roll_out(cluster)
    assert passes({"redis": {"shards": 1}}, full=True)["phase"] == "Switching"
    admin.finish()
    return passes


@pytest.mark.parametrize("failing", ["Deployment", "ConfigMap"])
def test_redis_never_shrinks_while_relays_may_still_list_the_removed_shards(failing: str) -> None:
    # A failed apply of the relays' Deployment (or of the ConfigMap their pods read the
    # URLs from) must not count the old, fully rolled-out Deployment as "rolled off":
    # relays listing 3 shards with 2 gone are all unready (fewer than half are live).
    cluster, admin = MemoryCluster(), FakeRelayAdmin(names(3))
    passes = shrink_switched(cluster, admin)
    cluster.refuse[failing] = ClusterError(503, "apiserver unavailable")
    for _ in range(2):
        roll_out(cluster)  # whatever template the Deployment has is fully rolled out
        assert passes({"redis": {"shards": 1}})["phase"] == "Shrinking"
        assert cluster.objects[("StatefulSet", "arena-redis")]["spec"]["replicas"] == 3
    del cluster.refuse[failing]
    assert passes({"redis": {"shards": 1}})["phase"] == "Shrinking"
    assert relay_shard_count(cluster) == 1  # the relays roll only now, onto 1 shard
    roll_out(cluster)
    assert passes({"redis": {"shards": 1}})["phase"] == "Stable"
    assert cluster.objects[("StatefulSet", "arena-redis")]["spec"]["replicas"] == 1


def test_no_switch_while_an_old_relay_pod_still_drains() -> None:
    cluster, admin = MemoryCluster(), FakeRelayAdmin(names(1))
    passes = ShardRun(cluster, admin)
    passes({"redis": {"shards": 1}}, full=True)
    roll_out(cluster)
    old_hash = relay_config_hash(cluster)
    passes({"redis": {"shards": 2}}, full=True)
    roll_out(cluster)  # the Deployment counts the new pods only
    # One pod of the 1-shard config is still in its drain window: a live relay.
    pod = {"metadata": {"annotations": {ANNOTATION: old_hash}, "deletionTimestamp": "now"}}
    cluster.pods = [pod]
    assert passes({"redis": {"shards": 2}})["phase"] == "Rolling"
    assert admin.calls == []
    cluster.pods = [{"metadata": {"annotations": {ANNOTATION: relay_config_hash(cluster)}}}]
    assert passes({"redis": {"shards": 2}})["phase"] == "Switching"


def test_an_aborted_or_unasked_switch_is_reported_and_asked_again() -> None:
    cluster, admin = MemoryCluster(), FakeRelayAdmin(names(1))
    passes = ShardRun(cluster, admin)
    passes({"redis": {"shards": 1}}, full=True)
    passes({"redis": {"shards": 2}}, full=True)
    roll_out(cluster)

    admin.down = RelayAdminError("POST http://arena-admin...: HTTP 401: bad key", 401)
    shards = passes({"redis": {"shards": 2}})
    assert shards["phase"] == "Rolling" and "cannot ask a relay" in shards["message"]
    admin.down = None
    assert passes({"redis": {"shards": 2}})["phase"] == "Switching"
    admin.finish(abort="aborted: relay arena-relay-x did not ack prepare")
    shards = passes({"redis": {"shards": 2}})
    assert shards["phase"] == "Rolling" and "did not ack prepare" in shards["message"]
    assert cluster.objects[("StatefulSet", "arena-redis")]["spec"]["replicas"] == 2
    # The refused request (nothing started) was no attempt; the aborted switch was.
    assert (shards["attempts"], shards["retryAfter"]) == (1, "2026-01-01T00:00:10Z")
    reconciling = conditions(cluster.status)["Reconciling"]
    assert reconciling["reason"] == "ShardSwitchRetrying"
    assert "next attempt at 2026-01-01T00:00:10Z" in reconciling["message"]
    # Not asked again before then, by this operator or a restarted one.
    passes.now += timedelta(seconds=9)
    assert passes({"redis": {"shards": 2}})["phase"] == "Rolling"
    passes.restart()
    assert passes({"redis": {"shards": 2}}, full=True)["phase"] == "Rolling"
    assert [call for call, _ in admin.calls] == ["POST", "POST", "GET"]
    passes.now += timedelta(seconds=1)
    assert passes({"redis": {"shards": 2}})["phase"] == "Switching"
    assert [call for call, _ in admin.calls] == ["POST", "POST", "GET", "POST"]
    # Aborted again: twice the wait.
    admin.finish(abort="aborted: relay arena-relay-x did not ack prepare")
    shards = passes({"redis": {"shards": 2}})
    assert (shards["attempts"], shards["retryAfter"]) == (2, "2026-01-01T00:00:30Z")
    passes.now += timedelta(seconds=20)
    assert passes({"redis": {"shards": 2}})["phase"] == "Switching"
    admin.finish()
    shards = passes({"redis": {"shards": 2}})
    assert (shards["phase"], shards["attempts"], shards["retryAfter"]) == ("Stable", 0, "")


def test_a_pass_handed_an_older_body_acts_on_the_stored_status() -> None:
    """Passes queue on the reconciler's lock with the body they were handed: one from
    before the switch was asked must not ask again (a second switch, past any backoff)."""
    cluster, admin = MemoryCluster(), FakeRelayAdmin(names(1))
    passes = ShardRun(cluster, admin)
    passes({"redis": {"shards": 1}}, full=True)
    passes({"redis": {"shards": 2}}, full=True)
    roll_out(cluster)
    stale = {"metadata": META, "spec": {"redis": {"shards": 2}}, "status": dict(cluster.status)}
    assert stale["status"]["shards"]["phase"] == "Rolling"
    # The API server's copy: its status is the one the passes write.
    cluster.objects[("GameCluster", "arena")] = {**stale, "status": cluster.status}
    assert passes({"redis": {"shards": 2}})["phase"] == "Switching"
    passes.reconciler.run(stale, full=True)
    assert cluster.status["shards"]["phase"] == "Switching"
    assert [call for call, _ in admin.calls] == ["POST", "GET"]


def test_a_switch_whose_answer_was_lost_is_read_before_anything_shrinks() -> None:
    cluster, admin = MemoryCluster(), FakeRelayAdmin(names(1))
    passes = ShardRun(cluster, admin)
    passes({"redis": {"shards": 1}}, full=True)
    passes({"redis": {"shards": 2}}, full=True)
    roll_out(cluster)
    admin.lose_answer = True  # the relays switch to 2 shards; the operator's POST timed out
    assert passes({"redis": {"shards": 2}})["phase"] == "Switching"
    # Going back to 1 shard now must not drop shard 1: the map being switched to names it.
    shards = passes({"redis": {"shards": 1}}, full=True)
    assert shards["phase"] == "Switching" and admin.calls[-1] == ("GET", ())
    assert cluster.objects[("StatefulSet", "arena-redis")]["spec"]["replicas"] == 2
    assert relay_shard_count(cluster) == 2
    admin.finish()
    assert passes({"redis": {"shards": 1}})["active"] == 2  # then back, by a switch


def test_a_request_that_started_nothing_is_asked_again_after_a_read() -> None:
    cluster, admin = MemoryCluster(), FakeRelayAdmin(names(1))
    passes = ShardRun(cluster, admin)
    passes({"redis": {"shards": 1}}, full=True)
    passes({"redis": {"shards": 2}}, full=True)
    roll_out(cluster)
    admin.down = RelayAdminError("POST http://arena-admin.games.svc:9090/...: ReadTimeout")
    assert passes({"redis": {"shards": 2}})["phase"] == "Switching"
    admin.down = None
    shards = passes({"redis": {"shards": 2}})  # the map is the old one, stable
    assert shards["phase"] == "Rolling" and admin.calls[-1] == ("GET", ())
    # It may have started and aborted (the relays' prepare phase refused the moving
    # rooms): counted as an attempt, so it waits as one.
    assert shards["attempts"] == 1
    passes.now += timedelta(seconds=10)
    assert passes({"redis": {"shards": 2}})["phase"] == "Switching"
    assert admin.calls[-1] == ("POST", tuple(names(2)))


def test_a_switch_request_that_never_left_goes_back_to_rolling_at_once() -> None:
    """No connection (no relay pod yet, a name that does not resolve): nothing can have
    started, so a spec edit back to the old count needs no switch (kwok's pods in the e2e
    tier run no process: this is what they answer)."""
    cluster, admin = MemoryCluster(), FakeRelayAdmin(names(1))
    passes = ShardRun(cluster, admin)
    passes({"redis": {"shards": 1}}, full=True)
    passes({"redis": {"shards": 2}}, full=True)
    roll_out(cluster)
    admin.down = RelayAdminError("POST http://arena-admin...: ConnectError", sent=False)
    assert passes({"redis": {"shards": 2}})["phase"] == "Rolling"
    assert passes({"redis": {"shards": 1}})["phase"] == "Stable"


def test_a_refused_connection_is_a_request_that_never_left() -> None:
    admin = HttpRelayAdmin(base_url=lambda owner: "http://127.0.0.1:1/api/v1")
    owner = Owner.from_meta({"name": "arena", "namespace": "games", "uid": "u"})
    with pytest.raises(RelayAdminError) as error:
        admin.switch(owner, "k" * 40, ["a:6379"], 5.0)
    assert error.value.sent is False and error.value.refused
    assert "k" * 40 not in str(error.value)


def test_a_stalled_move_is_a_reconciling_reason() -> None:
    cluster, admin = MemoryCluster(), FakeRelayAdmin(names(1))
    passes = ShardRun(cluster, admin)
    passes({"redis": {"shards": 1}}, full=True)
    passes({"redis": {"shards": 2}}, full=True)
    roll_out(cluster)
    passes({"redis": {"shards": 2}})
    admin.map = MapReading(2, tuple(names(2)), "move", stalled=True)
    shards = passes({"redis": {"shards": 2}})
    assert shards["stalled"] is True
    assert conditions(cluster.status)["Reconciling"]["reason"] == "ShardSwitchStalled"


def test_external_redis_drops_the_managed_shard_sets() -> None:
    cluster = MemoryCluster()
    run(cluster, {"redis": {"shards": 3, "replicas": 1}})
    sets = {name for kind, name in cluster.objects if kind == "StatefulSet"}
    assert sets == {"arena-rs0", "arena-rs1", "arena-rs2", "arena-sent"}
    external = {"mode": "external", "external": {"urls": ["redis://r:6379"]}, "replicas": 1}
    run(cluster, {"redis": external})
    left = {(kind, name) for kind, name in cluster.objects}
    assert not {name for kind, name in left if kind == "StatefulSet"}
    assert not {name for _, name in left if name == "arena-sent"}
