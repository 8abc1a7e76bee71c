"""Issue 13 on a real control plane: what a platform team relies on before adopting the operator.

Pod templates land on the Deployment; an immutable field is refused by CEL with a message; a
same-named Service is not taken over (Stalled NameConflict); `paused` stops reconciliation;
`kubectl wait --for=condition=Ready` returns promptly after an edit; kstatus says Current only
when the work is done; two operator replicas fail over through their Lease.

kstatus: its documented rules (sigs.k8s.io/cli-utils/pkg/kstatus README, "generic" custom
resources) are reimplemented in ``kstatus()`` below rather than built as a Go helper: InProgress
while status.observedGeneration lags metadata.generation or Reconciling is True, Failed while
Stalled is True, else Current.

One release per module, like test_gamecluster_lifecycle.py (the operator as a local process with
the chart's ServiceAccount, see release.py); every test works in a namespace of its own.
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from .cluster import Cluster
from .release import Release, installed_with_operator, start_operator

pytestmark = pytest.mark.e2e

GC = "gameclusters.gamecluster.io"
TIMEOUT = 120.0
PAUSED = "gamecluster.io/paused"


@pytest.fixture(scope="module")
def release(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Release]:
    with installed_with_operator(cluster, tmp_path_factory.mktemp("release")) as r:
        yield r


@pytest.fixture
def operator_up(release: Release) -> Release:
    assert release.operator is not None, "the operator was stopped by an earlier test"
    release.operator.process.check_alive()
    return release


def gamecluster(name: str, spec: dict[str, Any], **annotations: str) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if annotations:
        meta["annotations"] = annotations
    return {
        "apiVersion": "gamecluster.io/v1alpha1",
        "kind": "GameCluster",
        "metadata": meta,
        "spec": spec,
    }


def conditions(obj: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in (obj.get("status") or {}).get("conditions") or []}


def kstatus(obj: dict[str, Any]) -> str:
    """kstatus' generic rules for a custom resource (see the module docstring)."""
    status = obj.get("status") or {}
    if status.get("observedGeneration") != obj["metadata"].get("generation"):
        return "InProgress"
    conds = conditions(obj)
    if conds.get("Stalled", {}).get("status") == "True":
        return "Failed"
    if conds.get("Reconciling", {}).get("status") == "True":
        return "InProgress"
    return "Current"


def wait_gc(
    cluster: Cluster, release: Release, ns: str, name: str, what: str, check: Any
) -> dict[str, Any]:
    last: dict[str, Any] = {}

    def probe() -> dict[str, Any] | None:
        nonlocal last
        assert release.operator is not None
        release.operator.process.check_alive()
        last = cluster.get_json(GC, name, "-n", ns)
        return last if check(last) else None

    try:
        return cluster.wait_for(f"GameCluster {ns}/{name}: {what}", probe, timeout=TIMEOUT)
    except Exception:
        print(yaml.safe_dump(last.get("status") or {}))  # shown on failure only
        assert release.operator is not None
        print(release.operator.process.tail())
        raise


def current(obj: dict[str, Any]) -> bool:
    return kstatus(obj) == "Current" and conditions(obj).get("Ready", {}).get("status") == "True"


def test_a_pod_template_lands_on_the_deployment(
    cluster: Cluster, operator_up: Release, namespace: str
) -> None:
    template = {
        "metadata": {"labels": {"team": "mp"}, "annotations": {"example.com/owner": "games"}},
        "spec": {
            "nodeSelector": {"pool": "game"},
            "tolerations": [
                {"key": "dedicated", "operator": "Equal", "value": "game", "effect": "NoSchedule"}
            ],
            "containers": [{"name": "relay", "resources": {"requests": {"cpu": "250m"}}}],
        },
    }
    cluster.apply(gamecluster("pinned", {"replicas": 1, "template": template}), "-n", namespace)

    def deployment() -> dict[str, Any] | None:
        return cluster.get_or_none("deployment", "pinned-relay", "-n", namespace)

    deploy = cluster.wait_for("the relay Deployment", deployment, timeout=TIMEOUT)
    pod = deploy["spec"]["template"]
    assert pod["metadata"]["labels"]["team"] == "mp"
    assert pod["metadata"]["labels"]["app.kubernetes.io/instance"] == "pinned"
    assert pod["metadata"]["annotations"]["example.com/owner"] == "games"
    assert "gamecluster.io/config-hash" in pod["metadata"]["annotations"]
    spec = pod["spec"]
    assert spec["nodeSelector"] == {"pool": "game"}
    assert spec["tolerations"] == template["spec"]["tolerations"]
    (container,) = spec["containers"]
    assert container["resources"]["requests"] == {"cpu": "250m"}
    assert container["securityContext"]["runAsNonRoot"] is True
    assert [p["name"] for p in container["ports"]] == ["http", "admin"]
    # The admin port is reachable only through a ClusterIP Service.
    admin = cluster.get_json("service", "pinned-admin", "-n", namespace)
    assert admin["spec"]["type"] == "ClusterIP"
    assert [p["targetPort"] for p in admin["spec"]["ports"]] == ["admin"]


