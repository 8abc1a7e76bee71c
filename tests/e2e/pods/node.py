"""A real Kubernetes node on this machine: containerd + kubelet + a CNI bridge (issue 11).

Settings these machines need (cgroup v1, no systemd, root without CAP_SYS_RESOURCE):
containerd `SystemdCgroup = false` and `restrict_oom_score_adj = true`; kubelet
`cgroupDriver: cgroupfs` and `failCgroupV1: false`.

Everything lives under one work folder (containerd root/state/socket, kubelet root, pod logs,
CNI config and IPAM state) except what the kernel keeps globally: the bridge link, iptables
rules, sysctls, cgroups and mounts. `HostChanges` records those before anything starts and
puts them back afterwards, also when a test fails:
- sysctls the kubelet, the bridge plugin and kube-proxy set: old values written back;
- iptables (v4 and v6): `iptables-save` before, `iptables-restore` of that snapshot after;
- mounts: every mount point that appeared under the work folder is unmounted (lazily);
- cgroups: the kubelet's `kubepods` trees are removed when they were not there before;
- the bridge link is deleted; /var/log/containers symlinks the kubelet made are removed.
Pod traffic is confined: pods reach each other and the host's bridge address, nothing else
(a FORWARD rule drops anything leaving the bridge for another interface, no masquerading).
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..cluster import E2EError, ManagedProcess, ProcessGroup, wait_until

BRIDGE = "gce2e0"
POD_SUBNET = ipaddress.ip_network("10.244.64.0/24")  # apart from kwok's data-only 10.244.0.0/24
BRIDGE_IP = str(next(POD_SUBNET.hosts()))  # the host's address on the pod network
NODE_NAME = "real-node-0"
REAL_NODE_LABEL = "gamecluster.io/e2e-real-node"
CNI_BIN_DIR = "/usr/lib/cni"  # Debian's containernetworking-plugins
SYSCTLS = (
    "vm.overcommit_memory",
    "vm.panic_on_oom",
    "kernel.panic",
    "kernel.panic_on_oops",
    "kernel.keys.root_maxkeys",
    "kernel.keys.root_maxbytes",
    "net.ipv4.ip_forward",
    "net.ipv4.conf.all.route_localnet",
    "net.bridge.bridge-nf-call-iptables",
    "net.bridge.bridge-nf-call-ip6tables",
    "net.netfilter.nf_conntrack_max",
    "net.netfilter.nf_conntrack_tcp_timeout_established",
    "net.netfilter.nf_conntrack_tcp_timeout_close_wait",
)
# Both backends: the kubelet and kube-proxy pick one by what they find, so both are recorded.
IPTABLES = tuple(
    f"{family}-{backend}" for family in ("iptables", "ip6tables") for backend in ("nft", "legacy")
)
IPTABLES_TABLES = ("filter", "nat", "mangle", "raw", "security")
CGROUP_ROOT = Path("/sys/fs/cgroup")
KUBEPODS = "kubepods"
VAR_LOG_CONTAINERS = Path("/var/log/containers")


def sh(*argv: str, check: bool = True, input: str | None = None, timeout: float = 60) -> str:
    proc = subprocess.run(
        argv, capture_output=True, text=True, input=input, timeout=timeout, check=False
    )
    if check and proc.returncode != 0:
        raise E2EError(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc.stdout


def _sysctl_path(name: str) -> Path:
    return Path("/proc/sys") / name.replace(".", "/")


def _mount_points() -> list[str]:
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        points.append(line.split()[4].replace("\\040", " "))
    return points


def _kubepods_dirs() -> list[Path]:
    if not CGROUP_ROOT.is_dir():
        return []
    return [c / KUBEPODS for c in sorted(CGROUP_ROOT.iterdir()) if (c / KUBEPODS).is_dir()]


@dataclass
class HostChanges:
    """What the node changes on the host, recorded first so that `restore` can undo it."""

    workdir: Path
    sysctls: dict[str, str] = field(default_factory=dict)
    iptables: dict[str, str] = field(default_factory=dict)
    kubepods_before: list[Path] = field(default_factory=list)
    var_log_containers_before: set[str] | None = None
    errors: list[str] = field(default_factory=list)

    def record(self) -> HostChanges:
        for name in SYSCTLS:
            path = _sysctl_path(name)
            if path.exists():
                self.sysctls[name] = path.read_text().strip()
        for tool in IPTABLES:
            if shutil.which(f"{tool}-save"):
                self.iptables[tool] = sh(f"{tool}-save")
        self.kubepods_before = _kubepods_dirs()
        if VAR_LOG_CONTAINERS.is_dir():
            self.var_log_containers_before = {p.name for p in VAR_LOG_CONTAINERS.iterdir()}
        return self

    def _try(self, what: str, fn: Any, *args: Any) -> None:
        try:
            fn(*args)
        except Exception as exc:  # keep restoring the rest; report all at the end
            self.errors.append(f"{what}: {exc!r}")

    def restore(self) -> None:
        self._try("mounts", self._unmount_under_workdir)
        self._try("cgroups", self._remove_kubepods)
        self._try("bridge", lambda: sh("ip", "link", "del", BRIDGE, check=False))
        for tool, saved in self.iptables.items():
            self._try(f"{tool}-restore", _iptables_restore, tool, saved)
        for name, value in self.sysctls.items():
            self._try(f"sysctl {name}", _sysctl_path(name).write_text, value + "\n")
        self._try("/var/log/containers", self._remove_log_links)
        if self.errors:
            raise E2EError("could not restore the host: " + "; ".join(self.errors))

    def _unmount_under_workdir(self) -> None:
        root = str(self.workdir)
        for point in sorted(_mount_points(), key=len, reverse=True):
            if point == root or point.startswith(root + "/"):
                sh("umount", "-l", point, check=False)
        left = [p for p in _mount_points() if p.startswith(root + "/")]
        if left:
            raise E2EError(f"still mounted: {left}")

    def _remove_kubepods(self) -> None:
        for top in _kubepods_dirs():
            if top in self.kubepods_before:
                continue
            # Deepest first; a cgroup with no process left is removed with rmdir.
            for d in sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
                with contextlib.suppress(OSError):
                    d.rmdir()
            top.rmdir()

    def _remove_log_links(self) -> None:
        if not VAR_LOG_CONTAINERS.is_dir():
            return
        if self.var_log_containers_before is None:
            for p in VAR_LOG_CONTAINERS.iterdir():
                p.unlink()
            VAR_LOG_CONTAINERS.rmdir()
            return
        for p in VAR_LOG_CONTAINERS.iterdir():
            if p.name not in self.var_log_containers_before:
                p.unlink()


def _iptables_restore(tool: str, saved: str) -> None:
    """Put back the saved tables; a table that had no rule before is emptied (flush, delete
    chains): `*-restore` only touches the tables its input names."""
    sh(f"{tool}-restore", input=saved)
    had = {line[1:].strip() for line in saved.splitlines() if line.startswith("*")}
    now = sh(f"{tool}-save")
    for table in IPTABLES_TABLES:
        if table not in had and f"*{table}" in now:
            sh(tool, "-t", table, "-F", check=False)
            sh(tool, "-t", table, "-X", check=False)
            if tool.endswith("-nft") and shutil.which("nft"):  # the table itself, as before
                family = "ip6" if tool.startswith("ip6") else "ip"
                sh("nft", "delete", "table", family, table, check=False)


def kill_pids_in_kubepods() -> None:
    """SIGKILL every process left in the kubelet's pod cgroups (containers of a stopped node)."""
    pids_root = CGROUP_ROOT / "pids" / KUBEPODS
    if not pids_root.is_dir():
        return
    for procs in pids_root.rglob("cgroup.procs"):
        for pid in procs.read_text().split():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGKILL)


