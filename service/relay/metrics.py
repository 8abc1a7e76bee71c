"""Prometheus metrics of one relay server, in a registry of its own.

Counters are bumped once per event and per pod (never per recipient inside the fan-out
loop), so metrics cost nothing per delivered message.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.connections = Gauge("relay_connections", "Open WebSocket sessions.", registry=r)
        self.rooms = Gauge("relay_rooms", "Rooms with at least one local member.", registry=r)
        self.core = Gauge(
            "relay_core_info",
            "1 for what reads client frames and fans events out here: rust (the compiled "
            "core, relay.core) or python (websockets and relay.outbox).",
            ["impl"],
            registry=r,
        )
        self.published = Counter(
            "relay_events_published", "Events published through this server.", registry=r
        )
        self.delivered = Counter(
            "relay_events_delivered", "Event messages queued to local members.", registry=r
        )
        self.slow_consumers = Counter(
            "relay_slow_consumer_disconnects", "Sessions dropped for not reading.", registry=r
        )
        self.redis_reconnects = Counter(
            "relay_redis_reconnects", "Pub/Sub connections rebuilt after a failure.", registry=r
        )
        self.unreplicated = Counter(
            "relay_publishes_unreplicated",
            "Durable publishes stored on the Redis master but refused (unavailable): fewer "
            "replicas than RELAY_REDIS_ACK_REPLICAS confirmed them in time.",
            registry=r,
        )
        self.errors = Counter(
            "relay_protocol_errors", "Client messages refused, by code.", ["code"], registry=r
        )
        self.delivery_latency = Histogram(
            "relay_delivery_latency_seconds",
            "Publish-to-delivery delay, from the envelope timestamp to local fan-out.",
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
            registry=r,
        )
        self.shard_map_version = Gauge(
            "relay_shard_map_version", "Version of the shard map in force here.", registry=r
        )
        self.shard_switch_phase = Gauge(
            "relay_shard_switch_phase",
            "Shard map switch: 0 none, 1 prepare (moving rooms refuse publishes), 2 move.",
            registry=r,
        )
        self.shard_switch_stalled = Gauge(
            "relay_shard_switch_stalled",
            "1 while a shard map switch is past its deadline (docs/operations.md).",
            registry=r,
        )
        self.channels_unplaced = Gauge(
            "relay_redis_channels_unplaced",
            "Redis Cluster: room channels subscribed on no node (their slot's new master not "
            "yet named, reachable or fenced): those rooms' members get no live event.",
            registry=r,
        )
        self.handshake_refusals = Counter(
            "relay_handshake_refusals",
            "Connections refused before the upgrade: authentication (401), origin check "
            "(403), request head too slow (408), target too long (414), head too large (431).",
            ["status"],
            registry=r,
        )

    def watch_shards(self, shards: Callable[[], dict[str, bool]]) -> None:
        """Export `relay_redis_shard_up{shard}` from `shards()` (name -> live), read at
        each scrape: the shard list is the broker's, whatever it is at that moment."""
        self.registry.register(_ShardCollector(shards))


class _ShardCollector(Collector):
    def __init__(self, shards: Callable[[], dict[str, bool]]) -> None:
        self._shards = shards

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "relay_redis_shard_up",
            "1 while this server's Pub/Sub connection to the Redis shard is live (its "
            "self-probe comes back), else 0: that shard's rooms get `unavailable`.",
            labels=["shard"],
        )
        for name, up in self._shards().items():
            family.add_metric([name], 1.0 if up else 0.0)
        yield family