def test_persistence_cannot_be_toggled_in_place(
    cluster: Cluster, operator_up: Release, namespace: str
) -> None:
    cluster.apply(gamecluster("stateful", {"replicas": 1}), "-n", namespace)
    # Persistence is on by default (the stored object says so): turning it off is an edit.
    edited = gamecluster("stateful", {"replicas": 1, "redis": {"persistence": {"enabled": False}}})
    proc = cluster.kubectl(
        "apply", "-f", "-", "-n", namespace, input=yaml.safe_dump(edited), check=False
    )
    assert proc.returncode == 1, proc
    assert "redis.persistence is immutable" in proc.stderr, proc.stderr
    stored = cluster.get_json(GC, "stateful", "-n", namespace)
    assert stored["spec"]["redis"]["persistence"]["enabled"] is True
    # Other edits still go through.
    cluster.kubectl(
        "patch", GC, "stateful", "-n", namespace, "--type=merge", "-p", '{"spec":{"replicas":2}}'
    )
    assert cluster.get_json(GC, "stateful", "-n", namespace)["spec"]["replicas"] == 2


def test_names_children_cannot_carry_are_refused(
    cluster: Cluster, operator_up: Release, namespace: str
) -> None:
    proc = cluster.kubectl(
        "apply",
        "-f",
        "-",
        "-n",
        namespace,
        input=yaml.safe_dump(gamecluster("a" * 47, {})),
        check=False,
    )
    assert proc.returncode == 1 and "DNS-1035" in proc.stderr, proc


def test_a_same_named_service_is_not_taken_over(
    cluster: Cluster, operator_up: Release, namespace: str
) -> None:
    theirs = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "arena", "labels": {"team": "web"}},
        "spec": {"selector": {"app": "website"}, "ports": [{"name": "web", "port": 8000}]},
    }
    cluster.apply(theirs, "-n", namespace)
    cluster.apply(gamecluster("arena", {"replicas": 1}), "-n", namespace)
    gc = wait_gc(
        cluster,
        operator_up,
        namespace,
        "arena",
        "Stalled NameConflict",
        lambda o: conditions(o).get("Stalled", {}).get("reason") == "NameConflict",
    )
    assert kstatus(gc) == "Failed"
    assert (
        f"Service {namespace}/arena exists and is not owned" in conditions(gc)["Stalled"]["message"]
    )
    service = cluster.get_json("service", "arena", "-n", namespace)
    assert service["spec"]["selector"] == {"app": "website"}
    assert [p["port"] for p in service["spec"]["ports"]] == [8000]
    assert not service["metadata"].get("ownerReferences")
    managers = {m["manager"] for m in service["metadata"].get("managedFields") or []}
    assert "gamecluster-operator" not in managers
    # Everything else was applied: the Deployment exists and keeps being managed.
    assert cluster.get_or_none("deployment", "arena-relay", "-n", namespace) is not None
    # Deleting the GameCluster leaves their Service alone.
    cluster.kubectl("delete", GC, "arena", "-n", namespace, "--wait=true")
    cluster.wait_for(
        "the relay Deployment garbage-collected",
        lambda: cluster.get_or_none("deployment", "arena-relay", "-n", namespace) is None,
        timeout=TIMEOUT,
    )
    assert cluster.get_or_none("service", "arena", "-n", namespace) is not None


