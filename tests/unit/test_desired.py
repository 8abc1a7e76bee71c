"""desired(spec, meta, inputs): what the operator deploys for a GameCluster, without a cluster."""

import base64
import json
from typing import Any

import pytest

from gamecluster import names
from gamecluster.desired import Inputs, desired
from gamecluster.manifests.secrets import RedisPasswords
from gamecluster.spec import InvalidSpec, parse
from relay import contract

pytestmark = pytest.mark.unit

META = {"name": "arena", "namespace": "games", "uid": "uid-1", "generation": 3}
PASSWORDS = RedisPasswords(relay="relay-pw", operator="operator-pw")
INPUTS = Inputs(
    relay_image="registry.local/gamecluster:1.2.3", jwt_secret="s3cret", redis_passwords=PASSWORDS
)


def build(spec: dict[str, Any] | None = None, inputs: Inputs = INPUTS) -> dict[str, Any]:
    manifests = desired(parse(spec or {}), META, inputs)
    return {f"{m['kind']}/{m['metadata']['name']}": m for m in manifests}


def relay_container(children: dict[str, Any]) -> dict[str, Any]:
    pod = children["Deployment/arena-relay"]["spec"]["template"]["spec"]
    assert len(pod["containers"]) == 1
    return pod["containers"][0]  # type: ignore[no-any-return]


def env_of(children: dict[str, Any]) -> dict[str, str]:
    """Container env as the relay sees it: ConfigMap (envFrom) plus explicit env."""
    container = relay_container(children)
    assert container["envFrom"] == [{"configMapRef": {"name": "arena-relay"}}]
    env = dict(children["ConfigMap/arena-relay"]["data"])
    for item in container["env"]:
        env[item["name"]] = item.get("value", "<from>")
    return env


def config_hash(children: dict[str, Any]) -> str:
    template = children["Deployment/arena-relay"]["spec"]["template"]
    return template["metadata"]["annotations"][names.ANNOTATION_CONFIG_HASH]  # type: ignore[no-any-return]


def test_managed_mode_has_every_child_in_apply_order() -> None:
    kinds = [f"{m['kind']}/{m['metadata']['name']}" for m in desired(parse({}), META, INPUTS)]
    assert kinds == [
        "ConfigMap/arena-relay",
        "Secret/arena-jwt",
        "Secret/arena-redis",
        "Secret/arena-redis-acl",
        "Service/arena-redis",
        "StatefulSet/arena-redis",
        "NetworkPolicy/arena-redis",
        "PodDisruptionBudget/arena-redis",
        "Deployment/arena-relay",
        "Service/arena",
        "Service/arena-admin",
        "PodDisruptionBudget/arena-relay",
    ]


def test_external_mode_has_only_relay_children_and_uses_the_urls() -> None:
    urls = ["redis://a:6379/0", "rediss://b:6380/0"]
    children = build({"redis": {"mode": "external", "external": {"urls": urls}}})
    assert not [key for key in children if "redis" in key]
    assert env_of(children)[contract.ENV_REDIS_URLS] == ",".join(urls)


