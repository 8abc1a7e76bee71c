"""One relay server's runtime: its broker, hub and sessions, readiness and drain."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from redis.exceptions import RedisError
from starlette.responses import PlainTextResponse

from relay import __version__, auth, control, outbox, tracing
from relay.broker import Broker, BrokerUnavailable, describe, shardmap
from relay.broker.memory import MemoryBroker
from relay.broker.options import RedisOptions
from relay.broker.redis import RedisBroker
from relay.broker.shardmap import PHASES, MapState, ShardMapError, now_ms
from relay.broker.slots import RedisClusterBroker
from relay.cluster import ClusterState, NodeReport, make_state
from relay.config import Settings
from relay.core import select
from relay.hub import Hub, member_sets
from relay.metrics import Metrics
from relay.presence import Presence
from relay.protocol import CloseCode
from relay.rooms import RoomPolicies
from relay.session import Services, Session
from relay.transport import Handshake

log = logging.getLogger("relay.node")

PRESENCE_DEAD_AFTER_REPORTS = 3
"""A node silent for this many load-report intervals is dead: its presence members leave."""


def make_broker(settings: Settings, metrics: Metrics) -> Broker:
    if not settings.redis_urls:
        return MemoryBroker(settings.node_id, dedupe_seconds=settings.dedupe_seconds)
    options = RedisOptions.from_settings(settings, on_reconnect=metrics.redis_reconnects.inc)
    if settings.redis_cluster:
        return RedisClusterBroker(settings.redis_endpoints, settings.node_id, options)
    return RedisBroker(
        settings.redis_endpoints,
        settings.node_id,
        options,
        dead_after=PRESENCE_DEAD_AFTER_REPORTS * settings.load_report_seconds,
    )


class RelayNode:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.metrics = Metrics()
        self.auth = auth.Authenticator.from_settings(settings)
        self.broker = make_broker(settings, self.metrics)
        self.metrics.watch_shards(self.broker.shards)
        policies = RoomPolicies(settings.rooms)
        core = select(settings.core)
        self.hub = Hub(
            self.broker,
            self.metrics,
            policies,
            unsubscribe_delay=settings.unsubscribe_delay,
            catch_up_limit=settings.send_queue,
            member_set=member_sets(core),
        )
        self.cluster: ClusterState = make_state(self.broker, settings.node_id)
        self.presence = Presence(
            settings.node_id,
            self.cluster,
            self.broker,
            policies,
            max_members=settings.presence_max_members,
            dead_after=PRESENCE_DEAD_AFTER_REPORTS * settings.load_report_seconds,
        )
        self.hub.presence = self.presence
        if isinstance(self.broker, RedisBroker):
            self.broker.set_move_listener(self._moved)
        self.broker.set_control_listener(self._on_control)
        self.services = Services(
            settings,
            self.broker,
            self.hub,
            self.metrics,
            outbox.scheduler(core),
            policies,
            self._ended,
            self.presence,
        )
        self.sessions: set[Session] = set()
        self.draining = False
        self._all_closed = asyncio.Event()
        self._load_reports: asyncio.Task[None] | None = None

    async def start(self) -> None:
        # Shard names and clean URLs only: credentials never reach a log line.
        kind = "redis cluster, seeds " if self.settings.redis_cluster else "redis "
        mode = (
            kind + ", ".join(f"{e.name}={e.url}" for e in self.settings.redis_endpoints)
            if self.settings.redis_urls
            else "embedded"
        )
        log.info("relay node %s starting, broker: %s", self.settings.node_id, mode)
        system = "redis" if self.settings.redis_urls else "gamecluster"
        tracing.setup(self.settings.node_id, system=system)
        self.auth.announce()
        await self.broker.start()
        self.presence.start()
        self._load_reports = asyncio.create_task(self._report_load())

    async def stop(self) -> None:
        # uvicorn has waited for the connections to close: cancel what a session may
        # still be handling (a publish, a join's replay), as uvicorn cancelled ASGI tasks.
        await asyncio.gather(*(session.stop() for session in list(self.sessions)))
        if self._load_reports is not None:
            self._load_reports.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._load_reports
        await self.presence.stop()
        await self.hub.close()
        await self.broker.close()
        await tracing.shutdown()

    def readiness(self) -> str | None:
        """None when ready to take connections, else why not."""
        if self.draining:
            return "draining"
        if isinstance(self.broker, RedisBroker) and self.broker.shard_map.unknown:
            return "the shard map names shards RELAY_REDIS_URLS lacks: " + ",".join(
                self.broker.shard_map.unknown
            )
        if not self.broker.ready:
            control = self._control_name()
            down = [f"{n} (control)" if n == control else n for n in self.shards_down()]
            if down:
                return f"Redis shards down: {', '.join(down)}"
            if isinstance(self.broker, RedisBroker) and not self.broker.map_confirmed:
                return "the shard map is not read or confirmed on the control shard yet"
            if isinstance(self.broker, RedisClusterBroker):
                return "the Redis Cluster slot map is not read yet or leaves slots unassigned"
            return "broker not connected"
        if len(self.sessions) >= self.settings.max_connections:
            return "connection limit reached"  # new clients would get 1013 here
        return None

    async def shard_map(self) -> MapState:
        """The shard map as stored. Raises BrokerUnavailable; ShardMapError without
        Redis shards (the embedded broker has none) or before any relay wrote one."""
        broker = self._redis_broker()
        try:
            state = await shardmap.read(broker.control_shard.commands)
        except (RedisError, OSError) as exc:
            raise BrokerUnavailable(f"shard map read failed: {describe(exc)}") from exc
        if state is None:
            raise ShardMapError("no shard map yet: no relay server has connected")
        return state

    async def switch_shards(self, names: list[str], timeout: float) -> MapState:
        """Start a switch to `names` (docs/operations.md, "Shard changes").

        Raises ShardMapError (a bad list, a switch running), BrokerUnavailable."""
        broker = self._redis_broker()
        control = self.settings.redis_endpoints[0].name
        shardmap.validate(names, control, [e.name for e in self.settings.redis_endpoints])
        try:
            state = await shardmap.begin(
                broker.control_shard.commands, names, control_name=control, timeout=timeout
            )
        except (RedisError, OSError) as exc:
            raise BrokerUnavailable(f"shard switch failed: {describe(exc)}") from exc
        log.info("shard map switch to %s started: %s", ",".join(names), state.describe())
        return state

    def _control_name(self) -> str:
        if isinstance(self.broker, RedisBroker | RedisClusterBroker):
            with contextlib.suppress(BrokerUnavailable):
                return self.broker.control_shard.name
        return ""

    def _redis_broker(self) -> RedisBroker:
        if isinstance(self.broker, RedisClusterBroker):
            raise ShardMapError(
                "RELAY_REDIS_CLUSTER=true: Redis Cluster places the rooms by hash slot, there "
                "is no shard map (reshard with redis-cli --cluster reshard)"
            )
        if not isinstance(self.broker, RedisBroker):
            raise ShardMapError("the embedded broker has no shards (RELAY_REDIS_URLS is empty)")
        return self.broker

    async def _moved(self, rooms: list[str]) -> None:
        """A shard switch moved these local rooms: durable ones read their new shard's
        history (new epoch), presence writes its members there; the switch waits."""
        await self.hub.refill(rooms)
        await self.presence.moved(rooms)

    def update_gauges(self) -> None:
        """Gauges read at scrape time: rooms, the shard map's version and switch, and (Redis
        Cluster) the room channels subscribed nowhere."""
        self.metrics.rooms.set(self.hub.room_count)
        if isinstance(self.broker, RedisBroker) and self.broker.shard_map.state is not None:
            state = self.broker.shard_map.state
            self.metrics.shard_map_version.set(state.active.version)
            self.metrics.shard_switch_phase.set(PHASES.index(state.phase))
            self.metrics.shard_switch_stalled.set(int(state.stalled(now_ms())))
        if isinstance(self.broker, RedisClusterBroker):
            self.metrics.channels_unplaced.set(self.broker.unplaced)

    def shards_down(self) -> list[str]:
        """Names of the Redis shards not live on this server: their rooms get `unavailable`;
        RedisBroker.ready says when that makes the whole server unready."""
        return [name for name, up in self.broker.shards().items() if not up]

    def open(self, handshake: Handshake) -> Session | None:
        """The `/ws` endpoint: admit an upgrade and start its session, or refuse it."""
        if self.draining:
            handshake.refuse(PlainTextResponse("draining", status_code=503))
            return None
        try:
            identity = self.auth.admit(handshake.headers, handshake.query)
        except auth.HandshakeRefused as refused:
            log.debug("refused an upgrade: %s", refused)
            self.metrics.handshake_refusals.labels(str(refused.status)).inc()
            handshake.refuse(refused.response())
            return None
        socket = handshake.accept()
        if len(self.sessions) >= self.settings.max_connections:
            socket.close(CloseCode.TRY_AGAIN_LATER, "connection limit reached")
            return None
        session = Session(self.services, socket, identity)
        self.sessions.add(session)
        self.metrics.connections.inc()
        session.start(handshake.client)
        return session

    def _ended(self, session: Session) -> None:
        self.sessions.discard(session)
        self.metrics.connections.dec()
        if not self.sessions:
            self._all_closed.set()

    async def drain(self, seconds: float) -> None:
        """Hand every session over to other relay servers before this one stops."""
        # 1. Refuse new connections and report unready, so the load balancer moves on.
        self.draining = True
        sessions = list(self.sessions)
        log.info("draining %d sessions over %.1fs", len(sessions), seconds)
        # 2. Ask each session to reconnect elsewhere, spread over most of the window so
        #    the other relay servers are not stampeded by every client at once.
        spacing = seconds * 0.8 / len(sessions) if sessions else 0.0
        for session in sessions:
            session.reconnect("draining", CloseCode.SERVICE_RESTART)
            if spacing:
                await asyncio.sleep(spacing)
        # 3. Give the closing handshakes the rest of the window, then stop waiting.
        if self.sessions:
            self._all_closed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._all_closed.wait(), max(1.0, seconds * 0.2))
        log.info("drain done, %d sessions still open", len(self.sessions))

    async def disconnect(self, subject: str, reason: str) -> None:
        """Close every connection of `subject` on every relay server (4003).

        Raises BrokerUnavailable when the command could not be sent.
        """
        await self.broker.broadcast(control.disconnect(self.settings.node_id, subject, reason))

    async def remove(self, subject: str, room: str) -> None:
        """Remove every connection of `subject` from `room` on every relay server."""
        await self.broker.broadcast(control.leave(self.settings.node_id, subject, room))

    def _on_control(self, message: bytes) -> None:
        try:
            command = control.parse(message)
        except control.ControlError as exc:
            log.warning("dropped a control message: %s", exc)
            return
        if command.op == "presence":
            self.presence.deliver(command)
            return
        targets = [
            s for s in self.sessions if s.subject is not None and s.subject == command.subject
        ]
        for session in targets:
            if command.op == "disconnect":
                session.disconnect(command.reason or "disconnected")
            elif command.room is not None:
                session.remove_from(command.room)
        if targets:
            log.info("%s: %d connections of a subject", command.op, len(targets))

    async def _report_load(self) -> None:
        """Every load-report interval: connection count (operator), node report and room
        counts (server API), presence liveness and the leaves of dead nodes."""
        while True:
            rooms = self.hub.local_rooms()
            report = NodeReport(self.settings.node_id, len(self.sessions), len(rooms), __version__)
            if isinstance(self.broker, RedisBroker | RedisClusterBroker):
                await self.broker.report_load(len(self.sessions))
            try:
                await self.cluster.report(report, rooms)
                await self.presence.tick()
            except BrokerUnavailable as exc:
                log.debug("node report failed: %r", exc)
            except Exception:
                log.exception("node report failed")
            await asyncio.sleep(self.settings.load_report_seconds)
