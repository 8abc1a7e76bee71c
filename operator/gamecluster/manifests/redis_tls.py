"""Managed Redis over TLS (``spec.redis.tls``): what the shards and the relays mount and run.

The Secret has the kubernetes.io/tls shape cert-manager writes: ``tls.crt`` and ``tls.key``
for the server, ``ca.crt`` for whoever verifies it. The shards serve TLS only (``--port 0``):
a plain port beside it would be a way around the certificate. Clients are not asked for a
certificate (``--tls-auth-clients no``): they log in with their ACL user's password, as
without TLS, and the NetworkPolicy still decides who may connect at all.

Redis reads its certificate once, at start: ``certificate_digest`` goes into the pod
template, so a renewed certificate rolls the shards (one at a time, the PDB).
"""

import hashlib
from collections.abc import Mapping
from typing import Any, Final

from gamecluster.spec import GameClusterSpec

CERT_KEY: Final = "tls.crt"
KEY_KEY: Final = "tls.key"
CA_KEY: Final = "ca.crt"
KEYS: Final = (CERT_KEY, KEY_KEY, CA_KEY)
VOLUME: Final = "tls"
DIR: Final = "/etc/gamecluster/redis-tls"
"""Beside the ACL directory, out of /etc/redis (which Debian's package owns: manifests.redis)."""
ANNOTATION: Final = "gamecluster.io/redis-tls"


def server_args(port: int, directory: str = DIR) -> list[str]:
    """redis-server flags: TLS on ``port``, the plain port off; the Secret in ``directory``."""
    return ["--port", "0", "--tls-port", str(port), *certificate_args(directory)]


def certificate_args(directory: str = DIR) -> list[str]:
    """redis-server (and redis-sentinel) flags for the Secret's files in ``directory``;
    clients need no certificate of their own (they log in with their ACL password)."""
    return [
        "--tls-cert-file",
        f"{directory}/{CERT_KEY}",
        "--tls-key-file",
        f"{directory}/{KEY_KEY}",
        "--tls-ca-cert-file",
        f"{directory}/{CA_KEY}",
        "--tls-auth-clients",
        "no",
    ]


def cli_flags(directory: str = DIR) -> str:
    """redis-cli's flags for the shard's own probe, which connects to 127.0.0.1: redis-cli
    verifies the chain against the CA but not the name, so the certificate need not name it."""
    return f"--tls --cacert {directory}/{CA_KEY}"


def volume(spec: GameClusterSpec) -> dict[str, Any]:
    assert spec.redis.tls is not None
    # 0440 and the pod's fsGroup: readable by the redis user, by no one else.
    return {
        "name": VOLUME,
        "secret": {"secretName": spec.redis.tls.secret_name, "defaultMode": 0o440},
    }


def mount() -> dict[str, Any]:
    return {"name": VOLUME, "mountPath": DIR, "readOnly": True}


def certificate_digest(certificate: Mapping[str, str]) -> str:
    """Changes when the certificate, its key or the CA does (a renewal): rolls the shards."""
    digest = hashlib.sha256()
    for key in KEYS:
        digest.update(key.encode() + b"\0" + certificate.get(key, "").encode() + b"\0")
    return digest.hexdigest()[:16]
