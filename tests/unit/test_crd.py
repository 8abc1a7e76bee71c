"""The CRD: structural, defaulted, bounded, CEL rules that hold, examples that validate.

What runs here is a reading of the schema by jsonschema (bounds, enums, patterns) and by
cel-python (the x-kubernetes-validations rules). The API server's own acceptance of the CRD
(structural-schema checks, CEL cost estimation) is proven only on a real control plane.
"""

import copy
import pathlib
import re
from typing import Any

import celpy
import jsonschema
import pytest
import yaml
from crd_schema import CRD_PATH, EXAMPLES, apply_defaults, crd, prune, schema, walk

from gamecluster import names
from gamecluster.desired import Inputs, desired
from gamecluster.manifests.secrets import RedisPasswords
from gamecluster.spec import InvalidSpec, parse
from relay import contract

pytestmark = pytest.mark.unit


def cel_failures(obj: dict[str, Any], old: dict[str, Any] | None = None) -> list[str]:
    """Evaluate every x-kubernetes-validations rule where its node has a value.

    Transition rules (those reading ``oldSelf``) run only on an update (``old`` given) where
    the old object has a value at the same place, as the API server does."""
    failures: list[str] = []
    env = celpy.Environment()

    def visit(node: dict[str, Any], value: Any, before: Any) -> None:
        for rule in node.get("x-kubernetes-validations") or []:
            activation = {"self": celpy.json_to_cel(value)}
            if "oldSelf" in rule["rule"]:
                if before is None:
                    continue
                activation["oldSelf"] = celpy.json_to_cel(before)
            program = env.program(env.compile(rule["rule"]))
            if not bool(program.evaluate(activation)):
                failures.append(rule["message"])
        if isinstance(value, dict):
            for name, sub in (node.get("properties") or {}).items():
                if name in value:
                    old_value = before.get(name) if isinstance(before, dict) else None
                    visit(sub, value[name], old_value)
        if isinstance(value, list) and isinstance(node.get("items"), dict):
            for item in value:
                visit(node["items"], item, None)

    visit(schema(), obj, old)
    return failures


INPUTS = Inputs(relay_image="img", jwt_secret="s", redis_passwords=RedisPasswords("r", "o"))


def validate(obj: dict[str, Any], old: dict[str, Any] | None = None) -> dict[str, Any]:
    """Default like the API server, then validate (schema and CEL); return the stored object.
    ``old``: the stored object this one updates (transition rules run then)."""
    stored = apply_defaults(schema(), obj)
    jsonschema.Draft7Validator(schema()).validate(stored)
    failures = cel_failures(stored, old)
    if failures:
        raise ValueError("; ".join(failures))
    return stored


def gamecluster(spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": names.API_VERSION,
        "kind": names.KIND,
        "metadata": {"name": "x"},
        "spec": spec,
    }


def test_identity_and_subresources() -> None:
    spec = crd()["spec"]
    assert crd()["metadata"]["name"] == f"{names.PLURAL}.{names.GROUP}"
    assert spec["group"] == names.GROUP
    assert spec["names"]["kind"] == names.KIND
    assert spec["names"]["shortNames"] == ["gc"]
    assert spec["names"]["categories"] == ["games"]
    (version,) = spec["versions"]
    assert version["name"] == names.VERSION
    assert version["served"]
    assert version["storage"]
    assert version["subresources"] == {
        "status": {},
        "scale": {
            "specReplicasPath": ".spec.replicas",
            "statusReplicasPath": ".status.replicas",
            "labelSelectorPath": ".status.selector",
        },
    }


def test_printer_columns() -> None:
    columns = {c["name"]: c for c in crd()["spec"]["versions"][0]["additionalPrinterColumns"]}
    assert [name for name, c in columns.items() if not c.get("priority")] == [
        "Replicas",
        "Ready",
        "Redis",
        "Desired",
        "Connections",
        "Phase",
        "Age",
    ]
    status = schema()["properties"]["status"]
    for column in columns.values():
        path = column["jsonPath"].lstrip(".").split(".")
        if path[0] == "status":  # every status column points at a declared field
            node = status
            for part in path[1:]:
                node = node["properties"][part]


def test_schema_is_structural() -> None:
    for path, node in walk(schema()):
        if node.get("x-kubernetes-int-or-string"):
            assert "type" not in node, path
            assert node["anyOf"] == [{"type": "integer"}, {"type": "string"}], path
            continue
        assert "type" in node, f"{path} has no type"
        if "properties" in node or "additionalProperties" in node:
            assert node["type"] == "object", path
            assert not ("properties" in node and "additionalProperties" in node), path
        if "items" in node:
            assert node["type"] == "array", path
        assert not node.get("x-kubernetes-preserve-unknown-fields"), f"{path} is not strict"
        for junctor in ("allOf", "oneOf", "not"):
            assert junctor not in node, path
        if "default" in node:  # defaults must themselves validate
            jsonschema.Draft7Validator(node).validate(apply_defaults(node, node["default"]))


