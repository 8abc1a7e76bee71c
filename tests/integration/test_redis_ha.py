"""The operator's managed Redis with replicas, run for real: the rendered ACL file, start
scripts and Sentinel configuration with real redis-server and redis-sentinel processes.

Everything comes from ``desired()`` for ``spec.redis.replicas: 1``: the ACL file from the ACL
Secret, each container's command (the start scripts), its redis-server options and its
environment, secrets resolved from the generated password Secret by their ``secretKeyRef``.
Only what Kubernetes would provide differently on loopback is replaced: addresses (pod DNS
names -> 127.0.0.1 and a port per process), paths (``/data``, the mounted ACL file), a log
file, and Sentinel's down-after/failover timeouts (1 s / 3 s instead of 5 s / 60 s) so the
test is quick. A relay is configured as the operator's ConfigMap says (``sentinel://`` shard
URLs, the relay user), and the operator's load reader follows the Sentinels too.

The scenario: pod 0 starts as master (no Sentinel yet), pod 1 as its replica, three
Sentinels; durable events are published; pod 0 is SIGKILLed; Sentinel promotes pod 1 (with
the rendered sentinel ACL user); the relay follows and publishes resume; pod 0, started again
by the same script, asks the Sentinels and comes back as a replica of pod 1 from its very
first reply, never as a second master.
"""

from __future__ import annotations

import asyncio
import base64
import os
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from secrets import token_urlsafe
from typing import Any

import pytest
import redis

from gamecluster.children import REDIS_PORT, SENTINEL_PORT
from gamecluster.desired import Inputs, desired
from gamecluster.load import ReadyPod, RedisAuth, RedisLoadSource
from gamecluster.manifests import redis_tls, secrets
from gamecluster.manifests.redis import ACL_DIR
from gamecluster.manifests.redis_ha import SENTINEL_DIR
from gamecluster.manifests.secrets import RedisPasswords
from gamecluster.spec import parse
from gamecluster_client import Connection as RelayClient
from relay import contract
from support import tls as test_tls
from support.processes import LOOPBACK, _port_open, free_port, stop_process, wait_until
from support.sentinel import TLS_HOST, publish_until_acked
from support.waiting import eventually

pytestmark = pytest.mark.integration

PASSWORDS = RedisPasswords(
    relay="relay-" + token_urlsafe(24),
    operator="operator-" + token_urlsafe(24),
    replication="replication-" + token_urlsafe(24),
    sentinel="sentinel-" + token_urlsafe(24),
    sentinel_auth="sentinel-auth-" + token_urlsafe(24),
)
WRONG_SENTINEL_PASSWORD = "wrong-" + token_urlsafe(24)
META = {"name": "gc", "namespace": "games", "uid": "u1"}
FAILOVER_SECONDS = 30
"""Bound on the Sentinels agreeing pod 0 is down (1 s here) and promoting pod 1."""
TIMINGS = {"SENTINEL_DOWN_AFTER_MS": "1000", "SENTINEL_FAILOVER_TIMEOUT_MS": "3000"}


def rendered(redis: dict[str, Any]) -> dict[str, Any]:
    inputs = Inputs(relay_image="img", jwt_secret="j" * 40, redis_passwords=PASSWORDS)
    children = desired(parse({"redis": redis}), META, inputs)
    return {f"{m['kind']}/{m['metadata']['name']}": m for m in children}


CHILDREN = rendered({"replicas": 1})
TLS_CHILDREN = rendered({"replicas": 1, "tls": {"secretName": "gc-tls"}})
"""spec.redis.tls as well: every server and Sentinel TLS-only."""


def secret_value(key: str) -> str:
    return base64.b64decode(CHILDREN["Secret/gc-redis"]["data"][key]).decode()


def container(key: str, children: dict[str, Any] = CHILDREN) -> dict[str, Any]:
    (found,) = children[key]["spec"]["template"]["spec"]["containers"]
    return found  # type: ignore[no-any-return]


