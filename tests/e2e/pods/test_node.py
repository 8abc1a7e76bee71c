"""The real node: a pod of the project image runs in containerd under a real kubelet (issue 11).

Its readiness comes from the kubelet's own probe of the relay's /readyz, its IP from the CNI
bridge, its limits from the cgroups; `kubectl exec` and `kubectl logs` go API server -> kubelet.
"""

from __future__ import annotations

import json

import pytest

from ..cluster import FAKE_NODE_LABEL, http_get
from . import images
from . import node as node_mod
from .conftest import RealCluster

pytestmark = pytest.mark.pods


@pytest.mark.timeout(3600)  # the first test of a session builds the images and starts the node
def test_node_registers_and_the_kwok_node_takes_only_tolerating_pods(
    real_cluster: RealCluster,
) -> None:
    cluster = real_cluster.cluster
    real = cluster.get_json("node", node_mod.NODE_NAME)
    assert real["metadata"]["labels"][node_mod.REAL_NODE_LABEL] == "true"
    addresses = {a["type"]: a["address"] for a in real["status"]["addresses"]}
    assert addresses["InternalIP"] == node_mod.BRIDGE_IP
    assert real["status"]["nodeInfo"]["containerRuntimeVersion"].startswith("containerd://1.6")
    assert real["status"]["nodeInfo"]["kubeletVersion"] == cluster.versions["kubernetes"]
    fake = cluster.get_json("nodes", "-l", f"{FAKE_NODE_LABEL}=true")["items"]
    assert fake, "the kwok node stays, for scale scenarios"
    for n in fake:
        taints = {(t["key"], t["effect"]) for t in n["spec"].get("taints", [])}
        assert (FAKE_NODE_LABEL, "NoSchedule") in taints
    present = real_cluster.node.images()
    for image in (images.PROJECT_IMAGE, images.REDIS_IMAGE, images.PAUSE_IMAGE):
        assert images.cri_ref(image) in present, present


def relay_pod(name: str) -> dict[str, object]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {
            "securityContext": {
                "runAsNonRoot": True,
                "seccompProfile": {"type": "RuntimeDefault"},
            },
            "containers": [
                {
                    "name": "relay",
                    "image": images.PROJECT_IMAGE,
                    "imagePullPolicy": "Never",
                    "env": [
                        {"name": "RELAY_AUTH", "value": "none"},
                        {"name": "RELAY_ADMIN_PORT", "value": "0"},
                    ],
                    "ports": [{"name": "http", "containerPort": 8080}],
                    "readinessProbe": {
                        "httpGet": {"path": "/readyz", "port": "http"},
                        "periodSeconds": 2,
                    },
                    "resources": {
                        "requests": {"cpu": "50m", "memory": "64Mi"},
                        "limits": {"memory": "256Mi"},
                    },
                    "securityContext": {
                        "allowPrivilegeEscalation": False,
                        "readOnlyRootFilesystem": True,
                        "capabilities": {"drop": ["ALL"]},
                    },
                }
            ],
        },
    }


@pytest.mark.timeout(600)
def test_a_relay_pod_runs_ready_on_the_real_node(real_cluster: RealCluster) -> None:
    cluster = real_cluster.cluster
    with cluster.namespace("node") as ns:
        cluster.apply(relay_pod("relay-smoke"), "-n", ns)

        def ready() -> dict[str, object] | None:
            pod = cluster.get_json("pod", "relay-smoke", "-n", ns)
            conds = {c["type"]: c["status"] for c in pod["status"].get("conditions", [])}
            return pod if conds.get("Ready") == "True" else None

        pod = cluster.wait_for("relay-smoke Ready (kubelet's readiness probe)", ready, timeout=180)
        assert pod["spec"]["nodeName"] == node_mod.NODE_NAME  # type: ignore[index]
        pod_ip = pod["status"]["podIP"]  # type: ignore[index]
        assert str(pod_ip) in str(node_mod.POD_SUBNET) or pod_ip.startswith("10.244.64.")  # type: ignore[union-attr]
        # The pod network: the host reaches the relay on the pod's own address.
        status, body = http_get(f"http://{pod_ip}:8080/healthz")
        assert status == 200, body
        # API server -> kubelet: exec and logs; the image's user and the memory limit.
        uid = cluster.kubectl("exec", "-n", ns, "relay-smoke", "--", "id", "-u").stdout.strip()
        assert uid == "10001"
        limit = cluster.kubectl(
            "exec",
            "-n",
            ns,
            "relay-smoke",
            "--",
            "cat",
            "/sys/fs/cgroup/memory/memory.limit_in_bytes",
        ).stdout.strip()
        assert int(limit) == 256 * 1024 * 1024
        logs = cluster.kubectl("logs", "-n", ns, "relay-smoke").stdout
        assert logs.strip(), "the relay logged nothing"
        info = json.loads(
            cluster.kubectl("get", "pod", "-n", ns, "relay-smoke", "-o", "json").stdout
        )
        restarts = info["status"]["containerStatuses"][0]["restartCount"]
        assert restarts == 0
