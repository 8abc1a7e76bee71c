"""The chart grants the operator exactly what operator/gamecluster/rbac.py says it uses.

Rules are compared as sets of (apiGroup, resource, verb) triples, so how the chart groups
them into PolicyRules does not matter, but a missing verb or an extra grant does.
"""

from __future__ import annotations

from typing import Any

import helm_python as helm
import pytest
from chart_support import NAMESPACE, VALUE_SETS, find, manifests, one

from gamecluster import rbac

pytestmark = pytest.mark.chart

Triple = tuple[str, str, str]
AGGREGATE_LABELS = (
    "rbac.authorization.k8s.io/aggregate-to-view",
    "rbac.authorization.k8s.io/aggregate-to-edit",
    "rbac.authorization.k8s.io/aggregate-to-admin",
)


def _triples(rules: list[dict[str, Any]]) -> set[Triple]:
    found: set[Triple] = set()
    for rule in rules:
        assert "nonResourceURLs" not in rule, rule
        assert "resourceNames" not in rule, rule
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                found |= {(group, resource, verb) for verb in rule["verbs"]}
    return found


def _expected(rules: tuple[rbac.Rule, ...]) -> set[Triple]:
    return _triples(rbac.policy_rules(rules))


def _operator_subject(objects: list[dict[str, Any]]) -> dict[str, str]:
    deployment = next(
        d
        for d in find(objects, "Deployment")
        if d["metadata"]["labels"]["app.kubernetes.io/component"] == "operator"
    )
    return {
        "kind": "ServiceAccount",
        "name": deployment["spec"]["template"]["spec"]["serviceAccountName"],
        "namespace": NAMESPACE,
    }


def _bound_roles(objects: list[dict[str, Any]], binding_kind: str) -> list[dict[str, Any]]:
    """Roles bound to the operator's ServiceAccount by bindings of this kind."""
    subject = _operator_subject(objects)
    roles = []
    for binding in find(objects, binding_kind):
        if subject not in binding["subjects"]:
            continue
        ref = binding["roleRef"]
        namespace = binding["metadata"].get("namespace")
        candidates = [
            r
            for r in find(objects, ref["kind"], ref["name"])
            if r["metadata"].get("namespace") == (namespace if ref["kind"] == "Role" else None)
        ]
        assert len(candidates) == 1, f"{binding_kind} {binding['metadata']['name']} dangles"
        roles.append(candidates[0])
    return roles


def test_rbac_module_lists_rules() -> None:
    assert _expected(rbac.NAMESPACED_RULES)
    assert ("gamecluster.io", "gameclusters", "watch") in _expected(rbac.NAMESPACED_RULES)


def test_cluster_wide_mode_grants_exactly_the_operators_rules() -> None:
    objects = manifests("defaults")
    (role,) = _bound_roles(objects, "ClusterRoleBinding")
    assert _triples(role["rules"]) == _expected(rbac.NAMESPACED_RULES + rbac.CLUSTER_RULES)
    (leader,) = _bound_roles(objects, "RoleBinding")
    assert _triples(leader["rules"]) == _expected(rbac.LEADER_RULES)


@pytest.mark.parametrize("key", ["namespaced", "everything"])
def test_namespaced_mode_grants_a_role_per_namespace_and_nothing_cluster_wide(key: str) -> None:
    objects = manifests(key)
    watched = VALUE_SETS[key]["watchNamespaces"]
    assert _bound_roles(objects, "ClusterRoleBinding") == []
    roles = [
        r
        for r in _bound_roles(objects, "RoleBinding")
        if not r["metadata"]["name"].endswith("-leader")
    ]
    assert sorted(r["metadata"]["namespace"] for r in roles) == sorted(watched)
    (leader,) = [
        r for r in _bound_roles(objects, "RoleBinding") if r["metadata"]["name"].endswith("-leader")
    ]
    assert _triples(leader["rules"]) == _expected(rbac.LEADER_RULES)
    for role in roles:
        assert _triples(role["rules"]) == _expected(rbac.NAMESPACED_RULES)


@pytest.mark.parametrize("key", sorted(VALUE_SETS))
def test_every_cluster_role_is_the_operators_or_aggregated_for_people(key: str) -> None:
    objects = manifests(key)
    operators = {r["metadata"]["name"] for r in _bound_roles(objects, "ClusterRoleBinding")}
    for role in find(objects, "ClusterRole"):
        if role["metadata"]["name"] in operators:
            continue
        labels = role["metadata"]["labels"]
        assert any(labels.get(label) == "true" for label in AGGREGATE_LABELS), role["metadata"]
    # No binding of any kind hands the operator more than its rules.
    granted: set[Triple] = set()
    for kind in ("ClusterRoleBinding", "RoleBinding"):
        for role in _bound_roles(objects, kind):
            granted |= _triples(role["rules"])
    assert granted <= _expected(rbac.NAMESPACED_RULES + rbac.CLUSTER_RULES + rbac.LEADER_RULES)
    assert granted >= _expected(rbac.NAMESPACED_RULES)


def test_people_get_the_view_and_edit_rules_through_aggregation() -> None:
    objects = manifests("defaults")
    view = one(objects, "ClusterRole", "gc-gamecluster-view")
    edit = one(objects, "ClusterRole", "gc-gamecluster-edit")
    assert view["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-view"] == "true"
    assert edit["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-edit"] == "true"
    assert edit["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-admin"] == "true"
    assert _triples(view["rules"]) == _expected(rbac.VIEW_RULES)
    assert _triples(edit["rules"]) == _expected(rbac.EDIT_RULES)
    for obj in find(objects, "ClusterRoleBinding"):
        assert obj["roleRef"]["name"] not in {"gc-gamecluster-view", "gc-gamecluster-edit"}


def test_rbac_can_be_left_out(chart: helm.Chart) -> None:
    rendered = chart.render(
        {"rbac": {"create": False}, "serviceAccount": {"create": False, "name": "mine"}},
        name="gc",
        namespace=NAMESPACE,
    )
    assert "kind: ClusterRole" not in "".join(rendered.values())
    assert "serviceAccountName: mine" in rendered["gamecluster/templates/deployment.yaml"]
