"""A real, throwaway Kubernetes control plane (and Jaeger) made of local processes.

etcd + kube-apiserver + kube-controller-manager + kube-scheduler + kwok (fake nodes, so pods of
Deployments and StatefulSets get bound, Running and Ready), all on free ports of 127.0.0.1, built
by tools.sh from their Go modules. Everything started here is stopped here, also when a test fails.

Set KUBECONFIG_E2E to the path of a kubeconfig to run the e2e tests against that cluster instead:
nothing is started then, and tests create and delete their own namespaces there.
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import datetime as dt
import ipaddress
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

HERE = Path(__file__).resolve().parent
TOOLS_SH = HERE / "tools.sh"
EXTERNAL_KUBECONFIG_ENV = "KUBECONFIG_E2E"
HOST = "127.0.0.1"  # every process started here listens on this address only
SERVICE_CIDR = "10.96.0.0/24"  # virtual: allocated in the API, never routed, never contacted
POD_CIDR = "10.244.0.0/24"  # fake pod IPs written by kwok; nothing connects to them
FAKE_NODE_LABEL = "gamecluster.io/e2e-fake-node"

T = TypeVar("T")


class E2EError(RuntimeError):
    """The harness could not provide what a test needs (a build, a process, a condition)."""


class ProcessDied(E2EError):
    """A process the harness started has exited: waiting for anything else is pointless."""


# --------------------------------------------------------------------------- tools


@dataclass(frozen=True)
class Tools:
    bin_dir: Path
    versions: dict[str, str]
    share_dir: Path | None = None  # kwok-stages.yaml

    def path(self, name: str) -> Path:
        return self.bin_dir / name


def tools_versions() -> dict[str, str]:
    out = subprocess.run(
        ["bash", str(TOOLS_SH), "--versions"], check=True, capture_output=True, text=True
    ).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def tools_dir(which: str = "--bin-dir") -> Path:
    out = subprocess.run(
        ["bash", str(TOOLS_SH), which], check=True, capture_output=True, text=True
    ).stdout
    return Path(out.strip())


def ensure_tools(names: Sequence[str] = (), *, stream: bool = True) -> Tools:
    """Build the missing tools (all, or `names`) with tools.sh; raise E2EError saying why not."""
    cmd = ["bash", str(TOOLS_SH), *names]
    proc = subprocess.run(
        cmd,
        stdout=None if stream else subprocess.PIPE,
        stderr=None if stream else subprocess.STDOUT,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise E2EError(
            f"tests/e2e/tools.sh {' '.join(names)} failed (exit {proc.returncode})"
            + (f":\n{proc.stdout[-4000:]}" if proc.stdout else "; see its output above")
        )
    return Tools(tools_dir("--bin-dir"), tools_versions(), tools_dir("--share-dir"))


def find_kubectl(tools: Tools | None = None) -> str:
    """kubectl from $KUBECTL, PATH, or the tools folder (where tools.sh builds it if need be)."""
    for cand in (os.environ.get("KUBECTL"), shutil.which("kubectl")):
        if cand:
            return cand
    if tools is not None and tools.path("kubectl").exists():
        return str(tools.path("kubectl"))
    raise E2EError("no kubectl: run tests/e2e/tools.sh kubectl (installs or builds it)")


# --------------------------------------------------------------------------- small helpers


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def wait_until(
    what: str,
    probe: Callable[[], T | None],
    *,
    timeout: float,
    interval: float = 0.25,
    on_timeout: Callable[[], str] | None = None,
) -> T:
    """Poll `probe` until it returns something other than None/False; bounded by `timeout`."""
    deadline = time.monotonic() + timeout
    last_exc: BaseException | None = None
    while True:
        try:
            result = probe()
            if result is not None and result is not False:
                return result
        except ProcessDied:
            raise
        except Exception as exc:  # the condition is not there yet; keep polling
            last_exc = exc
        if time.monotonic() >= deadline:
            detail = f" (last error: {last_exc!r})" if last_exc else ""
            extra = f"\n{on_timeout()}" if on_timeout else ""
            raise E2EError(f"timed out after {timeout:.0f}s waiting for {what}{detail}{extra}")
        time.sleep(interval)


def http_get(
    url: str, *, ssl_context: ssl.SSLContext | None = None, timeout: float = 5.0
) -> tuple[int, bytes]:
    req = urllib.request.Request(url)
    try:
        with urllib.request.urlopen(req, timeout=timeout, context=ssl_context) as resp:
            return int(resp.status), resp.read()
    except urllib.error.HTTPError as err:
        with err:
            return int(err.code), err.read()


def insecure_loopback_tls() -> ssl.SSLContext:
    """For the /healthz of components with self-signed serving certs, on 127.0.0.1 only."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


