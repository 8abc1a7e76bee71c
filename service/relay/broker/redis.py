"""The Redis broker: live fan-out through Pub/Sub, rooms spread over shards.

Each relay server keeps, per shard, a lean pipelined connection for the publishes
(relay.broker.commands), a redis-py pool for every other command, and exactly one
Pub/Sub connection carrying every room channel it subscribes (relay.broker.pubsub: read
by hiredis as the bytes arrive, no redis-py on the per-message path). The Pub/Sub connection is
the part that fails silently in the systems we compete with (a subscriber goes deaf
while health checks stay green), so each shard probes it: a token published on this
server's own node channel must come back within `probe_timeout`. A lost probe, a read
error or a dropped connection all end the connection's session; it is rebuilt with
exponential backoff and full jitter, every room channel is subscribed again, and the
shard reports unready until a probe has made the round trip on the new connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from redis.backoff import FullJitterBackoff
from redis.exceptions import (
    AskError,
    ClusterDownError,
    NoPermissionError,
    RedisError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError

from relay import protocol
from relay.broker import commands, envelope, history, keys, lua, replicas, shardmap
from relay.broker.base import (
    Broker,
    BrokerUnavailable,
    History,
    PublishResult,
    ShardDown,
    SlotMoved,
    describe,
)
from relay.broker.history import Verdict
from relay.broker.options import RedisOptions
from relay.broker.pubsub import PubSubConnection
from relay.config import RedisEndpoint
from relay.contract import LOAD_REPORT_TTL_SECONDS, load_report_key
from relay.rooms import EMPTY_ROOM_SECONDS, RoomPolicy

log = logging.getLogger("relay.broker.redis")

SUBSCRIBE_CHUNK = 500
"""Channels per SUBSCRIBE command when resubscribing after a reconnect."""
RECONNECT_BACKOFF = FullJitterBackoff(cap=2.0, base=0.05)
"""Pause before rebuilding a lost Pub/Sub connection: random, up to 0.05 s * 2**failures, 2 s."""
MAX_BACKOFF_EXPONENT = 16
"""Failures counted into the backoff (0.05 * 2**16 is far past the cap); an outage of any
length must not grow 2**failures past what a float holds."""


@dataclass(frozen=True)
class RoomScripts:
    """How a room's event is sent: the publish scripts and the command of a plain publish."""

    durable: commands.Script
    volatile_once: commands.Script
    publish: str


PLAIN_SCRIPTS = RoomScripts(
    commands.Script(lua.PUBLISH_DURABLE), commands.Script(lua.PUBLISH_VOLATILE_ONCE), "PUBLISH"
)
SHARDED_SCRIPTS = RoomScripts(
    commands.Script(lua.sharded(lua.PUBLISH_DURABLE)),
    commands.Script(lua.sharded(lua.PUBLISH_VOLATILE_ONCE)),
    "SPUBLISH",
)
"""Redis Cluster (relay.broker.slots): SPUBLISH, to the room's slot owner only."""


class _RandomEpochs:
    """Epoch ids for rooms a publish may start: 8 random hex digits each, as
    secrets.token_hex(4) gives, cut from one os.urandom() read per 512 of them. Every
    durable publish passes one (the script uses it only when the room has no epoch yet),
    and a getrandom() system call per publish was ~6% of a pod's user CPU."""

    def __init__(self) -> None:
        self._pool = b""
        self._at = 0

    def draw(self) -> str:
        at = self._at
        if at >= len(self._pool):
            self._pool, at = os.urandom(2048), 0
        self._at = at + 4
        return self._pool[at : at + 4].hex()


_EPOCHS = _RandomEpochs()
_SENT = PublishResult(None, None, False)
_DUPLICATE = PublishResult(None, None, True)
"""A volatile publish's two possible results: shared, not built per publish."""


class ProbeLost(Exception):
    """The Pub/Sub connection did not return this server's own probe in time."""


