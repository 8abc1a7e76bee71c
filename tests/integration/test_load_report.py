"""The relay's load reports, read back by the operator's autoscaler source (relay -> operator)."""

from __future__ import annotations

import asyncio

import pytest

from gamecluster.load import RedisLoadSource
from relay.client import RelayClient
from support.processes import RedisProcess

pytestmark = pytest.mark.integration


async def wait_total(urls: list[str], expected: int) -> None:
    source = RedisLoadSource()
    for _ in range(100):  # bounded: 100 x 0.1 s
        if await asyncio.to_thread(source.total_connections, urls) == expected:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"load reports never summed to {expected}")


async def test_operator_reads_the_connections_every_pod_reports(
    redis_factory, relay_factory
) -> None:
    shards: list[RedisProcess] = [redis_factory(), redis_factory()]
    urls = [s.url for s in shards]
    fast = {"RELAY_LOAD_REPORT_SECONDS": "0.2"}
    pod_a = relay_factory("a", redis_urls=urls, env=fast)
    pod_b = relay_factory("b", redis_urls=urls, env=fast)
    async with RelayClient(pod_a.url), RelayClient(pod_a.url), RelayClient(pod_b.url) as last:
        await wait_total(urls, 3)
        await last.close()
        await wait_total(urls, 2)
