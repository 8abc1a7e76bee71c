"""Managed Redis credentials: the generated password Secret and the ACL Secret built from it.

Two Secrets, two owners of their content:

- ``<name>-redis`` holds the passwords. The operator generates it once and never overwrites
  it: a user rotates a password by editing it (docs/operations.md, "Rotating the Redis
  password"). Keys: ``password`` (the relay user), ``operatorPassword`` (the operator's
  user, which only reads load reports), optionally ``previousPassword`` (still accepted
  while the relays roll onto a new ``password``); with ``redis.replicas`` > 0 also
  ``replicationPassword`` (replicas log in to their master), ``sentinelPassword`` (the
  Sentinels log in to every Redis pod) and ``sentinelAuthPassword`` (everyone logs in to
  the Sentinels: their ``requirepass``, which they also use with each other; a Secret made
  before it existed has no such key, and its Sentinels stay open until one is added).
- ``<name>-redis-acl`` holds Redis's ACL file, rendered by the operator from the first on
  every pass. It carries SHA-256 digests of the passwords, never the passwords, and the
  rules from ``relay.contract`` (the relay and the operator's user); the default user is off
  (``DEFAULT_USER``: with the permissions the AOF replay needs).
  With replicas, two more users: ``REPLICATION_USER`` and ``SENTINEL_USER``, each allowed only
  what Redis's replication and Sentinel send (no key, no channel but Sentinel's hello).
"""

import base64
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from gamecluster import names
from gamecluster.children import Manifest, Owner
from relay import contract

PASSWORD_KEY: Final = "password"
OPERATOR_PASSWORD_KEY: Final = "operatorPassword"
PREVIOUS_PASSWORD_KEY: Final = "previousPassword"
REPLICATION_PASSWORD_KEY: Final = "replicationPassword"
SENTINEL_PASSWORD_KEY: Final = "sentinelPassword"
SENTINEL_AUTH_PASSWORD_KEY: Final = "sentinelAuthPassword"
REPLICATION_USER: Final = "replication"
REPLICATION_ACL_RULES: Final = (
    "resetkeys",
    "resetchannels",
    "-@all",
    "+psync",
    "+replconf",
    "+ping",
)
"""What a replica sends its master (Redis's documented minimum): no key, no channel."""
SENTINEL_USER: Final = "sentinel"
SENTINEL_HELLO_CHANNEL: Final = "__sentinel__:hello"
SENTINEL_ACL_RULES: Final = (
    "resetkeys",
    "resetchannels",
    f"&{SENTINEL_HELLO_CHANNEL}",
    "-@all",
    # Monitoring (INFO, ROLE, PING, the hello channel) and a failover: promote or repoint a
    # server in a transaction, persist it, drop its clients so they reconnect to the master.
    *(f"+{command}" for command in ("ping", "info", "role", "subscribe", "publish")),
    *(f"+{command}" for command in ("multi", "exec", "slaveof", "config|rewrite")),
    *(f"+{command}" for command in ("client|setname", "client|kill", "script|kill")),
)
"""What Sentinel sends a monitored Redis (Redis's Sentinel documentation, "ACL")."""
ACL_FILE_KEY: Final = "users.acl"
ACL_FORBIDDEN_IN_PASSWORD: Final = frozenset(" \t\r\n")
"""The ACL file is split on whitespace; the digest is what goes into it, so any other
character is fine, but a password typed into the Secret with a stray newline is trimmed."""


@dataclass(frozen=True)
class RedisPasswords:
    """The values stored in ``<name>-redis`` (read back every pass, generated once)."""

    relay: str
    operator: str
    previous: str | None = None
    replication: str | None = None
    """With replicas only (``redis.replicas`` > 0), as ``sentinel`` and ``sentinel_auth``."""
    sentinel: str | None = None
    sentinel_auth: str | None = None
    """The Sentinels' own password (their ``requirepass``); None: they require none."""

    def digest(self) -> str:
        """Changes exactly when a password changes: rolls the pods that read them.

        A digest of the ACL file (itself only digests of the passwords, one of them the
        operator's random one) and of the Sentinels' password's digest, so the annotation
        is no dictionary oracle for a password."""
        text = acl_file(self)
        if self.sentinel_auth is not None:  # absent: the digest of before it existed
            text += "sentinel requirepass " + _sha(self.sentinel_auth)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def _sha(password: str) -> str:
    return "#" + hashlib.sha256(password.encode()).hexdigest()


def acl_line(user: str, passwords: Sequence[str], rules: Sequence[str]) -> str:
    """One ``user`` line of an ACL file: on, the passwords' digests, the rules."""
    return " ".join(("user", user, "reset", "on", *map(_sha, passwords), *rules))


DEFAULT_USER: Final = "user default reset off ~* &* +@all"
"""Off (no client can log in as it, unauthenticated connections get NOAUTH), yet with every
permission: Redis 7 replays the AOF as the default user and refuses a MULTI/EXEC block (how
it logs a script's writes) that user may not run, "NOPERM ACLs rules changed" (redis/redis
#14156). With a bare ``off`` every durable publish (a script) was dropped at each restart:
the rooms came back with new epochs and no history."""


def acl_file(passwords: RedisPasswords) -> str:
    """Redis's ACL file: default user off, the relay user, the operator's user."""
    relay_passwords = [passwords.relay]
    if passwords.previous:
        relay_passwords.append(passwords.previous)
    lines = [
        DEFAULT_USER,
        acl_line(contract.RELAY_REDIS_USER, relay_passwords, contract.RELAY_ACL_RULES),
        acl_line(contract.OPERATOR_REDIS_USER, [passwords.operator], contract.OPERATOR_ACL_RULES),
    ]
    # Only with replicas: a cluster without them keeps its ACL file (and digest) unchanged.
    if passwords.replication is not None:
        lines.append(acl_line(REPLICATION_USER, [passwords.replication], REPLICATION_ACL_RULES))
    if passwords.sentinel is not None:
        lines.append(acl_line(SENTINEL_USER, [passwords.sentinel], SENTINEL_ACL_RULES))
    return "\n".join((*lines, ""))


def _b64(value: str) -> str:
    return base64.b64encode(value.encode()).decode()


def password_secret(owner: Owner, passwords: RedisPasswords) -> Manifest:
    """The generated password Secret; applied only while it does not exist yet."""
    data = {PASSWORD_KEY: _b64(passwords.relay), OPERATOR_PASSWORD_KEY: _b64(passwords.operator)}
    if passwords.replication is not None:
        data[REPLICATION_PASSWORD_KEY] = _b64(passwords.replication)
    if passwords.sentinel is not None:
        data[SENTINEL_PASSWORD_KEY] = _b64(passwords.sentinel)
    if passwords.sentinel_auth is not None:
        data[SENTINEL_AUTH_PASSWORD_KEY] = _b64(passwords.sentinel_auth)
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": owner.metadata(owner.redis_secret, names.COMPONENT_REDIS),
        "type": "Opaque",
        "data": data,
    }


def acl_secret(owner: Owner, passwords: RedisPasswords) -> Manifest:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": owner.metadata(owner.redis_acl, names.COMPONENT_REDIS),
        "type": "Opaque",
        "data": {ACL_FILE_KEY: _b64(acl_file(passwords))},
    }
