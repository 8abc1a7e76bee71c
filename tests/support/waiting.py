"""Waiting for a condition from async tests without blocking their event loop.

`support.processes.wait_until` sleeps with `time.sleep`: from a coroutine it freezes every
client of the test (no pings answered, no frames read) while it waits. `eventually` polls
the condition in a worker thread (conditions often make blocking HTTP calls, such as
`RelayProcess.status()`) and sleeps with `asyncio.sleep` in between; it is bounded and says
what it waited for when it gives up. A coroutine function as the condition (an async
client's state read) is awaited in the test's own loop instead.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable


async def eventually(
    condition: Callable[[], bool] | Callable[[], Awaitable[bool]],
    timeout: float,
    what: str,
    step: float = 0.05,
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if inspect.iscoroutinefunction(condition):
            met = await condition()
        else:
            met = await asyncio.to_thread(condition)
        if met:
            return
        await asyncio.sleep(step)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
