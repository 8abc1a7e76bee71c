"""Redis Cluster mode in numbers: durable publishes of one pod, and a failover's outage.

1. Durable publishes per second and latency through `RedisBroker` on one redis-server
   and through `RedisClusterBroker` on a 3-master cluster (loopback, same machine: the
   cluster's three processes share its cores, so this measures the relay's cost per
   publish, not the cluster's capacity), C publishers at once over 300 rooms.
2. A failover: 3 masters + 3 replicas (cluster-node-timeout 1 s), a room's master
   SIGKILLed while one publisher retries every 20 ms: how long publishes to that room get
   `unavailable`, and whether rooms of the other masters were refused meanwhile, with
   `cluster-require-full-coverage` yes (Redis's default: every node refuses commands,
   CLUSTERDOWN, while a slot has no master) and no.

    .venv/bin/python bench/redis_cluster.py [-n 20000] [-c 50]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from relay.broker import Broker, BrokerUnavailable, keys
from relay.broker.options import RedisOptions
from relay.broker.redis import RedisBroker
from relay.broker.slots import RedisClusterBroker
from relay.rooms import RoomPolicy
from support.processes import RedisProcess
from support.rediscluster import RedisCluster

POLICY = RoomPolicy()


async def ready(broker: Broker) -> Broker:
    await broker.start()
    deadline = time.monotonic() + 15
    while not broker.ready:
        if time.monotonic() > deadline:
            raise RuntimeError("the broker is not ready after 15 s")
        await asyncio.sleep(0.05)
    return broker


async def throughput(broker: Broker, n: int, concurrency: int) -> tuple[float, float, float]:
    for i in range(300):  # warm up: connections, scripts
        await broker.publish(f"room:{i}", i, ts=1, policy=POLICY)
    latencies: list[float] = []
    counter = iter(range(n))

    async def publisher() -> None:
        for i in counter:
            start = time.perf_counter()
            await broker.publish(f"room:{i % 300}", {"n": i}, ts=1, policy=POLICY)
            latencies.append(time.perf_counter() - start)

    start = time.perf_counter()
    await asyncio.gather(*(publisher() for _ in range(concurrency)))
    elapsed = time.perf_counter() - start
    latencies.sort()
    return n / elapsed, latencies[len(latencies) // 2] * 1e3, latencies[int(n * 0.99)] * 1e3


async def failover(workdir: Path, coverage: str) -> None:
    options = ["--cluster-require-full-coverage", coverage]
    cluster = RedisCluster(workdir, replicas=1, extra_args=options).start()
    try:
        broker = await ready(
            RedisClusterBroker(
                [cluster.nodes[0].url], "bench",
                RedisOptions(timeout=1.0, probe_interval=0.3, probe_timeout=1.0),
                refresh_seconds=1.0,
            )
        )  # fmt: skip
        room = "duel"
        master = cluster.owner(keys.slot_of_room(room))
        other = next(
            f"other:{i}"
            for i in range(1000)
            if cluster.owner(keys.slot_of_room(f"other:{i}")) is not master
        )
        await broker.publish(room, 0, ts=1, policy=POLICY, msg_id="m0")
        refused_elsewhere = 0
        master.kill()
        killed = time.monotonic()
        n = 1
        while True:
            try:
                await broker.publish(room, n, ts=1, policy=POLICY, msg_id=f"m{n}")
                break
            except BrokerUnavailable:
                pass
            try:
                await broker.publish(other, n, ts=1, policy=POLICY)
            except BrokerUnavailable:
                refused_elsewhere += 1
            n += 1
            await asyncio.sleep(0.02)
        outage = time.monotonic() - killed
        print(
            f"failover: the room's publishes refused for {outage:.2f} s after SIGKILL "
            f"(cluster-node-timeout 1 s), {n - 1} retries; publishes to a room of another "
            f"master refused meanwhile: {refused_elsewhere}"
        )
        await broker.close()
    finally:
        cluster.stop()


async def main(n: int, concurrency: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        (workdir / "single").mkdir()
        (workdir / "cluster").mkdir()
        single = RedisProcess(workdir / "single").start()
        cluster = RedisCluster(workdir / "cluster").start()
        try:
            print(f"durable publishes of one pod, n={n}, {concurrency} at once, 300 rooms")
            print(f"{'broker':44} {'publishes/s':>12} {'p50 ms':>8} {'p99 ms':>8}")
            for name, broker in (
                ("RedisBroker, 1 redis-server", RedisBroker(
                    (single.url,), "bench", RedisOptions(probe_interval=1.0, probe_timeout=1.0)
                )),
                ("RedisClusterBroker, 3 masters", RedisClusterBroker(
                    (cluster.nodes[0].url,), "bench",
                    RedisOptions(probe_interval=1.0, probe_timeout=1.0),
                )),
            ):  # fmt: skip
                await ready(broker)
                rate, p50, p99 = await throughput(broker, n, concurrency)
                print(f"{name:44} {rate:12.0f} {p50:8.3f} {p99:8.3f}")
                await broker.close()
        finally:
            single.stop()
            cluster.stop()
        for coverage in ("yes", "no"):
            print(f"cluster-require-full-coverage {coverage}")
            (workdir / f"ha-{coverage}").mkdir()
            await failover(workdir / f"ha-{coverage}", coverage)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=20000, help="publishes per row")
    parser.add_argument("-c", type=int, default=50, help="publishers at once")
    args = parser.parse_args()
    uvloop.run(main(args.n, args.c))
