"""A managed Redis is secured and bounded; an external one gets credentials from a Secret."""

import base64
import json
from typing import Any

import pytest

from gamecluster import children as children_mod
from gamecluster.children import Owner
from gamecluster.desired import Inputs, desired
from gamecluster.manifests import redis_access, redis_tls, secrets
from gamecluster.manifests.secrets import RedisPasswords
from gamecluster.spec import parse
from gamecluster.units import quantity_bytes
from relay import contract
from relay.config import RedisEndpoint

pytestmark = pytest.mark.unit

META = {"name": "arena", "namespace": "games", "uid": "uid-1", "generation": 3}
PASSWORDS = RedisPasswords(relay="relay-pw-0123456789", operator="operator-pw-0123456789")


def build(
    spec: dict[str, Any] | None = None,
    *,
    passwords: RedisPasswords = PASSWORDS,
    exists: bool = False,
    operator_namespace: str | None = "gamecluster-system",
) -> dict[str, Any]:
    inputs = Inputs(
        relay_image="img",
        jwt_secret="s3cret",
        redis_passwords=passwords,
        redis_secret_exists=exists,
        operator_namespace=operator_namespace,
    )
    return {
        f"{m['kind']}/{m['metadata']['name']}": m for m in desired(parse(spec or {}), META, inputs)
    }


def redis_container(children: dict[str, Any]) -> dict[str, Any]:
    (container,) = children["StatefulSet/arena-redis"]["spec"]["template"]["spec"]["containers"]
    return container  # type: ignore[no-any-return]


def relay_env(children: dict[str, Any]) -> dict[str, Any]:
    (container,) = children["Deployment/arena-relay"]["spec"]["template"]["spec"]["containers"]
    return {item["name"]: item for item in container["env"]}


def decoded(secret: dict[str, Any], key: str) -> str:
    return base64.b64decode(secret["data"][key]).decode()


def test_the_password_secret_is_created_once_and_never_applied_again() -> None:
    fresh = build()["Secret/arena-redis"]
    assert decoded(fresh, secrets.PASSWORD_KEY) == PASSWORDS.relay
    assert decoded(fresh, secrets.OPERATOR_PASSWORD_KEY) == PASSWORDS.operator
    assert "Secret/arena-redis" not in build(exists=True)  # a user's rotation stays
    pruned = {ref.name for ref in children_mod.every_possible_child(Owner("arena", "games", "u"))}
    assert "arena-redis-acl" in pruned and "arena-redis" in pruned  # (the Service)
    kinds = {
        (ref.kind, ref.name)
        for ref in children_mod.every_possible_child(Owner("arena", "games", "u"))
    }
    assert ("Secret", "arena-redis") not in kinds  # never pruned while its owner exists


def test_the_acl_file_has_the_default_user_off_and_the_rules_from_the_contract() -> None:
    children = build(passwords=RedisPasswords("new-pw", "op-pw", previous="old-pw"))
    acl = decoded(children["Secret/arena-redis-acl"], secrets.ACL_FILE_KEY)
    lines = acl.splitlines()
    assert lines[0] == secrets.DEFAULT_USER
    relay = lines[1].split()
    assert relay[:4] == ["user", contract.RELAY_REDIS_USER, "reset", "on"]
    assert relay[-len(contract.RELAY_ACL_RULES) :] == list(contract.RELAY_ACL_RULES)
    assert sum(word.startswith("#") for word in relay) == 2  # new and previous accepted
    operator = lines[2].split()
    assert operator[1] == contract.OPERATOR_REDIS_USER
    assert operator[-len(contract.OPERATOR_ACL_RULES) :] == list(contract.OPERATOR_ACL_RULES)
    for password in ("new-pw", "old-pw", "op-pw"):
        assert password not in acl  # only SHA-256 digests
    assert "+flushall" not in acl and "+config" not in acl and "~*" not in relay