def environment(spec: dict[str, Any], pod_name: str, overrides: dict[str, str]) -> dict[str, str]:
    """The container's env as Kubernetes would give it: values, the pod name, the
    generated Secret's keys; then the loopback addresses."""
    env = {"PATH": os.environ["PATH"]}
    for item in spec["env"]:
        source = item.get("valueFrom", {})
        if "secretKeyRef" in source:
            ref = source["secretKeyRef"]
            assert ref["name"] == "gc-redis"
            env[item["name"]] = secret_value(ref["key"])
        elif "fieldRef" in source:
            assert source["fieldRef"]["fieldPath"] == "metadata.name"
            env[item["name"]] = pod_name
        else:
            env[item["name"]] = item["value"]
    return {**env, **overrides}


@dataclass
class Pod:
    """One container of the rendered manifests, run as a process: ``sh -c <script>``."""

    name: str
    command: list[str]
    env: dict[str, str]
    port: int
    log: Path
    proc: subprocess.Popen[bytes] | None = field(default=None)

    def start(self) -> Pod:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(self.command, env=self.env, stdout=log, stderr=log)
        wait_until(lambda: _port_open(self.port), 30, f"{self.name} on port {self.port}")
        return self

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)  # the script exec'd: this is the server
        self.proc.wait(10)


