"""The cost of RELAY_REDIS_ACK_REPLICAS: durable publishes acked by the master alone, or
once a replica has them (WAIT), with one WAIT shared by the publishes in flight (as built)
or one WAIT per publish.

Starts a master and a replica (redis-server, loopback) and publishes durable events through
`RedisBroker.publish` with ackReplicas 0 and 1, and through the publish connection with a
WAIT of its own after every event (what sharing saves). Each runs C publishers at once
(C sessions of one pod) and 1 alone; prints publishes per second and the latency of one
publish (p50, p99), the median row of `--repeat` runs, and the WAITs Redis ran per
publish; on uvloop as the relay runs.

    .venv/bin/python bench/ack_replicas.py [-n 20000] [-c 50] [--repeat 3]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import uvloop
from redis.asyncio import Redis

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from relay.broker import commands, keys, lua
from relay.broker.options import RedisOptions
from relay.broker.redis import RedisBroker
from relay.rooms import RoomPolicy
from support.processes import LOOPBACK, RedisProcess, wait_until

Publish = Callable[[int], Awaitable[object]]
ACK_TIMEOUT = 0.5
POLICY = RoomPolicy()


async def measure(publish: Publish, n: int, concurrency: int) -> tuple[float, float, float]:
    """Publishes per second, p50 and p99 latency (ms), `concurrency` publishers at once."""
    for i in range(500):  # warm up: connection open, script loaded
        await publish(-i - 1)
    latencies: list[float] = []
    counter = iter(range(n))

    async def publisher() -> None:
        for i in counter:
            start = time.perf_counter()
            await publish(i)
            latencies.append(time.perf_counter() - start)

    start = time.perf_counter()
    await asyncio.gather(*(publisher() for _ in range(concurrency)))
    elapsed = time.perf_counter() - start
    latencies.sort()
    p50, p99 = latencies[len(latencies) // 2], latencies[int(len(latencies) * 0.99)]
    return n / elapsed, p50 * 1e3, p99 * 1e3


def broker(url: str, ack_replicas: int) -> RedisBroker:
    return RedisBroker(
        (url,),
        f"bench-{ack_replicas}",
        RedisOptions(
            timeout=2.0,
            probe_interval=1.0,
            probe_timeout=1.0,
            ack_replicas=ack_replicas,
            ack_timeout=ACK_TIMEOUT,
        ),
    )


async def started(*brokers: RedisBroker) -> None:
    """Start them; a room of a shard whose Pub/Sub is not live yet is refused at once."""
    for made in brokers:
        await made.start()
    deadline = asyncio.get_running_loop().time() + 10
    while not all(made.ready for made in brokers):
        if asyncio.get_running_loop().time() > deadline:
            raise RuntimeError("the brokers' shard is not live after 10 s")
        await asyncio.sleep(0.05)


async def waits(admin: Redis) -> int:
    stats = await admin.info("commandstats")
    return int(stats.get("cmdstat_wait", {}).get("calls", 0))


async def main(url: str, n: int, concurrency: int, repeat: int) -> None:
    admin = Redis.from_url(url)
    master_only, replicated = broker(url, 0), broker(url, 1)
    own = broker(url, 0)  # its publish connection, driven by hand: a WAIT per event
    await started(master_only, replicated, own)
    script = commands.Script(lua.PUBLISH_DURABLE)

    async def wait_per_event(i: int) -> object:
        room = f"own:{i % 10}"
        sent, reply = await own.shard_for(room).publishes.evalsha_sent(
            script,
            [keys.meta(room), keys.log(room), keys.meta(room)],
            [keys.channel(room), "e0", 1000, 3600, 0, b"{", b"}", b"{", b"}"],
        )
        _, confirmed = own.shard_for(room).publishes.after(
            sent, "WAIT", 1, round(ACK_TIMEOUT * 1000)
        )
        if await confirmed < 1:
            raise RuntimeError("the replica did not confirm")
        return reply

    paths: dict[str, Publish] = {
        "ackReplicas 0 (master only)": lambda i: master_only.publish(
            f"m:{i % 10}", {"n": i}, ts=1, policy=POLICY
        ),
        "ackReplicas 1 (shared WAIT, as built)": lambda i: replicated.publish(
            f"r:{i % 10}", {"n": i}, ts=1, policy=POLICY
        ),
        "ackReplicas 1, a WAIT per publish (after it)": wait_per_event,
    }
    print(f"durable publishes through one pod's publish connection, n={n} per row")
    print(
        f"{'path':44} {'in flight':>9} {'publishes/s':>12} {'p50 ms':>8} {'p99 ms':>8} "
        f"{'WAITs/publish':>13}"
    )
    for name, publish in paths.items():
        for c in (1, concurrency):
            count = n if c > 1 else n // 4
            rows = []
            for _ in range(repeat):
                before = await waits(admin)
                rate, p50, p99 = await measure(publish, count, c)
                rows.append((rate, p50, p99, (await waits(admin) - before) / (count + 500)))
            rate, p50, p99, per = sorted(rows)[repeat // 2]  # the median run by throughput
            print(f"{name:44} {c:9} {rate:12.0f} {p50:8.3f} {p99:8.3f} {per:13.2f}")
    for b in (master_only, replicated, own):
        await b.close()
    await admin.aclose()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=20000, help="publishes per row")
    parser.add_argument("-c", type=int, default=50, help="concurrent publishers")
    parser.add_argument("--repeat", type=int, default=3, help="runs per row (median shown)")
    options = parser.parse_args()
    with tempfile.TemporaryDirectory() as workdir:
        master = RedisProcess(Path(workdir)).start()
        replica = RedisProcess(
            Path(workdir), extra_args=["--replicaof", LOOPBACK, str(master.port)]
        ).start()
        try:
            wait_until(
                lambda: "master_link_status:up" in replica.cli("INFO", "replication"),
                10,
                "the replica to sync",
            )
            uvloop.run(main(master.url, options.n, options.c, options.repeat))
        finally:
            replica.stop()
            master.stop()
