"""`make run` (README's first command) stops with what stops it, leaving no relay behind.

Ctrl-C in a terminal signals the whole foreground process group; `kill <make>` (an IDE's
stop button, `timeout`, a supervisor) sends SIGTERM to make alone, which passes it on to
its child only: if that child is the recipe's shell rather than the relay, the shell dies
and the relay keeps running, orphaned, holding its ports.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from support.processes import LOOPBACK, free_port, wait_until

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
STOP_BOUND = 15.0
"""Seconds from the signal until every process of `make run` is gone (RELAY_DRAIN_SECONDS
is 0 here: with no client connected the relay's shutdown takes well under a second)."""


def descendants(pid: int) -> set[int]:
    """Every live process below `pid` (from /proc: parents of each process)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # gone meanwhile
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    found: set[int] = set()
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def alive(pid: int) -> bool:
    """True while `pid` runs (a zombie counts as gone: it holds no port, runs no code)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.parametrize(
    "how",
    ["SIGTERM to make (kill, timeout, an IDE's stop)", "SIGINT to the group (Ctrl-C)"],
)
def test_make_run_stops_the_relay_with_it(how: str) -> None:
    port, admin = free_port(), free_port()
    while admin == port:
        admin = free_port()
    env = {
        **os.environ,
        "RELAY_HOST": LOOPBACK,
        "RELAY_PORT": str(port),
        "RELAY_ADMIN_PORT": str(admin),
        "RELAY_DRAIN_SECONDS": "0",
    }
    make = subprocess.Popen(
        # This interpreter's venv: its run-time install is already stamped, nothing installs.
        ["make", "--no-print-directory", "run", f"VENV={sys.prefix}"],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # a process group of its own, as a terminal's job is
    )
    started: set[int] = set()
    try:

        def serving() -> bool:
            assert make.poll() is None, f"make run exited with {make.returncode}"
            try:
                return httpx.get(f"http://{LOOPBACK}:{port}/healthz", timeout=1).is_success
            except httpx.TransportError:
                return False

        wait_until(serving, 60, "make run to serve /healthz")
        started = descendants(make.pid)
        assert started, "make run has no child process"
        if how.startswith("SIGTERM"):
            make.send_signal(signal.SIGTERM)
        else:
            os.killpg(make.pid, signal.SIGINT)
        make.wait(STOP_BOUND)
        left = {pid for pid in started if alive(pid)}
        if left:
            wait_until(
                lambda: not any(alive(pid) for pid in left),
                STOP_BOUND,
                f"processes {sorted(left)} of `make run` to exit after make did",
            )
    finally:
        # Whatever this test started and is still running (by pid, never by name).
        for pid in started | {make.pid}:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
        make.wait(10)
