"""Client CPU per publish: redis-py's EVALSHA against the lean command connection.

Starts its own redis-server on loopback, runs the durable publish script N times through
each path, one at a time (one session publishing) and C at a time (C sessions of one pod
publishing at once), on uvloop as the relay runs, and prints the publishing process's CPU
(user + system, time.process_time) per publish. Redis's own CPU is not counted: it is
the same script in every path. Also `RedisBroker.publish` end to end (envelope, keys,
dedupe key), which is what a session calls.

    .venv/bin/python bench/publish_path.py [-n 5000] [-c 20] [--repeat 3]
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
from support.processes import RedisProcess

Publish = Callable[[int], Awaitable[object]]


def script_args(n: int) -> tuple[list[str], list[str | int | bytes]]:
    room = f"bench:{n % 10}"
    head = b'{"v":1,"node":"bench","room":"' + room.encode() + b'","ts":1,"offset":'
    event = b'{"op":"event","room":"' + room.encode() + b'","offset":'
    return (
        [keys.meta(room), keys.log(room), keys.dedupe(room, None, f"b{n}")],
        [keys.channel(room), "e0", 1000, 3600, 300, head, b"}", event, b',"data":{"x":1}}'],
    )


async def cpu_per_call(publish: Publish, n: int, concurrency: int) -> float:
    """Client CPU (us) per call, `concurrency` callers each publishing in turn."""
    for i in range(200):  # warm up: connections open, scripts loaded
        await publish(-i - 1)
    counter = iter(range(n))

    async def caller() -> None:
        for i in counter:
            await publish(i)

    start = time.process_time()
    await asyncio.gather(*(caller() for _ in range(concurrency)))
    return (time.process_time() - start) / n * 1e6


async def main(url: str, n: int, concurrency: int, repeat: int) -> None:
    client = Redis.from_url(url, socket_timeout=2.0, socket_connect_timeout=2.0)
    script = client.register_script(lua.PUBLISH_DURABLE)
    lean = commands.CommandConnection(client, url=url, timeout=2.0)
    lean_script = commands.Script(lua.PUBLISH_DURABLE)
    broker = RedisBroker((url,), "bench", RedisOptions(probe_interval=1.0, probe_timeout=1.0))
    await broker.start()  # a room of a shard not live yet is refused at once
    for _ in range(200):
        if broker.ready:
            break
        await asyncio.sleep(0.05)
    else:
        raise RuntimeError("the broker's shard is not live after 10 s")
    policy = RoomPolicy()

    async def via_redis_py(i: int) -> object:
        k, a = script_args(i)
        return await script(keys=k, args=a)

    async def via_commands(i: int) -> object:
        k, a = script_args(i)
        return await lean.evalsha(lean_script, k, a)

    async def via_broker(i: int) -> object:
        return await broker.publish(f"bench:{i % 10}", {"x": i}, ts=1, policy=policy)

    paths: dict[str, Publish] = {
        "redis-py Script (EVALSHA)": via_redis_py,
        "commands.CommandConnection": via_commands,
        "RedisBroker.publish (as built)": via_broker,
    }
    results: dict[tuple[str, int], list[float]] = {}
    for _ in range(repeat):
        for name, publish in paths.items():
            for c in (1, concurrency):
                results.setdefault((name, c), []).append(await cpu_per_call(publish, n, c))
    print(f"client CPU per publish, us (median of {repeat}; n={n})")
    print(f"{'path':34} {'1 in flight':>12} {f'{concurrency} in flight':>14}")
    for name in paths:
        one = sorted(results[(name, 1)])[repeat // 2]
        many = sorted(results[(name, concurrency)])[repeat // 2]
        print(f"{name:34} {one:12.1f} {many:14.1f}")
    lean.close()
    await broker.close()
    await client.aclose()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=5000, help="publishes per measurement")
    parser.add_argument("-c", type=int, default=20, help="concurrent publishers")
    parser.add_argument("--repeat", type=int, default=3)
    options = parser.parse_args()
    with tempfile.TemporaryDirectory() as workdir:
        redis = RedisProcess(Path(workdir)).start()
        try:
            uvloop.run(main(redis.url, options.n, options.c, options.repeat))
        finally:
            redis.stop()
