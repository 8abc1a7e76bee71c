"""Graceful drain on SIGTERM (issue: relay core, test 7)."""

from __future__ import annotations

import asyncio
import time

import pytest

from gamecluster_client import Connection as RelayClient
from support.waiting import eventually

pytestmark = pytest.mark.integration


async def test_sigterm_hands_sessions_over_and_exits_zero(relay_factory) -> None:
    pod = relay_factory("a", env={"RELAY_DRAIN_SECONDS": "3"})
    clients = [RelayClient(pod.url) for _ in range(3)]
    for client in clients:
        await client.connect()
        await client.join("r")

    started = time.monotonic()
    pod.terminate()
    await eventually(lambda: pod.status() == 503, 3, "/readyz to report draining")
    for client in clients:
        assert await client.receive(timeout=5) == {"op": "reconnect", "reason": "draining"}
        assert (await client.receive(timeout=5))["op"] == "closed"
        assert client.close_code == 1012
    assert pod.proc is not None
    assert await asyncio.to_thread(pod.proc.wait, 10) == 0
    assert time.monotonic() - started < 3 + 5
    for client in clients:
        await client.close()
