"""The cross-node bus behind one interface: `memory` (single node) and `redis` (shared)."""

from relay.broker.base import (
    Broker,
    BrokerUnavailable,
    Delivery,
    History,
    NotReplicated,
    PublishResult,
    describe,
)

__all__ = [
    "Broker",
    "BrokerUnavailable",
    "Delivery",
    "History",
    "NotReplicated",
    "PublishResult",
    "describe",
]
