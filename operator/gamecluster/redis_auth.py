"""Redis credentials as the reconciler and the load reader find them in Secrets.

Managed mode: ``<name>-redis`` (manifests.secrets) is read on every pass. Missing, fresh
passwords are generated and the Secret is created; present, it is never written again, so
a user's edit (a rotation) is what the next pass renders into the ACL file. External mode:
the Secret ``spec.redis.external.secretRef`` names must exist with the keys it names.
Values are never logged; a problem names the Secret and the key only.
"""

import base64
import binascii
from collections.abc import Callable, Mapping
from typing import Any

from gamecluster import desired
from gamecluster.children import ChildRef, Owner
from gamecluster.cluster import Cluster
from gamecluster.load import RedisAuth
from gamecluster.manifests import redis_tls, secrets
from gamecluster.manifests.secrets import RedisPasswords
from gamecluster.spec import GameClusterSpec
from gamecluster.status import Problem
from relay import contract

RETRYABLE_REASONS = frozenset(
    {
        "RedisSecretNotFound",
        "RedisSecretKeyMissing",
        "RedisSecretInvalid",
        "RedisTLSSecretNotFound",
        "RedisTLSSecretKeyMissing",
    }
)
"""Problems a Secret edit fixes without a spec change: the reconciler retries them."""


