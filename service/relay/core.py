"""Which implementation reads the frames of open WebSocket connections and fans events out
(issue #18).

The compiled core (`gamecluster_core`, a Rust extension built from core/) has three pieces:
- it reads a client's frames in one call per read: unmasking, framing, fragments and the
  UTF-8 check of text, where websockets' sans-I/O parser, pure Python, makes a few Python
  calls per frame. Both close a connection for the same faults with the same codes (1002,
  1007, 1009); tests/unit/test_frame_reader.py and the transport tests run both;
- the fan-out's send queues (relay.outbox's Outbox and FlushScheduler, same methods, same
  bound and overflow policy), without a Python frame per recipient; tests/unit/
  test_outbox.py runs both;
- a room's member set (relay.hub.Members): one call per event pushes to every member's
  outbox, natively for a session's core outbox; tests/unit/test_hub.py runs both.
The core is an optional distribution: the relay runs without it, on the Python classes.

RELAY_CORE: `auto` (the default) uses the core when it is installed; `off` never does (to
compare, or to rule it out); `on` requires it (the relay refuses to start without it).
"""

from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType
from typing import Literal, Protocol

CoreMode = Literal["auto", "on", "off"]


class FrameReader(Protocol):
    """One connection's incoming frames (gamecluster_core.FrameReader)."""

    def feed(self, data: bytes) -> list[str | bytes | None]:
        """What `data` completed, in order: a text message (str), a binary one (None),
        a control frame (ping, pong, close) as the bytes it came in."""

    @property
    def error(self) -> tuple[int, str] | None:
        """Why the reader stopped: the close code and reason to fail with, or None."""


class FrameReaderType(Protocol):
    def __call__(self, max_size: int | None) -> FrameReader: ...


class CoreMissing(Exception):
    """RELAY_CORE=on and the compiled core is not installed (or lacks a piece)."""


PIECES = ("FrameReader", "Outbox", "FlushScheduler", "Members")
"""What the relay takes from the core. An installed core built from an older tree (a
wheel left in core/dist: the version does not say) may lack one; it is then not used."""


@dataclass(frozen=True)
class Core:
    """The implementation chosen at start."""

    frame_reader: FrameReaderType | None
    """None: websockets' parser (pure Python)."""
    name: Literal["rust", "python"]
    why: str
    """Why this one, for the start-up log line."""
    module: ModuleType | None = None
    """gamecluster_core when in use: its Outbox and FlushScheduler (relay.outbox), its
    Members (relay.hub)."""


def select(mode: CoreMode) -> Core:
    if mode == "off":
        return Core(None, "python", "RELAY_CORE=off")
    try:
        import gamecluster_core
    except ImportError as exc:
        if mode == "on":
            raise CoreMissing(
                f"RELAY_CORE=on but the compiled core cannot be imported ({exc}): "
                "install it (pip install ./core) or set RELAY_CORE=auto"
            ) from exc
        return Core(None, "python", f"gamecluster-core not installed ({exc})")
    lacking = [piece for piece in PIECES if not hasattr(gamecluster_core, piece)]
    if lacking:
        stale = (
            f"gamecluster-core {gamecluster_core.__version__} lacks {', '.join(lacking)} "
            "(built from an older tree: rebuild it, make venv or make core-wheel)"
        )
        if mode == "on":
            raise CoreMissing(f"RELAY_CORE=on but the installed {stale}")
        return Core(None, "python", stale)
    return Core(
        gamecluster_core.FrameReader,
        "rust",
        f"gamecluster-core {gamecluster_core.__version__}, RELAY_CORE={mode}",
        gamecluster_core,
    )
