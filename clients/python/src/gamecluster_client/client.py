"""`Client`: rooms over a list of relay URLs that survive disconnects.

- Connects to one of several relay URLs; when the connection drops, or the server says
  `reconnect`, it connects to the next URL after an exponential, fully jittered delay
  (no delay after `token_expired` or a token refresh).
- Rejoins its rooms with `since` = the last (epoch, offset) read, so the server replays
  exactly what was missed, from any pod; a room that cannot be resumed gets `Lost`.
- Every publish carries an `id`; publishes not yet acked are re-sent in their original
  order with the same ids after a reconnect. The server stores an id once.
- A token source (callable) is asked for a token per connection and shortly before the
  token's `exp`; a 401 gets one fresh token, a refused fresh token stops the client with
  UnauthorizedError. Close 4003 (`disconnect`) stops it with DisconnectedError.
- Counts what the protocol promises never happens (duplicate or skipped offsets without
  `Lost`) in `stats`, so tests and monitoring can check the promise.

One task reads the socket and one writes it; `close()` cancels both and fails every
waiting call with ClientClosedError.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import itertools
import logging
import urllib.parse
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from gamecluster_client import messages, tokens
from gamecluster_client.backoff import DEFAULT_BACKOFF, Backoff
from gamecluster_client.errors import (
    ClientClosedError,
    ConnectionLostError,
    DisconnectedError,
    HandshakeError,
    ProtocolError,
    PublishTimeoutError,
    UnauthorizedError,
    server_error,
)
from gamecluster_client.handshake import open_socket
from gamecluster_client.messages import (
    Ack,
    Connected,
    Connecting,
    Disconnected,
    Event,
    Joined,
    Position,
    PresenceChange,
    StateChange,
    Welcome,
)
from gamecluster_client.room import DEFAULT, Room, RoomState, Timeout

log = logging.getLogger("gamecluster_client")

CLOSE_TOKEN_EXPIRED = 4001
CLOSE_DISCONNECTED = 4003


class ClientState(enum.Enum):
    IDLE = "idle"
    CONNECTING = "connecting"
    CONNECTED = "connected"
    CLOSED = "closed"
    """Stopped for good: close(), or a terminal error (see `Client.error`)."""


@dataclass
class Stats:
    connects: int = 0
    resent: int = 0
    """Publishes re-sent after a reconnect."""
    duplicates: int = 0
    """Events at or below the last offset seen (dropped): the protocol says never."""
    gaps: int = 0
    """Offsets skipped without `Lost`: the protocol says never."""
    not_recovered: int = 0
    """Rejoins and notices with recovered: false (each one a `Lost`)."""
    extra_acks: int = 0
    """Acks for an id no publish waits for (acked twice, or after its timeout)."""


@dataclass
class _Pending:
    message: dict[str, Any]
    future: asyncio.Future[Ack]


def _safe(url: str) -> str:
    """A URL fit for a log line: no query (`?token=` is how browsers send JWTs) and no
    user:password."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    host = f"[{host}]" if ":" in host else host
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, "", ""))


class _TokenSourceError(Exception):
    """The application's token callable raised: retried like a failed connection."""


@dataclass
class _End:
    """Why a session ended, and what the run loop does next."""

    code: int | None
    reason: str
    connected: bool = False
    token_expired: bool = False
    terminal: BaseException | None = None