def test_paused_stops_reconciliation_until_unpaused(
    cluster: Cluster, operator_up: Release, namespace: str
) -> None:
    for name in ("held", "witness"):
        cluster.apply(gamecluster(name, {"replicas": 1}), "-n", namespace)
        wait_gc(cluster, operator_up, namespace, name, "Current and Ready", current)
    cluster.kubectl("annotate", GC, "held", f"{PAUSED}=true", "-n", namespace)
    patch = '{"spec":{"replicas":3}}'
    cluster.kubectl("patch", GC, "held", "-n", namespace, "--type=merge", "-p", patch)
    cluster.kubectl("patch", GC, "witness", "-n", namespace, "--type=merge", "-p", patch)
    # The witness edit, made after the paused one, is handled: the operator has seen both.
    wait_gc(
        cluster,
        operator_up,
        namespace,
        "witness",
        "3 replicas applied",
        lambda o: (o.get("status") or {}).get("desiredReplicas") == 3,
    )
    held = cluster.get_json(GC, "held", "-n", namespace)
    assert held["status"]["observedGeneration"] < held["metadata"]["generation"]
    assert cluster.get_json("deployment", "held-relay", "-n", namespace)["spec"]["replicas"] == 1
    cluster.kubectl("annotate", GC, "held", f"{PAUSED}-", "-n", namespace)
    cluster.wait_for(
        "the paused edit applied after unpausing",
        lambda: (
            cluster.get_json("deployment", "held-relay", "-n", namespace)["spec"]["replicas"] == 3
        ),
        timeout=TIMEOUT,
    )


def test_kubectl_wait_returns_promptly_after_an_edit_and_kstatus_tracks_the_work(
    cluster: Cluster, operator_up: Release, namespace: str
) -> None:
    cluster.apply(gamecluster("edited", {"replicas": 1}), "-n", namespace)
    wait_gc(cluster, operator_up, namespace, "edited", "Current and Ready", current)
    # An edit that moves no pod: Ready again (for the new generation) within seconds, not
    # at the next resync (30 s).
    cluster.kubectl(
        "patch",
        GC,
        "edited",
        "-n",
        namespace,
        "--type=merge",
        "-p",
        '{"spec":{"service":{"port":8080}}}',
    )
    started = time.monotonic()
    cluster.kubectl(
        "wait", f"{GC}/edited", "-n", namespace, "--for=condition=Ready", "--timeout=20s"
    )
    elapsed = time.monotonic() - started
    gc = cluster.get_json(GC, "edited", "-n", namespace)
    assert conditions(gc)["Ready"]["observedGeneration"] == gc["metadata"]["generation"]
    assert elapsed < 20
    # A scale-up: kstatus is InProgress until every pod is ready, then Current.
    seen: list[tuple[str, int, int]] = []
    cluster.kubectl("scale", GC, "edited", "--replicas=3", "-n", namespace)

    def done() -> dict[str, Any] | None:
        obj = cluster.get_json(GC, "edited", "-n", namespace)
        deploy = cluster.get_json("deployment", "edited-relay", "-n", namespace)
        seen.append(
            (kstatus(obj), obj["metadata"]["generation"], deploy["status"].get("readyReplicas", 0))
        )
        return obj if current(obj) and obj["status"].get("readyReplicas") == 3 else None

    final = cluster.wait_for("scaled to 3 and Current", done, timeout=TIMEOUT)
    assert final["status"]["observedGeneration"] == final["metadata"]["generation"]
    generation = final["metadata"]["generation"]
    # Current for the new generation only once the Deployment's pods were all ready (the
    # Deployment is read after the GameCluster, so it can only be further along).
    assert all(
        ready == 3 for state, gen, ready in seen if state == "Current" and gen == generation
    ), seen
    print(f"kubectl wait after an edit returned in {elapsed:.2f} s; kstatus seen: {seen}")


def secret_text(secret: dict[str, Any], key: str) -> str:
    return base64.b64decode(secret["data"][key]).decode()


def credentials_digest(obj: dict[str, Any]) -> str | None:
    annotations = obj["spec"]["template"]["metadata"].get("annotations") or {}
    return annotations.get("gamecluster.io/redis-credentials")  # type: ignore[no-any-return]


