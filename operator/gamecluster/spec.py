"""The GameCluster spec as typed, defaulted, validated Python objects.

The CRD's schema defaults and validates on a real API server, so this is a second line: it
gives the operator typed access, applies the same defaults when the API server did not (an
emulator, an older object read back), and reports a spec that slipped past validation as a
reason string instead of a crash. tests/unit/test_spec.py proves the defaults equal the CRD's.
"""

import re
from collections.abc import Mapping
from typing import Annotated, Any, Final, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    model_validator,
)
from pydantic.alias_generators import to_camel

from relay import contract

# The same patterns as the CRD's.
_QUANTITY = (
    r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))"
    r"(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)
Quantity = int | Annotated[str, StringConstraints(pattern=_QUANTITY)]
_CREDENTIALS_IN_URL = re.compile(r"^(rediss?|sentinel)://[^/]*@")
RedisURL = Annotated[str, StringConstraints(pattern=r"^(rediss?|sentinel)://", max_length=2048)]
SentinelAddress = Annotated[
    str, StringConstraints(pattern=r"^[A-Za-z0-9.-]+:[0-9]{1,5}$", max_length=260)
]
"""``host:port`` of one Sentinel (RELAY_REDIS_SENTINELS takes a comma-separated list)."""
ObjectName = Annotated[
    str, StringConstraints(pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$", max_length=253)
]


class _Model(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, frozen=True, extra="ignore"
    )


class Resources(_Model):
    requests: dict[str, Quantity] = Field(default_factory=dict)
    limits: dict[str, Quantity] = Field(default_factory=dict)


class ScalingPolicy(_Model):
    """At most ``value`` pods (type Pods) or percent of pods (type Percent) per period."""

    type: Literal["Pods", "Percent"]
    value: int = Field(ge=1, le=1000)
    period_seconds: int = Field(ge=1, le=1800)


class ScalingRules(_Model):
    policies: tuple[ScalingPolicy, ...] = Field(default=(), max_length=10)
    select_policy: Literal["Max", "Min", "Disabled"] = "Max"
    """Max: the policy allowing the biggest change wins; Min: the smallest; Disabled: none."""


# The defaults: up as fast as the HPA's (double or +4 pods per 15 s), down gently, so one low
# sample after a busy hour removes a few pods per minute, not most of them at once.
DEFAULT_SCALE_UP: Final = ScalingRules(
    policies=(
        ScalingPolicy(type="Percent", value=100, period_seconds=15),
        ScalingPolicy(type="Pods", value=4, period_seconds=15),
    )
)
DEFAULT_SCALE_DOWN: Final = ScalingRules(
    policies=(
        ScalingPolicy(type="Percent", value=20, period_seconds=60),
        ScalingPolicy(type="Pods", value=1, period_seconds=60),
    )
)


class Behavior(_Model):
    scale_up: ScalingRules = DEFAULT_SCALE_UP
    scale_down: ScalingRules = DEFAULT_SCALE_DOWN

    @model_validator(mode="after")
    def _default_policies(self) -> "Behavior":
        """A direction given without policies (only a selectPolicy) keeps the default ones."""
        up, down = self.scale_up, self.scale_down
        if not up.policies:
            up = ScalingRules(policies=DEFAULT_SCALE_UP.policies, select_policy=up.select_policy)
        if not down.policies:
            down = ScalingRules(
                policies=DEFAULT_SCALE_DOWN.policies, select_policy=down.select_policy
            )
        if (up, down) == (self.scale_up, self.scale_down):
            return self
        return Behavior(scale_up=up, scale_down=down)


class Autoscaling(_Model):
    enabled: bool = False
    min_replicas: int = Field(default=1, ge=1, le=1000)
    max_replicas: int = Field(default=10, ge=1, le=1000)
    target_connections_per_replica: int = Field(default=5000, ge=1, le=1_000_000)
    scale_down_delay_seconds: int = Field(default=300, ge=0, le=86400)
    """The scale-down stabilisation window: the highest recommendation in it is used."""
    behavior: Behavior = Behavior()


ContainerName = Literal["relay", "redis"]


class ContainerOverlay(_Model):
    name: ContainerName
    resources: Resources | None = None


class TemplateMetadata(_Model):
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)