def kill_shims_of(socket_path: Path) -> None:
    """SIGKILL the containerd-shim processes of *this* containerd (their argv names its socket);
    shims are daemons that outlive containerd by design."""
    needle = str(socket_path).encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if b"containerd-shim" in argv and needle in argv:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(entry.name), signal.SIGKILL)


def make_bridge() -> None:
    """The pod network's bridge with the host's address on it, before the API server binds it.
    The CNI bridge plugin adopts an existing bridge of its name."""
    sh("ip", "link", "add", BRIDGE, "type", "bridge")
    sh("ip", "addr", "add", f"{BRIDGE_IP}/{POD_SUBNET.prefixlen}", "dev", BRIDGE)
    sh("ip", "link", "set", BRIDGE, "up")
    # Confinement: nothing from the pod network is forwarded anywhere but back to it.
    sh("iptables", "-I", "FORWARD", "1", "-i", BRIDGE, "!", "-o", BRIDGE, "-j", "DROP")
    sh("iptables", "-I", "FORWARD", "1", "-o", BRIDGE, "!", "-i", BRIDGE, "-j", "DROP")
    # Pod-to-Service traffic between pods on one bridge must pass iptables (kube-proxy).
    for name in ("net.bridge.bridge-nf-call-iptables",):
        if _sysctl_path(name).exists():
            _sysctl_path(name).write_text("1\n")