# --------------------------------------------------------------------------- processes

_PR_SET_PDEATHSIG = 1
_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None


def _terminate_with_parent() -> None:
    """In the child before exec: die when pytest dies, even by SIGKILL (Linux). SIGKILL, as
    kube-apiserver can linger for a long time after SIGTERM once its etcd is gone."""
    if _LIBC is not None:
        _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


@dataclass
class ManagedProcess:
    name: str
    argv: list[str]
    log_path: Path
    env: dict[str, str] | None = None
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> ManagedProcess:
        with self.log_path.open("ab") as log:
            log.write(f"$ {' '.join(self.argv)}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                start_new_session=True,  # a Ctrl-C of pytest is handled by stop(), not raced
                preexec_fn=_terminate_with_parent,
            )
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise ProcessDied(f"{self.name} exited with {self.proc.returncode}\n{self.tail()}")

    def tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return f"--- {self.name}: no log at {self.log_path}"
        body = "\n".join(text[-lines:])
        return f"--- last {lines} lines of {self.name} ({self.log_path}):\n{body}"

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM, then SIGKILL after `grace` seconds; always reaps the process."""
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                proc.wait(timeout=grace)
        else:
            proc.wait()


@dataclass
class ProcessGroup:
    """Processes stopped in reverse start order."""

    procs: list[ManagedProcess] = field(default_factory=list)

    def start(self, p: ManagedProcess) -> ManagedProcess:
        self.procs.append(p)
        return p.start()

    def check_alive(self) -> None:
        for p in self.procs:
            p.check_alive()

    def tails(self, lines: int = 40) -> str:
        return "\n".join(p.tail(lines) for p in self.procs)

    def stop_all(self) -> None:
        errors = []
        for p in reversed(self.procs):
            try:
                p.stop()
            except Exception as exc:  # keep stopping the others
                errors.append(f"{p.name}: {exc!r}")
        if errors:
            raise E2EError("could not stop: " + "; ".join(errors))


# --------------------------------------------------------------------------- PKI


def _name(cn: str, org: str | None = None) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
    if org:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))
    return x509.Name(attrs)


def _pem_key(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


@dataclass
class Pki:
    """A throwaway CA and the certificates/keys the control plane needs, as files in `dir`."""

    dir: Path
    ca_key: ec.EllipticCurvePrivateKey = field(init=False)
    ca_cert: x509.Certificate = field(init=False)

    def __post_init__(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.ca_key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        self.ca_cert = (
            x509.CertificateBuilder()
            .subject_name(_name("gamecluster-e2e-ca"))
            .issuer_name(_name("gamecluster-e2e-ca"))
            .public_key(self.ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .sign(self.ca_key, hashes.SHA256())
        )
        (self.dir / "ca.crt").write_bytes(self.ca_cert.public_bytes(serialization.Encoding.PEM))
        (self.dir / "ca.key").write_bytes(_pem_key(self.ca_key))
        # Service-account token signing key (RSA, as the apiserver's defaults expect).
        sa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        (self.dir / "sa.key").write_bytes(_pem_key(sa))
        (self.dir / "sa.pub").write_bytes(
            sa.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )

    @property
    def ca_path(self) -> Path:
        return self.dir / "ca.crt"

    def issue(
        self,
        name: str,
        cn: str,
        *,
        org: str | None = None,
        server_names: Sequence[str] = (),
        server_ips: Sequence[str] = (),
        client: bool = True,
    ) -> tuple[Path, Path]:
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        usages = [ExtendedKeyUsageOID.CLIENT_AUTH] if client else []
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(cn, org))
            .issuer_name(self.ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        )
        if server_names or server_ips:
            usages.append(ExtendedKeyUsageOID.SERVER_AUTH)
            sans: list[x509.GeneralName] = [x509.DNSName(n) for n in server_names]
            sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in server_ips]
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        builder = builder.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        cert = builder.sign(self.ca_key, hashes.SHA256())
        crt_path, key_path = self.dir / f"{name}.crt", self.dir / f"{name}.key"
        crt_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(_pem_key(key))
        key_path.chmod(0o600)
        return crt_path, key_path

    def kubeconfig(self, path: Path, server: str, user: str, crt: Path, key: Path) -> Path:
        def b64(p: Path) -> str:
            return base64.b64encode(p.read_bytes()).decode()

        cfg = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "gamecluster-e2e",
                    "cluster": {
                        "server": server,
                        "certificate-authority-data": b64(self.ca_path),
                    },
                }
            ],
            "users": [
                {
                    "name": user,
                    "user": {"client-certificate-data": b64(crt), "client-key-data": b64(key)},
                }
            ],
            "contexts": [
                {"name": "gamecluster-e2e", "context": {"cluster": "gamecluster-e2e", "user": user}}
            ],
            "current-context": "gamecluster-e2e",
        }
        path.write_text(yaml.safe_dump(cfg))
        path.chmod(0o600)
        return path


# --------------------------------------------------------------------------- cluster


@dataclass
class Cluster:
    """What the e2e tests get: a kubeconfig and helpers around kubectl.

    `local` is True when the harness started the control plane itself (then `versions` holds the
    pinned tool versions and `log_dir` the process logs), False for a KUBECONFIG_E2E cluster.
    """

    kubeconfig: Path
    kubectl_path: str
    local: bool
    versions: dict[str, str] = field(default_factory=dict)
    log_dir: Path | None = None
    processes: ProcessGroup | None = None
    pki: Pki | None = None  # the local control plane's CA (a real node's kubelet needs it)
    server: str = ""  # the local API server's URL

    @property
    def env(self) -> dict[str, str]:
        """os.environ plus KUBECONFIG: for helm, the operator or any client run as a process."""
        return {**os.environ, "KUBECONFIG": str(self.kubeconfig)}

    def kubectl(
        self,
        *args: str,
        input: str | None = None,
        check: bool = True,
        timeout: float = 60.0,
    ) -> subprocess.CompletedProcess[str]:
        cmd = [self.kubectl_path, "--kubeconfig", str(self.kubeconfig), *args]
        proc = subprocess.run(
            cmd, input=input, capture_output=True, text=True, timeout=timeout, check=False
        )
        if check and proc.returncode != 0:
            diag = ""
            if self.processes is not None:  # a dead component explains most failures
                try:
                    self.processes.check_alive()
                except E2EError as dead:
                    diag = f"\n{dead}"
            raise E2EError(
                f"kubectl {' '.join(args)} failed ({proc.returncode}):\n"
                f"{proc.stderr.strip()}\n{proc.stdout.strip()}{diag}"
            )
        return proc

    def get_json(self, *args: str) -> Any:
        """`kubectl get ARGS -o json`, parsed."""
        return json.loads(self.kubectl("get", *args, "-o", "json").stdout)

    def get_or_none(self, *args: str) -> Any:
        proc = self.kubectl("get", *args, "-o", "json", check=False)
        if proc.returncode != 0:
            if "NotFound" in proc.stderr or "not found" in proc.stderr:
                return None
            raise E2EError(f"kubectl get {' '.join(args)}: {proc.stderr.strip()}")
        return json.loads(proc.stdout)

    def apply(self, manifest: str | dict[str, Any] | list[dict[str, Any]], *args: str) -> None:
        if isinstance(manifest, dict):
            text = yaml.safe_dump(manifest)
        elif isinstance(manifest, list):
            text = yaml.safe_dump_all(manifest)
        else:
            text = manifest
        self.kubectl("apply", "-f", "-", *args, input=text)

    def server_version(self) -> dict[str, Any]:
        return dict(json.loads(self.kubectl("get", "--raw", "/version").stdout))

    def wait_for(self, what: str, probe: Callable[[], T | None], timeout: float = 60.0) -> T:
        """Poll `probe` (bounded); on timeout the error includes the control plane's log tails."""
        return wait_until(
            what,
            probe,
            timeout=timeout,
            interval=0.5,
            on_timeout=(self.processes.tails if self.processes else None),
        )

    @contextlib.contextmanager
    def namespace(self, prefix: str = "e2e") -> Iterator[str]:
        """A fresh namespace, deleted afterwards (without waiting for its finalisation)."""
        name = f"{prefix}-{os.urandom(3).hex()}"
        self.kubectl("create", "namespace", name)
        try:
            yield name
        finally:
            self.kubectl("delete", "namespace", name, "--wait=false", check=False)