def test_the_managed_redis_is_secured_bounded_and_persistent(
    cluster: Cluster, operator_up: Release, namespace: str
) -> None:
    """Issue 14's children as a real API server stores them (schemas, SSA, the chart's RBAC):
    a generated password Secret and the ACL Secret built from it, a NetworkPolicy and a PDB for
    Redis, the relay's password by secretKeyRef only, maxmemory with noeviction, a claim per
    shard bound to a volume; then a password rotation rolls Redis and the relays."""
    spec = {"replicas": 1, "redis": {"maxMemory": "100Mi"}}
    cluster.apply(gamecluster("vault", spec), "-n", namespace)
    wait_gc(cluster, operator_up, namespace, "vault", "Current and Ready", current)

    passwords = cluster.get_json("secret", "vault-redis", "-n", namespace)
    relay_password = secret_text(passwords, "password")
    operator_password = secret_text(passwords, "operatorPassword")
    assert len(relay_password) >= 32 and len(operator_password) >= 32
    acl = secret_text(cluster.get_json("secret", "vault-redis-acl", "-n", namespace), "users.acl")
    lines = acl.splitlines()
    assert lines[0] == "user default reset off ~* &* +@all"  # off: nobody logs in as it
    assert lines[1].startswith("user relay reset on #") and "-@all" in lines[1]
    assert lines[2].startswith("user gamecluster-operator reset on #")
    assert relay_password not in acl and operator_password not in acl
    assert "#" + hashlib.sha256(relay_password.encode()).hexdigest() in lines[1]

    # The relay gets the password from the Secret, never from its ConfigMap.
    config = cluster.get_json("configmap", "vault-relay", "-n", namespace)
    assert all(
        relay_password not in value and operator_password not in value
        for value in config["data"].values()
    )
    deploy = cluster.get_json("deployment", "vault-relay", "-n", namespace)
    env = {e["name"]: e for e in deploy["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["RELAY_REDIS_USERNAME"]["value"] == "relay"
    assert env["RELAY_REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"] == {
        "name": "vault-redis",
        "key": "password",
    }

    sts = cluster.get_json("statefulset", "vault-redis", "-n", namespace)
    args = sts["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--protected-mode") + 1] == "yes"
    assert args[args.index("--maxmemory") + 1] == str(100 * 1024 * 1024)
    assert args[args.index("--maxmemory-policy") + 1] == "noeviction"
    assert args[args.index("--aclfile") + 1] == "/etc/gamecluster/redis-acl/users.acl"
    assert [c["metadata"]["name"] for c in sts["spec"]["volumeClaimTemplates"]] == ["data"]
    claim = cluster.get_json("pvc", "data-vault-redis-0", "-n", namespace)
    assert claim["status"]["phase"] == "Bound"

    policy = cluster.get_json("networkpolicy", "vault-redis", "-n", namespace)
    assert policy["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "redis"
    (ingress,) = policy["spec"]["ingress"]
    assert ingress["ports"] == [{"protocol": "TCP", "port": 6379}]
    peers = ingress["from"]
    assert peers[0]["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "relay"
    operator_namespace = {"kubernetes.io/metadata.name": operator_up.namespace}
    assert peers[1:] == [{"namespaceSelector": {"matchLabels": operator_namespace}}]
    pdb = cluster.get_json("pdb", "vault-redis", "-n", namespace)
    assert pdb["spec"]["maxUnavailable"] == 1

    # Rotation as docs/operations.md tells a user: the ACL accepts both passwords while the
    # pods roll, and the Redis and relay pod templates move to the same new digest.
    before = credentials_digest(sts)
    assert before is not None and credentials_digest(deploy) == before
    rotated = {"stringData": {"previousPassword": relay_password, "password": "n" * 40}}
    cluster.kubectl(
        "patch", "secret", "vault-redis", "-n", namespace, "--type=merge", "-p", json.dumps(rotated)
    )

    def rolled() -> str | None:
        new = credentials_digest(cluster.get_json("statefulset", "vault-redis", "-n", namespace))
        relays = cluster.get_json("deployment", "vault-relay", "-n", namespace)
        return new if new not in (None, before) and credentials_digest(relays) == new else None

    cluster.wait_for("Redis and the relays rolled onto the new ACL", rolled, timeout=TIMEOUT)
    acl = secret_text(cluster.get_json("secret", "vault-redis-acl", "-n", namespace), "users.acl")
    assert acl.splitlines()[1].count(" #") == 2
    # The operator never writes the user's Secret back.
    after = cluster.get_json("secret", "vault-redis", "-n", namespace)
    assert secret_text(after, "password") == "n" * 40
    wait_gc(cluster, operator_up, namespace, "vault", "Current and Ready again", current)


def test_a_standby_operator_takes_over_when_the_leader_dies(
    cluster: Cluster, release: Release, namespace: str, tmp_path: Any
) -> None:
    """Last in the file: it kills the module's operator (the standby then serves the rest)."""
    assert release.operator is not None
    leader = release.operator
    lease_name = next(
        v["value"]
        for v in cluster.get_json(
            "deployments", "-n", release.namespace, "-l", "app.kubernetes.io/component=operator"
        )["items"][0]["spec"]["template"]["spec"]["containers"][0]["env"]
        if v["name"] == "GAMECLUSTER_LEASE_NAME"
    )

    def holder() -> str | None:
        lease = cluster.get_or_none("lease", lease_name, "-n", release.namespace)
        return ((lease or {}).get("spec") or {}).get("holderIdentity")

    assert cluster.wait_for("the Lease held", holder, timeout=30) == "operator-0"
    standby = start_operator(cluster, release, tmp_path, pod_name="operator-1")
    try:
        # The standby answers its probe but does not act: the Lease stays with operator-0.
        assert standby.healthy()
        assert holder() == "operator-0"
        # SIGKILL: no release, so the takeover waits for the Lease to expire (15 s).
        assert leader.process.proc is not None
        leader.process.proc.kill()
        leader.process.proc.wait(timeout=10)
        started = time.monotonic()
        cluster.wait_for(
            "operator-1 holding the Lease", lambda: holder() == "operator-1", timeout=60
        )
        takeover = time.monotonic() - started
        # And it reconciles: a new GameCluster gets its children and goes Ready.
        cluster.apply(gamecluster("after", {"replicas": 1}), "-n", namespace)
        release.operator = standby
        wait_gc(cluster, release, namespace, "after", "Current and Ready", current)
        print(f"standby took the Lease {takeover:.1f} s after the leader was killed")
        assert takeover < 15 + 10
    except BaseException:
        print(standby.process.tail())
        raise
    finally:
        if release.operator is not standby:
            standby.process.stop()


def test_a_managed_redis_with_replicas_runs_a_set_per_shard_and_three_sentinels(
    cluster: Cluster, operator_up: Release, namespace: str
) -> None:
    """``redis.replicas`` as a real API server stores it: a StatefulSet per shard (1 + replicas
    pods, its own selector), three Sentinels, the replication and Sentinel ACL users, network
    policies and budgets for both, relays pointed at the Sentinels; switching to 0 is refused
    by CEL, a replica count change applies, and a removed shard's set is pruned; ackReplicas
    reaches the relays and may not exceed the replicas (CEL)."""
    spec = {"replicas": 1, "redis": {"shards": 2, "replicas": 1, "ackReplicas": 1}}
    cluster.apply(gamecluster("ha", spec), "-n", namespace)
    ready = wait_gc(cluster, operator_up, namespace, "ha", "Current and Ready", current)
    assert ready["status"]["redis"] == {"shards": 2, "readyShards": 2}
    assert "Sentinels" in conditions(ready)["RedisReady"]["message"]

    for shard in (0, 1):
        sts = cluster.get_json("statefulset", f"ha-rs{shard}", "-n", namespace)
        assert sts["spec"]["replicas"] == 2
        assert sts["spec"]["serviceName"] == "ha-redis"
        assert sts["spec"]["selector"]["matchLabels"]["gamecluster.io/shard"] == str(shard)
        (redis,) = sts["spec"]["template"]["spec"]["containers"]
        assert redis["command"][:2] == ["sh", "-c"]
        env = {e["name"]: e for e in redis["env"]}
        assert env["REDIS_SHARD"]["value"] == f"shard-{shard}"
        assert env["REDIS_REPLICATION_PASSWORD"]["valueFrom"]["secretKeyRef"] == {
            "name": "ha-redis",
            "key": "replicationPassword",
        }
    # No standalone set beside the shard sets.
    assert cluster.get_or_none("statefulset", "ha-redis", "-n", namespace) is None
    sentinels = cluster.get_json("statefulset", "ha-sent", "-n", namespace)
    assert sentinels["spec"]["replicas"] == 3
    assert sentinels["status"].get("readyReplicas", 0) >= 2
    service = cluster.get_json("service", "ha-sent", "-n", namespace)
    assert service["spec"]["clusterIP"] == "None"

    passwords = cluster.get_json("secret", "ha-redis", "-n", namespace)
    replication = secret_text(passwords, "replicationPassword")
    sentinel = secret_text(passwords, "sentinelPassword")
    sentinel_auth = secret_text(passwords, "sentinelAuthPassword")  # the Sentinels' own
    assert len(replication) >= 32 and len(sentinel) >= 32 and len(sentinel_auth) >= 32
    auth_ref = {"name": "ha-redis", "key": "sentinelAuthPassword", "optional": True}
    (watcher,) = sentinels["spec"]["template"]["spec"]["containers"]
    assert {e["name"]: e for e in watcher["env"]}["SENTINEL_AUTH_PASSWORD"]["valueFrom"] == {
        "secretKeyRef": auth_ref
    }
    relay = cluster.get_json("deployment", "ha-relay", "-n", namespace)
    (relay_container,) = relay["spec"]["template"]["spec"]["containers"]
    relay_env = {e["name"]: e for e in relay_container["env"]}
    assert relay_env["RELAY_REDIS_SENTINEL_PASSWORD"]["valueFrom"] == {"secretKeyRef": auth_ref}
    acl = secret_text(cluster.get_json("secret", "ha-redis-acl", "-n", namespace), "users.acl")
    users = {line.split()[1]: line for line in acl.splitlines()}
    assert "#" + hashlib.sha256(replication.encode()).hexdigest() in users["replication"]
    assert "+psync" in users["replication"] and "+slaveof" in users["sentinel"]
    assert replication not in acl and sentinel not in acl

    config = cluster.get_json("configmap", "ha-relay", "-n", namespace)["data"]
    assert config["RELAY_REDIS_URLS"] == "shard-0=sentinel://shard-0,shard-1=sentinel://shard-1"
    assert config["RELAY_REDIS_SENTINELS"].split(",") == [
        f"ha-sent-{i}.ha-sent.{namespace}.svc:26379" for i in range(3)
    ]
    assert all(
        replication not in v and sentinel not in v and sentinel_auth not in v
        for v in config.values()
    )
    assert config["RELAY_REDIS_ACK_REPLICAS"] == "1"
    for name in ("ha-redis", "ha-sent"):
        policy = cluster.get_json("networkpolicy", name, "-n", namespace)
        (ingress,) = policy["spec"]["ingress"]
        components = [
            peer["podSelector"]["matchLabels"]["app.kubernetes.io/component"]
            for peer in ingress["from"]
            if "podSelector" in peer
        ]
        assert components == ["relay", "redis", "redis-sentinel"]
        assert cluster.get_json("pdb", name, "-n", namespace)["spec"]["maxUnavailable"] == 1

    # To 0 is refused by CEL (another StatefulSet: every room's history would be lost).
    proc = cluster.kubectl(
        "patch", GC, "ha", "-n", namespace, "--type=merge",
        "-p", '{"spec":{"redis":{"replicas":0}}}', check=False,
    )  # fmt: skip
    assert proc.returncode == 1 and "redis.replicas cannot change to or from 0" in proc.stderr
    # More replica acks than replicas is refused by CEL (no durable publish could be acked).
    proc = cluster.kubectl(
        "patch", GC, "ha", "-n", namespace, "--type=merge",
        "-p", '{"spec":{"redis":{"ackReplicas":2}}}', check=False,
    )  # fmt: skip
    assert proc.returncode == 1 and "ackReplicas cannot exceed redis.replicas" in proc.stderr
    # Between 1 and 5 it applies. A removed shard's set stays while the shard map names it:
    # the switch is asked of a relay, which kwok's pods cannot answer (no process), so the
    # change waits before it (the switch and the pruning after it: tests/operator, kmock).
    cluster.kubectl(
        "patch", GC, "ha", "-n", namespace, "--type=merge",
        "-p", '{"spec":{"redis":{"replicas":2,"shards":1}}}',
    )  # fmt: skip

    def edited() -> dict[str, Any] | None:
        kept = [
            cluster.get_json("statefulset", f"ha-rs{shard}", "-n", namespace)["spec"]["replicas"]
            for shard in (0, 1)
        ]
        shards = cluster.get_json(GC, "ha", "-n", namespace).get("status", {}).get("shards", {})
        waiting = "cannot ask a relay" in shards.get("message", "")
        return shards if kept == [3, 3] and waiting else None

    shards = cluster.wait_for("both sets with 3 pods, the switch asked", edited, timeout=TIMEOUT)
    assert (shards["active"], shards["target"]) == (2, 1)
    # Back to two shards before any switch: nothing to switch, Current again.
    cluster.kubectl(
        "patch", GC, "ha", "-n", namespace, "--type=merge", "-p", '{"spec":{"redis":{"shards":2}}}'
    )
    wait_gc(cluster, operator_up, namespace, "ha", "Current and Ready again", current)