def containerd_config(workdir: Path, pause_image: str) -> str:
    d = workdir / "containerd"
    cri = {
        "sandbox_image": pause_image,
        "restrict_oom_score_adj": True,  # root here lacks CAP_SYS_RESOURCE
        "netns_mounts_under_state_dir": True,  # netns mounts under our state dir, not /run
        "stream_server_address": "127.0.0.1",
        "enable_selinux": False,
        "containerd": {
            "snapshotter": "overlayfs",
            "default_runtime_name": "runc",
            "runtimes": {
                "runc": {
                    "runtime_type": "io.containerd.runc.v2",
                    "options": {"SystemdCgroup": False},  # no systemd on these machines
                }
            },
        },
        "cni": {"bin_dir": CNI_BIN_DIR, "conf_dir": str(workdir / "cni" / "net.d")},
    }
    config = {
        "version": 2,
        "root": str(d / "root"),
        "state": str(d / "state"),
        "grpc": {"address": str(d / "containerd.sock")},
        "ttrpc": {"address": str(d / "containerd.sock.ttrpc")},
        "plugins": {
            "io.containerd.grpc.v1.cri": cri,
            "io.containerd.internal.v1.opt": {"path": str(d / "opt")},
        },
    }
    return _toml(config)


def _toml(data: dict[str, Any], prefix: str = "") -> str:
    """The small TOML subset containerd's config needs: scalars and nested tables."""
    lines: list[str] = []
    tables: list[tuple[str, dict[str, Any]]] = []
    for key, value in data.items():
        k = f'"{key}"' if "." in key else key
        if isinstance(value, dict):
            tables.append((f"{prefix}.{k}" if prefix else k, value))
        else:
            lines.append(f"{k} = {json.dumps(value)}")
    out = "\n".join(lines) + "\n"
    for name, table in tables:
        out += f"\n[{name}]\n" + _toml(table, name)
    return out


def cni_config(workdir: Path) -> dict[str, Any]:
    return {
        "cniVersion": "0.4.0",
        "name": "gamecluster-e2e",
        "plugins": [
            {
                "type": "bridge",
                "bridge": BRIDGE,
                "isGateway": True,
                "ipMasq": False,  # pod traffic never leaves the machine
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": str(POD_SUBNET), "gateway": BRIDGE_IP}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": str(workdir / "cni" / "ipam"),
                },
            }
        ],
    }


def kubelet_config(
    workdir: Path, ca: Path, ports: dict[str, int], dns: list[str]
) -> dict[str, Any]:
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "address": BRIDGE_IP,  # the API server reaches it for logs, exec and port-forward
        "port": ports["kubelet"],
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": ports["kubelet_healthz"],
        "authentication": {
            "anonymous": {"enabled": False},
            "webhook": {"enabled": True},
            "x509": {"clientCAFile": str(ca)},
        },
        "authorization": {"mode": "Webhook"},
        "cgroupDriver": "cgroupfs",  # no systemd
        "failCgroupV1": False,  # these machines have cgroup v1
        "containerRuntimeEndpoint": f"unix://{workdir / 'containerd' / 'containerd.sock'}",
        "podLogsDir": str(workdir / "pod-logs"),
        "clusterDomain": "cluster.local",
        "clusterDNS": dns,
        # Pods with dnsPolicy Default get this file: no resolver outside the pod network.
        "resolvConf": str(workdir / "resolv.conf"),
        "failSwapOn": False,
        "serializeImagePulls": False,
        "imageGCHighThresholdPercent": 100,
        "evictionHard": {
            "memory.available": "100Mi",
            "nodefs.available": "1%",
            "imagefs.available": "1%",
            "nodefs.inodesFree": "1%",
        },
        "maxPods": 50,
        "registerNode": True,
        "registerWithTaints": [],
        "rotateCertificates": False,
        "serverTLSBootstrap": False,
        "nodeStatusUpdateFrequency": "4s",
        "syncFrequency": "10s",
        "fileCheckFrequency": "10s",
        "staticPodPath": "",
    }