def _fake_node(name: str) -> dict[str, Any]:
    """A Node that kwok manages (annotation kwok.x-k8s.io/node=fake), untainted so that any pod
    can be scheduled onto it. Roomy capacity: tests are limited by the machine, not by the node."""
    resources = {"cpu": "32", "memory": "256Gi", "pods": "110", "ephemeral-storage": "100Gi"}
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": {"kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0"},
            "labels": {
                "kubernetes.io/arch": "amd64",
                "kubernetes.io/os": "linux",
                "kubernetes.io/hostname": name,
                "type": "kwok",
                FAKE_NODE_LABEL: "true",
            },
        },
        "status": {"allocatable": resources, "capacity": resources},
    }


def _node_ready(node: dict[str, Any]) -> bool:
    return any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in node.get("status", {}).get("conditions", [])
    )


@contextlib.contextmanager
def local_control_plane(
    tools: Tools,
    workdir: Path,
    *,
    fake_nodes: int = 1,
    startup_timeout: float = 120.0,
    api_host: str = HOST,
    apiserver_args: Sequence[str] = (),
    kubelet_client: bool = False,
) -> Iterator[Cluster]:
    """Start etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kwok; yield a
    Cluster; stop them all (also on errors). Logs stay in workdir/logs.

    api_host: the one address the API server binds and advertises (127.0.0.1 by default; the
    real-pod tier passes the host's address on its pod bridge, so pods reach it through the
    `kubernetes` Service, whose endpoint the API server then maintains). apiserver_args: extra
    flags. kubelet_client: the API server gets a client certificate to show real kubelets
    (logs, exec, port-forward) and prefers their InternalIP."""
    logs = workdir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    pki = Pki(workdir / "pki")
    group = ProcessGroup()
    kubectl = find_kubectl(tools)

    ports = {k: free_port() for k in ("etcd", "etcd_peer", "apiserver", "kcm", "scheduler", "kwok")}
    server = f"https://{api_host}:{ports['apiserver']}"
    service_ip = str(next(ipaddress.ip_network(SERVICE_CIDR).hosts()))

    def proc(name: str, *argv: str, env: dict[str, str] | None = None) -> ManagedProcess:
        return group.start(
            ManagedProcess(name, [str(tools.path(name)), *argv], logs / f"{name}.log", env=env)
        )

    def fail(msg: str) -> E2EError:
        return E2EError(f"{msg}\n{group.tails()}")

    def ready(what: str, probe: Callable[[], Any], timeout: float = startup_timeout) -> Any:
        def checked() -> Any:
            group.check_alive()
            return probe()

        try:
            return wait_until(what, checked, timeout=timeout, interval=0.25)
        except E2EError as err:
            raise fail(str(err)) from None

    try:
        # etcd ---------------------------------------------------------------------------------
        etcd_url = f"http://{HOST}:{ports['etcd']}"
        peer_url = f"http://{HOST}:{ports['etcd_peer']}"
        proc(
            "etcd",
            "--name=e2e",
            f"--data-dir={workdir / 'etcd'}",
            f"--listen-client-urls={etcd_url}",
            f"--advertise-client-urls={etcd_url}",
            f"--listen-peer-urls={peer_url}",
            f"--initial-advertise-peer-urls={peer_url}",
            f"--initial-cluster=e2e={peer_url}",
            "--initial-cluster-state=new",
            "--unsafe-no-fsync=true",  # a throwaway store: speed over durability
            "--log-level=warn",
        )
        ready(
            "etcd /health",
            lambda: http_get(f"{etcd_url}/health")[0] == 200,
        )

        # kube-apiserver ------------------------------------------------------------------------
        apiserver_crt, apiserver_key = pki.issue(
            "apiserver",
            "kube-apiserver",
            server_names=[
                "localhost",
                "kubernetes",
                "kubernetes.default",
                "kubernetes.default.svc",
                "kubernetes.default.svc.cluster.local",
            ],
            server_ips=sorted({HOST, api_host, service_ip}),
            client=False,
        )
        admin_crt, admin_key = pki.issue("admin", "gamecluster-e2e-admin", org="system:masters")
        if kubelet_client:
            kc_crt, kc_key = pki.issue(
                "apiserver-kubelet-client", "kube-apiserver-kubelet-client", org="system:masters"
            )
            apiserver_args = [
                f"--kubelet-client-certificate={kc_crt}",
                f"--kubelet-client-key={kc_key}",
                "--kubelet-preferred-address-types=InternalIP",
                *apiserver_args,
            ]
        proc(
            "kube-apiserver",
            f"--etcd-servers={etcd_url}",
            f"--bind-address={api_host}",
            f"--advertise-address={api_host}",
            f"--secure-port={ports['apiserver']}",
            f"--cert-dir={workdir / 'apiserver-certs'}",
            f"--tls-cert-file={apiserver_crt}",
            f"--tls-private-key-file={apiserver_key}",
            f"--client-ca-file={pki.ca_path}",
            "--authorization-mode=Node,RBAC",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={pki.dir / 'sa.pub'}",
            f"--service-account-signing-key-file={pki.dir / 'sa.key'}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            # The apiserver would publish 127.0.0.1 as the endpoint of Service `kubernetes`,
            # which Endpoints validation refuses; nothing in the tests dials that Service.
            # (An api_host of a real interface is a valid endpoint: the default reconciler.)
            "--endpoint-reconciler-type=" + ("none" if api_host == HOST else "lease"),
            "--allow-privileged=true",
            "--profiling=false",
            "--v=1",
            *apiserver_args,
        )
        api_ctx = ssl.create_default_context(cafile=str(pki.ca_path))
        api_ctx.load_cert_chain(str(admin_crt), str(admin_key))
        ready(
            "kube-apiserver /readyz",
            lambda: http_get(f"{server}/readyz", ssl_context=api_ctx)[0] == 200,
        )
        kubeconfig = pki.kubeconfig(
            workdir / "admin.kubeconfig", server, "gamecluster-e2e-admin", admin_crt, admin_key
        )

        def component_kubeconfig(name: str, cn: str, org: str | None = None) -> Path:
            crt, key = pki.issue(name, cn, org=org)
            return pki.kubeconfig(workdir / f"{name}.kubeconfig", server, cn, crt, key)

        # kube-controller-manager ---------------------------------------------------------------
        kcm_kc = component_kubeconfig("kcm", "system:kube-controller-manager")
        proc(
            "kube-controller-manager",
            f"--kubeconfig={kcm_kc}",
            f"--authentication-kubeconfig={kcm_kc}",
            f"--authorization-kubeconfig={kcm_kc}",
            f"--bind-address={HOST}",
            f"--secure-port={ports['kcm']}",
            f"--cert-dir={workdir / 'kcm-certs'}",
            "--controllers=*",
            "--use-service-account-credentials=true",
            f"--service-account-private-key-file={pki.dir / 'sa.key'}",
            f"--root-ca-file={pki.ca_path}",
            f"--cluster-signing-cert-file={pki.ca_path}",
            f"--cluster-signing-key-file={pki.dir / 'ca.key'}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--leader-elect=false",
            "--profiling=false",
            "--v=1",
        )
        # kube-scheduler (kwok does not schedule: it plays the kubelet of nodes it manages) -----
        sched_kc = component_kubeconfig("scheduler", "system:kube-scheduler")
        proc(
            "kube-scheduler",
            f"--kubeconfig={sched_kc}",
            f"--authentication-kubeconfig={sched_kc}",
            f"--authorization-kubeconfig={sched_kc}",
            f"--bind-address={HOST}",
            f"--secure-port={ports['scheduler']}",
            "--leader-elect=false",
            "--profiling=false",
            "--v=1",
        )
        # kwok: the node's kubelet endpoint is kwok's own server on 127.0.0.1, so anything the
        # apiserver would send to a "kubelet" (logs, exec, port-forward) stays on loopback.
        kwok_kc = component_kubeconfig("kwok", "gamecluster-e2e-kwok", org="system:masters")
        # kwok reads ~/.kwok/kwok.yaml too when it exists: HOME is a folder of its own here.
        # Its config holds the Stage objects that make nodes Ready and pods Running/Ready.
        if tools.share_dir is None or not (tools.share_dir / "kwok-stages.yaml").is_file():
            raise E2EError("no kwok-stages.yaml: run tests/e2e/tools.sh kwok")
        (workdir / "kwok-home").mkdir(exist_ok=True)
        # (No KwokConfiguration document: kwok's defaults apply, flags below override them.)
        (workdir / "kwok.yaml").write_text((tools.share_dir / "kwok-stages.yaml").read_text())
        proc(
            "kwok",
            f"--kubeconfig={kwok_kc}",
            f"--config={workdir / 'kwok.yaml'}",
            "--manage-all-nodes=false",
            "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake",
            "--manage-nodes-with-label-selector=",
            "--manage-single-node=",
            f"--cidr={POD_CIDR}",
            f"--node-ip={HOST}",
            f"--node-port={ports['kwok']}",
            f"--server-address={HOST}:{ports['kwok']}",
            "--node-lease-duration-seconds=40",
            env={**os.environ, "HOME": str(workdir / "kwok-home")},
        )
        insecure = insecure_loopback_tls()
        for name in ("kcm", "scheduler"):
            ready(
                f"{name} /healthz",
                lambda name=name: (
                    http_get(f"https://{HOST}:{ports[name]}/healthz", ssl_context=insecure)[0]
                    == 200
                ),
            )
        ready(
            "kwok /healthz",
            lambda: http_get(f"http://{HOST}:{ports['kwok']}/healthz")[0] == 200,
        )

        cluster = Cluster(
            kubeconfig=kubeconfig,
            kubectl_path=kubectl,
            local=True,
            versions=tools.versions,
            log_dir=logs,
            processes=group,
            pki=pki,
            server=server,
        )
        # The service-account controller must have made `default` before pods can be admitted.
        ready(
            "ServiceAccount default/default",
            lambda: cluster.get_or_none("serviceaccount", "default", "-n", "default"),
        )
        nodes = [_fake_node(f"kwok-node-{i}") for i in range(fake_nodes)]
        if nodes:
            cluster.apply(nodes)
            for node in nodes:
                n = node["metadata"]["name"]
                ready(
                    f"fake node {n} Ready (kwok)",
                    lambda n=n: _node_ready(cluster.get_json("node", n)),
                )
        yield cluster
    finally:
        group.stop_all()


