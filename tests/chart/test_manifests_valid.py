"""Rendered objects validate against the Kubernetes API schemas; the CRD is structural.

kubernetes-validate ships the OpenAPI-derived JSON schemas of every Kubernetes release;
`strict` rejects unknown fields, which is where a mis-indented template usually shows.
GameClusters are checked against the CRD's own openAPIV3Schema.
"""

from __future__ import annotations

import copy
from typing import Any

import celpy
import jsonschema
import kubernetes_validate
import pytest
from chart_support import VALUE_SETS, crds, find, manifests

from gamecluster import spec as gamecluster_spec

pytestmark = pytest.mark.chart

KUBE_VERSION = kubernetes_validate.utils.latest_version()
JUNCTORS = ("allOf", "anyOf", "oneOf", "not")
# Keys a logical junctor may not carry in a structural schema (Kubernetes CRD docs,
# "Specifying a structural schema", rule 3).
FORBIDDEN_IN_JUNCTORS = ("description", "type", "default", "additionalProperties", "nullable")
INT_OR_STRING_BRANCHES = ({"type": "integer"}, {"type": "string"})


def _crd() -> dict[str, Any]:
    (crd,) = crds()
    return crd


def _schema() -> dict[str, Any]:
    (version,) = [v for v in _crd()["spec"]["versions"] if v["storage"]]
    schema: dict[str, Any] = version["schema"]["openAPIV3Schema"]
    return schema


def test_latest_kubernetes_schemas_are_used() -> None:
    major, minor = (int(p) for p in KUBE_VERSION.split(".")[:2])
    assert (major, minor) >= (1, 34), KUBE_VERSION


@pytest.mark.parametrize("key", sorted(VALUE_SETS))
def test_rendered_builtin_objects_validate_strictly(key: str) -> None:
    # PodMonitor is prometheus-operator's, not built in: its shape is asserted in test_helm_render.
    builtins = [o for o in manifests(key) if o["kind"] not in ("GameCluster", "PodMonitor")]
    assert builtins
    for obj in builtins:
        try:
            kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            where = "/".join(str(p) for p in exc.path)
            pytest.fail(f"{obj['kind']}/{obj['metadata']['name']} at {where}: {exc.message}")


def test_crd_validates_strictly_as_an_object() -> None:
    kubernetes_validate.validate(_crd(), KUBE_VERSION, strict=True)


@pytest.mark.parametrize("key", [k for k in sorted(VALUE_SETS) if VALUE_SETS[k].get("demo")])
def test_demo_gamecluster_matches_the_crd_schema(key: str) -> None:
    crd = _crd()
    (demo,) = find(manifests(key), "GameCluster")
    group, version = demo["apiVersion"].split("/")
    assert group == crd["spec"]["group"]
    assert demo["kind"] == crd["spec"]["names"]["kind"]
    assert version in {v["name"] for v in crd["spec"]["versions"] if v["served"]}
    jsonschema.Draft7Validator(_schema()).validate(demo)


def _defaulted(node: dict[str, Any], value: Any) -> Any:
    """Structural defaulting, as the API server applies it on create."""
    if isinstance(value, dict) and node.get("type") == "object":
        value = dict(value)
        for name, sub in node.get("properties", {}).items():
            if name not in value and "default" in sub:
                value[name] = copy.deepcopy(sub["default"])
            if name in value:
                value[name] = _defaulted(sub, value[name])
    elif isinstance(value, list) and isinstance(node.get("items"), dict):
        value = [_defaulted(node["items"], item) for item in value]
    return value


def _cel_failures(node: dict[str, Any], value: Any, env: celpy.Environment) -> list[str]:
    """Messages of the x-kubernetes-validations rules the value breaks (on a create: transition
    rules, those reading oldSelf, do not run)."""
    failures = [
        rule["message"]
        for rule in node.get("x-kubernetes-validations", [])
        if "oldSelf" not in rule["rule"]
        and not bool(
            env.program(env.compile(rule["rule"])).evaluate({"self": celpy.json_to_cel(value)})
        )
    ]
    if isinstance(value, dict):
        for name, sub in node.get("properties", {}).items():
            if name in value:
                failures += _cel_failures(sub, value[name], env)
    if isinstance(value, list) and isinstance(node.get("items"), dict):
        for item in value:
            failures += _cel_failures(node["items"], item, env)
    return failures


