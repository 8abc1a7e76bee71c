"""The relay's children: ConfigMap, Deployment, Service, PodDisruptionBudget, JWT Secret.

Every relay setting travels as an environment variable named in ``relay.contract``. The
non-secret ones live in the ConfigMap (``envFrom``); the JWT key comes from a Secret. The pod
template carries a hash of the configuration, so a configuration change rolls the pods, and
nothing else (a replica change, a status write) does.
"""

import base64
import hashlib
import json
from typing import Any, Final

from gamecluster import names
from gamecluster.children import Manifest, Owner
from gamecluster.manifests.security import container_security_context, pod_security_context
from gamecluster.manifests.template import overlay
from gamecluster.spec import JWT_PUBLIC_KEY_KEY, JWT_SECRET_KEY, GameClusterSpec
from relay import contract

RELAY_UID: Final = 10001
PRE_STOP_SECONDS: Final = 5
"""Before SIGTERM: time for the endpoints to drop the pod, so no new client lands on it."""
GRACE_MARGIN_SECONDS: Final = 10
"""After the drain: time to close sockets and flush telemetry before SIGKILL."""


def config_data(
    spec: GameClusterSpec, owner: Owner, redis_urls: list[str], sentinels: list[str] | None = None
) -> dict[str, str]:
    """Environment of the relay pods, except secrets and per-pod values.

    ``sentinels``: with them, the URLs are ``<shard>=sentinel://<master>`` (no address and
    no secret: only the Sentinels' own addresses land in the ConfigMap)."""
    data = {
        contract.ENV_HOST: "0.0.0.0",
        contract.ENV_PORT: str(contract.HTTP_PORT),
        contract.ADMIN_PORT_ENV: str(contract.DEFAULT_ADMIN_PORT),
        contract.ENV_LOG_LEVEL: spec.log_level,
        contract.ENV_REDIS_URLS: ",".join(redis_urls),
        contract.ENV_MAX_MESSAGE_BYTES: str(spec.limits.max_message_bytes),
        contract.ENV_PUBLISH_RATE: str(spec.limits.publish_per_second),
        contract.ENV_MAX_CONNECTIONS: str(spec.limits.max_connections_per_replica),
        contract.ENV_DRAIN_SECONDS: str(spec.drain_seconds),
        contract.ENV_AUTH: "jwt",
        "OTEL_SERVICE_NAME": f"{owner.name}-relay",
        "OTEL_SDK_DISABLED": "false" if spec.tracing.enabled else "true",
        "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
        "OTEL_TRACES_SAMPLER_ARG": str(spec.tracing.sampling_ratio),
        "OTEL_RESOURCE_ATTRIBUTES": f"k8s.namespace.name={owner.namespace},"
        f"service.namespace={owner.namespace}",
    }
    if sentinels:
        data[contract.ENV_REDIS_SENTINELS] = ",".join(sentinels)
    if spec.redis.mode == "external" and spec.redis.external and spec.redis.external.cluster:
        data[contract.ENV_REDIS_CLUSTER] = "true"
    if spec.redis.ack_replicas:  # absent when 0: an upgrade of the operator rolls no pod
        data[contract.ENV_REDIS_ACK_REPLICAS] = str(spec.redis.ack_replicas)
    if spec.delivery.rooms:
        rooms = [
            {
                "match": room.match,
                "policy": room.policy,
                "historySize": room.history_size,
                "historyTTLSeconds": room.history_ttl_seconds,
                "presence": room.presence,
            }
            for room in spec.delivery.rooms
        ]
        data[contract.ENV_ROOMS] = json.dumps(rooms, separators=(",", ":"))
    if spec.auth.audience:
        data[contract.ENV_JWT_AUDIENCE] = spec.auth.audience
    if spec.auth.issuer:
        data[contract.ENV_JWT_ISSUER] = spec.auth.issuer
    if spec.tracing.enabled and spec.tracing.otlp_endpoint:
        data["OTEL_EXPORTER_OTLP_ENDPOINT"] = spec.tracing.otlp_endpoint
        data["OTEL_EXPORTER_OTLP_PROTOCOL"] = spec.tracing.protocol
    return data


def jwt_env(spec: GameClusterSpec, owner: Owner) -> list[dict[str, Any]]:
    """RELAY_JWT_SECRET or RELAY_JWT_PUBLIC_KEY from the named or the generated Secret."""
    secret = spec.auth.secret_name or owner.jwt_secret
    if spec.auth.algorithm == "RS256":
        env_name, key = contract.ENV_JWT_PUBLIC_KEY, JWT_PUBLIC_KEY_KEY
    else:
        env_name, key = contract.ENV_JWT_SECRET, JWT_SECRET_KEY
    return [{"name": env_name, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}}]


def config_hash(data: dict[str, str], secret_env: list[dict[str, Any]]) -> str:
    """A digest of everything a relay pod reads at start (secret values excluded)."""
    blob = json.dumps({"config": data, "secretEnv": secret_env}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def configmap(owner: Owner, data: dict[str, str]) -> Manifest:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": owner.metadata(owner.relay, names.COMPONENT_RELAY),
        "data": data,
    }


