"""Where the connection count comes from: the relay pods' load reports in Redis.

Each relay pod writes its live connection count to ``load_report_key(node id)`` on
shard 0 with a TTL of ``LOAD_REPORT_TTL_SECONDS``; the node id is the pod's name (the
operator sets RELAY_NODE_ID from metadata.name). So the reader needs no SCAN: it asks shard 0
for exactly the keys of the ready relay pods, one MGET, O(pods).

A count is only trusted when it is complete. A ready pod without a report (it cannot reach
Redis, or its report expired) makes the whole reading unknown rather than low: a partial sum
would look like a load drop and start a scale-down. The one exception is a pod that became
ready less than a TTL ago: it may not have written its first report yet, and a new pod has
next to no players, so it counts as 0. No ready pod at all is unknown too.

A managed Redis with replicas names shard 0 ``shard-0=sentinel://shard-0``: the reader then
asks the GameCluster's Sentinels (``RedisAuth.sentinels``) for that master, with redis-py's
Sentinel client, as the relays do, so it follows a failover at the next tick.
"""

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol

import redis
from redis.sentinel import Sentinel

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
    sentinels: tuple[tuple[str, int], ...] = ()
    """Where ``sentinel://<master>`` URLs find their master (a managed Redis with replicas)."""
    sentinel_username: str | None = None
    """The Sentinels' ACL user (an external Redis's, Redis 6.2+); None: their default."""
    sentinel_password: str | None = field(default=None, repr=False)
    """The Sentinels' own password (their ``requirepass``), not the Redis user's."""
    cluster: bool = False
    """An external Redis Cluster: the reports are in the cluster keys' slot
    (``contract.load_report_key(cluster=True)``), read on the node that owns it."""
    sentinel_tls: bool = False
    """TLS to the Sentinels and the masters they name (a managed Redis with replicas and
    ``spec.redis.tls``), verified against ``ca_pem`` with the hostname checked."""


@dataclass(frozen=True)
class ReadyPod:
    name: str
    ready_since: datetime | None


@dataclass(frozen=True)
class Reading:
    per_pod: dict[str, int] = field(default_factory=dict)
    unknown: str | None = None
    """Why the load is unknown (no decision then); None when every ready pod is counted."""

    @property
    def total(self) -> int | None:
        return None if self.unknown is not None else sum(self.per_pod.values())


NO_READY_PODS = Reading(unknown="no ready relay pod to read a load report from")
"""Unknown, not 0: with every pod unready (Redis down fails every readiness probe) a zero
would start a scale-down exactly when the fleet is in trouble."""


class LoadSource(Protocol):
    def read(
        self,
        redis_url: str | None,
        pods: Sequence[ReadyPod],
        now: datetime,
        auth: RedisAuth | None = None,
    ) -> Reading:
        """The ready pods' fresh load reports from shard 0 (``redis_url``), logged in as
        ``auth`` (a managed Redis refuses anonymous clients)."""
        ...


def ready_pods(pods: Sequence[Mapping[str, Any]]) -> list[ReadyPod]:
    """The pods whose Ready condition is True and that are not terminating."""
    ready = []
    for pod in pods:
        meta = pod.get("metadata") or {}
        if meta.get("deletionTimestamp"):
            continue
        for condition in (pod.get("status") or {}).get("conditions") or []:
            if condition.get("type") == "Ready" and condition.get("status") == "True":
                ready.append(
                    ReadyPod(meta["name"], _parse_time(condition.get("lastTransitionTime")))
                )
                break
    return ready


def _parse_time(value: object) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def combine(
    pods: Sequence[ReadyPod], values: Sequence[bytes | str | None], now: datetime
) -> Reading:
    """The reading from one MGET's values, in the order of ``pods`` (pure)."""
    grace = timedelta(seconds=contract.LOAD_REPORT_TTL_SECONDS)
    per_pod: dict[str, int] = {}
    for pod, value in zip(pods, values, strict=True):
        if value is None:
            if pod.ready_since is not None and now - pod.ready_since < grace:
                per_pod[pod.name] = 0
                continue
            return Reading(per_pod, f"no fresh load report from ready pod {pod.name}")
        try:
            per_pod[pod.name] = max(int(value), 0)
        except ValueError:
            return Reading(per_pod, f"malformed load report from pod {pod.name}: {value!r}")
    return Reading(per_pod)