class TemplatePodSpec(_Model):
    """The pod spec fields a user may set; everything else stays the operator's.

    Scheduling structures (tolerations, affinity, spread constraints) are kept as the API's
    own JSON: the CRD checks their shape loosely and the API server checks them exactly when
    the Deployment is applied (a rejection shows as Stalled naming the child).
    """

    image_pull_secrets: tuple[dict[str, str], ...] = Field(default=(), max_length=16)
    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: tuple[dict[str, Any], ...] = Field(default=(), max_length=64)
    affinity: dict[str, Any] | None = None
    topology_spread_constraints: tuple[dict[str, Any], ...] = Field(default=(), max_length=16)
    priority_class_name: str | None = None
    service_account_name: str | None = None
    containers: tuple[ContainerOverlay, ...] = Field(default=(), max_length=4)


class PodTemplate(_Model):
    """``spec.template`` / ``spec.redis.template``: an overlay on the generated pod template."""

    metadata: TemplateMetadata = TemplateMetadata()
    spec: TemplatePodSpec = TemplatePodSpec()


class Persistence(_Model):
    enabled: bool = True
    """On by default: rooms are durable by default, so their history survives a Redis pod
    replacement (an edit, a node drain), not only a container restart."""
    size: Quantity = "1Gi"
    storage_class_name: str | None = None


class ExternalRedisSecret(_Model):
    """A Secret holding the external Redis's credentials and CA (any key may be absent)."""

    name: ObjectName
    username_key: str | None = Field(default=None, max_length=253)
    """Key of the ACL user name (absent: the `default` user)."""
    password_key: str | None = Field(default="password", max_length=253)
    ca_key: str | None = Field(default=None, max_length=253)
    """Key of a PEM CA bundle verifying `rediss://` servers (cert-manager: ``ca.crt``)."""
    sentinel_username_key: str | None = Field(default=None, max_length=253)
    """Key of the user the Sentinels know relays and the operator as (a Sentinel ACL user,
    Redis 6.2+); absent: the Sentinels' ``default`` user."""
    sentinel_password_key: str | None = Field(default=None, max_length=253)
    """Key of the Sentinels' own password (their ``requirepass``, or that user's); absent:
    the Sentinels are asked without one."""


class ExternalRedis(_Model):
    urls: tuple[RedisURL, ...] = Field(default=(), max_length=64)
    sentinels: tuple[SentinelAddress, ...] = Field(default=(), max_length=16)
    """The Sentinels of ``sentinel://<master>[/db]`` URLs (``host:port`` each)."""
    cluster: bool = False
    """The URLs are seed nodes of one Redis Cluster (RELAY_REDIS_CLUSTER): rooms go where
    the cluster places their hash slot; no Sentinel, no shard names."""
    sentinel_tls: bool = Field(default=False, alias="sentinelTLS")
    """TLS to the Sentinels and to the masters they name (RELAY_REDIS_SENTINEL_TLS),
    verified against ``secretRef.caKey`` (else the system CAs) with the hostname checked:
    the Sentinels must hand out names their certificates carry (``announce-hostnames``)."""
    secret_ref: ExternalRedisSecret | None = None


MaxMemoryPolicy = Literal[
    "noeviction",
    "volatile-lru",
    "volatile-lfu",
    "volatile-ttl",
    "volatile-random",
    "allkeys-lru",
    "allkeys-lfu",
    "allkeys-random",
]


class RedisTLS(_Model):
    """Managed Redis over TLS: a Secret in the kubernetes.io/tls shape, as cert-manager
    writes it (``tls.crt``, ``tls.key``, ``ca.crt``)."""

    secret_name: ObjectName


MAX_REDIS_REPLICAS: Final = 5


