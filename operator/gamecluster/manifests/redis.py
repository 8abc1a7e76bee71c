"""Managed Redis: one StatefulSet pod per shard, addressed through a headless Service.

Without ``redis.replicas`` (with them: manifests.redis_ha, whose shard sets reuse this pod).
Shards are independent (no Redis Cluster): the relay spreads rooms over the
shard list by rendezvous hashing, so the pods start in parallel. AOF is on so a restarted pod
keeps its room streams; persistence is on by default (a PVC per shard), since with it off
the AOF lives in an emptyDir and survives container restarts but not pod rescheduling.

Access: ``--aclfile`` from the ACL Secret (manifests.secrets: default user off, the relay's
and the operator's users), protected mode on, ``maxmemory`` bounded with ``noeviction`` by
default (docs/operations.md says why). The readiness probe logs in as the operator's user.

Shrinking the shard count deletes the highest-numbered pods and (whenScaled: Delete) their
claims: rooms that hashed to them move to other shards and start a new epoch, and clients are
told ``recovered: false`` rather than silently missing events. Deleting the GameCluster keeps
the claims (whenDeleted: Retain), so an accidental delete loses no data.
"""

from typing import Any, Final

from gamecluster import names
from gamecluster.children import REDIS_PORT, Manifest, Owner
from gamecluster.manifests import redis_access, redis_tls, secrets
from gamecluster.manifests.security import container_security_context, pod_security_context
from gamecluster.manifests.template import overlay
from gamecluster.spec import GameClusterSpec
from gamecluster.units import quantity_bytes
from relay import contract

REDIS_UID: Final = 999
"""The redis user of the official image (Debian and Alpine variants)."""
ACL_DIR: Final = "/etc/gamecluster/redis-acl"
"""A directory no Redis image owns: Debian's redis-server package makes /etc/redis mode 2770
for its own redis user, so a pod running as REDIS_UID could not reach a file mounted under it
(found on the real-pod tier: "Error loading ACLs ... Permission denied", a crash loop)."""
MAX_MEMORY_SHARE: Final = 0.75
"""Default maxmemory as a share of the container's memory limit: the rest is for client
output buffers (Pub/Sub), the allocator's overhead and the AOF rewrite's copy-on-write."""


def max_memory_bytes(spec: GameClusterSpec) -> int | None:
    """spec.redis.maxMemory, else MAX_MEMORY_SHARE of the memory limit (or request)."""
    redis = spec.redis
    if redis.max_memory is not None:
        return quantity_bytes(redis.max_memory)
    sized = redis.resources.limits.get("memory") or redis.resources.requests.get("memory")
    return None if sized is None else int(quantity_bytes(sized) * MAX_MEMORY_SHARE)


def persistence_args(spec: GameClusterSpec) -> list[str]:
    """AOF on, with or without a volume (a container restart keeps it; a PVC keeps it across
    pod replacements); no RDB snapshots: the AOF alone is the history."""
    return ["--appendonly", "yes", "--appendfsync", spec.redis.append_fsync, "--save", ""]


def memory_args(spec: GameClusterSpec) -> list[str]:
    limit = max_memory_bytes(spec)
    bound = [] if limit is None else ["--maxmemory", str(limit)]
    return [*bound, "--maxmemory-policy", spec.redis.max_memory_policy]


def headless_service(spec: GameClusterSpec, owner: Owner) -> Manifest:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": owner.metadata(owner.redis, names.COMPONENT_REDIS),
        "spec": {
            "clusterIP": "None",
            # Pod DNS names exist while a shard is not ready yet; the relay reconnects on its own.
            "publishNotReadyAddresses": True,
            "selector": owner.selector(names.COMPONENT_REDIS),
            "ports": [{"name": "redis", "port": REDIS_PORT, "targetPort": "redis"}],
        },
    }


