"""Fan-out benchmark: R rooms x S subscribers split over two relay servers on one Redis.

Prints delivered messages/s, publish-to-delivery latency percentiles and server CPU
per delivered message (user + system time of both relay processes, so the kernel's
send work is counted; Redis's CPU is printed apart). Not a test: it asserts nothing, it
measures. Run it with `make bench` or `python bench/fanout.py --help`; compare figures
as ratios within one run, since these machines are shared and noisy.

`--compare-floor` first runs the same load against bench/floor.py (one process, no
broker, each event framed once and written to every member) and prints the relay's CPU
per delivery as a multiple of that floor.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import orjson
from websockets.asyncio.client import ClientConnection, connect

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from procs import cpu_seconds, pin
from support.processes import (
    LOOPBACK,
    RedisProcess,
    RelayProcess,
    free_port,
    stop_process,
    wait_until,
)

FLOOR = Path(__file__).resolve().parent / "floor.py"


@dataclass
class Server:
    url: str
    pid: int


class FloorProcess:
    """bench/floor.py on a free loopback port."""

    def __init__(self) -> None:
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"ws://{LOOPBACK}:{self.port}/ws"

    def start(self) -> FloorProcess:
        self.proc = subprocess.Popen([sys.executable, str(FLOOR), "--port", str(self.port)])

        def listening() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"bench/floor.py exited {self.proc.returncode}")
            try:
                socket.create_connection((LOOPBACK, self.port), timeout=0.2).close()
            except OSError:
                return False
            return True

        wait_until(listening, 10, f"bench/floor.py on port {self.port}")
        return self

    def stop(self) -> None:
        stop_process(self.proc)


class Subscriber:
    def __init__(self) -> None:
        self.latencies_ns: list[int] = []
        self.count = 0

    async def run(self, ws: ClientConnection) -> None:
        async for frame in ws:
            now = time.time_ns()
            for line in str(frame).split("\n"):
                message = orjson.loads(line)
                if message.get("op") == "event":
                    self.count += 1
                    self.latencies_ns.append(now - message["data"]["t"])


async def join(url: str, room: str) -> ClientConnection:
    ws = await connect(url, max_size=None, compression=None)
    await ws.recv()  # welcome
    await ws.send(orjson.dumps({"op": "join", "room": room, "ref": "j"}).decode())
    while orjson.loads(str(await ws.recv()).split("\n")[0]).get("op") != "joined":
        pass
    return ws


async def publish(url: str, room: str, per_second: float, seconds: float) -> int:
    ws = await connect(url, max_size=None, compression=None)
    await ws.recv()
    sent, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        due = int(elapsed * per_second) + 1
        while sent < due:
            body = {"op": "publish", "room": room, "data": {"t": time.time_ns(), "n": sent}}
            await ws.send(orjson.dumps(body).decode())
            sent += 1
        await asyncio.sleep(1 / per_second)
    await ws.close()
    return sent


async def measure(
    args: argparse.Namespace, pods: list[Server], others: tuple[int, ...] = ()
) -> dict[str, float]:
    """Subscribers and publishers spread over `pods`, whose CPU is summed; the CPU of
    `others` (Redis) is reported apart."""
    subscribers: list[Subscriber] = []
    sockets: list[ClientConnection] = []
    readers = []
    n = len(pods)
    for r in range(args.rooms):
        for s in range(args.subs):
            ws = await join(pods[s % n].url, f"bench:{r}")
            sub = Subscriber()
            subscribers.append(sub)
            sockets.append(ws)
            readers.append(asyncio.create_task(sub.run(ws)))
    # Publishes/s per publisher connection for the target. A connection's publishes are
    # handled in order, one broker round trip each, so spread them over several.
    per_publisher = args.rate / (args.rooms * args.subs * args.publishers)
    await asyncio.sleep(0.5)
    cpu_before = [cpu_seconds(p.pid) for p in pods]
    others_before = [cpu_seconds(pid) for pid in others]
    start = time.perf_counter()
    sent = sum(
        await asyncio.gather(
            *(
                publish(pods[(r + p) % n].url, f"bench:{r}", per_publisher, args.seconds)
                for r in range(args.rooms)
                for p in range(args.publishers)
            )
        )
    )
    await asyncio.sleep(1.0)  # let the last events arrive
    elapsed = time.perf_counter() - start
    cpu = sum(cpu_seconds(p.pid) for p in pods) - sum(cpu_before)
    cpu_others = sum(cpu_seconds(pid) for pid in others) - sum(others_before)
    for task in readers:
        task.cancel()
    for ws in sockets:
        await ws.close()

    delivered = sum(s.count for s in subscribers)
    latencies = sorted(x for s in subscribers for x in s.latencies_ns)
    q = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else [0.0] * 99
    result = {
        "delivered/s": delivered / (elapsed - 1.0),
        "p50 ms": q[49] / 1e6,
        "p99 ms": q[98] / 1e6,
        "CPU us/delivery": cpu / delivered * 1e6 if delivered else float("nan"),
    }
    if others:
        result["Redis us/delivery"] = cpu_others / delivered * 1e6 if delivered else float("nan")
    print(f"published {sent}, delivered {delivered} of {sent * args.subs} expected")
    for name, value in result.items():
        print(f"  {name:18} {value:10.2f}")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rooms", type=int, default=10)
    parser.add_argument(
        "--subs", type=int, default=20, help="subscribers per room, split over 2 pods"
    )
    parser.add_argument("--rate", type=float, default=4000, help="target deliveries per second")
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--publishers", type=int, default=2, help="publisher connections per room")
    parser.add_argument(
        "--policy",
        choices=["durable", "volatile", "both"],
        default="both",
        help="room policy; both runs volatile then durable and prints their ratios",
    )
    parser.add_argument(
        "--compare-floor",
        action="store_true",
        help="first run the same load against bench/floor.py (1 process, no broker) and "
        "print relay / floor CPU per delivery",
    )
    parser.add_argument(
        "--pin",
        choices=["none", "split"],
        default="none",
        help="split: this load generator on CPU 0, every server process (floor, or both "
        "relay pods and Redis) on CPU 1; none: leave placement to the scheduler",
    )
    args = parser.parse_args()
    if args.pin == "split":
        if len(os.sched_getaffinity(0)) < 2:
            parser.error("--pin split needs 2 CPUs")
        os.sched_setaffinity(0, {0})
    print(
        f"rooms={args.rooms} subs/room={args.subs} publishers/room={args.publishers} "
        f"target={args.rate:.0f} deliveries/s, {args.seconds}s per server, pin={args.pin}"
    )
    results: dict[str, dict[str, float]] = {}
    if args.compare_floor:
        results["floor"] = run_floor(args)
    policies = ["volatile", "durable"] if args.policy == "both" else [args.policy]
    for policy in policies:
        results[policy] = run(args, policy)
    if "volatile" in results and "durable" in results:
        print("durable / volatile (one run, same load):")
        for name, value in results["durable"].items():
            print(f"  {name:18} {value / results['volatile'][name]:10.2f}x")
    if "floor" in results:
        floor = results["floor"]["CPU us/delivery"]
        print("relay / floor, CPU per delivery (relay: both pods summed, Redis apart):")
        for policy in policies:
            relay = results[policy]["CPU us/delivery"]
            with_redis = relay + results[policy]["Redis us/delivery"]
            print(
                f"  {policy:9} {relay:7.1f} / {floor:5.1f} us = {relay / floor:5.2f}x"
                f"   (with Redis {with_redis / floor:5.2f}x)"
            )


def run_floor(args: argparse.Namespace) -> dict[str, float]:
    print("-- floor (bench/floor.py, 1 process)")
    floor = FloorProcess().start()
    try:
        assert floor.proc is not None
        if args.pin == "split":
            pin(floor.proc.pid, {1})
        return asyncio.run(measure(args, [Server(floor.url, floor.proc.pid)]))
    finally:
        floor.stop()


def run(args: argparse.Namespace, policy: str) -> dict[str, float]:
    print(f"-- {policy} rooms (2 relay pods, 1 Redis)")
    env = {
        "RELAY_ROOMS": f'[{{"match": "*", "policy": "{policy}"}}]',
        "RELAY_AUTH": "none",
        "RELAY_PUBLISH_RATE": "100000",
        "RELAY_PUBLISH_BURST": "100000",
        "RELAY_LOG_LEVEL": os.environ.get("BENCH_RELAY_LOG_LEVEL", "warning"),
    }
    with tempfile.TemporaryDirectory() as tmp:
        redis = RedisProcess(Path(tmp)).start()
        pods = [
            RelayProcess(Path(tmp), {**env, "RELAY_REDIS_URLS": redis.url}, n).start() for n in "ab"
        ]
        try:
            assert redis.proc is not None
            servers = []
            for pod in pods:
                assert pod.proc is not None
                servers.append(Server(pod.url, pod.proc.pid))
            if args.pin == "split":
                for pid in [redis.proc.pid, *(s.pid for s in servers)]:
                    pin(pid, {1})
            return asyncio.run(measure(args, servers, (redis.proc.pid,)))
        finally:
            for pod in pods:
                pod.stop()
            redis.stop()


if __name__ == "__main__":
    main()
