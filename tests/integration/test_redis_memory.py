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
from support.waiting import eventually

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


async def test_a_full_redis_restarted_still_serves_reads_and_live_delivery(
    tmp_path: Path, relay_factory
) -> None:
    """Restarted full (its AOF loads past maxmemory: here a limit below its data), the
    Redis refuses every write; the relay's history check then cannot renew the marker (a
    SET, refused), which must not take the shard down: joins with recovery and deliveries
    go on, as on a Redis that filled up while running. (The marker left stale is safe: a
    later promotion is still told apart by the promoted server's `master_replid2`,
    relay.broker.redis.RedisShard._check_history.)"""
    server = RedisProcess(tmp_path, aof=True).start()
    try:
        pod = relay_factory("a", redis_urls=[server.url])
        async with RelayClient(pod.url) as publisher:
            epoch = (await publisher.join("full"))["epoch"]
            for n in range(1, 4):
                await publisher.publish("full", {"n": n, "pad": PAYLOAD}, id=f"p{n}")
        server.stop()  # a clean SHUTDOWN: every acked event is in the AOF
        server.extra_args = ["--maxmemory", "1", "--maxmemory-policy", "noeviction"]
        server.start()
        assert "OOM" in server.cli("SET", "probe-of-the-test", "x")  # full
        log = pod.log.read_text
        await eventually(lambda: "restarted (history" in log(), 15, "the restart seen")
        await eventually(lambda: pod.status() == 200, 15, "the relay ready again")
        async with RelayClient(pod.url) as member, RelayClient(pod.url) as late:
            joined = await late.join("full", since={"epoch": epoch, "offset": 0})
            assert joined["recovered"] is True and joined["offset"] == 3
            await member.join("full")
            with pytest.raises(RelayError) as refused:
                await late.publish("full", {"n": 4}, id="p4")
            assert refused.value.code == "unavailable"
            server.cli("CONFIG", "SET", "maxmemory", "0")  # room again: publishes resume
            ack = await late.publish("full", {"n": 4}, id="p4")
            assert ack is not None and ack["offset"] == 4
            assert (await member.receive(timeout=5))["offset"] == 4
    finally:
        server.stop()
