"""A full Redis (maxmemory reached, policy `noeviction`): writes are refused, nothing is lost.

The managed Redis runs `--maxmemory-policy noeviction` (docs/operations.md says why: an
evicted meta hash, stream or dedupe key would be lost history or a silent duplicate). Full,
Redis refuses every script's first write, so a durable publish either stores the event
whole or not at all: the publisher gets `unavailable` (counted in
relay_protocol_errors_total{code="unavailable"}) and retries later; every acked event stays
in the history; reads, joins and live delivery go on.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from gamecluster_client import Connection as RelayClient
from gamecluster_client import ServerError as RelayError
from support.metrics import metric_value
from support.processes import RedisProcess

pytestmark = pytest.mark.integration

PAYLOAD = "x" * 4096
MAX_PUBLISHES = 2000
"""Far more than fit in the limit below: the loop ends when Redis refuses, or the test fails."""


async def test_a_full_redis_refuses_publishes_and_loses_no_acked_event(
    tmp_path: Path, relay_factory
) -> None:
    server = RedisProcess(
        tmp_path, extra_args=["--maxmemory", "3mb", "--maxmemory-policy", "noeviction"]
    ).start()
    try:
        unlimited = {"RELAY_PUBLISH_RATE": "100000", "RELAY_PUBLISH_BURST": "100000"}
        pod = relay_factory("a", redis_urls=[server.url], env=unlimited)
        async with RelayClient(pod.url) as member, RelayClient(pod.url) as publisher:
            position = await member.join("full")
            acked: list[int] = []
            refused = None
            for n in range(MAX_PUBLISHES):
                try:
                    ack = await publisher.publish("full", {"n": n, "pad": PAYLOAD}, id=f"p{n}")
                except RelayError as error:
                    refused = error
                    break
                assert ack is not None
                acked.append(ack["offset"])
            assert refused is not None, "Redis never refused a write"
            assert refused.code == "unavailable"
            assert acked == list(range(1, len(acked) + 1)) and len(acked) > 10
            assert "OOM" in server.cli("INFO", "errorstats")
            # The member saw every acked event live, in order.
            live = [(await member.receive(timeout=5))["offset"] for _ in acked]
            assert live == acked
            # Still serving: ready, joins with recovery read the whole history, volatile
            # deliveries of members already subscribed keep flowing.
            assert pod.status() == 200
            async with RelayClient(pod.url) as late:
                since = {"epoch": position["epoch"], "offset": 0}
                joined = await late.join("full", since=since)
                assert joined["recovered"] is True and joined["offset"] == acked[-1]
                replay = [(await late.receive(timeout=5))["offset"] for _ in acked]
                assert replay == acked
            refusals = {"code": "unavailable"}
            assert metric_value(pod.metrics(), "relay_protocol_errors_total", refusals) >= 1
            # Room again: the refused publish goes through on retry, right after the last ack.
            server.cli("CONFIG", "SET", "maxmemory", "0")
            ack = await publisher.publish("full", {"n": "retry"}, id=f"p{len(acked)}")
            assert ack is not None and ack["offset"] == acked[-1] + 1
            assert (await member.receive(timeout=5))["offset"] == acked[-1] + 1
    finally:
        server.stop()
