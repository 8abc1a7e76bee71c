"""Build the TypeScript client (clients/js) once per test session, for the tests that run it.

`make js-build` is the one place that knows how (npm ci from the lock file when it changed,
then tsc + esbuild). Without node/npm the tests that need the package skip, saying so.
"""

from __future__ import annotations

import functools
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "clients" / "js"
BUNDLE = PACKAGE / "dist" / "browser" / "gamecluster-client.js"
VENDORED = ROOT / "service" / "relay" / "static" / "gamecluster-client.js"


@functools.cache
def _build() -> str | None:
    """None when built; else why it could not be (a reason to skip or fail with)."""
    missing = [tool for tool in ("node", "npm", "make") if shutil.which(tool) is None]
    if missing:
        return f"{', '.join(missing)} not installed: the TypeScript client tests need Node 20+"
    result = subprocess.run(
        ["make", "-s", "js-build"], cwd=ROOT, capture_output=True, text=True, timeout=600
    )
    if result.returncode != 0:
        raise RuntimeError(f"make js-build failed:\n{result.stdout}\n{result.stderr}")
    return None


def built_package() -> Path:
    """clients/js with dist/ freshly built; skips the calling test when Node is missing."""
    reason = _build()
    if reason is not None:
        pytest.skip(reason)
    return PACKAGE
