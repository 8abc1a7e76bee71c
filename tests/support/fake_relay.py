"""A scripted relay for client tests: a real WebSocket server on loopback that does only
what the test tells it, one step at a time.

Each accepted connection is handed to the test (`await fake.accept()`), which reads what
the client sent and answers (welcome, joined, events, close codes) as the scenario needs;
`refuse` decides per handshake whether to answer with an HTTP status instead.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from http import HTTPStatus
from typing import Any

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from support.processes import LOOPBACK


class FakeConnection:
    def __init__(self, ws: ServerConnection, token: str | None, number: int) -> None:
        self.ws = ws
        self.token = token
        self.number = number
        self.done = asyncio.Event()

    async def welcome(self, node: str = "fake", heartbeat: float = 30) -> None:
        await self.send(
            {"op": "welcome", "session": f"s{self.number}", "node": node, "heartbeat": heartbeat}
        )

    async def send(self, *messages: dict[str, Any]) -> None:
        """One frame carrying every message given (the protocol's batching)."""
        await self.ws.send("\n".join(json.dumps(m) for m in messages))

    async def recv(self, timeout: float = 5.0) -> dict[str, Any]:
        message: dict[str, Any] = json.loads(await asyncio.wait_for(self.ws.recv(), timeout))
        return message

    async def expect(self, op: str, timeout: float = 5.0) -> dict[str, Any]:
        message = await self.recv(timeout)
        assert message["op"] == op, f"expected {op}, got {message}"
        return message

    async def close(self, code: int = 1000, reason: str = "") -> None:
        await self.ws.close(code, reason)

    def abort(self) -> None:
        self.ws.transport.abort()

    async def closed(self, timeout: float = 5.0) -> int | None:
        """Wait until the client closed this connection; its close code."""
        try:
            while True:
                await asyncio.wait_for(self.ws.recv(), timeout)
        except ConnectionClosed:
            pass
        return self.ws.close_code

    async def join_ok(
        self, *, offset: int | None = 0, epoch: str | None = "e1", recovered: bool | None = None
    ) -> dict[str, Any]:
        """Answer the next message, which must be a join, with `joined`."""
        join = await self.expect("join")
        joined: dict[str, Any] = {
            "op": "joined",
            "room": join["room"],
            "offset": offset,
            "epoch": epoch,
            "ref": join["ref"],
        }
        if recovered is not None:
            joined["recovered"] = recovered
        await self.send(joined)
        return join


class FakeRelay:
    def __init__(self) -> None:
        self.refuse: Callable[[str | None], int | None] = lambda token: None
        """Called with each handshake's bearer token: an HTTP status refuses it."""
        self.handshakes: list[str | None] = []
        self._accepted: asyncio.Queue[FakeConnection] = asyncio.Queue()
        self._server: Server | None = None

    @property
    def url(self) -> str:
        assert self._server is not None
        port = next(iter(self._server.sockets)).getsockname()[1]
        return f"ws://{LOOPBACK}:{port}/ws"

    async def __aenter__(self) -> FakeRelay:
        self._server = await serve(
            self._handle, LOOPBACK, 0, process_request=self._process_request, compression=None
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    async def accept(self, timeout: float = 5.0) -> FakeConnection:
        return await asyncio.wait_for(self._accepted.get(), timeout)

    def pending(self) -> int:
        return self._accepted.qsize()

    @staticmethod
    def _token(headers: Headers) -> str | None:
        value = headers.get("Authorization")
        return value.removeprefix("Bearer ") if value else None

    def _process_request(self, ws: ServerConnection, request: Request) -> Response | None:
        token = self._token(request.headers)
        self.handshakes.append(token)
        status = self.refuse(token)
        if status is None:
            return None
        return ws.respond(HTTPStatus(status), f"refused by the fake ({status})\n")

    async def _handle(self, ws: ServerConnection) -> None:
        assert ws.request is not None
        connection = FakeConnection(ws, self._token(ws.request.headers), len(self.handshakes))
        await self._accepted.put(connection)
        await ws.wait_closed()
