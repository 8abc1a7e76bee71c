"""A lean Pub/Sub connection: replies parsed by hiredis in `data_received`, no task per read.

Through redis-py every message read on the Pub/Sub connection went through an awaited
`parse_response` (its retry wrapper, the connection's read path, the push-message
handler, a logger lookup): about a fifth of a pod's user CPU at 20,000 deliveries/s
(docs/benchmarks.md), paid on every pod for every event. Here the bytes Redis sends are
fed to a hiredis.Reader as they arrive and every complete reply is handled at once, in
the same callback: a room message goes straight to `on_message(channel, data)`; a
SUBSCRIBE confirmation resolves its waiters. One read of the socket carries as many
messages as arrived meanwhile.

Opening is relay.broker.commands': redis-py opens the socket and runs the handshake with
the shard client's connection class and arguments (credentials, TLS, database, a Sentinel
master behind the shard's failover fence), in RESP2, whose Pub/Sub messages are plain
arrays (`[b"message", channel, data]`); then the transport is handed to this protocol
(`commands.detach`). Writes (SUBSCRIBE, UNSUBSCRIBE) go straight to the transport.

Failure behaviour: a lost connection, an error reply (a SUBSCRIBE the ACL refused, for
one) or a reply this connection cannot place ends it: the transport is aborted, `lost`
completes with the reason, and every waiting confirmation fails with BrokerUnavailable.
Its owner (relay.broker.redis.RedisShard) then rebuilds the connection and subscribes
everything again; its probe is what notices a connection that stays up and goes deaf.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

import hiredis
from redis.asyncio import Redis
from redis.asyncio.connection import AbstractConnection
from redis.crc import key_slot
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from relay.broker.base import BrokerUnavailable, describe
from relay.broker.commands import RESP_VERSION, detach

log = logging.getLogger("relay.broker.pubsub")

_MESSAGES = frozenset((b"message", b"smessage"))
_SUBSCRIBES = frozenset((b"subscribe", b"ssubscribe"))
_UNSUBSCRIBE = b"unsubscribe"
_SUNSUBSCRIBE = b"sunsubscribe"


class PubSubConnection(asyncio.Protocol):
    """One live Pub/Sub connection; `open` makes one, `abort` (or a loss) ends it."""

    def __init__(
        self,
        url: str,
        on_message: Callable[[bytes, bytes], None],
        on_unsubscribed: Callable[[bytes], None] | None = None,
    ) -> None:
        self._url = url
        self._on_message = on_message
        self._sharded = on_unsubscribed is not None
        """Redis Cluster: room channels are shard channels (SSUBSCRIBE, `smessage`)."""
        self._on_unsubscribed = on_unsubscribed
        self._reader = hiredis.Reader()
        self.transport: asyncio.Transport | None = None
        self.stream: asyncio.StreamWriter | None = None
        """redis-py's StreamWriter, kept alive: its __del__ would close the transport."""
        self._confirmations: dict[bytes, list[asyncio.Future[None]]] = {}
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        """Fails (never succeeds) with why the connection ended: a RedisError."""

    @classmethod
    async def open(
        cls,
        client: Redis,
        url: str,
        on_message: Callable[[bytes, bytes], None],
        on_unsubscribed: Callable[[bytes], None] | None = None,
    ) -> PubSubConnection:
        """Connect with `client`'s connection class and arguments (its timeouts bound the
        connect and the handshake), then read the connection here.

        With `on_unsubscribed` (a Redis Cluster node) `subscribe` sends SSUBSCRIBE, and
        every `sunsubscribe` Redis sends goes to `on_unsubscribed(channel)`: the node
        sends one by itself when the channel's slot left it (a migration, a failover),
        and the owner, which knows which channels it gave up, resubscribes the others
        where the slot is now."""
        pool = client.connection_pool
        connection: AbstractConnection = pool.connection_class(
            **{**pool.connection_kwargs, "protocol": RESP_VERSION}
        )
        try:
            await connection.connect()  # type: ignore[no-untyped-call]
            return detach(connection, cls(url, on_message, on_unsubscribed))
        except (RedisError, OSError):
            with contextlib.suppress(Exception):
                await connection.disconnect()
            raise

    def subscribe(self, *channels: bytes) -> None:
        """Room channels: SSUBSCRIBE on a Redis Cluster node, SUBSCRIBE otherwise."""
        if self._sharded:
            self._send_per_slot(b"SSUBSCRIBE", channels)
        else:
            self._send(b"SUBSCRIBE", channels)

    def subscribe_global(self, *channels: bytes) -> None:
        """Plain SUBSCRIBE also on a cluster node: a PUBLISH reaches every node of a Redis
        Cluster, so a channel for all relay servers (control) needs no slot."""
        self._send(b"SUBSCRIBE", channels)

    def subscribed(self, channel: bytes) -> asyncio.Future[None]:
        """Done when Redis confirms the next SUBSCRIBE of `channel`; failed if the
        connection ends first."""
        confirmed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self.lost.done():
            confirmed.set_exception(BrokerUnavailable("Pub/Sub connection lost"))
        else:
            self._confirmations.setdefault(channel, []).append(confirmed)
        return confirmed

    def unsubscribe_global(self, *channels: bytes) -> None:
        self._send(b"UNSUBSCRIBE", channels)

    def unsubscribe(self, *channels: bytes) -> None:
        if self._sharded:
            self._send_per_slot(b"SUNSUBSCRIBE", channels)
        else:
            self._send(b"UNSUBSCRIBE", channels)

    def _send_per_slot(self, command: bytes, channels: tuple[bytes, ...]) -> None:
        """One command per hash slot, in one write: an SSUBSCRIBE naming channels of two
        slots is refused whole (CROSSSLOT), which would end the connection."""
        by_slot: dict[int, list[bytes]] = {}
        for channel in channels:
            by_slot.setdefault(key_slot(channel), []).append(channel)
        if self.lost.done() or self.transport is None:
            raise BrokerUnavailable(f"the Pub/Sub connection to {self._url} is lost")
        self.transport.write(
            b"".join(
                hiredis.pack_command((command, *group))  # type: ignore[arg-type]
                for group in by_slot.values()
            )
        )

    def _send(self, command: bytes, channels: tuple[bytes, ...]) -> None:
        if self.lost.done() or self.transport is None:
            raise BrokerUnavailable(f"the Pub/Sub connection to {self._url} is lost")
        self.transport.write(hiredis.pack_command((command, *channels)))  # type: ignore[arg-type]

    def data_received(self, data: bytes) -> None:
        reader = self._reader
        reader.feed(data)
        try:
            while (reply := reader.gets()) is not False:
                if type(reply) is list and len(reply) == 3:
                    kind = reply[0]
                    if kind in _MESSAGES:
                        self._on_message(reply[1], reply[2])
                        continue
                    if kind in _SUBSCRIBES:
                        for waiter in self._confirmations.pop(reply[1], ()):
                            if not waiter.done():
                                waiter.set_result(None)
                        continue
                    if kind == _UNSUBSCRIBE:
                        continue
                    if kind == _SUNSUBSCRIBE and self._on_unsubscribed is not None:
                        self._on_unsubscribed(reply[1])
                        continue
                raise hiredis.ProtocolError(f"unexpected reply {reply!r:.120}")
        except (hiredis.ProtocolError, hiredis.ReplyError) as exc:
            self.abort(f"{type(exc).__name__}: {exc}")
        except Exception as exc:
            # A failure of whoever took a message: it must not leave the connection half
            # read. End it (the owner reconnects), as when the reader task failed.
            log.exception("Pub/Sub connection %s: handling a message failed", self._url)
            self.abort(f"handling a message failed: {describe(exc)}")

    def eof_received(self) -> bool:
        return False  # close the transport: connection_lost reports it

    def connection_lost(self, exc: Exception | None) -> None:
        why = "closed by the server" if exc is None else describe(exc)
        self._fail(f"lost: {why}")

    def abort(self, reason: str = "aborted") -> None:
        """Drop the connection at once, without a closing handshake (a silent partition
        would leave a graceful close hanging)."""
        self._fail(reason)
        if self.transport is not None:
            self.transport.abort()

    def _fail(self, reason: str) -> None:
        if not self.lost.done():
            self.lost.set_exception(
                RedisConnectionError(f"Pub/Sub connection to {self._url} {reason}")
            )
            self.lost.exception()  # retrieved: whoever waits on it re-raises it
        confirmations, self._confirmations = self._confirmations, {}
        for waiters in confirmations.values():
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_exception(BrokerUnavailable("Pub/Sub connection lost"))
