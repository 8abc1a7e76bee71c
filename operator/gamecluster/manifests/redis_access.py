"""Who may reach a GameCluster's Redis, and with what: relay credentials, NetworkPolicy, PDB.

Relays get Redis credentials only from Secrets: the password by ``secretKeyRef`` (never via
the ConfigMap, which the namespace ``view`` role can read), a CA bundle as a mounted file.
Managed mode: the relay ACL user and the generated ``<name>-redis`` Secret (and the CA of
``spec.redis.tls``). External mode: whatever ``spec.redis.external.secretRef`` names.

The additions are attached to the relay Deployment built by ``manifests.relay`` (rather than
built into it), so the relay's own manifest code stays about the relay.
"""

from typing import Any, Final

from gamecluster import names
from gamecluster.children import REDIS_PORT, Manifest, Owner
from gamecluster.manifests import redis_tls, secrets
from gamecluster.spec import GameClusterSpec
from relay import contract

CA_VOLUME: Final = "redis-ca"
CA_DIR: Final = "/etc/gamecluster/redis-ca"
CA_FILE: Final = "ca.crt"
NAMESPACE_LABEL: Final = "kubernetes.io/metadata.name"
"""Set by the API server on every namespace (Kubernetes 1.22+)."""
ANNOTATION_REDIS_CREDENTIALS: Final = f"{names.GROUP}/redis-credentials"
"""On the relay and Redis pod templates: changes when a managed Redis password changes
(a digest of the ACL file, which holds only digests of the passwords), rolling both."""


def _secret_env(env: str, secret: str, key: str) -> dict[str, Any]:
    return {"name": env, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}}


def relay_env(spec: GameClusterSpec, owner: Owner) -> list[dict[str, Any]]:
    """RELAY_REDIS_USERNAME / _PASSWORD / _CA_FILE, and the Sentinels' login and TLS, for
    the relay container."""
    if spec.redis.mode == "managed":
        env = [
            {"name": contract.ENV_REDIS_USERNAME, "value": contract.RELAY_REDIS_USER},
            _secret_env(contract.ENV_REDIS_PASSWORD, owner.redis_secret, secrets.PASSWORD_KEY),
            *([_ca_file_env()] if spec.redis.tls is not None else []),
        ]
        if spec.redis.replicas > 0:
            # The Sentinels' own password; optional, as for the Sentinels (manifests.redis_ha).
            sentinel = _secret_env(
                contract.ENV_REDIS_SENTINEL_PASSWORD,
                owner.redis_secret,
                secrets.SENTINEL_AUTH_PASSWORD_KEY,
            )
            sentinel["valueFrom"]["secretKeyRef"]["optional"] = True
            env.append(sentinel)
            if spec.redis.tls is not None:
                # The Sentinels and the servers they name serve TLS only (manifests.redis_ha).
                env.append({"name": contract.ENV_REDIS_SENTINEL_TLS, "value": "true"})
        return env
    external = spec.redis.external
    env = []
    if external and external.sentinel_tls:
        env.append({"name": contract.ENV_REDIS_SENTINEL_TLS, "value": "true"})
    ref = external.secret_ref if external else None
    if ref is None:
        return env
    if ref.username_key:
        env.append(_secret_env(contract.ENV_REDIS_USERNAME, ref.name, ref.username_key))
    if ref.password_key:
        env.append(_secret_env(contract.ENV_REDIS_PASSWORD, ref.name, ref.password_key))
    if ref.ca_key:
        env.append(_ca_file_env())
    if ref.sentinel_username_key:
        env.append(
            _secret_env(contract.ENV_REDIS_SENTINEL_USERNAME, ref.name, ref.sentinel_username_key)
        )
    if ref.sentinel_password_key:
        env.append(
            _secret_env(contract.ENV_REDIS_SENTINEL_PASSWORD, ref.name, ref.sentinel_password_key)
        )
    return env


def _ca_file_env() -> dict[str, Any]:
    return {"name": contract.ENV_REDIS_CA_FILE, "value": f"{CA_DIR}/{CA_FILE}"}


def _ca_source(spec: GameClusterSpec) -> tuple[str, str] | None:
    """The Secret and key of the CA that verifies the Redis servers, if any."""
    if spec.redis.mode == "managed":
        tls = spec.redis.tls
        return None if tls is None else (tls.secret_name, redis_tls.CA_KEY)
    ref = spec.redis.external.secret_ref if spec.redis.external else None
    return None if ref is None or ref.ca_key is None else (ref.name, ref.ca_key)


def attach_to_relay(
    deployment: Manifest, spec: GameClusterSpec, owner: Owner, credentials_digest: str | None
) -> Manifest:
    """The relay Deployment with Redis credentials (env), CA (volume) and the digest."""
    template = deployment["spec"]["template"]
    container = template["spec"]["containers"][0]
    container["env"] = [*container.get("env", []), *relay_env(spec, owner)]
    ca = _ca_source(spec)
    if ca is not None:
        secret_name, ca_key = ca
        template["spec"]["volumes"] = [
            *template["spec"].get("volumes", []),
            {
                "name": CA_VOLUME,
                "secret": {"secretName": secret_name, "items": [{"key": ca_key, "path": CA_FILE}]},
            },
        ]
        container["volumeMounts"] = [
            *container.get("volumeMounts", []),
            {"name": CA_VOLUME, "mountPath": CA_DIR, "readOnly": True},
        ]
    if credentials_digest is not None:
        annotations = template.setdefault("metadata", {}).setdefault("annotations", {})
        annotations[ANNOTATION_REDIS_CREDENTIALS] = credentials_digest
    return deployment


def network_policy(
    owner: Owner, operator_namespace: str | None, *, replicas: bool = False
) -> Manifest:
    """Only this GameCluster's relay pods, and the operator's namespace (load reports), may
    connect to its Redis; everything else in the cluster is refused at the network.
    With replicas, also its Redis pods (replication) and its Sentinels (monitoring)."""
    components = [names.COMPONENT_RELAY]
    if replicas:
        components += [names.COMPONENT_REDIS, names.COMPONENT_SENTINEL]
    peers: list[dict[str, Any]] = [
        {"podSelector": {"matchLabels": owner.selector(component)}} for component in components
    ]
    if operator_namespace:  # unknown (an operator run outside the cluster): no pod peer
        peers.append({"namespaceSelector": {"matchLabels": {NAMESPACE_LABEL: operator_namespace}}})
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": owner.metadata(owner.redis, names.COMPONENT_REDIS),
        "spec": {
            "podSelector": {"matchLabels": owner.selector(names.COMPONENT_REDIS)},
            "policyTypes": ["Ingress"],
            "ingress": [
                {
                    "from": peers,
                    "ports": [{"protocol": "TCP", "port": REDIS_PORT}],
                }
            ],
        },
    }


def disruption_budget(owner: Owner) -> Manifest:
    """One Redis pod down at a time for voluntary disruptions (a node drain): with one pod
    per shard, a drain takes at most one shard's rooms away (``unavailable``) while its pod
    moves, and with persistence on it comes back with its history."""
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": owner.metadata(owner.redis, names.COMPONENT_REDIS),
        "spec": {
            "maxUnavailable": 1,
            "selector": {"matchLabels": owner.selector(names.COMPONENT_REDIS)},
        },
    }