def statefulset(
    spec: GameClusterSpec,
    owner: Owner,
    credentials_digest: str | None = None,
    tls_digest: str | None = None,
) -> Manifest:
    """``tls_digest``: manifests.redis_tls.certificate_digest of spec.redis.tls's Secret."""
    redis = spec.redis
    tls = redis.tls is not None
    listen = redis_tls.server_args(REDIS_PORT) if tls else ["--port", str(REDIS_PORT)]
    cli_tls = f" {redis_tls.cli_flags()}" if tls else ""
    container: dict[str, Any] = {
        "name": "redis",
        "image": redis.image,
        "imagePullPolicy": "IfNotPresent",
        "args": [
            "redis-server",
            *listen,
            "--dir",
            "/data",
            *persistence_args(spec),
            # Default user off, the relay's and the operator's users (manifests.secrets).
            "--aclfile",
            f"{ACL_DIR}/{secrets.ACL_FILE_KEY}",
            "--protected-mode",
            "yes",
            *memory_args(spec),
        ],
        "env": [
            {
                # redis-cli reads the password from here, not from its command line.
                "name": "REDISCLI_AUTH",
                "valueFrom": {
                    "secretKeyRef": {
                        "name": owner.redis_secret,
                        "key": secrets.OPERATOR_PASSWORD_KEY,
                    }
                },
            }
        ],
        "ports": [{"name": "redis", "containerPort": REDIS_PORT}],
        "readinessProbe": {
            # redis-cli exits 0 on an error reply (NOAUTH, LOADING): look for the PONG.
            "exec": {
                "command": [
                    "sh",
                    "-c",
                    f"redis-cli{cli_tls} -p {REDIS_PORT} --user {contract.OPERATOR_REDIS_USER}"
                    " ping"
                    " | grep -q PONG",
                ]
            },
            "periodSeconds": 5,
            "timeoutSeconds": 2,
        },
        "livenessProbe": {
            "tcpSocket": {"port": "redis"},
            "initialDelaySeconds": 5,
            "periodSeconds": 10,
        },
        "resources": redis.resources.model_dump(),
        "securityContext": container_security_context(REDIS_UID),
        "volumeMounts": [
            {"name": "data", "mountPath": "/data"},
            {"name": "acl", "mountPath": ACL_DIR, "readOnly": True},
        ],
    }
    pod_spec: dict[str, Any] = {
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": pod_security_context(REDIS_UID),
        "containers": [container],
    }
    sts_spec: dict[str, Any] = {
        "replicas": redis.shards,
        "serviceName": owner.redis,
        "podManagementPolicy": "Parallel",
        "selector": {"matchLabels": owner.selector(names.COMPONENT_REDIS)},
        "persistentVolumeClaimRetentionPolicy": {"whenScaled": "Delete", "whenDeleted": "Retain"},
        "template": {
            "metadata": {"labels": owner.labels(names.COMPONENT_REDIS)},
            "spec": pod_spec,
        },
    }
    if redis.persistence.enabled:
        claim_spec: dict[str, Any] = {
            "accessModes": ["ReadWriteOnce"],
            "resources": {"requests": {"storage": redis.persistence.size}},
        }
        if redis.persistence.storage_class_name:
            claim_spec["storageClassName"] = redis.persistence.storage_class_name
        sts_spec["volumeClaimTemplates"] = [
            {
                "apiVersion": "v1",
                "kind": "PersistentVolumeClaim",
                "metadata": {"name": "data", "labels": owner.labels(names.COMPONENT_REDIS)},
                "spec": claim_spec,
            }
        ]
    else:
        pod_spec["volumes"] = [{"name": "data", "emptyDir": {}}]
    acl_volume = {"secretName": owner.redis_acl, "defaultMode": 0o440}
    pod_spec["volumes"] = [*pod_spec.get("volumes", []), {"name": "acl", "secret": acl_volume}]
    if tls:
        pod_spec["volumes"].append(redis_tls.volume(spec))
        container["volumeMounts"].append(redis_tls.mount())
    annotations = {}
    if credentials_digest is not None:
        annotations[redis_access.ANNOTATION_REDIS_CREDENTIALS] = credentials_digest
    if tls and tls_digest is not None:
        annotations[redis_tls.ANNOTATION] = tls_digest
    if annotations:
        sts_spec["template"]["metadata"]["annotations"] = annotations
    sts_spec["template"] = overlay(sts_spec["template"], redis.template)
    return {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": owner.metadata(owner.redis, names.COMPONENT_REDIS),
        "spec": sts_spec,
    }