class RedisShard:
    """One Redis server as seen by this relay server.

    Its connections follow the broker's `options`; its callbacks are the broker's own
    (`on_reconnect` is options.on_reconnect behind a RedisBroker, per node behind the
    cluster broker)."""

    def __init__(
        self,
        endpoint: RedisEndpoint,
        node_id: str,
        options: RedisOptions,
        *,
        on_message: Callable[[bytes], None],
        on_reconnect: Callable[[], None],
        on_resubscribed: Callable[[list[bytes]], None],
        on_control: Callable[[bytes], None] | None = None,
        on_slot_left: Callable[[RedisShard, bytes], None] | None = None,
    ) -> None:
        self.name = endpoint.name
        """The shard's identity in rendezvous hashing (not its URL: see RedisEndpoint)."""
        self.url = endpoint.url
        """Without credentials: the only form of the address that goes into logs and errors."""
        self._endpoint = endpoint
        self._connector = options.connector
        self._on_control = on_control
        self._node_channel = keys.node_channel(node_id)
        self._on_slot_left = on_slot_left
        """Redis Cluster node (relay.broker.slots): room channels are shard channels, and
        this is told of each wanted channel whose slot left the node."""
        self._timeout = options.timeout
        self._probe_interval = options.probe_interval
        self._probe_timeout = options.probe_timeout
        self._on_message = on_message
        self._on_reconnect = on_reconnect
        self._on_resubscribed = on_resubscribed
        # One quick retry lets a pooled connection that died with a restarted Redis
        # reconnect, without stretching an outage into long waits for the publisher.
        self.commands: Redis = options.connector.client(
            endpoint, timeout=options.timeout, retries=1, check_master=self._check_master
        )
        # The publish path, once per event: a lean pipelined connection opened by this
        # client's connection class and arguments (credentials, TLS, a Sentinel master
        # behind _check_master's fence; relay.broker.commands); redis-py serves the rest.
        self.publishes = commands.CommandConnection(
            self.commands, url=self.url, timeout=options.timeout
        )
        # RELAY_REDIS_ACK_REPLICAS: durable publishes acked once replicas have them, on a
        # connection of their own: while Redis holds a WAIT it runs no other command of its
        # connection, and volatile publishes must not wait behind it (relay.broker.replicas).
        self.acks = (
            replicas.ReplicaAcks(
                commands.CommandConnection(self.commands, url=self.url, timeout=options.timeout),
                replicas=options.ack_replicas,
                timeout=options.ack_timeout,
            )
            if options.ack_replicas > 0
            else None
        )
        self.read_history = self.commands.register_script(lua.HISTORY)
        self._channels: set[bytes] = {keys.CONTROL_CHANNEL} if on_control is not None else set()
        self._pubsub: PubSubConnection | None = None
        self._probe: tuple[bytes, asyncio.Future[None]] | None = None
        self._ready = False
        self._down_because: str | None = None
        """Why the last Pub/Sub session ended (class and message, no credential)."""
        self._attempted = False
        self._failures = 0
        """Connection attempts since the last live one: the reconnect backoff's exponent."""
        self._task: asyncio.Task[None] | None = None
        self._checked = False
        """Sentinel mode: the history of the server at `_master` was checked by the live
        Pub/Sub session; false again when that session ends (the server may have restarted
        behind the same address, see _check_master)."""
        self._master: tuple[str, int] | None = None
        """Sentinel mode: the master this server last used; a different one is a failover."""

    @property
    def ready(self) -> bool:
        return self._ready

    @property
    def channels(self) -> frozenset[bytes]:
        """The channels this server wants subscribed here (room channels and control)."""
        return frozenset(self._channels)

    def live(self) -> RedisShard:
        """This shard, or ShardDown at once when its Pub/Sub connection is not live.

        Without the check a stalled shard (a frozen process, a black-holed network) would
        hold every publish to its rooms for the command timeout; with it those rooms fail
        fast and clearly, and rooms on other shards are not slowed down.
        """
        if not self._ready:
            raise ShardDown(self.name, self.url, self._down_because)
        return self

    def start(self) -> None:
        self._task = asyncio.create_task(self._supervise(), name=f"pubsub {self.url}")

    def set_probe_channel(self, channel: bytes) -> None:
        """Redis Cluster: the probe is a shard channel and must hash to a slot of this
        node; its owner picks one (`keys.node_channel(node, tag)`). Takes effect with
        the next connection; a probe of a slot the node lost fails (MOVED), which ends the
        session, and the owner has set a new channel by then."""
        self._node_channel = channel

    def set_control(self, on_control: Callable[[bytes], None] | None) -> None:
        """Carry the control channel here (or stop): in a Redis Cluster the node that
        holds the cluster keys' slot does, and that node can change."""
        if (on_control is None) == (self._on_control is None):
            return
        self._on_control = on_control
        pubsub = self._pubsub
        if on_control is None:
            self._channels.discard(keys.CONTROL_CHANNEL)
            if pubsub is not None:
                with contextlib.suppress(BrokerUnavailable):
                    pubsub.unsubscribe_global(keys.CONTROL_CHANNEL)
        else:
            self._channels.add(keys.CONTROL_CHANNEL)
            if pubsub is not None:
                with contextlib.suppress(BrokerUnavailable):
                    pubsub.subscribe_global(keys.CONTROL_CHANNEL)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait({self._task}, timeout=2.0)
        self.publishes.close()
        if self.acks is not None:
            self.acks.connection.close()
        await asyncio.wait({asyncio.create_task(self.commands.aclose())}, timeout=self._timeout)

    async def subscribe(self, channel: bytes) -> None:
        pubsub = self._pubsub
        if pubsub is None or not self._ready:
            raise ShardDown(self.name, self.url, self._down_because)
        self._channels.add(channel)
        confirmed = pubsub.subscribed(channel)
        try:
            pubsub.subscribe(channel)
            done, _ = await asyncio.wait({confirmed}, timeout=self._timeout)
            if not done:
                raise TimeoutError(f"no SUBSCRIBE confirmation within {self._timeout}s")
            confirmed.result()
        except (TimeoutError, BrokerUnavailable) as exc:
            self._channels.discard(channel)
            raise BrokerUnavailable(f"SUBSCRIBE on {self.url} failed: {describe(exc)}") from exc

    def want(self, channel: bytes) -> None:
        """Add a channel without waiting: sent now if a connection is open, live or still
        probing (a session subscribes what is wanted when it opens: one opened already
        must be sent this one too); going live reports it for a history read."""
        self._channels.add(channel)
        pubsub = self._pubsub
        if pubsub is not None:
            with contextlib.suppress(BrokerUnavailable):
                pubsub.subscribe(channel)

    async def unsubscribe(self, channel: bytes) -> None:
        self._channels.discard(channel)
        pubsub = self._pubsub
        if pubsub is None:
            return  # the next connection will not subscribe it again
        try:
            pubsub.unsubscribe(channel)
        except BrokerUnavailable as exc:
            log.info("UNSUBSCRIBE on %s failed (%s); the connection will be rebuilt", self.url, exc)

    # Note on cancellation: redis-py calls are never wrapped in asyncio.timeout or
    # wait_for here. Cancelling redis-py mid-command has left connections (and the
    # timeout's own bookkeeping) in states that hang the next attempt; instead every
    # command relies on the client's socket timeouts, and a session is ended by
    # aborting its socket, which makes the blocked read fail on its own.

    async def _supervise(self) -> None:
        while True:
            was_live = self._ready
            try:
                await self._session()
            except (RedisError, OSError, ProbeLost) as exc:
                self._down_because = describe(exc)
                # Loud once per outage; each further failed attempt only at debug level.
                level = logging.WARNING if was_live or self._task_first_attempt() else logging.DEBUG
                log.log(
                    level,
                    "Pub/Sub connection to %s lost: %s: %s",
                    self.url,
                    type(exc).__name__,
                    exc,
                )
            except Exception as exc:
                self._down_because = describe(exc)
                log.exception("Pub/Sub session on %s failed; reconnecting", self.url)
            self._ready = False
            self._on_reconnect()
            await asyncio.sleep(RECONNECT_BACKOFF.compute(self._failures))
            self._failures = min(self._failures + 1, MAX_BACKOFF_EXPONENT)

    async def _session(self) -> None:
        """One Pub/Sub connection's life: subscribe everything, read and probe until it fails."""
        # socket_timeout bounds the connect and the handshake; then the connection is read
        # by relay.broker.pubsub (no timeout on reads: the probe notices a deaf one).
        client = self._connector.client(
            self._endpoint, timeout=self._timeout, retries=0, check_master=self._check_master
        )
        pubsub: PubSubConnection | None = None
        try:
            # 0. Sentinel: after a failover, start new epochs before this server reads or
            #    delivers anything from the new master (see _after_failover).
            await self._after_failover()
            # 1. Connect and subscribe every room this server holds; the node channel goes
            #    last, so the first probe coming back proves all earlier SUBSCRIBEs took.
            on_left = self._slot_left if self._on_slot_left is not None else None
            pubsub = await PubSubConnection.open(client, self.url, self._dispatch, on_left)
            channels = sorted(self._channels - {keys.CONTROL_CHANNEL})
            if keys.CONTROL_CHANNEL in self._channels:
                pubsub.subscribe_global(keys.CONTROL_CHANNEL)
            for start in range(0, len(channels), SUBSCRIBE_CHUNK):
                pubsub.subscribe(*channels[start : start + SUBSCRIBE_CHUNK])
            pubsub.subscribe(self._node_channel)
            self._pubsub = pubsub
            # 2. Deliveries are dispatched as they are read; probe the connection until
            #    the probe or the connection fails.
            await self._probe_until_lost(pubsub.lost)
        finally:
            # 3. Forget the connection: waiters fail now, the socket is aborted (a silent
            #    partition would leave a graceful close hanging).
            self._pubsub = None
            self._ready = False
            self._checked = False
            if pubsub is not None:
                pubsub.abort()
            await asyncio.wait({asyncio.create_task(client.aclose())}, timeout=1.0)

    async def _after_failover(self) -> None:
        """Check the master's history before this server reads or writes anything there;
        start a new epoch in every room of this shard when it is not the rooms' history.

        Replication is asynchronous: a promoted replica may lack the last events acked by
        the old master, and its offsets would then go backwards and be reused for new
        events, a gap no client could see. The master keeps a marker (keys.HISTORY_MARKER:
        the replication id its rooms' epochs were started on, and the Sentinel-named
        address that wrote it), so a server sees a promotion
        on first sight too, started after it or restarted during it, not only when it held
        the old master's address in memory (docs/operations.md, "Failover guarantee").
        Raises (and the session is retried) until the check has passed.
        """
        if self._on_slot_left is not None:
            self._checked = True
            return  # a Redis Cluster node: relay.broker.slots fences its failovers
        master = await self._connector.master_address(self._endpoint, timeout=self._timeout)
        # Until self._master names it, _check_master keeps every other connection of this
        # shard off the master (Sentinel): the check goes there directly.
        if master is None:
            fence = self._connector.client(self._endpoint, timeout=self._timeout, retries=0)
        else:
            fence = self._connector.direct(self._endpoint, master, timeout=self._timeout)
        try:
            await self._check_history(fence, master)
        finally:
            await asyncio.wait({asyncio.create_task(fence.aclose())}, timeout=1.0)
        self._master, self._checked = master, True

    async def _check_history(self, fence: Redis, master: tuple[str, int] | None) -> None:
        """The marker against the master's replication ids (see _after_failover):

        - the master's own id: the rooms' history, nothing to do;
        - its previous id (`master_replid2`): a replica promoted in place of the marked
          master, which may lack acked writes: new epochs (one server: a SET NX claim);
          so is a master with replicas restarted from an RDB snapshot (Redis keeps its
          old id as master_replid2 then): rightly after a crash, needlessly after a
          clean SHUTDOWN (docs/operations.md);
        - none: a new or emptied Redis (a room whose keys are gone starts a new epoch
          anyway): marked now; but new epochs first when the master continued another
          history (a `master_replid2`: promoted, its old master unmarked);
        - another id, and the master continued a history (a `master_replid2`): promoted
          since the marker was written (two failovers, or a restart then a failover, with
          no relay server connected in between): new epochs, as for its previous id;
        - another id, no `master_replid2`: the master restarted (its id changes on every
          restart, a clean SHUTDOWN too, and a restart from the AOF leaves no previous
          id): the rooms keep their epochs, as without the marker (the crash window of appendfsync
          everysec, docs/operations.md); marked now, and logged.

        A server that held another master's address in memory (it saw the failover) starts
        new epochs whatever the marker says, unless another server already marked this
        history (the fence ran once). So does one that finds the marker written at another
        address than the one the Sentinels name now (history.marker_value): a promoted
        replica restarted before any relay server checked it (a restart from the AOF
        leaves no `master_replid2`) is not taken for its old master restarted."""
        where = self.url if master is None else f"{master[0]}:{master[1]}"
        writer = "" if master is None else where  # a standalone shard's says nothing
        previous = self._master
        moved = previous is not None and master is not None and master != previous
        try:
            info = await history.replication(fence)
        except NoPermissionError as exc:
            # An external Redis whose relay user predates the check (its ACL written from
            # an older RELAY_REDIS_COMMANDS): say what to grant, not only Redis's NOPERM.
            raise NoPermissionError(
                f"shard {self.name}: the relay's ACL user may not run INFO replication, "
                f"which the history check needs before {where} is used: grant it +info "
                f"(ACL SETUSER <user> +info; docs/operations.md, ACL users) ({exc})"
            ) from exc
        if info.get("role") != "master":
            raise RedisConnectionError(
                f"shard {self.name}: {where} is a replica, not a master; waiting for one"
            )
        replid, replid2 = info["master_replid"], info["master_replid2"]
        for _ in range(2):  # a second look if another server marked it meanwhile
            found = await fence.get(keys.HISTORY_MARKER)
            marker, marked_by = (None, "") if found is None else history.parse_marker(_text(found))
            elsewhere = history.other_writer(marked_by, writer)
            verdict = history.classify(marker, replid, replid2, moved=moved or elsewhere)
            if verdict is Verdict.SAME:
                if moved:
                    log.warning(
                        "shard %s failed over from %s to %s", self.name, _at(previous), where
                    )
                return
            if verdict.fences:
                if moved:
                    old = _at(previous)
                elif verdict is Verdict.PROMOTED:
                    at = f" at {marked_by}" if marked_by else ""
                    old = f"the master of history {(marker or '')[:8]}{at}"
                else:
                    # A promoted replica whose history was never marked (a fleet upgraded
                    # to the marker, a replica that was behind when it was first set) may
                    # lack acked writes too: only a master that continued no history is new.
                    old = f"an unmarked master {replid2[:8]}"
                claim = history.claim_name(self.name, marker, replid)
                await self._new_epochs(fence, claim, replid, writer, old, where)
                return
            if verdict is Verdict.NEW:
                marked = await self._mark(fence, replid, writer, where, nx=True)
                if marked is not False:
                    if marked:
                        log.info("shard %s: %s marked as history %s", self.name, where, replid[:8])
                    return
                continue
            log.warning(
                "shard %s: %s restarted (history %s, its rooms' epochs were started on %s): "
                "the rooms keep their epochs",
                self.name, where, replid[:8], (marker or "")[:8],
            )  # fmt: skip
            await self._mark(fence, replid, writer, where)
            return
        raise RedisConnectionError(
            f"shard {self.name}: the history marker on {where} keeps changing"
        )

    async def _mark(
        self, fence: Redis, replid: str, writer: str, where: str, *, nx: bool = False
    ) -> bool | None:
        """history.mark of this shard's marker, a full Redis logged."""
        value = history.marker_value(replid, writer)
        marked = await history.mark(fence, keys.HISTORY_MARKER, value, nx=nx)
        if marked is None:
            log.warning(
                "shard %s: %s is full (maxmemory), the history marker is left unchanged",
                self.name, where,
            )  # fmt: skip
        return marked

    async def _new_epochs(
        self, fence: Redis, claim: str, replid: str, writer: str, old: str, new: str
    ) -> None:
        """history.new_epochs, logged; raising (the session is retried) while another relay
        server is starting them."""
        try:
            started = await history.new_epochs(
                fence, claim=claim, holder=self._node_channel, marker=keys.HISTORY_MARKER,
                replid=history.marker_value(replid, writer),
            )  # fmt: skip
        except history.FenceBusy:
            raise RedisConnectionError(
                f"shard {self.name}: another relay server is starting the new epochs of "
                f"the rooms on {new}; waiting for it"
            ) from None
        if started is None:
            log.warning("shard %s failed over from %s to %s", self.name, old, new)
            return
        epoch, rooms = started
        log.warning(
            "shard %s failed over from %s to %s: %d rooms start epoch %s",
            self.name, old, new, rooms, epoch,
        )  # fmt: skip

    def _check_master(self, address: tuple[str, int]) -> None:
        """Refuse a connection to a master until _after_failover has checked its history
        (a server's first master included: it may be a promoted replica), and again from
        when the Pub/Sub session ends until the next one has checked it: the same address
        may be a restarted server by then (one back from an RDB snapshot, fenced by the
        check), and the publish connection, reconnecting as soon as it is up, must not
        reuse a lost offset under the old epoch meanwhile. Connections already open are
        left alone (a session lost to a probe does not stop publishes in flight)."""
        if address == self._master and self._checked:
            return
        if self._master is None or address == self._master:
            raise RedisConnectionError(
                f"shard {self.name}: the history of master {address[0]}:{address[1]} is "
                "not checked yet"
            )
        raise RedisConnectionError(
            f"shard {self.name}: master moved to {address[0]}:{address[1]}; "
            "waiting for its rooms' new epochs"
        )

    def _dispatch(self, channel: bytes, data: bytes) -> None:
        """One message of a channel: a room's event, this server's probe or a command."""
        if channel == self._node_channel:
            self._probe_returned(data)
        elif channel == keys.CONTROL_CHANNEL and self._on_control is not None:
            self._on_control(data)
        else:
            self._on_message(data)

    async def _probe_until_lost(self, reader: asyncio.Future[None]) -> None:
        """Probe every `probe_interval`; raise when the connection is gone (`reader`, the
        connection's `lost`, fails with why) or a probe is not back in time."""
        loop = asyncio.get_running_loop()
        while True:
            token = secrets.token_hex(8).encode()
            returned: asyncio.Future[None] = loop.create_future()
            self._probe = (token, returned)
            # The PUBLISH is awaited within the probe's own bound, not the command timeout
            # (times its retry): a frozen Redis is found out in `probe_timeout`. Left to
            # end by its socket timeout, never cancelled (see the note above _supervise).
            sent = asyncio.ensure_future(self._send_probe(token))
            sent.add_done_callback(_retrieve)
            deadline = loop.time() + self._probe_timeout
            waiting: set[asyncio.Future[Any]] = {returned, reader, sent}
            while not returned.done():
                done, _ = await asyncio.wait(
                    waiting,
                    timeout=max(0.0, deadline - loop.time()),
                    return_when=asyncio.FIRST_COMPLETED,
                )
                if reader in done:
                    reader.result()  # raises the read error
                    return
                if sent in done:
                    waiting.discard(sent)
                    if (error := sent.exception()) is not None:
                        raise ProbeLost(f"probe PUBLISH failed: {describe(error)}") from error
                if not done:
                    raise ProbeLost(f"probe not back within {self._probe_timeout}s")
            if not self._ready:
                log.info("Pub/Sub connection to %s is live", self.url)
                self._attempted = False
                self._ready = True
                # Whatever was published while this connection was down is only in the
                # rooms' histories now: tell the hub to read it before anything newer.
                self._on_resubscribed(sorted(self._channels))
            self._failures = 0
            if (await asyncio.wait({reader}, timeout=self._probe_interval))[0]:
                reader.result()
                return

    def _send_probe(self, token: bytes) -> Awaitable[Any]:
        if self._on_slot_left is not None:  # a shard channel of this node's slot
            return self.commands.spublish(self._node_channel, token)
        return self.commands.publish(self._node_channel, token)

    def _slot_left(self, channel: bytes) -> None:
        """A `sunsubscribe` from the node: the channel's slot moved away. A channel still
        wanted goes to its owner to be subscribed where the slot is now (a channel given up
        here was removed from the wanted set before its SUNSUBSCRIBE was sent)."""
        if self._on_slot_left is None:
            return
        if channel in self._channels:
            self._channels.discard(channel)
            self._on_slot_left(self, channel)
        elif channel == self._node_channel:
            # The owner reads the slot map and picks a probe channel in a slot the node
            # still has; the next probe here fails (MOVED) and the session reopens with
            # it. Not an abort now: the `sunsubscribe`s of the room channels of the same
            # slot change may still be on their way on this connection.
            self._on_slot_left(self, channel)

    def _task_first_attempt(self) -> bool:
        first, self._attempted = not self._attempted, True
        return first

    def _probe_returned(self, token: bytes) -> None:
        if self._probe is not None and self._probe[0] == token and not self._probe[1].done():
            self._probe[1].set_result(None)


