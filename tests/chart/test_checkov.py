"""checkov's Kubernetes checks on the rendered chart: nothing fails unless skipped with a reason.

`checkov --framework helm` needs the helm binary, so the chart is rendered with the Helm SDK
and the YAML is scanned with the kubernetes framework. Skips live next to the resource they
concern, as `checkov.io/skipN: "CKV_ID=reason"` annotations in the templates, so anyone who
scans the rendered chart gets the same verdict.

checkov runs from its own venv (.venv-tools/checkov, created here on first use from the
exact pins in requirements-checkov.txt): its dependency pins conflict with the project's.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from chart_support import CHART_DIR, REPO, VALUE_SETS, rendered_files

pytestmark = pytest.mark.chart

TOOLS_VENV = REPO / ".venv-tools" / "checkov"
REQUIREMENTS = Path(__file__).with_name("requirements-checkov.txt")
INSTALL_TIMEOUT = 280  # seconds; inside pytest-timeout's 300 for the first test using it
SCAN_TIMEOUT = 240
MIN_REASON = 20  # characters: a reason, not a placeholder


@pytest.fixture(scope="session")
def checkov() -> Path:
    """The checkov executable, installed once per requirements-checkov.txt content."""
    digest = hashlib.sha1(REQUIREMENTS.read_bytes()).hexdigest()[:12]
    stamp = TOOLS_VENV / f".installed-{digest}"
    executable = TOOLS_VENV / "bin" / "checkov"
    if not stamp.exists():
        # 1. A fresh venv from the interpreter running the tests (same Python version).
        subprocess.run(
            [sys.executable, "-m", "venv", "--clear", str(TOOLS_VENV)],
            check=True,
            timeout=60,
        )
        # 2. The locked set only: --no-deps keeps pip from resolving anything unpinned.
        subprocess.run(
            [
                str(TOOLS_VENV / "bin" / "python"),
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "--no-deps",
                "-r",
                str(REQUIREMENTS),
            ],
            check=True,
            timeout=INSTALL_TIMEOUT,
        )
        stamp.touch()
    assert executable.exists()
    return executable


def _scan(checkov: Path, directory: Path) -> dict[str, Any]:
    env = {
        **os.environ,
        # Offline and quiet: no platform calls, no update check, no guideline download.
        "BC_SKIP_MAPPING": "TRUE",
        "CHECKOV_RUN_SCA_PACKAGE_SCAN_V2": "FALSE",
        "LOG_LEVEL": "ERROR",
    }
    result = subprocess.run(
        [
            str(checkov),
            "--directory",
            str(directory),
            "--framework",
            "kubernetes",
            "--output",
            "json",
            "--compact",
            "--skip-download",
        ],
        capture_output=True,
        text=True,
        timeout=SCAN_TIMEOUT,
        env=env,
        check=False,
    )
    assert result.stdout.strip(), (
        f"checkov printed nothing (rc {result.returncode}): {result.stderr}"
    )
    report = json.loads(result.stdout)
    # One framework: one report object (a list when several frameworks ran).
    assert isinstance(report, dict), report
    assert report.get("check_type") == "kubernetes", report
    return report


def _write_rendered(directory: Path) -> None:
    for key in VALUE_SETS:
        target = directory / key
        target.mkdir(parents=True)
        for path, text in rendered_files(key).items():
            if path.endswith(".yaml"):
                (target / path.replace("/", "__")).write_text(text)
    crds = directory / "crds"
    crds.mkdir()
    for crd in (CHART_DIR / "crds").glob("*.yaml"):
        (crds / crd.name).write_text(crd.read_text())


@pytest.fixture(scope="module")
def chart_report(checkov: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    directory = tmp_path_factory.mktemp("rendered")
    _write_rendered(directory)
    return _scan(checkov, directory)


def test_no_check_fails_on_any_value_set(chart_report: dict[str, Any]) -> None:
    failed = [
        f"{c['check_id']} {c['check_name']}: {c['resource']} ({c['file_path']})"
        for c in chart_report["results"]["failed_checks"]
    ]
    assert failed == []
    passed = chart_report["results"]["passed_checks"]
    scanned = {c["file_path"].split("/")[1] for c in passed}
    assert scanned >= set(VALUE_SETS)
    assert len(passed) > 100


def test_every_skip_carries_a_reason(chart_report: dict[str, Any]) -> None:
    skipped = chart_report["results"]["skipped_checks"]
    assert skipped, "the templates carry skips; checkov did not see them"
    for check in skipped:
        reason = check.get("check_result", {}).get("suppress_comment", "")
        assert len(reason) >= MIN_REASON, f"{check['check_id']} on {check['resource']}: {reason!r}"


def test_checkov_catches_an_insecure_pod(checkov: Path, tmp_path: Path) -> None:
    (tmp_path / "pod.yaml").write_text(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: bad, namespace: games}\n"
        "spec:\n  containers:\n    - name: c\n      image: nginx:latest\n"
        "      securityContext: {privileged: true}\n"
    )
    report = _scan(checkov, tmp_path)
    failed = {c["check_id"] for c in report["results"]["failed_checks"]}
    assert {"CKV_K8S_16", "CKV_K8S_14"} <= failed  # privileged; image tag latest
