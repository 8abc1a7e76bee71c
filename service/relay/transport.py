"""The player port's connections: bounded HTTP heads, and `/ws` WebSockets without ASGI.

uvicorn serves the HTTP side (its httptools protocol, RelayHttpProtocol here, with a
deadline and a size limit on each request head, and refusals that are really sent:
uvicorn leaves an idle connection open forever, and the 414/431 websockets prepares
for an oversized request line or header was never written). An upgrade is handed to
RelayWebSocketProtocol (uvicorn's `ws` setting), which owns the WebSocket from there:
the handshake, frames (websockets' sans-I/O ServerProtocol parses and builds them),
the heartbeat, the close and the direct writes of the fan-out.

Why not uvicorn's WebSocket protocol and the ASGI app: memory and CPU per connection.
An ASGI WebSocket holds one task per connection for its whole life, with the coroutine
frames of every middleware and router it passed through, an asyncio.Queue and an Event:
an idle connection cost 33 KB of RSS that way, about 6 KB this way (docs/benchmarks.md).
Here an open connection is websockets' parser state, this protocol's slots and one
timer; its session runs a task only while it handles a message. And writes: an event to
N local members is encoded once and framed once; the same frame bytes are written to
each member's transport (RawSocket.send) without an await. Server-to-client frames are
unmasked, so one frame serves every socket.

Only `/ws` is a WebSocket: an upgrade to any other path is answered 404.
"""

from __future__ import annotations

import asyncio
import email.utils
import enum
import http
import logging
import random
import struct
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, Protocol, cast
from urllib.parse import quote, unquote

import httptools
from starlette.datastructures import Headers as StarletteHeaders
from starlette.datastructures import QueryParams
from starlette.responses import Response as StarletteResponse
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
from uvicorn.server import ServerState
from websockets.datastructures import Headers
from websockets.extensions.permessage_deflate import ServerPerMessageDeflateFactory
from websockets.frames import Frame, Opcode
from websockets.http11 import Request, Response
from websockets.protocol import SEND_EOF, State
from websockets.server import ServerProtocol

from relay import contract
from relay.core import FrameReader, FrameReaderType

log = logging.getLogger("uvicorn.error")
"""uvicorn's logger, as uvicorn's own WebSocket protocol used: the handshake lines keep
their format and place (relay.server keeps credentials out of them)."""

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

ABNORMAL_CLOSURE = 1006
"""The close code a receiver is told when the TCP connection went without a close frame."""


class Refusal(Protocol):
    """Told the HTTP status of every connection refused before its handshake (a metric)."""

    def __call__(self, status: int, /) -> None: ...


class Receiver(Protocol):
    """What reads one WebSocket's messages (relay.session.Session)."""

    def receive(self, text: str | None) -> None:
        """One message: its text, or None for a binary one. Called in arrival order, from
        the event loop (no await); a receiver still busy with earlier ones can hold the
        rest back with RawSocket.pause_reading."""

    def ended(self, code: int) -> None:
        """The connection is over (peer's close, ours, heartbeat, protocol error, TCP
        loss): `code` says how. Called once, never from inside a RawSocket call."""


