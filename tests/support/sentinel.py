"""A replicated Redis shard on loopback: a master, a replica and Sentinels, real processes.

The master and the replica run the operator's ACL file (support.redis_acl): the relay logs
in as the relay's ACL user; the replica and the Sentinels log in as the tests' admin user,
standing in for the replication and Sentinel users of the operator-run Sentinel (whose own
rendered users tests/integration/test_redis_ha.py runs). Sentinels act quickly (1 s
down-after, 3 s failover timeout) so a failover fits in a test.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gamecluster.manifests import redis_tls
from gamecluster_client import Connection as RelayClient
from gamecluster_client import ServerError as RelayError
from support import redis_acl
from support.processes import LOOPBACK, RedisProcess, free_port, wait_until
from support.processes import _port_open as port_open
from support.waiting import eventually

MASTER = "gc"
"""The master's name at the Sentinels: shard URL `sentinel://gc`."""
FAILOVER_SECONDS = 30
"""Bound on the Sentinels noticing the master is gone (1 s) and promoting the replica."""


TLS_HOST = "localhost"
"""With TLS: the one name the servers' and Sentinels' certificate carries (not 127.0.0.1),
which they announce and the Sentinels hand out, as the operator's pods do with their DNS
names."""


def tls_flags(tls: Path) -> list[str]:
    """The operator's TLS flags for the PKI in `tls` (support.tls.make_pki: ca.crt,
    tls.crt, tls.key) without its ports, plus TLS for replication (and, in a Sentinel, for
    its connections to servers and other Sentinels)."""
    return [*redis_tls.certificate_args(str(tls)), "--tls-replication", "yes"]


def replicated(workdir: Path, tls: Path | None = None) -> tuple[RedisProcess, RedisProcess]:
    """A started master and a replica that has synced with it; with `tls` (a directory
    with support.tls.make_pki's files for TLS_HOST), both serve and replicate over TLS only
    and announce themselves as TLS_HOST."""
    replication = ["--masteruser", redis_acl.ADMIN_USER, "--masterauth", redis_acl.ADMIN_PASSWORD]
    host, cli_args = LOOPBACK, []
    if tls is not None:
        host, cli_args = TLS_HOST, ["--tls", "--cacert", str(tls / redis_tls.CA_KEY)]

    def server(args: list[str]) -> RedisProcess:
        if tls is None:
            return redis_acl.acl_redis(workdir, args)
        port = free_port()
        listen = ["--port", "0", "--tls-port", str(port), *tls_flags(tls)]
        announce = ["--replica-announce-ip", TLS_HOST]
        return redis_acl.acl_redis(
            workdir, [*listen, *announce, *args], port=port, cli_args=cli_args
        )

    master = server(replication)
    replica = server([*replication, "--replicaof", host, str(master.port)])
    wait_until(
        lambda: "master_link_status:up" in replica.cli("INFO", "replication"),
        10,
        "the replica to sync",
    )
    return master, replica


