"""The TypeScript client (clients/js) in Node against real relay processes on one Redis.

Each scenario is a Node script in tests/integration/js/ that drives the built package
(dist/esm, with `ws` as the WebSocket) and prints one JSON line of facts asserted here. The
package's own unit tests (a scripted relay, node:test) run here too, so `make test` runs them.
"""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from pathlib import Path

import pytest

from support.jsclient import built_package
from support.processes import RedisProcess

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

SCENARIOS = Path(__file__).parent / "js"
SECRET = "js-client-test-secret-of-32-bytes+"
FAST = {"RELAY_PUBLISH_RATE": "2000", "RELAY_PUBLISH_BURST": "2000"}


def run_node(
    script: str, *args: str, env: dict[str, str] | None = None, flags: tuple[str, ...] = ()
) -> dict:
    package = built_package()
    result = subprocess.run(
        ["node", *flags, str(SCENARIOS / script), *args],
        capture_output=True,
        text=True,
        timeout=90,
        env={**os.environ, "GAMECLUSTER_CLIENT_DIR": str(package), **(env or {})},
    )
    assert result.returncode == 0, f"{script} exited {result.returncode}:\n{result.stderr}"
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_unit_suite_against_a_scripted_relay() -> None:
    package = built_package()
    result = subprocess.run(
        ["npm", "test", "--silent"], cwd=package, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "# fail 0" in result.stdout


def test_sigkilled_pod_client_resumes_on_the_other_and_gets_every_event_once(
    redis: RedisProcess, relay_factory
) -> None:
    pod_a = relay_factory("pod-a", redis_urls=[redis.url], env=FAST)
    pod_b = relay_factory("pod-b", redis_urls=[redis.url], env=FAST)
    assert pod_a.proc is not None
    rounds = 100
    room = f"match:{uuid.uuid4().hex[:8]}"
    facts = run_node("failover.mjs", pod_a.url, pod_b.url, str(pod_a.proc.pid), room, str(rounds))
    assert pod_a.proc.poll() is not None, "pod A should have been SIGKILLed by the scenario"
    # Every event of each publisher, once, in order; nothing else.
    assert facts["fromA"] == [f"a{n}" for n in range(rounds)]
    assert facts["fromB"] == [f"b{n}" for n in range(rounds)]
    assert facts["total"] == 2 * rounds
    assert facts["nodes"] == ["pod-a", "pod-b"]
    assert facts["disconnects"][0]["willReconnect"] is True
    # The rejoin on pod B replayed what was published while the player was away.
    _first, rejoin = facts["rejoins"]
    assert rejoin["recovered"] is True
    assert rejoin["offset"] > facts["offsetAtDisconnect"], facts
    assert facts["lost"] == 0 and facts["gaps"] == 0
    offsets = facts["ackOffsetsA"]
    assert len(offsets) == rounds and len(set(offsets)) == rounds  # each publish stored once
    missed = rejoin["offset"] - facts["offsetAtDisconnect"]
    print(f"back {facts['reconnectMs']} ms after SIGKILL; {missed} events replayed on pod B")


def test_without_ws_the_client_uses_the_global_websocket(relay_factory) -> None:
    pod = relay_factory("pod-a")
    room = f"match:{uuid.uuid4().hex[:8]}"
    facts = run_node("global_websocket.mjs", pod.url, room, flags=("--experimental-websocket",))
    assert facts == {
        "received": ["one", "two"],
        "ackOffset": 1,
        "node": "pod-a",
        "global": "function",
    }


def test_token_expiry_refresh_forbidden_join_and_refused_token(relay_factory) -> None:
    pod = relay_factory("pod-a", env={"RELAY_AUTH": "jwt", "RELAY_JWT_SECRET": SECRET, **FAST})
    facts = run_node("auth.mjs", pod.url, env={"RELAY_TEST_SECRET": SECRET})

    assert facts["forbidden"] == {"name": "RelayError", "code": "forbidden", "isRelayError": True}

    expiry = facts["expiry"]
    assert expiry["received"] == list(range(expiry["sent"]))  # no gap, no duplicate
    assert expiry["gaps"] == 0
    assert any(d["code"] == 4001 and d["willReconnect"] for d in expiry["disconnects"]), expiry
    assert expiry["tokensIssued"] == 2  # prefetched before expiry, used for the reconnect

    refused = facts["refused"]
    assert refused["name"] == "UnauthorizedError" and refused["status"] == 401
    assert refused["getTokenCalls"] == 2  # the first token, then one fresh one: no loop
    assert refused["stops"][-1] == {"willReconnect": False, "error": "UnauthorizedError"}


def test_npm_pack_gives_a_tarball_that_installs_and_loads_as_esm_and_cjs(tmp_path: Path) -> None:
    package = built_package()
    packed = subprocess.run(
        ["npm", "pack", "--silent", "--pack-destination", str(tmp_path)],
        cwd=package,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    tarball = tmp_path / packed.stdout.strip().splitlines()[-1]
    app = tmp_path / "app"
    app.mkdir()
    (app / "package.json").write_text('{"name": "app", "private": true}')
    # No runtime dependency: installing the tarball needs no registry.
    subprocess.run(
        ["npm", "install", "--offline", "--no-audit", "--no-fund", str(tarball)],
        cwd=app,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    installed = app / "node_modules" / "@gamecluster" / "client"
    assert (installed / "dist" / "esm" / "index.d.ts").exists()
    assert (installed / "dist" / "cjs" / "index.d.ts").exists()
    assert not (installed / "node_modules").exists()
    check = (
        "const cjs = require('@gamecluster/client');"
        "import('@gamecluster/client').then((esm) => {"
        "  const ok = typeof cjs.Client === 'function' && typeof esm.Client === 'function'"
        "    && new esm.RelayError({op: 'error', code: 'forbidden', message: 'no'}).code"
        "       === 'forbidden';"
        "  console.log(ok ? 'ok' : 'broken');"
        "});"
    )
    loaded = subprocess.run(
        ["node", "-e", check], cwd=app, capture_output=True, text=True, timeout=30, check=True
    )
    assert loaded.stdout.strip() == "ok", loaded.stderr
