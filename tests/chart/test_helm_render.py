"""`helm lint` and `helm template`, through the real Helm v4 SDK, over several value sets."""

from __future__ import annotations

import re
import tomllib
from typing import Any

import helm_python as helm
import pytest
import yaml
from chart_support import (
    CHART_DIR,
    NAMESPACE,
    REPO,
    VALUE_SETS,
    find,
    manifests,
    one,
    rendered_files,
)

from gamecluster.children import Owner
from gamecluster.settings import OperatorSettings
from gamecluster.spec import JWT_SECRET_KEY
from relay import contract

pytestmark = pytest.mark.chart

LINT_ERROR = 3
LINT_WARNING = 2
KUBE_VERSION = "v1.37.0"


def _package_version() -> str:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return str(project["version"])


def _operator(objects: list[dict[str, Any]]) -> dict[str, Any]:
    deployments = [
        d
        for d in find(objects, "Deployment")
        if d["metadata"]["labels"]["app.kubernetes.io/component"] == "operator"
    ]
    assert len(deployments) == 1
    return deployments[0]


def _env(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in container.get("env", [])}


@pytest.mark.parametrize("key", sorted(VALUE_SETS))
def test_lint_reports_no_error_or_warning(key: str) -> None:
    report = helm.lint(CHART_DIR, VALUE_SETS[key], namespace=NAMESPACE, kube_version=KUBE_VERSION)
    assert report["total_charts_linted"] == 1
    assert report["errors"] == []
    problems = [m for m in report["messages"] if m["severity"] >= LINT_WARNING]
    assert problems == [], problems


def test_chart_metadata_follows_the_package_version() -> None:
    metadata = yaml.safe_load((CHART_DIR / "Chart.yaml").read_text())
    assert metadata["apiVersion"] == "v2"
    assert metadata["appVersion"] == _package_version()


@pytest.mark.parametrize("key", sorted(VALUE_SETS))
def test_every_value_set_renders_to_labelled_objects(key: str) -> None:
    objects = manifests(key)
    assert objects, "nothing rendered"
    for obj in objects:
        labels = obj["metadata"].get("labels", {})
        assert labels.get("app.kubernetes.io/managed-by") == "Helm", obj["metadata"]["name"]
        assert labels.get("app.kubernetes.io/instance") == "gc"
    notes = rendered_files(key)["gamecluster/templates/NOTES.txt"]
    assert "helm uninstall gc -n games" in notes