def _retrieve(task: asyncio.Future[Any]) -> None:
    """Mark a background command's outcome as seen (its failure is reported elsewhere)."""
    if not task.cancelled():
        task.exception()


class EnvelopeReader(Broker):
    """What both Redis brokers do with a room channel's message and with rooms that were
    resubscribed after a loss (their members re-read the history they may have missed)."""

    def _resubscribed(self, channels: list[bytes]) -> None:
        self._gap([room for room in map(keys.room_of, channels) if room is not None])

    def _received(self, message: bytes) -> None:
        try:
            delivery = envelope.unpack(message)
        except envelope.EnvelopeError as exc:
            log.warning("dropped a message that is not an envelope: %s", exc)
            return
        try:
            self._deliver(delivery)
        except Exception:
            # One bad message must not end the reader: that would leave this shard deaf.
            log.exception("delivery of an event of room %r failed", delivery.room)


class RedisBroker(EnvelopeReader):
    """Rooms mapped to shards by rendezvous hashing over the active shard map's names.

    Rendezvous hashing moves only the rooms whose best shard is a new one (about 1/N of
    them) when a shard is added. It hashes the shard's name, never its URL: a rotated
    password or a new address moves no room. The map (which names) is shared by every
    relay server through the control shard and switched without split-brain: see
    relay.broker.shardmap.
    """

    def __init__(
        self,
        urls: Sequence[str | RedisEndpoint],
        node_id: str,
        options: RedisOptions,
        *,
        dead_after: float = 15.0,
    ) -> None:
        super().__init__()
        if not urls:
            raise ValueError("RedisBroker needs at least one URL")
        self._node_id = node_id
        self._writer = RoomWriter(node_id, options.dedupe_seconds, PLAIN_SCRIPTS)
        endpoints = [RedisEndpoint.parse(u) if isinstance(u, str) else u for u in urls]
        self._connector = options.connector
        self._shards = [
            RedisShard(
                endpoint,
                node_id,
                options,
                on_message=self._received,
                on_reconnect=options.on_reconnect,
                on_resubscribed=self._resubscribed,
                on_control=self._control_message if n == 0 else None,
            )
            for n, endpoint in enumerate(endpoints)
        ]
        self._by_name = {shard.name: shard for shard in self._shards}
        self._map: shardmap.MapState | None = None
        """The shard map in force here; None until read from the control shard: publishes
        and subscriptions are refused until then (readiness says so)."""
        self._configured = shardmap.ShardMap(0, tuple(shard.name for shard in self._shards))
        self._inflight = shardmap.InFlight()
        self._timeout = options.timeout
        self._on_moved: Callable[[list[str]], Awaitable[None]] | None = None
        self._moved_pending: set[str] = set()
        self.shard_map = shardmap.Watcher(
            node_id,
            self._shards[0].commands,
            [shard.name for shard in self._shards],
            dead_after=dead_after,
            # A publish ends within its command timeout (twice: its one retry) and, with
            # ackReplicas, the replicas' WAIT.
            drain=lambda: self._inflight.drain(2 * options.timeout + options.ack_timeout),
            apply=self._apply_map,
            cleanup=self._clean_moved,
        )
        self._map_task: asyncio.Task[None] | None = None

    @property
    def ready(self) -> bool:
        """The control shard is live and so are at least half of all shards.

        Not "every shard": each relay server would then turn unready when any one shard is
        down, and a shard down for all of them (a Redis pod restarting) would take every
        room away instead of 1/N of them; per room, ShardDown refuses only its rooms. The
        control shard carries what is not per room (server API commands to every server,
        presence announcements and liveness, node and load reports), so without it a
        server would silently drop kicks and presence. The majority rule turns away a
        server that lost most shards (more likely its own network than Redis) and stays
        unready when every shard is down. docs/operations.md, "Readiness per shard".

        And the shard map: read, naming only shards this server has, and confirmed within
        the publish fence (relay.broker.shardmap).
        """
        live = sum(shard.ready for shard in self._shards)
        return self._shards[0].ready and 2 * live >= len(self._shards) and self.map_confirmed

    @property
    def map_confirmed(self) -> bool:
        """The shard map read, naming only shards this server has, within the fence."""
        return self._map is not None and not self.shard_map.unknown and self.shard_map.leased()

    def require_lease(self) -> None:
        """Raise BrokerUnavailable unless this server holds its shard map lease: past it,
        a switch may have gone ahead without it, and a write placed by the map it last
        read (a publish, a presence change) could land on a shard the switch has left
        (shardmap: the lease)."""
        if not self.shard_map.leased():
            raise BrokerUnavailable(
                f"the shard map has not been confirmed on {self._shards[0].url} lately "
                "(a switch could have left this server out); retry"
            )

    def shards(self) -> dict[str, bool]:
        return {shard.name: shard.ready for shard in self._shards}

    def shard_for(self, room: str) -> RedisShard:
        """The room's shard in the active map (the configured names until it is read);
        BrokerUnavailable when this server has no endpoint for it (its configuration
        lags the map)."""
        name = (self._configured if self._map is None else self._map.active).place(room)
        shard = self._by_name.get(name)
        if shard is None:
            raise BrokerUnavailable(f"shard {name} of the shard map is not in RELAY_REDIS_URLS")
        return shard

    def placement(self, room: str) -> str:
        # The active map's name for the room, without raising (shard_for does when this
        # server lacks the shard: the read it bounds then fails on its own).
        return (self._configured if self._map is None else self._map.active).place(room)

    async def start(self) -> None:
        for shard in self._shards:
            shard.start()
        self._map_task = asyncio.create_task(self.shard_map.run(), name="shard map")

    def set_move_listener(self, listener: Callable[[list[str]], Awaitable[None]]) -> None:
        """`listener` gets the local rooms a shard switch moved, once they are subscribed
        on their new shard (presence writes its members there); a switch waits for it."""
        self._on_moved = listener

    async def close(self) -> None:
        if self._map_task is not None:
            self._map_task.cancel()
            await asyncio.wait({self._map_task}, timeout=1.0)
        await asyncio.gather(*(shard.close() for shard in self._shards), return_exceptions=True)
        await self._connector.aclose()

    async def publish(
        self,
        room: str,
        data: Any,
        *,
        ts: int,
        policy: RoomPolicy,
        msg_id: str | None = None,
        subject: str | None = None,
        trace: dict[str, str] | None = None,
    ) -> PublishResult:
        # Counted in flight before the check, with no await between: a switch's prepare
        # waits for every publish that passed the check before it (shardmap.InFlight).
        generation = self._inflight.enter()
        try:
            state = self._map
            if state is None:
                self.shard_for(room).live()  # a shard down fails at once, map or not
                state = await self._read_map()
            shard = self.shard_for(room).live()
            if state.switching and state.moving(room):
                raise BrokerUnavailable(f"room {room} is moving to another shard; retry")
            self.require_lease()
            try:
                return await self._writer.publish(
                    shard, room, data, ts, policy, msg_id, subject, trace
                )
            except (RedisError, OSError) as exc:
                raise BrokerUnavailable(f"publish on {shard.url} failed: {describe(exc)}") from exc
        finally:
            self._inflight.exit(generation)

    async def history(
        self, room: str, after: int | None, policy: RoomPolicy, *, limit: int | None = None
    ) -> History:
        return await self._writer.history(self.shard_for(room).live(), room, after, policy, limit)

    async def broadcast(self, message: bytes) -> None:
        shard = self._shards[0]
        try:
            await shard.commands.publish(keys.CONTROL_CHANNEL, message)
        except (RedisError, OSError) as exc:
            reason = f"control PUBLISH on {shard.url} failed: {describe(exc)}"
            raise BrokerUnavailable(reason) from exc

    @property
    def control_shard(self) -> RedisShard:
        """The shard holding what is not per room: control channel, node reports."""
        return self._shards[0]

    async def subscribe(self, room: str) -> None:
        if self._map is None:
            self.shard_for(room).live()  # a shard down fails at once, map or not
            await self._read_map()
        await self.shard_for(room).subscribe(keys.channel(room))

    async def _read_map(self) -> shardmap.MapState:
        """The shard map, read now when not known yet (before the watcher's first read)."""
        control = self._shards[0]
        try:
            await self.shard_map.ensure()
        except (RedisError, OSError, shardmap.ShardMapError) as exc:
            reason = f"shard map read on {control.url} failed: {describe(exc)}"
            raise BrokerUnavailable(reason) from exc
        if self._map is None:
            raise BrokerUnavailable("the shard map has not been read from Redis yet")
        return self._map

    async def unsubscribe(self, room: str) -> None:
        # Every shard that has it: during a switch a room may be on its old and new one.
        channel = keys.channel(room)
        for shard in self._shards:
            if channel in shard.channels:
                await shard.unsubscribe(channel)

    async def _apply_map(self, state: shardmap.MapState) -> None:
        """Put a shard map state in force: placement and refusals at once, then move
        this server's subscriptions whose shard changed (raises if one cannot be moved:
        the watcher applies the state again and does not ack until it has)."""
        self._map = state
        moved = []
        for source in self._shards:
            for channel in sorted(source.channels):
                room = keys.room_of(channel)
                if room is None:
                    continue
                target = self._by_name.get(state.active.place(room))
                if target is None or target is source:
                    continue
                await target.subscribe(channel)
                if channel in source.channels:
                    await source.unsubscribe(channel)
                else:  # left while we subscribed it: not wanted on either
                    await target.unsubscribe(channel)
                    continue
                moved.append(room)
        if moved:
            log.info("shard map version %d: moved %d rooms", state.active.version, len(moved))
            self._moved_pending.update(moved)
        if self._moved_pending:
            if self._on_moved is None:
                self._gap(sorted(self._moved_pending))  # durable rooms: their new history
            else:
                await self._on_moved(sorted(self._moved_pending))
        self._moved_pending.clear()

    async def _clean_moved(self, name: str, stale: shardmap.Stale) -> int:
        shard = self._by_name.get(name)
        if shard is None:
            raise BrokerUnavailable(f"shard {name} is not in RELAY_REDIS_URLS")
        if not shard.ready:
            # Not a SCAN into a connection timeout on every read of the map (a dead shard
            # stays dirty until it is back, and each read tries again).
            raise BrokerUnavailable(f"Redis {shard.url} is not connected")
        try:
            return await shardmap.clean_shard(shard.commands, stale)
        except (RedisError, OSError) as exc:
            raise BrokerUnavailable(f"cleanup on {shard.url} failed: {describe(exc)}") from exc

    def _control_message(self, message: bytes) -> None:
        if message == shardmap.ANNOUNCE:
            self.shard_map.wake()
        else:
            self._control_received(message)

    async def report_load(self, connections: int) -> None:
        """Write this server's connection count where the operator's autoscaler reads it."""
        key = load_report_key(self._node_id)
        try:
            await self._shards[0].commands.set(key, connections, ex=LOAD_REPORT_TTL_SECONDS)
        except (RedisError, OSError) as exc:
            log.debug("load report failed: %r", exc)


