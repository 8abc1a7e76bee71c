"""Waiting for a condition from async tests without blocking their event loop.

`support.processes.wait_until` sleeps with `time.sleep`: from a coroutine it freezes every
client of the test (no pings answered, no frames read) while it waits. `eventually` polls
the condition in a worker thread (conditions often make blocking HTTP calls, such as
`RelayProcess.status()`) and sleeps with `asyncio.sleep` in between; it is bounded and says
what it waited for when it gives up.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable


async def eventually(
    condition: Callable[[], bool], timeout: float, what: str, step: float = 0.05
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await asyncio.to_thread(condition):
            return
        await asyncio.sleep(step)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
