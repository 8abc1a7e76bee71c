"""What both Redis brokers (one shard per name, or Redis Cluster) are told about Redis.

`RedisBroker` and `RedisClusterBroker` read these alike, and hand every shard's connections
(relay.broker.redis.RedisShard) the same bounds; each broker keeps only its own extra
keyword (the shard map's `dead_after`, the slot map's `refresh_seconds`). The defaults are
the Settings defaults of the same RELAY_* variables (tests/unit/test_config.py holds
the two together), so a test or a benchmark names only what it changes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from relay.broker.connection import Connector
from relay.config import Settings


def _nothing() -> None:
    """The default `on_reconnect`: no one counts lost sessions."""


@dataclass(frozen=True)
class RedisOptions:
    """How a Redis broker talks to Redis: credentials and TLS, timeouts, probes, acks.

    Give each broker its own: the broker closes its connector's Sentinel connections when it
    is closed (`dataclasses.replace(options, connector=...)` for a second broker)."""

    connector: Connector = field(default_factory=Connector)
    """Who this relay is to Redis (ACL user, password or its file), what it trusts (TLS CA)
    and where the Sentinels are (RELAY_REDIS_USERNAME, _PASSWORD, _CA_FILE, _SENTINELS...)."""
    timeout: float = 2.0
    """Bounds one Redis command or connect, and a SUBSCRIBE's confirmation; past it the
    command fails as `unavailable` (RELAY_REDIS_TIMEOUT)."""
    probe_interval: float = 3.0
    """Seconds between probes of this server's own Pub/Sub connection on each shard
    (RELAY_PROBE_INTERVAL)."""
    probe_timeout: float = 3.0
    """A probe not back within this many seconds ends the shard's Pub/Sub session: it is
    rebuilt, and the shard is unready until a probe comes back (RELAY_PROBE_TIMEOUT)."""
    dedupe_seconds: int = 300
    """How long a publish `id` is remembered, so a retry is acked without storing twice
    (RELAY_DEDUPE_SECONDS)."""
    ack_replicas: int = 0
    """Replicas that must have a durable event before its publish is acked (Redis WAIT);
    0: acked once the master has it (RELAY_REDIS_ACK_REPLICAS)."""
    ack_timeout: float = 0.5
    """Bounds the replicas' confirmation of one durable event; fewer replicas by then: the
    publish is `unavailable` (RELAY_REDIS_ACK_TIMEOUT, below `timeout`)."""
    on_reconnect: Callable[[], None] = _nothing
    """Called each time a shard's Pub/Sub session ends, before it is rebuilt (the relay
    counts them in `relay_redis_reconnects_total`)."""

    @classmethod
    def from_settings(
        cls, settings: Settings, *, on_reconnect: Callable[[], None] = _nothing
    ) -> RedisOptions:
        return cls(
            Connector.from_settings(settings),
            timeout=settings.redis_timeout,
            probe_interval=settings.probe_interval,
            probe_timeout=settings.probe_timeout,
            dedupe_seconds=settings.dedupe_seconds,
            ack_replicas=settings.redis_ack_replicas,
            ack_timeout=settings.redis_ack_timeout,
            on_reconnect=on_reconnect,
        )
