"""Can one relay process hold N idle WebSockets (50,000 by default), and at what RSS?

One `relay serve` process (volatile rooms, on a redis-server of its own, as in
bench/compare.py) started with a soft open-file limit of 1,024 and a hard one above N,
as a container runtime would: the relay must raise its own limit to hold them. Several
Node load generators (bench/js/loadgen.js), each from its own loopback address (one
address has ~28,000 ephemeral ports), open N sockets in all, each joined to one of K
rooms. Then the run holds them for `--hold` seconds (past two heartbeats, so every
connection answers pings), and checks that they held: the relay's
`relay_connections` gauge, the generators' count of sockets still open, and one probe
event published to each room, which every socket must receive.

Raising a hard limit needs root (CAP_SYS_RESOURCE); without it the run uses the hard
limit it has and says so. Not a test: it prints numbers.

    .venv/bin/python bench/idle_capacity.py [--conns 50000] [--generators 4] [--hold 60]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from support.processes import RedisProcess, RelayProcess, stop_process

BENCH = Path(__file__).resolve().parent
PAGE = os.sysconf("SC_PAGE_SIZE")
NODE = shutil.which("node") or "node"


def rss(pid: int) -> int:
    return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE


def open_file_limit(pid: int) -> str:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            soft, hard = line.split()[3:5]
            return f"soft {soft}, hard {hard}"
    return "?"


def gauge(relay: RelayProcess, name: str) -> float:
    text = httpx.get(relay.admin + "/metrics", timeout=10).text
    match = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else float("nan")


class Generator:
    def __init__(self, url: str, local_address: str) -> None:
        config = {
            "proto": "relay",
            "urls": [url],
            "rooms": 0,
            "subs": 0,
            "publishers": 0,
            "localAddress": local_address,
        }
        self.proc = subprocess.Popen(
            [NODE, str(BENCH / "js" / "loadgen.js"), json.dumps(config)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.read()  # {"ready": 0}

    def send(self, command: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(command) + "\n")
        self.proc.stdin.flush()

    def read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"a load generator exited {self.proc.wait(10)}")
        answer: dict[str, Any] = json.loads(line)
        return answer

    def ask(self, command: dict[str, Any]) -> dict[str, Any]:
        self.send(command)
        return self.read()

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.send({"cmd": "quit"})
                self.proc.wait(30)
            except (BrokenPipeError, subprocess.TimeoutExpired):
                pass
        stop_process(self.proc)  # type: ignore[arg-type]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--conns", type=int, default=50_000)
    parser.add_argument("--rooms", type=int, default=100)
    parser.add_argument("--generators", type=int, default=4)
    parser.add_argument("--hold", type=float, default=60.0, help="seconds to hold them")
    parser.add_argument("--step", type=int, default=5_000, help="sockets per RSS sample")
    args = parser.parse_args()

    # What a container runtime gives: a low soft limit under a high hard one.
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = args.conns + 1000
    if hard != resource.RLIM_INFINITY and hard < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (1024, wanted))
            hard = wanted
        except (ValueError, OSError) as exc:
            capped = hard - 1000
            print(
                f"cannot raise the hard open-file limit from {hard} to {wanted} ({exc}): "
                f"{capped:,} sockets instead of {args.conns:,}"
            )
            args.conns = capped
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(1024, hard), hard))

    with tempfile.TemporaryDirectory(prefix="idle-capacity-") as tmp:
        workdir = Path(tmp)
        redis = RedisProcess(workdir).start()
        relay = RelayProcess(
            workdir,
            {
                "RELAY_REDIS_URLS": redis.url,
                "RELAY_AUTH": "none",
                "RELAY_ADMIN_PORT": "0",
                "RELAY_ROOMS": '[{"match": "*", "policy": "volatile"}]',
                "RELAY_MAX_CONNECTIONS": str(args.conns + 500),
                "RELAY_LOG_LEVEL": "warning",
                "RELAY_REDIS_TIMEOUT": "2.0",
                "RELAY_PROBE_INTERVAL": "3.0",
                "RELAY_PROBE_TIMEOUT": "3.0",
            },
            "idle",
        )
        generators: list[Generator] = []
        try:
            relay.start()
            assert relay.proc is not None
            pid = relay.proc.pid
            print(f"relay pid {pid}, open-file limit {open_file_limit(pid)}", flush=True)
            generators = [Generator(relay.url, f"127.0.0.{2 + n}") for n in range(args.generators)]
            time.sleep(1)
            base = rss(pid)
            print(f"RSS {base / 2**20:.0f} MiB before any idle socket", flush=True)
            started = time.monotonic()
            opened = 0
            while opened < args.conns:
                batch = min(args.step, args.conns - opened)
                shares = [batch // len(generators)] * len(generators)
                shares[0] += batch - sum(shares)
                for gen, share in zip(generators, shares, strict=True):
                    gen.send({"cmd": "idle", "conns": share, "rooms": args.rooms})
                for gen in generators:
                    gen.read()
                opened += batch
                now = rss(pid)
                print(
                    f"  {opened:>7,} sockets after {time.monotonic() - started:5.0f} s: RSS "
                    f"{now / 2**20:6.0f} MiB, {(now - base) / opened / 1024:5.1f} KB per socket",
                    flush=True,
                )
            full = rss(pid)
            print(f"holding {args.conns:,} sockets for {args.hold:g} s", flush=True)
            time.sleep(args.hold)
            held = rss(pid)
            connections = gauge(relay, "relay_connections")
            statuses = [gen.ask({"cmd": "status"}) for gen in generators]
            generators[0].ask({"cmd": "probe", "rooms": args.rooms})
            deadline = time.monotonic() + 30
            received = 0
            while time.monotonic() < deadline:
                received = sum(gen.ask({"cmd": "status"})["probes"] for gen in generators)
                if received >= args.conns:
                    break
                time.sleep(0.5)
            still_open = sum(s["open"] for s in statuses)
            closed = sum(s["closed"] for s in statuses)
            print(
                f"after {args.hold:g} s: relay_connections {connections:,.0f}, generators see "
                f"{still_open:,} open and {closed:,} closed; probe events received "
                f"{received:,} of {args.conns:,}",
                flush=True,
            )
            print(
                f"RSS {base / 2**20:.0f} MiB -> {full / 2**20:.0f} MiB with {args.conns:,} "
                f"sockets ({(full - base) / args.conns / 1024:.1f} KB per socket), "
                f"{held / 2**20:.0f} MiB after holding them",
                flush=True,
            )
            ok = connections == args.conns and received == args.conns and closed == 0
            print("held" if ok else "NOT held", flush=True)
        finally:
            for gen in generators:
                gen.close()
            relay.stop()
            redis.stop()


if __name__ == "__main__":
    main()
