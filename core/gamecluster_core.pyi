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
