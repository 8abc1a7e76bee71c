"""Names the operator, its CRD, the chart and the tests agree on."""

from typing import Final

GROUP: Final = "gamecluster.io"
VERSION: Final = "v1alpha1"
API_VERSION: Final = f"{GROUP}/{VERSION}"
KIND: Final = "GameCluster"
PLURAL: Final = "gameclusters"

FIELD_MANAGER: Final = "gamecluster-operator"
"""The one server-side-apply field manager every child is applied under."""

# Labels on every child; the relay selector is the first two plus the component.
LABEL_NAME: Final = "app.kubernetes.io/name"
LABEL_INSTANCE: Final = "app.kubernetes.io/instance"
LABEL_COMPONENT: Final = "app.kubernetes.io/component"
LABEL_MANAGED_BY: Final = "app.kubernetes.io/managed-by"
LABEL_PART_OF: Final = "app.kubernetes.io/part-of"
MANAGED_BY: Final = "gamecluster-operator"
PART_OF: Final = "gamecluster"
COMPONENT_RELAY: Final = "relay"
COMPONENT_REDIS: Final = "redis"

MAX_NAME_LENGTH: Final = 46
"""A GameCluster's name, at most: the Redis StatefulSet ``<name>-redis`` (52) still fits the
controller-revision-hash label ``<sts>-<hash>`` (63), and every child is a DNS-1035 label."""
NAME_PATTERN: Final = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"
"""DNS-1035 label: Services need it, and the relay Service carries the GameCluster's name."""

ANNOTATION_PAUSED: Final = f"{GROUP}/paused"
"""``"true"`` on a GameCluster: the operator leaves it and its children alone."""
ANNOTATION_DELETION_COST: Final = "controller.kubernetes.io/pod-deletion-cost"
"""On relay pods before a scale-down: the ReplicaSet removes the lowest-cost pods first."""

ANNOTATION_CONFIG_HASH: Final = f"{GROUP}/config-hash"
"""On the relay pod template: changes exactly when the relay's configuration changes."""

# Operator settings, by environment variable.
ENV_RELAY_IMAGE: Final = "GAMECLUSTER_RELAY_IMAGE"
ENV_WATCH_NAMESPACES: Final = "GAMECLUSTER_WATCH_NAMESPACES"
ENV_LIVENESS_PORT: Final = "GAMECLUSTER_LIVENESS_PORT"