class Shard:
    """The rendered shard 0 (pod 0 and pod 1) and the three rendered Sentinels, on loopback.

    ``tls``: a directory with support.tls.make_pki's files for ``localhost``, standing in
    for the mounted TLS Secret; the TLS rendering then runs, and every process is reached
    and announced as ``localhost`` (the certificate's only name, as pods' DNS names are)."""

    def __init__(self, workdir: Path, tls: Path | None = None) -> None:
        self.workdir = workdir
        self.tls = tls
        children = CHILDREN if tls is None else TLS_CHILDREN
        host = LOOPBACK if tls is None else TLS_HOST

        def local(value: str) -> str:
            """A path of the pod on this machine."""
            value = value.replace(ACL_DIR, str(workdir))
            return value if tls is None else value.replace(redis_tls.DIR, str(tls))

        acl = workdir / "users.acl"
        acl_b64 = CHILDREN["Secret/gc-redis-acl"]["data"][secrets.ACL_FILE_KEY]
        acl.write_text(base64.b64decode(acl_b64).decode())
        self.redis_ports = [free_port(), free_port()]
        self.sentinel_ports = [free_port() for _ in range(3)]
        sentinels = " ".join(f"{host}:{port}" for port in self.sentinel_ports)
        redis_spec = container("StatefulSet/gc-rs0", children)
        self.shard_name = environment(redis_spec, "gc-rs0-0", {})["REDIS_SHARD"]
        self.pods = []
        for ordinal, port in enumerate(self.redis_ports):
            data = workdir / f"pod{ordinal}"
            data.mkdir()
            args = [str(data) if arg == "/data" else local(arg) for arg in redis_spec["args"]]
            log = workdir / f"redis-pod{ordinal}.log"
            env = environment(
                redis_spec,
                f"gc-rs0-{ordinal}",
                {
                    "REDIS_HOST": host,
                    "REDIS_PORT": str(port),
                    "REDIS_MASTER0": f"{host} {self.redis_ports[0]}",
                    "REDIS_SENTINELS": sentinels,
                },
            )
            env = {name: local(value) for name, value in env.items()}
            command = [
                *redis_spec["command"],
                *args,
                "--bind", LOOPBACK,
                "--logfile", str(workdir / f"redis-server-pod{ordinal}.log"),
            ]  # fmt: skip
            self.pods.append(Pod(f"pod{ordinal}", command, env, port, log))
        sentinel_spec = container("StatefulSet/gc-sent", children)
        self.sentinels = []
        for index, port in enumerate(self.sentinel_ports):
            directory = workdir / f"sentinel{index}"
            directory.mkdir()
            env = environment(
                sentinel_spec,
                f"gc-sent-{index}",
                {
                    "SENTINEL_HOST": host,
                    "SENTINEL_PORT": str(port),
                    "SENTINEL_PEERS": sentinels,
                    "SENTINEL_SHARDS": f"{self.shard_name}={host}:{self.redis_ports[0]}",
                    "SENTINEL_DIR": str(directory),
                    **TIMINGS,
                },
            )
            env = {name: local(value) for name, value in env.items()}
            assert env["SENTINEL_DIR"] != SENTINEL_DIR
            command = [
                *sentinel_spec["command"],
                *(local(arg) for arg in sentinel_spec.get("args", [])),
                "--bind", LOOPBACK,
                "--logfile", str(workdir / f"sentinel-server-{index}.log"),
            ]  # fmt: skip
            log = workdir / f"sentinel-script-{index}.log"
            self.sentinels.append(Pod(f"sentinel{index}", command, env, port, log))

    def _tls(self) -> dict[str, Any]:
        if self.tls is None:
            return {}
        return {"host": TLS_HOST, "ssl": True, "ssl_ca_certs": str(self.tls / redis_tls.CA_KEY)}

    def client(self, pod: int) -> redis.Redis:
        """As the rendered sentinel ACL user (it may read INFO and ROLE)."""
        return redis.Redis(
            port=self.redis_ports[pod],
            username=secrets.SENTINEL_USER,
            password=PASSWORDS.sentinel,
            socket_timeout=2,
            **self._tls(),
        )

    def sentinel(
        self, index: int = 0, password: str | None = PASSWORDS.sentinel_auth
    ) -> redis.Redis:
        """A client of one Sentinel, with the Sentinels' own password (their requirepass)."""
        return redis.Redis(
            port=self.sentinel_ports[index], password=password, socket_timeout=2, **self._tls()
        )

    def master_port(self, index: int = 0) -> int | None:
        try:
            found = self.sentinel(index).sentinel_get_master_addr_by_name(self.shard_name)
        except redis.RedisError:
            return None
        return int(found[1]) if found else None

    def synced(self, master: int, replica: int) -> bool:
        try:
            up = self.client(replica).info("replication")
            down = self.client(master).info("replication")
        except redis.RedisError:
            return False
        return (
            up.get("master_link_status") == "up"
            and up.get("master_port") == self.redis_ports[master]
            and up["master_repl_offset"] == down["master_repl_offset"]
        )

    def start(self) -> None:
        """Pod 0 and pod 1, then the Sentinels once pod 1 has synced (as the replication
        user; over TLS with `tls`), as a new shard comes up; until each Sentinel knows the
        replica and its two peers (a failover can be authorised)."""
        for pod in self.pods:
            pod.start()
        over = " over TLS" if self.tls is not None else ""
        wait_until(lambda: self.synced(0, 1), 15, f"pod 1 to replicate pod 0{over}")
        for sentinel in self.sentinels:
            sentinel.start()
        wait_until(
            lambda: all(
                len(self.sentinel(i).sentinel_slaves(self.shard_name)) == 1
                and self.sentinel(i).sentinel_master(self.shard_name)["num-other-sentinels"] == 2
                for i in range(3)
            ),
            30,
            f"every Sentinel to see the replica and the other Sentinels{over}",
        )

    def stop(self) -> None:
        for pod in (*self.sentinels, *self.pods):
            stop_process(pod.proc)


@pytest.fixture
def shard(tmp_path: Path) -> Iterator[Shard]:
    found = Shard(tmp_path)
    yield found
    found.stop()


def role(client: redis.Redis) -> tuple[str, int | None]:
    reply = client.execute_command("ROLE")
    name = reply[0].decode() if isinstance(reply[0], bytes) else reply[0]
    return name, (int(reply[2]) if name == "slave" else None)


