"""Reconnect delays: exponential with full jitter.

websockets' own `backoff()` jitters only the first delay and then grows deterministically:
every client cut by one pod's death would reconnect in lockstep from the second attempt
on. Full jitter (a uniform draw between 0 and the exponential bound) spreads them.
"""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class Backoff:
    min_delay: float = 0.05
    """Bound of the first retry's delay (seconds)."""
    max_delay: float = 2.0
    """Cap of every delay (seconds)."""

    def delay(self, attempt: int) -> float:
        """Delay before retry number `attempt` (0-based)."""
        return random.uniform(0, min(self.max_delay, self.min_delay * 2 ** min(attempt, 32)))


DEFAULT_BACKOFF = Backoff()
