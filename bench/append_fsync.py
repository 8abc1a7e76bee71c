"""The cost of `redis.appendFsync: always`: durable publishes of one pod on a redis-server
with AOF `appendfsync everysec` (the managed default) and `always` (an fsync per write).

Starts one redis-server per mode (loopback, AOF in a directory of `--dir`, which must be a
real disk: on tmpfs an fsync costs nothing) and publishes durable events through
`RedisBroker.publish` as a relay pod does, C publishers at once (C sessions of one pod) and
1 alone; prints publishes per second and the latency of one publish (p50, p99), the median
row of `--repeat` runs, and the filesystem the AOF was on. Redis's fsync under `always`
happens before it replies, so its cost lands on every publish's latency; concurrent
publishes share an fsync when Redis batches their writes in one event-loop turn.

    .venv/bin/python bench/append_fsync.py [-n 20000] [-c 50] [--repeat 3] [--dir DIR]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from ack_replicas import broker, measure, started
from relay.rooms import RoomPolicy
from support.processes import RedisProcess

POLICY = RoomPolicy()
MODES = ("everysec", "always")


async def main(urls: dict[str, str], n: int, concurrency: int, repeat: int) -> None:
    brokers = {mode: broker(url, 0) for mode, url in urls.items()}
    await started(*brokers.values())
    print(f"durable publishes through one pod's publish connection, n={n} per row")
    print(f"{'appendfsync':12} {'in flight':>9} {'publishes/s':>12} {'p50 ms':>8} {'p99 ms':>8}")
    rates: dict[tuple[str, int], float] = {}
    for c in (1, concurrency):
        for mode, made in brokers.items():
            count = n if c > 1 else n // 4
            rows = [
                await measure(
                    lambda i, made=made: made.publish(
                        f"room:{i % 10}", {"n": i}, ts=1, policy=POLICY
                    ),
                    count,
                    c,
                )
                for _ in range(repeat)
            ]
            rate, p50, p99 = sorted(rows)[repeat // 2]  # the median run by throughput
            rates[mode, c] = rate
            print(f"{mode:12} {c:9} {rate:12.0f} {p50:8.3f} {p99:8.3f}")
    for c in (1, concurrency):
        ratio = rates["always", c] / rates["everysec", c]
        print(f"always / everysec, {c} in flight: {ratio:.2f}x the publishes per second")
    for made in brokers.values():
        await made.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=20000, help="publishes per row")
    parser.add_argument("-c", type=int, default=50, help="concurrent publishers")
    parser.add_argument("--repeat", type=int, default=3, help="runs per row (median shown)")
    parser.add_argument("--dir", default=None, help="where the AOF files go (a real disk)")
    options = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=options.dir) as workdir:
        found = subprocess.run(
            ["df", "--output=fstype", workdir], capture_output=True, text=True, check=False
        )
        print(f"AOF on {found.stdout.split()[-1] if found.stdout else '?'} ({workdir})")
        servers = {
            mode: RedisProcess(Path(workdir) / mode, aof=True, extra_args=["--appendfsync", mode])
            for mode in MODES
        }
        for server in servers.values():
            server.workdir.mkdir()
            server.start()
        try:
            urls = {mode: server.url for mode, server in servers.items()}
            uvloop.run(main(urls, options.n, options.c, options.repeat))
        finally:
            for server in servers.values():
                server.stop()
