"""The managed Redis's password Secret through the operator as it runs (kopf, SSA, kmock):
generated once, never overwritten, and a user's rotation rolls Redis and the relays."""

import base64
from typing import Any

import pytest
from kopf_harness import NAMESPACE, Harness, SSAEmulator

from gamecluster.manifests import redis_access, secrets

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