def external_cluster(kubeconfig: Path, tools: Tools | None = None) -> Cluster:
    if not kubeconfig.is_file():
        raise E2EError(f"{EXTERNAL_KUBECONFIG_ENV}={kubeconfig}: no such file")
    cluster = Cluster(kubeconfig=kubeconfig, kubectl_path=find_kubectl(tools), local=False)
    cluster.server_version()  # reachable, credentials accepted
    return cluster


# --------------------------------------------------------------------------- jaeger


@dataclass
class Jaeger:
    """A Jaeger v2 all-in-one process: memory storage, OTLP in, query API out, all on 127.0.0.1.

    otlp_http_endpoint: base URL for OTLP/HTTP exporters (traces go to f"{...}/v1/traces");
    otlp_grpc_endpoint: "127.0.0.1:PORT" for OTLP/gRPC exporters (insecure);
    query_url: base URL of the query service (api/v3/services, api/v3/traces, the UI).
    """

    otlp_http_endpoint: str
    otlp_grpc_endpoint: str
    query_url: str
    health_url: str
    process: ManagedProcess

    def get(self, path: str, timeout: float = 5.0) -> Any:
        status, body = http_get(f"{self.query_url}{path}", timeout=timeout)
        if status != 200:
            raise E2EError(f"jaeger GET {path}: HTTP {status}: {body[:500]!r}")
        return json.loads(body)

    def services(self) -> list[str]:
        return list(self.get("/api/v3/services").get("services") or [])

    def wait_for_service(self, name: str, timeout: float = 30.0) -> None:
        wait_until(
            f"service {name!r} in Jaeger",
            lambda: name in self.services(),
            timeout=timeout,
            on_timeout=self.process.tail,
        )