@pytest.mark.parametrize("key", [k for k in sorted(VALUE_SETS) if VALUE_SETS[k].get("demo")])
def test_demo_gamecluster_passes_the_crd_rules_and_the_operators_parser(key: str) -> None:
    (demo,) = find(manifests(key), "GameCluster")
    stored = _defaulted(_schema(), demo)
    jsonschema.Draft7Validator(_schema()).validate(stored)
    assert _cel_failures(_schema(), stored, celpy.Environment()) == []
    parsed = gamecluster_spec.parse(stored["spec"])
    assert parsed.replicas == demo["spec"]["replicas"]


def test_cel_check_catches_a_broken_rule() -> None:
    bad = {"metadata": {"name": "demo"}, "spec": {"tracing": {"enabled": True}}}
    failures = _cel_failures(_schema(), _defaulted(_schema(), bad), celpy.Environment())
    assert "tracing.enabled needs tracing.otlpEndpoint" in failures


def _structural_problems(node: dict[str, Any], path: str, in_junctor: bool) -> list[str]:
    problems: list[str] = []
    special = node.get("x-kubernetes-int-or-string") or node.get(
        "x-kubernetes-preserve-unknown-fields"
    )
    if in_junctor:
        problems += [f"{path}: '{k}' inside a junctor" for k in FORBIDDEN_IN_JUNCTORS if k in node]
    elif "type" not in node and not special:
        problems.append(f"{path}: no type")
    if "properties" in node and "additionalProperties" in node:
        problems.append(f"{path}: both properties and additionalProperties")
    if node.get("type") == "array" and "items" not in node and not in_junctor:
        problems.append(f"{path}: array without items")
    if "default" in node and not in_junctor:
        try:
            jsonschema.Draft7Validator(node).validate(node["default"])
        except jsonschema.ValidationError as exc:
            problems.append(f"{path}: default does not validate: {exc.message}")
    for name, child in node.get("properties", {}).items():
        problems += _structural_problems(child, f"{path}.{name}", in_junctor)
    if isinstance(node.get("items"), dict):
        problems += _structural_problems(node["items"], f"{path}[]", in_junctor)
    if isinstance(node.get("additionalProperties"), dict):
        problems += _structural_problems(node["additionalProperties"], f"{path}{{*}}", in_junctor)
    for junctor in JUNCTORS:
        branches = node.get(junctor)
        if branches is None:
            continue
        for i, branch in enumerate(branches if isinstance(branches, list) else [branches]):
            if node.get("x-kubernetes-int-or-string") and branch in INT_OR_STRING_BRANCHES:
                continue  # the one sanctioned exception (rule 2 of structural schemas)
            problems += _structural_problems(branch, f"{path}.{junctor}[{i}]", True)
            # A junctor may only constrain fields the node itself declares.
            extra = set(branch.get("properties", {})) - set(node.get("properties", {}))
            problems += [f"{path}.{junctor}[{i}]: adds field {f}" for f in sorted(extra)]
    return problems


def test_crd_schema_is_structural() -> None:
    schema = _schema()
    assert schema["type"] == "object"
    assert _structural_problems(schema, "", in_junctor=False) == []
    # Only name and generateName of metadata may be restricted at the root.
    metadata = schema["properties"].get("metadata", {"type": "object"})
    assert set(metadata.get("properties", {})) <= {"name", "generateName"}
    assert metadata["type"] == "object"


def test_structural_check_catches_a_broken_schema() -> None:
    broken = {
        "type": "object",
        "properties": {
            "a": {"description": "untyped"},
            "b": {"type": "integer", "default": "x"},
            "c": {"type": "object", "anyOf": [{"type": "object", "properties": {"d": {}}}]},
        },
    }
    problems = _structural_problems(broken, "", in_junctor=False)
    assert any(".a: no type" in p for p in problems)
    assert any(".b: default does not validate" in p for p in problems)
    assert any("'type' inside a junctor" in p for p in problems)
    assert any("adds field d" in p for p in problems)


def test_crd_has_status_and_scale_subresources() -> None:
    crd = _crd()
    (version,) = [v for v in crd["spec"]["versions"] if v["storage"]]
    scale = version["subresources"]["scale"]
    assert version["subresources"]["status"] == {}
    assert scale["specReplicasPath"] == ".spec.replicas"
    assert scale["labelSelectorPath"] == ".status.selector"
    status = _schema()["properties"]["status"]["properties"]
    assert status["selector"]["type"] == "string"
