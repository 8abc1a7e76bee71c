"""Types of the relay's compiled core (src/lib.rs)."""

__version__: str

class FrameReader:
    """One connection's incoming WebSocket frames (client to server: masked)."""

    def __init__(self, max_size: int | None) -> None: ...
    def feed(self, data: bytes) -> list[str | bytes | None]:
        """What `data` completed, in order: a text message (str), a binary one (None),
        a control frame as the bytes it came in."""
    @property
    def error(self) -> tuple[int, str] | None:
        """Why the reader stopped (close code, reason), or None."""
    @property
    def buffered(self) -> int: ...
    @property
    def allocated(self) -> int:
        """Capacity of the reader's buffers: what it keeps between reads."""

class FlushScheduler:
    """relay.outbox.FlushScheduler: writes the dirty outboxes once per loop turn."""

    def __init__(self) -> None: ...
    def mark(self, outbox: Outbox) -> None: ...

class Outbox:
    """relay.outbox.Outbox without replay (relay.outbox adds it in Python)."""

    def __init__(
        self, socket: object, scheduler: FlushScheduler, *, limit: int, on_overflow: object
    ) -> None: ...
    @property
    def closed(self) -> bool: ...
    @property
    def close_code(self) -> int | None: ...
    def push(self, payload: bytes) -> None: ...
    def flush(self, frames: dict[bytes, bytes] | None = None) -> None: ...
    def close(self, final: bytes | None, code: int, *, drop_pending: bool = False) -> None: ...
    def fail(self) -> None:
        """Writing to the socket raised: closed with 1011, pending dropped; never raises."""

class Members:
    """relay.hub.Members: a room's local members; `push_all` pushes to each in one call
    (a member whose `push` is a core Outbox's own method without a Python call)."""

    def __init__(self) -> None: ...
    def add(self, member: object) -> None: ...
    def discard(self, member: object) -> None: ...
    def __contains__(self, member: object) -> bool: ...
    def __len__(self) -> int: ...
    def push_all(self, payload: bytes) -> int:
        """Push to the members at the call (a snapshot); how many were pushed to. A member
        whose push raises costs the others nothing: the first error is raised at the end."""
