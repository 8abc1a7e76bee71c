"""Managed Redis with replicas: a StatefulSet per shard, three Sentinels, relays that follow.

The scripts' behaviour (who starts as master, who replicates whom) runs for real in
tests/integration/test_redis_ha.py; here, the shape of every child and field.
"""

import base64
import copy
import hashlib
from datetime import UTC, datetime
from typing import Any

import pytest

from gamecluster import children as children_mod
from gamecluster import names
from gamecluster.children import Owner
from gamecluster.desired import Inputs, desired
from gamecluster.load import sentinel_master
from gamecluster.manifests import redis_access, redis_ha, secrets
from gamecluster.manifests.secrets import RedisPasswords
from gamecluster.redis_auth import check_external, managed_passwords, operator_auth
from gamecluster.spec import InvalidSpec, parse
from gamecluster.status import Observed, compute
from relay import contract

pytestmark = pytest.mark.unit

META = {"name": "arena", "namespace": "games", "uid": "uid-1", "generation": 3}
PASSWORDS = RedisPasswords(
    relay="relay-pw-0123456789",
    operator="operator-pw-0123456789",
    replication="replication-pw-0123456789",
    sentinel="sentinel-pw-0123456789",
    sentinel_auth="sentinel-auth-pw-0123456789",
)
HA = {"redis": {"shards": 2, "replicas": 2}}


def build(
    spec: dict[str, Any] | None = None,
    passwords: RedisPasswords = PASSWORDS,
    meta: dict[str, Any] = META,
) -> dict[str, Any]:
    inputs = Inputs(
        relay_image="img",
        jwt_secret="s3cret",
        redis_passwords=passwords,
        operator_namespace="gamecluster-system",
    )
    return {
        f"{m['kind']}/{m['metadata']['name']}": m
        for m in desired(parse(spec if spec is not None else HA), meta, inputs)
    }


def container(children: dict[str, Any], key: str) -> dict[str, Any]:
    (found,) = children[key]["spec"]["template"]["spec"]["containers"]
    return found  # type: ignore[no-any-return]


def env(found: dict[str, Any]) -> dict[str, Any]:
    return {item["name"]: item.get("value", item.get("valueFrom")) for item in found["env"]}


def decoded(secret: dict[str, Any], key: str) -> str:
    return base64.b64decode(secret["data"][key]).decode()


def test_no_replicas_changes_nothing_for_existing_clusters() -> None:
    two_users = RedisPasswords(PASSWORDS.relay, PASSWORDS.operator)
    before = build({}, two_users)
    assert build({"redis": {"replicas": 0}}, two_users) == before
    assert "StatefulSet/arena-redis" in before
    assert not [key for key in before if "arena-rs" in key or "arena-sent" in key]
    config = before["ConfigMap/arena-relay"]["data"]
    assert contract.ENV_REDIS_SENTINELS not in config
    assert "sentinel://" not in config[contract.ENV_REDIS_URLS]
    acl = decoded(before["Secret/arena-redis-acl"], secrets.ACL_FILE_KEY)
    assert secrets.REPLICATION_USER not in acl and secrets.SENTINEL_USER not in acl


def test_replicas_make_a_statefulset_per_shard_and_three_sentinels_in_apply_order() -> None:
    children = build()
    keys = list(children)
    expected = [
        "Secret/arena-redis",
        "Secret/arena-redis-acl",
        "Service/arena-redis",
        "Service/arena-sent",
        "StatefulSet/arena-rs0",
        "StatefulSet/arena-rs1",
        "StatefulSet/arena-sent",
        "NetworkPolicy/arena-redis",
        "PodDisruptionBudget/arena-redis",
        "NetworkPolicy/arena-sent",
        "PodDisruptionBudget/arena-sent",
    ]
    assert [key for key in keys if key in expected] == expected
    assert "StatefulSet/arena-redis" not in children  # no standalone set beside them
    assert keys.index("StatefulSet/arena-sent") < keys.index("Deployment/arena-relay")
    for key in expected:
        meta = children[key]["metadata"]
        assert meta["ownerReferences"][0]["uid"] == "uid-1"
        assert meta["labels"][names.LABEL_INSTANCE] == "arena"