def test_no_password_is_in_any_manifest_but_the_password_secret() -> None:
    children = build()
    del children["Secret/arena-redis"]
    text = json.dumps(children)
    for password in (PASSWORDS.relay, PASSWORDS.operator):
        assert password not in text
        assert base64.b64encode(password.encode()).decode() not in text
    assert "REDIS" not in json.dumps(children["ConfigMap/arena-relay"]["data"]).replace(
        contract.ENV_REDIS_URLS, ""
    )


def test_managed_redis_runs_with_acl_protected_mode_and_a_bounded_noeviction_memory() -> None:
    container = redis_container(build())
    args = container["args"]
    assert args[args.index("--protected-mode") + 1] == "yes"
    assert args[args.index("--aclfile") + 1] == "/etc/gamecluster/redis-acl/users.acl"
    assert args[args.index("--maxmemory-policy") + 1] == "noeviction"
    assert int(args[args.index("--maxmemory") + 1]) == int(256 * 2**20 * 0.75)  # of 256Mi
    probe = " ".join(container["readinessProbe"]["exec"]["command"])
    assert f"--user {contract.OPERATOR_REDIS_USER}" in probe and "grep -q PONG" in probe
    (auth,) = container["env"]
    assert auth["name"] == "REDISCLI_AUTH"
    assert auth["valueFrom"]["secretKeyRef"] == {"name": "arena-redis", "key": "operatorPassword"}
    acl_mount = {"name": "acl", "mountPath": "/etc/gamecluster/redis-acl", "readOnly": True}
    assert acl_mount in container["volumeMounts"]


def test_the_acl_file_is_mounted_where_no_redis_image_owns_the_directory() -> None:
    """Found on a real kubelet with an image of Debian's redis-server: /etc/redis is mode 2770
    for the package's redis user, so the pod's uid could not open /etc/redis/acl/users.acl.
    The file is group-readable for the pod's fsGroup and holds only password digests."""
    children = build()
    pod = children["StatefulSet/arena-redis"]["spec"]["template"]["spec"]
    (mount,) = [m for m in pod["containers"][0]["volumeMounts"] if m["name"] == "acl"]
    assert not mount["mountPath"].startswith("/etc/redis")
    (acl,) = [v for v in pod["volumes"] if v["name"] == "acl"]
    assert acl["secret"]["defaultMode"] == 0o440 and pod["securityContext"]["fsGroup"] == 999
    acl_file = base64.b64decode(children["Secret/arena-redis-acl"]["data"]["users.acl"]).decode()
    assert PASSWORDS.relay not in acl_file and PASSWORDS.operator not in acl_file


@pytest.mark.parametrize(
    ("redis", "expected"),
    [
        ({"maxMemory": "100Mi"}, 100 * 2**20),
        ({"maxMemory": 5000000}, 5000000),
        ({"resources": {"limits": {"memory": "1Gi"}}}, int(2**30 * 0.75)),
        ({"resources": {"requests": {"memory": "2G"}}}, int(2e9 * 0.75)),
    ],
)
def test_max_memory_is_the_spec_or_derived_from_the_memory_limit(
    redis: dict[str, Any], expected: int
) -> None:
    args = redis_container(build({"redis": redis}))["args"]
    assert int(args[args.index("--maxmemory") + 1]) == expected


def test_no_memory_limit_and_no_max_memory_leaves_redis_unbounded_but_policy_set() -> None:
    args = redis_container(build({"redis": {"resources": {}, "maxMemoryPolicy": "volatile-lru"}}))[
        "args"
    ]
    assert "--maxmemory" not in args
    assert args[args.index("--maxmemory-policy") + 1] == "volatile-lru"


def test_quantities_parse_like_kubernetes() -> None:
    assert quantity_bytes("256Mi") == 268435456
    assert quantity_bytes("1.5Gi") == 1610612736
    assert quantity_bytes("1e3") == 1000
    assert quantity_bytes("128974848") == 128974848
    with pytest.raises(ValueError, match="not a Kubernetes quantity"):
        quantity_bytes("12 apples")


