"""Direct writes to a WebSocket's transport, for the fan-out hot path.

Why not ASGI `send`: it awaits per message and per recipient, which is where a plain
FastAPI broadcast spends most of its CPU. An event to N local members is encoded once
and framed once; the same frame bytes are written to each member's transport without
an await. Server-to-client frames are unmasked, so one frame serves every socket.

FastAPI keeps routing, the handshake and the HTTP surface: this module only adds a
uvicorn WebSocket protocol (a subclass of its sans-I/O one) that exposes a `RawSocket`
in the ASGI scope extension `relay.raw_socket`. `relay serve` always runs with it.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Callable
from typing import Any

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.http11 import Request

SCOPE_EXTENSION = "relay.raw_socket"
CLOSE_TIMEOUT = 5.0
"""Grace, in seconds, for a closing connection (the peer's close frame, a write buffer
still draining) before the TCP connection is aborted. `transport.close()` alone waits
for the buffer to drain, which is never when the peer stopped reading: every close the
server starts ends in `transport.abort()` after this grace, so no peer holds a slot."""


def text_frame(payload: bytes) -> bytes:
    """One unmasked, final, uncompressed text frame carrying `payload`."""
    size = len(payload)
    if size < 126:
        return struct.pack("!BB", 0x81, size) + payload
    if size < 65536:
        return struct.pack("!BBH", 0x81, 126, size) + payload
    return struct.pack("!BBQ", 0x81, 127, size) + payload


class RawSocket:
    """The write side of one WebSocket, bypassing ASGI for speed (see module docstring)."""

    __slots__ = ("_protocol", "compressed", "on_resume")

    def __init__(self, protocol: RelayWebSocketProtocol) -> None:
        self._protocol = protocol
        self.on_resume: Callable[[], None] | None = None
        """Called when the transport takes writes again, and when the connection closes."""
        self.compressed = bool(protocol.conn.extensions)

    @property
    def paused(self) -> bool:
        """True while the transport's buffer is over its high-water mark."""
        return not self._protocol.writable.is_set()

    @property
    def closed(self) -> bool:
        p = self._protocol
        return p.close_sent or p.disconnected or p.transport.is_closing()

    def send(self, payload: bytes, frames: dict[bytes, bytes] | None = None) -> None:
        """Write one text message; `frames` caches frames shared by several sockets."""
        if self.closed:
            return
        if self.compressed:
            # permessage-deflate state is per connection: no frame can be shared.
            conn = self._protocol.conn
            conn.send_text(payload)
            self._protocol.transport.write(b"".join(conn.data_to_send()))
            return
        if frames is None:
            self._protocol.transport.write(text_frame(payload))
            return
        frame = frames.get(payload)
        if frame is None:
            frame = frames[payload] = text_frame(payload)
        self._protocol.transport.write(frame)

    def close(self, code: int, reason: str = "") -> None:
        """Start the closing handshake now, without waiting for the buffer to drain."""
        self._protocol.close_now(code, reason)


class RelayWebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's sans-I/O WebSocket protocol, plus a RawSocket in the scope.

    And a bound on every close: wherever uvicorn starts closing the transport (heartbeat
    timeout, the peer's close frame, a protocol error, the app returning, shutdown), the
    connection is aborted if it is still there CLOSE_TIMEOUT seconds later.
    """

    raw_socket: RawSocket | None = None
    abort_timer: asyncio.TimerHandle | None = None

    def handle_connect(self, event: Request) -> None:
        super().handle_connect(event)
        if self.response.status_code == 101:
            # The ASGI task is created but has not started yet, so the scope can still grow.
            self.raw_socket = RawSocket(self)
            extensions: dict[str, Any] = self.scope.setdefault("extensions", {})
            extensions[SCOPE_EXTENSION] = self.raw_socket

    async def send(self, message: Any) -> None:
        await super().send(message)
        # A refused handshake (401/403/503 through the denial-response extension) is a
        # complete answer; without this uvicorn logs it as an ERROR ("returned without
        # completing handshake") for every refused client.
        if message["type"] == "websocket.http.response.body" and not message.get("more_body"):
            self.handshake_complete = True

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._bound_close()

    def keepalive_timeout(self) -> None:
        # The peer did not answer a ping within the heartbeat: the session ends now (its
        # slot is free at once); the socket goes at the latest after the grace.
        if not (self.close_sent or self.transport.is_closing()):
            self.queue.put_nowait({"type": "websocket.disconnect", "code": 1011})
        super().keepalive_timeout()
        self._bound_close()
        self._wake_writer()

    def shutdown(self) -> None:
        super().shutdown()
        self._bound_close()

    async def run_asgi(self) -> None:
        await super().run_asgi()
        self._bound_close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.abort_timer is not None:
            self.abort_timer.cancel()
            self.abort_timer = None
        super().connection_lost(exc)
        self._wake_writer()  # nothing will drain now: whoever waits for it must stop

    def _wake_writer(self) -> None:
        if self.raw_socket is not None and self.raw_socket.on_resume is not None:
            self.raw_socket.on_resume()

    def _bound_close(self) -> None:
        if self.abort_timer is None and not self.disconnected and self.transport.is_closing():
            self.abort_timer = self.loop.call_later(CLOSE_TIMEOUT, self._abort)

    def _abort(self) -> None:
        self.abort_timer = None
        if not self.disconnected:
            self.transport.abort()

    def resume_writing(self) -> None:
        super().resume_writing()
        if self.raw_socket is not None and self.raw_socket.on_resume is not None:
            self.raw_socket.on_resume()

    def close_now(self, code: int, reason: str) -> None:
        """What ASGI `websocket.close` does, minus the wait for a writable transport."""
        if self.close_sent or self.disconnected or self.transport.is_closing():
            return
        self.queue.put_nowait({"type": "websocket.disconnect", "code": code, "reason": reason})
        self.conn.send_close(code, reason)
        self.transport.write(b"".join(self.conn.data_to_send()))
        self.close_sent = True
        if self.read_paused:
            self.read_paused = False
            self.transport.resume_reading()
        self.close_timer = self.loop.call_later(CLOSE_TIMEOUT, self._abort)
