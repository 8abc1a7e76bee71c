"""Where an idle connection's bytes go: tracemalloc and gc over one in-process relay.

Runs `relay serve`'s server (relay.server.build_server: the same uvicorn protocols and
app) in this process, with the embedded broker and auth off, under tracemalloc. The
load generator of bench/compare.py (bench/js/loadgen.js, another process) opens a few
hundred warm-up sockets, then N more, each joined to one of K rooms. Between the two
points it prints the Python heap's growth per connection grouped by allocating
traceback (the innermost frames that are not asyncio's or the stdlib's), by file, and
the growth of gc-tracked objects by type, with their sys.getsizeof per connection.
RSS growth per connection is printed too, but tracemalloc's own bookkeeping inflates
it: bench/compare.py's idle scenario is the RSS figure to quote.

Not a test, and needs no Redis: `.venv/bin/python bench/idle_memory.py [--conns 2000]`.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import gc
import json
import os
import shutil
import socket
import sys
import tracemalloc
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
PAGE = os.sysconf("SC_PAGE_SIZE")


def rss() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * PAGE


def object_census() -> dict[str, tuple[int, int]]:
    """Type name -> (count, total sys.getsizeof) of every gc-tracked object."""
    census: dict[str, list[int]] = collections.defaultdict(lambda: [0, 0])
    for obj in gc.get_objects():
        entry = census[f"{type(obj).__module__}.{type(obj).__qualname__}"]
        entry[0] += 1
        entry[1] += sys.getsizeof(obj)
    return {name: (n, size) for name, (n, size) in census.items()}


SKIP = ("asyncio/", "/selectors.py", "/tracemalloc.py", "<frozen", "uvloop/")


def where(trace: tracemalloc.Traceback, depth: int) -> str:
    """The `depth` innermost frames outside the event loop's own machinery."""
    frames = [f for f in trace if not any(s in f.filename for s in SKIP)] or list(trace)
    return " <- ".join(f"{short(f.filename)}:{f.lineno}" for f in frames[-depth:][::-1])


def short(filename: str) -> str:
    for marker in ("site-packages/", "service/", "lib/python3"):
        if marker in filename:
            return filename.split(marker, 1)[1]
    return filename


async def generator(url: str) -> asyncio.subprocess.Process:
    config = {"proto": "relay", "urls": [url], "rooms": 0, "subs": 0, "publishers": 0}
    node = shutil.which("node") or "node"
    proc = await asyncio.create_subprocess_exec(
        node,
        str(BENCH / "js" / "loadgen.js"),
        json.dumps(config),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    await proc.stdout.readline()  # {"ready": 0}
    return proc


async def ask(proc: asyncio.subprocess.Process, command: dict[str, Any]) -> None:
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write((json.dumps(command) + "\n").encode())
    await proc.stdin.drain()
    line = await proc.stdout.readline()
    if not line:
        raise RuntimeError("the load generator exited")


async def main(args: argparse.Namespace) -> None:
    from relay.config import load_settings
    from relay.server import build_server

    server = build_server(load_settings())
    serving = asyncio.create_task(server.serve())
    while not server.started:  # noqa: ASYNC110 (uvicorn has a flag for it, not an event)
        await asyncio.sleep(0.05)
    gen = await generator(f"ws://127.0.0.1:{os.environ['RELAY_PORT']}/ws")
    try:
        # Warm-up: rooms, class-level caches and free lists exist before the first snapshot.
        await ask(gen, {"cmd": "idle", "conns": args.warmup, "rooms": args.rooms})
        await asyncio.sleep(1)
        gc.collect()
        census0, rss0, snap0 = object_census(), rss(), tracemalloc.take_snapshot()
        await ask(gen, {"cmd": "idle", "conns": args.conns, "rooms": args.rooms})
        await asyncio.sleep(1)
        gc.collect()
        census1, rss1, snap1 = object_census(), rss(), tracemalloc.take_snapshot()
    finally:
        assert gen.stdin is not None
        gen.stdin.write(b'{"cmd": "quit"}\n')
        await gen.wait()
        server.should_exit = True
        await serving
    report(args, census0, census1, snap0, snap1, rss1 - rss0)


def report(
    args: argparse.Namespace,
    census0: dict[str, tuple[int, int]],
    census1: dict[str, tuple[int, int]],
    snap0: tracemalloc.Snapshot,
    snap1: tracemalloc.Snapshot,
    rss_growth: int,
) -> None:
    n = args.conns
    traced = sum(s.size_diff for s in snap1.compare_to(snap0, "filename"))
    print(f"{n} idle connections in {args.rooms} rooms (after {args.warmup} warm-up ones)")
    print(f"  Python heap (tracemalloc): {traced / n:8.0f} B per connection")
    print(f"  RSS (inflated by tracemalloc): {rss_growth / n:8.0f} B per connection")

    print("\n== by allocating traceback (innermost frames outside asyncio), B per connection")
    grouped: dict[str, list[int]] = collections.defaultdict(lambda: [0, 0])
    for stat in snap1.compare_to(snap0, "traceback"):
        entry = grouped[where(stat.traceback, args.depth)]
        entry[0] += stat.size_diff
        entry[1] += stat.count_diff
    rows = sorted(grouped.items(), key=lambda kv: -kv[1][0])
    for key, (size, count) in rows[: args.top]:
        print(f"{size / n:8.0f} B {count / n:6.2f} blocks  {key}")

    print("\n== by file, B per connection")
    for stat in snap1.compare_to(snap0, "filename")[: args.top]:
        print(f"{stat.size_diff / n:8.0f} B  {short(stat.traceback[0].filename)}")

    print("\n== gc-tracked objects by type: count and sys.getsizeof per connection")
    growth = []
    for name, (count, size) in census1.items():
        count0, size0 = census0.get(name, (0, 0))
        if count - count0 > n // 10:
            growth.append((size - size0, count - count0, name))
    for size, count, name in sorted(growth, reverse=True)[: args.top]:
        print(f"{size / n:8.0f} B {count / n:6.2f} per conn  {name}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--conns", type=int, default=2000)
    parser.add_argument("--rooms", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--depth", type=int, default=3, help="frames per traceback key")
    parser.add_argument("--top", type=int, default=40)
    os.environ.setdefault("RELAY_AUTH", "none")
    os.environ.setdefault("RELAY_ADMIN_PORT", "0")
    with socket.socket() as probe:  # a free port (RELAY_PORT must be one)
        probe.bind(("127.0.0.1", 0))
        os.environ.setdefault("RELAY_PORT", str(probe.getsockname()[1]))
    os.environ.setdefault("RELAY_HOST", "127.0.0.1")
    os.environ.setdefault("RELAY_LOG_LEVEL", "warning")
    os.environ.setdefault("RELAY_ROOMS", '[{"match": "*", "policy": "volatile"}]')
    parsed = parser.parse_args()
    tracemalloc.start(25)
    import uvloop

    uvloop.run(main(parsed))
