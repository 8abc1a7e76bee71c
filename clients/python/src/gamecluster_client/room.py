"""`Room`: one room of a `Client`, what the application joins, reads, publishes to.

A room's messages (events, `Lost`, `Recovered`, presence changes, `Removed`) are read
with `async for message in room` or `await room.receive()`, in arrival order.

Buffer bound and overflow policy: at most `room_buffer` messages wait unread per room.
When a room's buffer is full the client stops reading its socket (back-pressure, nothing
dropped): every room of that client waits, acks included, and if the application stays
behind long enough the server ends the connection as a slow consumer (close 4008). The
client then reconnects and resumes from the last event read into the buffer, so durable
rooms lose nothing; volatile rooms report `Lost`.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from gamecluster_client.errors import ClientClosedError, GameClusterError, ServerError
from gamecluster_client.messages import (
    Ack,
    Event,
    Joined,
    Lost,
    Members,
    Position,
    Recovered,
    Removed,
    RoomMessage,
)

if TYPE_CHECKING:
    from gamecluster_client.client import Client


class Default(enum.Enum):
    """Marker for "use the client's default timeout" (None means: no limit)."""

    TIMEOUT = "default"


DEFAULT = Default.TIMEOUT
Timeout = float | None | Default


class RoomState(enum.Enum):
    IDLE = "idle"
    """Not joined: never, or left, or removed."""
    JOINING = "joining"
    JOINED = "joined"


class RoomClosedError(GameClusterError):
    """The room's stream ended: the application left, the server removed the client, or
    the client was closed."""


class Room:
    """Made by `Client.room(name)`; one object per name and client."""

    def __init__(self, client: Client, name: str, since: Position | None, buffer: int) -> None:
        self.name = name
        self.position = since
        """The last (epoch, offset) read into this room's buffer: where a rejoin resumes."""
        self.joined: Joined | None = None
        """The last `joined` the server sent for this room."""
        self.state = RoomState.IDLE
        self._client = client
        self._buffer = buffer
        self._join_waiter: asyncio.Future[Joined] | None = None
        self._queue: asyncio.Queue[RoomMessage | None] = asyncio.Queue()
        self._space = asyncio.Semaphore(buffer)
        self._ended = False
        self._end: BaseException | None = None
        """Why the stream ended: None for a leave, a removal or close()."""

    def __repr__(self) -> str:
        return f"<Room {self.name!r} {self.state.value} at {self.position}>"

    # -- the application's calls ---------------------------------------------------------

    async def join(self, *, timeout: Timeout = DEFAULT) -> Joined:
        """Join, and rejoin after every reconnect (resuming after `position`).

        Returns the server's `joined` (with `recovered` when resuming from a position).
        Raises the server's refusal (ForbiddenError, TooManyRoomsError, ...), the
        client's terminal error, or TimeoutError. Waits for a connection if there is
        none yet; a join cut by a reconnect is sent again on the next connection.
        """
        return await self._client._join(self, self._client._timeout(timeout))

    async def leave(self, *, timeout: Timeout = DEFAULT) -> None:
        """Leave now: no more rejoins, the stream ends (unread messages are dropped)."""
        await self._client._leave(self, self._client._timeout(timeout))

    async def publish(self, data: Any, *, id: str | None = None, timeout: Timeout = DEFAULT) -> Ack:
        """Publish `data` and return its ack. Joining is not required.

        `id` (a UUID unless given) makes retries safe: unacked publishes are re-sent in
        order with the same id after a reconnect, and the server stores an id once.
        `timeout` (default: the client's publish_timeout; None waits as long as it
        takes) covers the wait for an in-flight slot too: see `Client` max_in_flight.
        Raises PublishTimeoutError, the server's refusal, or the terminal error.
        """
        limit = self._client.publish_timeout if timeout is DEFAULT else timeout
        return await self._client._publish(self.name, data, id, limit)

    async def presence(self, *, timeout: Timeout = DEFAULT) -> Members:
        """Who is in this room (a presence room; joining it is not required).
        Raises ForbiddenError (the token may not join it), BadRequestError (the room has
        no presence)."""
        reply = await self._client._request(
            {"op": "presence", "room": self.name}, self._client._timeout(timeout)
        )
        return Members.parse(reply)

    async def receive(self, timeout: float | None = None) -> RoomMessage:
        """The next message of this room. Raises RoomClosedError once the stream ended
        (or the client's terminal error, e.g. UnauthorizedError), TimeoutError."""
        async with asyncio.timeout(timeout):
            message = await self._queue.get()
        if message is None:
            self._queue.put_nowait(None)  # every later call ends too
            raise self._end or RoomClosedError(f"room {self.name!r} is closed")
        self._space.release()
        return message

    async def __aiter__(self) -> AsyncIterator[RoomMessage]:
        """Every message until the stream ends; ends quietly after a leave, a removal or
        close(), and raises the client's terminal error (UnauthorizedError, ...)."""
        while True:
            try:
                yield await self.receive()
            except (RoomClosedError, ClientClosedError):
                return

    # -- called by the client ------------------------------------------------------------

    def _begin_join(self) -> asyncio.Future[Joined]:
        if self._ended:
            self._queue = asyncio.Queue()
            self._space = asyncio.Semaphore(self._buffer)
            self._ended, self._end = False, None
        self.state = RoomState.JOINING
        self._join_waiter = asyncio.get_running_loop().create_future()
        return self._join_waiter

    async def _on_joined(self, joined: Joined, *, solicited: bool) -> None:
        """A `joined`: the answer to a join, or (unsolicited) history lost while in it."""
        if joined.recovered is not True:
            # A fresh start (first join, or history lost): continue from the server's
            # position. When recovered, the replay that follows advances it instead.
            self.position = joined.position
        self.joined = joined
        self.state = RoomState.JOINED
        waiter = self._join_waiter
        if solicited and waiter is not None and not waiter.done():
            waiter.set_result(joined)  # the application's join() returns it
            return
        if joined.recovered is False:
            self._client.stats.not_recovered += 1
        if solicited and joined.recovered is True:
            await self._push(Recovered(self.name, joined.epoch, joined.offset))
        else:
            await self._push(Lost(self.name, joined.epoch, joined.offset))

    def _on_join_refused(self, error: ServerError) -> bool:
        """A join was refused; True when the application's join() takes the error (else
        it was a rejoin after a reconnect, which the client retries or gives up)."""
        waiter = self._join_waiter
        if waiter is not None and not waiter.done():
            self.state = RoomState.IDLE
            waiter.set_exception(error)
            return True
        return False

    async def _on_event(self, event: Event) -> None:
        if self.state is RoomState.IDLE:
            return  # left while it was on its way
        offset, position = event.offset, self.position
        if offset is not None:
            if position is not None:
                if offset <= position.offset:
                    self._client.stats.duplicates += 1  # the protocol says: never
                    return
                if offset > position.offset + 1:
                    self._client.stats.gaps += 1  # the protocol says: never, without Lost
            if position is not None:
                epoch: str | None = position.epoch
            else:
                epoch = self.joined.epoch if self.joined is not None else None
            if epoch is not None:
                self.position = Position(epoch, offset)
        await self._push(event)

    async def _push(self, message: RoomMessage) -> None:
        await self._space.acquire()  # full buffer: stop reading the socket (see module doc)
        if not self._ended:
            self._queue.put_nowait(message)
        else:
            self._space.release()

    def _finish(self, error: BaseException | None, *, removed: str | None = None) -> None:
        """End the stream: after a `Removed` when given, then the end marker."""
        self.state = RoomState.IDLE
        waiter = self._join_waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(error or RoomClosedError(f"room {self.name!r} was left"))
        if self._ended:
            return
        if removed is not None:
            self._queue.put_nowait(Removed(self.name, removed))
        self._ended, self._end = True, error
        self._queue.put_nowait(None)

    def _drop_unread(self) -> None:
        """Forget unread messages (the application left); a reader blocked on the full
        buffer is released."""
        while not self._queue.empty():
            if self._queue.get_nowait() is not None:
                self._space.release()
