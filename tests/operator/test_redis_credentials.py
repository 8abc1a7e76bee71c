"""The managed Redis's password Secret through the operator as it runs (kopf, SSA, kmock):
generated once, never overwritten, and a user's rotation rolls Redis and the relays."""

import base64
from typing import Any

import pytest
from kopf_harness import NAMESPACE, Harness, SSAEmulator

from gamecluster.load import RedisAuth
from gamecluster.manifests import redis_access, redis_tls, secrets
from relay import contract

pytestmark = [pytest.mark.operator, pytest.mark.kmock(cls=SSAEmulator)]

SECRETS = "v1/secrets"
STATEFULSETS = "apps/v1/statefulsets"
DEPLOYMENTS = "apps/v1/deployments"
NETWORK_POLICIES = "networking.k8s.io/v1/networkpolicies"
PDBS = "policy/v1/poddisruptionbudgets"


def text(secret: dict[str, Any], key: str) -> str:
    return base64.b64decode(secret["data"][key]).decode()


def digest(obj: dict[str, Any] | None) -> str | None:
    if obj is None:
        return None
    annotations = obj["spec"]["template"]["metadata"].get("annotations") or {}
    return annotations.get(redis_access.ANNOTATION_REDIS_CREDENTIALS)  # type: ignore[no-any-return]


async def test_the_redis_password_is_generated_once_and_a_rotation_rolls_redis_and_relays(
    harness: Harness,
) -> None:
    await harness.create_gamecluster("arena", {})
    stored = await harness.eventually(
        lambda: harness.objects(SECRETS, "arena-redis"), what="the password Secret"
    )
    relay_password = text(stored, secrets.PASSWORD_KEY)
    assert len(relay_password) >= 32 and text(stored, secrets.OPERATOR_PASSWORD_KEY)
    for resource, name in [
        (SECRETS, "arena-redis-acl"),
        (NETWORK_POLICIES, "arena-redis"),
        (PDBS, "arena-redis"),
    ]:
        await harness.eventually(
            lambda r=resource, n=name: harness.objects(r, n), what=f"{resource} {name}"
        )
    sts_before = await harness.eventually(
        lambda: digest(harness.objects(STATEFULSETS, "arena-redis")), what="the Redis digest"
    )
    await harness.eventually(
        lambda: digest(harness.objects(DEPLOYMENTS, "arena-relay")) == sts_before,
        what="the relay pods' digest",
    )

    # Rotation, as docs/operations.md tells a user: new password, old one still accepted.
    rotated = {
        "data": {
            secrets.PASSWORD_KEY: base64.b64encode(b"rotated-password-0123456789").decode(),
            secrets.PREVIOUS_PASSWORD_KEY: base64.b64encode(relay_password.encode()).decode(),
        }
    }
    await harness.patch(f"/api/v1/namespaces/{NAMESPACE}/secrets/arena-redis", rotated)
    await harness.eventually(
        lambda: digest(harness.objects(STATEFULSETS, "arena-redis")) not in (None, sts_before),
        what="the Redis pods to roll onto the new ACL",
    )
    await harness.eventually(
        lambda: (
            digest(harness.objects(DEPLOYMENTS, "arena-relay"))
            == digest(harness.objects(STATEFULSETS, "arena-redis"))
        ),
        what="the relay pods to roll too",
    )
    acl = text(harness.objects(SECRETS, "arena-redis-acl") or {}, secrets.ACL_FILE_KEY)
    assert "rotated-password" not in acl and relay_password not in acl
    assert acl.splitlines()[1].count("#") == 2  # new and previous accepted while rolling
    # The operator never wrote the user's Secret back.
    after = harness.objects(SECRETS, "arena-redis") or {}
    assert text(after, secrets.PASSWORD_KEY) == "rotated-password-0123456789"


