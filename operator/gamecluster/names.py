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

ANNOTATION_CONFIG_HASH: Final = f"{GROUP}/config-hash"
"""On the relay pod template: changes exactly when the relay's configuration changes."""

# Operator settings, by environment variable.
ENV_RELAY_IMAGE: Final = "GAMECLUSTER_RELAY_IMAGE"
ENV_WATCH_NAMESPACES: Final = "GAMECLUSTER_WATCH_NAMESPACES"
ENV_LIVENESS_PORT: Final = "GAMECLUSTER_LIVENESS_PORT"