def jaeger_config(ports: dict[str, int]) -> dict[str, Any]:
    """The all-in-one config of cmd/jaeger (internal/all-in-one.yaml) cut to what the tests use:
    OTLP receivers, memory storage, query, health check; every endpoint on 127.0.0.1."""
    return {
        "service": {
            "extensions": ["jaeger_storage", "jaeger_query", "healthcheckv2"],
            "pipelines": {
                "traces": {
                    "receivers": ["otlp"],
                    "processors": ["batch"],
                    "exporters": ["jaeger_storage_exporter"],
                }
            },
            "telemetry": {
                "resource": {"service.name": "jaeger"},
                "metrics": {"level": "none"},
                "logs": {"level": "info"},
            },
        },
        "extensions": {
            "jaeger_query": {
                "storage": {"traces": "memstore"},
                # On by default in v2: Jaeger would export its own spans to localhost:4317,
                # i.e. to whatever else listens there, and wait for it at shutdown.
                "enable_tracing": False,
                "http": {"endpoint": f"{HOST}:{ports['query_http']}"},
                "grpc": {"endpoint": f"{HOST}:{ports['query_grpc']}"},
            },
            "jaeger_storage": {"backends": {"memstore": {"memory": {"max_traces": 100000}}}},
            "healthcheckv2": {
                "use_v2": True,
                "http": {"endpoint": f"{HOST}:{ports['health']}"},
            },
        },
        "receivers": {
            "otlp": {
                "protocols": {
                    "grpc": {"endpoint": f"{HOST}:{ports['otlp_grpc']}"},
                    "http": {"endpoint": f"{HOST}:{ports['otlp_http']}"},
                }
            }
        },
        "processors": {"batch": {}},
        "exporters": {"jaeger_storage_exporter": {"trace_storage": "memstore"}},
    }


