"""What the bench scripts share about the processes they measure and drive: CPU time read
from /proc, pinning to a CPU, and the JSON-lines conversation with the Node generators
(bench/js: one JSON command per line in, one JSON answer per line out)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int, *, user_only: bool = False) -> float:
    """CPU time of every thread of `pid`: user + system, or user only (the process's own
    code, the kernel's work for it left out)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    if user_only:
        return int(fields[11]) / CLOCK_TICKS
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime + stime


def kernel_counts(pid: int) -> tuple[int, int, int]:
    """(read system calls, write system calls, context switches) of `pid` so far, every
    thread's: counts, so they do not move with the machine's load as CPU time does.
    /proc/PID/io's syscr and syscw count read- and write-like calls (recv, send...)."""
    io = dict(line.split(": ") for line in Path(f"/proc/{pid}/io").read_text().splitlines())
    switches = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        for line in (task / "status").read_text().splitlines():
            if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                switches += int(line.split()[1])
    return int(io["syscr"]), int(io["syscw"]), switches


def pin(pid: int, cpus: set[int]) -> None:
    """Pin every thread of a process (sched_setaffinity acts on one thread id); threads
    started later inherit it."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        os.sched_setaffinity(int(task.name), cpus)


class JsonLines:
    """A generator process driven by JSON lines on its stdin and stdout."""

    def __init__(self, command: list[str], what: str) -> None:
        self.what = what
        self.proc = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )

    def read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the {self.what} exited {self.proc.wait(10)}")
        answer: dict[str, Any] = json.loads(line)
        return answer

    def send(self, command: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(command) + "\n")
        self.proc.stdin.flush()

    def ask(self, command: dict[str, Any]) -> dict[str, Any]:
        self.send(command)
        return self.read()