class Redis(_Model):
    mode: Literal["managed", "external"] = "managed"
    shards: int = Field(default=1, ge=1, le=64)
    replicas: int = Field(default=0, ge=0, le=MAX_REDIS_REPLICAS)
    """Managed: replicas per shard, with an operator-run Sentinel (0: one pod per shard, no
    Sentinel). Switching between 0 and more is refused (a CEL transition rule)."""
    ack_replicas: int = Field(default=0, ge=0, le=MAX_REDIS_REPLICAS)
    """Replicas that must have a durable event before its publish is acked (Redis WAIT,
    RELAY_REDIS_ACK_REPLICAS); managed: at most ``replicas``. 0: acked by the master alone."""
    image: str = "redis:7.4.2-alpine"
    resources: Resources = Resources(
        requests={"cpu": "50m", "memory": "64Mi"}, limits={"memory": "256Mi"}
    )
    persistence: Persistence = Persistence()
    external: ExternalRedis | None = None
    max_memory: Quantity | None = None
    """Redis ``maxmemory``; absent: MAX_MEMORY_SHARE of the container's memory limit."""
    max_memory_policy: MaxMemoryPolicy = "noeviction"
    append_fsync: Literal["everysec", "always"] = "everysec"
    """Managed: Redis ``appendfsync``. ``everysec`` loses nothing acked when Redis crashes,
    up to about a second of it when the node does; ``always`` loses nothing there either,
    at an fsync per write (docs/operations.md, bench/append_fsync.py)."""
    tls: RedisTLS | None = None
    """Managed mode, without replicas: the shards serve TLS only (external mode: rediss://
    URLs and secretRef.caKey instead)."""
    template: PodTemplate = PodTemplate()


class Room(_Model):
    match: str = Field(min_length=1, max_length=256)
    policy: Literal["durable", "volatile"] = "durable"
    history_size: int = Field(default=1000, ge=1, le=1_000_000)
    history_ttl_seconds: int = Field(default=3600, ge=1, le=2_592_000, alias="historyTTLSeconds")
    presence: bool = False


class Delivery(_Model):
    rooms: tuple[Room, ...] = Field(default=(), max_length=100)


class Limits(_Model):
    max_message_bytes: int = Field(
        default=65536, ge=contract.MIN_MAX_MESSAGE_BYTES, le=contract.MAX_MAX_MESSAGE_BYTES
    )
    publish_per_second: int = Field(default=50, ge=1, le=100_000)
    max_connections_per_replica: int = Field(default=20000, ge=1, le=1_000_000)


class Auth(_Model):
    """JWT on connect, always: no switch turns it off (an ``enabled`` key is ignored)."""

    secret_name: ObjectName | None = None
    algorithm: Literal["HS256", "RS256"] = "HS256"
    audience: str | None = None
    issuer: str | None = None


class Tracing(_Model):
    enabled: bool = False
    otlp_endpoint: str | None = None
    protocol: Literal["grpc", "http/protobuf"] = "grpc"
    sampling_ratio: float = Field(default=0.1, ge=0, le=1)


class Service(_Model):
    type: Literal["ClusterIP", "NodePort", "LoadBalancer"] = "ClusterIP"
    port: int = Field(default=80, ge=1, le=65535)
    annotations: dict[str, str] = Field(default_factory=dict)


class GameClusterSpec(_Model):
    replicas: int = Field(default=2, ge=0, le=1000)
    image: str | None = None
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = "IfNotPresent"
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    resources: Resources = Resources(
        requests={"cpu": "100m", "memory": "128Mi"}, limits={"memory": "512Mi"}
    )
    autoscaling: Autoscaling = Autoscaling()
    redis: Redis = Redis()
    delivery: Delivery = Delivery()
    limits: Limits = Limits()
    auth: Auth = Auth()
    tracing: Tracing = Tracing()
    service: Service = Service()
    drain_seconds: int = Field(default=30, ge=0, le=3600)
    template: PodTemplate = PodTemplate()


# Secret keys the relay's JWT settings are read from (see docs/operator.md).
JWT_SECRET_KEY = "secret"
JWT_PUBLIC_KEY_KEY = "publicKey"