@contextlib.contextmanager
def run_jaeger(binary: Path, workdir: Path, startup_timeout: float = 60.0) -> Iterator[Jaeger]:
    workdir.mkdir(parents=True, exist_ok=True)
    ports = {
        k: free_port() for k in ("otlp_grpc", "otlp_http", "query_http", "query_grpc", "health")
    }
    config = workdir / "jaeger.yaml"
    config.write_text(yaml.safe_dump(jaeger_config(ports)))
    env = {**os.environ, "JAEGER_LISTEN_HOST": HOST}
    proc = ManagedProcess(
        "jaeger", [str(binary), f"--config={config}"], workdir / "jaeger.log", env=env
    ).start()
    jaeger = Jaeger(
        otlp_http_endpoint=f"http://{HOST}:{ports['otlp_http']}",
        otlp_grpc_endpoint=f"{HOST}:{ports['otlp_grpc']}",
        query_url=f"http://{HOST}:{ports['query_http']}",
        health_url=f"http://{HOST}:{ports['health']}/status",
        process=proc,
    )
    try:

        def up() -> bool:
            proc.check_alive()
            return (
                http_get(jaeger.health_url)[0] == 200
                and http_get(f"{jaeger.query_url}/api/v3/services")[0] == 200
            )

        try:
            wait_until("jaeger health and query API", up, timeout=startup_timeout)
        except E2EError as err:
            raise E2EError(f"{err}\n{proc.tail()}") from None
        yield jaeger
    finally:
        proc.stop()