def test_persistence_is_on_by_default() -> None:
    sts = build()["StatefulSet/arena-redis"]["spec"]
    (claim,) = sts["volumeClaimTemplates"]
    assert claim["spec"]["resources"] == {"requests": {"storage": "1Gi"}}


def test_relays_get_the_password_by_secret_key_ref_and_the_user_by_name() -> None:
    env = relay_env(build())
    assert env[contract.ENV_REDIS_USERNAME]["value"] == contract.RELAY_REDIS_USER
    assert env[contract.ENV_REDIS_PASSWORD]["valueFrom"]["secretKeyRef"] == {
        "name": "arena-redis",
        "key": "password",
    }


def test_a_rotated_password_rolls_redis_and_relays_and_nothing_else_does() -> None:
    def digests(children: dict[str, Any]) -> tuple[str, str]:
        key = redis_access.ANNOTATION_REDIS_CREDENTIALS
        sts = children["StatefulSet/arena-redis"]["spec"]["template"]["metadata"]
        relay = children["Deployment/arena-relay"]["spec"]["template"]["metadata"]
        return sts["annotations"][key], relay["annotations"][key]

    before = digests(build())
    assert before[0] == before[1]
    assert digests(build({"replicas": 7}, exists=True)) == before
    rotated = RedisPasswords("new", PASSWORDS.operator, previous=PASSWORDS.relay)
    after = digests(build(passwords=rotated, exists=True))
    assert after[0] != before[0] and after[0] == after[1]


def test_only_this_clusters_relays_and_the_operator_namespace_reach_redis() -> None:
    policy = build()["NetworkPolicy/arena-redis"]["spec"]
    assert policy["podSelector"]["matchLabels"] == {
        "app.kubernetes.io/instance": "arena",
        "app.kubernetes.io/component": "redis",
    }
    assert policy["policyTypes"] == ["Ingress"]
    (rule,) = policy["ingress"]
    assert rule["ports"] == [{"protocol": "TCP", "port": 6379}]
    assert rule["from"] == [
        {
            "podSelector": {
                "matchLabels": {
                    "app.kubernetes.io/instance": "arena",
                    "app.kubernetes.io/component": "relay",
                }
            }
        },
        {
            "namespaceSelector": {
                "matchLabels": {"kubernetes.io/metadata.name": "gamecluster-system"}
            }
        },
    ]
    unknown = build(operator_namespace=None)["NetworkPolicy/arena-redis"]["spec"]
    assert len(unknown["ingress"][0]["from"]) == 1  # never "every namespace"


def test_redis_has_a_disruption_budget_of_one_pod() -> None:
    pdb = build()["PodDisruptionBudget/arena-redis"]["spec"]
    assert pdb["maxUnavailable"] == 1
    assert pdb["selector"]["matchLabels"]["app.kubernetes.io/component"] == "redis"


def test_external_redis_credentials_and_ca_come_from_the_named_secret() -> None:
    external = {
        "urls": ["rediss://a:6380/0"],
        "secretRef": {"name": "cloud", "usernameKey": "user", "caKey": "ca.crt"},
    }
    children = build({"redis": {"mode": "external", "external": external}})
    assert not any(
        key.endswith("arena-redis") or key.endswith("arena-redis-acl") for key in children
    )
    env = relay_env(children)
    assert env[contract.ENV_REDIS_USERNAME]["valueFrom"]["secretKeyRef"] == {
        "name": "cloud",
        "key": "user",
    }
    assert env[contract.ENV_REDIS_PASSWORD]["valueFrom"]["secretKeyRef"] == {
        "name": "cloud",
        "key": "password",
    }
    assert env[contract.ENV_REDIS_CA_FILE]["value"] == "/etc/gamecluster/redis-ca/ca.crt"
    pod = children["Deployment/arena-relay"]["spec"]["template"]["spec"]
    assert {
        "name": "redis-ca",
        "secret": {"secretName": "cloud", "items": [{"key": "ca.crt", "path": "ca.crt"}]},
    } in pod["volumes"]
    assert children["ConfigMap/arena-relay"]["data"][contract.ENV_REDIS_URLS] == (
        "rediss://a:6380/0"
    )


