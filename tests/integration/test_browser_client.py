"""The demo page and its plain-JavaScript client, against a real relay."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import httpx
import pytest

import relay

pytestmark = pytest.mark.integration

RELAY_JS = Path(relay.__file__).parent / "static" / "relay.js"
RESUME_CHECK = Path(__file__).parent / "js" / "resume_check.js"


def test_demo_page_and_client_are_served(relay_factory) -> None:
    pod = relay_factory("web")
    page = httpx.get(pod.http + "/", timeout=5)
    assert page.status_code == 200
    assert "text/html" in page.headers["content-type"]
    assert '<script src="relay.js">' in page.text
    script = httpx.get(pod.http + "/relay.js", timeout=5)
    assert script.status_code == 200
    assert "class RelayClient" in script.text
    assert httpx.get(pod.http + "/readyz", timeout=5).status_code == 200  # routes still win


def test_browser_client_resumes_after_its_socket_is_cut(relay_factory) -> None:
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is not installed: the browser client test runs it (Node 20+)")
    pod = relay_factory("web", env={"RELAY_PUBLISH_RATE": "1000", "RELAY_PUBLISH_BURST": "1000"})
    result = subprocess.run(
        [node, "--experimental-websocket", str(RESUME_CHECK), str(RELAY_JS), pod.url],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1]) == ["one", "two", "three"]
