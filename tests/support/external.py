"""An external GameCluster as the operator renders it, run on loopback.

`render` takes `spec.redis.external` and the referenced Secret's values and returns what a
relay pod and the operator's load reader would get from the operator: the ConfigMap's Redis
URLs and Sentinels, the container's environment (secretKeyRefs resolved against the Secret,
the mounted CA file replaced by the test's own path) and operator_auth's RedisAuth. Tests
then start real relay processes with exactly that, so a field the operator forgets to pass
on fails a test against real Redis, not only a unit test of the manifest.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gamecluster.children import Owner
from gamecluster.desired import Inputs, desired
from gamecluster.load import RedisAuth
from gamecluster.redis_auth import operator_auth
from gamecluster.spec import parse
from relay import contract

NAME, NAMESPACE, SECRET = "ext", "games", "ext"


@dataclass(frozen=True)
class Rendered:
    urls: list[str]
    """RELAY_REDIS_URLS of the ConfigMap, one per shard."""
    env: dict[str, str]
    """The relay's Redis settings: RELAY_REDIS_SENTINELS of the ConfigMap and the
    container's Redis environment, resolved."""
    auth: RedisAuth
    """How the operator's load reader logs in (operator_auth)."""


class _OneSecret:
    """The cluster as operator_auth reads it: the one Secret of the GameCluster."""

    def __init__(self, values: dict[str, str]) -> None:
        data = {key: base64.b64encode(value.encode()).decode() for key, value in values.items()}
        self._secret = {"data": data}

    def get(self, ref: object) -> dict[str, Any]:
        return self._secret


def render(external: dict[str, Any], stored: dict[str, str], ca: Path | None = None) -> Rendered:
    """`external` is spec.redis.external (its secretRef names SECRET); `stored` that
    Secret's values; `ca` the local file standing in for the mounted CA bundle."""
    spec = parse({"redis": {"mode": "external", "external": external}})
    meta = {"name": NAME, "namespace": NAMESPACE, "uid": "u1"}
    inputs = Inputs(relay_image="img", jwt_secret="j" * 40, redis_passwords=None)
    children = {f"{m['kind']}/{m['metadata']['name']}": m for m in desired(spec, meta, inputs)}
    config = children[f"ConfigMap/{NAME}-relay"]["data"]
    env = {}
    if contract.ENV_REDIS_SENTINELS in config:
        env[contract.ENV_REDIS_SENTINELS] = config[contract.ENV_REDIS_SENTINELS]
    (relay,) = children[f"Deployment/{NAME}-relay"]["spec"]["template"]["spec"]["containers"]
    for item in relay["env"]:
        name = item["name"]
        ref = item.get("valueFrom", {}).get("secretKeyRef", {})
        if ref.get("name") == SECRET:
            env[name] = stored[ref["key"]]
        elif name == contract.ENV_REDIS_CA_FILE:
            assert ca is not None, "the GameCluster mounts a CA: pass the test's own"
            env[name] = str(ca)
        elif name.startswith("RELAY_REDIS_") and "value" in item:
            env[name] = item["value"]
    auth = operator_auth(_OneSecret(stored), spec, Owner(NAME, NAMESPACE, "u1"))  # type: ignore[arg-type]
    assert auth is not None, "operator_auth found no Secret"
    return Rendered(config[contract.ENV_REDIS_URLS].split(","), env, auth)