class RoomWriter:
    """A room's publish and history read on the shard (or cluster node) that holds it: the
    one implementation both Redis brokers use."""

    def __init__(self, node_id: str, dedupe_seconds: int, scripts: RoomScripts) -> None:
        self._node_id = node_id
        self._dedupe_seconds = dedupe_seconds
        self._scripts = scripts

    def publish(
        self,
        shard: RedisShard,
        room: str,
        data: Any,
        ts: int,
        policy: RoomPolicy,
        msg_id: str | None,
        subject: str | None,
        trace: dict[str, str] | None,
    ) -> Coroutine[Any, Any, PublishResult]:
        """Raises BrokerUnavailable (SlotMoved on a cluster redirect) or a RedisError.

        Not a coroutine itself: it hands back the one that publishes, so a publish's
        await goes through one coroutine frame fewer (each is created, resumed and
        unwound once per event)."""
        if policy.durable:
            return self._durable(shard, room, data, ts, policy, msg_id, subject, trace)
        return self._volatile(shard, room, data, ts, msg_id, subject, trace)

    async def _durable(
        self,
        shard: RedisShard,
        room: str,
        data: Any,
        ts: int,
        policy: RoomPolicy,
        msg_id: str | None,
        subject: str | None,
        trace: dict[str, str] | None,
    ) -> PublishResult:
        event_head, event_tail = protocol.event_parts(room, data, ts, subject)
        header_head, header_tail = envelope.header_parts(self._node_id, room, ts, trace)
        dedupe, window = self._dedupe(room, subject, msg_id)
        script_keys = [keys.meta(room), keys.log(room), dedupe]
        script_args: list[commands.Arg] = [
            keys.channel(room),
            _EPOCHS.draw(),
            policy.history_size,
            policy.history_ttl_seconds,
            window,
            header_head,
            header_tail,
            event_head,
            event_tail,
        ]
        if shard.acks is None:
            reply = await shard.publishes.evalsha(self._scripts.durable, script_keys, script_args)
        else:  # acked once replicas have it (relay.broker.replicas)
            reply = await shard.acks.publish(
                self._scripts.durable, script_keys, script_args, dedupe=dedupe, window=window
            )
        duplicate, offset, epoch = reply
        if offset is None:  # a retry of an id a volatile-policy pod already sent
            return PublishResult(None, None, True)
        return PublishResult(int(offset), _text(epoch), bool(duplicate))

    async def _volatile(
        self,
        shard: RedisShard,
        room: str,
        data: Any,
        ts: int,
        msg_id: str | None,
        subject: str | None,
        trace: dict[str, str] | None,
    ) -> PublishResult:
        payload = protocol.event(room, None, data, ts, subject)
        message = envelope.pack(self._node_id, room, ts, payload, trace)
        if msg_id is None:  # nothing to deduplicate: a plain PUBLISH, no script
            await shard.publishes.call(self._scripts.publish, keys.channel(room), message)
            return _SENT
        dedupe, window = self._dedupe(room, subject, msg_id)
        duplicate = await shard.publishes.evalsha(
            self._scripts.volatile_once, [dedupe], [keys.channel(room), message, window]
        )
        return _DUPLICATE if duplicate else _SENT

    def _dedupe(self, room: str, subject: str | None, msg_id: str | None) -> tuple[str, int]:
        """The key and window that make a publish with the client's id run once.

        Without an id the window is 0: nothing to remember. The publish connection
        (relay.broker.commands) never sends a command again once it may have run (it
        resends only after NOSCRIPT, when the script did not run), so an id-less publish
        whose reply is lost fails with BrokerUnavailable and is not run twice. The key
        is then the room's meta key, unused by the script, named only because a script's
        keys must be in the room's slot.
        """
        if msg_id is not None:
            return keys.dedupe(room, subject, msg_id), self._dedupe_seconds
        return keys.meta(room), 0

    async def history(
        self,
        shard: RedisShard,
        room: str,
        after: int | None,
        policy: RoomPolicy,
        limit: int | None = None,
    ) -> History:
        """The room's position and events after `after`, read on `shard`."""
        try:
            epoch, top, entries = await shard.read_history(
                keys=[keys.meta(room), keys.log(room)],
                args=[
                    -1 if after is None else after,
                    policy.history_size if limit is None else min(limit, policy.history_size),
                    secrets.token_hex(4),
                    min(EMPTY_ROOM_SECONDS, policy.history_ttl_seconds),
                ],
            )
        except (AskError, TryAgainError, ClusterDownError) as exc:  # MovedError is an AskError
            raise SlotMoved(f"history read on {shard.url} failed: {describe(exc)}") from exc
        except (RedisError, OSError) as exc:
            raise BrokerUnavailable(f"history read on {shard.url} failed: {describe(exc)}") from exc
        deliveries = []
        for _, fields in entries:
            try:
                deliveries.append(envelope.unpack(fields[1]))
            except envelope.EnvelopeError as exc:
                log.warning("skipped a history entry of %s that is not an envelope: %s", room, exc)
        return History(_text(epoch), int(top), deliveries)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _at(address: tuple[str, int] | None) -> str:
    return "?" if address is None else f"{address[0]}:{address[1]}"
