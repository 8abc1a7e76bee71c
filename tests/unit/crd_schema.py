"""The GameCluster CRD as tests see it: loaded from the chart, defaulted like an API server."""

import copy
import pathlib
from collections.abc import Iterator
from functools import cache
from typing import Any

import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
CRD_PATH = ROOT / "charts" / "gamecluster" / "crds" / "gameclusters.gamecluster.io.yaml"
EXAMPLES = ROOT / "examples"


@cache
def crd() -> dict[str, Any]:
    return yaml.safe_load(CRD_PATH.read_text())  # type: ignore[no-any-return]


def schema() -> dict[str, Any]:
    return crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]  # type: ignore[no-any-return]


def apply_defaults(node: dict[str, Any], value: Any) -> Any:
    """Structural defaulting as the API server does it: absent fields get their default, then
    defaults apply inside present objects, array items and additionalProperties."""
    value = copy.deepcopy(value)
    if isinstance(value, dict) and node.get("type") == "object":
        for name, sub in (node.get("properties") or {}).items():
            if name not in value and "default" in sub:
                value[name] = copy.deepcopy(sub["default"])
            if name in value:
                value[name] = apply_defaults(sub, value[name])
        extra = node.get("additionalProperties")
        if isinstance(extra, dict):
            for name in set(value) - set(node.get("properties") or {}):
                value[name] = apply_defaults(extra, value[name])
    elif isinstance(value, list) and isinstance(node.get("items"), dict):
        value = [apply_defaults(node["items"], item) for item in value]
    return value


def prune(node: dict[str, Any], value: Any, path: str = "") -> tuple[Any, list[str]]:
    """Structural pruning as the API server does it (apiextensions v1, no
    x-kubernetes-preserve-unknown-fields): fields the schema does not declare are dropped.
    Returns the pruned value and the dropped paths, which a request with
    ``fieldValidation=Strict`` (kubectl's default) gets back as "unknown field" errors
    instead. At the root, apiVersion, kind and metadata are kept."""
    value = copy.deepcopy(value)
    dropped: list[str] = []
    if isinstance(value, dict) and node.get("type") == "object":
        known = node.get("properties") or {}
        extra = node.get("additionalProperties")
        for name in list(value):
            where = f"{path}.{name}"
            if not path and name in {"apiVersion", "kind", "metadata"}:
                continue  # ObjectMeta is the API server's own, never the CRD schema's
            if name in known:
                value[name], below = prune(known[name], value[name], where)
            elif isinstance(extra, dict):
                value[name], below = prune(extra, value[name], where)
            elif extra is True or node.get("x-kubernetes-preserve-unknown-fields"):
                continue
            else:
                del value[name]
                below = [where]
            dropped += below
    elif isinstance(value, list) and isinstance(node.get("items"), dict):
        pruned = [prune(node["items"], item, f"{path}[]") for item in value]
        value = [item for item, _ in pruned]
        dropped = [p for _, below in pruned for p in below]
    return value, dropped


def walk(node: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every schema node with its path, e.g. ``.spec.redis.shards``, ``.spec.rooms[]``."""
    yield path, node
    for name, sub in (node.get("properties") or {}).items():
        yield from walk(sub, f"{path}.{name}")
    if isinstance(node.get("items"), dict):
        yield from walk(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from walk(node["additionalProperties"], f"{path}{{}}")
