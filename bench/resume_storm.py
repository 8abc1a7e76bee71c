"""A resume storm: SIGKILL a relay holding thousands of durable-room clients while events
flow; every client reconnects to the surviving relays and resumes from its last offset.

Real processes on loopback: one redis-server, three `relay serve` pods (durable rooms),
and one Node process (bench/js/storm.js) holding every client. `--victims` clients (5,000)
are on the first pod, `--bystanders` on each of the two others; client c is in room
storm:(c mod --rooms); `--publishers` sockets on each surviving pod (10) publish `--rate`
events/s (200) round-robin over the rooms, with ids (the acks give each room's top
offset). One connection's publishes are handled one at a time, a Redis round trip each,
so fewer sockets at the same rate measure that limit instead (docs/benchmarks.md). After a
warm-up the generator SIGKILLs the first pod and its clients reconnect the way
clients/js does (exponential backoff with full jitter, first bound 100 ms, cap 5 s;
an attempt with no `welcome`, or a join with no `joined`, within 10 s starts over), each
to a surviving pod picked at random (a load balancer that already took the dead pod out
of its endpoints), and rejoin with `since`.

It prints:
- time from the SIGKILL until every victim has resumed (its `joined` came and every event
  up to that offset after it), the resume time's p50 / p99 / max (the slowest client:
  starvation) and connection attempts per client;
- the feed checks of every client (victims and bystanders), after publishing stops and
  every client has reached its room's top: events missed (gaps), duplicates, re-syncs
  (`recovered: false`), clients still behind; all must be zero;
- how the victims split over the surviving pods, refusals (1013), timeouts and join
  refusals seen by clients;
- Redis's and each surviving pod's CPU from the kill until all resumed: total seconds and
  the peak share of one core over SAMPLE_SECONDS windows; the generator's own CPU;
- whether the survivors stayed responsive: the bystanders' publish-to-delivery latency
  during the storm (as the generator sees it, its own event-loop lag printed next to it,
  and as the pods see it: publish to fan-out, from relay_delivery_latency_seconds), and
  /readyz answer times (the operator's readiness probe gives up after 2 s; two failures
  in a row take the pod out of the load balancer).

By default the servers and Redis share CPU 1 and the generator has CPU 0, as in
bench/compare.py. Not a test: it prints numbers; compare runs on the same machine.

    .venv/bin/python bench/resume_storm.py [--victims 5000] [--bystanders 500] [--rate 200]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from procs import JsonLines, cpu_seconds, pin
from support.processes import RedisProcess, RelayProcess, stop_process

BENCH = Path(__file__).resolve().parent
NODE = shutil.which("node") or "node"
SERVER_CPU, GENERATOR_CPU = {1}, {0}
SAMPLE_SECONDS = 0.2
"""CPU sampling period: /proc counts 10 ms ticks, so one window resolves 5% of a core."""
READY_TIMEOUT = 2.0
"""The relay pods' readiness probe timeout (operator/gamecluster/manifests/relay.py:
timeoutSeconds 2, failureThreshold 2, every 5 s): two slower answers in a row and the
pod leaves the load balancer."""


@dataclass
class StormLoad:
    victims: int = 5000
    bystanders: int = 500
    rooms: int = 250
    publishers: int = 10
    rate: float = 200.0
    warmup: float = 3.0
    timeout: float = 120.0
    lb: str = "random"
    pin: bool = True
    extra_env: dict[str, str] = field(default_factory=dict)


class CpuSampler(threading.Thread):
    """Samples the CPU time of some processes every SAMPLE_SECONDS until stopped."""

    def __init__(self, pids: dict[str, int]) -> None:
        super().__init__(daemon=True)
        self.pids = pids
        self.samples: list[tuple[float, dict[str, float]]] = []
        self.halt = threading.Event()

    def sample(self) -> None:
        self.samples.append(
            (time.monotonic(), {name: cpu_seconds(pid) for name, pid in self.pids.items()})
        )

    def run(self) -> None:
        while not self.halt.wait(SAMPLE_SECONDS):
            self.sample()

    def stop(self) -> None:
        self.halt.set()
        self.join()
        self.sample()

    def summary(self, until: float) -> dict[str, tuple[float, float]]:
        """Per process: CPU seconds from the first sample until `until` (monotonic), and
        the peak share of one core over one sampling window in that span."""
        kept = [s for s in self.samples if s[0] <= until + SAMPLE_SECONDS] or self.samples[:2]
        out = {}
        for name in self.pids:
            total = kept[-1][1][name] - kept[0][1][name]
            peak = max(
                ((b[1][name] - a[1][name]) / (b[0] - a[0]) for a, b in itertools.pairwise(kept)),
                default=0.0,
            )
            out[name] = (total, peak)
        return out


class ReadyProber(threading.Thread):
    """GET /readyz on each surviving pod, one after another, until stopped."""

    def __init__(self, pods: list[RelayProcess]) -> None:
        super().__init__(daemon=True)
        self.pods = pods
        self.times: dict[str, list[float]] = {p.node_id: [] for p in pods}
        self.failed: dict[str, int] = {p.node_id: 0 for p in pods}
        self.in_a_row: dict[str, int] = {p.node_id: 0 for p in pods}
        """Most failed probes in a row (two make the operator's probe take the pod out)."""
        self.halt = threading.Event()

    def run(self) -> None:
        streak = {p.node_id: 0 for p in self.pods}
        with httpx.Client(timeout=10.0) as client:
            while not self.halt.wait(0.25):
                for pod in self.pods:
                    start = time.monotonic()
                    try:
                        ok = client.get(pod.http + "/readyz").status_code == 200
                    except httpx.HTTPError:
                        ok = False
                    took = time.monotonic() - start
                    self.times[pod.node_id].append(took)
                    if not ok or took > READY_TIMEOUT:
                        self.failed[pod.node_id] += 1
                        streak[pod.node_id] += 1
                        self.in_a_row[pod.node_id] = max(
                            self.in_a_row[pod.node_id], streak[pod.node_id]
                        )
                    else:
                        streak[pod.node_id] = 0

    def stop(self) -> None:
        self.halt.set()
        self.join()


def latency_buckets(pod: RelayProcess) -> dict[float, float]:
    """The pod's relay_delivery_latency_seconds histogram: upper bound -> cumulative count."""
    out: dict[float, float] = {}
    for family in text_string_to_metric_families(pod.metrics()):
        if family.name == "relay_delivery_latency_seconds":
            for sample in family.samples:
                if sample.name.endswith("_bucket"):
                    out[float(sample.labels["le"])] = sample.value
    return out


def bucket_quantile(before: dict[float, float], after: dict[float, float], q: float) -> str:
    """The bucket bound under which a share q of the observations between two scrapes fell."""
    bounds = sorted(after)
    counts = [after[b] - before.get(b, 0.0) for b in bounds]
    if not counts or counts[-1] <= 0:
        return "-"
    for bound, count in zip(bounds, counts, strict=True):
        if count >= q * counts[-1]:
            return f"<= {bound * 1000:,.1f} ms" if bound != float("inf") else "> 2.5 s"
    return "-"


class StormGenerator(JsonLines):
    """bench/js/storm.js: every client of the storm, in one Node process."""

    def __init__(self, config: dict[str, Any], pinned: bool) -> None:
        command = [NODE, str(BENCH / "js" / "storm.js"), json.dumps(config)]
        if pinned:
            command = ["taskset", "-c", ",".join(map(str, GENERATOR_CPU)), *command]
        super().__init__(command, "storm generator")

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.send({"cmd": "quit"})
                self.proc.wait(20)
            except (BrokenPipeError, subprocess.TimeoutExpired):
                pass
        stop_process(self.proc)  # type: ignore[arg-type]


def fmt_ms(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f} ms"


def run_storm(workdir: Path, load: StormLoad) -> dict[str, Any]:
    """One storm; prints as it goes and returns its figures."""
    env = {
        "RELAY_ROOMS": '[{"match": "*", "policy": "durable"}]',
        "RELAY_AUTH": "none",
        "RELAY_PUBLISH_RATE": "1000000",
        "RELAY_PUBLISH_BURST": "1000000",
        "RELAY_LOG_LEVEL": os.environ.get("BENCH_RELAY_LOG_LEVEL", "warning"),
        # The relay's own defaults, not the short test timeouts RelayProcess sets.
        "RELAY_REDIS_TIMEOUT": "2.0",
        "RELAY_PROBE_INTERVAL": "3.0",
        "RELAY_PROBE_TIMEOUT": "3.0",
        "RELAY_UNSUBSCRIBE_DELAY": "5.0",
        **load.extra_env,
    }
    # The generator holds every socket: raise its (inherited) open-file limit.
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    needed = load.victims + 2 * load.bystanders + 200
    if hard != resource.RLIM_INFINITY and hard < needed:
        raise SystemExit(f"the open-file limit ({hard}) is below the {needed} sockets needed")
    redis = RedisProcess(workdir).start()
    pods: list[RelayProcess] = []
    gen: StormGenerator | None = None
    try:
        for node in ("victim", "survivor-1", "survivor-2"):
            pods.append(RelayProcess(workdir, {**env, "RELAY_REDIS_URLS": redis.url}, node).start())
        assert redis.proc is not None
        server_pids = [redis.proc.pid, *(p.proc.pid for p in pods if p.proc is not None)]
        if load.pin:
            for pid in server_pids:
                pin(pid, SERVER_CPU)
        config = {
            "urls": [p.url for p in pods],
            "victim": 0,
            "victims": load.victims,
            "bystanders": load.bystanders,
            "rooms": load.rooms,
            "publishers": load.publishers,
            "lb": load.lb,
        }
        started = time.monotonic()
        gen = StormGenerator(config, load.pin)
        ready = gen.read()
        print(
            f"  {ready['ready']:,} clients joined ({load.victims:,} on the victim pod, "
            f"{load.bystanders:,} on each survivor) in {time.monotonic() - started:.0f} s; "
            f"publishing {load.rate:g} events/s over {load.rooms} rooms",
            flush=True,
        )
        gen.ask({"cmd": "publish", "rate": load.rate})
        time.sleep(load.warmup)
        survivors = pods[1:]
        sampled = {
            "redis": redis.proc.pid,
            **{p.node_id: p.proc.pid for p in survivors if p.proc is not None},
            "generator": gen.proc.pid,
        }
        sampler = CpuSampler(sampled)
        prober = ReadyProber(survivors)
        latency_before = {p.node_id: latency_buckets(p) for p in survivors}
        sampler.sample()
        sampler.start()
        prober.start()
        victim_pid = pods[0].proc.pid if pods[0].proc is not None else 0
        storm = gen.ask({"cmd": "storm", "pid": victim_pid, "timeoutS": load.timeout})
        done_at = time.monotonic()
        time.sleep(1.0)  # a little of the aftermath in the samples
        sampler.stop()
        prober.stop()
        server_latency = {
            p.node_id: (
                bucket_quantile(latency_before[p.node_id], latency_buckets(p), 0.5),
                bucket_quantile(latency_before[p.node_id], latency_buckets(p), 0.99),
            )
            for p in survivors
        }
        if pods[0].proc is not None:
            pods[0].proc.wait(10)  # reaped: SIGKILLed by the generator
        time.sleep(2.0)  # events keep flowing to the resumed clients
        checks = gen.ask({"cmd": "verify", "waitS": 20})
        cpu = sampler.summary(done_at)
        result = {"storm": storm, "checks": checks, "cpu": cpu, "latency": server_latency}
        report(load, storm, checks, cpu, prober, server_latency)
        return result
    finally:
        if gen is not None:
            gen.close()
        for pod in pods:
            pod.stop()
        redis.stop()


def report(
    load: StormLoad,
    storm: dict[str, Any],
    checks: dict[str, Any],
    cpu: dict[str, tuple[float, float]],
    prober: ReadyProber,
    server_latency: dict[str, tuple[str, str]],
) -> None:
    counts = storm["counts"]
    everyone = storm["resumed"] == storm["victims"]
    print(
        f"  SIGKILL of a pod with {storm['victims']:,} clients: "
        + (
            f"all resumed in {fmt_ms(storm['allResumedMs'])}"
            if everyone
            else f"ONLY {storm['resumed']:,} resumed within {load.timeout:g} s"
        )
        + f"; per client p50 {fmt_ms(storm['resumeP50Ms'])}, p99 {fmt_ms(storm['resumeP99Ms'])},"
        f" slowest {fmt_ms(storm['resumeMaxMs'])}; connection attempts per client p50 "
        f"{storm['attemptsP50']}, max {storm['attemptsMax']}",
        flush=True,
    )
    split = ", ".join(f"{node} {n:,}" for node, n in sorted(storm["split"].items()))
    print(
        f"  victims resumed on: {split}; recovered: true {storm['recovered']:,}; seen by "
        f"clients: 1013 {counts['closed1013']}, failed connects {counts['connectFailed']}, "
        f"open timeouts {counts['openTimeouts']}, join timeouts {counts['joinTimeouts']}, "
        f"joins refused {counts['joinRefused']} ({counts['internalErrors']} of them "
        f"`internal`), other errors {counts['otherErrors']} "
        f"(while the {storm['victims'] + 2 * load.bystanders:,} clients first joined: joins "
        f"refused {storm['setupCounts']['joinRefused']} ({storm['setupCounts']['internalErrors']}"
        " `internal`), join timeouts "
        f"{storm['setupCounts']['joinTimeouts']})",
        flush=True,
    )
    for group in ("victims", "bystanders"):
        g = checks[group]
        print(
            f"  feed check, {group} ({g['clients']:,}): gaps {g['gaps']} (in "
            f"{g['clientsWithGap']} clients), duplicates {g['duplicates']} (in "
            f"{g['clientsWithDuplicate']} clients), re-syncs {g['resyncs']}",
            flush=True,
        )
    print(
        f"  published {checks['published']:,}, acked {checks['acked']:,}, refused "
        f"{checks['publishErrors']}; clients behind their room's top after the wait "
        f"{checks['behind']}, not live {checks['notLive']}",
        flush=True,
    )
    parts = [
        f"{name} {total:.2f} s (peak {peak:.0%} of a core)" for name, (total, peak) in cpu.items()
    ]
    print(
        f"  CPU from the kill until all resumed ({SAMPLE_SECONDS:g} s windows): "
        + ", ".join(parts),
        flush=True,
    )
    print(
        f"  bystanders during the storm: {storm['bystanderEvents']:,} events, latency p50 "
        f"{fmt_ms(storm['bystanderP50Ms'])}, p99 {fmt_ms(storm['bystanderP99Ms'])}, max "
        f"{fmt_ms(storm['bystanderMaxMs'])}; publish-to-ack p50 {fmt_ms(storm['ackP50Ms'])}, "
        f"p99 {fmt_ms(storm['ackP99Ms'])}; the generator's own event-loop lag p99 "
        f"{fmt_ms(storm['genLagP99Ms'])}, max {fmt_ms(storm['genLagMaxMs'])}, its CPU "
        f"{storm['genCpu']:.0%} of its core",
        flush=True,
    )
    fan_out = "; ".join(
        f"{node} p50 {p50}, p99 {p99}" for node, (p50, p99) in server_latency.items()
    )
    print(
        "  survivors' publish-to-fan-out latency from the kill until all resumed "
        f"(relay_delivery_latency_seconds buckets): {fan_out}",
        flush=True,
    )
    ready = "; ".join(
        f"{node}: {len(times)} probes, slowest {max(times, default=0) * 1000:,.0f} ms, "
        f"{prober.failed[node]} failed or over {READY_TIMEOUT:g} s (at most "
        f"{prober.in_a_row[node]} in a row)"
        for node, times in prober.times.items()
    )
    print(f"  /readyz during the storm: {ready}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--victims", type=int, default=5000, help="clients on the killed pod")
    parser.add_argument("--bystanders", type=int, default=500, help="clients on each survivor")
    parser.add_argument("--rooms", type=int, default=250)
    parser.add_argument("--rate", type=float, default=200.0, help="events/s over all rooms")
    parser.add_argument(
        "--publishers", type=int, default=10, help="publisher sockets on each survivor"
    )
    parser.add_argument("--lb", choices=["random", "round-robin"], default="random")
    parser.add_argument("--no-pin", action="store_true", help="do not pin servers / generator")
    parser.add_argument(
        "--env", action="append", default=[], help="extra relay setting NAME=VALUE (repeat)"
    )
    parser.add_argument("--workdir", type=Path, help="keep the relay logs here")
    args = parser.parse_args()
    if not (BENCH / "js" / "node_modules").is_dir():
        parser.error("bench/js/node_modules is missing: run `make bench` (npm ci)")
    load = StormLoad(
        victims=args.victims,
        bystanders=args.bystanders,
        rooms=args.rooms,
        rate=args.rate,
        publishers=args.publishers,
        lb=args.lb,
        pin=not args.no_pin,
        extra_env=dict(item.split("=", 1) for item in args.env),
    )
    if load.pin:
        os.sched_setaffinity(0, GENERATOR_CPU)  # this orchestrator mostly idles
    print(f"{' '.join(sys.argv)}", flush=True)
    if args.workdir is not None:
        args.workdir.mkdir(parents=True, exist_ok=True)
        run_storm(args.workdir, load)
        return
    with tempfile.TemporaryDirectory(prefix="storm-") as tmp:
        run_storm(Path(tmp), load)


if __name__ == "__main__":
    main()
