"""The relay against what a user would pick instead, in one run, on one harness (`make bench`).

Targets, each started fresh on loopback with its own redis-server where it has one:
- relay, volatile rooms and durable rooms: two `relay serve` pods on one Redis;
- Node socket.io + @socket.io/redis-adapter: two processes on one Redis (bench/js);
- python-socketio + AsyncRedisManager: two processes on one Redis (bench/sio_server.py);
- the frame-once floor: one process (bench/floor.py), no broker;
- the frame-once floor with a Redis hop, two bench/floor.py processes on one Redis, in two
  shapes: `floor-redis`, the relay's (each event PUBLISHed once on the room's channel and
  written by every process to its members as Redis delivers it: the relay's architecture
  without its features), and `floor-redis-lean`, the least any relay sharing rooms
  through Redis Pub/Sub can do (no replies, local members first, Redis sends nothing
  back to the publisher; it gives up one order per room across processes).

Every server process and its Redis are pinned to CPU 1; the load generator, one Node
process (bench/js/loadgen.js), runs alone on CPU 0 and reports its own CPU, so a figure
limited by the generator shows as such (gen CPU near 100%). For each target, on the same
connections (R rooms x S subscribers split over the servers, P publishers per room,
publisher p of room r on server (r + p) mod n so half of every room's traffic crosses
servers):
- fixed rates (4,000 and 20,000 deliveries/s): CPU per delivery of the servers, and of
  the servers + Redis, from /proc user + system time; p50/p99 publish-to-delivery
  latency; loss (expected deliveries not received within 3 s of the last publish);
- ramp: rising rates until a step loses a delivery, has p99 >= 100 ms or cannot be
  published at its rate, twice in a row (the machine is shared: one spike of someone
  else's work must not end it); the max sustainable fan-out is the last step that passed;
- idle connections: RSS growth of the server processes per extra WebSocket, each joined
  to one of 100 rooms.
Then tracing (relay, volatile rooms): tracing disabled, then sampling ratio 0, 0.1 and
1.0, exported over OTLP/HTTP to a local sink that counts spans (tests/support/otlp_sink.py,
on CPU 0), at 20,000 deliveries/s: CPU per delivery against ratio 0 (and ratio 0 against
disabled: what an unsampled event pays). Then a resume storm (bench/resume_storm.py; the
relay only, durable rooms, three pods): SIGKILL a pod holding 5,000 clients (2,000 with
--quick) while events flow; time until every client resumed on the other two, the feed
checks (gaps, duplicates, re-syncs), Redis's and the pods' CPU, how the clients split.

Not a test: it prints numbers, and a table of ratios at the end. Compare figures within
one run; the machine is shared. `--quick` (or BENCH_QUICK=1) shortens every step.

Before/after in one run: `--baseline DIR` adds the targets relay-volatile-base and
relay-durable-base, the same pods run from another checkout's `service/` directory (e.g.
`git archive main service | tar -x -C /tmp/base`, then `--baseline /tmp/base/service`).
`--repeat N` runs the chosen targets N times, interleaved (A, B, A, B...), and reports
each step's median (by CPU per delivery, servers + Redis): single short steps on a
shared machine move by tens of percent. Both apply to the tracing scenario too: each
sampling configuration runs on this tree and the baseline, one after the other, N times;
outside `--quick` the tracing scenario runs at least TRACING_RUNS times whatever N is,
because its goal (ratio 0.1 within 10% of ratio 0) is smaller than one step's noise.
`--profile DIR` samples every server process with py-spy (the `bench` extra) during
each fixed and each tracing step and leaves one collapsed-stack file per process and
step in DIR, for bench/stacks.py; sampling costs CPU, so a profiled run's CPU figures
are not the ones to compare.

    .venv/bin/python bench/compare.py [--quick] [--only relay-volatile,floor,...]
        [--scenarios fixed,ramp,idle,tracing,storm]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
import resume_storm
from procs import JsonLines, cpu_seconds, kernel_counts, pin
from support.processes import (
    LOOPBACK,
    RedisProcess,
    RelayProcess,
    free_port,
    stop_process,
    wait_until,
)

BENCH = Path(__file__).resolve().parent
PAGE = os.sysconf("SC_PAGE_SIZE")
SERVER_CPU, GENERATOR_CPU = {1}, {0}
NODE = shutil.which("node") or "node"
MAX_P99_MS = 100.0


def rss_bytes(pid: int) -> int:
    return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE


def listening(port: int, proc: subprocess.Popen[bytes]) -> Callable[[], bool]:
    def check() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited {proc.returncode}")
        try:
            socket.create_connection((LOOPBACK, port), timeout=0.2).close()
        except OSError:
            return False
        return True

    return check


@dataclass
class Servers:
    """What one target runs: the generator's protocol and URLs, and the pids it measures."""

    proto: str
    urls: list[str]
    pids: list[int]
    redis_pid: int | None
    name: str = ""
    """The target's key (set by `measure`): names profile files."""