def test_each_shard_set_has_its_own_selector_and_one_plus_replicas_pods() -> None:
    children = build()
    selectors = []
    for shard in (0, 1):
        sts = children[f"StatefulSet/arena-rs{shard}"]["spec"]
        assert sts["replicas"] == 3
        assert sts["serviceName"] == "arena-redis"  # the shared headless Service's DNS
        assert sts["podManagementPolicy"] == "Parallel"
        selector = sts["selector"]["matchLabels"]
        assert selector[names.LABEL_SHARD] == str(shard)
        labels = sts["template"]["metadata"]["labels"]
        assert selector.items() <= labels.items()
        assert sts["volumeClaimTemplates"][0]["metadata"]["labels"][names.LABEL_SHARD] == str(shard)
        selectors.append(selector)
        anti = sts["template"]["spec"]["affinity"]["podAntiAffinity"]
        term = anti["preferredDuringSchedulingIgnoredDuringExecution"][0]["podAffinityTerm"]
        assert term["labelSelector"]["matchLabels"] == selector
    assert selectors[0] != selectors[1]  # no StatefulSet adopts another shard's pods
    service = children["Service/arena-redis"]["spec"]["selector"]
    assert all(service.items() <= selector.items() for selector in selectors)


def test_a_shard_pod_decides_its_role_by_the_start_script_with_addresses_from_env() -> None:
    redis = container(build(), "StatefulSet/arena-rs1")
    assert redis["command"] == ["sh", "-c", redis_ha.REDIS_START, "redis-start"]
    assert "--aclfile" in redis["args"] and "--port" not in redis["args"]
    assert redis["args"][redis["args"].index("--protected-mode") + 1] == "yes"
    assert "--maxmemory-policy" in redis["args"]
    values = env(redis)
    assert values["REDIS_HOST"] == "$(POD_NAME).arena-redis.games.svc"
    assert values["REDIS_SHARD"] == "shard-1"
    assert values["REDIS_MASTER0"] == "arena-rs1-0.arena-redis.games.svc 6379"
    assert values["REDIS_SENTINELS"] == " ".join(
        f"arena-sent-{i}.arena-sent.games.svc:26379" for i in range(3)
    )
    assert values["REDIS_REPLICATION_PASSWORD"] == {
        "secretKeyRef": {"name": "arena-redis", "key": secrets.REPLICATION_PASSWORD_KEY}
    }
    assert values["POD_NAME"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    # The script never puts a password on a command line: it goes to redis-server's stdin.
    assert "redis-server - " in redis_ha.REDIS_START
    assert "masterauth $REDIS_REPLICATION_PASSWORD" in redis_ha.REDIS_START
    assert f"masteruser {secrets.REPLICATION_USER}" in redis_ha.REDIS_START


def test_sentinels_monitor_every_shard_with_quorum_two() -> None:
    children = build()
    sts = children["StatefulSet/arena-sent"]["spec"]
    assert sts["replicas"] == 3 and sts["serviceName"] == "arena-sent"
    sentinel = container(children, "StatefulSet/arena-sent")
    assert sentinel["command"] == ["sh", "-c", redis_ha.SENTINEL_START, "sentinel-start"]
    values = env(sentinel)
    assert values["SENTINEL_SHARDS"] == (
        "shard-0=arena-rs0-0.arena-redis.games.svc:6379 "
        "shard-1=arena-rs1-0.arena-redis.games.svc:6379"
    )
    assert values["SENTINEL_QUORUM"] == "2"
    assert values["SENTINEL_HOST"] == "$(POD_NAME).arena-sent.games.svc"
    assert values["SENTINEL_PASSWORD"] == {
        "secretKeyRef": {"name": "arena-redis", "key": secrets.SENTINEL_PASSWORD_KEY}
    }
    assert sentinel["securityContext"]["readOnlyRootFilesystem"] is True
    assert sentinel["volumeMounts"] == [{"name": "data", "mountPath": redis_ha.SENTINEL_DIR}]
    assert sts["template"]["spec"]["volumes"] == [{"name": "data", "emptyDir": {}}]
    assert sts["template"]["spec"]["automountServiceAccountToken"] is False
    for line in ("resolve-hostnames yes", "announce-hostnames yes"):
        assert f"sentinel {line}" in redis_ha.SENTINEL_START
    assert f"auth-user $name {secrets.SENTINEL_USER}" in redis_ha.SENTINEL_START
    service = children["Service/arena-sent"]["spec"]
    assert service["clusterIP"] == "None" and service["ports"][0]["port"] == 26379
    assert service["selector"] == sts["selector"]["matchLabels"]


def test_relays_find_each_master_through_the_sentinels_and_secrets_stay_in_secrets() -> None:
    children = build()
    config = children["ConfigMap/arena-relay"]["data"]
    assert config[contract.ENV_REDIS_URLS] == (
        "shard-0=sentinel://shard-0,shard-1=sentinel://shard-1"
    )
    assert config[contract.ENV_REDIS_SENTINELS] == ",".join(
        f"arena-sent-{i}.arena-sent.games.svc:26379" for i in range(3)
    )
    relay = env(container(children, "Deployment/arena-relay"))
    assert relay[contract.ENV_REDIS_PASSWORD] == {
        "secretKeyRef": {"name": "arena-redis", "key": secrets.PASSWORD_KEY}
    }
    text = str({k: v for k, v in children.items() if k != "Secret/arena-redis"})
    for password in (PASSWORDS.relay, PASSWORDS.operator, PASSWORDS.replication):
        assert password is not None and password not in text
    assert PASSWORDS.sentinel is not None and PASSWORDS.sentinel not in text


def test_the_acl_file_adds_a_replication_and_a_sentinel_user_with_only_their_commands() -> None:
    children = build()
    secret = children["Secret/arena-redis"]
    assert decoded(secret, secrets.REPLICATION_PASSWORD_KEY) == PASSWORDS.replication
    assert decoded(secret, secrets.SENTINEL_PASSWORD_KEY) == PASSWORDS.sentinel
    lines = decoded(children["Secret/arena-redis-acl"], secrets.ACL_FILE_KEY).splitlines()
    users = {line.split()[1]: line.split() for line in lines}
    replication = users[secrets.REPLICATION_USER]
    assert replication[-len(secrets.REPLICATION_ACL_RULES) :] == list(secrets.REPLICATION_ACL_RULES)
    assert {"+psync", "+replconf", "+ping", "-@all"} <= set(replication)
    sentinel = users[secrets.SENTINEL_USER]
    assert {"+slaveof", "+role", "+info", "+client|kill", "&__sentinel__:hello"} <= set(sentinel)
    for rules in (replication, sentinel):
        assert "resetkeys" in rules and not any(word.startswith("~") for word in rules)
        assert not {"+@all", "allkeys", "allchannels"} & set(rules)
    assert sum(word.startswith("#") for word in sentinel) == 1  # a digest, not the password


def test_network_policies_admit_replication_sentinels_relays_and_the_operator() -> None:
    children = build()

    def components(key: str) -> list[str]:
        (rule,) = children[key]["spec"]["ingress"]
        found = []
        for peer in rule["from"]:
            if "podSelector" in peer:
                found.append(peer["podSelector"]["matchLabels"][names.LABEL_COMPONENT])
            else:
                found.append(
                    peer["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
                )
        return found

    expected = ["relay", "redis", names.COMPONENT_SENTINEL, "gamecluster-system"]
    assert components("NetworkPolicy/arena-redis") == expected
    assert components("NetworkPolicy/arena-sent") == expected
    (rule,) = children["NetworkPolicy/arena-sent"]["spec"]["ingress"]
    assert rule["ports"] == [{"protocol": "TCP", "port": 26379}]
    pdb = children["PodDisruptionBudget/arena-sent"]["spec"]
    assert pdb["maxUnavailable"] == 1
    assert pdb["selector"]["matchLabels"][names.LABEL_COMPONENT] == names.COMPONENT_SENTINEL


def test_every_name_fits_for_the_longest_gamecluster_name() -> None:
    longest = "a" * names.MAX_NAME_LENGTH
    children = build({"redis": {"shards": 64, "replicas": 5}}, meta={**META, "name": longest})
    for key, child in children.items():
        if child["kind"] == "StatefulSet":
            name = child["metadata"]["name"]
            assert len(f"{name}-0123456789") <= 63, key  # controller-revision-hash label
            assert len(f"{name}-{child['spec']['replicas'] - 1}") <= 63  # pod name label


def test_the_redis_template_schedules_the_sentinels_too() -> None:
    spec = copy.deepcopy(HA)
    spec["redis"]["template"] = {"spec": {"nodeSelector": {"pool": "redis"}}}
    children = build(spec)
    for key in ("StatefulSet/arena-rs0", "StatefulSet/arena-sent"):
        assert children[key]["spec"]["template"]["spec"]["nodeSelector"] == {"pool": "redis"}


@pytest.mark.parametrize("replicas", [-1, 6])
def test_replicas_are_bounded(replicas: int) -> None:
    with pytest.raises(InvalidSpec, match="replicas"):
        parse({"redis": {"replicas": replicas}})


def test_shard_sets_are_found_by_name_for_pruning() -> None:
    owner = Owner("arena", "games", "u")
    assert children_mod.is_shard_set(owner, "arena-rs0")
    assert children_mod.is_shard_set(owner, "arena-rs63")
    assert not children_mod.is_shard_set(owner, "arena-redis")
    assert not children_mod.is_shard_set(owner, "arena-rsx")
    assert not children_mod.is_shard_set(Owner("are", "games", "u"), "arena-rs0")
    static = {ref.name for ref in children_mod.every_possible_child(owner)}
    assert "arena-sent" in static and "arena-rs0" not in static


class Secrets:
    def __init__(self, stored: dict[str, Any] | None) -> None:
        self.stored = stored

    def get(self, ref: Any) -> dict[str, Any] | None:
        return self.stored


def test_passwords_for_replication_and_sentinel_are_generated_and_required() -> None:
    owner = Owner("arena", "games", "u")
    counter = iter(range(100))
    fresh = managed_passwords(Secrets(None), owner, lambda: f"pw{next(counter)}", replicas=True)  # type: ignore[arg-type]
    assert not isinstance(fresh, Exception) and not hasattr(fresh, "reason")
    passwords, exists = fresh  # type: ignore[misc]
    assert exists is False and passwords.replication and passwords.sentinel
    assert (
        len({passwords.relay, passwords.operator, passwords.replication, passwords.sentinel}) == 4
    )
    two_keys = {"data": {"password": "cA==", "operatorPassword": "bw=="}}
    problem = managed_passwords(Secrets(two_keys), owner, lambda: "x", replicas=True)  # type: ignore[arg-type]
    assert getattr(problem, "reason", None) == "RedisSecretInvalid"
    assert secrets.REPLICATION_PASSWORD_KEY in getattr(problem, "message", "")


def test_the_load_reader_follows_the_sentinels() -> None:
    assert sentinel_master("shard-0=sentinel://shard-0") == "shard-0"
    assert sentinel_master("sentinel://gc/2") == "gc"
    assert sentinel_master("redis://arena-redis-0.arena-redis.games.svc:6379") is None
    owner = Owner("arena", "games", "u")
    stored = {"data": {"operatorPassword": base64.b64encode(b"op").decode()}}
    auth = operator_auth(Secrets(stored), parse(HA), owner)  # type: ignore[arg-type]
    assert auth is not None and auth.username == contract.OPERATOR_REDIS_USER
    assert auth.sentinels == tuple(
        (f"arena-sent-{i}.arena-sent.games.svc", 26379) for i in range(3)
    )
    plain = operator_auth(Secrets(stored), parse({}), owner)  # type: ignore[arg-type]
    assert plain is not None and plain.sentinels == ()


def sts(ready: int) -> dict[str, Any]:
    return {"metadata": {"generation": 1}, "status": {"readyReplicas": ready}}


@pytest.mark.parametrize(
    ("shard_sets", "sentinels", "ready_shards", "ready"),
    [
        ((sts(3), sts(1)), sts(2), 2, "True"),  # a replica down: still serving
        ((sts(3), sts(0)), sts(3), 1, "False"),  # a shard with no ready pod
        ((sts(3), sts(3)), sts(1), 2, "False"),  # no Sentinel quorum: no failover possible
        ((sts(3), None), sts(3), 1, "False"),  # not read
    ],
)
def test_redis_ready_needs_a_ready_pod_per_shard_and_a_sentinel_quorum(
    shard_sets: tuple[Any, ...], sentinels: dict[str, Any], ready_shards: int, ready: str
) -> None:
    status = compute(
        parse(HA),
        META,
        Observed(None, None, shard_sets=shard_sets, sentinels=sentinels),
        previous={},
        autoscaled_replicas=None,
        now=datetime(2025, 1, 1, tzinfo=UTC),
    )
    assert status["redis"] == {"shards": 2, "readyShards": ready_shards}
    (condition,) = [c for c in status["conditions"] if c["type"] == "RedisReady"]
    assert condition["status"] == ready
    assert "Sentinels" in condition["message"]


SENTINEL_AUTH_REF = {
    "secretKeyRef": {
        "name": "arena-redis",
        "key": secrets.SENTINEL_AUTH_PASSWORD_KEY,
        "optional": True,
    }
}


def test_the_sentinels_require_a_generated_password_that_everyone_gets_from_the_secret() -> None:
    children = build()
    assert decoded(children["Secret/arena-redis"], secrets.SENTINEL_AUTH_PASSWORD_KEY) == (
        PASSWORDS.sentinel_auth
    )
    # The Sentinels require it (requirepass, rendered into their config file, never on a
    # command line) and their probe logs in with it; the Redis pods' start script asks the
    # Sentinels with it; the relays get it by secretKeyRef, never through the ConfigMap.
    sentinel = container(children, "StatefulSet/arena-sent")
    assert env(sentinel)["SENTINEL_AUTH_PASSWORD"] == SENTINEL_AUTH_REF
    assert 'echo "requirepass $SENTINEL_AUTH_PASSWORD"' in redis_ha.SENTINEL_START
    probe = sentinel["readinessProbe"]["exec"]["command"][2]
    assert 'export REDISCLI_AUTH="$SENTINEL_AUTH_PASSWORD"' in probe
    for shard in (0, 1):
        redis = container(children, f"StatefulSet/arena-rs{shard}")
        assert env(redis)["SENTINEL_AUTH_PASSWORD"] == SENTINEL_AUTH_REF
    assert 'REDISCLI_AUTH="$SENTINEL_AUTH_PASSWORD" timeout 3 redis-cli' in redis_ha.REDIS_START
    relay = env(container(children, "Deployment/arena-relay"))
    assert relay[contract.ENV_REDIS_SENTINEL_PASSWORD] == SENTINEL_AUTH_REF
    text = str({k: v for k, v in children.items() if k != "Secret/arena-redis"})
    assert PASSWORDS.sentinel_auth is not None and PASSWORDS.sentinel_auth not in text
    # Without replicas there are no Sentinels, and nothing about their password.
    plain = build({}, RedisPasswords(PASSWORDS.relay, PASSWORDS.operator))
    relay = env(container(plain, "Deployment/arena-relay"))
    assert contract.ENV_REDIS_SENTINEL_PASSWORD not in relay
    assert secrets.SENTINEL_AUTH_PASSWORD_KEY not in plain["Secret/arena-redis"]["data"]


def test_a_new_or_rotated_sentinel_password_rolls_the_pods_and_an_old_secret_keeps_its_digest() -> (
    None
):
    without = RedisPasswords(
        PASSWORDS.relay, PASSWORDS.operator, None, PASSWORDS.replication, PASSWORDS.sentinel
    )
    digests = {
        passwords.digest()
        for passwords in (
            without,
            PASSWORDS,
            RedisPasswords(**{**PASSWORDS.__dict__, "sentinel_auth": "rotated-0123456789"}),
        )
    }
    assert len(digests) == 3
    # A Secret from before the key existed: the digest it had then (no pod rolls on upgrade).
    assert without.digest() == hashlib.sha256(secrets.acl_file(without).encode()).hexdigest()[:16]
    annotation = redis_access.ANNOTATION_REDIS_CREDENTIALS
    for key in ("StatefulSet/arena-sent", "StatefulSet/arena-rs0", "Deployment/arena-relay"):
        template = build()[key]["spec"]["template"]["metadata"]
        assert template["annotations"][annotation] == PASSWORDS.digest()


def test_the_sentinel_password_is_generated_read_back_optional_and_given_to_the_load_reader() -> (
    None
):
    owner = Owner("arena", "games", "u")
    counter = iter(range(100))
    fresh = managed_passwords(Secrets(None), owner, lambda: f"pw{next(counter)}", replicas=True)  # type: ignore[arg-type]
    passwords, exists = fresh  # type: ignore[misc]
    assert exists is False and passwords.sentinel_auth == "pw4"
    stored = {
        "data": {
            key: base64.b64encode(value.encode()).decode()
            for key, value in (
                (secrets.PASSWORD_KEY, "r"),
                (secrets.OPERATOR_PASSWORD_KEY, "op"),
                (secrets.REPLICATION_PASSWORD_KEY, "rep"),
                (secrets.SENTINEL_PASSWORD_KEY, "sen"),
                (secrets.SENTINEL_AUTH_PASSWORD_KEY, "sauth\n"),
            )
        }
    }
    read, exists = managed_passwords(Secrets(stored), owner, lambda: "x", replicas=True)  # type: ignore[arg-type, misc]
    assert exists is True and read.sentinel_auth == "sauth"
    auth = operator_auth(Secrets(stored), parse(HA), owner)  # type: ignore[arg-type]
    assert auth is not None and auth.sentinel_password == "sauth"
    assert "sauth" not in repr(auth)
    # An older Secret without the key: no problem, the Sentinels stay open.
    del stored["data"][secrets.SENTINEL_AUTH_PASSWORD_KEY]
    read, exists = managed_passwords(Secrets(stored), owner, lambda: "x", replicas=True)  # type: ignore[arg-type, misc]
    assert read.sentinel_auth is None
    auth = operator_auth(Secrets(stored), parse(HA), owner)  # type: ignore[arg-type]
    assert auth is not None and auth.sentinel_password is None


def test_an_external_redis_behind_sentinels_gets_their_addresses_and_password_from_the_secret() -> (
    None
):
    external = {
        "urls": ["sentinel://gc", "sentinel://other/2"],
        "sentinels": ["s1.example:26379", "s2.example:26379"],
        "secretRef": {
            "name": "cloud",
            "sentinelUsernameKey": "sentinel-user",
            "sentinelPasswordKey": "sentinel-password",
        },
    }
    spec = {"redis": {"mode": "external", "external": external}}
    children = build(spec)
    assert not [key for key in children if "arena-sent" in key or "arena-rs" in key]
    config = children["ConfigMap/arena-relay"]["data"]
    assert config[contract.ENV_REDIS_URLS] == "sentinel://gc,sentinel://other/2"
    assert config[contract.ENV_REDIS_SENTINELS] == "s1.example:26379,s2.example:26379"
    relay = env(container(children, "Deployment/arena-relay"))
    assert relay[contract.ENV_REDIS_SENTINEL_USERNAME] == {
        "secretKeyRef": {"name": "cloud", "key": "sentinel-user"}
    }
    assert relay[contract.ENV_REDIS_SENTINEL_PASSWORD] == {
        "secretKeyRef": {"name": "cloud", "key": "sentinel-password"}
    }
    # The load reader asks the same Sentinels with the same credentials.
    owner = Owner("arena", "games", "u")
    stored = {
        "data": {
            key: base64.b64encode(value.encode()).decode()
            for key, value in (
                ("password", "redis-pw"),
                ("sentinel-user", "watcher"),
                ("sentinel-password", "sentinel-pw"),
            )
        }
    }
    auth = operator_auth(Secrets(stored), parse(spec), owner)  # type: ignore[arg-type]
    assert auth is not None
    assert auth.sentinels == (("s1.example", 26379), ("s2.example", 26379))
    assert (auth.sentinel_username, auth.sentinel_password) == ("watcher", "sentinel-pw")
    assert "sentinel-pw" not in repr(auth)
    # A Secret without the named key is a problem the reconciler reports and retries.
    del stored["data"]["sentinel-password"]
    problem = check_external(Secrets(stored), parse(spec), owner)  # type: ignore[arg-type]
    assert problem is not None and problem.reason == "RedisSecretKeyMissing"
    assert "'sentinel-password'" in problem.message


def test_an_external_redis_behind_tls_sentinels_gets_tls_and_the_ca_for_them() -> None:
    """sentinelTLS: the relays and the load reader ask the Sentinels and the masters over
    TLS, against the CA of the Secret, though no URL is rediss:// (run for real in
    test_redis_sentinel_tls.py); without it, neither does."""
    external = {
        "urls": ["sentinel://gc"],
        "sentinels": ["s1.example:26379"],
        "sentinelTLS": True,
        "secretRef": {"name": "cloud", "caKey": "ca.crt"},
    }
    spec = {"redis": {"mode": "external", "external": external}}
    relay = env(container(build(spec), "Deployment/arena-relay"))
    assert relay[contract.ENV_REDIS_SENTINEL_TLS] == "true"
    assert relay[contract.ENV_REDIS_CA_FILE] == "/etc/gamecluster/redis-ca/ca.crt"
    stored = {"data": {"ca.crt": base64.b64encode(b"CA").decode()}}
    owner = Owner("arena", "games", "u")
    auth = operator_auth(Secrets(stored), parse(spec), owner)  # type: ignore[arg-type]
    assert auth is not None and (auth.sentinel_tls, auth.ca_pem) == (True, "CA")
    # Without the flag (and so without the CA, which would have nothing to verify).
    plain = {"redis": {"mode": "external", "external": {**external, "sentinelTLS": False}}}
    del plain["redis"]["external"]["secretRef"]
    assert contract.ENV_REDIS_SENTINEL_TLS not in env(
        container(build(plain), "Deployment/arena-relay")
    )
    auth = operator_auth(Secrets(stored), parse(plain), owner)  # type: ignore[arg-type]
    assert auth is not None and not auth.sentinel_tls
    with pytest.raises(InvalidSpec, match="caKey is set but no URL uses rediss://"):
        parse(
            {
                "redis": {
                    "mode": "external",
                    "external": {**external, "sentinelTLS": False},
                }
            }
        )


TLS_HA = {"redis": {"shards": 2, "replicas": 1, "tls": {"secretName": "arena-tls"}}}
CERTIFICATE = {"tls.crt": "CERT", "tls.key": "KEY", "ca.crt": "CA"}


def test_with_tls_servers_replication_sentinels_probes_and_relays_use_tls_only() -> None:
    """The TLS wiring of a shard with replicas (run for real in test_redis_ha.py)."""
    inputs = Inputs(
        relay_image="img", jwt_secret="s3cret", redis_passwords=PASSWORDS, redis_tls=CERTIFICATE
    )
    built = {
        f"{m['kind']}/{m['metadata']['name']}": m for m in desired(parse(TLS_HA), META, inputs)
    }
    mount = {"name": "tls", "mountPath": "/etc/gamecluster/redis-tls", "readOnly": True}
    for key in ("StatefulSet/arena-rs0", "StatefulSet/arena-rs1", "StatefulSet/arena-sent"):
        pod = built[key]["spec"]["template"]
        found = container(built, key)
        env = {item["name"]: item.get("value") for item in found["env"]}
        # Every redis-cli of the scripts and probes speaks TLS, checking the chain.
        assert env["REDIS_CLI_TLS"] == "--tls --cacert /etc/gamecluster/redis-tls/ca.crt"
        assert mount in found["volumeMounts"]
        assert {"name": "tls", "secret": {"secretName": "arena-tls", "defaultMode": 0o440}} in pod[
            "spec"
        ]["volumes"]
        # A renewed certificate rolls the servers and the Sentinels.
        assert "gamecluster.io/redis-tls" in pod["metadata"]["annotations"]
        assert "${REDIS_CLI_TLS:-}" in found["readinessProbe"]["exec"]["command"][2] or (
            "--tls" in found["readinessProbe"]["exec"]["command"][2]
        )
        # The start scripts write `port 0` + `tls-port`; the certificate comes as options.
        assert env["SENTINEL_TLS" if key == "StatefulSet/arena-sent" else "REDIS_TLS"] == "yes"
        args = found["args"]
        assert args[args.index("--tls-replication") + 1] == "yes"
        assert args[args.index("--tls-cert-file") + 1] == "/etc/gamecluster/redis-tls/tls.crt"
        assert "--port" not in args
    assert "port 0\ntls-port $REDIS_PORT" in redis_ha.REDIS_START
    assert 'echo "tls-port $SENTINEL_PORT"' in redis_ha.SENTINEL_START
    relay = {item["name"]: item for item in container(built, "Deployment/arena-relay")["env"]}
    assert relay[contract.ENV_REDIS_SENTINEL_TLS]["value"] == "true"
    assert relay[contract.ENV_REDIS_CA_FILE]["value"] == "/etc/gamecluster/redis-ca/ca.crt"
    # Without TLS, none of it.
    plain = build(HA)
    for key in ("StatefulSet/arena-rs0", "StatefulSet/arena-sent"):
        names_ = {item["name"] for item in container(plain, key)["env"]}
        assert not names_ & {"REDIS_TLS", "REDIS_CLI_TLS", "SENTINEL_TLS"}
    assert "args" not in container(plain, "StatefulSet/arena-sent")  # as before TLS existed
    plain_relay = {item["name"] for item in container(plain, "Deployment/arena-relay")["env"]}
    assert contract.ENV_REDIS_SENTINEL_TLS not in plain_relay


def test_with_tls_the_load_reader_speaks_tls_to_the_sentinels() -> None:
    owner = Owner("arena", "games", "u")
    stored = {
        "data": {
            key: base64.b64encode(value.encode()).decode()
            for key, value in ({"operatorPassword": "op"} | CERTIFICATE).items()
        }
    }
    auth = operator_auth(Secrets(stored), parse(TLS_HA), owner)  # type: ignore[arg-type]
    assert auth is not None and auth.sentinel_tls and auth.ca_pem == "CA"
    plain = operator_auth(Secrets(stored), parse(HA), owner)  # type: ignore[arg-type]
    assert plain is not None and not plain.sentinel_tls
