"""skaffold.yaml: current schema, image built from the Dockerfile, chart deployed by path
with the built image, and only value keys the chart declares and its schema accepts.

skaffold itself (a Go binary) is not available here. SKAFFOLD_SUBSET below is our own
strict JSON schema of the part of skaffold/v4beta14 this file uses, with its field names
checked against upstream's v4beta14.json when it was written; it catches misspelt or
misplaced keys, which skaffold would otherwise reject only at `skaffold dev` time.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import helm_python as helm
import jsonschema
import pytest
import yaml
from chart_support import REPO, deep_merge, default_values, find, objects_of

from gamecluster.children import Owner

pytestmark = pytest.mark.chart

# The newest skaffold config schema (skaffold v2.x, pkg/skaffold/schema/latest).
CURRENT_API_VERSION = "skaffold/v4beta14"
SKAFFOLD = REPO / "skaffold.yaml"


def _strict(properties: dict[str, Any], required: tuple[str, ...] = ()) -> dict[str, Any]:
    return {
        "type": "object",
        "additionalProperties": False,
        "required": list(required),
        "properties": properties,
    }


_STRING = {"type": "string"}
_STRING_MAP = {"type": "object", "additionalProperties": {"type": ["string", "boolean", "number"]}}
SKAFFOLD_SUBSET = _strict(
    {
        "apiVersion": _STRING,
        "kind": {"const": "Config"},
        "metadata": _strict({"name": _STRING}),
        "build": _strict(
            {
                "artifacts": {
                    "type": "array",
                    "items": _strict(
                        {
                            "image": _STRING,
                            "context": _STRING,
                            "docker": _strict({"dockerfile": _STRING}),
                        },
                        ("image",),
                    ),
                },
                "tagPolicy": _strict({"gitCommit": _strict({})}),
            }
        ),
        "deploy": _strict(
            {
                "helm": _strict(
                    {
                        "releases": {
                            "type": "array",
                            "items": _strict(
                                {
                                    "name": _STRING,
                                    "chartPath": _STRING,
                                    "namespace": _STRING,
                                    "createNamespace": {"type": "boolean"},
                                    "skipBuildDependencies": {"type": "boolean"},
                                    "setValueTemplates": _STRING_MAP,
                                    "setValues": _STRING_MAP,
                                },
                                ("name",),
                            ),
                        }
                    }
                )
            }
        ),
        "profiles": {
            "type": "array",
            "items": _strict(
                {
                    "name": _STRING,
                    "activation": {
                        "type": "array",
                        "items": _strict({"command": _STRING, "env": _STRING}),
                    },
                    "patches": {
                        "type": "array",
                        "items": _strict(
                            {
                                "op": {"enum": ["add", "replace", "remove"]},
                                "path": _STRING,
                                "value": {},
                            },
                            ("op", "path"),
                        ),
                    },
                    "portForward": {
                        "type": "array",
                        "items": _strict(
                            {
                                "resourceType": {"enum": ["service", "deployment", "pod"]},
                                "resourceName": _STRING,
                                "namespace": _STRING,
                                "port": {"type": "integer"},
                                "localPort": {"type": "integer"},
                            },
                            ("resourceType", "resourceName", "port"),
                        ),
                    },
                },
                ("name",),
            ),
        },
    },
    ("apiVersion", "kind", "build", "deploy"),
)


def _config() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(SKAFFOLD.read_text())
    return loaded


def _with_profile(config: dict[str, Any], name: str) -> dict[str, Any]:
    """The config as skaffold sees it with one profile active (JSON-patch ops on dicts)."""
    patched = copy.deepcopy(config)
    (profile,) = [p for p in config["profiles"] if p["name"] == name]
    for patch in profile.get("patches", []):
        *parents, last = [
            p.replace("~1", "/").replace("~0", "~") for p in patch["path"][1:].split("/")
        ]
        node: Any = patched
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        if patch["op"] == "remove":
            del node[last]
        else:
            node[last] = patch["value"]
    patched.setdefault("portForward", []).extend(profile.get("portForward", []))
    return patched


def _sanitized(image: str) -> str:
    return re.sub(r"[/\-.:]", "_", image)


def _image_fields(config: dict[str, Any]) -> dict[str, str]:
    """What skaffold puts into the IMAGE_* templates for a local build."""
    fields: dict[str, str] = {}
    for artifact in config["build"]["artifacts"]:
        name = _sanitized(artifact["image"])
        fields[f"IMAGE_REPO_{name}"] = f"localhost:5000/{artifact['image']}"
        fields[f"IMAGE_TAG_{name}"] = "v0.1.0-3-gabc1234"
        fields[f"IMAGE_DIGEST_{name}"] = "sha256:" + "ab" * 32
    return fields


def _release_values(release: dict[str, Any], fields: dict[str, str]) -> dict[str, Any]:
    """The values skaffold passes as --set flags, parsed by Helm's own --set parser."""
    values: dict[str, Any] = {}
    for key, template in release.get("setValueTemplates", {}).items():
        rendered = re.sub(r"\{\{\s*\.(\w+)\s*\}\}", lambda m: fields[m.group(1)], template)
        values = deep_merge(values, helm.parse_set_string(f"{key}={rendered}"))
    for key, value in release.get("setValues", {}).items():
        literal = str(value).lower() if isinstance(value, bool) else str(value)
        values = deep_merge(values, helm.parse_set_string(f"{key}={literal}"))
    return values


