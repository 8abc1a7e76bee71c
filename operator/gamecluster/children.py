"""Who the children of one GameCluster are: names, labels, owner reference, shard URLs.

Shared by the manifest builders, the reconciler (which prunes children no longer desired) and
the status computation, so a child's name is decided in exactly one place.
"""

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from gamecluster import names

REDIS_PORT: Final = 6379
SENTINEL_PORT: Final = 26379
SENTINELS: Final = 3
"""Sentinel pods per GameCluster (with ``redis.replicas`` > 0)."""
SENTINEL_QUORUM: Final = 2
"""Of SENTINELS: a master is failed over when 2 agree it is down (and a majority, 2,
authorises the failover), so one Sentinel down or partitioned changes nothing."""
MAX_SHARDS: Final = 64

Manifest = dict[str, Any]


@dataclass(frozen=True)
class Owner:
    """The GameCluster a child belongs to."""

    name: str
    namespace: str
    uid: str

    @classmethod
    def from_meta(cls, meta: Mapping[str, Any]) -> "Owner":
        return cls(name=meta["name"], namespace=meta["namespace"], uid=meta.get("uid", ""))

    # Child names. The Service carries the GameCluster's own name, so the endpoint reads
    # ws://NAME.NAMESPACE.svc/ws.
    @property
    def service(self) -> str:
        return self.name

    @property
    def admin_service(self) -> str:
        """ClusterIP Service of the relay pods' admin port (metrics, server API)."""
        return f"{self.name}-admin"

    @property
    def relay(self) -> str:
        """Deployment, ConfigMap and PodDisruptionBudget of the relay pods."""
        return f"{self.name}-relay"

    @property
    def redis(self) -> str:
        """Redis StatefulSet and its headless Service."""
        return f"{self.name}-redis"

    def redis_shard(self, shard: int) -> str:
        """StatefulSet of one shard with replicas: short, so that ``<name>-rs63`` (50) fits
        the controller-revision-hash label (63) for every GameCluster name (46)."""
        return f"{self.name}-rs{shard}"

    @property
    def sentinel(self) -> str:
        """Sentinel StatefulSet, its headless Service, NetworkPolicy and PDB (51: fits)."""
        return f"{self.name}-sent"

    @staticmethod
    def shard_master(shard: int) -> str:
        """A shard's Sentinel master name, which is also its shard name for room placement."""
        return f"shard-{shard}"

    def redis_host(self, shard: int, ordinal: int) -> str:
        """DNS name of one pod of a shard's StatefulSet (the headless Service's record)."""
        return f"{self.redis_shard(shard)}-{ordinal}.{self.redis}.{self.namespace}.svc"

    def sentinel_addresses(self) -> list[str]:
        """``host:port`` of every Sentinel pod, as the relay's RELAY_REDIS_SENTINELS."""
        return [
            f"{self.sentinel}-{index}.{self.sentinel}.{self.namespace}.svc:{SENTINEL_PORT}"
            for index in range(SENTINELS)
        ]

    @property
    def redis_secret(self) -> str:
        """Managed Redis passwords: generated once, then edited only by a user (rotation)."""
        return f"{self.name}-redis"

    @property
    def redis_acl(self) -> str:
        """Managed Redis's ACL file, rendered from the password Secret on every pass."""
        return f"{self.name}-redis-acl"

    @property
    def api_secret(self) -> str:
        """The generated server API key the operator switches the shard map with."""
        return f"{self.name}-api"

    @property
    def jwt_secret(self) -> str:
        """The generated JWT Secret (only when spec.auth.secretName is absent)."""
        return f"{self.name}-jwt"

    def labels(self, component: str) -> dict[str, str]:
        return {
            names.LABEL_NAME: names.PART_OF,
            names.LABEL_INSTANCE: self.name,
            names.LABEL_COMPONENT: component,
            names.LABEL_MANAGED_BY: names.MANAGED_BY,
            names.LABEL_PART_OF: names.PART_OF,
        }

    def selector(self, component: str) -> dict[str, str]:
        """The immutable selector labels (a subset of labels())."""
        return {names.LABEL_INSTANCE: self.name, names.LABEL_COMPONENT: component}

    def selector_string(self, component: str) -> str:
        return ",".join(f"{key}={value}" for key, value in self.selector(component).items())

    def owner_reference(self) -> dict[str, Any]:
        return {
            "apiVersion": names.API_VERSION,
            "kind": names.KIND,
            "name": self.name,
            "uid": self.uid,
            "controller": True,
            "blockOwnerDeletion": True,
        }

    def metadata(self, name: str, component: str) -> dict[str, Any]:
        return {
            "name": name,
            "namespace": self.namespace,
            "labels": self.labels(component),
            "ownerReferences": [self.owner_reference()],
        }

    def shard_urls(self, shards: int, *, tls: bool = False) -> list[str]:
        """Managed mode: one URL per StatefulSet pod, through the headless Service's DNS.

        The scheme is not part of a shard's name (host:port is), so turning TLS on or off
        moves no room."""
        scheme = "rediss" if tls else "redis"
        return [
            f"{scheme}://{self.redis}-{index}.{self.redis}.{self.namespace}.svc:{REDIS_PORT}"
            for index in range(shards)
        ]

    def sentinel_shard_urls(self, shards: int) -> list[str]:
        """Managed mode with replicas: ``<shard>=sentinel://<shard>``, the master's name."""
        return [
            f"{self.shard_master(index)}=sentinel://{self.shard_master(index)}"
            for index in range(shards)
        ]

    def endpoint(self, port: int, path: str) -> str:
        return f"ws://{self.service}.{self.namespace}.svc:{port}{path}"