def _value(secret: Mapping[str, Any], key: str) -> str | None:
    """A Secret key's text (``data`` base64, or ``stringData``), None when absent or bad."""
    encoded = (secret.get("data") or {}).get(key)
    if encoded is None:
        plain = (secret.get("stringData") or {}).get(key)
        return plain if isinstance(plain, str) else None
    try:
        return base64.b64decode(encoded, validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None


def managed_passwords(
    cluster: Cluster, owner: Owner, new_password: Callable[[], str], *, replicas: bool = False
) -> tuple[RedisPasswords, bool] | Problem:
    """The stored passwords and True, or fresh ones and False when the Secret does not exist.

    ``replicas``: the replication and Sentinel users' passwords are needed (and generated),
    and the Sentinels' own password is generated; read back, that one is optional (a Secret
    made before it existed has none, and its Sentinels stay open until it is added)."""
    stored = cluster.get(ChildRef("v1", "Secret", owner.namespace, owner.redis_secret))
    if stored is None:
        if replicas:
            fresh = [new_password() for _ in range(5)]
            return RedisPasswords(fresh[0], fresh[1], None, *fresh[2:]), False
        return RedisPasswords(new_password(), new_password()), False
    keys = [secrets.PASSWORD_KEY, secrets.OPERATOR_PASSWORD_KEY]
    if replicas:
        keys += [secrets.REPLICATION_PASSWORD_KEY, secrets.SENTINEL_PASSWORD_KEY]
    values = {}
    for key in keys:
        value = _value(stored, key)
        if not value or not value.strip():
            return Problem(
                "RedisSecretInvalid",
                f"Secret {owner.redis_secret} needs a non-empty, base64 text key {key!r}",
            )
        values[key] = value.strip()
    previous = _value(stored, secrets.PREVIOUS_PASSWORD_KEY)
    sentinel_auth = _value(stored, secrets.SENTINEL_AUTH_PASSWORD_KEY) if replicas else None
    return (
        RedisPasswords(
            values[secrets.PASSWORD_KEY],
            values[secrets.OPERATOR_PASSWORD_KEY],
            previous.strip() if previous and previous.strip() else None,
            values.get(secrets.REPLICATION_PASSWORD_KEY),
            values.get(secrets.SENTINEL_PASSWORD_KEY),
            sentinel_auth.strip() if sentinel_auth and sentinel_auth.strip() else None,
        ),
        True,
    )


def check_external(cluster: Cluster, spec: GameClusterSpec, owner: Owner) -> Problem | None:
    """The external Secret exists and holds every key the spec names."""
    ref = spec.redis.external.secret_ref if spec.redis.external else None
    if spec.redis.mode != "external" or ref is None:
        return None
    secret = cluster.get(ChildRef("v1", "Secret", owner.namespace, ref.name))
    if secret is None:
        return Problem(
            "RedisSecretNotFound", f"Secret {ref.name} (spec.redis.external.secretRef) not found"
        )
    keys = (
        ref.username_key,
        ref.password_key,
        ref.ca_key,
        ref.sentinel_username_key,
        ref.sentinel_password_key,
    )
    for key in keys:
        if key is not None and _value(secret, key) is None:
            return Problem("RedisSecretKeyMissing", f"Secret {ref.name} has no key {key!r}")
    return None


def managed_tls(
    cluster: Cluster, spec: GameClusterSpec, owner: Owner
) -> dict[str, str] | Problem | None:
    """spec.redis.tls's Secret as text by key (tls.crt, tls.key, ca.crt); None without TLS.

    Read for the CA the load reader verifies with and for the digest that rolls the shards
    on a renewal; never logged, never copied into another object."""
    tls = spec.redis.tls
    if spec.redis.mode != "managed" or tls is None:
        return None
    secret = cluster.get(ChildRef("v1", "Secret", owner.namespace, tls.secret_name))
    if secret is None:
        return Problem(
            "RedisTLSSecretNotFound",
            f"Secret {tls.secret_name} (spec.redis.tls.secretName) not found",
        )
    values = {}
    for key in redis_tls.KEYS:
        value = _value(secret, key)
        if not value:
            return Problem(
                "RedisTLSSecretKeyMissing",
                f"Secret {tls.secret_name} has no key {key!r} (spec.redis.tls needs tls.crt, "
                "tls.key and ca.crt, as cert-manager writes them)",
            )
        values[key] = value
    return values


def _sentinels(spec: GameClusterSpec, owner: Owner) -> tuple[tuple[str, int], ...]:
    """The Sentinels as (host, port): the operator's when the managed Redis has replicas, an
    external Redis's own (``redis.external.sentinels``)."""
    pairs = (address.rpartition(":") for address in desired.sentinel_addresses(spec, owner))
    return tuple((host, int(port)) for host, _, port in pairs)


def operator_auth(cluster: Cluster, spec: GameClusterSpec, owner: Owner) -> RedisAuth | None:
    """How the load reader logs in to this GameCluster's Redis; None when it cannot yet."""
    if spec.redis.mode == "managed":
        stored = cluster.get(ChildRef("v1", "Secret", owner.namespace, owner.redis_secret))
        password = _value(stored, secrets.OPERATOR_PASSWORD_KEY) if stored else None
        if stored is None or password is None:
            return None
        tls = managed_tls(cluster, spec, owner)
        if isinstance(tls, Problem):
            return None
        sentinels = _sentinels(spec, owner)
        sentinel_password = (
            _value(stored, secrets.SENTINEL_AUTH_PASSWORD_KEY) if sentinels else None
        )
        return RedisAuth(
            contract.OPERATOR_REDIS_USER,
            password.strip(),
            None if tls is None else tls[redis_tls.CA_KEY],
            sentinels=sentinels,
            sentinel_password=sentinel_password.strip() if sentinel_password else None,
            sentinel_tls=bool(sentinels) and tls is not None,
        )
    external = spec.redis.external
    ref = external.secret_ref if external else None
    in_cluster = bool(external and external.cluster)
    sentinel_tls = bool(external and external.sentinel_tls)
    if ref is None:
        return RedisAuth(
            sentinels=_sentinels(spec, owner), sentinel_tls=sentinel_tls, cluster=in_cluster
        )
    secret = cluster.get(ChildRef("v1", "Secret", owner.namespace, ref.name))
    if secret is None:
        return None

    def key(name: str | None) -> str | None:
        return None if name is None else _value(secret, name)

    return RedisAuth(
        key(ref.username_key),
        key(ref.password_key),
        key(ref.ca_key),
        sentinels=_sentinels(spec, owner),
        sentinel_username=key(ref.sentinel_username_key),
        sentinel_password=key(ref.sentinel_password_key),
        sentinel_tls=sentinel_tls,
        cluster=in_cluster,
    )
