"""Direct writes to a WebSocket's transport, for the fan-out hot path.

Why not ASGI `send`: it awaits per message and per recipient, which is where a plain
FastAPI broadcast spends most of its CPU. An event to N local members is encoded once
and framed once; the same frame bytes are written to each member's transport without
an await. Server-to-client frames are unmasked, so one frame serves every socket.

FastAPI keeps routing, the handshake and the HTTP surface: this module only adds a
uvicorn WebSocket protocol (a subclass of its sans-I/O one) that exposes a `RawSocket`
in the ASGI scope extension `relay.raw_socket`. `relay serve` always runs with it.

And bounds on what a connection can hold before it is a WebSocket (RelayHttpProtocol):
a deadline for the request head, a size limit for it, and replies that are really sent
(uvicorn leaves an idle connection open forever, and the 414/431 that websockets
prepares for an oversized request line or header was never written).
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Callable
from typing import Any, ClassVar, Protocol

import httptools
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.http11 import Request

SCOPE_EXTENSION = "relay.raw_socket"
CLOSE_TIMEOUT = 5.0
"""Grace, in seconds, for a closing connection (the peer's close frame, a write buffer
still draining) before the TCP connection is aborted. `transport.close()` alone waits
for the buffer to drain, which is never when the peer stopped reading: every close the
server starts ends in `transport.abort()` after this grace, so no peer holds a slot."""


HANDSHAKE_SECONDS = 10.0
"""A connection's request head must be complete this long after it opened (or after its
previous response); else 408 and close: idle and slow ("slowloris") connections end.
RELAY_HANDSHAKE_SECONDS sets it for a server (see `protocols`)."""
MAX_URL_BYTES = 8192
"""Longest request target (path and query); longer gets 414 and close."""
MAX_HEAD_BYTES = 16384
"""Longest request head (request line and headers); longer gets 431 and close. Header
lines of a WebSocket upgrade are also limited to 8 KiB each by websockets (431)."""


class Refusal(Protocol):
    """Told the HTTP status of every connection refused before its handshake (a metric)."""

    def __call__(self, status: int, /) -> None: ...


def _refusal_response(status: int, reason: bytes) -> bytes:
    return b"".join(
        [
            STATUS_LINE[status],
            b"content-type: text/plain; charset=utf-8\r\n",
            b"content-length: %d\r\n" % len(reason),
            b"connection: close\r\n\r\n",
            reason,
        ]
    )


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
    on_refusal: ClassVar[Refusal | None] = None

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
        if not self.handshake_initiated and self.conn.handshake_exc is not None:
            # websockets refused the request (414: request line, 431: a header line over
            # 8 KiB, too many headers) and prepared the reply; uvicorn never writes it.
            reply = b"".join(self.conn.data_to_send())
            status = int(reply[9:12]) if reply[9:12].isdigit() else 400
            self.transport.write(reply)
            self.transport.close()
            self.handshake_initiated = self.handshake_complete = self.close_sent = True
            if self.on_refusal is not None:
                self.on_refusal(status)
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


class RelayHttpProtocol(HttpToolsProtocol):
    """uvicorn's HTTP protocol with a deadline and a size limit on each request head.

    Refusals (408, 414, 431) are written, the connection closed (aborted if it does not
    drain within CLOSE_TIMEOUT) and reported to `on_refusal`.
    """

    on_refusal: ClassVar[Refusal | None] = None
    handshake_seconds: ClassVar[float] = HANDSHAKE_SECONDS

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._head_bytes = 0
        self._head_complete = False
        self._refusing: int | None = None
        self._abort_timer: asyncio.TimerHandle | None = None
        self._deadline: asyncio.TimerHandle | None = self.loop.call_later(
            self.handshake_seconds, self._too_slow
        )

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        if self._abort_timer is not None:
            self._abort_timer.cancel()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refusing is not None:
            return
        if not self._head_complete:
            self._head_bytes += len(data)
            if self._head_bytes > MAX_HEAD_BYTES:
                self._refuse(431, b"request head over %d bytes\n" % MAX_HEAD_BYTES)
                return
        self._unset_keepalive_if_required()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            if self._refusing is None:
                self.logger.warning("Invalid HTTP request received.")
                self._refuse(400, b"Invalid HTTP request received.")
                return
        except httptools.HttpParserUpgrade:
            if self._refusing is None:
                self._disarm()  # the WebSocket protocol takes over, with its heartbeat
                if self._should_upgrade():
                    self.handle_websocket_upgrade()
                else:
                    self._unsupported_upgrade_warning()
        if self._refusing is not None:
            self._refuse(self._refusing, b"request target over %d bytes\n" % MAX_URL_BYTES)

    def on_url(self, url: bytes) -> None:
        super().on_url(url)
        if len(self.url) > MAX_URL_BYTES:
            self._refusing = 414

    def on_headers_complete(self) -> None:
        self._head_complete = True
        self._disarm()
        if self._refusing is None:
            super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        if self._refusing is None:
            super().on_body(body)

    def on_message_complete(self) -> None:
        if self._refusing is None:
            super().on_message_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        # Keep-alive: the next request head gets its own deadline and size budget.
        self._head_bytes = 0
        self._head_complete = False
        if not self.transport.is_closing() and self._deadline is None:
            self._deadline = self.loop.call_later(self.handshake_seconds, self._too_slow)

    def _too_slow(self) -> None:
        self._deadline = None
        if self.transport.is_closing() or self._refusing is not None:
            return
        if self.cycle is not None and not self.cycle.response_complete:
            return  # a request is being answered: not idle
        if self.cycle is None or self._head_bytes:
            self._refuse(408, b"request head not received in time\n")
        else:
            self.transport.close()  # idle keep-alive between requests: no refusal

    def _refuse(self, status: int, reason: bytes) -> None:
        self._refusing = status
        self._disarm()
        self._unset_keepalive_if_required()
        self.transport.write(_refusal_response(status, reason))
        self.transport.close()
        self._abort_timer = self.loop.call_later(CLOSE_TIMEOUT, self.transport.abort)
        if self.on_refusal is not None:
            self.on_refusal(status)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None


def protocols(
    on_refusal: Refusal, handshake_seconds: float = HANDSHAKE_SECONDS
) -> tuple[type[RelayHttpProtocol], type[RelayWebSocketProtocol]]:
    """The HTTP and WebSocket protocols for uvicorn, reporting refusals to `on_refusal`."""
    hook = {"on_refusal": staticmethod(on_refusal)}
    http = type("RelayHttp", (RelayHttpProtocol,), {**hook, "handshake_seconds": handshake_seconds})
    return http, type("RelayWebSocket", (RelayWebSocketProtocol,), hook)