def is_shard_set(owner: Owner, name: str) -> bool:
    """Whether a StatefulSet name is one of ``owner``'s per-shard sets."""
    prefix = f"{owner.name}-rs"
    return name.startswith(prefix) and name[len(prefix) :].isdigit()


@dataclass(frozen=True)
class ChildRef:
    """Enough to GET, apply or DELETE one child."""

    api_version: str
    kind: str
    namespace: str
    name: str

    @classmethod
    def of(cls, manifest: Mapping[str, Any]) -> "ChildRef":
        meta = manifest["metadata"]
        return cls(manifest["apiVersion"], manifest["kind"], meta["namespace"], meta["name"])


def every_possible_child(owner: Owner) -> list[ChildRef]:
    """All children any spec could produce, so the reconciler can prune the unwanted ones;
    except the per-shard StatefulSets (``<name>-rs<N>``, up to 64): the reconciler lists those
    by label, one call instead of 64 GETs (``is_shard_set``)."""
    ns = owner.namespace
    return [
        ChildRef("v1", "ConfigMap", ns, owner.relay),
        ChildRef("v1", "Secret", ns, owner.jwt_secret),
        ChildRef("apps/v1", "Deployment", ns, owner.relay),
        ChildRef("v1", "Service", ns, owner.service),
        ChildRef("v1", "Service", ns, owner.admin_service),
        ChildRef("policy/v1", "PodDisruptionBudget", ns, owner.relay),
        ChildRef("apps/v1", "StatefulSet", ns, owner.redis),
        ChildRef("v1", "Service", ns, owner.redis),
        # Managed Redis access; the password Secret (owner.redis_secret) is left out on
        # purpose: it is never deleted while its GameCluster exists (garbage-collected with it).
        ChildRef("v1", "Secret", ns, owner.redis_acl),
        ChildRef("policy/v1", "PodDisruptionBudget", ns, owner.redis),
        ChildRef("networking.k8s.io/v1", "NetworkPolicy", ns, owner.redis),
        # Redis with replicas: the Sentinels (the shard sets are listed, see above).
        ChildRef("apps/v1", "StatefulSet", ns, owner.sentinel),
        ChildRef("v1", "Service", ns, owner.sentinel),
        ChildRef("policy/v1", "PodDisruptionBudget", ns, owner.sentinel),
        ChildRef("networking.k8s.io/v1", "NetworkPolicy", ns, owner.sentinel),
    ]