def test_lists_declare_their_type_and_conditions_are_a_map_by_type() -> None:
    for path, node in walk(schema()):
        if node.get("type") == "array":
            assert node.get("x-kubernetes-list-type") in {"atomic", "map", "set"}, path
            assert "maxItems" in node, f"{path}: unbounded lists make CEL cost unbounded"
    conditions = schema()["properties"]["status"]["properties"]["conditions"]
    assert conditions["x-kubernetes-list-type"] == "map"
    assert conditions["x-kubernetes-list-map-keys"] == ["type"]
    assert set(conditions["items"]["required"]) >= {
        "type",
        "status",
        "reason",
        "lastTransitionTime",
        "message",
    }


def test_strings_are_bounded_where_cel_reads_them() -> None:
    urls = schema()["properties"]["spec"]["properties"]["redis"]["properties"]["external"]
    assert urls["properties"]["urls"]["items"]["maxLength"]


def test_every_cel_rule_compiles() -> None:
    env = celpy.Environment()
    rules = [r for _, node in walk(schema()) for r in node.get("x-kubernetes-validations") or []]
    assert len(rules) >= 4
    for rule in rules:
        env.compile(rule["rule"])
        assert rule["message"]


def test_every_cel_rule_holds_on_the_literal_default_of_its_object() -> None:
    """The API server evaluates each rule against the `default` of the object carrying it as
    written (`{}`, nested defaults not applied) and refuses the CRD when evaluation fails, e.g.
    on `no such key`. Found by the e2e tests; here it fails without a control plane."""
    env = celpy.Environment()
    checked = 0
    for path, node in walk(schema()):
        if "default" not in node:
            continue
        for rule in node.get("x-kubernetes-validations") or []:
            if "oldSelf" in rule["rule"]:
                continue  # transition rules: no old object when the default is checked
            program = env.program(env.compile(rule["rule"]))
            try:
                result = program.evaluate({"self": celpy.json_to_cel(node["default"])})
            except Exception as exc:  # pragma: no cover - the failure this test is for
                pytest.fail(f"{path}: {rule['rule']!r} on default {node['default']!r}: {exc!r}")
            assert not isinstance(result, celpy.CELEvalError), f"{path}: {rule['rule']}: {result}"
            assert bool(result), f"{path}: {rule['rule']!r} is false on {node['default']!r}"
            checked += 1
    assert checked >= 4


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_examples_validate_and_parse(path: pathlib.Path) -> None:
    obj = yaml.safe_load(path.read_text())
    assert prune(schema(), obj)[1] == []  # no field the API server would drop
    stored = validate(obj)
    parse(stored["spec"])
    parse(obj["spec"])  # the operator's own defaults reach the same place


def test_examples_include_demo_and_external() -> None:
    names_ = {p.name for p in EXAMPLES.glob("*.yaml")}
    assert {"demo.yaml", "external-redis.yaml"} <= names_


def test_empty_spec_is_fully_defaulted() -> None:
    stored = validate(gamecluster({}))
    spec = stored["spec"]
    assert spec["replicas"] == 2
    assert spec["redis"] == {
        "mode": "managed",
        "shards": 1,
        "replicas": 0,
        "ackReplicas": 0,
        "image": "redis:7.4.2-alpine",
        "resources": {"requests": {"cpu": "50m", "memory": "64Mi"}, "limits": {"memory": "256Mi"}},
        "persistence": {"enabled": True, "size": "1Gi"},
        "maxMemoryPolicy": "noeviction",
        "appendFsync": "everysec",
    }
    assert spec["autoscaling"]["enabled"] is False


def test_operator_defaults_equal_crd_defaults() -> None:
    """The operator defaults what the API server would have (an emulator, an old object)."""
    stored = validate(gamecluster({"delivery": {"rooms": [{"match": "a:*"}]}}))["spec"]
    from_operator = parse({"delivery": {"rooms": [{"match": "a:*"}]}})
    from_server = parse(stored)
    assert from_operator == from_server
    dumped = from_operator.model_dump(mode="json", by_alias=True, exclude_none=True)

    # Every default the CRD declares is a default the operator has, value for value.
    def check(stored_part: Any, dumped_part: Any, path: str) -> None:
        if isinstance(stored_part, dict):
            for key, value in stored_part.items():
                assert key in dumped_part, f"{path}.{key} unknown to the operator"
                check(value, dumped_part[key], f"{path}.{key}")
        else:
            assert stored_part == dumped_part, path

    check(stored, dumped, "spec")