async def test_a_shard_fails_over_and_its_old_master_returns_as_a_replica(
    shard: Shard, relay_factory, tmp_path: Path
) -> None:
    pod0, pod1 = shard.pods
    shard.start()
    # A new shard: no Sentinel answered yet, so pod 0 started as master, pod 1 replicated it.
    assert "pod 0 starts as master" in pod0.log.read_text()
    assert "replicating pod 0" in pod1.log.read_text()
    assert role(shard.client(0)) == ("master", None)
    assert {shard.master_port(i) for i in range(3)} == {pod0.port}
    # The Sentinels require their password (rendered requirepass): nobody asks without it.
    with pytest.raises(redis.AuthenticationError):
        shard.sentinel(0, password=None).sentinel_masters()

    config = CHILDREN["ConfigMap/gc-relay"]["data"]
    sentinels = ",".join(f"{LOOPBACK}:{port}" for port in shard.sentinel_ports)
    (given,) = (
        item["valueFrom"]["secretKeyRef"]
        for item in container("Deployment/gc-relay")["env"]
        if item["name"] == contract.ENV_REDIS_SENTINEL_PASSWORD
    )
    assert secret_value(given["key"]) == PASSWORDS.sentinel_auth  # the relay's, as rendered

    def relay_settings(sentinel_password: str | None) -> dict[str, str]:
        settings = {
            contract.ENV_REDIS_SENTINELS: sentinels,
            contract.ENV_REDIS_USERNAME: contract.RELAY_REDIS_USER,
            contract.ENV_REDIS_PASSWORD: PASSWORDS.relay,
            contract.ENV_LOAD_REPORT_SECONDS: "0.2",
        }
        if sentinel_password is not None:
            settings[contract.ENV_REDIS_SENTINEL_PASSWORD] = sentinel_password
        return settings

    urls = config[contract.ENV_REDIS_URLS].split(",")
    pod = relay_factory("a", redis_urls=urls, env=relay_settings(PASSWORDS.sentinel_auth))
    # A wrong or a missing Sentinel password: unready, and the log says why (no secret).
    wrong = relay_factory("wrong", redis_urls=urls, env=relay_settings(WRONG_SENTINEL_PASSWORD),
                          ready=False)  # fmt: skip
    missing = relay_factory("missing", redis_urls=urls, env=relay_settings(None), ready=False)
    for refused, why in (
        (wrong, "AuthenticationError: invalid username-password pair or user is disabled. "
                "(the credentials of RELAY_REDIS_SENTINEL_USERNAME/_PASSWORD)"),
        (missing, "AuthenticationError: the Sentinel requires a password: "
                  "set RELAY_REDIS_SENTINEL_PASSWORD"),
    ):  # fmt: skip
        await eventually(lambda r=refused, w=why: w in r.log.read_text(), 15, f"{why!r} logged")
        assert refused.status() == 503
        line = next(line for line in refused.log.read_text().splitlines() if why in line)
        assert "Pub/Sub connection to sentinel://shard-0/0 lost: MasterNotFoundError" in line
        assert f"Sentinel {LOOPBACK}:{shard.sentinel_ports[0]} - " in line, line
        refused.stop()
    # The operator's load reader finds shard 0's master through the Sentinels too.
    auth = RedisAuth(
        contract.OPERATOR_REDIS_USER,
        PASSWORDS.operator,
        sentinels=tuple((LOOPBACK, port) for port in shard.sentinel_ports),
        sentinel_password=PASSWORDS.sentinel_auth,
    )
    shard0 = config[contract.ENV_REDIS_URLS].split(",")[0]
    reader = RedisLoadSource()
    ready = [ReadyPod("a", None)]
    await eventually(
        lambda: reader.read(shard0, ready, datetime.now(UTC), auth).total == 0,
        10,
        "the load report read through the Sentinels",
    )

    async with RelayClient(pod.url) as publisher:
        epoch = (await publisher.join("match"))["epoch"]
        for n in range(1, 4):
            ack = await publisher.publish("match", n, id=f"e{n}")
            assert ack is not None and ack["offset"] == n
        wait_until(lambda: shard.synced(0, 1), 10, "events 1-3 on the replica")
        pod0.kill()
        ack = await publish_until_acked(publisher, "match", "after", "after-failover")
        assert {shard.master_port(i) for i in range(3)} == {pod1.port}  # promoted
        assert role(shard.client(1)) == ("master", None)
    # The relay fences a new master: resuming clients learn history may have broken, and
    # events published after the failover are there.
    async with RelayClient(pod.url) as resuming:
        joined = await resuming.join("match", since={"epoch": epoch, "offset": 3})
        assert joined["recovered"] is False and joined["epoch"] != epoch
        assert joined["offset"] >= ack["offset"]
    assert "failed over from" in pod.log.read_text()

    # Pod 0 restarts with the same script, options and data directory (its AOF says it was
    # the master). It asks the Sentinels first, and its very first reply is a replica's.
    pod0.start()
    assert role(shard.client(0)) == ("slave", pod1.port)
    script = pod0.log.read_text()
    assert f"Sentinel names {LOOPBACK} {pod1.port} as the master of {shard.shard_name}" in script
    wait_until(lambda: shard.synced(1, 0), 15, "pod 0 to replicate the promoted pod 1")
    assert role(shard.client(1)) == ("master", None)
    assert shard.client(1).info("replication")["connected_slaves"] == 1
    # The Sentinels never had to turn a second master into a replica.
    for index in range(3):
        text = (tmp_path / f"sentinel-server-{index}.log").read_text()
        assert "+convert-to-slave" not in text, text
    assert {shard.master_port(i) for i in range(3)} == {pod1.port}

    # Publishes go on and reach the returned pod 0 through replication.
    async with RelayClient(pod.url) as publisher:
        await publisher.join("match")
        late = await publisher.publish("match", "late", id="late")
        assert late is not None and late["offset"] == ack["offset"] + 1
    wait_until(lambda: shard.synced(1, 0), 10, "the late event on pod 0")
    await eventually(
        lambda: reader.read(shard0, ready, datetime.now(UTC), auth).total == 0,
        10,
        "the load reader to follow the failover",
    )

    pod.stop()
    no_password_in_logs(tmp_path)


