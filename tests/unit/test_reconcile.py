"""The reconciler's apply loop against an in-memory Cluster: failures and conflicts per child."""

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import pytest

from gamecluster.children import ChildRef, Manifest
from gamecluster.cluster import ClusterError
from gamecluster.reconcile import Reconciler

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

    def apply(self, manifest: Manifest) -> Manifest:
        ref = ChildRef.of(manifest)
        if ref.kind in self.refuse:
            raise self.refuse[ref.kind]
        self.applied.append(f"{ref.kind}/{ref.name}")
        self.objects[(ref.kind, ref.name)] = manifest
        return manifest

    def get(self, ref: ChildRef) -> Manifest | None:
        return self.objects.get((ref.kind, ref.name))

    def delete(self, ref: ChildRef) -> None:
        self.objects.pop((ref.kind, ref.name), None)

    def patch_status(self, namespace: str, name: str, status: Mapping[str, Any]) -> None:
        self.status.update(status)

    def list_pods(self, namespace: str, selector: str) -> list[Manifest]:
        return []

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