class Endpoint(Protocol):
    """What `/ws` upgrades are handed to (relay.node.RelayNode)."""

    def open(self, handshake: Handshake) -> Receiver | None:
        """Refuse (`handshake.refuse`) and return None, or accept (`handshake.accept`)
        and return who receives the connection's messages (None: closed at once)."""


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
    """The application's side of one open WebSocket: direct writes, close, flow control."""

    __slots__ = ("_protocol", "on_resume")

    def __init__(self, protocol: RelayWebSocketProtocol) -> None:
        self._protocol = protocol
        self.on_resume: Callable[[], None] | None = None
        """Called when the transport takes writes again, and when the connection closes."""

    @property
    def paused(self) -> bool:
        """True while the transport's buffer is over its high-water mark."""
        return self._protocol.write_paused

    @property
    def closed(self) -> bool:
        return self._protocol.closing

    def send(self, payload: bytes, frames: dict[bytes, bytes] | None = None) -> None:
        """Write one text message; `frames` caches frames shared by several sockets."""
        protocol = self._protocol
        if protocol.closing:
            return
        if protocol.compressed:
            # permessage-deflate state is per connection: no frame can be shared.
            protocol.conn.send_text(payload)
            protocol.flush()
            return
        if frames is None:
            protocol.transport.write(text_frame(payload))
            return
        frame = frames.get(payload)
        if frame is None:
            frame = frames[payload] = text_frame(payload)
        protocol.transport.write(frame)

    def close(self, code: int, reason: str = "") -> None:
        """Start the closing handshake now, without waiting for the buffer to drain."""
        self._protocol.close(code, reason)

    def pause_reading(self) -> None:
        """Read no more frames until `resume_reading` (the receiver is busy)."""
        self._protocol.pause_reading()

    def resume_reading(self) -> None:
        self._protocol.resume_reading()


class Handshake:
    """A `/ws` upgrade request, for the endpoint to accept or refuse, once."""

    __slots__ = ("_conn", "_protocol", "_request", "_response")

    def __init__(
        self,
        protocol: RelayWebSocketProtocol,
        conn: ServerProtocol,
        request: Request,
        response: Response,
    ) -> None:
        self._protocol = protocol
        self._conn = conn
        self._request = request
        self._response = response

    @property
    def headers(self) -> Mapping[str, str]:
        """The request's headers, names case-insensitive; the first of repeated ones."""
        raw = [
            (name.lower().encode("latin-1"), value.encode("latin-1"))
            for name, value in self._request.headers.raw_items()
        ]
        return StarletteHeaders(raw=raw)

    @property
    def query(self) -> Mapping[str, str]:
        return QueryParams(self._request.path.partition("?")[2])

    @property
    def client(self) -> tuple[str, int] | None:
        return self._protocol.client

    def accept(self) -> RawSocket:
        """Answer 101: the WebSocket is open; returns its write side."""
        return self._protocol.accept(self._conn, self._request, self._response)

    def refuse(self, response: StarletteResponse) -> None:
        """Answer with `response` (401, 403, 503...) and close the connection."""
        headers = Headers(
            (name.decode("latin-1"), value.decode("latin-1"))
            for name, value in response.raw_headers
        )
        body = bytes(response.body)
        self._protocol.refuse(self._conn, self._request, response.status_code, headers, body)


class _State(enum.Enum):
    HANDSHAKE = "handshake"
    """Waiting for (the rest of) the upgrade request."""
    OPEN = "open"
    CLOSING = "closing"
    """A close frame or a refusal was sent, or the transport is closing: nothing more is
    written, and the connection is aborted if it is still there after CLOSE_TIMEOUT."""
    CLOSED = "closed"
    """The TCP connection is gone."""


