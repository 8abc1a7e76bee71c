"""A real Redis Cluster on loopback: N masters (and optionally one replica each).

Built from the same `RedisProcess` as every other Redis fixture (`--cluster-enabled yes`)
and joined with `redis-cli --cluster create`, exactly as an operator would build an
external one. `client()` of a node talks to that node alone (not a cluster client), so a
test sees MOVED/ASK as the relay does. `tls=True`: every node serves TLS only (clients,
replication and the cluster bus) with a certificate for 127.0.0.1 from `ca` (support.tls).
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import redis
from redis.crc import key_slot

from gamecluster.manifests import redis_tls
from support.processes import LOOPBACK, RedisProcess, free_port, wait_until
from support.tls import make_pki

NODE_TIMEOUT_MS = 1000
"""cluster-node-timeout: how long a master may be silent before its replica takes over."""


class RedisCluster:
    def __init__(
        self,
        workdir: Path,
        *,
        masters: int = 3,
        replicas: int = 0,
        extra_args: Sequence[str] = (),
        tls: bool = False,
        aof: bool = False,
    ) -> None:
        if shutil.which("redis-cli") is None:
            raise RuntimeError("redis-cli is not installed: run `make system-deps`")
        self.workdir = workdir
        self.masters = masters
        self.replicas = replicas
        self.nodes: list[RedisProcess] = []
        self._extra = list(extra_args)
        self._aof = aof
        self.cli_auth: tuple[str, str] | None = None
        self.ca: Path | None = None
        if tls:
            self.ca, _, _ = make_pki(workdir)

    def start(self) -> RedisCluster:
        for _ in range(self.masters * (1 + self.replicas)):
            port = free_port()
            tls_args: list[str] = []
            if self.ca is not None:  # the managed shards' flags, and TLS between nodes
                tls_args = [
                    *redis_tls.server_args(port, directory=str(self.workdir)),
                    "--tls-cluster", "yes", "--tls-replication", "yes",
                ]  # fmt: skip
            node = RedisProcess(
                self.workdir,
                port=port,
                aof=self._aof,
                extra_args=[
                    "--cluster-enabled", "yes",
                    "--cluster-node-timeout", str(NODE_TIMEOUT_MS),
                    # Its own free port for the cluster bus (the default, port + 10000,
                    # is out of range for most free ports).
                    "--cluster-port", str(free_port()),
                    "--cluster-config-file", str(self.workdir / f"nodes-{port}.conf"),
                    *tls_args,
                    *self._extra,
                ],
                cli_auth=self.cli_auth,
            )  # fmt: skip
            self.nodes.append(node.start())
        addresses = [f"{LOOPBACK}:{node.port}" for node in self.nodes]
        auth = []
        if self.cli_auth is not None:
            auth = ["--user", self.cli_auth[0], "--pass", self.cli_auth[1]]
        if self.ca is not None:
            auth += ["--tls", "--cacert", str(self.ca)]
        out = subprocess.run(
            ["redis-cli", *auth, "--cluster", "create", *addresses,
             "--cluster-replicas", str(self.replicas), "--cluster-yes"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        if out.returncode != 0:
            raise RuntimeError(f"redis-cli --cluster create failed: {out.stdout}{out.stderr}")
        wait_until(self._consistent, 30, "the cluster to be ok on every node")
        return self

    def _ok(self, node: RedisProcess) -> bool:
        info = self.client(node).execute_command("CLUSTER INFO")  # parsed by redis-py
        return bool(info.get("cluster_state") == "ok")

    def _consistent(self) -> bool:
        """Every node says ok and lists every master with all its replicas."""
        for node in self.nodes:
            if not self._ok(node):
                return False
            ranges = self.client(node).execute_command("CLUSTER SLOTS")
            if len(ranges) != self.masters or any(len(r) - 2 != 1 + self.replicas for r in ranges):
                return False
        return True

    def client(self, node: RedisProcess) -> redis.Redis:
        user, password = self.cli_auth if self.cli_auth is not None else (None, None)
        tls: dict[str, Any] = {}
        if self.ca is not None:
            tls = {"ssl": True, "ssl_ca_certs": str(self.ca)}
        return redis.Redis(host=LOOPBACK, port=node.port, username=user, password=password, **tls)

    @property
    def urls(self) -> tuple[str, ...]:
        scheme = "redis" if self.ca is None else "rediss"
        return tuple(f"{scheme}://{LOOPBACK}:{node.port}" for node in self.nodes)

    def roles(self) -> dict[int, str]:
        """port -> master/slave, as each live node says of itself."""
        found = {}
        for node in self.nodes:
            if node.proc is not None and node.proc.poll() is None:
                found[node.port] = self.client(node).execute_command("ROLE")[0].decode()
        return found

    def owner(self, slot: int) -> RedisProcess:
        """The master node serving `slot`, per a live node's CLUSTER SLOTS."""
        for node in self.nodes:
            if node.proc is None or node.proc.poll() is not None:
                continue
            for start, end, master, *_ in self.client(node).execute_command("CLUSTER SLOTS"):
                if start <= slot <= end:
                    port = int(master[1])
                    return next(n for n in self.nodes if n.port == port)
        raise LookupError(f"no live node knows slot {slot}")

    def owner_of_key(self, key: str) -> RedisProcess:
        return self.owner(key_slot(key.encode()))

    def master_ports(self) -> set[int]:
        return {port for port, role in self.roles().items() if role == "master"}

    def node_id(self, node: RedisProcess) -> str:
        return str(self.client(node).execute_command("CLUSTER MYID").decode())

    def migrate_slot(self, slot: int, target: RedisProcess, *, keys_batch: int = 100) -> None:
        """Move `slot` with its keys to `target`: the documented resharding steps
        (IMPORTING on the target, MIGRATING on the source, MIGRATE the keys, SETSLOT NODE)."""
        source = self.owner(slot)
        if source is target:
            return
        src, dst = self.client(source), self.client(target)
        target_id = self.node_id(target)
        dst.execute_command("CLUSTER SETSLOT", slot, "IMPORTING", self.node_id(source))
        src.execute_command("CLUSTER SETSLOT", slot, "MIGRATING", target_id)
        auth: list[str] = []
        if self.cli_auth is not None:
            auth = ["AUTH2", *self.cli_auth]
        while names := src.execute_command("CLUSTER GETKEYSINSLOT", slot, keys_batch):
            src.execute_command(
                "MIGRATE", LOOPBACK, target.port, "", 0, 5000, *auth, "KEYS", *names
            )
        for node in (target, source):
            self.client(node).execute_command("CLUSTER SETSLOT", slot, "NODE", target_id)
        for node in self.nodes:
            if node.proc is not None and node.proc.poll() is None and node not in (target, source):
                client = self.client(node)
                if client.execute_command("ROLE")[0] == b"master":  # replicas: by gossip
                    client.execute_command("CLUSTER SETSLOT", slot, "NODE", target_id)

    def wait_failover(self, old_master: RedisProcess, timeout: float = 30) -> RedisProcess:
        """After `old_master` died: the replica promoted in its place, once every live node
        agrees on it."""
        slots = [
            (s, e)
            for s, e, m, *_ in self.client(
                next(n for n in self.nodes if n is not old_master)
            ).execute_command("CLUSTER SLOTS")
            if int(m[1]) == old_master.port
        ]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                owner = self.owner(slots[0][0]) if slots else None
                if owner is not None and owner is not old_master and self._consistent_live():
                    return owner
            except (LookupError, redis.RedisError):
                pass
            time.sleep(0.1)
        raise TimeoutError(f"no replica of {old_master.port} promoted within {timeout}s")

    def _consistent_live(self) -> bool:
        return all(
            self._ok(node)
            for node in self.nodes
            if node.proc is not None and node.proc.poll() is None
        )

    def restart(self, node: RedisProcess) -> None:
        """SIGTERM (a clean SHUTDOWN), start again (its slots and node id are in its
        cluster config file), until every node says the cluster is ok. Users made with
        ACL SETUSER are gone: the caller makes them again."""
        node.stop()
        node.start()
        wait_until(self._consistent, 30, "the cluster to be ok again on every node")

    def flush(self) -> None:
        """Empty every master (FLUSHALL runs on one node only in a cluster)."""
        for node in self.nodes:
            if node.proc is not None and node.proc.poll() is None:
                client = self.client(node)
                if client.execute_command("ROLE")[0] == b"master":
                    client.flushall()

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