class InvalidSpec(ValueError):
    """A spec the operator cannot honour; ``reason`` is a CamelCase condition reason."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


def parse(raw: Mapping[str, Any]) -> GameClusterSpec:
    """Parse and check a raw ``spec``; raise InvalidSpec naming what is wrong.

    Repeats the CRD's CEL rules, since a spec may have been stored before a rule existed or
    by a server that did not enforce it.
    """
    try:
        spec = GameClusterSpec.model_validate(dict(raw))
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise InvalidSpec("InvalidSpec", f"spec.{where}: {first['msg']}") from exc
    if spec.autoscaling.min_replicas > spec.autoscaling.max_replicas:
        raise InvalidSpec(
            "InvalidAutoscaling",
            "spec.autoscaling.minReplicas must not exceed spec.autoscaling.maxReplicas",
        )
    if spec.redis.mode == "external" and not (spec.redis.external and spec.redis.external.urls):
        raise InvalidSpec(
            "ExternalRedisWithoutURLs", "spec.redis.mode external needs redis.external.urls"
        )
    external = spec.redis.external
    if external and any(_CREDENTIALS_IN_URL.match(url) for url in external.urls):
        raise InvalidSpec(
            "CredentialsInURL",
            "spec.redis.external.urls: credentials inside a URL would be copied into a "
            "ConfigMap; put them in a Secret named by spec.redis.external.secretRef",
        )
    masters = bool(external and any(u.startswith("sentinel:") for u in external.urls))
    if external and masters != bool(external.sentinels):
        raise InvalidSpec(
            "SentinelsMismatch",
            "spec.redis.external: sentinel:// URLs need redis.external.sentinels, and "
            "sentinels need at least one sentinel:// URL",
        )
    if external and external.cluster and (masters or external.sentinels):
        raise InvalidSpec(
            "ClusterWithSentinels",
            "spec.redis.external.cluster: a Redis Cluster fails over by itself; its URLs "
            "are redis:// or rediss:// seed nodes, without sentinels",
        )
    if external and external.sentinel_tls and not masters:
        raise InvalidSpec(
            "SentinelTLSWithoutSentinels",
            "spec.redis.external.sentinelTLS is set but no URL uses sentinel://",
        )
    ref = external.secret_ref if external else None
    if ref and (ref.sentinel_username_key or ref.sentinel_password_key) and not masters:
        raise InvalidSpec(
            "SentinelKeysWithoutSentinels",
            "spec.redis.external.secretRef.sentinelUsernameKey/sentinelPasswordKey are set "
            "but no URL uses sentinel://",
        )
    tls_urls = any(u.startswith("rediss:") for u in external.urls) if external else False
    if external and ref and ref.ca_key and not (tls_urls or external.sentinel_tls):
        raise InvalidSpec(
            "CAWithoutTLS",
            "spec.redis.external.secretRef.caKey is set but no URL uses rediss:// (TLS) "
            "and sentinelTLS is off",
        )
    if spec.redis.tls is not None and spec.redis.mode != "managed":
        raise InvalidSpec(
            "TLSInExternalMode",
            "spec.redis.tls is for the managed Redis; an external one uses rediss:// URLs "
            "and spec.redis.external.secretRef.caKey",
        )
    if spec.auth.algorithm == "RS256" and not spec.auth.secret_name:
        raise InvalidSpec(
            "PublicKeySecretMissing", "spec.auth.algorithm RS256 needs spec.auth.secretName"
        )
    for where, template, container in (
        ("spec.template", spec.template, "relay"),
        ("spec.redis.template", spec.redis.template, "redis"),
    ):
        for overlay in template.spec.containers:
            if overlay.name != container:
                raise InvalidSpec(
                    "InvalidTemplate",
                    f"{where}.spec.containers: no container {overlay.name!r} "
                    f"(the pod has one container, {container!r})",
                )
    if spec.tracing.enabled and not spec.tracing.otlp_endpoint:
        raise InvalidSpec(
            "TracingWithoutEndpoint", "spec.tracing.enabled needs tracing.otlpEndpoint"
        )
    redis = spec.redis
    if redis.mode == "managed" and redis.ack_replicas > redis.replicas:
        raise InvalidSpec(
            "AckReplicasOverReplicas",
            f"spec.redis.ackReplicas ({redis.ack_replicas}) exceeds spec.redis.replicas "
            f"({redis.replicas}): no durable publish could be acked",
        )
    return spec