def jwt_secret(owner: Owner, value: str) -> Manifest:
    """The generated HS256 secret; ``value`` is read back from the cluster once it exists."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": owner.metadata(owner.jwt_secret, names.COMPONENT_RELAY),
        "type": "Opaque",
        "data": {JWT_SECRET_KEY: base64.b64encode(value.encode()).decode()},
    }


API_KEY_KEY: Final = "apiKey"
"""Key of the generated server API key in ``<name>-api``."""


def api_key_secret(owner: Owner, value: str) -> Manifest:
    """The server API key the operator switches the shard map with (RELAY_API_KEYS):
    generated once, then read back from the cluster, like the JWT secret."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": owner.metadata(owner.api_secret, names.COMPONENT_RELAY),
        "type": "Opaque",
        "data": {API_KEY_KEY: base64.b64encode(value.encode()).decode()},
    }


def api_key_env(owner: Owner) -> dict[str, Any]:
    return {
        "name": contract.ENV_API_KEYS,
        "valueFrom": {"secretKeyRef": {"name": owner.api_secret, "key": API_KEY_KEY}},
    }


def _from_pod_field(name: str, field_path: str) -> dict[str, Any]:
    """An environment variable the Downward API fills from the pod's own metadata."""
    return {"name": name, "valueFrom": {"fieldRef": {"fieldPath": field_path}}}


def deployment(
    spec: GameClusterSpec,
    owner: Owner,
    *,
    image: str,
    replicas: int,
    data: dict[str, str],
    api_key: bool = False,
) -> Manifest:
    """``api_key``: RELAY_API_KEYS from ``<name>-api`` (the operator's key for the server API)."""
    secret_env = jwt_env(spec, owner)
    if api_key:
        secret_env.append(api_key_env(owner))
    env: list[dict[str, Any]] = [
        _from_pod_field(contract.ENV_NODE_ID, "metadata.name"),
        # The names tracing gives spans as k8s.pod.name / k8s.namespace.name (relay.tracing).
        _from_pod_field(contract.ENV_POD_NAME, "metadata.name"),
        _from_pod_field(contract.ENV_POD_NAMESPACE, "metadata.namespace"),
        *secret_env,
    ]
    probe_port = "http"
    container: dict[str, Any] = {
        "name": "relay",
        "image": image,
        "imagePullPolicy": spec.image_pull_policy,
        "command": ["relay", "serve"],
        "ports": [
            {"name": "http", "containerPort": contract.HTTP_PORT, "protocol": "TCP"},
            {
                "name": contract.ADMIN_PORT_NAME,
                "containerPort": contract.DEFAULT_ADMIN_PORT,
                "protocol": "TCP",
            },
        ],
        "envFrom": [{"configMapRef": {"name": owner.relay}}],
        "env": env,
        "readinessProbe": {
            "httpGet": {"path": contract.READY_PATH, "port": probe_port},
            "periodSeconds": 5,
            "timeoutSeconds": 2,
            "failureThreshold": 2,
        },
        "livenessProbe": {
            "httpGet": {"path": contract.HEALTH_PATH, "port": probe_port},
            "initialDelaySeconds": 5,
            "periodSeconds": 10,
            "timeoutSeconds": 2,
            "failureThreshold": 3,
        },
        "lifecycle": {"preStop": {"exec": {"command": ["sleep", str(PRE_STOP_SECONDS)]}}},
        "resources": spec.resources.model_dump(),
        "securityContext": container_security_context(RELAY_UID),
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
    }
    template = {
        "metadata": {
            "labels": owner.labels(names.COMPONENT_RELAY),
            "annotations": {names.ANNOTATION_CONFIG_HASH: config_hash(data, secret_env)},
        },
        "spec": {
            "automountServiceAccountToken": False,
            "enableServiceLinks": False,
            "terminationGracePeriodSeconds": PRE_STOP_SECONDS
            + spec.drain_seconds
            + GRACE_MARGIN_SECONDS,
            "securityContext": pod_security_context(RELAY_UID),
            "containers": [container],
            "volumes": [{"name": "tmp", "emptyDir": {"medium": "Memory", "sizeLimit": "64Mi"}}],
        },
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": owner.metadata(owner.relay, names.COMPONENT_RELAY),
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": owner.selector(names.COMPONENT_RELAY)},
            # Surge first: a pod holding live sockets goes only once its replacement is ready.
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": 0},
            },
            "template": overlay(template, spec.template),
        },
    }


def service(spec: GameClusterSpec, owner: Owner) -> Manifest:
    metadata = owner.metadata(owner.service, names.COMPONENT_RELAY)
    if spec.service.annotations:
        metadata["annotations"] = dict(spec.service.annotations)
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata,
        "spec": {
            "type": spec.service.type,
            "selector": owner.selector(names.COMPONENT_RELAY),
            "ports": [
                {"name": "http", "port": spec.service.port, "targetPort": "http", "protocol": "TCP"}
            ],
        },
    }


def admin_service(owner: Owner) -> Manifest:
    """``<name>-admin``: /metrics and the server API, reachable only inside the cluster."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": owner.metadata(owner.admin_service, names.COMPONENT_RELAY),
        "spec": {
            "type": "ClusterIP",
            "selector": owner.selector(names.COMPONENT_RELAY),
            "ports": [
                {
                    "name": contract.ADMIN_PORT_NAME,
                    "port": contract.DEFAULT_ADMIN_PORT,
                    "targetPort": contract.ADMIN_PORT_NAME,
                    "protocol": "TCP",
                }
            ],
        },
    }


def disruption_budget(owner: Owner) -> Manifest:
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": owner.metadata(owner.relay, names.COMPONENT_RELAY),
        "spec": {
            "maxUnavailable": 1,
            "selector": {"matchLabels": owner.selector(names.COMPONENT_RELAY)},
        },
    }
