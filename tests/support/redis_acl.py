"""A redis-server with the ACL file the operator renders, as the managed Redis runs it.

One addition, for tests only: an admin user (`ADMIN_USER`, every command and name) that the
test itself logs in as to read what the relay did (`INFO commandstats`, `ACL LOG`), and that
stands in for the users a replica and a Sentinel need, which the operator does not run yet.
The relay and the operator's load reader use exactly the users the operator creates.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from secrets import token_urlsafe

import redis

from gamecluster.manifests.secrets import RedisPasswords, acl_file
from support.processes import RedisProcess

RELAY_PASSWORD = "relay-" + token_urlsafe(24)
OPERATOR_PASSWORD = "operator-" + token_urlsafe(24)
ADMIN_USER = "gc-test-admin"
ADMIN_PASSWORD = "admin-" + token_urlsafe(24)
PASSWORDS = (RELAY_PASSWORD, OPERATOR_PASSWORD, ADMIN_PASSWORD)
"""Every password of a test: none of them may appear in any log line of the run."""


def write_acl_file(path: Path) -> Path:
    """The operator's ACL file (default user off, relay, operator) plus the test's admin."""
    digest = hashlib.sha256(ADMIN_PASSWORD.encode()).hexdigest()
    admin = f"user {ADMIN_USER} reset on #{digest} ~* &* +@all\n"
    path.write_text(acl_file(RedisPasswords(RELAY_PASSWORD, OPERATOR_PASSWORD)) + admin)
    return path


def acl_redis(
    workdir: Path,
    extra_args: Sequence[str] = (),
    *,
    port: int | None = None,
    cli_args: Sequence[str] = (),
) -> RedisProcess:
    """A started redis-server with that ACL file and protected mode on; `cli()` is the admin."""
    acl = write_acl_file(workdir / f"users-{token_urlsafe(4)}.acl")
    return RedisProcess(
        workdir,
        port=port,
        extra_args=["--aclfile", str(acl), "--protected-mode", "yes", *extra_args],
        cli_auth=(ADMIN_USER, ADMIN_PASSWORD),
        cli_args=cli_args,
    ).start()


def admin(server: RedisProcess) -> redis.Redis:
    return redis.Redis(port=server.port, username=ADMIN_USER, password=ADMIN_PASSWORD)


def commands_run(server: RedisProcess) -> tuple[set[str], dict[str, int]]:
    """The commands the server ran (ACL names: `script|load`), from scripts too, and those
    it refused with their counts (`rejected_calls`: ACL denials, a full Redis's OOM)."""
    stats = admin(server).info("commandstats")
    ran = {name.removeprefix("cmdstat_") for name, s in stats.items() if s["calls"] > 0}
    refused = {
        name.removeprefix("cmdstat_"): s["rejected_calls"]
        for name, s in stats.items()
        if s.get("rejected_calls", 0) > 0
    }
    return ran, refused


def acl_denials(server: RedisProcess) -> list[str]:
    """`ACL LOG`: every command, key or channel the server refused by ACL, as one line each
    (including those a client library swallows, which no relay log line would show)."""
    return [
        f"{entry['username']}: {entry['reason']} {entry['object']} ({entry['context']})"
        for entry in admin(server).acl_log()
    ]


def no_secret_in_logs(directory: Path, passwords: Sequence[str] = PASSWORDS) -> None:
    """Every log line of the run (relays, redis-server, Sentinel), searched for every
    password of the test."""
    logs = list(directory.glob("*.log"))
    assert logs
    for log in logs:
        text = log.read_text(errors="replace")
        for password in passwords:
            assert password not in text, f"a password is in {log.name}"
