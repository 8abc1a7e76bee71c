"""The compiled core's outbox writes to an open, uncompressed connection's transport
directly (core/src/outbox.rs, `Direct`), reading the protocol's flow control and state
itself: these run both outboxes on relay.transport's real protocol (a recording transport
in place of the socket), where test_outbox.py's fake socket never takes that path.

Review of #18: with the direct write's state checks removed, or its `paused` forced to
False, the unit tiers still passed (only test_limits' slow consumer caught the second).
"""

from __future__ import annotations

import asyncio
import struct
from typing import Any

import pytest
from uvicorn.config import Config
from uvicorn.server import ServerState

from relay import core, outbox, transport
from support.wsraw import upgrade_request

pytestmark = pytest.mark.unit


class RecordingTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.written = bytearray()
        self.closing = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += data

    def close(self) -> None:
        self.closing = True

    def abort(self) -> None:
        self.closing = True

    def is_closing(self) -> bool:
        return self.closing

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 1) if name == "peername" else default


class Accepting:
    def open(self, handshake: transport.Handshake) -> transport.Receiver:
        handshake.accept()
        return self

    def receive(self, text: str | None) -> None:
        pass

    def ended(self, code: int) -> None:
        pass


def opened() -> tuple[transport.RelayWebSocketProtocol, RecordingTransport]:
    _, ws_protocol = transport.protocols(Accepting(), lambda status: None)
    config = Config(app=None, ws_ping_interval=None)
    protocol = ws_protocol(config, ServerState(), {})
    recorder = RecordingTransport()
    protocol.connection_made(recorder)
    protocol.data_received(upgrade_request())
    assert recorder.written.startswith(b"HTTP/1.1 101")
    recorder.written.clear()
    return protocol, recorder


@pytest.fixture(params=["rust", "python"])
def scheduler(request: pytest.FixtureRequest) -> outbox.Scheduler:
    chosen = core.select("on" if request.param == "rust" else "off")
    assert chosen.name == request.param
    return outbox.scheduler(chosen)


async def turns(n: int = 3) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


async def test_nothing_is_written_after_the_close_frame(scheduler: outbox.Scheduler) -> None:
    """The server closes (a heartbeat timeout, a drain): the session hears of it on the
    next loop turn, so a fan-out may still push to its outbox meanwhile. That message
    must not follow the close frame onto the wire."""
    protocol, recorder = opened()
    assert protocol.socket is not None
    box = scheduler.outbox(protocol.socket, limit=10, on_overflow=lambda: None)
    box.push(b'{"n":1}')
    await turns()
    assert recorder.written == b"\x81\x07" + b'{"n":1}'
    protocol.close(1001)
    close_frame = struct.pack("!BBH", 0x88, 2, 1001)
    assert recorder.written.endswith(close_frame)
    box.push(b'{"late":1}')
    await turns()
    assert recorder.written.endswith(close_frame)
    protocol._cancel_timer()


async def test_a_paused_transport_queues_then_overflows(scheduler: outbox.Scheduler) -> None:
    """The transport's buffer is over its high-water mark (pause_writing): messages wait,
    past the limit the connection is a slow consumer, and resume_writing sends the rest."""
    protocol, recorder = opened()
    assert protocol.socket is not None
    overflows: list[str] = []
    box = scheduler.outbox(protocol.socket, limit=2, on_overflow=lambda: overflows.append("!"))
    protocol.pause_writing()
    box.push(b"a")
    box.push(b"b")
    await turns()
    assert recorder.written == b"" and overflows == []
    box.push(b"c")
    assert overflows == ["!"]
    protocol.resume_writing()
    await turns()
    assert recorder.written == b"\x81\x03a\nb"