class SentinelProcess:
    """One Sentinel watching `MASTER` with `quorum`, quick to act (1 s down-after); `users`:
    Sentinel ACL lines (Redis 6.2+) that, with `user default off`, make it require a login."""

    def __init__(
        self,
        workdir: Path,
        master_port: int,
        *,
        quorum: int = 1,
        users: str = "",
        tls: Path | None = None,
    ) -> None:
        self.port = free_port()
        self.config = workdir / f"sentinel-{self.port}.conf"
        self.log = workdir / f"sentinel-{self.port}.log"
        binary = shutil.which("redis-sentinel")
        if binary is None:
            raise RuntimeError(
                "redis-sentinel is not installed (Debian package redis-sentinel): "
                "run `make system-deps`"
            )
        self.binary = binary
        listen, host = f"port {self.port}\n", LOOPBACK
        self.cli_args: list[str] = []
        if tls is not None:
            # TLS only, to clients, servers and the other Sentinels; addresses handed out
            # as TLS_HOST (resolve-hostnames before the monitor line that names it).
            flags = tls_flags(tls)
            pairs = zip(flags[::2], flags[1::2], strict=True)
            listen = f"port 0\ntls-port {self.port}\n" + "".join(
                f"{flag.removeprefix('--')} {value}\n" for flag, value in pairs
            )
            listen += (
                "sentinel resolve-hostnames yes\nsentinel announce-hostnames yes\n"
                f"sentinel announce-ip {TLS_HOST}\n"
            )
            host, self.cli_args = TLS_HOST, ["--tls", "--cacert", str(tls / redis_tls.CA_KEY)]
        self.config.write_text(
            f"{listen}bind {LOOPBACK}\ndir {workdir}\nlogfile {self.log}\n"
            f"sentinel monitor {MASTER} {host} {master_port} {quorum}\n"
            f"sentinel auth-user {MASTER} {redis_acl.ADMIN_USER}\n"
            f"sentinel auth-pass {MASTER} {redis_acl.ADMIN_PASSWORD}\n"
            f"sentinel down-after-milliseconds {MASTER} 1000\n"
            f"sentinel failover-timeout {MASTER} 3000\n"
            f"sentinel parallel-syncs {MASTER} 1\n"
            f"{users}"
        )
        self.cli_auth: tuple[str, str] | None = None
        """(user, password) for `cli()` when the Sentinel requires a login."""
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> SentinelProcess:
        self.proc = subprocess.Popen(
            [self.binary, str(self.config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )
        wait_until(lambda: port_open(self.port), 10, f"redis sentinel on port {self.port}")
        return self

    @property
    def address(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    def cli(self, *args: str) -> str:
        env, auth = dict(os.environ), []
        if self.cli_auth is not None:
            auth = ["--user", self.cli_auth[0]]
            env["REDISCLI_AUTH"] = self.cli_auth[1]  # not on the command line (ps)
        return subprocess.run(
            ["redis-cli", "-p", str(self.port), *self.cli_args, *auth, *args],
            capture_output=True,
            text=True,
            timeout=10,
            env=env,
        ).stdout.strip()

    def master(self) -> tuple[str, int] | None:
        """The master's address as this Sentinel hands it out."""
        out = self.cli("SENTINEL", "get-master-addr-by-name", MASTER).split()
        return (out[0], int(out[1])) if len(out) == 2 else None

    def master_port(self) -> int | None:
        out = self.cli("SENTINEL", "get-master-addr-by-name", MASTER).split()
        return int(out[1]) if len(out) == 2 else None


async def publish_until_acked(client: RelayClient, room: str, data: Any, id: str) -> dict:
    """Retry one publish (same id: stored at most once) while the shard fails over."""
    deadline = time.monotonic() + FAILOVER_SECONDS
    while True:
        try:
            ack = await client.publish(room, data, id=id)
            assert ack is not None
            return ack
        except RelayError as error:
            if error.code != "unavailable" or time.monotonic() > deadline:
                raise
        await asyncio.sleep(0.2)  # a client's retry pause, not a synchronisation


async def acked_past_the_replica(
    publisher: RelayClient, room: str, master: RedisProcess, replica: RedisProcess
) -> str:
    """Events 1-3 replicated, then 4 and 5 acked by the master alone: its replica
    SIGSTOPped and its link cut (a stopped process's socket still takes what the master
    sends, and it would read events 4 and 5 from there once resumed). The replica stays
    stopped. Returns the room's epoch."""
    assert replica.proc is not None
    epoch: str = (await publisher.join(room))["epoch"]
    for n in range(1, 4):
        await publisher.publish(room, n, id=f"e{n}")
    assert master.cli("WAIT", "1", "5000") == "1"  # the replica has events 1-3
    os.kill(replica.proc.pid, signal.SIGSTOP)
    assert master.cli("CLIENT", "KILL", "TYPE", "replica") == "1"
    acks = [await publisher.publish(room, n, id=f"e{n}") for n in (4, 5)]
    assert [ack["offset"] for ack in acks if ack] == [4, 5]
    return epoch


async def promote_the_replica(
    master: RedisProcess,
    replica: RedisProcess,
    sentinel: SentinelProcess,
    while_down: Callable[[], object] = lambda: None,
) -> None:
    """The master SIGKILLed (`while_down` runs then), the stopped replica resumed, until
    the Sentinel names it the master."""
    assert replica.proc is not None
    master.kill()
    while_down()
    os.kill(replica.proc.pid, signal.SIGCONT)
    await eventually(
        lambda: sentinel.master_port() == replica.port, FAILOVER_SECONDS, "the promotion"
    )


async def fail_over_past_acked_writes(
    publisher: RelayClient,
    room: str,
    master: RedisProcess,
    replica: RedisProcess,
    while_down: Callable[[], object] = lambda: None,
) -> tuple[str, dict[str, Any]]:
    """Make Sentinel promote a replica that lacks acked events (acked_past_the_replica),
    the master SIGKILLed (`while_down` runs then) and the replica resumed, a publish
    retried through the failover. Returns the room's epoch from before and that
    publish's ack."""
    assert replica.proc is not None
    epoch = await acked_past_the_replica(publisher, room, master, replica)
    master.kill()
    while_down()
    os.kill(replica.proc.pid, signal.SIGCONT)
    return epoch, await publish_until_acked(publisher, room, "after", "after-failover")