def start_plain(args: list[str], port: int, log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)
    wait_until(listening(port, proc), 20, f"{args[:2]} on port {port}")
    return proc


@contextmanager
def relay_target(workdir: Path, policy: str, extra: dict[str, str]) -> Iterator[Servers]:
    env = {
        "RELAY_ROOMS": f'[{{"match": "*", "policy": "{policy}"}}]',
        "RELAY_AUTH": "none",
        "RELAY_ADMIN_PORT": "0",
        "RELAY_PUBLISH_RATE": "1000000",
        "RELAY_PUBLISH_BURST": "1000000",
        "RELAY_LOG_LEVEL": os.environ.get("BENCH_RELAY_LOG_LEVEL", "warning"),
        # The relay's own defaults, not the short test timeouts RelayProcess sets.
        "RELAY_REDIS_TIMEOUT": "2.0",
        "RELAY_PROBE_INTERVAL": "3.0",
        "RELAY_PROBE_TIMEOUT": "3.0",
        **extra,
    }
    redis = RedisProcess(workdir).start()
    pods: list[RelayProcess] = []
    try:
        for node in "ab":
            pods.append(RelayProcess(workdir, {**env, "RELAY_REDIS_URLS": redis.url}, node).start())
        assert redis.proc is not None
        yield Servers(
            "relay",
            [p.url for p in pods],
            [p.proc.pid for p in pods if p.proc is not None],
            redis.proc.pid,
        )
    finally:
        for pod in pods:
            pod.stop()
        redis.stop()


URLS = {"sio": "http://{host}:{port}", "relay": "ws://{host}:{port}/ws"}
"""What the generator connects to, by the protocol it speaks."""

Command = Callable[[int, str, list[int]], list[str]]
"""A server process's command line: its port, Redis's URL, every server's port."""


@contextmanager
def two_process_target(workdir: Path, command: Command, proto: str = "sio") -> Iterator[Servers]:
    redis = RedisProcess(workdir).start()
    procs: list[subprocess.Popen[bytes]] = []
    try:
        ports = [free_port(), free_port()]
        for port in ports:
            args = command(port, redis.url, ports)
            procs.append(start_plain(args, port, workdir / f"srv-{port}.log"))
        assert redis.proc is not None
        yield Servers(
            proto,
            [URLS[proto].format(host=LOOPBACK, port=port) for port in ports],
            [p.pid for p in procs],
            redis.proc.pid,
        )
    finally:
        for proc in procs:
            stop_process(proc)
        redis.stop()


@contextmanager
def floor_target(workdir: Path) -> Iterator[Servers]:
    port = free_port()
    proc = start_plain(
        [sys.executable, str(BENCH / "floor.py"), "--port", str(port)], port, workdir / "floor.log"
    )
    try:
        yield Servers("relay", [f"ws://{LOOPBACK}:{port}/ws"], [proc.pid], None)
    finally:
        stop_process(proc)


