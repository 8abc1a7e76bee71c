"""A client that survives disconnects: the logic real clients of durable rooms need.

- Connects to one of several relay URLs; when the connection drops, or the server says
  `reconnect`, it reconnects to the next URL with exponential backoff and full jitter.
- Rejoins its rooms with `since` = the last (epoch, offset) it saw, so the server
  replays exactly what it missed; `recovered: false` is surfaced to the application
  as the `joined` message itself (its state is stale: re-sync, e.g. from a snapshot).
- Every publish carries an `id` (a UUID unless given); publishes not yet acked are
  re-sent after a reconnect, to whichever server, until acked. The server deduplicates
  by id, so a retry is stored once. At most `max_unacked` wait at a time (back-pressure).
- Counts what the protocol promises never happens (duplicate or skipped offsets without
  a re-sync notice), so tests and monitoring can check the promise.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import itertools
import logging
import random
import uuid
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from relay.client import RelayError

log = logging.getLogger("relay.reliable")

RETRYABLE = {"unavailable", "rate_limited", "internal"}
TokenSource = Callable[[], str | Awaitable[str]]
INBOX_SIZE = 100_000


@dataclass
class _Position:
    epoch: str | None = None
    offset: int | None = None


@dataclass
class Stats:
    connects: int = 0
    resent: int = 0
    duplicates: int = 0
    """Events at or below the last offset seen: the protocol says this never happens."""
    gaps: int = 0
    """Offsets skipped without a re-sync notice: the protocol says this never happens."""
    not_recovered: int = 0
    extra_acks: int = 0
    """Acks for an id already acked: each publish should be acked exactly once."""


class ReliableClient:
    def __init__(
        self,
        urls: Sequence[str],
        *,
        token: str | TokenSource | None = None,
        max_unacked: int = 1000,
        backoff_base: float = 0.05,
        backoff_cap: float = 2.0,
        open_timeout: float = 5.0,
    ) -> None:
        if not urls:
            raise ValueError("ReliableClient needs at least one URL")
        self.urls = list(urls)
        self.token = token
        """A JWT, or a callable returning a fresh one: called before every connection, so
        a session ended by `token_expired` reconnects with a new token."""
        self.stats = Stats()
        self._rooms: dict[str, _Position] = {}
        self._unacked: OrderedDict[str, dict[str, Any]] = OrderedDict()
        # Ids to send on the current connection, in order: every unacked one after a
        # reconnect, then each new or retried publish. One sender keeps them in order.
        self._unsent: deque[str] = deque()
        self._wakeup = asyncio.Event()
        self._acks: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._slots = asyncio.Semaphore(max_unacked)
        self._inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue(INBOX_SIZE)
        self._ws: ClientConnection | None = None
        self._connected = asyncio.Event()
        self._next_url = itertools.cycle(range(len(self.urls)))
        self._backoff = (backoff_base, backoff_cap)
        self._open_timeout = open_timeout
        self._task: asyncio.Task[None] | None = None
        self._retries: set[asyncio.Task[None]] = set()
        self._closing = False
        self.refused: InvalidStatus | None = None
        """Set when the server refused our (fixed) credentials: the client stopped."""
        self.node: str | None = None
        """The relay server of the current connection, from its `welcome`."""

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="reliable client")
        await self.wait_connected()

    async def wait_connected(self, timeout: float = 30.0) -> None:
        await asyncio.wait_for(self._connected.wait(), timeout)
        if self.refused is not None:
            raise self.refused

    async def close(self) -> None:
        self._closing = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._ws is not None:
            await self._ws.close()

    async def join(self, room: str) -> None:
        """Join `room` now and after every reconnect (resuming from the last event seen)."""
        self._rooms.setdefault(room, _Position())
        if self._ws is not None:
            await self._send_join(self._ws, room)

    def publish(
        self, room: str, data: Any, id: str | None = None
    ) -> asyncio.Future[dict[str, Any]]:
        """Queue a publish; the future resolves with its ack (across reconnects if need be)."""
        msg_id = id or str(uuid.uuid4())
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._acks[msg_id] = future
        message = {"op": "publish", "room": room, "data": data, "id": msg_id}
        asyncio.create_task(self._submit(msg_id, message))  # noqa: RUF006 - tracked by future
        return future

    def drop_connection(self) -> None:
        """Cut the current connection at once, as a network failure would (for tests)."""
        if self._ws is not None:
            self._ws.transport.abort()

    async def receive(self, timeout: float = 10.0) -> dict[str, Any]:
        """The next event, or `joined` notice with recovered: false, in arrival order."""
        return await asyncio.wait_for(self._inbox.get(), timeout)

    async def _submit(self, msg_id: str, message: dict[str, Any]) -> None:
        await self._slots.acquire()
        self._unacked[msg_id] = message
        self._queue_send(msg_id)

    def _queue_send(self, msg_id: str) -> None:
        self._unsent.append(msg_id)
        self._wakeup.set()

    async def _send_unsent(self, ws: ClientConnection) -> None:
        while True:
            while self._unsent:
                message = self._unacked.get(self._unsent.popleft())
                if message is not None:
                    await ws.send(orjson.dumps(message).decode())
            self._wakeup.clear()
            await self._wakeup.wait()

    async def _run(self) -> None:
        attempt = 0
        while not self._closing:
            url = self.urls[next(self._next_url)]
            try:
                token = await self._current_token()
                async with connect(
                    url,
                    additional_headers={"Authorization": f"Bearer {token}"} if token else None,
                    open_timeout=self._open_timeout,
                    max_size=None,
                    compression=None,
                ) as ws:
                    attempt = 0
                    await self._session(ws)
            except InvalidStatus as exc:
                status = exc.response.status_code
                if status in (401, 403) and not callable(self.token):
                    # The same credentials will be refused again: retrying is a loop.
                    log.error("relay %s refused this client (HTTP %d); giving up", url, status)
                    self.refused = exc
                    self._connected.set()  # wake waiters; they see .refused
                    return
                log.debug("connection to %s refused: HTTP %d", url, status)
            except (OSError, TimeoutError, ConnectionClosed, InvalidHandshake) as exc:
                log.debug("connection to %s ended: %r", url, exc)
            except Exception:
                log.exception("connection to %s failed; reconnecting", url)
            finally:
                self._ws = None
                self._connected.clear()
            base, cap = self._backoff
            await asyncio.sleep(random.uniform(0, min(cap, base * 2**attempt)))
            attempt += 1

    async def _current_token(self) -> str | None:
        if not callable(self.token):
            return self.token
        token = self.token()
        return await token if inspect.isawaitable(token) else token

    async def _session(self, ws: ClientConnection) -> None:
        welcome = orjson.loads(str(await asyncio.wait_for(ws.recv(), self._open_timeout)))
        self.node = welcome.get("node")
        self.stats.connects += 1
        # 1. Resume every room from the last event seen, 2. re-send what is not acked;
        #    the server answers joins first (in order), so replays precede new events.
        # Rooms joined while these joins are sent are picked up by the next round; once a
        # round sends nothing new, `_ws` is set with no await in between.
        joined: set[str] = set()
        while new := [room for room in self._rooms if room not in joined]:
            for room in new:
                await self._send_join(ws, room)
                joined.add(room)
        self.stats.resent += len(self._unacked)
        self._unsent = deque(self._unacked)
        self._ws = ws
        self._connected.set()
        sender = asyncio.create_task(self._send_unsent(ws))
        try:
            async for frame in ws:
                for line in str(frame).split("\n"):
                    if line and await self._handle(ws, orjson.loads(line)):
                        return
        finally:
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionClosed):
                await sender

    async def _send_join(self, ws: ClientConnection, room: str) -> None:
        position = self._rooms[room]
        message: dict[str, Any] = {"op": "join", "room": room, "ref": f"join:{room}"}
        if position.epoch is not None and position.offset is not None:
            message["since"] = {"epoch": position.epoch, "offset": position.offset}
        with contextlib.suppress(ConnectionClosed):
            await ws.send(orjson.dumps(message).decode())

    async def _handle(self, ws: ClientConnection, message: dict[str, Any]) -> bool:
        """Handle one server message; True when this connection should be given up."""
        op = message.get("op")
        if op == "event":
            await self._on_event(message)
        elif op == "joined":
            await self._on_joined(message)
        elif op == "ack":
            self._settle(message["id"], message)
        elif op == "error":
            await self._on_error(ws, message)
        elif op == "reconnect":
            return True
        return False

    async def _on_event(self, event: dict[str, Any]) -> None:
        position = self._rooms.get(event["room"])
        offset = event.get("offset")
        if position is not None and offset is not None:
            if position.offset is not None:
                if offset <= position.offset:
                    self.stats.duplicates += 1
                    return
                if offset > position.offset + 1:
                    self.stats.gaps += 1
            position.offset = offset
        await self._inbox.put(event)  # full inbox: stop reading (back-pressure)

    async def _on_joined(self, joined: dict[str, Any]) -> None:
        position = self._rooms.get(joined["room"])
        if position is None:
            return
        if joined.get("recovered") is not True:
            # A fresh start (first join, or history lost): continue from the server's
            # position. When recovered, the replay that follows advances it instead.
            position.epoch, position.offset = joined.get("epoch"), joined.get("offset")
        if joined.get("recovered") is False:
            self.stats.not_recovered += 1
            await self._inbox.put(joined)

    async def _on_error(self, ws: ClientConnection, error: dict[str, Any]) -> None:
        code, msg_id, ref = error.get("code"), error.get("id"), error.get("ref")
        if code in RETRYABLE:
            retry = asyncio.create_task(self._retry(ws, msg_id, ref, error.get("room")))
            self._retries.add(retry)
            retry.add_done_callback(self._retries.discard)
            return
        if msg_id is not None:
            self._settle(msg_id, error, failed=True)
        else:
            log.warning("server refused a message: %s", error)

    async def _retry(self, ws: ClientConnection, msg_id: Any, ref: Any, room: Any) -> None:
        """Send a refused-for-now publish or join again after a jittered pause."""
        await asyncio.sleep(random.uniform(0, self._backoff[1]))
        if ws is not self._ws:
            return  # that connection is gone; the reconnect re-sent everything
        if isinstance(msg_id, str) and msg_id in self._unacked:
            self._queue_send(msg_id)
        elif isinstance(ref, str) and ref.startswith("join:") and room in self._rooms:
            await self._send_join(ws, room)

    def _settle(self, msg_id: str, reply: dict[str, Any], *, failed: bool = False) -> None:
        if self._unacked.pop(msg_id, None) is not None:
            self._slots.release()
        future = self._acks.pop(msg_id, None)
        if future is None:
            self.stats.extra_acks += 1
            return
        if future.done():
            return
        if failed:
            future.set_exception(RelayError(reply))
        else:
            future.set_result(reply)