@dataclass
class Node:
    name: str
    ip: str
    containerd_socket: Path
    processes: ProcessGroup
    workdir: Path

    def ctr(self, *args: str, timeout: float = 300) -> str:
        return sh(
            "ctr", "--address", str(self.containerd_socket), "-n", "k8s.io", *args, timeout=timeout
        )

    def import_image(self, archive: Path) -> None:
        self.ctr("images", "import", str(archive))

    def images(self) -> list[str]:
        return self.ctr("images", "list", "-q").split()


def _start(group: ProcessGroup, name: str, argv: list[str], logs: Path) -> ManagedProcess:
    return group.start(ManagedProcess(name, argv, logs / f"{name}.log"))


@contextlib.contextmanager
def run_containerd(workdir: Path, pause_image: str, group: ProcessGroup) -> Iterator[Path]:
    d = workdir / "containerd"
    (workdir / "cni" / "net.d").mkdir(parents=True, exist_ok=True)
    d.mkdir(parents=True, exist_ok=True)
    (workdir / "cni" / "net.d" / "10-gamecluster-e2e.conflist").write_text(
        json.dumps(cni_config(workdir), indent=2)
    )
    config = d / "config.toml"
    config.write_text(containerd_config(workdir, pause_image))
    socket_path = d / "containerd.sock"
    proc = _start(group, "containerd", ["containerd", "--config", str(config)], workdir / "logs")

    def up() -> bool:
        proc.check_alive()
        return (
            subprocess.run(
                ["ctr", "--address", str(socket_path), "version"], capture_output=True, check=False
            ).returncode
            == 0
        )

    try:
        wait_until("containerd", up, timeout=60, on_timeout=proc.tail)
        yield socket_path
    finally:
        kill_pids_in_kubepods()
        kill_shims_of(socket_path)
        proc.stop()


def wait_node_ready(kubectl: Any, name: str, timeout: float) -> None:
    def ready() -> bool:
        node = kubectl(name)
        return node is not None and any(
            c.get("type") == "Ready" and c.get("status") == "True"
            for c in node.get("status", {}).get("conditions", [])
        )

    wait_until(f"node {name} Ready", ready, timeout=timeout)


def node_kubelet_files(workdir: Path, ca: Path, ports: dict[str, int], dns: list[str]) -> Path:
    (workdir / "resolv.conf").write_text(
        "# pods of the e2e node: no resolver outside the pod network\n"
        + (f"nameserver {dns[0]}\n" if dns else "nameserver 127.0.0.1\n")
    )
    (workdir / "pod-logs").mkdir(parents=True, exist_ok=True)
    path = workdir / "kubelet.yaml"
    path.write_text(yaml.safe_dump(kubelet_config(workdir, ca, ports, dns)))
    return path


def wait_gone(pids_check: Any, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and pids_check():
        time.sleep(0.2)


def corefile(kubeconfig: Path, health_port: int) -> str:
    """Cluster DNS on the host's bridge address: the Services and pods of the cluster, and
    nothing else (no `forward`: names outside cluster.local get no answer from outside)."""
    return (
        f".:53 {{\n"
        f"    bind {BRIDGE_IP}\n"
        f"    errors\n"
        f"    health 127.0.0.1:{health_port}\n"
        f"    kubernetes cluster.local in-addr.arpa ip6.arpa {{\n"
        f"        kubeconfig {kubeconfig} gamecluster-e2e\n"
        f"        pods insecure\n"
        f"        fallthrough in-addr.arpa ip6.arpa\n"
        f"    }}\n"
        f"    cache 5\n"
        f"}}\n"
    )


def coredns_argv(binary: Path, workdir: Path, kubeconfig: Path, health_port: int) -> list[str]:
    path = workdir / "Corefile"
    path.write_text(corefile(kubeconfig, health_port))
    return [str(binary), "-conf", str(path)]


def kube_proxy_argv(binary: Path, kubeconfig: Path, ports: dict[str, int]) -> list[str]:
    """kube-proxy in iptables mode for this node; NodePorts only on the bridge address."""
    return [
        str(binary),
        f"--kubeconfig={kubeconfig}",
        f"--hostname-override={NODE_NAME}",
        "--proxy-mode=iptables",
        f"--cluster-cidr={POD_SUBNET}",
        f"--nodeport-addresses={BRIDGE_IP}/32",
        f"--metrics-bind-address=127.0.0.1:{ports['kube_proxy_metrics']}",
        f"--healthz-bind-address=127.0.0.1:{ports['kube_proxy_healthz']}",
        "--conntrack-max-per-core=0",  # leave the host's conntrack table size alone
        "--v=1",
    ]
