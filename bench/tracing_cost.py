"""What tracing costs the relay: throughput and latency at sampling ratios 0, 0.1 and 1.0.

Not a test: it prints numbers (docs/tracing.md quotes them). One run starts a Redis, an
OTLP/HTTP sink that counts and discards spans (its own process), and for each
configuration two fresh relay processes, then drives the same fan-out load through them
with gamecluster_client.Connection:

    ROOMS rooms; per room one publisher on pod A and SUBSCRIBERS members on each of pod
    A and pod B. Throughput phase: every publisher sends MESSAGES events as fast as acks
    allow (at most WINDOW unacknowledged); delivered msgs/s counts the events members
    received. Latency phase: RATE events/s in total, paced, far below saturation, so
    p50/p99 show the cost per event rather than queueing.

Configurations: tracing disabled (OTEL_SDK_DISABLED), then parentbased_traceidratio at
0, 0.1 and 1.0, exporting to the sink with the SDK's default batch settings. They run in
interleaved rounds (off, 0, 0.1, 1, off, 0, ...) so drift on the machine hits all alike;
each figure is the median over rounds. Latency is from the publisher's send to a
member's receipt, one clock (one process).

    .venv/bin/python bench/tracing_cost.py [--rounds 3] [--messages 1500]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from gamecluster_client import Connection
from support.processes import (
    LOOPBACK,
    RedisProcess,
    RelayProcess,
    free_port,
    wait_until,
)

CONFIGS: dict[str, dict[str, str]] = {
    "tracing disabled": {"OTEL_SDK_DISABLED": "true"},
    "ratio 0": {"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0"},
    "ratio 0.1": {
        "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
        "OTEL_TRACES_SAMPLER_ARG": "0.1",
    },
    "ratio 1.0": {
        "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
        "OTEL_TRACES_SAMPLER_ARG": "1.0",
    },
}
BASELINE = "ratio 0"
"""Sampling off: the ratios below are relative to it, as docs/tracing.md reports them."""


@dataclass
class Load:
    rooms: int
    subscribers: int
    messages: int
    window: int
    paced_rate: float
    """Events/s over all rooms in the latency phase (well below saturation)."""
    paced_messages: int


@dataclass
class Result:
    delivered_per_s: float
    p50_ms: float
    p99_ms: float
    spans: int


async def drive(pod_a: RelayProcess, pod_b: RelayProcess, load: Load) -> Result:
    """Connect the clients, warm up, then the throughput phase and the latency phase."""
    members: dict[int, list[Connection]] = {}
    publishers: list[Connection] = []
    try:
        for room in range(load.rooms):
            members[room] = []
            for pod in (pod_a, pod_b):
                for _ in range(load.subscribers):
                    member = Connection(pod.url, timeout=30)
                    await member.connect()
                    await member.join(f"bench:{room}")
                    members[room].append(member)
            publisher = Connection(pod_a.url, timeout=30)
            await publisher.connect()
            publishers.append(publisher)

        async def phase(count: int, paced: float | None) -> tuple[float, list[float]]:
            """Every publisher sends `count` events: as fast as acks allow (WINDOW
            unacked), or `paced` events/s without acks. Returns (delivered/s, latencies)."""
            latencies: list[float] = []

            async def receive(member: Connection) -> None:
                for _ in range(count):
                    event = await member.receive(timeout=30)
                    latencies.append((time.perf_counter_ns() - event["data"]) / 1e6)

            async def saturate(room: int, publisher: Connection) -> None:
                window = asyncio.Semaphore(load.window)

                async def one(n: int) -> None:
                    async with window:
                        await publisher.publish(f"bench:{room}", time.perf_counter_ns(), id=str(n))

                await asyncio.gather(*(one(n) for n in range(count)))

            async def pace(room: int, publisher: Connection, rate: float) -> None:
                due = time.perf_counter() + room / (rate * load.rooms)  # spread the rooms
                for _ in range(count):
                    await asyncio.sleep(max(0.0, due - time.perf_counter()))
                    await publisher.publish(f"bench:{room}", time.perf_counter_ns())
                    due += 1 / rate

            started = time.perf_counter()
            receivers = [asyncio.create_task(receive(m)) for ms in members.values() for m in ms]
            await asyncio.gather(
                *(
                    saturate(room, p) if paced is None else pace(room, p, paced)
                    for room, p in enumerate(publishers)
                )
            )
            await asyncio.gather(*receivers)
            return len(latencies) / (time.perf_counter() - started), latencies

        await phase(max(20, load.messages // 10), None)  # warm-up
        rate, _ = await phase(load.messages, None)
        _, latencies = await phase(load.paced_messages, load.paced_rate / load.rooms)
    finally:
        everyone = [m for ms in members.values() for m in ms] + publishers
        await asyncio.gather(*(client.close() for client in everyone))
    quantiles = statistics.quantiles(latencies, n=100)
    return Result(rate, quantiles[49], quantiles[98], 0)


def span_count(sink_port: int) -> int:
    return int(httpx.get(f"http://{LOOPBACK}:{sink_port}/count", timeout=5).text)


def run_config(
    workdir: Path, redis: RedisProcess, sink_port: int, env: dict[str, str], load: Load
) -> Result:
    relay_env = {
        "RELAY_REDIS_URLS": redis.url,
        "RELAY_AUTH": "none",
        "RELAY_LOG_LEVEL": "warning",
        "RELAY_PUBLISH_RATE": "1000000",
        "RELAY_PUBLISH_BURST": "1000000",
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://{LOOPBACK}:{sink_port}",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        **env,
    }
    pods = [RelayProcess(workdir, relay_env, name).start() for name in ("a", "b")]
    try:
        before = span_count(sink_port)
        result = asyncio.run(drive(pods[0], pods[1], load))
    finally:
        for pod in pods:
            pod.stop()  # SIGTERM: the relay flushes its spans before it exits
    result.spans = span_count(sink_port) - before
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rooms", type=int, default=10)
    parser.add_argument("--subscribers", type=int, default=2, help="per room and pod")
    parser.add_argument("--messages", type=int, default=1500, help="per publisher")
    parser.add_argument("--window", type=int, default=8, help="unacked publishes per publisher")
    parser.add_argument("--rate", type=float, default=200, help="latency phase: events/s, total")
    parser.add_argument("--paced", type=int, default=60, help="latency phase: events per room")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    load = Load(args.rooms, args.subscribers, args.messages, args.window, args.rate, args.paced)

    with tempfile.TemporaryDirectory(prefix="tracing-cost-") as tmp:
        workdir = Path(tmp)
        redis = RedisProcess(workdir).start()
        sink_port = free_port()
        sink = subprocess.Popen(
            [sys.executable, "-m", "support.otlp_sink", str(sink_port)],
            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent / "tests")},
        )
        try:
            wait_until(lambda: _up(sink_port), 10, "the OTLP sink")
            results: dict[str, list[Result]] = {name: [] for name in CONFIGS}
            for round_no in range(1, args.rounds + 1):
                for name, env in CONFIGS.items():
                    result = run_config(workdir, redis, sink_port, env, load)
                    results[name].append(result)
                    print(
                        f"round {round_no} {name:>16}: {result.delivered_per_s:9.0f} msg/s "
                        f"p50 {result.p50_ms:6.2f} ms  p99 {result.p99_ms:6.2f} ms  "
                        f"spans {result.spans}",
                        flush=True,
                    )
        finally:
            sink.terminate()
            sink.wait(10)
            redis.stop()

    print(
        f"\nload: {load.rooms} rooms x ({load.subscribers} members on each of 2 pods), "
        f"1 publisher per room on pod A; throughput: {load.messages} events per publisher, "
        f"window {load.window}; latency: {load.paced_rate:g} events/s paced; "
        f"median of {args.rounds} rounds; {os.cpu_count()} CPUs"
    )
    base = _median(results[BASELINE])
    print(f"{'configuration':>16} {'msg/s':>9} {'p50 ms':>7} {'p99 ms':>7} "
          f"{'rel. msg/s':>10} {'rel. p50':>8} {'rel. p99':>8} {'spans/run':>9}")  # fmt: skip
    for name in CONFIGS:
        m = _median(results[name])
        print(
            f"{name:>16} {m.delivered_per_s:9.0f} {m.p50_ms:7.2f} {m.p99_ms:7.2f} "
            f"{m.delivered_per_s / base.delivered_per_s:10.2f} {m.p50_ms / base.p50_ms:8.2f} "
            f"{m.p99_ms / base.p99_ms:8.2f} {m.spans:9d}"
        )


def _median(results: list[Result]) -> Result:
    return Result(
        statistics.median(r.delivered_per_s for r in results),
        statistics.median(r.p50_ms for r in results),
        statistics.median(r.p99_ms for r in results),
        int(statistics.median(r.spans for r in results)),
    )


def _up(port: int) -> bool:
    try:
        return httpx.get(f"http://{LOOPBACK}:{port}/count", timeout=0.5).status_code == 200
    except httpx.HTTPError:
        return False


if __name__ == "__main__":
    main()
