"""Who the children of one GameCluster are: names, labels, owner reference, shard URLs.

Shared by the manifest builders, the reconciler (which prunes children no longer desired) and
the status computation, so a child's name is decided in exactly one place.
"""

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from gamecluster import names

REDIS_PORT: Final = 6379

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

    @property
    def redis_secret(self) -> str:
        """Managed Redis passwords: generated once, then edited only by a user (rotation)."""
        return f"{self.name}-redis"

    @property
    def redis_acl(self) -> str:
        """Managed Redis's ACL file, rendered from the password Secret on every pass."""
        return f"{self.name}-redis-acl"

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

    def shard_urls(self, shards: int) -> list[str]:
        """Managed mode: one URL per StatefulSet pod, through the headless Service's DNS."""
        return [
            f"redis://{self.redis}-{index}.{self.redis}.{self.namespace}.svc:{REDIS_PORT}"
            for index in range(shards)
        ]

    def endpoint(self, port: int, path: str) -> str:
        return f"ws://{self.service}.{self.namespace}.svc:{port}{path}"


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
    """All children any spec could produce, so the reconciler can prune the unwanted ones."""
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
    ]
