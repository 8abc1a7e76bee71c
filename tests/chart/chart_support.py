"""Shared helpers for the chart tier: the real Helm v4 SDK renders the chart offline.

`helm_python` binds the Helm Go SDK through ctypes (no helm binary, no cluster); `lookup`
returns nothing, which this chart does not use. Rendering is cached per value set, since
several test modules inspect the same manifests.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import helm_python as helm
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART_DIR = REPO / "charts" / "gamecluster"
RELEASE = "gc"
NAMESPACE = "games"

# Value sets every render-based test runs over: the defaults and one per feature switch,
# plus everything at once. Keys are test ids.
VALUE_SETS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "jaeger": {"jaeger": {"enabled": True}},
    "demo": {"demo": {"enabled": True}},
    "demo-jaeger": {"demo": {"enabled": True}, "jaeger": {"enabled": True}},
    "namespaced": {"watchNamespaces": ["team-a", "team-b"]},
    "monitoring": {"monitoring": {"podMonitor": {"enabled": True, "labels": {"release": "prom"}}}},
    "custom-image": {
        "image": {"repository": "registry.example.com/games/gamecluster", "tag": "1.2.3"},
        "imagePullSecrets": [{"name": "regcred"}],
        "demo": {"enabled": True},
    },
    "everything": {
        "watchNamespaces": [NAMESPACE],
        "demo": {
            "enabled": True,
            "name": "arena",
            "tracing": {"enabled": True, "otlpEndpoint": "http://collector:4317"},
        },
        "jaeger": {"enabled": True},
        "serviceAccount": {"name": "custom-sa", "annotations": {"a": "b"}},
        "operator": {
            "extraEnv": [{"name": "EXTRA", "value": "1"}],
            "nodeSelector": {"kubernetes.io/os": "linux"},
            "tolerations": [{"key": "k", "operator": "Exists", "effect": "NoSchedule"}],
            "priorityClassName": "high",
            "podAnnotations": {"x": "y"},
        },
        "service": {"type": "NodePort", "port": 9000},
    },
}


@functools.cache
def _render_cached(key: str) -> tuple[tuple[str, str], ...]:
    with helm.Chart.load(CHART_DIR) as loaded:
        rendered = loaded.render(
            copy.deepcopy(VALUE_SETS[key]), name=RELEASE, namespace=NAMESPACE, is_install=True
        )
    return tuple(sorted(rendered.items()))


def rendered_files(key: str) -> dict[str, str]:
    """Template path -> rendered text, for one named value set."""
    return dict(_render_cached(key))


def objects_of(rendered: Mapping[str, str]) -> list[dict[str, Any]]:
    """The Kubernetes objects in a render result (NOTES.txt and empty documents left out)."""
    objects: list[dict[str, Any]] = []
    for path, text in sorted(rendered.items()):
        if path.endswith((".yaml", ".yml")):
            objects.extend(doc for doc in yaml.safe_load_all(text) if doc)
    return objects


def manifests(key: str) -> list[dict[str, Any]]:
    """Every Kubernetes object the value set renders (templates only; CRDs are separate)."""
    return objects_of(rendered_files(key))


def crds() -> list[dict[str, Any]]:
    """The CRDs shipped in crds/, as Helm reads them."""
    with helm.Chart.load(CHART_DIR) as loaded:
        return [yaml.safe_load(entry["data"]) for entry in loaded.crds]


def find(objects: list[dict[str, Any]], kind: str, name: str | None = None) -> list[dict[str, Any]]:
    return [
        o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)
    ]


def one(objects: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = find(objects, kind, name)
    assert len(found) == 1, f"expected one {kind} {name or ''}, got {len(found)}"
    return found[0]


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def default_values() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((CHART_DIR / "values.yaml").read_text())
    return loaded
