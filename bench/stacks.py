"""Where the samples of py-spy's collapsed stacks go (`bench/compare.py --profile DIR`).

    .venv/bin/python bench/stacks.py DIR/relay-volatile-20000-*.txt [--top 40] [--match hub]

Prints, over all the files given, each function's share of the samples: self (the
sample's innermost frame) and inclusive (anywhere on the stack, counted once per
sample), highest first. Idle samples (the event loop waiting in epoll) are counted apart,
so the shares are of the time the process was busy. `--user` also sets apart the samples
inside a system call (libc's write, read, getpid...: the kernel's time, and the time a
process stays preempted in a write that woke Redis on its core), leaving the shares of
user-space time, the part a Python change can cut. `--match` lists only frames whose
name contains the text.
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from pathlib import Path

IDLE = re.compile(r"epoll_wait|_PyTime_|select\.epoll|uv__io_poll")
"""A sample whose innermost frames wait for I/O: the process was not running."""
SYSCALL = re.compile(
    r"^(write|writev|read|readv|send|sendmsg|sendto|recv|recvfrom|getpid|__GI_\w+|"
    r"epoll_ctl|clock_gettime) \(libc"
)
"""A libc system call wrapper as the innermost frame: kernel time."""
LINE = re.compile(r"\s*\(([^)]*?)(?::\d+)?\)$")


def frame_name(frame: str) -> str:
    """`fn (path/to/file.py:12)` -> `fn (file.py)`; native frames keep their library."""
    match = LINE.search(frame)
    if match is None:
        return frame
    where = match.group(1).rsplit("/", 1)[-1]
    return f"{frame[: match.start()].strip()} ({where})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("files", nargs="+", type=Path)
    parser.add_argument("--top", type=int, default=40)
    parser.add_argument("--match", default="")
    parser.add_argument("--user", action="store_true", help="leave system calls out")
    args = parser.parse_args()
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = idle = kernel = 0
    for path in args.files:
        for line in path.read_text().splitlines():
            stack, _, count_text = line.rpartition(" ")
            if not stack or not count_text.isdigit():
                continue
            count = int(count_text)
            frames = [frame_name(f) for f in stack.split(";")[1:]]  # [0]: process/thread
            total += count
            if frames and any(IDLE.search(f) for f in frames[-3:]):
                idle += count
                continue
            if args.user and frames and SYSCALL.search(frames[-1]):
                kernel += count
                continue
            if frames:
                own[frames[-1]] += count
            for name in set(frames):
                inclusive[name] += count
    busy = total - idle - kernel
    print(
        f"{total} samples, {idle} idle ({idle / max(total, 1):.0%}), {kernel} in system calls"
        f" ({kernel / max(total, 1):.0%}), {busy} counted"
    )
    for title, counter in (("self", own), ("inclusive", inclusive)):
        print(f"\n-- {title}, % of counted samples")
        shown = 0
        for name, count in counter.most_common():
            if args.match and args.match not in name:
                continue
            print(f"{100 * count / max(busy, 1):6.1f}%  {name}")
            shown += 1
            if shown >= args.top:
                break


if __name__ == "__main__":
    main()
