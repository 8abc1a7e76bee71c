"""Managed Redis: one StatefulSet pod per shard, addressed through a headless Service.

Shards are independent (no replication, no Redis Cluster): the relay spreads rooms over the
shard list by rendezvous hashing, so the pods start in parallel. AOF is on so a restarted pod
keeps its room streams; with persistence off the AOF lives in an emptyDir and survives
container restarts but not pod rescheduling.

Shrinking the shard count deletes the highest-numbered pods and (whenScaled: Delete) their
claims: rooms that hashed to them move to other shards and start a new epoch, and clients are
told ``recovered: false`` rather than silently missing events. Deleting the GameCluster keeps
the claims (whenDeleted: Retain), so an accidental delete loses no data.
"""

from typing import Any, Final

from gamecluster import names
from gamecluster.children import REDIS_PORT, Manifest, Owner
from gamecluster.manifests.security import container_security_context, pod_security_context
from gamecluster.manifests.template import overlay
from gamecluster.spec import GameClusterSpec

REDIS_UID: Final = 999
"""The redis user of the official image (Debian and Alpine variants)."""


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


def statefulset(spec: GameClusterSpec, owner: Owner) -> Manifest:
    redis = spec.redis
    container: dict[str, Any] = {
        "name": "redis",
        "image": redis.image,
        "imagePullPolicy": "IfNotPresent",
        "args": [
            "redis-server",
            "--port",
            str(REDIS_PORT),
            "--dir",
            "/data",
            "--appendonly",
            "yes",
            "--appendfsync",
            "everysec",
            "--save",
            "",
            "--protected-mode",
            "no",
        ],
        "ports": [{"name": "redis", "containerPort": REDIS_PORT}],
        "readinessProbe": {
            "exec": {"command": ["redis-cli", "-p", str(REDIS_PORT), "ping"]},
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
        "volumeMounts": [{"name": "data", "mountPath": "/data"}],
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
    sts_spec["template"] = overlay(sts_spec["template"], redis.template)
    return {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": owner.metadata(owner.redis, names.COMPONENT_REDIS),
        "spec": sts_spec,
    }
