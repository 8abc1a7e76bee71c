"""The demo page and the browser bundle of the TypeScript client, served by a real relay.

The relay serves a committed copy of clients/js's browser bundle (so `make run` needs no
Node); this test fails when that copy differs from a fresh build: run `make js-vendor`.
"""

from __future__ import annotations

import httpx
import pytest

from support.jsclient import BUNDLE, VENDORED, built_package

pytestmark = pytest.mark.integration


def test_demo_page_and_client_bundle_are_served(relay_factory) -> None:
    pod = relay_factory("web")
    page = httpx.get(pod.http + "/", timeout=5)
    assert page.status_code == 200
    assert "text/html" in page.headers["content-type"]
    assert '<script type="module" src="./demo.js">' in page.text
    game = httpx.get(pod.http + "/demo.js", timeout=5)
    assert game.status_code == 200
    assert "javascript" in game.headers["content-type"]
    assert 'import { Client } from "./gamecluster-client.js"' in game.text
    script = httpx.get(pod.http + "/gamecluster-client.js", timeout=5)
    assert script.status_code == 200
    assert "javascript" in script.headers["content-type"]  # module scripts need a JS type
    assert "var Client = class" in script.text and "export {" in script.text
    assert httpx.get(pod.http + "/relay.js", timeout=5).status_code == 404
    assert httpx.get(pod.http + "/readyz", timeout=5).status_code == 200  # routes still win


def test_committed_bundle_matches_a_fresh_build() -> None:
    built_package()
    assert VENDORED.read_bytes() == BUNDLE.read_bytes(), (
        "service/relay/static/gamecluster-client.js is stale: run `make js-vendor` and commit"
    )
