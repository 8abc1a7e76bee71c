"""Smoke tests of the e2e harness itself: the control plane and Jaeger are real and work."""

from __future__ import annotations

import json
import os
import time
import urllib.request
from typing import Any

import pytest

from .cluster import Cluster, E2EError, Jaeger, external_cluster, http_get

pytestmark = pytest.mark.e2e

# Any image: kwok never pulls it. A small real one, so the test also holds on a real cluster.
PAUSE_IMAGE = "registry.k8s.io/pause:3.10"


def test_apiserver_reports_the_pinned_version(cluster: Cluster) -> None:
    version = cluster.server_version()
    if not cluster.local:
        pytest.skip("KUBECONFIG_E2E cluster: the pinned version applies to the harness's own")
    pinned = cluster.versions["kubernetes"]
    assert version["gitVersion"] == pinned
    assert (version["major"], version["minor"]) == ("1", pinned.split(".")[1])


def _deployment(name: str, replicas: int) -> dict[str, Any]:
    labels = {"app": name}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "containers": [
                        {
                            "name": "main",
                            "image": PAUSE_IMAGE,
                            "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}},
                        }
                    ]
                },
            },
        },
    }


def _ready_pods(cluster: Cluster, ns: str, selector: str) -> list[dict[str, Any]]:
    pods = cluster.get_json("pods", "-n", ns, "-l", selector)["items"]
    return [
        p
        for p in pods
        if p["status"].get("phase") == "Running"
        and any(
            c["type"] == "Ready" and c["status"] == "True"
            for c in p["status"].get("conditions", [])
        )
    ]


def test_deployment_pods_become_ready_and_are_garbage_collected(
    cluster: Cluster, namespace: str
) -> None:
    name = "smoke"
    cluster.apply(_deployment(name, replicas=2), "-n", namespace)

    # Deployment controller -> ReplicaSet -> 2 Pods; scheduler binds them; kwok makes them Ready.
    def two_ready_pods() -> list[dict[str, Any]] | None:
        pods = _ready_pods(cluster, namespace, f"app={name}")
        return pods if len(pods) == 2 else None

    def deployment_ready() -> dict[str, Any] | None:
        d: dict[str, Any] = cluster.get_json("deployment", name, "-n", namespace)
        return d if d.get("status", {}).get("readyReplicas") == 2 else None

    ready = cluster.wait_for("2 Ready pods of the Deployment", two_ready_pods, timeout=90)
    assert all(p["spec"].get("nodeName") for p in ready)
    dep = cluster.wait_for("Deployment status readyReplicas=2", deployment_ready, timeout=60)
    assert dep["status"]["availableReplicas"] == 2

    rs = cluster.get_json("replicasets", "-n", namespace, "-l", f"app={name}")["items"]
    assert len(rs) == 1
    owner = rs[0]["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["name"], owner["uid"]) == (
        "Deployment",
        name,
        dep["metadata"]["uid"],
    )

    # Delete only the Deployment (background propagation): the garbage collector of
    # kube-controller-manager must delete its ReplicaSet, and that one's Pods.
    cluster.kubectl("delete", "deployment", name, "-n", namespace, "--cascade=background")
    cluster.wait_for(
        "ReplicaSet and Pods garbage-collected",
        lambda: (
            not cluster.get_json("replicasets", "-n", namespace, "-l", f"app={name}")["items"]
            and not cluster.get_json("pods", "-n", namespace, "-l", f"app={name}")["items"]
        ),
        timeout=90,
    )


def test_statefulset_pods_become_ready_in_order(cluster: Cluster, namespace: str) -> None:
    name = "smoke-sts"
    labels = {"app": name}
    cluster.apply(
        {
            "apiVersion": "apps/v1",
            "kind": "StatefulSet",
            "metadata": {"name": name},
            "spec": {
                "replicas": 2,
                "serviceName": name,
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {"containers": [{"name": "main", "image": PAUSE_IMAGE}]},
                },
            },
        },
        "-n",
        namespace,
    )

    def ready_sts() -> dict[str, Any] | None:
        sts: dict[str, Any] = cluster.get_json("statefulset", name, "-n", namespace)
        return sts if sts.get("status", {}).get("readyReplicas") == 2 else None

    cluster.wait_for("StatefulSet readyReplicas=2", ready_sts, timeout=90)
    names = sorted(p["metadata"]["name"] for p in _ready_pods(cluster, namespace, f"app={name}"))
    assert names == [f"{name}-0", f"{name}-1"]


def test_jaeger_answers_and_stores_an_otlp_trace(jaeger: Jaeger) -> None:
    assert http_get(jaeger.health_url)[0] == 200
    assert isinstance(jaeger.services(), list)

    # One span over OTLP/HTTP (JSON encoding), then it must be queryable.
    service = f"e2e-smoke-{os.urandom(3).hex()}"
    now = time.time_ns()
    body = {
        "resourceSpans": [
            {
                "resource": {
                    "attributes": [{"key": "service.name", "value": {"stringValue": service}}]
                },
                "scopeSpans": [
                    {
                        "scope": {"name": "e2e"},
                        "spans": [
                            {
                                "traceId": os.urandom(16).hex(),
                                "spanId": os.urandom(8).hex(),
                                "name": "smoke-span",
                                "kind": 1,
                                "startTimeUnixNano": str(now - 1_000_000),
                                "endTimeUnixNano": str(now),
                            }
                        ],
                    }
                ],
            }
        ]
    }
    req = urllib.request.Request(
        f"{jaeger.otlp_http_endpoint}/v1/traces",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(req, timeout=5) as resp:
        assert resp.status == 200
    jaeger.wait_for_service(service, timeout=30)
    ops = jaeger.get(f"/api/v3/operations?service={service}")
    assert [o["name"] for o in ops["operations"]] == ["smoke-span"]


def test_external_kubeconfig_that_does_not_exist_is_an_error(tmp_path: Any) -> None:
    with pytest.raises(E2EError, match="no such file"):
        external_cluster(tmp_path / "missing.kubeconfig")