def test_defaults_render_the_operator_and_nothing_optional() -> None:
    objects = manifests("defaults")
    kinds = sorted({o["kind"] for o in objects})
    assert kinds == [
        "ClusterRole",
        "ClusterRoleBinding",
        "Deployment",
        "NetworkPolicy",
        "Role",  # the leader-election Lease, in the release namespace
        "RoleBinding",
        "Service",
        "ServiceAccount",
    ]
    assert find(objects, "GameCluster") == []
    assert find(objects, "PodMonitor") == []
    assert find(objects, "Pod") == []  # the helm test needs the demo
    (policy,) = find(objects, "NetworkPolicy")
    assert policy["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "operator"


def test_operator_deployment_shape() -> None:
    deployment = _operator(manifests("defaults"))
    spec = deployment["spec"]
    # Two replicas, one leading through a Lease; rolling updates never overlap two leaders.
    assert spec["replicas"] == 2
    assert spec["strategy"]["type"] == "RollingUpdate"
    pod = spec["template"]["spec"]
    (container,) = pod["containers"]
    assert container["command"] == ["gamecluster-operator"]
    assert container["image"] == f"gamecluster:{_package_version()}"
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert container["resources"]["requests"]
    assert container["resources"]["limits"]["memory"]
    env = _env(container)
    assert env["GAMECLUSTER_WATCH_NAMESPACES"] == ""
    assert env["GAMECLUSTER_RELAY_IMAGE"] == container["image"]
    assert env["GAMECLUSTER_LIVENESS_PORT"] == "8080"
    assert (
        pod["serviceAccountName"]
        == one(manifests("defaults"), "ServiceAccount")["metadata"]["name"]
    )


@pytest.mark.parametrize("key", sorted(VALUE_SETS))
def test_every_pod_meets_the_restricted_pod_security_standard(key: str) -> None:
    pods = [o["spec"]["template"]["spec"] for o in find(manifests(key), "Deployment")] + [
        o["spec"] for o in find(manifests(key), "Pod")
    ]
    assert pods
    for pod in pods:
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        for container in pod["containers"]:
            context = container["securityContext"]
            assert context["allowPrivilegeEscalation"] is False
            assert context["readOnlyRootFilesystem"] is True
            assert context["capabilities"] == {"drop": ["ALL"]}
            assert context["runAsUser"] != 0


def test_custom_image_reaches_operator_relay_pods_and_helm_test() -> None:
    objects = manifests("custom-image")
    wanted = "registry.example.com/games/gamecluster:1.2.3"
    (container,) = _operator(objects)["spec"]["template"]["spec"]["containers"]
    assert container["image"] == wanted
    assert _env(container)["GAMECLUSTER_RELAY_IMAGE"] == wanted
    assert one(objects, "GameCluster")["spec"]["image"] == wanted
    test_pod = one(objects, "Pod")
    assert test_pod["spec"]["containers"][0]["image"] == wanted
    assert test_pod["spec"]["imagePullSecrets"] == [{"name": "regcred"}]


def test_watch_namespaces_reach_the_operator() -> None:
    (container,) = _operator(manifests("namespaced"))["spec"]["template"]["spec"]["containers"]
    assert _env(container)["GAMECLUSTER_WATCH_NAMESPACES"] == "team-a,team-b"


def test_demo_and_its_helm_test() -> None:
    objects = manifests("demo")
    demo = one(objects, "GameCluster", "demo")
    assert demo["apiVersion"] == "gamecluster.io/v1alpha1"
    assert demo["spec"]["tracing"]["enabled"] is False
    assert "auth" not in demo["spec"]  # auth is always on, with the generated Secret
    assert "otlpEndpoint" not in demo["spec"]["tracing"]
    # The demo game's room policies, as `make run` sets them (Makefile DEMO_ROOMS).
    rooms = demo["spec"]["delivery"]["rooms"]
    assert rooms == [{"match": "arena:*", "policy": "volatile", "presence": True}]
    test_pod = one(objects, "Pod")
    assert test_pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    assert test_pod["spec"]["restartPolicy"] == "Never"
    assert helm_test_target(test_pod) == "ws://demo.games.svc:80/ws"
    # Auth is on: the token comes from the Secret the operator generates for the demo.
    owner = Owner.from_meta(demo["metadata"])
    (secret,) = [v["secret"] for v in test_pod["spec"]["volumes"] if "secret" in v]
    assert secret["secretName"] == owner.jwt_secret
    assert secret["items"] == [{"key": JWT_SECRET_KEY, "path": "secret"}]
    script = test_pod["spec"]["containers"][0]["command"][2]
    assert "relay token" in script and "--join 'check:*' --publish 'check:*'" in script


def test_uninstall_deletes_the_demo_first_with_a_pre_delete_hook() -> None:
    """Helm deletes the operator with the release; the demo's kopf finalizer needs it alive."""
    assert not find(manifests("defaults"), "Job")
    objects = manifests("demo")
    job = one(objects, "Job")
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "pre-delete"
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["command"][:5] == ["python", "-m", "gamecluster.cleanup", NAMESPACE, "demo"]
    role = one(objects, "Role", job["metadata"]["name"])
    assert role["metadata"]["annotations"]["helm.sh/hook"] == "pre-delete"
    assert role["rules"] == [
        {"apiGroups": ["gamecluster.io"], "resources": ["gameclusters"], "verbs": ["get", "delete"]}
    ]
    binding = one(objects, "RoleBinding", job["metadata"]["name"])
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": pod["serviceAccountName"], "namespace": NAMESPACE}
    ]
    # Hooks are created in weight order: its ServiceAccount and rights before the Job.
    for kind in ("ServiceAccount", "Role", "RoleBinding"):
        hook = one(objects, kind, job["metadata"]["name"])["metadata"]["annotations"]
        assert int(hook["helm.sh/hook-weight"]) < int(
            job["metadata"]["annotations"]["helm.sh/hook-weight"]
        )


