"""The relay's load reports, read back by the operator's autoscaler source (relay -> operator)."""

from __future__ import annotations

import asyncio

import pytest

from gamecluster.load import RedisLoadSource
from gamecluster_client import Connection
from support.processes import RedisProcess

pytestmark = pytest.mark.integration


async def settled_total(urls: list[str], expected: int) -> int | None:
    """The operator's reading, polled (bounded: 100 x 0.1 s) until it shows `expected`."""
    source = RedisLoadSource()
    total = None
    for _ in range(100):
        total = await asyncio.to_thread(source.total_connections, urls)
        if total == expected:
            break
        await asyncio.sleep(0.1)
    return total


async def test_operator_reads_the_connections_every_pod_reports(
    redis_factory, relay_factory
) -> None:
    shards: list[RedisProcess] = [redis_factory(), redis_factory()]
    urls = [s.url for s in shards]
    fast = {"RELAY_LOAD_REPORT_SECONDS": "0.2"}
    pod_a = relay_factory("a", redis_urls=urls, env=fast)
    pod_b = relay_factory("b", redis_urls=urls, env=fast)
    async with Connection(pod_a.url), Connection(pod_a.url), Connection(pod_b.url) as last:
        assert await settled_total(urls, 3) == 3
        await last.close()
        assert await settled_total(urls, 2) == 2