def _has_path(tree: dict[str, Any], dotted: str) -> bool:
    node: Any = tree
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def test_skaffold_yaml_uses_the_current_schema_strictly() -> None:
    config = _config()
    assert config["apiVersion"] == CURRENT_API_VERSION
    jsonschema.Draft7Validator(SKAFFOLD_SUBSET).validate(config)
    for profile in config["profiles"]:
        jsonschema.Draft7Validator(SKAFFOLD_SUBSET).validate(
            {k: v for k, v in _with_profile(config, profile["name"]).items() if k != "portForward"}
        )


def test_subset_schema_rejects_a_misspelt_key() -> None:
    config = _config()
    config["deploy"]["helm"]["releases"][0]["chartpath"] = "charts/gamecluster"
    with pytest.raises(jsonschema.ValidationError, match="chartpath"):
        jsonschema.Draft7Validator(SKAFFOLD_SUBSET).validate(config)


def test_the_image_is_built_from_the_dockerfile() -> None:
    (artifact,) = _config()["build"]["artifacts"]
    context = REPO / artifact.get("context", ".")
    dockerfile = context / artifact["docker"]["dockerfile"]
    assert dockerfile.resolve() == (REPO / "Dockerfile").resolve()


def test_the_chart_is_deployed_by_path_with_the_built_image() -> None:
    config = _config()
    (release,) = config["deploy"]["helm"]["releases"]
    assert (REPO / release["chartPath"]).resolve() == (REPO / "charts/gamecluster").resolve()
    name = _sanitized(config["build"]["artifacts"][0]["image"])
    templates = release["setValueTemplates"]
    assert f"{{{{.IMAGE_REPO_{name}}}}}" in templates["image.repository"]
    assert f"{{{{.IMAGE_TAG_{name}}}}}" in templates["image.tag"]


@pytest.mark.parametrize("profile", [None, "dev"])
def test_every_value_skaffold_sets_exists_and_passes_the_schema(
    chart: helm.Chart, profile: str | None
) -> None:
    config = _config() if profile is None else _with_profile(_config(), profile)
    (release,) = config["deploy"]["helm"]["releases"]
    defaults = default_values()
    keys = [*release.get("setValueTemplates", {}), *release.get("setValues", {})]
    assert keys
    assert [k for k in keys if not _has_path(defaults, k)] == []
    values = _release_values(release, _image_fields(config))
    chart.validate_schema(chart.merge_values(values))
    rendered = chart.render(values, name=release["name"], namespace=release["namespace"])
    objects = objects_of(rendered)
    wanted = "localhost:5000/gamecluster:v0.1.0-3-gabc1234@sha256:" + "ab" * 32
    operator = next(
        d for d in find(objects, "Deployment") if d["metadata"]["name"] == "gamecluster"
    )
    (container,) = operator["spec"]["template"]["spec"]["containers"]
    assert container["image"] == wanted
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["GAMECLUSTER_RELAY_IMAGE"] == wanted


def test_dev_profile_turns_on_demo_and_jaeger_and_forwards_both(chart: helm.Chart) -> None:
    config = _with_profile(_config(), "dev")
    (profile,) = [p for p in _config()["profiles"] if p["name"] == "dev"]
    assert {"command": "dev"} in profile["activation"]
    (release,) = config["deploy"]["helm"]["releases"]
    values = _release_values(release, _image_fields(config))
    assert values["demo"]["enabled"] is True
    assert values["jaeger"]["enabled"] is True
    rendered = chart.render(values, name=release["name"], namespace=release["namespace"])
    objects = objects_of(rendered)
    merged = chart.merge_values(values)
    forwards = {(f["resourceName"], f["port"]): f for f in config["portForward"]}
    # Jaeger UI: a Service of the chart.
    jaeger = next(s for s in find(objects, "Service") if s["metadata"]["name"].endswith("jaeger"))
    assert (jaeger["metadata"]["name"], 16686) in forwards
    assert forwards[(jaeger["metadata"]["name"], 16686)]["localPort"] == 16686
    # The relay: the Service the operator creates for the demo GameCluster.
    (demo,) = find(objects, "GameCluster")
    relay_service = Owner.from_meta(demo["metadata"]).service
    assert (relay_service, merged["demo"]["servicePort"]) in forwards
    assert demo["spec"]["service"]["port"] == merged["demo"]["servicePort"]
    for forward in config["portForward"]:
        assert forward["namespace"] == release["namespace"]


def test_paths_in_skaffold_yaml_exist() -> None:
    config = _config()
    for release in config["deploy"]["helm"]["releases"]:
        assert Path(REPO / release["chartPath"] / "Chart.yaml").is_file()