def helm_test_target(pod: dict[str, Any]) -> str:
    """The URL the helm test pod checks: the argument of its sh -c script (auth is always on)."""
    command = pod["spec"]["containers"][0]["command"]
    assert command[:2] == ["sh", "-c"], command
    return str(command[3])


def test_jaeger_is_one_pinned_pod_and_the_demo_sends_it_traces() -> None:
    objects = manifests("demo-jaeger")
    jaeger = one(objects, "Deployment", "gc-gamecluster-jaeger")
    assert jaeger["spec"]["replicas"] == 1
    (container,) = jaeger["spec"]["template"]["spec"]["containers"]
    repository, tag = container["image"].split(":")
    assert repository == "jaegertracing/jaeger"
    assert re.fullmatch(r"2\.\d+\.\d+", tag), tag
    service = one(objects, "Service", "gc-gamecluster-jaeger")
    assert {p["port"] for p in service["spec"]["ports"]} >= {4317, 4318, 16686}
    tracing = one(objects, "GameCluster")["spec"]["tracing"]
    assert tracing == {
        "enabled": True,
        "otlpEndpoint": "http://gc-gamecluster-jaeger.games.svc:4317",
        "samplingRatio": 1,
    }


def test_jaeger_alone_adds_no_gamecluster() -> None:
    objects = manifests("jaeger")
    assert find(objects, "GameCluster") == []
    assert one(objects, "Deployment", "gc-gamecluster-jaeger")


def test_demo_tracing_without_an_endpoint_fails_with_a_message(chart: helm.Chart) -> None:
    values = {"demo": {"enabled": True, "tracing": {"enabled": True}}}
    with pytest.raises(helm.HelmRenderError, match=re.escape("needs demo.tracing.otlpEndpoint")):
        chart.render(values, name="gc", namespace=NAMESPACE)


@pytest.mark.parametrize("key", ["defaults", "everything"])
def test_operator_env_is_exactly_what_its_settings_read(key: str) -> None:
    # Every GAMECLUSTER_* variable the chart sets is a field of OperatorSettings (no dead
    # config), and every field without a default is set (the operator would not start).
    prefix = OperatorSettings.model_config.get("env_prefix", "")
    fields = {f"{prefix}{name}".upper(): f for name, f in OperatorSettings.model_fields.items()}
    (container,) = _operator(manifests(key))["spec"]["template"]["spec"]["containers"]
    ours = {name for name in _env(container) if name.startswith(prefix)}
    assert ours - set(fields) == set()
    assert {name for name, f in fields.items() if f.is_required()} <= ours
    settings = OperatorSettings(
        **{k.removeprefix(prefix).lower(): _env(container)[k] for k in ours}
    )
    assert settings.liveness_port == container["ports"][0]["containerPort"]


def test_helm_test_targets_the_service_the_operator_creates_for_the_demo() -> None:
    objects = manifests("everything")
    demo = one(objects, "GameCluster")
    owner = Owner.from_meta(demo["metadata"])
    endpoint = owner.endpoint(demo["spec"]["service"]["port"], contract.WS_PATH)
    assert helm_test_target(one(objects, "Pod")) == endpoint


def test_pod_monitors_render_only_when_asked_and_scrape_the_admin_port() -> None:
    monitors = find(manifests("monitoring"), "PodMonitor")
    by_name = {o["metadata"]["name"].rsplit("-", 1)[1]: o for o in monitors}
    assert sorted(by_name) == ["operator", "relays"]
    assert all(m["metadata"]["labels"]["release"] == "prom" for m in monitors)
    relay_endpoint = by_name["relays"]["spec"]["podMetricsEndpoints"][0]
    assert (relay_endpoint["port"], relay_endpoint["path"]) == ("admin", "/metrics")
    assert by_name["relays"]["spec"]["namespaceSelector"] == {"any": True}
    assert by_name["operator"]["spec"]["podMetricsEndpoints"][0]["port"] == "metrics"
