"""The chart installed with the Helm SDK, and the operator run as a local process with the chart's
ServiceAccount: what the scenario tests (test_gamecluster_lifecycle.py) share.

Two operators never act at once: the chart's own operator Deployment gets a pod, but on a fake
(kwok) node, where no container runs. The one operator that acts is the local process started
here, authenticated with a token of the chart's ServiceAccount (TokenRequest API), so every call
it makes goes through the chart's RBAC. Its settings are the chart's Deployment's environment,
except its liveness endpoint, which listens on 127.0.0.1 on a free port.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import helm_python as helm
import yaml

from .cluster import HOST, Cluster, E2EError, ManagedProcess, free_port, http_get, wait_until

REPO = Path(__file__).resolve().parents[2]
CHART_DIR = REPO / "charts" / "gamecluster"
EXAMPLES = REPO / "examples"
LOOPBACK_ONLY = Path(__file__).resolve().parent / "loopback_only"  # sitecustomize.py
RELEASE = "gc"
OPERATOR_COMPONENT = "app.kubernetes.io/component=operator"


@dataclass
class OperatorRun:
    """The local operator process and the credentials it runs with."""

    process: ManagedProcess
    kubeconfig: Path  # a token of the chart's ServiceAccount
    service_account: str
    namespace: str  # the release's
    liveness_url: str
    metrics_url: str = ""

    def healthy(self) -> bool:
        self.process.check_alive()
        return http_get(self.liveness_url, timeout=2.0)[0] == 200


@dataclass
class Release:
    """A Helm release of charts/gamecluster and the operator that stands in for its pod."""

    name: str
    namespace: str
    helm: helm.Config
    installed: dict[str, Any]  # the SDK's release summary (with the rendered manifest)
    operator: OperatorRun | None = None

    @property
    def selector(self) -> str:
        return f"app.kubernetes.io/instance={self.name}"


def install(cluster: Cluster, config: helm.Config, namespace: str) -> dict[str, Any]:
    """`helm install gc charts/gamecluster -n NAMESPACE --wait --timeout 3m`, through the SDK."""
    with helm.Chart.load(CHART_DIR) as chart:
        try:
            return config.install(
                chart, RELEASE, {}, namespace=namespace, wait="watcher", timeout=180
            )
        except helm.HelmError as err:
            tails = cluster.processes.tails() if cluster.processes else ""
            raise E2EError(f"helm install failed: {err}\n{tails}") from err


def operator_env(deployment: dict[str, Any], *, namespace: str, pod_name: str) -> dict[str, str]:
    """The GAMECLUSTER_* settings of the chart's operator container. Of the downward API, the
    pod's namespace and name are reproduced (the local process plays a pod of that name)."""
    [container] = [
        c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == "operator"
    ]
    fields = {"metadata.namespace": namespace, "metadata.name": pod_name}
    env = {}
    for var in container.get("env") or []:
        if "valueFrom" in var:
            path = (var["valueFrom"].get("fieldRef") or {}).get("fieldPath")
            if path not in fields:
                raise E2EError(f"operator env {var['name']}: {var['valueFrom']} not reproducible")
            env[var["name"]] = fields[path]
            continue
        env[var["name"]] = var.get("value", "")
    return env


def token_kubeconfig(cluster: Cluster, path: Path, service_account: str, namespace: str) -> Path:
    """A kubeconfig for the apiserver of `cluster` that authenticates with a bound token of the
    ServiceAccount, from the TokenRequest API (`kubectl create token`)."""
    token = cluster.kubectl(
        "create", "token", service_account, "-n", namespace, "--duration=2h"
    ).stdout.strip()
    if token.count(".") != 2:
        raise E2EError(f"kubectl create token printed no JWT: {token[:40]!r}")
    admin = yaml.safe_load(cluster.kubeconfig.read_text())
    current = next(c["context"] for c in admin["contexts"] if c["name"] == admin["current-context"])
    server = next(c for c in admin["clusters"] if c["name"] == current["cluster"])
    user = f"system:serviceaccount:{namespace}:{service_account}"
    cfg = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [server],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [{"name": "operator", "context": {"cluster": server["name"], "user": user}}],
        "current-context": "operator",
    }
    path.write_text(yaml.safe_dump(cfg))
    path.chmod(0o600)
    return path


def start_operator(
    cluster: Cluster,
    release: Release,
    workdir: Path,
    *,
    pod_name: str = "operator-0",
    wait_healthy: bool = True,
) -> OperatorRun:
    [deployment] = cluster.get_json(
        "deployments", "-n", release.namespace, "-l", f"{release.selector},{OPERATOR_COMPONENT}"
    )["items"]
    pod_spec = deployment["spec"]["template"]["spec"]
    service_account = pod_spec["serviceAccountName"]
    kubeconfig = token_kubeconfig(
        cluster, workdir / "operator.kubeconfig", service_account, release.namespace
    )
    port = free_port()
    metrics_port = free_port()
    env = {
        k: v
        for k, v in os.environ.items()
        # Never the in-cluster config or another kubeconfig: only the token above.
        if not k.startswith(("KUBERNETES_", "GAMECLUSTER_")) and k != "KUBECONFIG"
    }
    env.update(operator_env(deployment, namespace=release.namespace, pod_name=pod_name))
    env.update(
        {
            "KUBECONFIG": str(kubeconfig),
            "GAMECLUSTER_LIVENESS_HOST": HOST,
            "GAMECLUSTER_LIVENESS_PORT": str(port),
            "GAMECLUSTER_METRICS_PORT": str(metrics_port),
            "PYTHONPATH": os.pathsep.join(
                [str(LOOPBACK_ONLY), *filter(None, [os.environ.get("PYTHONPATH")])]
            ),
            "PYTHONUNBUFFERED": "1",
        }
    )
    process = ManagedProcess(
        "gamecluster-operator",
        [sys.executable, "-m", "gamecluster.main"],
        workdir / f"{pod_name}.log",
        env=env,
    ).start()
    run = OperatorRun(
        process=process,
        kubeconfig=kubeconfig,
        service_account=service_account,
        namespace=release.namespace,
        liveness_url=f"http://{HOST}:{port}/healthz",
        metrics_url=f"http://{HOST}:{metrics_port}/metrics",
    )
    if not wait_healthy:
        return run
    try:
        wait_until("the operator's /healthz", run.healthy, timeout=60, on_timeout=process.tail)
    except BaseException:
        process.stop()
        raise
    return run


@contextlib.contextmanager
def installed_with_operator(cluster: Cluster, workdir: Path) -> Iterator[Release]:
    """Install the chart in a namespace of its own, start the operator; afterwards stop the
    operator and uninstall (unless a test already did)."""
    workdir.mkdir(parents=True, exist_ok=True)
    with (
        cluster.namespace("gc-system") as namespace,
        helm.Config(kubeconfig_path=cluster.kubeconfig, namespace=namespace) as config,
    ):
        release = Release(RELEASE, namespace, config, install(cluster, config, namespace))
        try:
            release.operator = start_operator(cluster, release, workdir)
            yield release
        finally:
            if release.operator is not None:
                release.operator.process.stop()
            config.uninstall(RELEASE, ignore_not_found=True, wait="watcher", timeout=120)