INVALID = [
    ({"replicas": 1001}, "maximum"),
    ({"replicas": -1}, "minimum"),
    ({"redis": {"shards": 0}}, "minimum"),
    ({"redis": {"shards": 65}}, "maximum"),
    ({"redis": {"mode": "cluster"}}, "enum"),
    ({"redis": {"mode": "external", "external": {"urls": ["http://x"]}}}, "pattern"),
    (
        {"redis": {"mode": "external", "external": {"urls": ["sentinel://gc"]}}},
        "sentinel:// URLs need redis.external.sentinels",
    ),
    (
        {
            "redis": {
                "mode": "external",
                "external": {"urls": ["redis://a:1"], "sentinels": ["s:1"]},
            }
        },
        "sentinel:// URLs need redis.external.sentinels",
    ),
    (
        {
            "redis": {
                "mode": "external",
                "external": {
                    "urls": ["redis://a:1"],
                    "secretRef": {"name": "x", "sentinelPasswordKey": "sentinel"},
                },
            }
        },
        "secretRef.sentinelUsernameKey/sentinelPasswordKey",
    ),
    (
        {
            "redis": {
                "mode": "external",
                "external": {"urls": ["sentinel://gc"], "sentinels": ["s"]},
            }
        },
        "pattern",
    ),
    (
        {
            "redis": {
                "mode": "external",
                "external": {"urls": ["sentinel://gc"], "sentinels": ["s:1"], "cluster": True},
            }
        },
        "a Redis Cluster (cluster true) has redis:// or rediss:// seed URLs and no sentinels",
    ),
    (
        {
            "redis": {
                "mode": "external",
                "external": {"urls": ["rediss://a:1"], "sentinelTLS": True},
            }
        },
        "sentinelTLS needs a sentinel:// URL",
    ),
    ({"redis": {"appendFsync": "no"}}, "enum"),
    ({"autoscaling": {"targetConnectionsPerReplica": 0}}, "minimum"),
    ({"tracing": {"samplingRatio": 1.5}}, "maximum"),
    ({"limits": {"maxMessageBytes": 1}}, "minimum"),
    ({"limits": {"maxMessageBytes": 255}}, "minimum"),
    ({"template": {"spec": {"containers": [{"name": "redis"}]}}}, "enum"),
    ({"redis": {"template": {"spec": {"containers": [{"name": "relay"}]}}}}, "enum"),
    (
        {
            "autoscaling": {
                "behavior": {
                    "scaleDown": {"policies": [{"type": "Pods", "value": 0, "periodSeconds": 60}]}
                }
            }
        },
        "minimum",
    ),
    ({"resources": {"requests": {"cpu": "lots"}}}, "pattern"),
    ({"auth": {"secretName": "Not_A_Name"}}, "pattern"),
    ({"delivery": {"rooms": [{"policy": "durable"}]}}, "required"),
    ({"service": {"port": 0}}, "minimum"),
    (
        {"autoscaling": {"enabled": True, "minReplicas": 5, "maxReplicas": 2}},
        "minReplicas must not exceed",
    ),
    ({"redis": {"mode": "external"}}, "external needs redis.external.urls"),
    (
        {
            "redis": {
                "mode": "external",
                "external": {"urls": ["rediss://a:6380"]},
                "tls": {"secretName": "their-cert"},
            }
        },
        "redis.tls is for the managed Redis",
    ),
    ({"auth": {"algorithm": "RS256"}}, "RS256 needs auth.secretName"),
    ({"tracing": {"enabled": True}}, "tracing.enabled needs tracing.otlpEndpoint"),
    ({"redis": {"ackReplicas": 1}}, "ackReplicas cannot exceed redis.replicas"),
    ({"redis": {"replicas": 1, "ackReplicas": 2}}, "ackReplicas cannot exceed redis.replicas"),
    ({"redis": {"replicas": 5, "ackReplicas": 6}}, "maximum"),
]


@pytest.mark.parametrize(("spec", "why"), INVALID, ids=[w for _, w in INVALID])
def test_invalid_specs_are_rejected_by_the_crd_and_by_the_operator(
    spec: dict[str, Any], why: str
) -> None:
    with pytest.raises(
        (jsonschema.ValidationError, ValueError), match=re.escape(why) if " " in why else None
    ) as info:
        validate(gamecluster(copy.deepcopy(spec)))
    if isinstance(info.value, jsonschema.ValidationError):
        assert info.value.validator == why
    with pytest.raises(InvalidSpec):
        parse(spec)


