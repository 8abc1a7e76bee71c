"""The relay's load reports, read back by the operator's autoscaler source (relay -> operator).

The operator reads exactly the keys of the ready pods (node id = pod name) from shard 0, with
no SCAN; a ready pod whose report is missing makes the reading unknown, not low.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from gamecluster.load import Reading, ReadyPod, RedisLoadSource
from gamecluster_client import Connection
from support.processes import RedisProcess

pytestmark = pytest.mark.integration

LONG_READY = datetime.now(UTC) - timedelta(hours=1)


async def settled(url: str, pods: list[str], expected: int | None) -> Reading:
    """The operator's reading, polled (bounded: 100 x 0.1 s) until its total is `expected`."""
    source = RedisLoadSource()
    ready = [ReadyPod(name, LONG_READY) for name in pods]
    reading = Reading()
    for _ in range(100):
        reading = await asyncio.to_thread(source.read, url, ready, datetime.now(UTC))
        if reading.total == expected:
            break
        await asyncio.sleep(0.1)
    return reading


async def test_operator_reads_the_connections_every_pod_reports(
    redis_factory, relay_factory
) -> None:
    shards: list[RedisProcess] = [redis_factory(), redis_factory()]
    urls = [s.url for s in shards]
    fast = {"RELAY_LOAD_REPORT_SECONDS": "0.2"}
    pod_a = relay_factory("a", redis_urls=urls, env=fast)
    pod_b = relay_factory("b", redis_urls=urls, env=fast)
    async with Connection(pod_a.url), Connection(pod_a.url), Connection(pod_b.url) as last:
        reading = await settled(urls[0], ["a", "b"], 3)
        assert reading.per_pod == {"a": 2, "b": 1}
        await last.close()
        assert (await settled(urls[0], ["a", "b"], 2)).total == 2
        # A ready pod that never reported (here: no such relay) makes the load unknown.
        unknown = await settled(urls[0], ["a", "b", "ghost"], None)
        assert unknown.total is None
        assert unknown.unknown is not None and "ghost" in unknown.unknown


async def test_no_ready_pod_is_unknown_not_zero() -> None:
    reading = await asyncio.to_thread(
        RedisLoadSource().read, "redis://127.0.0.1:1", [], datetime.now(UTC)
    )
    assert reading.total is None and reading.unknown is not None


async def test_an_unreachable_shard_is_unknown_not_low() -> None:
    reading = await asyncio.to_thread(
        RedisLoadSource(timeout_seconds=0.5).read,
        "redis://127.0.0.1:1",
        [ReadyPod("a", LONG_READY)],
        datetime.now(UTC),
    )
    assert reading.total is None
    assert reading.unknown is not None and "unreachable" in reading.unknown