def no_password_in_logs(directory: Path) -> None:
    """Every log of the run (start scripts, redis-server, Sentinels, the relay)."""
    logs = list(directory.glob("*.log"))
    assert len(logs) >= 8
    for log in logs:
        text = log.read_text(errors="replace")
        for password in (PASSWORDS.relay, PASSWORDS.operator):
            assert password not in text, log.name
        for password in (PASSWORDS.replication, PASSWORDS.sentinel, PASSWORDS.sentinel_auth):
            assert password is not None and password not in text, log.name
        assert WRONG_SENTINEL_PASSWORD not in text, log.name


@pytest.fixture
def tls_shard(tmp_path: Path) -> Iterator[Shard]:
    pki = tmp_path / "pki"
    pki.mkdir()
    test_tls.make_pki(pki, dns_names=[TLS_HOST])
    found = Shard(tmp_path, tls=pki)
    yield found
    found.stop()


async def test_with_tls_a_shard_replicates_fails_over_and_serves_relays_over_tls_only(
    tls_shard: Shard, relay_factory, tmp_path: Path
) -> None:
    """spec.redis.tls with replicas, as rendered: replication, Sentinels, the scripts' and
    probes' redis-cli, the relay and the load reader all over TLS, hostnames checked
    against a certificate naming `localhost` only; plain ports off; a failover followed
    with the fence's new epoch."""
    shard = tls_shard
    assert shard.tls is not None
    pod0, pod1 = shard.pods
    shard.start()
    # Addresses handed out by name, never by IP: what the certificate can be checked against.
    found = shard.sentinel(0).sentinel_get_master_addr_by_name(shard.shard_name)
    assert (found[0].decode(), int(found[1])) == (TLS_HOST, pod0.port)
    for port in (*shard.redis_ports, *shard.sentinel_ports):  # TLS only: no plain answer
        with pytest.raises(redis.ConnectionError):
            redis.Redis(port=port, socket_timeout=2).ping()
    # The rendered probes, run as the kubelet would (with the pod's environment).
    for spec, pod in (("StatefulSet/gc-rs0", pod0), ("StatefulSet/gc-sent", shard.sentinels[0])):
        probe = container(spec, TLS_CHILDREN)["readinessProbe"]["exec"]["command"]
        command = [
            part.replace(f"-p {REDIS_PORT} ", f"-p {pod.port} ")
            .replace(f"-p {SENTINEL_PORT} ", f"-p {pod.port} ")
            .replace(redis_tls.DIR, str(shard.tls))
            for part in probe
        ]
        assert any(f"-p {pod.port} " in part for part in command), command
        env = {**pod.env, "REDISCLI_AUTH": PASSWORDS.operator}
        ran = await asyncio.to_thread(subprocess.run, command, env=env, timeout=10)
        assert ran.returncode == 0, spec

    relay_env = {
        item["name"]: item.get("value")
        for item in container("Deployment/gc-relay", TLS_CHILDREN)["env"]
    }
    assert relay_env[contract.ENV_REDIS_SENTINEL_TLS] == "true"
    assert relay_env[contract.ENV_REDIS_CA_FILE]
    config = TLS_CHILDREN["ConfigMap/gc-relay"]["data"]
    settings = {
        contract.ENV_REDIS_SENTINELS: ",".join(f"{TLS_HOST}:{p}" for p in shard.sentinel_ports),
        contract.ENV_REDIS_SENTINEL_TLS: "true",
        contract.ENV_REDIS_CA_FILE: str(shard.tls / redis_tls.CA_KEY),
        contract.ENV_REDIS_SENTINEL_PASSWORD: PASSWORDS.sentinel_auth,
        contract.ENV_REDIS_USERNAME: contract.RELAY_REDIS_USER,
        contract.ENV_REDIS_PASSWORD: PASSWORDS.relay,
        contract.ENV_LOAD_REPORT_SECONDS: "0.2",
    }
    urls = config[contract.ENV_REDIS_URLS].split(",")
    pod = relay_factory("a", redis_urls=urls, env=settings)
    auth = RedisAuth(
        contract.OPERATOR_REDIS_USER,
        PASSWORDS.operator,
        (shard.tls / redis_tls.CA_KEY).read_text(),
        sentinels=tuple((TLS_HOST, port) for port in shard.sentinel_ports),
        sentinel_password=PASSWORDS.sentinel_auth,
        sentinel_tls=True,
    )
    reader, ready = RedisLoadSource(), [ReadyPod("a", None)]
    await eventually(
        lambda: reader.read(urls[0], ready, datetime.now(UTC), auth).total == 0,
        10,
        "the load report read through the Sentinels over TLS",
    )
    async with RelayClient(pod.url) as publisher:
        epoch = (await publisher.join("match"))["epoch"]
        for n in range(1, 4):
            await publisher.publish("match", n, id=f"e{n}")
        wait_until(lambda: shard.synced(0, 1), 10, "events 1-3 on the replica")
        pod0.kill()
        ack = await publish_until_acked(publisher, "match", "after", "after-failover")
        assert {shard.master_port(i) for i in range(3)} == {pod1.port}
    async with RelayClient(pod.url) as resuming:
        joined = await resuming.join("match", since={"epoch": epoch, "offset": 3})
        assert joined["recovered"] is False and joined["epoch"] != epoch
        assert joined["offset"] >= ack["offset"]
    assert "failed over from" in pod.log.read_text()
    pod.stop()
    no_password_in_logs(tmp_path)
