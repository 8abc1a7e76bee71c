"""An async Python client for the relay protocol, used by the CLI, tests and benchmarks.

Replies are matched to requests by `ref`; everything else the server sends (events,
`reconnect`, errors without a ref) arrives through `receive()`. The inbox is bounded:
when the application stops reading, the client stops reading the socket too, and the
server's slow-consumer policy decides, as for any other client.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator
from types import TracebackType
from typing import Any

import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

INBOX_SIZE = 10_000


class RelayError(Exception):
    """The server answered with an `error` message."""

    def __init__(self, message: dict[str, Any]) -> None:
        super().__init__(f"{message.get('code')}: {message.get('message')}")
        self.code: str = message.get("code", "")
        self.reply = message


class RelayClient:
    def __init__(self, url: str, *, token: str | None = None, timeout: float = 10.0) -> None:
        self.url = url
        self.token = token
        self.timeout = timeout
        self.welcome: dict[str, Any] = {}
        self._ws: ClientConnection | None = None
        self._refs = itertools.count(1)
        self._waiting: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue(INBOX_SIZE)
        self._reader: asyncio.Task[None] | None = None
        self.close_code: int | None = None

    async def __aenter__(self) -> RelayClient:
        await self.connect()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def connect(self) -> dict[str, Any]:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else None
        self._ws = await connect(
            self.url,
            additional_headers=headers,
            open_timeout=self.timeout,
            max_size=None,
            compression=None,
        )
        self._reader = asyncio.create_task(self._read(self._ws))
        self.welcome = await self.receive()
        if self.welcome.get("op") != "welcome":
            raise RelayError(
                {"code": "protocol", "message": f"expected welcome, got {self.welcome}"}
            )
        return self.welcome

    async def close(self) -> None:
        if self._ws is not None:
            await self._ws.close()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader

    async def request(self, message: dict[str, Any]) -> dict[str, Any]:
        """Send one message and wait for the reply carrying its `ref`."""
        ref = str(next(self._refs))
        reply: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[ref] = reply
        try:
            await self.send({**message, "ref": ref})
            answer = await asyncio.wait_for(reply, self.timeout)
        finally:
            self._waiting.pop(ref, None)
        if answer.get("op") == "error":
            raise RelayError(answer)
        return answer

    async def send(self, message: dict[str, Any]) -> None:
        await self.send_raw(orjson.dumps(message).decode())

    async def send_raw(self, frame: str) -> None:
        """Send a text frame as is (one or more messages; or anything, to test a server)."""
        if self._ws is None:
            raise RuntimeError("not connected")
        await self._ws.send(frame)

    async def join(self, room: str, since: dict[str, Any] | None = None) -> dict[str, Any]:
        message: dict[str, Any] = {"op": "join", "room": room}
        if since is not None:
            message["since"] = since
        return await self.request(message)

    async def leave(self, room: str) -> dict[str, Any]:
        return await self.request({"op": "leave", "room": room})

    async def publish(self, room: str, data: Any, id: str | None = None) -> dict[str, Any] | None:
        """Publish; with an `id`, wait for and return the ack."""
        message: dict[str, Any] = {"op": "publish", "room": room, "data": data}
        if id is None:
            await self.send(message)
            return None
        message["id"] = id
        return await self.request(message)

    async def ping(self) -> dict[str, Any]:
        return await self.request({"op": "ping"})

    async def receive(self, timeout: float | None = None) -> dict[str, Any]:
        """The next message that is not a reply (events, reconnect, unsolicited errors)."""
        return await asyncio.wait_for(self._inbox.get(), timeout or self.timeout)

    async def events(self) -> AsyncIterator[dict[str, Any]]:
        while True:
            message = await self._inbox.get()
            if message.get("op") == "closed":
                return
            yield message

    async def _read(self, ws: ClientConnection) -> None:
        try:
            async for frame in ws:
                for line in (frame if isinstance(frame, str) else frame.decode()).split("\n"):
                    if line:
                        await self._dispatch(orjson.loads(line))
        except ConnectionClosed:
            pass
        finally:
            self.close_code = ws.close_code
            closed = {"op": "closed", "code": ws.close_code}
            for waiter in self._waiting.values():
                if not waiter.done():
                    waiter.set_exception(ConnectionError(f"connection closed ({ws.close_code})"))
            with contextlib.suppress(asyncio.QueueFull):
                self._inbox.put_nowait(closed)

    async def _dispatch(self, message: dict[str, Any]) -> None:
        ref = message.get("ref")
        waiter = self._waiting.get(ref) if isinstance(ref, str) else None
        if waiter is not None and not waiter.done():
            waiter.set_result(message)
        else:
            await self._inbox.put(message)