def test_auth_cannot_be_turned_off() -> None:
    """There is no auth.enabled. The schema is structural without
    x-kubernetes-preserve-unknown-fields, so the API server does not store the field: by
    default it prunes it (with a warning); with fieldValidation=Strict (kubectl's default)
    it refuses the request as an unknown field. Either way the relay pods get RELAY_AUTH=jwt.
    """
    auth = schema()["properties"]["spec"]["properties"]["auth"]
    assert "enabled" not in auth["properties"]
    assert "additionalProperties" not in auth
    assert not auth.get("x-kubernetes-preserve-unknown-fields")
    sent = gamecluster({"auth": {"enabled": False}})
    pruned, dropped = prune(schema(), sent)
    assert dropped == [".spec.auth.enabled"]  # what Strict reports as an unknown field
    stored = validate(pruned)
    assert stored["spec"]["auth"] == {"algorithm": "HS256"}
    meta = {"name": "x", "namespace": "ns", "uid": "u", "generation": 1}
    (config,) = [
        m for m in desired(parse(stored["spec"]), meta, INPUTS) if m["kind"] == "ConfigMap"
    ]
    assert config["data"][contract.ENV_AUTH] == "jwt"


def test_crd_file_is_plain_yaml_without_anchors() -> None:
    text = CRD_PATH.read_text()
    assert not re.search(r"(^|\s)[&*][A-Za-z]|<<:", text)


@pytest.mark.parametrize(
    "url", ["redis://:pw@a:6379/0", "rediss://user:pw@b:6380", "redis://u@c", "sentinel://u:p@gc"]
)
def test_external_urls_with_credentials_are_refused(url: str) -> None:
    spec = {"redis": {"mode": "external", "external": {"urls": [url]}}}
    with pytest.raises(ValueError, match="secretRef"):
        validate(gamecluster(spec))
    with pytest.raises(InvalidSpec, match="secretRef"):
        parse(spec)


def test_external_secret_ref_defaults_the_password_key() -> None:
    external = {"urls": ["rediss://a:6380/0"], "secretRef": {"name": "cloud-redis"}}
    stored = validate(gamecluster({"redis": {"mode": "external", "external": external}}))
    ref = stored["spec"]["redis"]["external"]["secretRef"]
    assert ref == {"name": "cloud-redis", "passwordKey": "password"}
    assert parse(stored["spec"]).redis.external.secret_ref.password_key == "password"  # type: ignore[union-attr]


def test_max_message_bytes_bounds_are_the_relays() -> None:
    """One source of truth: relay.contract; the CRD, the operator and the relay's settings."""
    from relay.config import Settings

    node = schema()["properties"]["spec"]["properties"]["limits"]["properties"]["maxMessageBytes"]
    assert node["minimum"] == contract.MIN_MAX_MESSAGE_BYTES
    assert node["maximum"] == contract.MAX_MAX_MESSAGE_BYTES
    field = Settings.model_fields["max_message_bytes"]
    bounds = {type(m).__name__: m for m in field.metadata}
    assert bounds["Ge"].ge == contract.MIN_MAX_MESSAGE_BYTES
    assert bounds["Le"].le == contract.MAX_MAX_MESSAGE_BYTES
    validate(gamecluster({"limits": {"maxMessageBytes": contract.MIN_MAX_MESSAGE_BYTES}}))
    assert parse({"limits": {"maxMessageBytes": 256}}).limits.max_message_bytes == 256


@pytest.mark.parametrize("name", ["a", "arena", "game-1", "a" * names.MAX_NAME_LENGTH])
def test_names_that_fit_every_child_are_accepted(name: str) -> None:
    validate({**gamecluster({}), "metadata": {"name": name}})


@pytest.mark.parametrize(
    "name", ["Arena", "1arena", "arena.eu", "arena-", "a" * (names.MAX_NAME_LENGTH + 1)]
)
def test_names_children_cannot_carry_are_refused(name: str) -> None:
    with pytest.raises(ValueError, match="DNS-1035"):
        validate({**gamecluster({}), "metadata": {"name": name}})


def test_the_longest_name_gives_children_that_fit() -> None:
    """<name>-redis is a StatefulSet: its revision label <sts>-<10 chars> must fit 63."""
    name = "a" * names.MAX_NAME_LENGTH
    meta = {"name": name, "namespace": "ns", "uid": "u", "generation": 1}
    for manifest in desired(parse({}), meta, INPUTS):
        child = manifest["metadata"]["name"]
        assert re.fullmatch(names.NAME_PATTERN, child) and len(child) <= 63, child
        if manifest["kind"] == "StatefulSet":
            assert len(f"{child}-{'x' * 10}") <= 63
    rule = schema()["x-kubernetes-validations"][0]["rule"]
    assert f"<= {names.MAX_NAME_LENGTH}" in rule and names.NAME_PATTERN in rule


