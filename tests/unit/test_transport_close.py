"""A server-side close whose close frame cannot be written (relay.transport)."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import pytest
from uvicorn.server import ServerState
from websockets.protocol import State
from websockets.server import ServerProtocol

from relay.transport import RelayWebSocketProtocol, _State

pytestmark = pytest.mark.unit


class BrokenTransport(asyncio.Transport):
    """A transport in a state nothing expected: every write raises. No socket can be
    made to do that on demand, so this one stands in for it."""

    def __init__(self) -> None:
        super().__init__()
        self.aborted = False

    def write(self, data: Any) -> None:
        raise OSError("the transport is broken")

    def abort(self) -> None:
        self.aborted = True

    def is_closing(self) -> bool:
        return self.aborted


class Receiver:
    def __init__(self) -> None:
        self.codes: list[int] = []
        self.over = asyncio.Event()

    def receive(self, text: str | None) -> None:
        raise AssertionError("nothing is received here")

    def ended(self, code: int) -> None:
        self.codes.append(code)
        self.over.set()


async def test_a_close_that_cannot_write_its_frame_aborts_and_still_ends_the_session(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Before: the close frame's write raised out of `close`, after the state had moved
    to closing and before the session was told, so the session kept its rooms and slot
    until a TCP close that might never come (every later close returned early)."""
    protocol = RelayWebSocketProtocol(cast(Any, None), ServerState(), {})
    transport = BrokenTransport()
    protocol.connection_made(transport)
    protocol.conn = ServerProtocol()
    protocol.conn.state = State.OPEN
    protocol._state = _State.OPEN
    receiver = Receiver()
    protocol._receiver = cast(Any, receiver)
    protocol.close(1011)  # raised OSError before
    assert transport.aborted
    await asyncio.wait_for(receiver.over.wait(), 1)
    assert receiver.codes == [1011]
    assert "closing a connection (1011) failed: aborting it" in caplog.text