def floor_redis(hop: str) -> Command:
    def command(port: int, redis_url: str, ports: list[int]) -> list[str]:
        peers = ",".join(str(p) for p in ports if p != port)
        floor = [sys.executable, str(BENCH / "floor.py"), "--port", str(port)]
        return [*floor, "--redis", redis_url, "--hop", hop, "--me", str(port), "--peers", peers]

    return command


def node_sio(port: int, redis_url: str, ports: list[int]) -> list[str]:
    return [NODE, str(BENCH / "js" / "sio_server.js"), str(port), redis_url]


def python_sio(port: int, redis_url: str, ports: list[int]) -> list[str]:
    return [sys.executable, str(BENCH / "sio_server.py"), "--port", str(port), "--redis", redis_url]


class Generator(JsonLines):
    """bench/js/loadgen.js on CPU 0: one JSON command per line in, one JSON answer out."""

    def __init__(self, servers: Servers, load: Load) -> None:
        self.subs = load.subs
        config = {
            "proto": servers.proto,
            "urls": servers.urls,
            "rooms": load.rooms,
            "subs": load.subs,
            "publishers": load.publishers,
        }
        super().__init__(
            ["taskset", "-c", ",".join(map(str, GENERATOR_CPU)), NODE,
             str(BENCH / "js" / "loadgen.js"), json.dumps(config)],
            "load generator",
        )  # fmt: skip
        self.read()  # {"ready": n}

    def close(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(RuntimeError, BrokenPipeError, ValueError):
                self.ask({"cmd": "quit"})
        stop_process(self.proc)  # type: ignore[arg-type]


@dataclass
class Load:
    rooms: int
    subs: int
    publishers: int
    seconds: float
    rates: list[float]
    ramp: list[float]
    ramp_seconds: float
    idle_conns: int
    idle_rooms: int


@dataclass
class Step:
    rate: float
    sent: int
    expected: int
    delivered: int
    p50: float
    p99: float
    server_us: float
    server_user_us: float
    """The servers' user-space part of server_us (the rest is the kernel's, for them)."""
    with_redis_us: float
    gen_cpu: float
    published_ok: bool
    per_event: tuple[float, float, float] = (0.0, 0.0, 0.0)
    """Reads, writes (system calls) and context switches of the servers + Redis per
    published event: counts, steadier than CPU time on a shared machine."""

    @property
    def loss(self) -> int:
        return self.expected - self.delivered

    @property
    def passed(self) -> bool:
        return self.loss == 0 and self.p99 < MAX_P99_MS and self.published_ok


@dataclass
class Result:
    name: str
    fixed: dict[float, Step] = field(default_factory=dict)
    ramp: list[Step] = field(default_factory=list)
    idle_kb: float | None = None

    @property
    def max_sustainable(self) -> float:
        best = 0.0
        for step in self.ramp:
            if not step.passed:
                break
            best = step.rate
        return best


@contextmanager
def profiled(pids: list[int], seconds: float, out: Path | None, name: str) -> Iterator[None]:
    """py-spy on each of `pids` (native frames, 250 Hz) for `seconds`, writing collapsed
    stacks to out/<name>-<n>.txt; nothing when `out` is None. py-spy itself runs on the
    generator's CPU, so the servers' core carries only the pauses of its sampling."""
    if out is None:
        yield
        return
    spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or "py-spy"
    procs = []
    for n, pid in enumerate(pids):
        command = [
            "taskset", "-c", ",".join(map(str, GENERATOR_CPU)), spy, "record",
            "--native", "--rate", "250", "--duration", str(max(1, int(seconds))),
            "--format", "raw", "--output", str(out / f"{name}-{n}.txt"), "--pid", str(pid),
        ]  # fmt: skip
        procs.append(subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
    try:
        yield
    finally:
        for pid, proc in zip(pids, procs, strict=True):
            try:
                _, err = proc.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                _, err = proc.communicate()
            if proc.returncode != 0:
                # No profile was written: say why (a py-spy that may not ptrace the server,
                # not root or Yama's ptrace_scope >= 1, fails at once), not an empty DIR.
                why = err.decode(errors="replace").strip().splitlines() or ["no message"]
                print(f"  py-spy on pid {pid} failed ({proc.returncode}): {why[0]}", flush=True)


def step(
    gen: Generator, servers: Servers, rate: float, seconds: float, profile: Path | None = None
) -> Step:
    pids = servers.pids
    before = [cpu_seconds(p) for p in pids]
    user_before = [cpu_seconds(p, user_only=True) for p in pids]
    redis_before = cpu_seconds(servers.redis_pid) if servers.redis_pid else 0.0
    counted = [*pids, *([servers.redis_pid] if servers.redis_pid else [])]
    counts_before = [kernel_counts(p) for p in counted]
    with profiled(pids, seconds, profile, f"{servers.name}-{rate:.0f}"):
        answer = gen.ask({"cmd": "run", "rate": rate, "seconds": seconds})
    counts_after = [kernel_counts(p) for p in counted]
    counts = [
        sum(after[k] - before[k] for after, before in zip(counts_after, counts_before, strict=True))
        for k in range(3)
    ]
    cpu = sum(cpu_seconds(p) for p in pids) - sum(before)
    user = sum(cpu_seconds(p, user_only=True) for p in pids) - sum(user_before)
    redis_cpu = (cpu_seconds(servers.redis_pid) - redis_before) if servers.redis_pid else 0.0
    delivered = int(answer["delivered"])
    per = 1e6 / delivered if delivered else float("nan")
    published_ok = answer["sent"] >= 0.95 * rate / gen.subs * seconds
    result = Step(
        rate=rate,
        sent=int(answer["sent"]),
        expected=int(answer["expected"]),
        delivered=delivered,
        p50=float(answer["p50"] or float("nan")),
        p99=float(answer["p99"] or float("nan")),
        server_us=cpu * per,
        server_user_us=user * per,
        with_redis_us=(cpu + redis_cpu) * per,
        gen_cpu=float(answer["gen_cpu"]),
        published_ok=published_ok,
        per_event=(
            counts[0] / max(1, int(answer["sent"])),
            counts[1] / max(1, int(answer["sent"])),
            counts[2] / max(1, int(answer["sent"])),
        ),
    )
    print(
        f"    {rate:>7,.0f}/s  delivered {delivered:>8,}/{result.expected:<8,} "
        f"p50 {result.p50:7.2f} p99 {result.p99:8.2f} ms  servers {result.server_us:6.1f} us"
        f" (user {result.server_user_us:5.1f})"
        f"  +redis {result.with_redis_us:6.1f} us  gen CPU {result.gen_cpu:4.0%}"
        + ("" if result.passed else "  (fails: loss, p99 or rate)")
        + "\n      per event, servers + Redis: {:.1f} reads, {:.1f} writes, {:.1f} context "
        "switches".format(*result.per_event),
        flush=True,
    )
    return result


def measure(
    name: str, servers: Servers, load: Load, scenarios: set[str], profile: Path | None = None
) -> Result:
    servers.name = name
    for pid in [*servers.pids, *([servers.redis_pid] if servers.redis_pid else [])]:
        pin(pid, SERVER_CPU)
    rss_before = sum(rss_bytes(p) for p in servers.pids)
    result = Result(name)
    gen = Generator(servers, load)
    try:
        gen.ask({"cmd": "run", "rate": 2000, "seconds": 1})  # warm-up, discarded
        if "fixed" in scenarios:
            print(f"  fixed rates, {load.seconds:g} s each", flush=True)
            for rate in load.rates:
                result.fixed[rate] = step(gen, servers, rate, load.seconds, profile)
        if "ramp" in scenarios:
            print(f"  ramp, {load.ramp_seconds:g} s per step", flush=True)
            for rate in load.ramp:
                result.ramp.append(step(gen, servers, rate, load.ramp_seconds))
                if not result.ramp[-1].passed:
                    # Once more: on a shared machine one spike of someone else's work
                    # must not end the ramp. Two failures in a row do.
                    print("    again:", flush=True)
                    result.ramp[-1] = step(gen, servers, rate, load.ramp_seconds)
                if not result.ramp[-1].passed:
                    break
        if "idle" in scenarios:
            time.sleep(0.5)
            rss_loaded = sum(rss_bytes(p) for p in servers.pids)
            gen.ask({"cmd": "idle", "conns": load.idle_conns, "rooms": load.idle_rooms})
            time.sleep(1.0)
            rss_idle = sum(rss_bytes(p) for p in servers.pids)
            result.idle_kb = (rss_idle - rss_loaded) / load.idle_conns / 1024
            print(
                f"  idle: {load.idle_conns:,} sockets in {load.idle_rooms} rooms, RSS "
                f"{rss_before / 2**20:.0f} -> {rss_loaded / 2**20:.0f} -> "
                f"{rss_idle / 2**20:.0f} MiB: {result.idle_kb:.1f} KB per connection",
                flush=True,
            )
    finally:
        gen.close()
    return result


TARGETS: dict[str, tuple[str, Callable[[Path], Any]]] = {
    "relay-durable": (
        "relay, durable rooms (2 pods + Redis)",
        lambda w: relay_target(w, "durable", {}),
    ),
    "relay-volatile": ("relay, volatile rooms", lambda w: relay_target(w, "volatile", {})),
    "socketio-node": (
        "Node socket.io + redis-adapter (2 proc)",
        lambda w: two_process_target(w, node_sio),
    ),
    "socketio-python": (
        "python-socketio + AsyncRedisManager (2 proc)",
        lambda w: two_process_target(w, python_sio),
    ),
    "floor": ("frame-once floor (1 process)", floor_target),
    "floor-redis": (
        "frame-once floor + Redis hop, relay's shape (2 proc)",
        lambda w: two_process_target(w, floor_redis("relay"), proto="relay"),
    ),
    "floor-redis-lean": (
        "frame-once floor + Redis hop, lean (2 proc)",
        lambda w: two_process_target(w, floor_redis("lean"), proto="relay"),
    ),
}
"""Key -> (label, context manager factory taking a work directory), in table order."""

TRACING_RUNS = 3
"""Interleaved runs of each sampling configuration in a full run (medians reported)."""

SAMPLING = ["disabled", "0", "0.1", "1.0"]
"""Tracing off (OTEL_SDK_DISABLED), then parent-based ratio sampling at each ratio."""


def tracing(
    workdir: Path,
    load: Load,
    rate: float,
    trees: dict[str, dict[str, str]] | None = None,
    repeat: int = 1,
    profile: Path | None = None,
) -> dict[str, Step]:
    """The relay (volatile) at one fixed rate with sampling 0, 0.1 and 1.0.

    `trees`: name -> extra environment of each relay tree to run ("" is this one; a
    --baseline adds "base" with its PYTHONPATH), interleaved `repeat` times; each
    figure is the median run by CPU per delivery. Keys: the sampling, then
    "<sampling> base" for the baseline's. `profile`: py-spy each pod during each step
    (files tracing-<sampling>[-base]-<run>-<rate>-<n>.txt)."""
    trees = trees or {"": {}}
    runs: dict[str, list[Step]] = {}
    sink_port = free_port()
    sink = subprocess.Popen(
        [sys.executable, "-m", "support.otlp_sink", str(sink_port)],
        cwd=BENCH.parent / "tests",
        stdout=subprocess.DEVNULL,
    )
    out: dict[str, Step] = {}
    try:
        pin(sink.pid, GENERATOR_CPU)
        wait_until(listening(sink_port, sink), 20, "the OTLP sink")
        for n, sampling, tree in (
            (n, sampling, tree) for n in range(repeat) for sampling in SAMPLING for tree in trees
        ):
            env = {
                "OTEL_SDK_DISABLED": "true" if sampling == "disabled" else "false",
                "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
                "OTEL_TRACES_SAMPLER_ARG": "0" if sampling == "disabled" else sampling,
                "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://{LOOPBACK}:{sink_port}",
                "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
                **trees[tree],
            }
            key = f"{sampling} {tree}".strip()
            run = f" (run {n + 1})" if repeat > 1 else ""
            print(f"-- tracing, sampling {key} (relay, volatile rooms){run}", flush=True)
            with relay_target(workdir, "volatile", env) as servers:
                servers.name = f"tracing-{key.replace(' ', '-')}-{n + 1}"
                for pid in [*servers.pids, servers.redis_pid]:
                    assert pid is not None
                    pin(pid, SERVER_CPU)
                gen = Generator(servers, load)
                try:
                    gen.ask({"cmd": "run", "rate": 2000, "seconds": 1})
                    runs.setdefault(key, []).append(step(gen, servers, rate, load.seconds, profile))
                finally:
                    gen.close()
    finally:
        stop_process(sink)  # type: ignore[arg-type]
    for key, steps in runs.items():
        out[key] = sorted(steps, key=_cpu)[len(steps) // 2]
    return out


def median(runs: list[Result]) -> Result:
    """Each fixed step's median run (by CPU per delivery, servers + Redis), the median idle
    figure; the ramp of the first run (a ramp has no single figure to take the median of)."""
    if len(runs) == 1:
        return runs[0]
    out = Result(runs[0].name, ramp=runs[0].ramp)
    for rate in runs[0].fixed:
        steps = sorted((r.fixed[rate] for r in runs if rate in r.fixed), key=_cpu)
        out.fixed[rate] = steps[len(steps) // 2]
    idle = sorted(r.idle_kb for r in runs if r.idle_kb is not None)
    out.idle_kb = idle[len(idle) // 2] if idle else None
    return out


def _cpu(step: Step) -> float:
    return step.with_redis_us


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b and b == b and a == a else "-"


def report(results: dict[str, Result], traced: dict[str, Step], load: Load) -> None:
    rates = load.rates
    floor = results.get("floor")
    hop, lean = results.get("floor-redis"), results.get("floor-redis-lean")
    node = results.get("socketio-node")
    print("\n== results (one run; servers + Redis on CPU 1, generator on CPU 0)")
    head = ["target"]
    for r in rates:
        head += [f"CPU/delivery @{r:,.0f}/s (srv+redis)", f"p50/p99 @{r:,.0f}/s", "loss"]
    head += ["max sustainable (ramp)", f"1 core / CPU per delivery @{rates[-1]:,.0f}/s"]
    head += ["idle KB/conn"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for key, res in results.items():
        row = [TARGETS[key][0]]
        for r in rates:
            s = res.fixed.get(r)
            if s is None:
                row += ["-", "-", "-"]
                continue
            row += [
                f"{s.server_us:.1f} ({s.with_redis_us:.1f}) us",
                f"{s.p50:.1f} / {s.p99:.1f} ms",
                f"{s.loss}",
            ]
        top = res.max_sustainable
        capped = res.ramp and res.ramp[-1].passed
        row.append(f"{'>=' if capped else ''}{top:,.0f}/s" if res.ramp else "-")
        last = res.fixed.get(rates[-1])
        row.append(f"{1e6 / last.with_redis_us:,.0f}/s" if last and last.delivered else "-")
        row.append(f"{res.idle_kb:.1f}" if res.idle_kb is not None else "-")
        print("| " + " | ".join(row) + " |")
    print("\n== ratios (CPU per delivery: servers + Redis)")
    for key, res in results.items():
        if key == "floor":
            continue
        parts = []
        for name, base in [("floor", floor), ("floor-redis", hop), ("floor-redis-lean", lean)]:
            for r in rates:
                s = res.fixed.get(r)
                if s and base and r in base.fixed and key != name:
                    cost = ratio(s.with_redis_us, base.fixed[r].with_redis_us)
                    parts.append(f"/{name} @{r:,.0f}: {cost}")
        if node and res.ramp and node.ramp:
            top = ratio(res.max_sustainable, node.max_sustainable)
            parts.append(f"max fan-out (ramp) / Node socket.io: {top}")
        last, node_last = res.fixed.get(rates[-1]), node.fixed.get(rates[-1]) if node else None
        if last and node_last and key != "socketio-node":
            capacity = ratio(node_last.with_redis_us, last.with_redis_us)
            parts.append(f"CPU capacity @{rates[-1]:,.0f} / Node socket.io: {capacity}")
        if res.idle_kb is not None and floor and floor.idle_kb:
            parts.append(f"idle RSS / floor: {ratio(res.idle_kb, floor.idle_kb)}")
        print(f"  {TARGETS[key][0]}: " + "; ".join(parts))
    durable, volatile = results.get("relay-durable"), results.get("relay-volatile")
    if durable and volatile:
        for r in rates:
            if r in durable.fixed and r in volatile.fixed:
                d, v = durable.fixed[r], volatile.fixed[r]
                cost = ratio(d.with_redis_us, v.with_redis_us)
                print(f"  durable / volatile CPU @{r:,.0f}/s: {cost}")
    for policy in ("volatile", "durable"):
        now, base = results.get(f"relay-{policy}"), results.get(f"relay-{policy}-base")
        if now and base:
            for r in rates:
                if r in now.fixed and r in base.fixed:
                    n, b = now.fixed[r], base.fixed[r]
                    print(
                        f"  {policy}, this tree / baseline CPU @{r:,.0f}/s: servers "
                        f"{ratio(n.server_us, b.server_us)}, servers + Redis "
                        f"{ratio(n.with_redis_us, b.with_redis_us)}, servers' user time "
                        f"{ratio(n.server_user_us, b.server_user_us)}"
                    )
    if traced:
        print("\n== tracing (relay, volatile rooms; CPU per delivery, servers + Redis)")
        for key, s in traced.items():
            sampling, _, tree = key.partition(" ")
            base = traced.get(f"0 {tree}".strip())
            vs = f" = {ratio(s.with_redis_us, base.with_redis_us)} of ratio 0" if base else ""
            name = sampling if sampling == "disabled" else f"ratio {sampling}"
            name += " (baseline)" if tree else ""
            other = traced.get(sampling) if tree else traced.get(f"{sampling} base")
            than = (
                f", this tree / baseline {ratio(s.with_redis_us, other.with_redis_us)}"
                f" (user {ratio(s.server_user_us, other.server_user_us)})"
                if other is not None and not tree
                else ""
            )
            cpu = f"{s.with_redis_us:6.1f} us (user {s.server_user_us:5.1f}){vs}"
            print(f"  {name:20}: {cpu}, p99 {s.p99:.1f} ms, loss {s.loss}{than}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--quick", action="store_true", default=os.environ.get("BENCH_QUICK") == "1"
    )
    parser.add_argument(
        "--only",
        help=f"targets (default: all): {','.join(TARGETS)}, and with --baseline "
        "relay-volatile-base,relay-durable-base",
    )
    parser.add_argument(
        "--scenarios",
        default="fixed,ramp,idle,tracing,storm",
        help="fixed,ramp,idle,tracing,storm",
    )
    parser.add_argument("--rooms", type=int, default=10)
    parser.add_argument("--subs", type=int, default=20, help="subscribers per room")
    parser.add_argument("--publishers", type=int, default=2, help="publisher sockets per room")
    parser.add_argument(
        "--baseline",
        type=Path,
        help="another checkout's service/ directory: adds relay-volatile-base, relay-durable-base",
    )
    parser.add_argument(
        "--profile",
        type=Path,
        help="py-spy every server during the fixed and tracing steps, into DIR",
    )
    parser.add_argument(
        "--repeat", type=int, default=1, help="runs of every target, interleaved; medians"
    )
    args = parser.parse_args()
    if args.baseline is not None:
        base = {"PYTHONPATH": str(args.baseline.resolve())}
        if not (args.baseline / "relay" / "cli.py").is_file():
            parser.error(f"--baseline {args.baseline}: no relay package there")
        for policy in ("volatile", "durable"):
            TARGETS[f"relay-{policy}-base"] = (
                f"relay, {policy} rooms, baseline ({args.baseline})",
                lambda w, policy=policy: relay_target(w, policy, base),
            )
    # After --baseline: its targets are among the default ones (all) and the known ones.
    only = args.only.split(",") if args.only else list(TARGETS)
    if unknown := [key for key in only if key not in TARGETS]:
        parser.error(f"--only: unknown targets {','.join(unknown)}; known: {','.join(TARGETS)}")
    if args.profile is not None:
        args.profile.mkdir(parents=True, exist_ok=True)
    if len(os.sched_getaffinity(0)) < 2 or not {0, 1} <= os.sched_getaffinity(0):
        parser.error("needs CPUs 0 and 1 (servers on 1, the load generator on 0)")
    if not (BENCH / "js" / "node_modules").is_dir():
        parser.error("bench/js/node_modules is missing: run `make bench` (npm ci)")
    quick = args.quick
    load = Load(
        rooms=args.rooms,
        subs=args.subs,
        publishers=args.publishers,
        seconds=3 if quick else 8,
        rates=[4000, 20000],
        ramp=[5000, 10000, 15000, 20000, 30000, 40000, 50000, 60000, 80000],
        ramp_seconds=2 if quick else 4,
        idle_conns=2000 if quick else 5000,
        idle_rooms=100,
    )
    scenarios = set(args.scenarios.split(","))
    # The generator holds every socket: raise its file limit (inherited) as far as allowed.
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    os.sched_setaffinity(0, GENERATOR_CPU)  # this orchestrator idles; keep it off CPU 1
    print(
        f"{' '.join(sys.argv)}: rooms={load.rooms} subs/room={load.subs} "
        f"publishers/room={load.publishers}, fixed {load.seconds:g} s, ramp steps "
        f"{load.ramp_seconds:g} s, idle {load.idle_conns:,} sockets; quick={quick}",
        flush=True,
    )
    runs: dict[str, list[Result]] = {}
    traced: dict[str, Step] = {}
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        per_target = scenarios & {"fixed", "ramp", "idle"}
        for n in range(args.repeat):
            for key in only if per_target else []:
                label, factory = TARGETS[key]
                print(f"-- {label}" + (f" (run {n + 1})" if args.repeat > 1 else ""), flush=True)
                workdir = Path(tmp) / f"{key}-{n}"
                workdir.mkdir()
                with factory(workdir) as servers:
                    result = measure(key, servers, load, scenarios, args.profile)
                runs.setdefault(key, []).append(result)
        results = {key: median(found) for key, found in runs.items()}
        if "tracing" in scenarios:
            workdir = Path(tmp) / "tracing"
            workdir.mkdir()
            trees = {"": {}} if args.baseline is None else {"": {}, "base": base}
            runs_of_tracing = args.repeat if args.quick else max(args.repeat, TRACING_RUNS)
            traced = tracing(workdir, load, 20000, trees, runs_of_tracing, args.profile)
        if results or traced:
            report(results, traced, load)
        if "storm" in scenarios:
            print("\n== resume storm (relay, durable rooms, 3 pods + Redis on CPU 1)", flush=True)
            workdir = Path(tmp) / "storm"
            workdir.mkdir()
            storm = resume_storm.StormLoad(victims=2000 if quick else 5000)
            resume_storm.run_storm(workdir, storm)


if __name__ == "__main__":
    main()