class RelayWebSocketProtocol(asyncio.Protocol):
    """One WebSocket connection, from the upgrade request to the TCP close.

    Bounds: incoming messages larger than uvicorn's `ws_max_size` close the connection
    with 1009 (websockets checks while parsing); a receiver that is busy pauses reading,
    so what waits for it is at most one read's worth of frames. Every close ends in an
    abort CLOSE_TIMEOUT later if the peer has not gone by then; a peer that does not
    answer a ping within the heartbeat is closed with 1011.
    """

    __slots__ = (
        "_config",
        "_fragment_opcode",
        "_fragments",
        "_ping_payload",
        "_reader",
        "_receiver",
        "_server_state",
        "_state",
        "_timer",
        "conn",
        "read_paused",
        "socket",
        "transport",
        "write_paused",
    )

    endpoint: ClassVar[Endpoint]
    on_refusal: ClassVar[Refusal | None] = None
    frame_reader: ClassVar[FrameReaderType | None] = None
    """The compiled core's frame reader (relay.core), or None: websockets parses frames."""

    conn: ServerProtocol
    """websockets' state of the open connection (frames); set when the upgrade is accepted."""

    def __init__(
        self, config: Config, server_state: ServerState, app_state: dict[str, Any]
    ) -> None:
        # uvicorn's HTTP protocol builds this on an upgrade, with its (shared) config
        # and server state; the app state is the ASGI app's, not used here.
        self._config = config
        self._server_state = server_state
        self._state = _State.HANDSHAKE
        self._receiver: Receiver | None = None
        self._timer: asyncio.TimerHandle | None = None
        """The one pending timer: next ping, pong deadline, or abort after a close."""
        self._ping_payload: bytes | None = None
        self._fragments: bytearray | None = None
        """The payload so far of a fragmented message being received: one buffer, so
        its size is what websockets bounds (ws_max_size), whatever the frame count (a
        list of frames would grow by a slot per empty continuation frame, unbounded)."""
        self._fragment_opcode = Opcode.TEXT
        self._reader: FrameReader | None = None
        """The compiled core's reader of this connection's frames, when it has one."""
        self.transport: asyncio.Transport = cast(asyncio.Transport, None)
        self.socket: RawSocket | None = None
        self.read_paused = False
        self.write_paused = False

    # -- the transport's calls --

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        # uvicorn's shutdown calls `shutdown()` on every connection in this set.
        self._server_state.connections.add(cast(Any, self))

    def connection_lost(self, exc: Exception | None) -> None:
        self._state = _State.CLOSED
        self._cancel_timer()
        self._server_state.connections.discard(cast(Any, self))
        self._end(ABNORMAL_CLOSURE)
        self._wake_writer()  # nothing will drain now: whoever waits for it must stop

    def data_received(self, data: bytes) -> None:
        if self._state is _State.HANDSHAKE:
            self._handshake(data)
            return
        if self._reader is not None:
            self._read(self._reader, data)
            return
        conn = self.conn
        conn.receive_data(data)
        for event in conn.events_received():
            if isinstance(event, Frame) and self._state is _State.OPEN:
                self._frame(event)
        if conn.parser_exc is not None and self._state is _State.OPEN:
            self._failed()
            return
        self.flush()  # pongs to the peer's pings, the echo of its close frame

    def _read(self, reader: FrameReader, data: bytes) -> None:
        """`data_received` with the compiled core: it hands over whole messages, and
        control frames as they came, which go to websockets' protocol object as before
        (pongs, the closing handshake and its checks stay there, in one place)."""
        for event in reader.feed(data):
            if event.__class__ is str:
                if self._state is _State.OPEN and self._receiver is not None:
                    self._receiver.receive(event)
            elif event is None:
                if self._state is _State.OPEN and self._receiver is not None:
                    self._receiver.receive(None)
            else:
                conn = self.conn
                conn.receive_data(cast(bytes, event))
                for frame in conn.events_received():
                    if isinstance(frame, Frame) and self._state is _State.OPEN:
                        self._frame(frame)
                if conn.parser_exc is not None and self._state is _State.OPEN:
                    self._failed()
                    return
        error = reader.error
        if error is not None and self._state is _State.OPEN:
            self.conn.fail(*error)  # queues the close frame, as websockets' parser does
            self._failed()
            return
        self.flush()

    def eof_received(self) -> bool | None:
        return None  # close the transport: a WebSocket has no half-open state

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        self._wake_writer()

    # -- uvicorn's call --

    def shutdown(self) -> None:
        """The server stops: 1012 to an open connection, a plain close to the others."""
        if self._state is _State.OPEN:
            self.close(1012)
            self._close_transport(b"")  # as uvicorn does: no wait for the peer's echo
        elif self._state is _State.HANDSHAKE:
            self._close_transport(b"")

    # -- the handshake --

    def _handshake(self, data: bytes) -> None:
        """Answer the upgrade request in `data`: uvicorn's HTTP protocol, which parsed it,
        hands it over whole, in one call, as soon as the protocol is built.

        The request is parsed by a websockets ServerProtocol of its own, which goes with
        the handshake: its parser would hold the request (all its headers) for as long as
        the connection lives. The open connection gets a fresh one (`accept`).
        """
        conn = ServerProtocol(
            extensions=self._extension_factories(), max_size=self._config.ws_max_size, logger=log
        )
        conn.receive_data(data)
        request = next((e for e in conn.events_received() if isinstance(e, Request)), None)
        if conn.handshake_exc is not None:
            # websockets refused the request itself (414: request line, 431: a header
            # line over 8 KiB, too many headers) and prepared the reply.
            reply = b"".join(conn.data_to_send())
            status = int(reply[9:12]) if reply[9:12].isdigit() else 400
            self._close_transport(reply)
            if self.on_refusal is not None:
                self.on_refusal(status)
            return
        if request is None:
            log.error("an upgrade was handed over without a complete request head")
            self._close_transport(b"")
            return
        response = conn.accept(request)  # checks the upgrade headers: 101 or 4xx
        path = unquote(request.path.partition("?")[0])
        if response.status_code == 101 and path != contract.WS_PATH:
            response = conn.reject(http.HTTPStatus.NOT_FOUND, "Not Found\n")
        if response.status_code != 101:
            self._reject(conn, request, response)
            return
        try:
            self._receiver = self.endpoint.open(Handshake(self, conn, request, response))
        except Exception:
            log.exception("error opening a WebSocket")
            if self._state is _State.HANDSHAKE:
                self._reject(conn, request, conn.reject(500, "Internal Server Error\n"))
            else:
                self.close(1011)
            return
        if self._state is _State.HANDSHAKE:
            log.error("the endpoint neither accepted nor refused an upgrade")
            self._reject(conn, request, conn.reject(500, "Internal Server Error\n"))

    def _extension_factories(self) -> list[ServerPerMessageDeflateFactory] | None:
        if not self._config.ws_per_message_deflate:
            return None
        return [
            ServerPerMessageDeflateFactory(
                server_max_window_bits=12,
                client_max_window_bits=12,
                compress_settings={"memLevel": 5},
            )
        ]

    def accept(self, handshake: ServerProtocol, request: Request, response: Response) -> RawSocket:
        self._check_unanswered()
        log.info('%s - "WebSocket %s" [accepted]', self._peer(), _target(request))
        del response.headers["Date"]
        response.headers.update(
            (name.decode("latin-1"), value.decode("latin-1"))
            for name, value in self._server_state.default_headers
        )
        handshake.send_response(response)
        self.transport.write(b"".join(handshake.data_to_send()))
        self.conn = ServerProtocol(state=State.OPEN, max_size=self._config.ws_max_size, logger=log)
        self.conn.extensions = handshake.extensions  # as negotiated (permessage-deflate)
        if self.frame_reader is not None and not self.conn.extensions:
            # Compressed frames (RSV1) are websockets' to decode: no core for those.
            self._reader = self.frame_reader(self._config.ws_max_size)
        self._state = _State.OPEN
        self.socket = RawSocket(self)
        self._schedule_ping()
        return self.socket

    def refuse(
        self,
        handshake: ServerProtocol,
        request: Request,
        status: int,
        headers: Headers,
        body: bytes,
    ) -> None:
        self._check_unanswered()
        headers.setdefault("Date", email.utils.formatdate(usegmt=True))
        headers.setdefault("Connection", "close")
        headers.setdefault("Content-Type", "text/plain; charset=utf-8")
        headers.setdefault("Content-Length", str(len(body)))
        phrase = http.HTTPStatus(status).phrase if status in _STATUSES else ""
        self._reject(handshake, request, Response(status, phrase, headers, body))

    def _check_unanswered(self) -> None:
        if self._state is not _State.HANDSHAKE:
            raise RuntimeError(f"a handshake is answered once, and this one is {self._state}")

    def _reject(self, handshake: ServerProtocol, request: Request, response: Response) -> None:
        log.info('%s - "WebSocket %s" %d', self._peer(), _target(request), response.status_code)
        handshake.send_response(response)
        self._close_transport(b"".join(handshake.data_to_send()))

    # -- frames --

    def _frame(self, frame: Frame) -> None:
        opcode = frame.opcode
        if opcode is Opcode.TEXT or opcode is Opcode.BINARY:
            if frame.fin:
                self._message(opcode, frame.data)
            else:
                self._fragment_opcode, self._fragments = opcode, bytearray(frame.data)
        elif opcode is Opcode.CONT:
            # websockets checks the sequence (and the message's total size, ws_max_size).
            if self._fragments is not None:
                self._fragments += frame.data
                if frame.fin:
                    data, self._fragments = self._fragments, None
                    self._message(self._fragment_opcode, data)
        elif opcode is Opcode.PONG:
            if self._ping_payload is not None and bytes(frame.data) == self._ping_payload:
                self._ping_payload = None
                self._schedule_ping()
        elif opcode is Opcode.CLOSE:
            # websockets queued the echo of the peer's close frame (flushed by the caller).
            rcvd = self.conn.close_rcvd
            self._state = _State.CLOSING
            self._end(rcvd.code if rcvd is not None else 1005)

    def _message(self, opcode: Opcode, data: bytes | bytearray | memoryview) -> None:
        if self._receiver is None:
            return
        if opcode is Opcode.BINARY:
            self._receiver.receive(None)
            return
        try:
            text = bytes(data).decode()
        except UnicodeDecodeError:
            self.conn.fail(1007, "invalid UTF-8 in a text message")
            self._failed()
            return
        self._receiver.receive(text)

    def _failed(self) -> None:
        """The connection failed for a protocol error (1002, 1007, 1009...): websockets
        queued the close frame; the transport closes without waiting for an echo."""
        sent = self.conn.close_sent
        self.flush()
        self._close_transport(b"")
        self._end(sent.code if sent is not None else ABNORMAL_CLOSURE)

    # -- heartbeat --

    def _schedule_ping(self) -> None:
        interval = self._config.ws_ping_interval
        if interval is not None and interval > 0 and self._state is _State.OPEN:
            self._set_timer(interval, self._ping)

    def _ping(self) -> None:
        self._timer = None
        # A random payload identifies this ping: a stale or unsolicited pong is ignored.
        self._ping_payload = struct.pack("!I", random.getrandbits(32))
        self.conn.send_ping(self._ping_payload)
        self.flush()
        timeout = self._config.ws_ping_timeout
        if timeout is not None:
            self._set_timer(timeout, self._pong_missed)
        else:
            self._schedule_ping()

    def _pong_missed(self) -> None:
        # The peer did not answer within the heartbeat: the session ends now (its slot is
        # free at once), the transport closes without waiting for an echo, and the socket
        # goes at the latest after the close grace.
        self._timer = None
        self._ping_payload = None
        self.close(1011, "keepalive ping timeout")
        self._close_transport(b"")

    # -- closing --

    @property
    def closing(self) -> bool:
        return self._state is not _State.OPEN or self.transport.is_closing()

    @property
    def compressed(self) -> bool:
        return bool(self.conn.extensions)

    def close(self, code: int, reason: str = "") -> None:
        """Send a close frame now (whatever is buffered goes first) and end the session.

        The receiver hears of it on the next loop turn: this is called from inside the
        application (a slow consumer dropped during a fan-out), which must not see its
        own membership change under it.
        """
        if self.closing:
            return
        self._state = _State.CLOSING
        try:
            self.conn.send_close(code, reason)
            self.flush()
        except Exception:
            # The close frame cannot be written (a transport in a state nothing expected,
            # which may be why this close was called): drop the connection at once. The
            # session still ends below; it must not wait for a TCP close that may never
            # come, holding its rooms and its slot.
            log.warning("closing a connection (%d) failed: aborting it", code, exc_info=True)
            self.transport.abort()
        else:
            self._set_timer(CLOSE_TIMEOUT, self._abort)
            if self.read_paused:  # read the peer's close frame
                self.resume_reading()
        receiver, self._receiver = self._receiver, None
        if receiver is not None:
            asyncio.get_running_loop().call_soon(receiver.ended, code)
        self._wake_writer()

    def _close_transport(self, last: bytes) -> None:
        """Write `last`, close the transport, abort it after the grace if still there."""
        if self._state is _State.CLOSED:
            return
        self._state = _State.CLOSING
        if last:
            self.transport.write(last)
        if not self.transport.is_closing():
            self.transport.close()
            self._set_timer(CLOSE_TIMEOUT, self._abort)

    def _abort(self) -> None:
        self._timer = None
        if self._state is not _State.CLOSED:
            self.transport.abort()

    def _end(self, code: int) -> None:
        receiver, self._receiver = self._receiver, None
        if receiver is not None:
            receiver.ended(code)
        self._wake_writer()

    # -- helpers --

    def flush(self) -> None:
        """Write what websockets has queued (control frames, compressed messages); close
        the transport when it ends the stream (SEND_EOF: the closing handshake is done)."""
        chunks = self.conn.data_to_send()
        if not chunks or self._state is _State.CLOSED:
            return
        self.transport.write(b"".join(chunks))
        if chunks[-1] == SEND_EOF:
            self._close_transport(b"")

    def pause_reading(self) -> None:
        if not self.read_paused and self._state is _State.OPEN:
            self.read_paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.read_paused and self._state is not _State.CLOSED:
            self.read_paused = False
            self.transport.resume_reading()

    def _wake_writer(self) -> None:
        if self.socket is not None and self.socket.on_resume is not None:
            self.socket.on_resume()

    def _set_timer(self, delay: float, callback: Callable[[], None]) -> None:
        self._cancel_timer()
        self._timer = asyncio.get_running_loop().call_later(delay, callback)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    @property
    def client(self) -> tuple[str, int] | None:
        """The peer's address (read during the handshake only: not kept per connection)."""
        peer = self.transport.get_extra_info("peername")
        if isinstance(peer, tuple) and len(peer) >= 2:
            return (str(peer[0]), int(peer[1]))
        return None

    def _peer(self) -> str:
        client = self.client
        return f"{client[0]}:{client[1]}" if client else ""


