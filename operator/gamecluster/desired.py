"""Desired state: the children one GameCluster should have, as a pure function.

``desired(spec, meta, inputs)`` does no I/O and reads no clock, so the whole shape of what
the operator deploys is unit-tested without a cluster. The few inputs that come from the
outside world (the operator's own image, the autoscaler's decision, the value of an already
generated JWT secret) are passed in explicitly as ``Inputs``.
"""

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from gamecluster.children import Manifest, Owner
from gamecluster.manifests import redis as redis_manifests
from gamecluster.manifests import redis_access, redis_ha, redis_tls, secrets
from gamecluster.manifests import relay as relay_manifests
from gamecluster.manifests.secrets import RedisPasswords
from gamecluster.shards import ShardState
from gamecluster.spec import GameClusterSpec


@dataclass(frozen=True)
class Inputs:
    relay_image: str
    """Used when spec.image is absent: the operator's own image (GAMECLUSTER_RELAY_IMAGE)."""
    autoscaled_replicas: int | None = None
    """The autoscaler's last decision; used instead of spec.replicas while autoscaling is on."""
    jwt_secret: str | None = None
    """Value for the generated JWT Secret: the stored one if it exists, else a fresh one."""
    redis_passwords: RedisPasswords | None = None
    """Managed Redis: the stored passwords (``<name>-redis``), else fresh ones."""
    redis_secret_exists: bool = False
    """Whether ``<name>-redis`` exists: then it is never applied (a user may have rotated it)."""
    operator_namespace: str | None = None
    """Where the operator runs: the Redis NetworkPolicy admits its load-report reads."""
    redis_tls: Mapping[str, str] | None = None
    """spec.redis.tls's Secret by key: its digest rolls the shards on a renewal."""
    api_key: str | None = None
    """Value for the generated server API key Secret (``<name>-api``), which the operator
    uses to switch the shard map: the stored one if it exists, else a fresh one."""
    shards: ShardState | None = None
    """Managed Redis: the shard change in progress (``gamecluster.shards``); None: as
    spec.redis.shards says (no change in flight)."""


def relay_replicas(spec: GameClusterSpec, autoscaled: int | None) -> int:
    """spec.replicas, or while autoscaling the decision clamped to the current bounds."""
    scaling = spec.autoscaling
    if not scaling.enabled:
        return spec.replicas
    wanted = scaling.min_replicas if autoscaled is None else autoscaled
    return max(scaling.min_replicas, min(scaling.max_replicas, wanted))


def redis_urls(spec: GameClusterSpec, owner: Owner, count: int | None = None) -> list[str]:
    """RELAY_REDIS_URLS; managed mode: the first ``count`` shards (default spec.redis.shards)."""
    if spec.redis.mode == "external":
        return list(spec.redis.external.urls) if spec.redis.external else []
    count = spec.redis.shards if count is None else count
    if spec.redis.replicas > 0:
        return owner.sentinel_shard_urls(count)
    return owner.shard_urls(count, tls=spec.redis.tls is not None)


def shard_names(spec: GameClusterSpec, owner: Owner, count: int) -> list[str]:
    """Managed mode: the names rooms are placed by (the relay's default name of a URL,
    ``host:port``, or the Sentinel master's name), of the first ``count`` shards."""
    if spec.redis.replicas > 0:
        return [owner.shard_master(index) for index in range(count)]
    return [url.split("://", 1)[1] for url in owner.shard_urls(count)]


def sentinel_addresses(spec: GameClusterSpec, owner: Owner) -> list[str]:
    """RELAY_REDIS_SENTINELS: the operator's Sentinels when the managed Redis has replicas,
    an external Redis's own when its URLs name Sentinel masters."""
    if spec.redis.mode == "managed" and spec.redis.replicas > 0:
        return owner.sentinel_addresses()
    if spec.redis.mode == "external" and spec.redis.external is not None:
        return list(spec.redis.external.sentinels)
    return []


def generates_jwt_secret(spec: GameClusterSpec) -> bool:
    return not spec.auth.secret_name


def desired(spec: GameClusterSpec, meta: Mapping[str, Any], inputs: Inputs) -> list[Manifest]:
    """Every child manifest, in apply order (config before the pods that read it).

    Raises ValueError when the generated secret is needed and ``inputs.jwt_secret`` is None:
    the caller must read or generate it first.
    """
    owner = Owner.from_meta(meta)
    relay_shards = None
    if spec.redis.mode == "managed" and inputs.shards is not None:
        relay_shards = inputs.shards.relay_shards
        # Redis runs the union until no relay uses a removed shard (gamecluster.shards).
        spec = spec.model_copy(
            update={"redis": spec.redis.model_copy(update={"shards": inputs.shards.redis_shards})}
        )
    data = relay_manifests.config_data(
        spec, owner, redis_urls(spec, owner, relay_shards), sentinel_addresses(spec, owner)
    )
    manifests: list[Manifest] = [relay_manifests.configmap(owner, data)]
    if generates_jwt_secret(spec):
        if inputs.jwt_secret is None:
            raise ValueError("desired() needs inputs.jwt_secret when the JWT secret is generated")
        manifests.append(relay_manifests.jwt_secret(owner, inputs.jwt_secret))
    if inputs.api_key is not None:
        manifests.append(relay_manifests.api_key_secret(owner, inputs.api_key))
    digest = None
    if spec.redis.mode == "managed":
        passwords = inputs.redis_passwords
        if passwords is None:
            raise ValueError("desired() needs inputs.redis_passwords for a managed Redis")
        digest = passwords.digest()
        if not inputs.redis_secret_exists:
            manifests.append(secrets.password_secret(owner, passwords))
        manifests.append(secrets.acl_secret(owner, passwords))
        manifests.append(redis_manifests.headless_service(spec, owner))
        replicas = spec.redis.replicas > 0
        tls_digest = redis_tls.certificate_digest(inputs.redis_tls) if inputs.redis_tls else None
        if replicas:
            manifests.append(redis_ha.sentinel_service(owner))
            manifests.extend(
                redis_ha.shard_statefulset(spec, owner, shard, digest, tls_digest)
                for shard in range(spec.redis.shards)
            )
            manifests.append(redis_ha.sentinel_statefulset(spec, owner, digest, tls_digest))
        else:
            manifests.append(redis_manifests.statefulset(spec, owner, digest, tls_digest))
        manifests.append(
            redis_access.network_policy(owner, inputs.operator_namespace, replicas=replicas)
        )
        manifests.append(redis_access.disruption_budget(owner))
        if replicas:
            manifests.append(redis_ha.sentinel_network_policy(owner, inputs.operator_namespace))
            manifests.append(redis_ha.sentinel_disruption_budget(owner))
    deployment = relay_manifests.deployment(
        spec,
        owner,
        image=spec.image or inputs.relay_image,
        replicas=relay_replicas(spec, inputs.autoscaled_replicas),
        data=data,
        api_key=inputs.api_key is not None,
    )
    manifests.append(redis_access.attach_to_relay(deployment, spec, owner, digest))
    manifests.append(relay_manifests.service(spec, owner))
    manifests.append(relay_manifests.admin_service(owner))
    manifests.append(relay_manifests.disruption_budget(owner))
    return manifests
