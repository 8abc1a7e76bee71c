"""Where the connection count comes from: the relay pods' load reports in Redis.

Each relay pod writes its live connection count to ``load_report_key(node id)`` with
a TTL of ``LOAD_REPORT_TTL_SECONDS``, so a pod that died stops counting within that time. The
reader scans every shard (a pod may report to any of them) and keeps one count per node id.

A shard that cannot be reached makes the whole reading unknown (None) rather than low: a
partial sum would look like a load drop and start a scale-down.
"""

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import redis

from relay import contract

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RedisAuth:
    """How the operator logs in to one GameCluster's Redis (per GameCluster, read from its
    Secret on every reading, so a rotated password is used at the next tick)."""

    username: str | None = None
    password: str | None = field(default=None, repr=False)
    ca_pem: str | None = field(default=None, repr=False)
    """PEM CA bundle for ``rediss://`` URLs (external mode's ``secretRef.caKey``)."""


class LoadSource(Protocol):
    def total_connections(
        self, redis_urls: Sequence[str], auth: RedisAuth | None = None
    ) -> int | None:
        """Connections summed over the fresh load reports, or None when unknown."""
        ...


class RedisLoadSource:
    """Reads the reports with SCAN + MGET; bounded by ``timeout_seconds`` per shard.

    A managed Redis refuses anonymous clients: ``auth`` is the operator's ACL user there
    (``relay.contract.OPERATOR_ACL_RULES``: it may read load reports, nothing else).
    """

    def __init__(self, timeout_seconds: float = 2.0) -> None:
        self._timeout = timeout_seconds

    def total_connections(
        self, redis_urls: Sequence[str], auth: RedisAuth | None = None
    ) -> int | None:
        if not redis_urls:
            return None
        per_node: dict[str, int] = {}
        for url in redis_urls:
            try:
                per_node.update(self._read_shard(url, auth or RedisAuth()))
            except (redis.RedisError, OSError) as exc:
                logger.info("load reports unavailable from %s: %s", _redact(url), exc)
                return None
        return sum(per_node.values())

    def _read_shard(self, url: str, auth: RedisAuth) -> dict[str, int]:
        tls: dict[str, str] = {}
        if auth.ca_pem is not None and url.startswith("rediss://"):
            tls["ssl_ca_data"] = auth.ca_pem
        client = redis.Redis.from_url(
            url,
            socket_timeout=self._timeout,
            socket_connect_timeout=self._timeout,
            username=auth.username,
            password=auth.password,
            **tls,
        )
        try:
            keys = list(client.scan_iter(match=contract.LOAD_REPORT_KEY_PATTERN, count=500))
            if not keys:
                return {}
            values = client.mget(keys)
        finally:
            client.close()
        counts: dict[str, int] = {}
        for key, value in zip(keys, values, strict=True):
            if value is None:  # expired between SCAN and MGET
                continue
            try:
                counts[key.decode()] = max(int(value), 0)
            except ValueError:
                logger.warning("ignoring malformed load report %r=%r", key, value)
        return counts


def _redact(url: str) -> str:
    """The URL without credentials, for logs."""
    scheme, sep, rest = url.partition("://")
    return f"{scheme}{sep}{rest.rpartition('@')[2]}"
