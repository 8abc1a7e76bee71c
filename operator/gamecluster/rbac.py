"""Every Kubernetes API permission the operator uses, as data.

The Helm chart's RBAC templates and its tests derive from this list, so the operator and its
ClusterRole cannot drift: when the operator starts using a resource, it is added here first.

Three groups:

- ``NAMESPACED_RULES``: what the operator needs in every namespace it watches (a ClusterRole
  bound cluster-wide, or a Role per namespace when ``GAMECLUSTER_WATCH_NAMESPACES`` is set).
- ``LEADER_RULES``: the leader-election Lease, only in the operator's own namespace.
- ``CLUSTER_RULES``: cluster-scoped reads kopf makes when it watches all namespaces (it notices
  new namespaces and CRD changes). Without them kopf logs a warning and falls back to the
  namespaces it was given, so they are only needed in cluster-wide mode.
- ``VIEW_RULES`` / ``EDIT_RULES``: for users, meant for ClusterRoles aggregated into the
  built-in ``view`` and ``edit`` roles (``rbac.authorization.k8s.io/aggregate-to-*``).

Not listed on purpose: kopf peering resources (the operator runs ``--standalone`` and elects
a leader with a Lease instead, see docs/operator.md), persistentvolumeclaims (the StatefulSet
controller creates the claims; the operator never touches them), and list/watch on secrets
(the operator reads one named Secret and writes one generated Secret, and never needs to see
the others).
"""

from dataclasses import dataclass
from typing import Any, Final

from gamecluster import names


@dataclass(frozen=True)
class Rule:
    """One RBAC PolicyRule plus the reason it exists."""

    api_group: str
    """API group, "" for the core group."""
    resources: tuple[str, ...]
    """Resource names, subresources as "parent/sub"."""
    verbs: tuple[str, ...]
    why: str
    """Which code path needs it; kept for reviewers and the chart's comments."""

    def as_policy_rule(self) -> dict[str, list[str]]:
        """The rule as a Kubernetes ``rbac.authorization.k8s.io/v1`` PolicyRule."""
        return {
            "apiGroups": [self.api_group],
            "resources": list(self.resources),
            "verbs": list(self.verbs),
        }


_CHILD_VERBS: Final = ("get", "list", "watch", "create", "patch", "delete")

NAMESPACED_RULES: Final[tuple[Rule, ...]] = (
    Rule(
        names.GROUP,
        (names.PLURAL,),
        ("get", "list", "watch", "patch"),
        "kopf watches GameClusters and patches annotations (progress, last-handled state)",
    ),
    Rule(
        names.GROUP,
        (f"{names.PLURAL}/status",),
        ("get", "patch", "update"),
        "status (replicas, conditions, phase) is written through the status subresource",
    ),
    Rule(
        "",
        ("events",),
        ("create",),
        "kopf posts Events for handler outcomes; the operator posts Degraded reasons",
    ),
    Rule(
        "apps",
        ("deployments", "statefulsets"),
        _CHILD_VERBS,
        "relay Deployment and managed Redis StatefulSet: server-side apply, watched so "
        "hand edits are reverted, deleted when no longer desired (e.g. managed -> external)",
    ),
    Rule(
        "",
        ("services", "configmaps"),
        _CHILD_VERBS,
        "relay Service, Redis headless Service and the relay ConfigMap",
    ),
    Rule(
        "policy",
        ("poddisruptionbudgets",),
        _CHILD_VERBS,
        "PodDisruptionBudgets of the relay pods and of the managed Redis",
    ),
    Rule(
        "networking.k8s.io",
        ("networkpolicies",),
        _CHILD_VERBS,
        "the managed Redis's NetworkPolicy (only its relay pods and the operator get in)",
    ),
    Rule(
        "",
        ("pods",),
        ("list", "patch"),
        "autoscaler: list the relay pods to read exactly their load reports (no SCAN), and "
        "annotate controller.kubernetes.io/pod-deletion-cost before a scale-down",
    ),
    Rule(
        "",
        ("secrets",),
        ("get", "create", "patch", "delete"),
        "check that spec.auth.secretName and redis.external.secretRef exist; apply the "
        "generated JWT Secret, the server API key Secret (read back to switch the shard "
        "map), the Redis password Secret (once) and the Redis ACL Secret",
    ),
)

LEADER_RULES: Final[tuple[Rule, ...]] = (
    Rule(
        "coordination.k8s.io",
        ("leases",),
        ("get", "create", "update"),
        "leader election between operator replicas (a Role in the operator's own namespace)",
    ),
)

CLUSTER_RULES: Final[tuple[Rule, ...]] = (
    Rule(
        "apiextensions.k8s.io",
        ("customresourcedefinitions",),
        ("list", "watch"),
        "kopf observes CRDs to start and stop watching served resources",
    ),
    Rule(
        "",
        ("namespaces",),
        ("list", "watch"),
        "kopf observes namespaces when watching all of them (cluster-wide mode only)",
    ),
)

VIEW_RULES: Final[tuple[Rule, ...]] = (
    Rule(
        names.GROUP,
        (names.PLURAL, f"{names.PLURAL}/status", f"{names.PLURAL}/scale"),
        ("get", "list", "watch"),
        "read GameClusters (aggregate-to-view)",
    ),
)

EDIT_RULES: Final[tuple[Rule, ...]] = (
    Rule(
        names.GROUP,
        (names.PLURAL,),
        ("get", "list", "watch", "create", "update", "patch", "delete", "deletecollection"),
        "manage GameClusters (aggregate-to-edit and -admin)",
    ),
    Rule(
        names.GROUP,
        (f"{names.PLURAL}/scale",),
        ("get", "update", "patch"),
        "kubectl scale gc/NAME, and HPAs acting for users",
    ),
)


def policy_rules(rules: tuple[Rule, ...]) -> list[dict[str, Any]]:
    """Rules as a list of PolicyRules, ready to drop into a (Cluster)Role."""
    return [rule.as_policy_rule() for rule in rules]