def test_every_child_is_owned_by_the_gamecluster_and_labelled() -> None:
    for key, child in build().items():
        meta = child["metadata"]
        assert meta["namespace"] == "games", key
        assert meta["ownerReferences"] == [
            {
                "apiVersion": "gamecluster.io/v1alpha1",
                "kind": "GameCluster",
                "name": "arena",
                "uid": "uid-1",
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ], key
        assert meta["labels"][names.LABEL_MANAGED_BY] == names.MANAGED_BY, key
        assert meta["labels"][names.LABEL_INSTANCE] == "arena", key


@pytest.mark.parametrize(
    ("spec", "replicas"), [({}, 2), ({"replicas": 0}, 0), ({"replicas": 7}, 7)]
)
def test_replicas_follow_the_spec_when_not_autoscaling(spec: dict[str, Any], replicas: int) -> None:
    assert build(spec)["Deployment/arena-relay"]["spec"]["replicas"] == replicas


def test_autoscaled_replicas_win_over_spec_replicas_within_the_bounds() -> None:
    scaling = {"enabled": True, "minReplicas": 2, "maxReplicas": 6}
    spec = {"replicas": 10, "autoscaling": scaling}
    pick = lambda n: build(spec, Inputs("img", n, "s", PASSWORDS))["Deployment/arena-relay"]["spec"]  # noqa: E731
    assert pick(None)["replicas"] == 2  # no decision yet: the minimum
    assert pick(4)["replicas"] == 4
    assert pick(50)["replicas"] == 6  # bounds edited below an old decision


def test_selector_matches_the_pod_labels_and_the_status_selector() -> None:
    deployment = build()["Deployment/arena-relay"]["spec"]
    selector = deployment["selector"]["matchLabels"]
    assert selector == {names.LABEL_INSTANCE: "arena", names.LABEL_COMPONENT: "relay"}
    assert selector.items() <= deployment["template"]["metadata"]["labels"].items()
    assert build()["Service/arena"]["spec"]["selector"] == selector
    assert build()["PodDisruptionBudget/arena-relay"]["spec"]["selector"]["matchLabels"] == selector


def test_env_names_are_the_relay_contract_names() -> None:
    env = env_of(build({"tracing": {"enabled": True, "otlpEndpoint": "http://j:4317"}}))
    contract_names = {v for k, v in vars(contract).items() if k.startswith("ENV_")}
    contract_names.add(contract.ADMIN_PORT_ENV)
    relay_env = {name for name in env if name.startswith("RELAY_")}
    assert relay_env <= contract_names
    assert {name for name in env if not name.startswith("RELAY_")} <= {
        "OTEL_SERVICE_NAME",
        "OTEL_SDK_DISABLED",
        "OTEL_TRACES_SAMPLER",
        "OTEL_TRACES_SAMPLER_ARG",
        "OTEL_RESOURCE_ATTRIBUTES",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_PROTOCOL",
        contract.ENV_POD_NAME,
        contract.ENV_POD_NAMESPACE,
    }


def test_env_values_come_from_the_spec() -> None:
    spec = {
        "limits": {"maxMessageBytes": 1024, "publishPerSecond": 7, "maxConnectionsPerReplica": 99},
        "drainSeconds": 45,
        "delivery": {
            "rooms": [
                {"match": "chat:*"},
                {"match": "pos:*", "policy": "volatile", "presence": True},
            ]
        },
        "tracing": {"enabled": True, "otlpEndpoint": "http://jaeger:4317", "samplingRatio": 0.25},
    }
    env = env_of(build(spec))
    assert env[contract.ENV_MAX_MESSAGE_BYTES] == "1024"
    assert env[contract.ENV_PUBLISH_RATE] == "7"
    assert env[contract.ENV_MAX_CONNECTIONS] == "99"
    assert env[contract.ENV_DRAIN_SECONDS] == "45"
    assert env[contract.ENV_PORT] == str(contract.HTTP_PORT)
    assert env[contract.ENV_AUTH] == "jwt"
    assert json.loads(env[contract.ENV_ROOMS]) == [
        {
            "match": "chat:*",
            "policy": "durable",
            "historySize": 1000,
            "historyTTLSeconds": 3600,
            "presence": False,
        },
        {
            "match": "pos:*",
            "policy": "volatile",
            "historySize": 1000,
            "historyTTLSeconds": 3600,
            "presence": True,
        },
    ]
    assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://jaeger:4317"
    assert env["OTEL_TRACES_SAMPLER"] == "parentbased_traceidratio"
    assert env["OTEL_TRACES_SAMPLER_ARG"] == "0.25"
    assert env["OTEL_SDK_DISABLED"] == "false"
    assert env["OTEL_SERVICE_NAME"] == "arena-relay"


def test_tracing_off_disables_the_sdk_and_sets_no_endpoint() -> None:
    env = env_of(build())
    assert env["OTEL_SDK_DISABLED"] == "true"
    assert "OTEL_EXPORTER_OTLP_ENDPOINT" not in env
    assert contract.ENV_ROOMS not in env  # no rooms configured: the relay's default (durable)


def test_managed_shard_urls_are_the_statefulset_pods_dns_names() -> None:
    env = env_of(build({"redis": {"shards": 3}}))
    assert env[contract.ENV_REDIS_URLS].split(",") == [
        f"redis://arena-redis-{i}.arena-redis.games.svc:6379" for i in range(3)
    ]


def test_pod_identity_comes_from_the_downward_api() -> None:
    """The node id and the k8s.pod.name / k8s.namespace.name of every span are the pod's."""
    env = {e["name"]: e.get("valueFrom") for e in relay_container(build())["env"]}
    for name, field in (
        (contract.ENV_NODE_ID, "metadata.name"),
        (contract.ENV_POD_NAME, "metadata.name"),
        (contract.ENV_POD_NAMESPACE, "metadata.namespace"),
    ):
        assert env[name] == {"fieldRef": {"fieldPath": field}}, name


def test_jwt_secret_comes_from_the_generated_secret() -> None:
    children = build()
    (jwt,) = [e for e in relay_container(children)["env"] if e["name"] == contract.ENV_JWT_SECRET]
    assert jwt["valueFrom"] == {"secretKeyRef": {"name": "arena-jwt", "key": "secret"}}
    secret = children["Secret/arena-jwt"]
    assert base64.b64decode(secret["data"]["secret"]).decode() == "s3cret"


def test_named_secret_is_used_and_nothing_is_generated() -> None:
    children = build({"auth": {"secretName": "mine", "algorithm": "RS256"}})
    assert "Secret/arena-jwt" not in children
    (jwt,) = [e for e in relay_container(children)["env"] if e["name"].startswith("RELAY_JWT")]
    assert jwt["name"] == contract.ENV_JWT_PUBLIC_KEY
    assert jwt["valueFrom"]["secretKeyRef"] == {"name": "mine", "key": "publicKey"}


def test_auth_cannot_be_turned_off() -> None:
    # The CRD has no auth.enabled (the API server prunes it); should one reach the operator
    # anyway (an object stored under an older CRD), it is ignored: auth stays on.
    children = build({"auth": {"enabled": False}})
    assert children == build()
    assert env_of(children)[contract.ENV_AUTH] == "jwt"
    assert "Secret/arena-jwt" in children


def test_generated_secret_needs_a_value() -> None:
    with pytest.raises(ValueError, match="jwt_secret"):
        desired(parse({}), META, Inputs(relay_image="img"))


def test_probes_use_the_relay_paths_on_the_named_port() -> None:
    container = relay_container(build())
    assert container["ports"] == [
        {"name": "http", "containerPort": contract.HTTP_PORT, "protocol": "TCP"},
        {"name": "admin", "containerPort": contract.DEFAULT_ADMIN_PORT, "protocol": "TCP"},
    ]
    assert container["readinessProbe"]["httpGet"] == {"path": contract.READY_PATH, "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": contract.HEALTH_PATH, "port": "http"}


def test_grace_period_covers_prestop_and_the_drain() -> None:
    for drain in (0, 30, 120):
        children = build({"drainSeconds": drain})
        pod = children["Deployment/arena-relay"]["spec"]["template"]["spec"]
        pre_stop = relay_container(children)["lifecycle"]["preStop"]["exec"]["command"]
        assert pre_stop[0] == "sleep"
        assert pod["terminationGracePeriodSeconds"] > int(pre_stop[1]) + drain


@pytest.mark.parametrize("workload", ["Deployment/arena-relay", "StatefulSet/arena-redis"])
def test_pods_run_non_root_with_a_read_only_root(workload: str) -> None:
    pod = build()[workload]["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    for container in pod["containers"]:
        ctx = container["securityContext"]
        assert ctx["readOnlyRootFilesystem"] is True
        assert ctx["allowPrivilegeEscalation"] is False
        assert ctx["capabilities"] == {"drop": ["ALL"]}
        assert ctx["runAsUser"] > 0
        assert container["resources"]["requests"]


def test_image_defaults_to_the_operators_and_spec_image_wins() -> None:
    assert relay_container(build())["image"] == "registry.local/gamecluster:1.2.3"
    assert relay_container(build({"image": "mine:2"}))["image"] == "mine:2"


def test_resources_come_from_the_spec() -> None:
    resources = {"requests": {"cpu": "1", "memory": "1Gi"}, "limits": {"memory": "2Gi"}}
    assert relay_container(build({"resources": resources}))["resources"] == resources


def test_config_hash_changes_when_config_changes() -> None:
    base = config_hash(build())
    for change in (
        {"limits": {"maxMessageBytes": 1024}},
        {"redis": {"shards": 2}},
        {"delivery": {"rooms": [{"match": "x:*"}]}},
        {"tracing": {"enabled": True, "otlpEndpoint": "http://j:4317"}},
        {"drainSeconds": 10},
        {"auth": {"secretName": "other"}},
    ):
        assert config_hash(build(change)) != base, change


def test_config_hash_stays_when_only_scale_or_unrelated_fields_change() -> None:
    base = config_hash(build())
    for change in (
        {"replicas": 9},
        {"service": {"port": 8081, "type": "LoadBalancer"}},
        {"resources": {"requests": {"cpu": "2"}}},
        {"redis": {"persistence": {"enabled": True}}},
    ):
        assert config_hash(build(change)) == base, change
    other_secret_value = Inputs(
        relay_image="other:9", jwt_secret="rotated", redis_passwords=PASSWORDS
    )
    assert config_hash(build({}, other_secret_value)) == base


def test_redis_statefulset_one_pod_per_shard_with_aof() -> None:
    spec = {"redis": {"shards": 4, "persistence": {"enabled": False}}}
    sts = build(spec)["StatefulSet/arena-redis"]["spec"]
    assert sts["replicas"] == 4
    assert sts["serviceName"] == "arena-redis"
    (container,) = sts["template"]["spec"]["containers"]
    assert container["image"].startswith("redis:")
    assert ":latest" not in container["image"]
    args = container["args"]
    assert args[args.index("--appendonly") + 1] == "yes"
    assert args[args.index("--appendfsync") + 1] == "everysec"
    assert "volumeClaimTemplates" not in sts
    assert sts["template"]["spec"]["volumes"][0] == {"name": "data", "emptyDir": {}}


@pytest.mark.parametrize("replicas", [0, 1])
def test_append_fsync_always_reaches_every_shard_pod(replicas: int) -> None:
    """spec.redis.appendFsync: the standalone shards and the replicated ones alike (run on a
    real redis-server by test_redis_security.py)."""
    built = build({"redis": {"shards": 2, "replicas": replicas, "appendFsync": "always"}})
    names = (
        ["StatefulSet/arena-redis"]
        if replicas == 0
        else ["StatefulSet/arena-rs0", "StatefulSet/arena-rs1"]
    )
    for name in names:
        (container,) = built[name]["spec"]["template"]["spec"]["containers"]
        args = container["args"]
        assert args[args.index("--appendfsync") + 1] == "always", name
        assert args.count("--appendfsync") == 1


def test_redis_persistence_uses_claim_templates() -> None:
    spec = {"redis": {"persistence": {"enabled": True, "size": "5Gi", "storageClassName": "ssd"}}}
    sts = build(spec)["StatefulSet/arena-redis"]["spec"]
    (claim,) = sts["volumeClaimTemplates"]
    assert claim["metadata"]["name"] == "data"
    assert claim["spec"]["resources"] == {"requests": {"storage": "5Gi"}}
    assert claim["spec"]["storageClassName"] == "ssd"
    volumes = [volume["name"] for volume in sts["template"]["spec"]["volumes"]]
    assert volumes == ["acl"]  # data comes from the claim


def test_redis_headless_service_selects_the_shards() -> None:
    children = build()
    svc = children["Service/arena-redis"]["spec"]
    assert svc["clusterIP"] == "None"
    sts = children["StatefulSet/arena-redis"]["spec"]
    assert svc["selector"] == sts["selector"]["matchLabels"]
    assert svc["selector"].items() <= sts["template"]["metadata"]["labels"].items()


def test_relay_service_follows_the_spec() -> None:
    spec = {"service": {"type": "LoadBalancer", "port": 443, "annotations": {"a": "b"}}}
    svc = build(spec)["Service/arena"]
    assert svc["spec"]["type"] == "LoadBalancer"
    assert svc["spec"]["ports"] == [
        {"name": "http", "port": 443, "targetPort": "http", "protocol": "TCP"}
    ]
    assert svc["metadata"]["annotations"] == {"a": "b"}


def test_desired_is_deterministic() -> None:
    assert desired(parse({}), META, INPUTS) == desired(parse({}), META, INPUTS)


def test_admin_port_is_set_on_the_pods_and_exposed_only_by_a_cluster_ip_service() -> None:
    children = build({"service": {"type": "LoadBalancer", "port": 443}})
    assert env_of(children)[contract.ADMIN_PORT_ENV] == str(contract.DEFAULT_ADMIN_PORT)
    admin = children["Service/arena-admin"]
    assert admin["spec"]["type"] == "ClusterIP"
    assert admin["spec"]["ports"] == [
        {
            "name": contract.ADMIN_PORT_NAME,
            "port": contract.DEFAULT_ADMIN_PORT,
            "targetPort": contract.ADMIN_PORT_NAME,
            "protocol": "TCP",
        }
    ]
    players = children["Service/arena"]
    assert [p["targetPort"] for p in players["spec"]["ports"]] == ["http"]
    # Probes stay on the player port.
    container = relay_container(children)
    assert container["readinessProbe"]["httpGet"]["port"] == "http"


TEMPLATE = {
    "metadata": {
        "labels": {"team": "mp", names.LABEL_INSTANCE: "hijack"},
        "annotations": {"a": "b", names.ANNOTATION_CONFIG_HASH: "forged"},
    },
    "spec": {
        "imagePullSecrets": [{"name": "creds"}],
        "nodeSelector": {"pool": "game"},
        "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "game"}],
        "affinity": {"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": []}},
        "topologySpreadConstraints": [
            {"maxSkew": 1, "topologyKey": "zone", "whenUnsatisfiable": "ScheduleAnyway"}
        ],
        "priorityClassName": "game-critical",
        "serviceAccountName": "relay-sa",
        "containers": [{"name": "relay", "resources": {"requests": {"cpu": "2"}}}],
    },
}


def test_template_lands_on_the_relay_pods_and_the_operators_fields_win() -> None:
    plain = build()["Deployment/arena-relay"]["spec"]["template"]
    children = build({"template": TEMPLATE})
    deploy = children["Deployment/arena-relay"]
    pod = deploy["spec"]["template"]
    assert pod["metadata"]["labels"]["team"] == "mp"
    # Identity labels and the config hash stay the operator's: the selector still matches.
    assert pod["metadata"]["labels"][names.LABEL_INSTANCE] == "arena"
    assert deploy["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    assert pod["metadata"]["annotations"]["a"] == "b"
    assert (
        pod["metadata"]["annotations"][names.ANNOTATION_CONFIG_HASH]
        == plain["metadata"]["annotations"][names.ANNOTATION_CONFIG_HASH]
    )
    spec = pod["spec"]
    for key in (
        "imagePullSecrets",
        "nodeSelector",
        "tolerations",
        "affinity",
        "topologySpreadConstraints",
        "priorityClassName",
        "serviceAccountName",
    ):
        assert spec[key] == TEMPLATE["spec"][key], key  # type: ignore[index]
    assert spec["automountServiceAccountToken"] is False
    (container,) = spec["containers"]
    assert container["resources"] == {"requests": {"cpu": "2"}, "limits": {}}
    (plain_container,) = plain["spec"]["containers"]
    for kept in ("name", "image", "ports", "readinessProbe", "livenessProbe", "securityContext"):
        assert container[kept] == plain_container[kept], kept
    assert spec["securityContext"] == plain["spec"]["securityContext"]
    # The Redis pods are not touched by the relay template.
    assert "nodeSelector" not in children["StatefulSet/arena-redis"]["spec"]["template"]["spec"]


def test_redis_template_shapes_the_redis_pods() -> None:
    children = build(
        {
            "redis": {
                "template": {
                    "spec": {
                        "nodeSelector": {"pool": "data"},
                        "containers": [
                            {"name": "redis", "resources": {"limits": {"memory": "2Gi"}}}
                        ],
                    }
                }
            }
        }
    )
    pod = children["StatefulSet/arena-redis"]["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"pool": "data"}
    assert pod["containers"][0]["resources"] == {"requests": {}, "limits": {"memory": "2Gi"}}
    assert pod["containers"][0]["name"] == "redis"
    assert "nodeSelector" not in children["Deployment/arena-relay"]["spec"]["template"]["spec"]


def test_a_template_naming_another_container_is_an_invalid_spec() -> None:
    with pytest.raises(InvalidSpec, match=r"no container 'redis'"):
        parse({"template": {"spec": {"containers": [{"name": "redis"}]}}})
