"""Fixtures of the real-pod tier (marker `pods`, issue 11): images built without a registry,
a real node (containerd + kubelet + CNI bridge) registered with the tier's own control plane.

The tier runs only when selected (`make e2e-pods`, i.e. `pytest -m pods`): it needs root, the
Debian packages of `make pods-deps`, and changes the host while it runs (a bridge, iptables
chains, sysctls, mounts), all recorded and restored by node.py.

Fixtures:
  pods_tools   session  control-plane Tools + the node tools' bin folder (tools.sh --node)
  buildah      session  images.Buildah on the cache's store (base/Redis/pause images cached)
  base_image   session  the Debian python3.11 base image's name
  project_image session the project image built from the Dockerfile (built every session)
  redis_image, pause_image  session  the local stand-ins (cached)
  real_cluster session  RealCluster: `cluster` (the tier's own control plane, API server on the
                        pod bridge, kwok node tainted) and `node` (containerd + kubelet, Ready)
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from ..cluster import (
    FAKE_NODE_LABEL,
    Cluster,
    E2EError,
    ManagedProcess,
    ProcessGroup,
    Tools,
    ensure_tools,
    free_port,
    http_get,
    local_control_plane,
    tools_dir,
    volume_provisioner,
    wait_until,
)
from . import images
from . import node as node_mod

REPO = Path(__file__).resolve().parents[3]
_RUN_HINT = "the real-pod tier runs only when selected: make e2e-pods (pytest -m pods)"
CONTROL_PLANE_TOOLS = (
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kwok",
    "kubectl",
)
SYSTEM_COMMANDS = ("containerd", "runc", "ctr", "buildah", "mmdebstrap", "iptables", "gcc")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip the tier unless `-m` names it: it is slow (first build) and changes the host."""
    selected = "pods" in (config.option.markexpr or "")
    reason = _RUN_HINT
    if selected and os.geteuid() != 0:
        selected, reason = False, "the real-pod tier needs root (containerd, kubelet, a bridge)"
    if selected:
        missing = [c for c in SYSTEM_COMMANDS if shutil.which(c) is None]
        if missing:
            selected = False
            reason = f"missing {', '.join(missing)}: run make pods-deps (Debian packages)"
    if selected:
        return
    for item in items:
        if item.get_closest_marker("pods"):
            item.add_marker(pytest.mark.skip(reason=reason))


@dataclass(frozen=True)
class PodsTools:
    control_plane: Tools
    node_bin: Path

    def node(self, name: str) -> Path:
        return self.node_bin / name


@pytest.fixture(scope="session")
def pods_tools() -> PodsTools:
    # The control plane without jaeger (no traces asserted here yet) and kwok's stages.
    control = ensure_tools(CONTROL_PLANE_TOOLS, stream=False)
    ensure_tools(["--node"], stream=False)
    node_bin = tools_dir("--node-bin-dir")
    for name in ("kubelet", "kube-proxy", "coredns", "pause"):
        if not (node_bin / name).is_file():
            raise E2EError(f"tools.sh --node did not build {name} into {node_bin}")
    return PodsTools(control, node_bin)


@pytest.fixture(scope="session")
def buildah(tmp_path_factory: pytest.TempPathFactory) -> Buildah:
    cache = tools_dir("--node-bin-dir").parent.parent / "images"
    cache.mkdir(parents=True, exist_ok=True)
    log_dir = tmp_path_factory.mktemp("images")
    return images.Buildah(store=cache, log=log_dir / "buildah.log")


Buildah = images.Buildah


@pytest.fixture(scope="session")
def base_image(buildah: Buildah, tmp_path_factory: pytest.TempPathFactory) -> str:
    return images.ensure_base_python(buildah, tmp_path_factory.mktemp("rootfs"))


@pytest.fixture(scope="session")
def project_image(buildah: Buildah, base_image: str) -> str:
    return images.build_project(buildah, REPO, base_image)


@pytest.fixture(scope="session")
def redis_image(buildah: Buildah, tmp_path_factory: pytest.TempPathFactory) -> str:
    return images.ensure_redis(buildah, tmp_path_factory.mktemp("rootfs-redis"))


@pytest.fixture(scope="session")
def pause_image(buildah: Buildah, pods_tools: PodsTools) -> str:
    return images.ensure_pause(buildah, pods_tools.node("pause"))


@dataclass(frozen=True)
class RealCluster:
    """The tier's own control plane (API server on the pod bridge) with one real node."""

    cluster: Cluster
    node: node_mod.Node


