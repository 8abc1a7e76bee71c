"""values.schema.json: Helm refuses wrong types and unknown keys, and says where."""

from __future__ import annotations

import re
from typing import Any

import helm_python as helm
import pytest
from chart_support import CHART_DIR, NAMESPACE, VALUE_SETS, default_values

pytestmark = pytest.mark.chart

BAD_VALUES = [
    pytest.param(
        {"demo": {"replicas": "three"}},
        "'/demo/replicas': got string, want integer",
        id="string-for-number",
    ),
    pytest.param(
        {"replica": 3}, "additional properties 'replica' not allowed", id="unknown-top-level-key"
    ),
    pytest.param(
        {"jaeger": {"enable": True}},
        "additional properties 'enable' not allowed",
        id="unknown-nested-key",
    ),
    pytest.param(
        {"jaeger": {"enabled": "yes"}},
        "'/jaeger/enabled': got string, want boolean",
        id="string-for-bool",
    ),
    pytest.param(
        {"watchNamespaces": "team-a"},
        "'/watchNamespaces': got string, want array",
        id="string-for-list",
    ),
    pytest.param({"watchNamespaces": ["Team_A"]}, "'/watchNamespaces/0'", id="bad-namespace"),
    pytest.param({"service": {"port": 70000}}, "'/service/port'", id="port-out-of-range"),
    pytest.param({"image": {"pullPolicy": "Sometimes"}}, "'/image/pullPolicy'", id="pull-policy"),
    pytest.param(
        {"demo": {"authEnabled": False}},
        "additional properties 'authEnabled' not allowed",
        id="demo-auth-cannot-be-turned-off",
    ),
    pytest.param(
        {"demo": {"tracing": {"samplingRatio": 2}}},
        "'/demo/tracing/samplingRatio'",
        id="ratio-above-one",
    ),
]


@pytest.mark.parametrize("key", sorted(VALUE_SETS))
def test_good_values_pass(chart: helm.Chart, key: str) -> None:
    chart.validate_schema(chart.merge_values(VALUE_SETS[key]))


@pytest.mark.parametrize(("values", "message"), BAD_VALUES)
def test_bad_values_are_refused_by_name(
    chart: helm.Chart, values: dict[str, Any], message: str
) -> None:
    # What `helm install --set ...` does: coalesce with the defaults, then validate.
    with pytest.raises(helm.HelmValuesError) as caught:
        chart.validate_schema(chart.merge_values(values))
    assert message in str(caught.value)
    # Rendering (install, upgrade, template) enforces the same schema.
    with pytest.raises(helm.HelmError, match=re.escape(message)):
        chart.render(values, name="gc", namespace=NAMESPACE)


def test_lint_reports_a_schema_violation_as_an_error() -> None:
    report = helm.lint(CHART_DIR, {"replica": 3})
    text = " ".join(m["error"] for m in report["messages"] if m["severity"] == 3)
    assert "additional properties 'replica' not allowed" in text


def _leaf_paths(tree: dict[str, Any], prefix: str = "") -> set[str]:
    paths: set[str] = set()
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value and key != "resources":
            paths |= _leaf_paths(value, f"{path}.")
        else:
            paths.add(path)
    return paths


def test_every_default_value_is_declared_in_the_schema(chart: helm.Chart) -> None:
    schema = chart.schema
    assert schema is not None
    assert schema["additionalProperties"] is False
    assert set(default_values()) <= set(schema["properties"])


def test_every_value_is_documented_in_the_readme() -> None:
    readme = (CHART_DIR / "README.md").read_text()
    missing = sorted(p for p in _leaf_paths(default_values()) if f"`{p}`" not in readme)
    assert missing == [], f"values without a row in charts/gamecluster/README.md: {missing}"
