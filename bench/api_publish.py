"""HTTP publish throughput (single and batch) against WebSocket publish, in one run.

One relay server on one real Redis, one WebSocket member in the target room (so every
publish is delivered too). Each mode publishes N events to a durable room with ids
(acked, stored once) and prints events/s and the relay's CPU per event:

- ws:     one WebSocket connection, `publish` with `id`, `window` acks in flight;
- http:   POST /api/v1/rooms/{room}/events, `concurrency` requests in flight (keep-alive);
- batch:  POST /api/v1/publish, `batch` events per request, `concurrency` in flight.

Not a test: it measures. Figures on this shared machine are noisy; compare the ratios
within one run. `python bench/api_publish.py --help`.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from gamecluster_client import Connection as RelayClient
from procs import cpu_seconds
from support.processes import RedisProcess, RelayProcess

KEY = "b" * 40


async def drain(member: RelayClient, count: int) -> None:
    for _ in range(count):
        await member.receive(30)


async def ws_mode(relay: RelayProcess, room: str, n: int, window: int) -> None:
    ids = itertools.count()
    async with RelayClient(relay.url, timeout=30) as publisher:

        async def worker(share: int) -> None:
            for _ in range(share):
                await publisher.publish(room, {"n": 1}, id=f"ws-{next(ids)}")

        await asyncio.gather(*(worker(n // window) for _ in range(window)))


async def http_mode(relay: RelayProcess, room: str, n: int, concurrency: int) -> None:
    ids = itertools.count()
    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(
        base_url=relay.admin, headers={"x-api-key": KEY}, limits=limits
    ) as http:

        async def worker(share: int) -> None:
            for _ in range(share):
                answer = await http.post(
                    f"/api/v1/rooms/{room}/events", json={"data": {"n": 1}, "id": f"h-{next(ids)}"}
                )
                answer.raise_for_status()

        await asyncio.gather(*(worker(n // concurrency) for _ in range(concurrency)))


async def batch_mode(relay: RelayProcess, room: str, n: int, concurrency: int, size: int) -> None:
    ids = itertools.count()
    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(
        base_url=relay.admin, headers={"x-api-key": KEY}, limits=limits, timeout=30
    ) as http:

        async def worker(share: int) -> None:
            for _ in range(share):
                items = [
                    {"room": room, "data": {"n": 1}, "id": f"b-{next(ids)}"} for _ in range(size)
                ]
                answer = await http.post("/api/v1/publish", json={"items": items})
                answer.raise_for_status()

        await asyncio.gather(*(worker(n // concurrency // size) for _ in range(concurrency)))


async def measure(relay: RelayProcess, name: str, n: int, run: object) -> None:
    room = "bench:" + name.replace(" ", "-")
    pid = relay.proc.pid if relay.proc is not None else 0
    async with RelayClient(relay.url, timeout=30) as member:
        await member.join(room)
        cpu, start = cpu_seconds(pid), time.perf_counter()
        await asyncio.gather(run(room), drain(member, n))  # type: ignore[operator]
        elapsed, used = time.perf_counter() - start, cpu_seconds(pid) - cpu
    print(f"{name:>14}: {n / elapsed:8.0f} events/s   relay CPU {used / n * 1e6:7.1f} us/event")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=4000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--batch", type=int, default=100)
    args = parser.parse_args()
    n, c = args.events, args.concurrency
    with tempfile.TemporaryDirectory() as tmp:
        redis = RedisProcess(Path(tmp)).start()
        env = {
            "RELAY_REDIS_URLS": redis.url,
            "RELAY_AUTH": "none",
            "RELAY_API_KEYS": KEY,
            "RELAY_PUBLISH_RATE": "1000000",
            "RELAY_PUBLISH_BURST": "1000000",
            "RELAY_LOG_LEVEL": "warning",
        }
        relay = RelayProcess(Path(tmp), env, "bench").start()
        try:
            print(f"{n} events per mode, durable room, 1 member, {c} in flight")
            await measure(relay, "ws publish", n, lambda room: ws_mode(relay, room, n, c))
            await measure(relay, "http single", n, lambda room: http_mode(relay, room, n, c))
            await measure(
                relay,
                f"http batch {args.batch}",
                n,
                lambda room: batch_mode(relay, room, n, min(c, 4), args.batch),
            )
        finally:
            relay.stop()
            redis.stop()


if __name__ == "__main__":
    asyncio.run(main())
