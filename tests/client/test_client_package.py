"""clients/python builds into a wheel that installs and imports with websockets alone."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest
import websockets

pytestmark = pytest.mark.client

ROOT = Path(__file__).resolve().parents[2]
CLIENT = ROOT / "clients" / "python"

PROBE = """
import importlib.metadata as md, json, sys
import gamecluster_client
from gamecluster_client import Client, ForbiddenError, UnauthorizedError
server = {"relay", "fastapi", "uvicorn", "redis", "pydantic", "kopf", "orjson", "opentelemetry"}
print(json.dumps({
    "dists": sorted(d.metadata["Name"] for d in md.distributions()),
    "requires": md.requires("gamecluster-client"),
    "server_modules": sorted(m for m in sys.modules if m.split(".")[0] in server),
    "file": gamecluster_client.__file__,
}))
"""


def run(*args: str | Path, cwd: Path | None = None) -> str:
    done = subprocess.run(
        [str(a) for a in args], capture_output=True, text=True, timeout=300, cwd=cwd
    )
    assert done.returncode == 0, f"{args} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def test_the_wheel_installs_into_a_fresh_venv_with_only_websockets(tmp_path: Path) -> None:
    # 1. Build the wheel offline: the build backend is the one pinned for dev.
    wheels = tmp_path / "wheels"
    run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-index",
        "--no-build-isolation", "--wheel-dir", wheels, CLIENT)  # fmt: skip
    [wheel] = wheels.glob("gamecluster_client-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "gamecluster_client/py.typed" in names
    assert not [n for n in names if n.startswith(("relay/", "gamecluster/"))]

    # 2. A fresh venv with no pip and no site packages; install the wheel into it...
    env = tmp_path / "venv"
    venv.create(env, with_pip=False, system_site_packages=False)
    python = env / "bin" / "python"
    run(sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index",
        wheel)  # fmt: skip
    # ...and websockets, the one dependency, copied from this environment (no network).
    site = Path(run(python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))").strip())
    ours = Path(sysconfig.get_path("purelib"))
    shutil.copytree(Path(websockets.__file__).parent, site / "websockets")
    [dist_info] = ours.glob(f"websockets-{websockets.__version__}.dist-info")
    shutil.copytree(dist_info, site / dist_info.name)

    # 3. Its requirement is met, it imports, and nothing of the server came along.
    run(sys.executable, "-m", "pip", "--python", python, "check")
    report = json.loads(run(python, "-I", "-c", PROBE, cwd=tmp_path))
    assert report["dists"] == ["gamecluster-client", "websockets"]
    assert report["requires"] == ["websockets<18,>=14.0"]
    assert report["server_modules"] == []
    assert report["file"].startswith(str(env))
