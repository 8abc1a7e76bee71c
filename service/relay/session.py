"""One WebSocket session: handles client messages in order, answers through its outbox.

Client messages are handled one after another (a publish is acked before the next
message is handled), which keeps each connection's publishes in order. They are handled
by a task that exists only while there are messages: an idle connection holds no task,
no coroutine frames and no queue, only this object and its outbox. While the task is
busy, reading from the connection is paused, so what waits for it is bounded by one
read of the transport. Everything the server sends, replies and events alike, goes
through the connection's bounded outbox, so `joined` always precedes the room's events
and nothing bypasses the queue bound.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

from relay import auth, protocol, tracing
from relay.broker import Broker, BrokerUnavailable, NotReplicated
from relay.config import Settings
from relay.hub import Hub, JoinResult
from relay.metrics import Metrics
from relay.outbox import Scheduler
from relay.presence import Presence
from relay.protocol import CloseCode, ErrorCode, ProtocolError
from relay.ratelimit import TokenBucket
from relay.rooms import RoomPolicies
from relay.transport import RawSocket

log = logging.getLogger("relay.session")

ABUSE_BURST = 50
ABUSE_RATE = 5.0
"""Refused messages a connection may send (burst, then per second) before close 1008."""
YIELD_EVERY = 16
"""Messages of one frame handled between two yields to the event loop, so a frame of
thousands of cheap ops (pings) cannot hold up every other connection of the server."""


@dataclass(frozen=True, slots=True)
class Services:
    """What a session needs from its relay server."""

    settings: Settings
    broker: Broker
    hub: Hub
    metrics: Metrics
    scheduler: Scheduler
    policies: RoomPolicies
    ended: Callable[[Session], None]
    """Told once when a session is over: its connection closed and it left its rooms."""
    presence: Presence | None = None


class Session:
    __slots__ = (
        "_expiry",
        "_handler",
        "_inbox",
        "_loop",
        "_ops",
        "_over",
        "_publishes",
        "_refusals",
        "_rooms",
        "_services",
        "_settings",
        "_socket",
        "_traced",
        "close_code",
        "id",
        "identity",
        "outbox",
        "push",
        "subject",
    )

    def __init__(self, services: Services, socket: RawSocket, identity: auth.Identity) -> None:
        self.id = secrets.token_urlsafe(9)
        self.identity = identity
        self.subject: str | None = identity.subject
        """Who publishes (the token's `sub`; None with auth off): dedupe key, event `from`."""
        self._services = services
        self._settings = services.settings
        self._socket = socket
        self._loop = asyncio.get_running_loop()
        """The loop, looked up once: `asyncio.create_task` per message would look it up
        again, a getpid() system call each time on CPython 3.11."""
        self.close_code: int | None = None
        """How the connection ended: the peer's close code, or the one the server sent."""
        self._rooms: set[str] = set()
        self._publishes = TokenBucket(self._settings.publish_rate, self._settings.publish_burst)
        self._ops = TokenBucket(self._settings.op_rate, self._settings.op_burst)
        self._refusals = TokenBucket(ABUSE_RATE, ABUSE_BURST)
        self.outbox = services.scheduler.outbox(
            socket, limit=self._settings.send_queue, on_overflow=self._slow_consumer
        )
        self.push: Callable[[bytes], None] = self.outbox.push
        """Queue one message (no await): the outbox's own method, so that the fan-out
        makes one call per recipient, not two (relay.hub.Member)."""
        self._handler: asyncio.Task[None] | None = None
        """Handles the messages in `_inbox`; None while there are none (idle)."""
        self._inbox: list[str | None] | None = None
        """Messages not handled yet, None while idle. Bound: reading is paused while the
        handler is busy, so at most one read of the transport's frames waits here."""
        self._over = False
        """The connection is gone: no message is handled any more."""
        self._expiry: asyncio.TimerHandle | None = None
        self._traced: tracing.Connection | None = None

    def start(self, peer: tuple[str, int] | None) -> None:
        """The connection is open: welcome it, and watch its token's expiry."""
        s = self._settings
        self._traced = tracing.ws_connect(self.id, peer)
        self.push(protocol.welcome(self.id, s.node_id, s.heartbeat_seconds))
        self._expiry = self.identity.on_expiry(self._token_expired)

    async def replay(self, payloads: list[bytes]) -> None:
        await self.outbox.replay(payloads)

    def overflow(self) -> None:
        self._slow_consumer()

    def reconnect(self, reason: str, code: CloseCode) -> None:
        """Tell the client to reconnect elsewhere, after what is already queued, and close."""
        self.outbox.close(protocol.reconnect(reason), code)

    def receive(self, text: str | None) -> None:
        """One client message (None: a binary one), from the connection, in order."""
        if self._over or self.outbox.closed:
            return  # dropped (slow consumer, abuse, closing): the rest goes unanswered
        inbox = self._inbox
        if inbox is None:
            self._inbox = [text]
            self._handler = self._loop.create_task(self._handle_inbox())
        else:
            inbox.append(text)
            self._socket.pause_reading()  # one message at a time: the rest waits unread

    def ended(self, code: int) -> None:
        """The connection is over: leave every room now, or once the message being
        handled is done (its replies go nowhere)."""
        if self._over:
            return
        self._over = True
        self.close_code = self.outbox.close_code or code
        if self._handler is None:
            self._finish()
        elif self._services.hub.waiting(self):
            # Its join only waits for its turn (a history-read slot in a storm): give up
            # now rather than stay counted and read history for nobody when the turn
            # comes. The handler's end finishes the session.
            self._handler.cancel()

    async def _handle_inbox(self) -> None:
        """Handle received messages until there are none; then the task ends."""
        try:
            while self._inbox:
                batch, self._inbox = self._inbox, []  # what arrives meanwhile: next round
                for text in batch:
                    if self._over or self.outbox.closed:
                        return  # dropped (slow consumer, abuse, gone): rest unanswered
                    if text is None:
                        self._refuse(
                            ProtocolError(
                                ErrorCode.BAD_REQUEST, "binary frames are not part of the protocol"
                            )
                        )
                        continue
                    for n, line in enumerate(protocol.split_frame(text), 1):
                        if self._over or self.outbox.closed:
                            return  # dropped (slow consumer, abuse, gone): rest unanswered
                        await self._handle(line)
                        if n % YIELD_EVERY == 0:
                            await asyncio.sleep(0)
        finally:
            self._handler = self._inbox = None
            if self._over:
                self._finish()
            else:
                self._socket.resume_reading()

    def _finish(self) -> None:
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        for room in self._rooms:
            self._services.hub.leave(self, room)
        self._rooms.clear()
        tracing.ws_close(self._traced, self.id, self.close_code)
        self._services.ended(self)

    async def stop(self) -> None:
        """Cancel the message being handled, if any (the server stops)."""
        handler = self._handler
        if handler is not None:
            handler.cancel()
            await asyncio.gather(handler, return_exceptions=True)

    async def _handle(self, line: str) -> None:
        try:
            message = protocol.parse_message(line, self._settings.max_message_bytes)
            if not isinstance(message, protocol.Publish) and not self._ops.take():
                raise ProtocolError(
                    ErrorCode.RATE_LIMITED,
                    f"over {self._settings.op_rate:g} ping/join/leave per second (burst "
                    f"{self._settings.op_burst})",
                    ref=message.ref,
                    room=None if isinstance(message, protocol.Ping) else message.room,
                )
            if isinstance(message, protocol.Publish):
                await self._publish(message)
            elif isinstance(message, protocol.Join):
                await self._join(message)
            elif isinstance(message, protocol.Leave):
                self._leave(message)
            elif isinstance(message, protocol.PresenceQuery):
                await self._presence(message)
            else:
                self.push(protocol.pong(message.ref))
        except ProtocolError as exc:
            self._refuse(exc)
        except Exception:
            correlation = secrets.token_hex(6)
            log.exception(
                "internal error %s handling a message of session %s", correlation, self.id
            )
            self._refuse(ProtocolError(ErrorCode.INTERNAL, f"internal error {correlation}"))

    async def _publish(self, message: protocol.Publish) -> None:
        room, msg_id, ref = message.room, message.id, message.ref
        if not self.identity.may_publish(room):
            raise ProtocolError(
                ErrorCode.FORBIDDEN,
                f"the token does not allow publishing to {room}",
                ref=ref,
                id=msg_id,
                room=room,
            )
        if not self._publishes.take():
            raise ProtocolError(
                ErrorCode.RATE_LIMITED,
                f"over {self._settings.publish_rate:g} publishes/s (burst "
                f"{self._settings.publish_burst})",
                ref=ref,
                id=msg_id,
                room=room,
            )
        services = self._services
        try:
            with tracing.publishing(message, self.id) as traced:
                result = await services.broker.publish(
                    room,
                    message.data,
                    ts=time.time_ns() // 1_000_000,
                    policy=services.policies.for_room(room),
                    msg_id=msg_id,
                    subject=self.subject,
                    trace=traced.context,
                )
                traced.sent(result.offset)
        except NotReplicated as exc:
            services.metrics.unreplicated.inc()
            refusal = protocol.not_replicated(msg_id)
            raise ProtocolError(
                ErrorCode.UNAVAILABLE, refusal, ref=ref, id=msg_id, room=room
            ) from exc
        except BrokerUnavailable as exc:
            raise ProtocolError(
                ErrorCode.UNAVAILABLE, exc.client_message, ref=ref, id=msg_id, room=room
            ) from exc
        except ProtocolError as exc:
            raise ProtocolError(exc.code, exc.message, ref=ref, id=msg_id, room=room) from exc
        if not result.duplicate:
            services.metrics.published.inc()
        if msg_id is not None:
            self.push(protocol.ack(msg_id, room, result.offset, ref))

    async def _join(self, message: protocol.Join) -> None:
        room, ref = message.room, message.ref
        if not self.identity.may_join(room):
            raise ProtocolError(
                ErrorCode.FORBIDDEN, f"the token does not allow joining {room}", ref=ref, room=room
            )
        if room not in self._rooms and len(self._rooms) >= self._settings.max_rooms_per_connection:
            raise ProtocolError(
                ErrorCode.TOO_MANY_ROOMS,
                f"already in {len(self._rooms)} rooms, the limit per connection",
                ref=ref,
                room=room,
            )
        if room in self._rooms:  # joining again: one membership, recovery runs afresh
            self._services.hub.leave(self, room)
            self._rooms.discard(room)

        def announce(result: JoinResult) -> None:
            self._rooms.add(room)
            self.push(protocol.joined(room, result.offset, result.epoch, result.recovered, ref))

        try:
            await self._services.hub.join(self, room, message.since, announce)
        except BrokerUnavailable as exc:
            raise ProtocolError(
                ErrorCode.UNAVAILABLE, exc.client_message, ref=ref, room=room
            ) from exc

    def _leave(self, message: protocol.Leave) -> None:
        if message.room in self._rooms:
            self._rooms.discard(message.room)
            self._services.hub.leave(self, message.room)
        self.push(protocol.left(message.room, message.ref))

    def remove_from(self, room: str) -> None:
        """The server API removed this connection from `room` (unsolicited `left`)."""
        if room in self._rooms:
            self._rooms.discard(room)
            self._services.hub.leave(self, room)
            self.push(protocol.removed(room))

    def disconnect(self, reason: str) -> None:
        """The server API ended this connection: `disconnect`, then close 4003."""
        self.outbox.close(protocol.disconnect(reason), CloseCode.DISCONNECTED)

    async def _presence(self, message: protocol.PresenceQuery) -> None:
        room, ref = message.room, message.ref
        if not self.identity.may_join(room):
            raise ProtocolError(
                ErrorCode.FORBIDDEN, f"the token does not allow joining {room}", ref=ref, room=room
            )
        presence = self._services.presence
        if presence is None or not self._services.policies.for_room(room).presence:
            raise ProtocolError(
                ErrorCode.BAD_REQUEST,
                f"room {room} has no presence (RELAY_ROOMS)",
                ref=ref,
                room=room,
            )
        try:
            count, listed = await presence.members(room)
        except BrokerUnavailable as exc:
            raise ProtocolError(
                ErrorCode.UNAVAILABLE, exc.client_message, ref=ref, room=room
            ) from exc
        self.push(protocol.members(room, count, listed, ref))

    def _refuse(self, exc: ProtocolError) -> None:
        self._services.metrics.errors.labels(str(exc.code)).inc()
        self.push(protocol.error(exc))
        if not self._refusals.take():
            log.info("closing session %s: too many refused messages", self.id)
            self.outbox.close(None, CloseCode.POLICY_VIOLATION)

    def _token_expired(self) -> None:
        log.info("session %s: token of %s expired", self.id, self.subject)
        self.reconnect("token_expired", CloseCode.TOKEN_EXPIRED)

    def _slow_consumer(self) -> None:
        log.info("session %s is a slow consumer: dropping it", self.id)
        self._services.metrics.slow_consumers.inc()
        self.outbox.close(
            protocol.reconnect("slow_consumer"), CloseCode.SLOW_CONSUMER, drop_pending=True
        )