CERTIFICATE = {"tls.crt": "CERT", "tls.key": "KEY", "ca.crt": "CA"}


def build_tls(certificate: dict[str, str] = CERTIFICATE) -> dict[str, Any]:
    inputs = Inputs(
        relay_image="img", jwt_secret="s3cret", redis_passwords=PASSWORDS, redis_tls=certificate
    )
    spec = parse({"redis": {"shards": 2, "tls": {"secretName": "arena-tls"}}})
    return {f"{m['kind']}/{m['metadata']['name']}": m for m in desired(spec, META, inputs)}


def test_managed_tls_serves_tls_only_and_relays_verify_with_the_secrets_ca() -> None:
    children = build_tls()
    container = redis_container(children)
    args = container["args"]
    assert args[args.index("--port") + 1] == "0"  # no plain port beside the TLS one
    assert args[args.index("--tls-port") + 1] == str(children_mod.REDIS_PORT)
    assert args[args.index("--tls-auth-clients") + 1] == "no"  # clients log in by password
    assert f"{redis_tls.DIR}/tls.key" in args
    probe = container["readinessProbe"]["exec"]["command"][-1]
    assert f"--tls --cacert {redis_tls.DIR}/ca.crt" in probe
    pod = children["StatefulSet/arena-redis"]["spec"]["template"]["spec"]
    (volume,) = [v for v in pod["volumes"] if v["name"] == redis_tls.VOLUME]
    assert volume["secret"] == {"secretName": "arena-tls", "defaultMode": 0o440}
    urls = children["ConfigMap/arena-relay"]["data"][contract.ENV_REDIS_URLS].split(",")
    assert len(urls) == 2 and all(url.startswith("rediss://") for url in urls)
    env = relay_env(children)
    ca_file = env[contract.ENV_REDIS_CA_FILE]["value"]
    relay_pod = children["Deployment/arena-relay"]["spec"]["template"]["spec"]
    (ca,) = [v for v in relay_pod["volumes"] if v["name"] == redis_access.CA_VOLUME]
    assert ca["secret"]["secretName"] == "arena-tls"
    assert ca["secret"]["items"] == [{"key": "ca.crt", "path": ca_file.rsplit("/", 1)[1]}]
    assert "CERT" not in json.dumps(children) and "KEY" not in json.dumps(children)


def test_turning_tls_on_moves_no_room() -> None:
    """Shards are placed by name, host:port without the scheme: same names with TLS."""
    plain = build({"redis": {"shards": 3}})["ConfigMap/arena-relay"]["data"]
    secured = build_tls()["ConfigMap/arena-relay"]["data"]

    def names(data: dict[str, str], shards: int) -> list[str]:
        return [RedisEndpoint.parse(u).name for u in data[contract.ENV_REDIS_URLS].split(",")][
            :shards
        ]

    assert names(plain, 2) == names(secured, 2)


def test_a_renewed_certificate_rolls_redis_and_not_the_relays() -> None:
    """Redis reads its certificate at start; relays read the CA file on each connection."""
    before, after = build_tls(), build_tls({**CERTIFICATE, "tls.crt": "CERT2", "tls.key": "K2"})

    def template(children: dict[str, Any], name: str) -> dict[str, Any]:
        return children[name]["spec"]["template"]  # type: ignore[no-any-return]

    redis_before = template(before, "StatefulSet/arena-redis")["metadata"]["annotations"]
    redis_after = template(after, "StatefulSet/arena-redis")["metadata"]["annotations"]
    assert redis_before[redis_tls.ANNOTATION] != redis_after[redis_tls.ANNOTATION]
    assert template(before, "Deployment/arena-relay") == template(after, "Deployment/arena-relay")