@pytest.mark.parametrize(
    "change",
    [
        {"enabled": True},
        {"enabled": False, "size": "5Gi"},
        {"enabled": False, "storageClassName": "fast"},
    ],
)
def test_persistence_cannot_change_in_place(change: dict[str, Any]) -> None:
    old = validate(gamecluster({"redis": {"persistence": {"enabled": False}}}))
    new = gamecluster({"redis": {"persistence": change}})
    with pytest.raises(ValueError, match=r"redis\.persistence is immutable"):
        validate(new, old)
    # Unchanged persistence, other edits: accepted; a create is not a transition.
    validate(gamecluster({"replicas": 5, "redis": {"persistence": {"enabled": False}}}), old)
    validate(new)


@pytest.mark.parametrize(("before", "after"), [(0, 1), (2, 0), (None, 3)])
def test_redis_replicas_cannot_switch_to_or_from_zero(before: int | None, after: int) -> None:
    old_redis = {} if before is None else {"replicas": before}
    old = validate(gamecluster({"redis": old_redis}))
    if before is None:  # stored before the field existed: no default in it yet
        del old["spec"]["redis"]["replicas"]
    with pytest.raises(ValueError, match=r"redis\.replicas cannot change to or from 0"):
        validate(gamecluster({"redis": {"replicas": after}}), old)
    validate(gamecluster({"redis": {"replicas": after}}))  # a create is not a transition


def test_redis_replicas_change_between_one_and_five_and_are_bounded() -> None:
    old = validate(gamecluster({"redis": {"replicas": 1}}))
    assert validate(gamecluster({"redis": {"replicas": 5}}), old)["spec"]["redis"]["replicas"] == 5
    for bad in (-1, 6):
        with pytest.raises(jsonschema.ValidationError):
            validate(gamecluster({"redis": {"replicas": bad}}))
    assert parse({"redis": {"replicas": 5}}).redis.replicas == 5


def test_template_scheduling_fields_are_checked_by_the_crd() -> None:
    """The operator passes them through as JSON; the CRD (and the API server) check them."""
    bad = gamecluster({"template": {"spec": {"tolerations": [{"operator": "Maybe"}]}}})
    with pytest.raises(jsonschema.ValidationError):
        validate(bad)
    missing_key = gamecluster(
        {"template": {"spec": {"topologySpreadConstraints": [{"maxSkew": 1}]}}}
    )
    with pytest.raises(jsonschema.ValidationError):
        validate(missing_key)


def test_every_field_path_names_a_declared_property() -> None:
    """The API server refuses the CRD when a rule's fieldPath is not a declared property
    (found by the e2e tests on `.metadata.name`)."""
    checked = 0
    for path, node in walk(schema()):
        for rule in node.get("x-kubernetes-validations") or []:
            if "fieldPath" not in rule:
                continue
            target = node
            for part in rule["fieldPath"].lstrip(".").split("."):
                assert part in (target.get("properties") or {}), f"{path}: {rule['fieldPath']}"
                target = target["properties"][part]
            checked += 1
    assert checked >= 4


def test_ack_replicas_up_to_replicas_reach_the_relays_and_external_is_not_bounded() -> None:
    """ackReplicas travels to every relay pod as RELAY_REDIS_ACK_REPLICAS (absent when 0, so
    an operator upgrade changes no relay's configuration and rolls no pod)."""

    def relay_env(spec: dict[str, Any]) -> dict[str, str]:
        stored = validate(gamecluster(spec))["spec"]
        children = desired(parse(stored), {"name": "x", "namespace": "n", "uid": "u"}, INPUTS)
        (config,) = [
            c for c in children if c["kind"] == "ConfigMap" and "relay" in c["metadata"]["name"]
        ]
        return config["data"]  # type: ignore[no-any-return]

    assert contract.ENV_REDIS_ACK_REPLICAS not in relay_env({"redis": {"replicas": 2}})
    env = relay_env({"redis": {"replicas": 2, "ackReplicas": 2}})
    assert env[contract.ENV_REDIS_ACK_REPLICAS] == "2"
    external = {"mode": "external", "external": {"urls": ["redis://a:6379"]}, "ackReplicas": 1}
    assert relay_env({"redis": external})[contract.ENV_REDIS_ACK_REPLICAS] == "1"
