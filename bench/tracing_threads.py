"""What a sampled event costs the pods, by thread: the event loop and the span exporter.

Not a test: it prints numbers (docs/benchmarks.md, "Tracing cost"). The bench/compare.py
harness (two relay pods and Redis on CPU 1, the Node load generator on CPU 0, volatile
rooms, 20,000 deliveries/s; OTLP/HTTP to a counting sink) runs ratio 0 then ratio 1.0,
this tree then `--baseline`, `--rounds` times interleaved, and reads each pod's threads'
user and system time from /proc: the main thread (event loop) and the others (the
BatchSpanProcessor's export thread; no other thread of the relay works during a step).
A sampled event's cost over both pods is (ratio 1.0 - ratio 0) per delivery x the
deliveries per event. Ratio 1.0 against ratio 0 is a difference large enough to stand
out of a shared machine's noise, which ratio 0.1 against ratio 0 is not.

    .venv/bin/python bench/tracing_threads.py [--rounds 4] [--baseline <other service/>]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import compare
from procs import CLOCK_TICKS, pin

SAMPLINGS = ("0", "1.0")


def thread_seconds(pid: int) -> dict[str, tuple[float, float]]:
    """(user, system) seconds of the main thread and of all the others together."""
    out: dict[str, tuple[float, float]] = {"main": (0.0, 0.0), "others": (0.0, 0.0)}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # a thread that ended meanwhile
        key = "main" if task.name == str(pid) else "others"
        user, system = out[key]
        ticks = CLOCK_TICKS
        out[key] = (user + int(fields[11]) / ticks, system + int(fields[12]) / ticks)
    return out


def one(
    workdir: Path, load: compare.Load, rate: float, env: dict[str, str]
) -> dict[str, tuple[float, float]]:
    """Per-delivery (user, system) microseconds of both pods' main and other threads."""
    with compare.relay_target(workdir, "volatile", env) as servers:
        for pid in [*servers.pids, servers.redis_pid]:
            assert pid is not None
            pin(pid, compare.SERVER_CPU)
        gen = compare.Generator(servers, load)
        try:
            gen.ask({"cmd": "run", "rate": 2000, "seconds": 1})  # warm-up
            before = [thread_seconds(pid) for pid in servers.pids]
            step = compare.step(gen, servers, rate, load.seconds)
            after = [thread_seconds(pid) for pid in servers.pids]
        finally:
            gen.close()
    per = 1e6 / step.delivered
    out = {}
    for key in ("main", "others"):
        user = sum(a[key][0] - b[key][0] for a, b in zip(after, before, strict=True))
        system = sum(a[key][1] - b[key][1] for a, b in zip(after, before, strict=True))
        out[key] = (user * per, system * per)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=8)
    parser.add_argument("--baseline", type=Path, help="another checkout's service/ directory")
    args = parser.parse_args()
    rate, subs = 20000.0, 20
    load = compare.Load(
        rooms=10, subs=subs, publishers=2, seconds=args.seconds, rates=[rate], ramp=[],
        ramp_seconds=1, idle_conns=0, idle_rooms=1,
    )  # fmt: skip
    trees = {"this tree": {}}
    if args.baseline is not None:
        trees["baseline"] = {"PYTHONPATH": str(args.baseline.resolve())}
    costs: dict[str, list[tuple[float, float, float]]] = {name: [] for name in trees}
    with tempfile.TemporaryDirectory(prefix="tracing-threads-") as tmp:
        port = compare.free_port()
        sink = subprocess.Popen(
            [sys.executable, "-m", "support.otlp_sink", str(port)],
            cwd=compare.BENCH.parent / "tests",
            stdout=subprocess.DEVNULL,
        )
        try:
            pin(sink.pid, compare.GENERATOR_CPU)
            compare.wait_until(compare.listening(port, sink), 20, "the OTLP sink")
            for n in range(args.rounds):
                for name, extra in trees.items():
                    got = {}
                    for sampling in SAMPLINGS:
                        env = {
                            "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
                            "OTEL_TRACES_SAMPLER_ARG": sampling,
                            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://{compare.LOOPBACK}:{port}",
                            "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
                            **extra,
                        }
                        workdir = Path(tmp) / f"{n}-{len(got)}-{name.replace(' ', '-')}"
                        workdir.mkdir()
                        got[sampling] = one(workdir, load, rate, env)
                    zero, full = got["0"], got["1.0"]
                    main_us = (full["main"][0] - zero["main"][0]) * subs
                    export_us = (full["others"][0] - zero["others"][0]) * subs
                    costs[name].append((main_us, export_us, zero["main"][0] * subs))
                    print(
                        f"round {n + 1} {name}: a sampled event costs {main_us:4.0f} us "
                        f"(event loop) + {export_us:4.0f} us (export thread) of user time; "
                        f"an event at ratio 0: {zero['main'][0] * subs:4.0f} us",
                        flush=True,
                    )
        finally:
            compare.stop_process(sink)  # type: ignore[arg-type]
    for name, rows in costs.items():
        total = statistics.median(m + e for m, e, _ in rows)
        base = statistics.median(z for _, _, z in rows)
        print(
            f"{name}: a sampled event {total:.0f} us of user time over both pods (median of "
            f"{len(rows)}), an event at ratio 0 {base:.0f} us: ratio 0.1 adds about "
            f"{total / 10 / base:.0%} of the pods' user time"
        )


if __name__ == "__main__":
    main()
