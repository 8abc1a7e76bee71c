"""`Connection`: one WebSocket, raw protocol messages as dicts, no reconnect.

For tools, load generators and protocol tests that need the wire as it is (send any
frame, see every message). Applications want `Client`, which reconnects and resumes.

Replies are matched to requests by `ref`; everything else the server sends (events,
`reconnect`, errors without a ref) arrives through `receive()`. The inbox is bounded
(`INBOX_SIZE`); when it is full the reader stops reading the socket, and the server's
slow-consumer policy decides, as for any other client.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator
from types import TracebackType
from typing import Any

from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from gamecluster_client import messages
from gamecluster_client.errors import ConnectionLostError, ProtocolError, server_error
from gamecluster_client.handshake import open_socket

INBOX_SIZE = 10_000
"""Messages buffered for `receive()`; when full, the socket is not read (back-pressure)."""


class Connection:
    def __init__(self, url: str, *, token: str | None = None, timeout: float = 10.0) -> None:
        self.url = url
        self.token = token
        self.timeout = timeout
        self.welcome: dict[str, Any] = {}
        self.close_code: int | None = None
        self._ws: ClientConnection | None = None
        self._refs = itertools.count(1)
        self._waiting: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue(INBOX_SIZE)
        self._reader: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Connection:
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
        """Open the socket and return the `welcome`. Raises UnauthorizedError (401),
        HandshakeError (other refusals), OSError/TimeoutError (network)."""
        self._ws = await open_socket(self.url, self.token, self.timeout)
        self._reader = asyncio.create_task(self._read(self._ws))
        self.welcome = await self.receive()
        messages.Welcome.parse(self.welcome)  # raises ProtocolError when it is not one
        return self.welcome

    async def close(self) -> None:
        if self._ws is not None:
            await self._ws.close()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader

    def abort(self) -> None:
        """Cut the socket at once, as a network failure would (no close handshake)."""
        if self._ws is not None:
            self._ws.transport.abort()

    async def request(self, message: dict[str, Any]) -> dict[str, Any]:
        """Send one message and wait for the reply carrying its `ref`; an `error` reply
        raises its ServerError subclass."""
        ref = str(next(self._refs))
        reply: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[ref] = reply
        try:
            await self.send({**message, "ref": ref})
            answer = await asyncio.wait_for(reply, self.timeout)
        finally:
            self._waiting.pop(ref, None)
        if answer.get("op") == "error":
            raise server_error(answer)
        return answer

    async def send(self, message: dict[str, Any]) -> None:
        await self.send_raw(messages.encode(message))

    async def send_raw(self, frame: str) -> None:
        """Send a text frame as is (one or more messages; or anything, to test a server)."""
        if self._ws is None:
            raise RuntimeError("not connected: call connect() first")
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

    async def presence(self, room: str) -> dict[str, Any]:
        return await self.request({"op": "presence", "room": room})

    async def ping(self) -> dict[str, Any]:
        return await self.request({"op": "ping"})

    async def receive(self, timeout: float | None = None) -> dict[str, Any]:
        """The next message that is not a reply (events, reconnect, unsolicited errors);
        `{"op": "closed", "code": N}` once the socket closed."""
        return await asyncio.wait_for(self._inbox.get(), timeout or self.timeout)

    async def events(self) -> AsyncIterator[dict[str, Any]]:
        """Every message `receive()` would return, until the socket closes."""
        while True:
            message = await self._inbox.get()
            if message.get("op") == "closed":
                return
            yield message

    async def _read(self, ws: ClientConnection) -> None:
        try:
            async for frame in ws:
                for message in messages.decode(frame):
                    await self._dispatch(message)
        except ConnectionClosed:
            pass
        except ProtocolError:
            await ws.close(1002, "protocol error")
        finally:
            self.close_code = ws.close_code
            for waiter in self._waiting.values():
                if not waiter.done():
                    waiter.set_exception(
                        ConnectionLostError(f"connection closed ({ws.close_code})")
                    )
            with contextlib.suppress(asyncio.QueueFull):
                self._inbox.put_nowait({"op": "closed", "code": ws.close_code})

    async def _dispatch(self, message: dict[str, Any]) -> None:
        ref = message.get("ref")
        waiter = self._waiting.get(ref) if isinstance(ref, str) else None
        if waiter is not None and not waiter.done():
            waiter.set_result(message)
        else:
            await self._inbox.put(message)
