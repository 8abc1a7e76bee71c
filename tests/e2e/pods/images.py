"""Container images for the real-pod tier, built here without any container registry.

These machines reach Debian's archive and PyPI but no container registry, so every image is
built locally with buildah (vfs storage in the e2e cache, `--isolation chroot`, `--pull-never`):

- a Python base image from Debian packages (mmdebstrap: python3.11, venv, pip, `python` on PATH),
  a local stand-in for `python:3.11-slim-bookworm`, passed as the Dockerfile's PYTHON_IMAGE;
- a Node base image the same way, from Debian trixie (nodejs 20, the Dockerfile's major; bookworm
  has only 18, below clients/js's `engines`), a local stand-in for `node:20-bookworm-slim`, passed
  as NODE_IMAGE (the stage that builds clients/js's bundle; its npm reaches the npm registry);
- the project image from the real Dockerfile (its pip reaches PyPI);
- a Redis image from Debian's redis-server, under the name the operator deploys
  (`gamecluster.spec.Redis().image`): a local stand-in for the official image;
- the pause image, from the pause binary tools.sh builds (k8s.io/kubernetes build/pause).

Images are exported as docker archives and imported into the node's containerd (node.py).
The two bases, Redis and pause images are cached in the buildah store across sessions (their names
carry the recipe's version); the project image is built every session: that build is a test.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from gamecluster.spec import Redis

from ..cluster import E2EError

DEBIAN_MIRROR = "http://deb.debian.org/debian"
DEBIAN_SUITE = "bookworm"
# Node 20 is in trixie only. The js stage's one output is a JavaScript file, so the suite of
# that stage's rootfs does not reach the runtime image.
NODE_SUITE = "trixie"
# A recipe change must change the name: cached images are found by name.
BASE_PYTHON_IMAGE = "localhost/gamecluster-e2e-python:3.11-bookworm-r1"
BASE_NODE_IMAGE = "localhost/gamecluster-e2e-node:20-trixie-r1"
PROJECT_IMAGE = "docker.io/library/gamecluster:0.1.0"  # chart: repository gamecluster, appVersion
REDIS_IMAGE = Redis().image  # what the operator puts in the Redis StatefulSet
PAUSE_IMAGE = "registry.k8s.io/pause:3.10.2"  # tools.sh PAUSE_VERSION; containerd sandbox_image
# The machine's extra CAs (a TLS-inspecting egress on some machines): trusted in the base images
# too, so that pip and npm inside the build reach PyPI and npm's registry as they do on the host.
HOST_EXTRA_CA_DIR = Path("/usr/local/share/ca-certificates")

BASE_PACKAGES = (
    "python3.11",
    "python3-venv",
    "python3-pip",
    "python-is-python3",
    "ca-certificates",
)
NODE_PACKAGES = ("nodejs", "npm", "ca-certificates")
# Node's TLS trusts its own bundled CAs, not /etc/ssl/certs: point it at the system bundle
# (with the machine's extra CAs in it) so that npm ci reaches the registry through the egress.
NODE_ENV = ("NODE_EXTRA_CA_CERTS=/etc/ssl/certs/ca-certificates.crt",)
REDIS_PACKAGES = ("redis-server", "redis-tools")
PATH_ENV = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass
class Buildah:
    """buildah with a store of its own (vfs: works on any filesystem, no overlay mounts)."""

    store: Path
    log: Path
    timings: dict[str, float] = field(default_factory=dict)

    def argv(self, *args: str) -> list[str]:
        return [
            "buildah",
            "--root",
            str(self.store / "root"),
            "--runroot",
            str(self.store / "run"),
            "--storage-driver",
            "vfs",
            *args,
        ]

    def run(self, *args: str, timeout: float = 1800.0, cwd: Path | None = None) -> str:
        return _run(self.argv(*args), self.log, timeout=timeout, cwd=cwd)

    def exists(self, image: str) -> bool:
        proc = subprocess.run(
            self.argv("inspect", "--type", "image", "--format", "{{.FromImageID}}", image),
            capture_output=True,
            text=True,
            check=False,
        )
        return proc.returncode == 0

    def timed(self, what: str, t0: float) -> None:
        self.timings[what] = round(time.monotonic() - t0, 1)
        with self.log.open("a") as out:
            out.write(f"# built {what} in {self.timings[what]} s\n")


def _run(argv: list[str], log: Path, *, timeout: float, cwd: Path | None = None) -> str:
    with log.open("a") as out:
        out.write(f"$ {' '.join(argv)}\n")
    proc = subprocess.run(
        argv, capture_output=True, text=True, timeout=timeout, cwd=cwd, check=False
    )
    with log.open("a") as out:
        out.write(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-30:])
        raise E2EError(f"{' '.join(argv[:6])}... failed ({proc.returncode}):\n{tail}")
    return proc.stdout.strip()


def _missing_commands(*names: str) -> list[str]:
    return [n for n in names if shutil.which(n) is None]


def _rootfs_image(
    b: Buildah,
    name: str,
    packages: tuple[str, ...],
    workdir: Path,
    cmd: str,
    env: tuple[str, ...] = (),
    suite: str = DEBIAN_SUITE,
) -> None:
    """mmdebstrap a minbase rootfs with `packages`, commit it as image `name` (from scratch)."""
    t0 = time.monotonic()
    tarball = workdir / f"{name.rsplit('/', 1)[-1].replace(':', '_')}.tar"
    hooks: list[str] = []
    extra = sorted(HOST_EXTRA_CA_DIR.glob("*.crt")) if HOST_EXTRA_CA_DIR.is_dir() else []
    if extra and "ca-certificates" in packages:
        hooks += [
            "--customize-hook=copy-in "
            + " ".join(map(str, extra))
            + " /usr/local/share/ca-certificates/",
            '--customize-hook=chroot "$1" update-ca-certificates',
        ]
    hooks.append('--customize-hook=rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*')
    _run(
        [
            "mmdebstrap",
            "--variant=minbase",
            f"--include={','.join(packages)}",
            *hooks,
            suite,
            str(tarball),
            DEBIAN_MIRROR,
        ],
        b.log,
        timeout=1200,
    )
    ctr = b.run("from", "--pull-never", "scratch")
    try:
        b.run("add", ctr, str(tarball), "/")
        env_args = [arg for e in (PATH_ENV, "LANG=C.UTF-8", *env) for arg in ("--env", e)]
        b.run("config", *env_args, "--cmd", cmd, ctr)
        b.run("commit", "--rm", ctr, name)
    except BaseException:
        subprocess.run(b.argv("rm", ctr), capture_output=True, check=False)
        raise
    finally:
        tarball.unlink(missing_ok=True)
    b.timed(name, t0)


def ensure_base_python(b: Buildah, workdir: Path) -> str:
    if not b.exists(BASE_PYTHON_IMAGE):
        _rootfs_image(b, BASE_PYTHON_IMAGE, BASE_PACKAGES, workdir, "python3")
    return BASE_PYTHON_IMAGE


def ensure_base_node(b: Buildah, workdir: Path) -> str:
    if not b.exists(BASE_NODE_IMAGE):
        _rootfs_image(
            b, BASE_NODE_IMAGE, NODE_PACKAGES, workdir, "node", NODE_ENV, suite=NODE_SUITE
        )
    return BASE_NODE_IMAGE


def ensure_redis(b: Buildah, workdir: Path) -> str:
    """Debian's redis-server (7.0 in bookworm) as the operator's Redis image name."""
    if not b.exists(REDIS_IMAGE):
        _rootfs_image(b, REDIS_IMAGE, REDIS_PACKAGES, workdir, "redis-server")
    return REDIS_IMAGE


def ensure_pause(b: Buildah, pause_binary: Path) -> str:
    if not b.exists(PAUSE_IMAGE):
        t0 = time.monotonic()
        ctr = b.run("from", "--pull-never", "scratch")
        try:
            b.run("copy", "--chmod", "0755", ctr, str(pause_binary), "/pause")
            b.run("config", "--entrypoint", '["/pause"]', "--user", "65535:65535", ctr)
            b.run("commit", "--rm", ctr, PAUSE_IMAGE)
        except BaseException:
            subprocess.run(b.argv("rm", ctr), capture_output=True, check=False)
            raise
        b.timed(PAUSE_IMAGE, t0)
    return PAUSE_IMAGE


def build_project(b: Buildah, context: Path, base: str, node_base: str) -> str:
    """`buildah bud` of the repository's Dockerfile on the local base images, with the
    compiled core's wheel built first on this machine (`make core-wheel`: the image build
    has no Rust toolchain; the Dockerfile copies core/dist in)."""
    t0 = time.monotonic()
    _run(["make", "core-wheel"], b.log, timeout=900, cwd=context)
    b.run(
        "bud",
        "--pull-never",
        "--isolation",
        "chroot",
        "--layers=false",
        "--build-arg",
        f"PYTHON_IMAGE={base}",
        "--build-arg",
        f"NODE_IMAGE={node_base}",
        "-t",
        PROJECT_IMAGE,
        "-f",
        str(context / "Dockerfile"),
        str(context),
        timeout=1800,
    )
    # The previous session's build is now untagged: without this the store grows ~0.5 GB a run.
    b.run("rmi", "--prune")
    b.timed(PROJECT_IMAGE, t0)
    return PROJECT_IMAGE


def run_in_image(b: Buildah, image: str, *cmd: str) -> str:
    """Run `cmd` in a container of `image` as the image's own user (buildah run, chroot)."""
    ctr = b.run("from", "--pull-never", image)
    try:
        return b.run("run", "--isolation", "chroot", ctr, "--", *cmd, timeout=300)
    finally:
        subprocess.run(b.argv("rm", ctr), capture_output=True, check=False)


def image_user(b: Buildah, image: str) -> str:
    return b.run("inspect", "--type", "image", "--format", "{{.OCIv1.Config.User}}", image)


def cri_ref(image: str) -> str:
    """The reference containerd's CRI resolves a pod's `image` to (docker.io/library/...)."""
    first = image.split("/", 1)[0]
    if "/" in image and ("." in first or ":" in first or first == "localhost"):
        return image
    return f"docker.io/{image}" if "/" in image else f"docker.io/library/{image}"


def export_archive(b: Buildah, image: str, path: Path) -> Path:
    """A docker-archive tarball of `image`, tagged as the CRI will look it up."""
    path.unlink(missing_ok=True)
    b.run("push", image, f"docker-archive:{path}:{cri_ref(image)}")
    return path


def missing_tools() -> list[str]:
    return _missing_commands("buildah", "mmdebstrap")
