"""What users do, for real (issue 7): `helm install` the chart, `kubectl apply` a GameCluster,
scale it, change its shards, have an invalid one refused, delete it, `helm uninstall`.

One release per module (the chart in namespace gc-system-*, the operator as a local process with
the chart's ServiceAccount, see release.py); every GameCluster test works in a namespace of its
own. Tests run in file order: the install is checked first and the uninstall comes last.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from .cluster import Cluster, E2EError
from .release import EXAMPLES, OPERATOR_COMPONENT, Release, installed_with_operator

pytestmark = pytest.mark.e2e

GC = "gameclusters.gamecluster.io"
CONFIG_HASH = "gamecluster.io/config-hash"
READY_TIMEOUT = 120.0
DEMO = EXAMPLES / "demo.yaml"


@pytest.fixture(scope="module")
def release(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Release]:
    with installed_with_operator(cluster, tmp_path_factory.mktemp("release")) as r:
        yield r


@pytest.fixture
def operator_up(release: Release) -> Release:
    """The release, with a check that its operator is still alive (a dead one explains all)."""
    assert release.operator is not None, "the operator was stopped by an earlier test"
    release.operator.process.check_alive()
    return release


# --------------------------------------------------------------------------- helpers


def kubectl_as(cluster: Cluster, kubeconfig: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """kubectl with another kubeconfig (the operator's token); the caller checks the result."""
    return subprocess.run(
        [cluster.kubectl_path, "--kubeconfig", str(kubeconfig), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def conditions(obj: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in obj.get("status", {}).get("conditions") or []}


def wait_gc_ready(
    cluster: Cluster, ns: str, name: str, release: Release, **expect: Any
) -> dict[str, Any]:
    """Poll until the GameCluster's status is Ready for its current generation, with the
    `expect`ed top-level status values; the error names what the status last was."""
    last: dict[str, Any] = {}

    def ready() -> dict[str, Any] | None:
        nonlocal last
        assert release.operator is not None
        release.operator.process.check_alive()
        gc: dict[str, Any] = cluster.get_json(GC, name, "-n", ns)
        last = gc.get("status") or {}
        ok = (
            last.get("phase") == "Ready"
            and last.get("observedGeneration") == gc["metadata"]["generation"]
            and conditions(gc).get("Ready", {}).get("status") == "True"
            and all(last.get(k) == v for k, v in expect.items())
        )
        return gc if ok else None

    try:
        return cluster.wait_for(f"GameCluster {ns}/{name} Ready", ready, timeout=READY_TIMEOUT)
    except E2EError as err:
        assert release.operator is not None
        raise E2EError(
            f"{err}\nlast status: {json.dumps(last, indent=1)}\n{release.operator.process.tail()}"
        ) from None


def table(text: str) -> tuple[list[str], list[dict[str, str]]]:
    """kubectl's table output: the header's names, and each row as name -> cell ("" if empty),
    cut at the columns' start offsets (cells may be empty, so splitting on spaces would not do)."""
    lines = text.rstrip("\n").split("\n")
    names = lines[0].split()
    starts = [
        lines[0].index(f"{n}") if i == 0 else lines[0].index(f"  {n}") + 2
        for i, n in enumerate(names)
    ]
    rows = []
    for line in lines[1:]:
        cells = [line[a:b].strip() for a, b in zip(starts, [*starts[1:], None], strict=True)]
        rows.append(dict(zip(names, cells, strict=True)))
    return names, rows


def apply_demo(cluster: Cluster, ns: str) -> None:
    out = cluster.kubectl("apply", "-f", str(DEMO), "-n", ns).stdout
    assert "gamecluster.gamecluster.io/demo created" in out


def children(cluster: Cluster, ns: str) -> dict[tuple[str, str], dict[str, Any]]:
    """(kind, name) -> object for what the operator makes (and the generated Secret)."""
    found = {}
    for kind in ("deployments", "statefulsets", "services", "configmaps", "poddisruptionbudgets"):
        for obj in cluster.get_json(kind, "-n", ns, "-l", "app.kubernetes.io/instance=demo")[
            "items"
        ]:
            found[(obj["kind"], obj["metadata"]["name"])] = obj
    secret = cluster.get_or_none("secret", "demo-jwt", "-n", ns)
    if secret is not None:
        found[("Secret", "demo-jwt")] = secret
    return found


DEMO_CHILDREN = {
    ("Deployment", "demo-relay"),
    ("Service", "demo"),
    ("Service", "demo-admin"),
    ("ConfigMap", "demo-relay"),
    ("PodDisruptionBudget", "demo-relay"),
    ("PodDisruptionBudget", "demo-redis"),
    ("StatefulSet", "demo-redis"),
    ("Service", "demo-redis"),
    ("Secret", "demo-jwt"),
}


# --------------------------------------------------------------------------- 1. helm install


def test_helm_install_creates_the_operator_and_its_rbac(cluster: Cluster, release: Release) -> None:
    installed = release.installed
    assert (installed["status"], installed["revision"], installed["chart_name"]) == (
        "deployed",
        1,
        "gamecluster",
    )
    assert installed["namespace"] == release.namespace
    assert "It watches every namespace" in installed["notes"]
    ns, sel = release.namespace, release.selector

    # The CRD from crds/, established; the templates' objects, labelled with the release.
    crd = cluster.get_json("crd", GC)
    assert any(
        c["type"] == "Established" and c["status"] == "True" for c in crd["status"]["conditions"]
    )
    [deployment] = cluster.get_json("deployments", "-n", ns, "-l", sel)["items"]
    # Two replicas, one leading through a Lease (docs/operator.md); helm waited for both.
    assert deployment["status"].get("availableReplicas") == 2
    [sa] = cluster.get_json("serviceaccounts", "-n", ns, "-l", sel)["items"]
    assert deployment["spec"]["template"]["spec"]["serviceAccountName"] == sa["metadata"]["name"]
    roles = {r["metadata"]["name"] for r in cluster.get_json("clusterroles", "-l", sel)["items"]}
    assert roles == {"gc-gamecluster", "gc-gamecluster-view", "gc-gamecluster-edit"}
    [binding] = cluster.get_json("clusterrolebindings", "-l", sel)["items"]
    assert binding["roleRef"]["name"] == "gc-gamecluster"
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": sa["metadata"]["name"], "namespace": ns}
    ]

    # The chart's operator pod is a kwok fake: bound to a fake node, no container runs, so the
    # local process is the only operator acting.
    pods = cluster.get_json("pods", "-n", ns, "-l", f"{sel},{OPERATOR_COMPONENT}")["items"]
    assert len(pods) == 2
    if cluster.local:  # (on a KUBECONFIG_E2E cluster the pods are real, if the image is there)
        for pod in pods:
            node = cluster.get_json("node", pod["spec"]["nodeName"])
            assert node["metadata"]["annotations"]["kwok.x-k8s.io/node"] == "fake"

    # The local operator runs with a token of that ServiceAccount, i.e. under the chart's RBAC.
    op = release.operator
    assert op is not None and op.healthy()
    who = json.loads(kubectl_as(cluster, op.kubeconfig, "auth", "whoami", "-o", "json").stdout)
    assert who["status"]["userInfo"]["username"] == (
        f"system:serviceaccount:{ns}:{sa['metadata']['name']}"
    )

    def can(*args: str) -> str:
        return kubectl_as(cluster, op.kubeconfig, "auth", "can-i", *args).stdout.strip()

    assert can("patch", "deployments.apps", "-n", "anywhere") == "yes"
    assert can("patch", f"{GC}/status", "-n", "anywhere") == "yes"
    assert can("list", "secrets", "-n", "anywhere") == "no"  # least privilege, as the chart says
    assert can("delete", GC, "-n", "anywhere") == "no"
    assert can("create", "pods", "-n", "anywhere") == "no"
    assert can("patch", "pods", "-n", "anywhere") == "yes"  # pod-deletion-cost
    assert can("update", "leases.coordination.k8s.io", "-n", ns) == "yes"  # leader election
    assert can("update", "leases.coordination.k8s.io", "-n", "anywhere") == "no"


# --------------------------------------------------------------------------- 2. kubectl apply


def test_apply_demo_makes_children_and_a_ready_status(
    cluster: Cluster, operator_up: Release, namespace: str
) -> None:
    apply_demo(cluster, namespace)
    gc = wait_gc_ready(cluster, namespace, "demo", operator_up, replicas=2, readyReplicas=2)
    uid = gc["metadata"]["uid"]

    made = children(cluster, namespace)
    assert set(made) == DEMO_CHILDREN
    for (kind, name), obj in made.items():
        owners = obj["metadata"].get("ownerReferences") or []
        assert [(o["kind"], o["name"], o["uid"]) for o in owners] == [
            ("GameCluster", "demo", uid)
        ], f"{kind}/{name}"
        full = cluster.get_json(kind.lower(), name, "-n", namespace, "--show-managed-fields")
        managers = {
            m["manager"] for m in full["metadata"]["managedFields"] if m["operation"] == "Apply"
        }
        assert managers == {"gamecluster-operator"}, (
            f"{kind}/{name}: server-side apply, one manager"
        )
    assert made[("Secret", "demo-jwt")]["data"]["secret"]  # the generated HS256 key
    sts = made[("StatefulSet", "demo-redis")]
    assert sts["status"].get("readyReplicas") == 1
    deploy = made[("Deployment", "demo-relay")]
    assert deploy["status"].get("readyReplicas") == 2

    # kwok made the pods Running and Ready: two relay pods, one Redis shard.
    pods = cluster.get_json("pods", "-n", namespace, "-l", "app.kubernetes.io/instance=demo")
    phases = sorted(
        (p["metadata"]["labels"]["app.kubernetes.io/component"], p["status"].get("phase"))
        for p in pods["items"]
    )
    assert phases == [("redis", "Running"), ("relay", "Running"), ("relay", "Running")]

    status = gc["status"]
    assert status["observedGeneration"] == gc["metadata"]["generation"] == 1
    assert status["redis"] == {"shards": 1, "readyShards": 1}
    assert status["selector"] == "app.kubernetes.io/instance=demo,app.kubernetes.io/component=relay"
    assert status["endpoint"] == f"ws://demo.{namespace}.svc:80/ws"
    conds = conditions(gc)
    assert {t: c["status"] for t, c in conds.items()} == {
        "Ready": "True",
        "Stalled": "False",
        "Reconciling": "False",
        "Available": "True",
        "Progressing": "False",
        "RedisReady": "True",
    }
    assert conds["Ready"]["reason"] == "Serving"
    assert conds["Progressing"]["reason"] == "RolloutComplete"
    assert all(c["observedGeneration"] == 1 for c in conds.values())

    # `kubectl wait` agrees, and `kubectl get gc` prints the printer columns.
    cluster.kubectl("wait", "gc/demo", "-n", namespace, "--for=condition=Ready", "--timeout=10s")
    header, rows = table(cluster.kubectl("get", "gc", "-n", namespace).stdout)
    assert header == [
        "NAME",
        "REPLICAS",
        "READY",
        "REDIS",
        "DESIRED",
        "CONNECTIONS",
        "PHASE",
        "AGE",
    ]
    [row] = rows
    # Connections come from the ready relay pods' load reports in Redis; kwok's pods run
    # nothing, so there are none to read: the count is unknown and the column stays empty.
    assert {k: v for k, v in row.items() if k != "AGE"} == {
        "NAME": "demo",
        "REPLICAS": "2",
        "READY": "2",
        "REDIS": "1",
        "DESIRED": "2",
        "CONNECTIONS": "",
        "PHASE": "Ready",
    }
    assert row["AGE"].endswith(("s", "m"))
    header, [row] = table(
        cluster.kubectl("get", "gc", "demo", "-n", namespace, "-o", "wide").stdout
    )
    assert header[-3:] == ["MODE", "ENDPOINT", "AGE"]
    assert (row["MODE"], row["ENDPOINT"]) == ("managed", f"ws://demo.{namespace}.svc:80/ws")


# --------------------------------------------------------------------------- 3. scale, shards


def test_kubectl_scale_reaches_the_deployment_and_the_status(
    cluster: Cluster, operator_up: Release, namespace: str
) -> None:
    apply_demo(cluster, namespace)
    wait_gc_ready(cluster, namespace, "demo", operator_up, replicas=2)

    out = cluster.kubectl("scale", "gc/demo", "--replicas=5", "-n", namespace).stdout
    assert "scaled" in out
    gc = wait_gc_ready(cluster, namespace, "demo", operator_up, replicas=5, readyReplicas=5)
    assert gc["spec"]["replicas"] == 5
    assert gc["metadata"]["generation"] == 2  # the scale subresource writes spec
    deploy = cluster.get_json("deployment", "demo-relay", "-n", namespace)
    assert deploy["spec"]["replicas"] == 5 and deploy["status"]["readyReplicas"] == 5
    scale = cluster.get_json(GC, "demo", "-n", namespace, "--subresource=scale")
    assert scale["kind"] == "Scale"
    assert scale["spec"]["replicas"] == 5 and scale["status"]["replicas"] == 5
    assert scale["status"]["selector"] == (
        "app.kubernetes.io/instance=demo,app.kubernetes.io/component=relay"
    )


def test_more_shards_run_the_union_and_roll_the_relays_before_any_switch(
    cluster: Cluster, operator_up: Release, namespace: str
) -> None:
    """kwok's relay pods run no process, so the switch itself (asked of a relay) cannot
    happen here: this proves the stage before it on real controllers (Redis and the relays
    on the union, the rollout complete, the change recorded in status and resumable), and
    that going back before a switch needs none. The switch: tests/operator (kmock) and
    tests/integration/test_operator_shard_switch.py (real relays)."""
    apply_demo(cluster, namespace)
    wait_gc_ready(cluster, namespace, "demo", operator_up)
    before = cluster.get_json("deployment", "demo-relay", "-n", namespace)
    hash_before = before["spec"]["template"]["metadata"]["annotations"][CONFIG_HASH]
    urls_before = cluster.get_json("configmap", "demo-relay", "-n", namespace)["data"][
        "RELAY_REDIS_URLS"
    ]
    assert urls_before == f"redis://demo-redis-0.demo-redis.{namespace}.svc:6379"

    cluster.kubectl(
        "patch", "gc", "demo", "-n", namespace, "--type", "merge",
        "-p", json.dumps({"spec": {"redis": {"shards": 2}}}),
    )  # fmt: skip

    def waiting_for_the_switch() -> dict[str, Any] | None:
        operator_up.operator.process.check_alive()  # type: ignore[union-attr]
        gc: dict[str, Any] = cluster.get_json(GC, "demo", "-n", namespace)
        status = gc.get("status") or {}
        shards = status.get("shards") or {}
        ok = (
            status.get("observedGeneration") == gc["metadata"]["generation"]
            and status.get("redis") == {"shards": 2, "readyShards": 2}
            and (shards.get("active"), shards.get("target")) == (1, 2)
            # The relays rolled: the operator asked for the switch and could not reach a
            # relay (no process behind kwok's pods), so it stays before the switch.
            and "cannot ask a relay" in shards.get("message", "")
        )
        return gc if ok else None

    gc = cluster.wait_for("the union running, the switch asked", waiting_for_the_switch, 90)
    assert gc["status"]["shards"]["phase"] in {"Rolling", "Switching"}
    # Serving throughout; the change is work in progress (kstatus InProgress).
    assert conditions(gc)["Ready"]["status"] == "True"
    assert conditions(gc)["Reconciling"]["status"] == "True"
    assert conditions(gc)["Reconciling"]["reason"] in {"ShardsRolling", "ShardsSwitching"}
    sts = cluster.get_json("statefulset", "demo-redis", "-n", namespace)
    assert sts["spec"]["replicas"] == 2 and sts["status"]["readyReplicas"] == 2
    config = cluster.get_json("configmap", "demo-relay", "-n", namespace)["data"]
    assert config["RELAY_REDIS_URLS"].split(",") == [
        f"redis://demo-redis-{i}.demo-redis.{namespace}.svc:6379" for i in (0, 1)
    ]
    after = cluster.get_json("deployment", "demo-relay", "-n", namespace)
    assert after["spec"]["template"]["metadata"]["annotations"][CONFIG_HASH] != hash_before
    env = {e["name"]: e for e in after["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["RELAY_API_KEYS"]["valueFrom"]["secretKeyRef"]["name"] == "demo-api"
    assert cluster.get_json("secret", "demo-api", "-n", namespace)["data"]["apiKey"]

    # Back to one shard before anything moved: no switch, the relays and Redis go back.
    cluster.kubectl(
        "patch", "gc", "demo", "-n", namespace, "--type", "merge",
        "-p", json.dumps({"spec": {"redis": {"shards": 1}}}),
    )  # fmt: skip
    gc = wait_gc_ready(
        cluster, namespace, "demo", operator_up, redis={"shards": 1, "readyShards": 1}
    )
    assert gc["status"]["shards"]["phase"] == "Stable"
    assert (gc["status"]["shards"]["active"], gc["status"]["shards"]["target"]) == (1, 1)
    config = cluster.get_json("configmap", "demo-relay", "-n", namespace)["data"]
    assert config["RELAY_REDIS_URLS"] == urls_before
    sts = cluster.get_json("statefulset", "demo-redis", "-n", namespace)
    assert sts["spec"]["replicas"] == 1


# --------------------------------------------------------------------------- 4. invalid


INVALID = {
    "min-above-max": (
        {"autoscaling": {"enabled": True, "minReplicas": 5, "maxReplicas": 2}},
        [
            "spec.autoscaling.minReplicas",
            "autoscaling.minReplicas must not exceed autoscaling.maxReplicas",
        ],
    ),
    "replicas-out-of-bounds": (
        {"replicas": 1001},
        ["spec.replicas", "should be less than or equal to 1000"],
    ),
    "external-without-urls": (
        {"redis": {"mode": "external"}},
        ["spec.redis.external", "redis.mode external needs redis.external.urls"],
    ),
    "external-sentinel-without-sentinels": (
        {"redis": {"mode": "external", "external": {"urls": ["sentinel://gc"]}}},
        ["spec.redis.external.sentinels", "sentinel:// URLs need redis.external.sentinels"],
    ),
}


@pytest.mark.parametrize("case", list(INVALID))
def test_invalid_gamecluster_is_refused_by_the_api_server(
    cluster: Cluster, operator_up: Release, namespace: str, case: str
) -> None:
    spec, messages = INVALID[case]
    manifest = {
        "apiVersion": "gamecluster.io/v1alpha1",
        "kind": "GameCluster",
        "metadata": {"name": "bad"},
        "spec": spec,
    }
    proc = cluster.kubectl(
        "apply", "-f", "-", "-n", namespace, input=yaml.safe_dump(manifest), check=False
    )
    assert proc.returncode == 1, proc
    assert 'The GameCluster "bad" is invalid' in proc.stderr
    for message in messages:
        assert message in proc.stderr, proc.stderr
    assert cluster.get_json(GC, "-n", namespace)["items"] == []


# --------------------------------------------------------------------------- 5. delete, uninstall


def test_deleting_the_gamecluster_garbage_collects_its_children(
    cluster: Cluster, operator_up: Release, namespace: str
) -> None:
    apply_demo(cluster, namespace)
    wait_gc_ready(cluster, namespace, "demo", operator_up)
    assert set(children(cluster, namespace)) == DEMO_CHILDREN

    out = cluster.kubectl("delete", "gc", "demo", "-n", namespace, "--wait=true").stdout
    assert 'gamecluster.gamecluster.io "demo" deleted' in out

    def all_gone() -> bool:
        pods = cluster.get_json("pods", "-n", namespace)["items"]
        sets = cluster.get_json("replicasets", "-n", namespace)["items"]
        return not children(cluster, namespace) and not pods and not sets

    cluster.wait_for("children, ReplicaSets and pods garbage-collected", all_gone, timeout=90)
    # And the operator did not put anything back.
    assert operator_up.operator is not None and operator_up.operator.healthy()
    assert not children(cluster, namespace)


def test_helm_uninstall_leaves_no_operator_resources(
    cluster: Cluster, release: Release, tmp_path: Path
) -> None:
    """Last in this module: removes the release the tests above shared."""
    ns, sel = release.namespace, release.selector
    manifest = release.helm.status(release.name)["manifest"]
    made = [doc for doc in yaml.safe_load_all(manifest) if doc]
    kinds = {doc["kind"] for doc in made}
    assert {"Deployment", "ServiceAccount", "ClusterRole", "ClusterRoleBinding"} <= kinds

    # The chart's pod stands in for this process: the operator goes with the release.
    assert release.operator is not None
    release.operator.process.stop()
    operator, release.operator = release.operator, None
    result = release.helm.uninstall(release.name, wait="watcher", timeout=120)
    assert result["release"]["name"] == release.name

    def leftovers() -> list[str]:
        left = []
        for doc in made:
            namespaced = ["-n", doc["metadata"].get("namespace", ns)]
            if doc["kind"] in ("ClusterRole", "ClusterRoleBinding"):
                namespaced = []
            kind = f"{doc['kind'].lower()}.{doc['apiVersion'].split('/')[0]}"
            if "/" not in doc["apiVersion"]:
                kind = doc["kind"].lower()
            if cluster.get_or_none(kind, doc["metadata"]["name"], *namespaced) is not None:
                left.append(f"{doc['kind']}/{doc['metadata']['name']}")
        for kind in ("pods", "replicasets", "secrets", "configmaps"):
            items = cluster.get_json(kind, "-n", ns, "-l", sel)["items"]
            left += [f"{kind}/{o['metadata']['name']}" for o in items]
        # Helm's own record of the release (a Secret sh.helm.release.v1.gc.v1).
        records = cluster.get_json("secrets", "-n", ns, "-l", f"owner=helm,name={release.name}")
        left += [f"secret/{o['metadata']['name']}" for o in records["items"]]
        return left

    cluster.wait_for("nothing left of the release", lambda: not leftovers(), timeout=90)
    assert release.helm.list(all_states=True) == []
    # Helm never deletes crds/: GameClusters stay readable, and the CRD is still served.
    assert cluster.get_or_none("crd", GC) is not None

    # The operator's token was bound to the ServiceAccount: it dies with it (the apiserver
    # looks the account up through an informer, so this may take a moment).
    def refused() -> subprocess.CompletedProcess[str] | None:
        who = kubectl_as(cluster, operator.kubeconfig, "auth", "whoami")
        return who if who.returncode != 0 else None

    who = cluster.wait_for("the operator's token refused", refused, timeout=30)
    assert "Unauthorized" in who.stderr, who.stderr