_STATUSES = frozenset(status.value for status in http.HTTPStatus)


def _target(request: Request) -> str:
    """The request target as uvicorn logs it (relay.server redacts its query)."""
    path, _, query = request.path.partition("?")
    return f"{quote(unquote(path))}?{query}" if query else quote(unquote(path))


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
    endpoint: Endpoint,
    on_refusal: Refusal,
    handshake_seconds: float = HANDSHAKE_SECONDS,
    frame_reader: FrameReaderType | None = None,
) -> tuple[type[RelayHttpProtocol], type[RelayWebSocketProtocol]]:
    """The HTTP and WebSocket protocols for uvicorn: `/ws` upgrades go to `endpoint`
    (with uvicorn's ws_* settings); refusals are reported to `on_refusal`; open
    connections' frames are read by `frame_reader` (the compiled core) or, when None,
    by websockets."""
    hook = {"on_refusal": staticmethod(on_refusal)}
    http_protocol = type(
        "RelayHttp", (RelayHttpProtocol,), {**hook, "handshake_seconds": handshake_seconds}
    )
    ws_protocol = type(
        "RelayWebSocket",
        (RelayWebSocketProtocol,),
        {
            **hook,
            "__slots__": (),
            "endpoint": endpoint,
            "frame_reader": staticmethod(frame_reader) if frame_reader else None,
        },
    )
    return http_protocol, ws_protocol