class RedisLoadSource:
    """One MGET on shard 0; bounded by ``timeout_seconds``.

    A managed Redis refuses anonymous clients: ``auth`` is the operator's ACL user there
    (``relay.contract.OPERATOR_ACL_RULES``: it may read load reports, nothing else).
    """

    def __init__(self, timeout_seconds: float = 2.0) -> None:
        self._timeout = timeout_seconds

    def read(
        self,
        redis_url: str | None,
        pods: Sequence[ReadyPod],
        now: datetime,
        auth: RedisAuth | None = None,
    ) -> Reading:
        if not pods:
            return NO_READY_PODS
        if not redis_url:
            return Reading(unknown="no Redis URL to read load reports from")
        auth = auth or RedisAuth()
        timeouts = {"socket_timeout": self._timeout, "socket_connect_timeout": self._timeout}
        tls: dict[str, str] = {}
        if auth.ca_pem is not None and redis_url.startswith("rediss://"):
            tls["ssl_ca_data"] = auth.ca_pem
        master = sentinel_master(redis_url)
        sentinel: Sentinel | None = None
        if master is not None:
            # The Sentinels' password goes to the Sentinels only (sentinel_kwargs), the
            # operator user's to the master they name.
            over_tls: dict[str, Any] = {}
            if auth.sentinel_tls:
                over_tls = {
                    "ssl": True,
                    "ssl_cert_reqs": "required",
                    "ssl_check_hostname": True,
                    "ssl_ca_data": auth.ca_pem,
                }
            to_sentinels = {
                **timeouts,
                **over_tls,
                "username": auth.sentinel_username,
                "password": auth.sentinel_password,
            }
            sentinel = Sentinel(  # type: ignore[no-untyped-call]
                list(auth.sentinels), sentinel_kwargs=to_sentinels, **timeouts
            )
            client: redis.Redis = sentinel.master_for(  # type: ignore[no-untyped-call]
                master, username=auth.username, password=auth.password, **timeouts, **over_tls
            )
        else:
            client = redis.Redis.from_url(
                redis_url, username=auth.username, password=auth.password, **timeouts, **tls
            )
        report_keys = [contract.load_report_key(pod.name, cluster=auth.cluster) for pod in pods]
        try:
            try:
                values = client.mget(report_keys)
            except redis.exceptions.MovedError as moved:
                # A Redis Cluster seed that does not own the reports' slot names the node
                # that does (one slot: one redirect, then the same MGET there).
                client.close()
                scheme = redis_url.partition("://")[0]
                client = redis.Redis.from_url(
                    f"{scheme}://{moved.host}:{moved.port}",
                    username=auth.username,
                    password=auth.password,
                    **timeouts,
                    **tls,
                )
                values = client.mget(report_keys)
        except (redis.RedisError, OSError) as exc:
            logger.info("load reports unavailable from %s: %s", _redact(redis_url), exc)
            return Reading(unknown=f"Redis shard 0 unreachable: {exc}")
        finally:
            client.close()
            if sentinel is not None:
                for one in sentinel.sentinels:
                    one.close()
        return combine(pods, values, now)


def sentinel_master(url: str) -> str | None:
    """The master's name of a ``[name=]sentinel://<master>[/db]`` URL; None for others."""
    name, sep, rest = url.partition("=")
    if not sep or "://" in name:  # no "name=" prefix (the relay's rule, relay.config)
        rest = url
    scheme, sep, where = rest.partition("://")
    if scheme != "sentinel" or not sep:
        return None
    return where.partition("/")[0] or None


def _redact(url: str) -> str:
    """The URL without credentials, for logs."""
    scheme, sep, rest = url.partition("://")
    return f"{scheme}{sep}{rest.rpartition('@')[2]}"