async def test_the_load_reader_logs_in_as_the_operators_user_with_the_current_password(
    harness: Harness,
) -> None:
    """A managed Redis refuses anonymous clients: every load reading (each tick) carries the
    operator's ACL user and the password in ``<name>-redis`` as it is now."""
    harness.load.connections = 10
    await harness.create_gamecluster("arena", {})
    stored = await harness.eventually(
        lambda: harness.objects(SECRETS, "arena-redis"), what="the password Secret"
    )
    generated = RedisAuth(contract.OPERATOR_REDIS_USER, text(stored, secrets.OPERATOR_PASSWORD_KEY))
    await harness.eventually(
        lambda: harness.load.auths and harness.load.auths[-1] == generated,
        what="a load reading logged in with the generated operator password",
    )
    # A rotation of operatorPassword (docs/operations.md) is used from the next tick on.
    rotated = base64.b64encode(b"rotated-operator-password-0123").decode()
    await harness.patch(
        f"/api/v1/namespaces/{NAMESPACE}/secrets/arena-redis",
        {"data": {secrets.OPERATOR_PASSWORD_KEY: rotated}},
    )
    await harness.eventually(
        lambda: (
            harness.load.auths[-1]
            == RedisAuth(contract.OPERATOR_REDIS_USER, "rotated-operator-password-0123")
        ),
        # A deadline, not a pace: ticks come every 0.5 s, but on a loaded CI machine the
        # reconcile that the Secret edit starts can hold the next tick back for seconds.
        within=30,
        what="a load reading with the rotated password",
    )


async def test_the_load_reader_logs_in_to_an_external_redis_with_its_secret(
    harness: Harness,
) -> None:
    """External mode: the user, password and CA come from ``spec.redis.external.secretRef``."""
    await harness.request(
        "POST",
        f"/api/v1/namespaces/{NAMESPACE}/secrets",
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "their-redis", "namespace": NAMESPACE},
            "stringData": {"user": "gamecluster", "pw": "their-password", "ca.crt": "PEM"},
        },
        "application/json",
    )
    external = {
        "mode": "external",
        "external": {
            "urls": ["rediss://redis.example:6380/0"],
            "secretRef": {
                "name": "their-redis",
                "usernameKey": "user",
                "passwordKey": "pw",
                "caKey": "ca.crt",
            },
        },
    }
    await harness.create_gamecluster("arena", {"redis": external})
    await harness.eventually(
        lambda: (
            harness.load.auths
            and harness.load.auths[-1] == RedisAuth("gamecluster", "their-password", "PEM")
            and harness.load.calls[-1][0] == "rediss://redis.example:6380/0"
        ),
        what="a load reading logged in with the external Secret's credentials",
    )


async def test_managed_tls_waits_for_its_secret_then_serves_tls_and_a_renewal_rolls_redis(
    harness: Harness,
) -> None:
    """spec.redis.tls: Degraded until the certificate's Secret exists (retried, no spec
    change); then the shards serve TLS only, the load reader verifies with ca.crt, and a
    renewed certificate rolls the Redis pods."""
    await harness.create_gamecluster("arena", {"redis": {"tls": {"secretName": "arena-tls"}}})
    waiting = await harness.eventually(
        lambda: next(
            (
                c
                for c in (harness.gamecluster("arena") or {})
                .get("status", {})
                .get("conditions", [])
                if c.get("reason") == "RedisTLSSecretNotFound"
            ),
            None,
        ),
        what="a condition naming the missing TLS Secret",
    )
    assert "arena-tls" in waiting["message"]
    assert harness.objects(STATEFULSETS, "arena-redis") is None  # nothing half-secured

    certificate = {"tls.crt": "CERT-1", "tls.key": "KEY-1", "ca.crt": "CA-1"}
    path = f"/api/v1/namespaces/{NAMESPACE}/secrets"
    body = {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "kubernetes.io/tls",
        "metadata": {"name": "arena-tls", "namespace": NAMESPACE},
        "stringData": certificate,
    }
    await harness.request("POST", path, body, "application/json")
    sts = await harness.eventually(
        lambda: harness.objects(STATEFULSETS, "arena-redis"), what="the TLS Redis StatefulSet"
    )
    (container,) = sts["spec"]["template"]["spec"]["containers"]
    assert container["args"][1:5] == ["--port", "0", "--tls-port", "6379"]
    await harness.eventually(
        lambda: (
            harness.load.auths
            and (auth := harness.load.auths[-1]) is not None
            and auth.ca_pem == "CA-1"
            and harness.load.calls[-1][0].startswith("rediss://")
        ),
        what="a load reading over TLS, verified with ca.crt",
    )

    def tls_digest() -> str | None:
        found = harness.objects(STATEFULSETS, "arena-redis")
        annotations = (found or {})["spec"]["template"]["metadata"].get("annotations") or {}
        return annotations.get(redis_tls.ANNOTATION)  # type: ignore[no-any-return]

    before = tls_digest()
    assert before is not None
    renewed = {key: base64.b64encode(f"{key} renewed".encode()).decode() for key in certificate}
    await harness.patch(f"{path}/arena-tls", {"data": renewed})
    await harness.eventually(
        lambda: tls_digest() not in (None, before), what="the renewal rolling the shards"
    )