@contextlib.contextmanager
def volume_provisioner(
    cluster: Cluster, host_root: Path | None = None, interval: float = 1.0
) -> Iterator[None]:
    """Play a cluster's dynamic volume provisioner, which the harness's control plane lacks.

    A real cluster (kind's local-path, a cloud CSI driver) gives each pending claim a volume;
    without one the managed Redis (persistence on by default) never schedules. For each
    pending claim this makes a hostPath PersistentVolume of the claim's size, pre-bound to it;
    kube-controller-manager's PV binder then binds the pair. kwok's pods never mount it; on a
    real node (``host_root``, the real-pod tier) the directory is made under ``host_root``
    first, writable by any user (hostPath ignores fsGroup, and Redis runs as a non-root UID).
    """
    import threading

    stop = threading.Event()
    made: set[str] = set()
    last_error: list[str] = []

    def provision_once() -> None:
        claims = cluster.get_json("pvc", "-A")["items"]
        for claim in claims:
            meta, spec = claim["metadata"], claim["spec"]
            if claim.get("status", {}).get("phase") != "Pending" or spec.get("volumeName"):
                continue
            if meta["uid"] in made:
                continue
            directory = (host_root or Path("/var/lib/e2e-volumes")) / meta["uid"]
            if host_root is not None:
                directory.mkdir(parents=True, exist_ok=True)
                directory.chmod(0o777)  # (mkdir's mode is masked by the umask)
            volume = {
                "apiVersion": "v1",
                "kind": "PersistentVolume",
                "metadata": {"name": f"e2e-{meta['uid']}"},
                "spec": {
                    "capacity": {"storage": spec["resources"]["requests"]["storage"]},
                    "accessModes": spec.get("accessModes") or ["ReadWriteOnce"],
                    "persistentVolumeReclaimPolicy": "Retain",
                    "storageClassName": spec.get("storageClassName") or "",
                    "claimRef": {
                        "namespace": meta["namespace"],
                        "name": meta["name"],
                        "uid": meta["uid"],
                    },
                    "hostPath": {"path": str(directory), "type": "Directory"},
                },
            }
            cluster.apply(volume)
            made.add(meta["uid"])

    def run() -> None:
        while not stop.wait(interval):
            try:
                provision_once()
            except Exception as exc:  # a transient API error: the next pass retries
                # Said once per distinct error (on stderr, which pytest shows for a failed
                # test): a provisioner that keeps failing otherwise surfaces only as a Redis
                # pod that never schedules.
                if [str(exc)] != last_error:
                    last_error[:] = [str(exc)]
                    print(f"e2e volume provisioner: {exc}", file=sys.stderr)

    thread = threading.Thread(target=run, name="e2e volume provisioner", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=10)