@pytest.fixture(scope="session")
def real_cluster(
    pods_tools: PodsTools,
    buildah: Buildah,
    project_image: str,
    redis_image: str,
    pause_image: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[RealCluster]:
    """Bridge, control plane, containerd (images imported), kubelet; all undone afterwards."""
    workdir = tmp_path_factory.mktemp("real-node")
    (workdir / "logs").mkdir()
    host = node_mod.HostChanges(workdir).record()
    group = ProcessGroup()
    try:
        node_mod.make_bridge()
        with local_control_plane(
            pods_tools.control_plane,
            workdir / "control-plane",
            api_host=node_mod.BRIDGE_IP,
            kubelet_client=True,
        ) as cluster:
            # Real workloads go to the real node: the kwok node takes only pods that tolerate it.
            for n in cluster.get_json("nodes", "-l", f"{FAKE_NODE_LABEL}=true")["items"]:
                cluster.kubectl(
                    "taint", "node", n["metadata"]["name"], f"{FAKE_NODE_LABEL}=true:NoSchedule"
                )
            with node_mod.run_containerd(workdir, pause_image, group) as socket_path:
                real = node_mod.Node(
                    node_mod.NODE_NAME, node_mod.BRIDGE_IP, socket_path, group, workdir
                )
                for image in (pause_image, redis_image, project_image):
                    archive = workdir / (image.rsplit("/", 1)[-1].replace(":", "_") + ".tar")
                    images.export_archive(buildah, image, archive)
                    real.import_image(archive)
                    archive.unlink()
                kubelet = start_kubelet(pods_tools, cluster, workdir, group)
                try:
                    cluster.wait_for(
                        f"node {real.name} registered",
                        lambda: kubelet.check_alive() or cluster.get_or_none("node", real.name),
                        timeout=120,
                    )
                    start_dns_and_proxy(pods_tools, cluster, workdir, group)
                    cluster.wait_for(
                        f"node {real.name} Ready",
                        lambda: node_ready(cluster.get_or_none("node", real.name)) or None,
                        timeout=120,
                    )
                    # The managed Redis keeps its data on a claim (persistence on by default);
                    # this node has no provisioner, so volumes are directories of the workdir.
                    with volume_provisioner(cluster, workdir / "volumes"):
                        yield RealCluster(cluster, real)
                finally:
                    kubelet.stop(grace=20)
    finally:
        try:
            group.stop_all()
        finally:
            host.restore()


def node_ready(node: Any) -> bool:
    return node is not None and any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in node.get("status", {}).get("conditions", [])
    )


def start_kubelet(
    tools: PodsTools, cluster: Cluster, workdir: Path, group: ProcessGroup
) -> ManagedProcess:
    assert cluster.pki is not None
    name = node_mod.NODE_NAME
    crt, key = cluster.pki.issue("kubelet", f"system:node:{name}", org="system:nodes")
    kubeconfig = cluster.pki.kubeconfig(
        workdir / "kubelet.kubeconfig", cluster.server, f"system:node:{name}", crt, key
    )
    ports = {"kubelet": free_port(), "kubelet_healthz": free_port()}
    config = node_mod.node_kubelet_files(
        workdir, cluster.pki.ca_path, ports, dns=[node_mod.BRIDGE_IP]
    )
    return group.start(
        ManagedProcess(
            "kubelet",
            [
                str(tools.node("kubelet")),
                f"--config={config}",
                f"--kubeconfig={kubeconfig}",
                f"--root-dir={workdir / 'kubelet'}",
                f"--cert-dir={workdir / 'kubelet-pki'}",
                f"--hostname-override={name}",
                f"--node-ip={node_mod.BRIDGE_IP}",
                f"--node-labels={node_mod.REAL_NODE_LABEL}=true",
                "--v=1",
            ],
            workdir / "logs" / "kubelet.log",
        )
    )


def start_dns_and_proxy(
    tools: PodsTools, cluster: Cluster, workdir: Path, group: ProcessGroup
) -> None:
    """CoreDNS (cluster DNS on the bridge address) and kube-proxy (Service routing), as host
    processes of the node, each with a client certificate of the tier's CA."""
    assert cluster.pki is not None
    pki, logs = cluster.pki, workdir / "logs"
    # CoreDNS lists Services, EndpointSlices, Namespaces and Pods cluster-wide (admin: a
    # throwaway cluster); kube-proxy is the user the bootstrap policy binds system:node-proxier.
    crt, key = pki.issue("coredns", "gamecluster-e2e-coredns", org="system:masters")
    dns_kc = pki.kubeconfig(workdir / "coredns.kubeconfig", cluster.server, "coredns", crt, key)
    crt, key = pki.issue("kube-proxy", "system:kube-proxy")
    proxy_kc = pki.kubeconfig(
        workdir / "kube-proxy.kubeconfig", cluster.server, "system:kube-proxy", crt, key
    )
    ports = {k: free_port() for k in ("dns_health", "kube_proxy_metrics", "kube_proxy_healthz")}
    dns = group.start(
        ManagedProcess(
            "coredns",
            node_mod.coredns_argv(tools.node("coredns"), workdir, dns_kc, ports["dns_health"]),
            logs / "coredns.log",
        )
    )
    proxy = group.start(
        ManagedProcess(
            "kube-proxy",
            node_mod.kube_proxy_argv(tools.node("kube-proxy"), proxy_kc, ports),
            logs / "kube-proxy.log",
        )
    )
    for proc, url in (
        (dns, f"http://127.0.0.1:{ports['dns_health']}/health"),
        (proxy, f"http://127.0.0.1:{ports['kube_proxy_healthz']}/healthz"),
    ):

        def up(proc: ManagedProcess = proc, url: str = url) -> bool:
            proc.check_alive()
            return http_get(url)[0] == 200

        wait_until(f"{proc.name} {url}", up, timeout=60, on_timeout=proc.tail)