class Client:
    def __init__(
        self,
        urls: str | Sequence[str],
        *,
        token: str | tokens.TokenSource | None = None,
        backoff: Backoff = DEFAULT_BACKOFF,
        open_timeout: float = 5.0,
        request_timeout: float = 10.0,
        publish_timeout: float | None = 10.0,
        max_in_flight: int = 1000,
        room_buffer: int = 10_000,
        token_refresh_margin: float | None = 10.0,
        on_state: Callable[[StateChange], None] | None = None,
    ) -> None:
        """
        urls: relay WebSocket URLs, tried in turn.
        token: a JWT, or a callable (sync or async) returning a fresh one.
        request_timeout: default bound of join/leave/presence (seconds).
        publish_timeout: default bound of publish, slot wait included; None: unbounded.
        max_in_flight: publishes sent and not yet acked, at most. Overflow policy: a
            further publish() waits for a slot (back-pressure on the caller), the wait
            counting toward its timeout; nothing is dropped, no task is spawned.
        room_buffer: unread messages per room, at most (policy: see `Room`).
        token_refresh_margin: seconds before `exp` to fetch the next token and move to a
            fresh connection (at most half of what is left); None: no early move, the
            server ends the session at `exp` (4001) and the client reconnects at once.
        on_state: called (synchronously) with Connecting/Connected/Disconnected.
        """
        self.urls = [urls] if isinstance(urls, str) else list(urls)
        if not self.urls:
            raise ValueError("Client needs at least one URL")
        if max_in_flight < 1 or room_buffer < 1:
            raise ValueError("max_in_flight and room_buffer must be at least 1")
        self.backoff = backoff
        self.open_timeout = open_timeout
        self.request_timeout = request_timeout
        self.publish_timeout = publish_timeout
        self.room_buffer = room_buffer
        self.token_refresh_margin = token_refresh_margin
        self.on_state = on_state
        self.stats = Stats()
        self.state = ClientState.IDLE
        self.welcome: Welcome | None = None
        """The current connection's `welcome` (node, session), None between connections."""
        self.error: BaseException | None = None
        """Why the client stopped (None while running or after close())."""
        self._token_source = token
        self._rooms: dict[str, Room] = {}  # every room made; joined ones are rejoined
        self._unacked: OrderedDict[str, _Pending] = OrderedDict()
        self._slots = asyncio.Semaphore(max_in_flight)
        # What the writer sends on the current connection, in order: control messages
        # (joins, leaves, requests; one per room or awaiting caller) before publish ids.
        self._control: deque[str] = deque()
        self._unsent: deque[str] = deque()
        self._wakeup = asyncio.Event()
        self._refs = itertools.count(1)
        self._join_refs: dict[str, str] = {}  # ref -> room, on the current connection
        self._requests: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._ws: ClientConnection | None = None
        self._ready = asyncio.Event()  # connected, or stopped for good
        self._next_url = itertools.cycle(range(len(self.urls)))
        self._prefetched: str | None = None
        self._disconnect_reason: str | None = None
        self._task: asyncio.Task[None] | None = None

    # -- lifecycle -----------------------------------------------------------------------

    async def __aenter__(self) -> Client:
        await self.connect()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def connect(self, timeout: float | None = 30.0) -> Welcome:
        """Start, and wait for the first connection (to any URL). Raises the terminal
        error (UnauthorizedError, HandshakeError 403, DisconnectedError), or TimeoutError
        (the client keeps trying in the background until close())."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="gamecluster client")
        async with asyncio.timeout(timeout):
            while True:
                await self._wait_connected()
                if self.welcome is not None:
                    return self.welcome
                await asyncio.sleep(0)  # that connection ended already: wait for the next

    async def close(self) -> None:
        """Stop: close the connection, fail every waiting call with ClientClosedError,
        end every room's stream. Unacked publishes are not sent again."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._stop(ClientClosedError("the client was closed"))

    def room(self, name: str, *, since: Position | None = None) -> Room:
        """The room object for `name` (the same one on every call). `since`: resume from a
        position the application kept (e.g. across restarts) on the first join."""
        room = self._rooms.get(name)
        if room is None:
            room = self._rooms[name] = Room(self, name, since, self.room_buffer)
        elif since is not None and room.state is RoomState.IDLE:
            room.position = since
        return room

    def drop_connection(self) -> None:
        """Cut the current connection at once, as a network failure would (for tests)."""
        if self._ws is not None:
            self._ws.transport.abort()

    @property
    def node(self) -> str | None:
        return self.welcome.node if self.welcome is not None else None

    # -- calls behind Room ---------------------------------------------------------------

    def _timeout(self, timeout: Timeout) -> float | None:
        return self.request_timeout if timeout is DEFAULT else timeout

    async def _join(self, room: Room, timeout: float | None) -> Joined:
        self._raise_if_stopped()
        if room.state is RoomState.JOINED and room.joined is not None:
            return room.joined
        waiter = room._join_waiter
        if room.state is RoomState.IDLE or waiter is None:
            waiter = room._begin_join()
            if self._ws is not None:
                self._send_join(room)  # else the next connection sends it
        try:
            async with asyncio.timeout(timeout):
                return await asyncio.shield(waiter)
        except BaseException:
            if room.state is RoomState.JOINING:  # gave up (timeout, cancel): not in it
                room.state = RoomState.IDLE
                if self._ws is not None:
                    self._send_control({"op": "leave", "room": room.name})
            raise

    async def _leave(self, room: Room, timeout: float | None) -> None:
        was_in = room.state is not RoomState.IDLE
        room._drop_unread()
        room._finish(None)
        if was_in and self._ws is not None:
            with contextlib.suppress(ConnectionLostError):  # gone: it is not rejoined
                await self._request({"op": "leave", "room": room.name}, timeout, once=True)

    async def _publish(
        self, room: str, data: Any, msg_id: str | None, timeout: float | None
    ) -> Ack:
        self._raise_if_stopped()
        msg_id = msg_id if msg_id is not None else str(uuid.uuid4())
        try:
            async with asyncio.timeout(timeout):
                await self._slots.acquire()  # bounded in-flight: see max_in_flight
                try:
                    if msg_id in self._unacked:
                        raise ValueError(f"a publish with id {msg_id!r} is already in flight")
                    future: asyncio.Future[Ack] = asyncio.get_running_loop().create_future()
                    message = {"op": "publish", "room": room, "data": data, "id": msg_id}
                    self._unacked[msg_id] = _Pending(message, future)
                    self._unsent.append(msg_id)
                    self._wakeup.set()
                    return await future
                finally:
                    self._unacked.pop(msg_id, None)  # withdrawn from re-sends
                    self._slots.release()
        except TimeoutError as exc:
            raise PublishTimeoutError(f"no ack for publish {msg_id!r} in {timeout}s") from exc

    async def _request(
        self, message: dict[str, Any], timeout: float | None, *, once: bool = False
    ) -> dict[str, Any]:
        """Send `message` with a ref and return the reply; sent again on the next
        connection if this one ends first (unless `once`)."""
        async with asyncio.timeout(timeout):
            while True:
                await self._wait_connected()
                ref = f"r{next(self._refs)}"
                reply: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
                self._requests[ref] = reply
                self._send_control({**message, "ref": ref})
                try:
                    answer = await reply
                except ConnectionLostError:
                    if once:
                        raise
                    continue
                finally:
                    self._requests.pop(ref, None)
                if answer.get("op") == "error":
                    raise server_error(answer)
                return answer

    async def _wait_connected(self) -> None:
        await self._ready.wait()
        self._raise_if_stopped()

    def _raise_if_stopped(self) -> None:
        if self.state is ClientState.CLOSED:
            raise self.error or ClientClosedError("the client was closed")

    # -- the writer ----------------------------------------------------------------------

    def _send_control(self, message: dict[str, Any]) -> None:
        self._control.append(messages.encode(message))
        self._wakeup.set()

    def _send_join(self, room: Room) -> None:
        ref = f"j{next(self._refs)}"
        self._join_refs[ref] = room.name
        message: dict[str, Any] = {"op": "join", "room": room.name, "ref": ref}
        if room.position is not None:
            message["since"] = room.position.as_since()
        self._send_control(message)

    async def _write(self, ws: ClientConnection) -> None:
        """The connection's only writer: control messages first, then publishes in id
        order (so re-sends keep their original order)."""
        while True:
            while self._control or self._unsent:
                if self._control:
                    frame = self._control.popleft()
                else:
                    pending = self._unacked.get(self._unsent.popleft())
                    if pending is None:
                        continue  # acked or withdrawn meanwhile
                    frame = messages.encode(pending.message)
                await ws.send(frame)
            self._wakeup.clear()
            await self._wakeup.wait()

    def _requeue(self, ws: ClientConnection, msg_id: str) -> None:
        """A publish refused for now (unavailable, rate_limited): send it again."""
        if ws is self._ws and msg_id in self._unacked:
            self._unsent.append(msg_id)
            self._wakeup.set()

    def _rejoin(self, ws: ClientConnection, name: str) -> None:
        room = self._rooms.get(name)
        if ws is self._ws and room is not None and room.state is not RoomState.IDLE:
            self._send_join(room)

    # -- the run loop --------------------------------------------------------------------

    async def _run(self) -> None:
        try:
            await self._reconnect_forever()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug: stop loudly rather than hang every caller
            log.exception("the client's run loop failed")
            self._stop(exc)

    async def _reconnect_forever(self) -> None:
        attempt = 0
        token_is_fresh = False  # fetched because the last one was refused or expired
        while True:
            url = self.urls[next(self._next_url)]
            self._emit(Connecting(url, attempt))
            self.state = ClientState.CONNECTING
            try:
                # 1. A token: the one fetched ahead (refresh), else one from the source.
                token, self._prefetched = self._prefetched, None
                if token is None:
                    token = await self._fetch_token()
                # 2. The handshake; a refused token gets one fresh token, then stops us.
                ws = await open_socket(url, token, self.open_timeout)
            except UnauthorizedError as exc:
                if callable(self._token_source) and not token_is_fresh:
                    log.info("relay %s refused the token (401); fetching a fresh one", _safe(url))
                    self._emit(Disconnected(url, None, str(exc), True))
                    token_is_fresh = True
                    continue
                self._stop(exc)
                self._emit(Disconnected(url, None, str(exc), False))
                return
            except HandshakeError as exc:
                if exc.status == 403:  # the origin is not allowed: no retry fixes that
                    self._stop(exc)
                    self._emit(Disconnected(url, None, str(exc), False))
                    return
                end = _End(None, str(exc))
            except _TokenSourceError as exc:
                end = _End(None, str(exc))
            except (OSError, TimeoutError, InvalidHandshake) as exc:
                end = _End(None, f"connection failed: {exc!r}")
            else:
                # 3. The session: resume, re-send, read until it ends.
                end = await self._session(url, ws, token)
            if end.connected:
                attempt, token_is_fresh = 0, False
            if end.terminal is not None:
                self._stop(end.terminal)
                self._emit(Disconnected(url, end.code, end.reason, False))
                return
            self._emit(Disconnected(url, end.code, end.reason, True))
            # 4. Reconnect: at once with a fresh token after expiry or a planned refresh,
            #    else after a jittered, growing delay.
            if end.token_expired:
                token_is_fresh = True
                continue
            if self._prefetched is not None:
                continue
            await asyncio.sleep(self.backoff.delay(attempt))
            attempt += 1

    async def _session(self, url: str, ws: ClientConnection, token: str | None) -> _End:
        writer: asyncio.Task[None] | None = None
        refresher: asyncio.Task[None] | None = None
        self._disconnect_reason = None
        try:
            # 1. The welcome names the node and the session.
            first = messages.decode(await asyncio.wait_for(ws.recv(), self.open_timeout))
            if not first:
                raise ProtocolError("the server's first frame is empty")
            self.welcome = Welcome.parse(first[0])
            # 2. Rejoin every room from its last position, then re-send every unacked
            #    publish with its id, in order; the server answers joins first, so the
            #    replays precede new events.
            self._control.clear()
            self._join_refs.clear()
            for room in self._rooms.values():
                if room.state is not RoomState.IDLE:
                    self._send_join(room)
            self.stats.resent += len(self._unacked)
            self._unsent = deque(self._unacked)
            self.stats.connects += 1
            self._ws = ws
            self.state = ClientState.CONNECTED
            self._ready.set()
            self._emit(Connected(url, self.welcome.node, self.welcome.session))
            writer = asyncio.create_task(self._write(ws), name="gamecluster client writer")
            margin = self.token_refresh_margin
            delay = None if margin is None else tokens.refresh_delay(token, margin)
            if callable(self._token_source) and delay is not None:
                refresher = asyncio.create_task(self._refresh(ws, delay))
            # 3. Read until the server or the network ends the session.
            for message in first[1:]:
                if (end := await self._handle(ws, message)) is not None:
                    return end
            async for frame in ws:
                for message in messages.decode(frame):
                    if (end := await self._handle(ws, message)) is not None:
                        return end
        except ConnectionClosed:
            pass
        except TimeoutError:
            log.warning(
                "relay %s sent no welcome in %ss; reconnecting", _safe(url), self.open_timeout
            )
            return _End(ws.close_code, "no welcome", connected=False)
        except ProtocolError as exc:
            log.warning("relay %s: %s; reconnecting", _safe(url), exc)
            return _End(ws.close_code, str(exc), connected=self._ws is ws)
        finally:
            # 4. This connection is over: stop its tasks, fail what waited on it.
            connected = self._ws is ws
            self._ws, self.welcome = None, None
            if self.state is not ClientState.CLOSED:
                self._ready.clear()
            tasks = [task for task in (writer, refresher) if task is not None]
            for task in tasks:
                task.cancel()
            if tasks:  # wait for them; a send cut by the close ends the writer with it
                await asyncio.wait(tasks)
                for task in tasks:
                    if not task.cancelled():
                        task.exception()  # retrieved: expected, the socket is gone
            for reply in self._requests.values():
                if not reply.done():
                    reply.set_exception(ConnectionLostError("the connection ended"))
            self._join_refs.clear()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(ws.close(), 2.0)
        code, reason = ws.close_code, ws.close_reason or ""
        if code == CLOSE_DISCONNECTED or self._disconnect_reason is not None:
            why = self._disconnect_reason or reason or "disconnected"
            return _End(code, why, connected, terminal=DisconnectedError(why, code))
        return _End(code, reason, connected, token_expired=code == CLOSE_TOKEN_EXPIRED)

    async def _fetch_token(self) -> str | None:
        try:
            return await tokens.fetch(self._token_source)
        except Exception as exc:
            log.exception("the token source failed; retrying after a delay")
            raise _TokenSourceError(f"the token source failed: {exc!r}") from exc

    async def _refresh(self, ws: ClientConnection, delay: float) -> None:
        """Shortly before the token's expiry: fetch the next one while this connection
        still serves, then move to a new connection with it (resuming as after any
        reconnect) instead of being cut by the server at `exp`."""
        await asyncio.sleep(delay)
        try:
            self._prefetched = await tokens.fetch(self._token_source)
        except Exception:
            log.exception("the token source failed; the server will end the session at exp")
            return
        await ws.close(1000, "token refresh")

    async def _handle(self, ws: ClientConnection, message: dict[str, Any]) -> _End | None:
        """One server message; an _End when this connection should be given up."""
        op = message.get("op")
        ref = message.get("ref")
        room = self._rooms.get(message["room"]) if isinstance(message.get("room"), str) else None
        if op == "event":
            if room is not None:
                await room._on_event(Event.parse(message))
        elif op == "joined":
            solicited = isinstance(ref, str) and self._join_refs.pop(ref, None) is not None
            if room is not None and room.state is not RoomState.IDLE:
                await room._on_joined(Joined.parse(message), solicited=solicited)
        elif op == "ack":
            self._settle(Ack.parse(message))
        elif isinstance(ref, str) and ref in self._requests:
            reply = self._requests[ref]
            if not reply.done():
                reply.set_result(message)  # left, members, pong, or an error
        elif op == "error":
            self._on_error(ws, message, room)
        elif op == "presence":
            if room is not None and room.state is not RoomState.IDLE:
                await room._push(PresenceChange.parse(message))
        elif op == "left":
            if room is not None and message.get("reason") is not None:
                room._finish(None, removed=str(message["reason"]))
        elif op == "disconnect":
            self._disconnect_reason = str(message.get("reason", "disconnected"))
        elif op == "reconnect":
            reason = str(message.get("reason", ""))
            return _End(None, reason, connected=True, token_expired=reason == "token_expired")
        return None

    def _on_error(self, ws: ClientConnection, message: dict[str, Any], room: Room | None) -> None:
        error = server_error(message)
        ref, msg_id = message.get("ref"), message.get("id")
        loop = asyncio.get_running_loop()
        if isinstance(ref, str) and ref in self._join_refs:
            name = self._join_refs.pop(ref)
            room = self._rooms.get(name)
            if room is None or room._on_join_refused(error):
                return
            if error.retryable:  # a rejoin after a reconnect: try again shortly
                loop.call_later(self.backoff.delay(2), self._rejoin, ws, name)
            else:
                log.warning("rejoining %s was refused: %s", name, error)
                room._finish(None, removed=error.code)
        elif isinstance(msg_id, str) and msg_id in self._unacked:
            if error.retryable:
                loop.call_later(self.backoff.delay(2), self._requeue, ws, msg_id)
            elif not (pending := self._unacked[msg_id]).future.done():
                pending.future.set_exception(error)
        else:
            log.warning("the server refused a message: %s", error)

    def _settle(self, ack: Ack) -> None:
        pending = self._unacked.get(ack.id)
        if pending is None or pending.future.done():
            self.stats.extra_acks += 1
            return
        pending.future.set_result(ack)

    def _stop(self, error: BaseException) -> None:
        """Stop for good: every waiting call and room stream gets `error`."""
        if self.state is ClientState.CLOSED:
            return
        self.state = ClientState.CLOSED
        closed_by_app = isinstance(error, ClientClosedError)
        self.error = None if closed_by_app else error
        if not closed_by_app:
            log.error("client stopped: %s", error)
        self._ready.set()
        for pending in self._unacked.values():
            if not pending.future.done():
                pending.future.set_exception(error)
        for reply in self._requests.values():
            if not reply.done():
                reply.set_exception(error)
        for room in self._rooms.values():
            room._finish(None if closed_by_app else error)
        if self._task is not None and self._task is not asyncio.current_task():
            self._task.cancel()

    def _emit(self, change: StateChange) -> None:
        if self.on_state is None:
            return
        try:
            self.on_state(change)
        except Exception:
            log.exception("on_state callback failed for %s", change)
