"""Redis with ACL users, as the operator runs it: the relay's user can do what the relay
needs and nothing else, credentials never reach a log line, a wrong password is named."""

from __future__ import annotations

import asyncio
import os
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from secrets import token_urlsafe

import orjson
import pytest
import redis
from redis.exceptions import AuthenticationError, NoPermissionError, ResponseError

from gamecluster.children import REDIS_PORT
from gamecluster.desired import Inputs, desired
from gamecluster.load import ReadyPod, RedisAuth, RedisLoadSource
from gamecluster.manifests import secrets
from gamecluster.manifests.redis import ACL_DIR
from gamecluster.manifests.secrets import RedisPasswords, acl_file
from gamecluster.spec import parse
from gamecluster_client import Connection as RelayClient
from relay import auth as relay_auth
from relay import contract
from relay.api import models
from relay.api.client import AsyncRelayApi
from relay.broker import keys
from support import redis_acl
from support.processes import RedisProcess, RelayProcess, free_port, stop_process, wait_until
from support.redis_acl import OPERATOR_PASSWORD, RELAY_PASSWORD, no_secret_in_logs
from support.waiting import eventually

pytestmark = pytest.mark.integration


@pytest.fixture
def acl_redis(tmp_path: Path) -> Iterator[RedisProcess]:
    """A redis-server with the operator's ACL file: default user off, protected mode on."""
    server = redis_acl.acl_redis(tmp_path)
    yield server
    server.stop()


def relay_client(server: RedisProcess) -> redis.Redis:
    return redis.Redis(
        port=server.port, username=contract.RELAY_REDIS_USER, password=RELAY_PASSWORD
    )


def no_refusal_in_logs(tmp_path: Path) -> None:
    """No relay log line reports a command or name the ACL refused."""
    for log in tmp_path.glob("relay-*.log"):
        text = log.read_text(errors="replace")
        assert "NOPERM" not in text and "NoPermission" not in text, log.name


async def test_the_relay_user_can_do_what_the_relay_needs_and_nothing_else(
    acl_redis: RedisProcess, relay_factory, tmp_path: Path
) -> None:
    password_file = tmp_path / "redis-password"
    password_file.write_text(RELAY_PASSWORD + "\n")  # as a mounted Secret may end
    user = {contract.ENV_REDIS_USERNAME: contract.RELAY_REDIS_USER}
    fast = {contract.ENV_LOAD_REPORT_SECONDS: "0.2"}
    urls = [f"shard-a=redis://127.0.0.1:{acl_redis.port}/0"]
    pod_a = relay_factory(
        "a",
        redis_urls=urls,
        env={**user, **fast, contract.ENV_REDIS_PASSWORD_FILE: str(password_file)},
    )
    pod_b = relay_factory(
        "b", redis_urls=urls, env={**user, **fast, contract.ENV_REDIS_PASSWORD: RELAY_PASSWORD}
    )
    # Publishes, history, dedupe, the probe, as two relays: one reads its password file.
    async with RelayClient(pod_a.url) as on_a, RelayClient(pod_b.url) as on_b:
        position = await on_a.join("match:1")
        await on_b.join("match:1")
        ack = await on_b.publish("match:1", "hello", id="m1")
        assert ack is not None and ack["offset"] == 1
        assert (await on_a.receive(timeout=5))["data"] == "hello"
        again = await on_b.publish("match:1", "hello", id="m1")  # deduplicated: same offset
        assert again is not None and again["offset"] == ack["offset"] == 1
        async with RelayClient(pod_a.url) as late:
            joined = await late.join("match:1", since={"epoch": position["epoch"], "offset": 0})
            assert joined["recovered"] is True
            assert (await late.receive(timeout=5))["data"] == "hello"
        # The operator's user reads the load reports the relay user wrote.
        auth = RedisAuth(contract.OPERATOR_REDIS_USER, OPERATOR_PASSWORD)
        source = RedisLoadSource()
        pods = [ReadyPod("a", None), ReadyPod("b", None)]
        now = datetime.now(UTC)
        anonymous = source.read(acl_redis.url, pods, now)
        assert anonymous.total is None and anonymous.unknown is not None  # refused
        await eventually(
            lambda: source.read(acl_redis.url, pods, now, auth).total == 2, 10, "load reports"
        )

    client = relay_client(acl_redis)
    for refused in (
        ("FLUSHALL",),
        ("CONFIG", "GET", "requirepass"),
        ("KEYS", "*"),
        ("SET", "outside:key", "x"),
        ("GET", "outside:key"),
        ("PUBLISH", "outside-channel", "x"),
        ("ACL", "LIST"),
        ("SHUTDOWN",),
    ):
        with pytest.raises(NoPermissionError):
            client.execute_command(*refused)
    with pytest.raises(NoPermissionError):  # a script cannot reach outside the patterns
        client.eval("return redis.call('SET', KEYS[1], 'x')", 1, "outside:key")
    assert client.set(keys.meta("match:1") + ":probe", "x")  # inside: allowed
    # The operator's user only reads load reports.
    operator = redis.Redis(
        port=acl_redis.port, username=contract.OPERATOR_REDIS_USER, password=OPERATOR_PASSWORD
    )
    with pytest.raises(NoPermissionError):
        operator.get(keys.meta("match:1"))
    with pytest.raises(NoPermissionError):
        operator.set(contract.load_report_key("x"), 1)
    # No one gets in without a password: the default user is off.
    with pytest.raises((AuthenticationError, ResponseError)):
        redis.Redis(port=acl_redis.port).ping()
    assert acl_redis.cli("PING") == "PONG"
    for pod in (pod_a, pod_b):
        pod.stop()
    no_secret_in_logs(tmp_path)


JWT_SECRET = "j" * 40
API_KEY = "k" * 40

NOT_ACL_CHECKED = frozenset({"auth", "hello"})
"""Sent on connecting (redis-py logs in with HELLO 3 AUTH): Redis runs them for any user."""
ADMIN_COMMANDS = frozenset({"acl|log"})
"""What the test itself runs as the admin user to read the server's counters (and INFO,
which the relay sends too: the history marker check; test_redis_sentinel.py proves it)."""
NOT_SENT_HERE = {
    "scan": "the failover fence (test_redis_sentinel.py runs it as the relay user)",
    "wait": "RELAY_REDIS_ACK_REPLICAS (test_redis_ack_replicas.py runs it as the relay user)",
}
"""Allowed commands this test's paths do not send, each with where it is proven instead."""


async def test_every_relay_path_works_as_the_relay_user_and_needs_exactly_its_commands(
    acl_redis: RedisProcess, relay_factory, tmp_path: Path
) -> None:
    """Every path that talks to Redis, run by two relay servers logged in as the relay's ACL
    user: client publishes (durable, volatile, deduplicated), joins and resumes, presence
    (member hashes, the alive set, node reports, the dead-node sweep), the server API
    (publish, batch, history, presence, disconnect, remove, rooms, nodes), the control
    channel between relay servers and the load reports. Then Redis's own counters: no
    command, key or channel was refused (`ACL LOG`, which also sees refusals a client library
    swallows), and the commands the relay ran are exactly RELAY_REDIS_COMMANDS (but for
    NOT_SENT_HERE): a command the relay starts to use fails here, and so does one the
    allowlist keeps after the relay stopped using it."""
    report_seconds = 0.3
    env = {
        contract.ENV_REDIS_USERNAME: contract.RELAY_REDIS_USER,
        contract.ENV_REDIS_PASSWORD: RELAY_PASSWORD,
        contract.ENV_LOAD_REPORT_SECONDS: str(report_seconds),
        contract.ENV_AUTH: "jwt",
        contract.ENV_JWT_SECRET: JWT_SECRET,
        contract.ENV_API_KEYS: API_KEY,
        contract.ENV_ROOMS: orjson.dumps(
            [{"match": "lobby:*", "presence": True}, {"match": "fast:*", "policy": "volatile"}]
        ).decode(),
    }
    urls = [f"shard-a=redis://127.0.0.1:{acl_redis.port}/0"]
    pod_a = relay_factory("a", redis_urls=urls, env=env)
    pod_b = relay_factory("b", redis_urls=urls, env=env)

    def token(sub: str) -> str:
        return relay_auth.mint(JWT_SECRET, subject=sub, join=["*"], publish=["*"], ttl=300)

    async def next_op(client: RelayClient, op: str) -> dict:
        message = await client.receive(5)
        while message["op"] != op:
            message = await client.receive(5)
        return message

    async with (
        RelayClient(pod_a.url, token=token("ann")) as ann,
        RelayClient(pod_b.url, token=token("bob")) as bob,
        AsyncRelayApi(pod_a.admin, api_key=API_KEY) as api,
    ):
        # Joins (the history script: a new room's epoch), presence across both pods (member
        # hashes written by each pod, joins announced over the control channel).
        position = await ann.join("lobby:1")
        await bob.join("lobby:1")
        everyone = {ann.welcome["session"], bob.welcome["session"]}

        async def members() -> set[str]:
            reply = await ann.request({"op": "presence", "room": "lobby:1"})
            return {m["conn"] for m in reply["members"] or []}

        async def both_listed() -> bool:
            return await members() == everyone

        await eventually(both_listed, 10, "both members listed")
        assert (await api.presence("lobby:1")).count == 2
        assert (await api.presence_stats("lobby:1")).count == 2

        # Client publishes: durable with an id, its retry deduplicated; volatile, sent once.
        ack = await bob.publish("lobby:1", "hello", id="m1")
        assert ack is not None and ack["offset"] == 1
        assert (await next_op(ann, "event"))["data"] == "hello"
        again = await bob.publish("lobby:1", "hello", id="m1")
        assert again is not None and again["offset"] == 1
        await ann.join("fast:1")
        await bob.publish("fast:1", "zoom", id="v1")
        assert (await bob.publish("fast:1", "zoom", id="v1")) is not None  # its retry: acked
        assert (await next_op(ann, "event"))["data"] == "zoom"
        # A resume replays from the stored history.
        async with RelayClient(pod_b.url, token=token("dan")) as late:
            joined = await late.join("lobby:1", since={"epoch": position["epoch"], "offset": 0})
            assert joined["recovered"] is True
            assert (await next_op(late, "event"))["data"] == "hello"

        # The server API: publish (one and a batch), history forwards and backwards.
        published = await api.publish("lobby:1", {"from": "server"}, id="s1")
        assert published.offset == 2 and not published.duplicate
        batch = await api.publish_batch(
            [
                models.BatchItem(room="lobby:1", data=3, id="s2"),
                models.BatchItem(room="fast:2", data=4),
            ]
        )
        assert all(item.error is None for item in batch.results)
        page = await api.history("lobby:1")
        assert [event.data for event in page.events] == ["hello", {"from": "server"}, 3]
        newest = await api.history("lobby:1", reverse=True, limit=1)
        assert [event.data for event in newest.events] == [3]

        # GET /nodes and /rooms read the node reports and room counts of both pods.
        async def reported() -> bool:
            nodes = {n.node for n in (await api.nodes()).nodes}
            rooms = {r.room: r.members for r in (await api.rooms("lobby:*")).rooms}
            return nodes == {"a", "b"} and rooms == {"lobby:1": 2}

        await eventually(reported, 10, "both nodes' reports (GET /nodes, GET /rooms)")
        # The control channel: a forced leave and a disconnect asked on pod a reach bob on b.
        await api.remove("bob", "lobby:1")
        assert (await next_op(bob, "left"))["room"] == "lobby:1"
        await api.disconnect("bob", "test")
        assert await next_op(bob, "disconnect") == {
            "op": "disconnect",
            "reason": "test",
            "reconnect": False,
        }

        # bob's leave reaches ann: his member entry was removed and announced.
        async def bob_left() -> bool:
            return await members() == {ann.welcome["session"]}

        await eventually(bob_left, 10, "bob's leave of the presence room")

        # A killed pod: the survivor sweeps its node out of the alive set and its members
        # out of their rooms (seen through pod a's server API only).
        async with RelayClient(pod_b.url, token=token("cyd")) as cyd:
            await cyd.join("lobby:2")

            async def cyd_listed() -> bool:
                return (await api.presence("lobby:2")).count == 1

            await eventually(cyd_listed, 10, "cyd's member entry")
            pod_b.kill()

        async def swept() -> bool:
            nodes = {n.node for n in (await api.nodes()).nodes}
            return nodes == {"a"} and (await api.presence("lobby:2")).count == 0

        await eventually(swept, 15, "the dead node's members swept by the survivor")
    pod_a.stop()  # a graceful stop: the pod takes itself out of the alive set

    # Redis's counters, read before the test sends anything else (every command counts).
    # The relays also wrote their load reports all along (test above: the operator reads them).
    assert redis_acl.acl_denials(acl_redis) == []
    ran, refused = redis_acl.commands_run(acl_redis)
    assert refused == {}
    relay_ran = ran - NOT_ACL_CHECKED - ADMIN_COMMANDS
    allowed = set(contract.RELAY_REDIS_COMMANDS)
    assert relay_ran - allowed == set(), "the relay ran commands its ACL user may not"
    assert allowed - relay_ran == set(NOT_SENT_HERE), "allowed commands no path sends"
    no_refusal_in_logs(tmp_path)
    no_secret_in_logs(tmp_path)


async def test_a_wrong_password_leaves_the_relay_unready_with_a_line_naming_the_shard(
    acl_redis: RedisProcess, relay_factory, tmp_path: Path
) -> None:
    wrong = "wrong-" + token_urlsafe(16)
    pod: RelayProcess = relay_factory(
        "w",
        redis_urls=[f"shard-w=redis://127.0.0.1:{acl_redis.port}/0"],
        env={
            contract.ENV_REDIS_USERNAME: contract.RELAY_REDIS_USER,
            contract.ENV_REDIS_PASSWORD: wrong,
        },
        ready=False,
    )
    await eventually(lambda: "AuthenticationError" in pod.tail(), 10, "the refused login")
    assert pod.status() == 503
    line = next(line for line in pod.tail().splitlines() if "AuthenticationError" in line)
    assert f"redis://127.0.0.1:{acl_redis.port}/0" in line
    assert "WRONGPASS" in line or "invalid username-password" in line
    pod.stop()
    assert wrong not in pod.log.read_text()
    no_secret_in_logs(tmp_path)


async def test_credentials_inside_a_url_still_work_and_are_never_logged(
    acl_redis: RedisProcess, relay_factory, tmp_path: Path
) -> None:
    """Deprecated, kept for existing deployments: `redis://user:password@host:port`."""
    url = f"redis://{contract.RELAY_REDIS_USER}:{RELAY_PASSWORD}@127.0.0.1:{acl_redis.port}/0"
    pod = relay_factory("legacy", redis_urls=[url])
    async with RelayClient(pod.url) as client:
        await client.join("r")
        assert (await client.publish("r", 1, id="x")) is not None
    await asyncio.to_thread(pod.stop)
    assert f"127.0.0.1:{acl_redis.port}" in pod.log.read_text()
    no_secret_in_logs(tmp_path)


def test_redis_starts_with_the_operators_arguments_and_its_probe_tells_ready(
    tmp_path: Path,
) -> None:
    """The StatefulSet's command line and readiness probe, run as they are on a real server
    (paths mapped into the test's directory, the port onto a free one)."""
    passwords = RedisPasswords(RELAY_PASSWORD, OPERATOR_PASSWORD)
    children = desired(
        parse({}),
        {"name": "arena", "namespace": "games", "uid": "u"},
        Inputs(relay_image="img", jwt_secret="s", redis_passwords=passwords),
    )
    (sts,) = [m for m in children if m["kind"] == "StatefulSet"]
    (container,) = sts["spec"]["template"]["spec"]["containers"]
    port = free_port()
    (tmp_path / "acl").mkdir()
    (tmp_path / "acl" / secrets.ACL_FILE_KEY).write_text(acl_file(passwords))
    args = [
        a.replace(ACL_DIR, str(tmp_path / "acl")).replace("/data", str(tmp_path))
        for a in container["args"]
    ]
    args[args.index("--port") + 1] = str(port)
    server = subprocess.Popen(
        [*args, "--bind", "127.0.0.1", "--logfile", str(tmp_path / "redis-operator-args.log")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    try:
        probe = container["readinessProbe"]["exec"]["command"]
        probe = [part.replace(f"-p {REDIS_PORT}", f"-p {port}") for part in probe]

        def probe_passes(password: str) -> bool:
            env = {**os.environ, "REDISCLI_AUTH": password}
            return subprocess.run(probe, env=env, timeout=10, capture_output=True).returncode == 0

        wait_until(lambda: probe_passes(OPERATOR_PASSWORD), 10, "the readiness probe to pass")
        assert not probe_passes("wrong")
        client = redis.Redis(port=port, username=contract.RELAY_REDIS_USER, password=RELAY_PASSWORD)
        with pytest.raises(NoPermissionError):
            client.config_get("maxmemory")
        operator = redis.Redis(
            port=port, username=contract.OPERATOR_REDIS_USER, password=OPERATOR_PASSWORD
        )
        with pytest.raises(NoPermissionError):
            operator.config_get("maxmemory")
        info = subprocess.run(
            ["redis-cli", "-p", str(port), "--user", contract.OPERATOR_REDIS_USER, "ping"],
            env={**os.environ, "REDISCLI_AUTH": OPERATOR_PASSWORD},
            capture_output=True,
            text=True,
            timeout=10,
        )
        assert info.stdout.strip() == "PONG"
    finally:
        stop_process(server)
    no_secret_in_logs(tmp_path)


@pytest.mark.parametrize("fsync", ["everysec", "always"])
async def test_durable_history_survives_a_restart_with_the_operators_acl_file_and_aof(
    tmp_path: Path, relay_factory, fsync: str
) -> None:
    """The operator's Redis (its arguments: AOF, `redis.appendFsync`; its ACL file)
    restarted cleanly keeps every room's history and epoch. Redis replays the AOF as the
    default user; with that user bare `off` it refused every logged script (MULTI/EXEC,
    NOPERM), so each restart lost every durable publish (secrets.DEFAULT_USER)."""
    passwords = RedisPasswords(RELAY_PASSWORD, OPERATOR_PASSWORD)
    children = desired(
        parse({"redis": {"appendFsync": fsync}}),
        {"name": "arena", "namespace": "games", "uid": "u"},
        Inputs(relay_image="img", jwt_secret="s", redis_passwords=passwords),
    )
    (sts,) = [m for m in children if m["kind"] == "StatefulSet"]
    (container,) = sts["spec"]["template"]["spec"]["containers"]
    assert "--appendonly" in container["args"]
    (tmp_path / "acl").mkdir()
    # The operator's users, and one of the test's own that may read the configuration.
    inspector = f"user inspector on >{OPERATOR_PASSWORD} ~* &* +@all\n"
    (tmp_path / "acl" / secrets.ACL_FILE_KEY).write_text(acl_file(passwords) + inspector)
    port = free_port()
    args = [
        a.replace(ACL_DIR, str(tmp_path / "acl")).replace("/data", str(tmp_path))
        for a in container["args"]
    ]
    args[args.index("--port") + 1] = str(port)
    log = tmp_path / "redis-aof.log"

    def start() -> subprocess.Popen[bytes]:
        server = subprocess.Popen(
            [*args, "--bind", "127.0.0.1", "--logfile", str(log)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )
        client = operator_client_at(port)  # the user the readiness probe pings as
        wait_until(lambda: _pings(client), 10, "redis-server to answer")
        return server

    server = start()
    try:
        admin = redis.Redis(port=port, username="inspector", password=OPERATOR_PASSWORD)
        assert admin.config_get("appendfsync") == {"appendfsync": fsync}
        url = f"redis://{contract.RELAY_REDIS_USER}:{RELAY_PASSWORD}@127.0.0.1:{port}"
        pod = relay_factory("a", redis_urls=[url])
        async with RelayClient(pod.url) as client:
            joined = await client.join("kept")
            for n in range(3):
                await client.publish("kept", n, id=f"k{n}")
        server.terminate()  # SIGTERM: Redis's clean shutdown
        assert server.wait(timeout=10) == 0
        server = start()
        await eventually(lambda: pod.status() == 200, 15, "the relay to reconnect")
        async with RelayClient(pod.url) as client:
            since = {"epoch": joined["epoch"], "offset": 0}
            resumed = await client.join("kept", since=since)
            assert resumed["recovered"] is True, resumed  # same epoch, history kept
            assert [(await client.receive(timeout=5))["data"] for _ in range(3)] == [0, 1, 2]
        assert "NOPERM" not in log.read_text()
    finally:
        stop_process(server)


def operator_client_at(port: int) -> redis.Redis:
    return redis.Redis(port=port, username=contract.OPERATOR_REDIS_USER, password=OPERATOR_PASSWORD)


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.exceptions.RedisError:
        return False


async def test_a_relay_user_without_info_leaves_the_relay_unready_with_a_line_naming_the_grant(
    acl_redis: RedisProcess, relay_factory, tmp_path: Path
) -> None:
    """An external Redis whose relay user was created before the history check (no `+info`,
    e.g. a fleet upgraded to it): the shard is unready, and the log line says what to grant
    and why, not only Redis's NOPERM."""
    assert "+info" in contract.RELAY_ACL_RULES
    redis_acl.admin(acl_redis).execute_command("ACL", "SETUSER", contract.RELAY_REDIS_USER, "-info")
    pod: RelayProcess = relay_factory(
        "noinfo",
        redis_urls=[f"shard-i=redis://127.0.0.1:{acl_redis.port}/0"],
        env={
            contract.ENV_REDIS_USERNAME: contract.RELAY_REDIS_USER,
            contract.ENV_REDIS_PASSWORD: RELAY_PASSWORD,
        },
        ready=False,
    )
    await eventually(lambda: "+info" in pod.tail(), 10, "a line naming the grant")
    assert pod.status() == 503
    line = next(line for line in pod.tail().splitlines() if "+info" in line)
    assert f"redis://127.0.0.1:{acl_redis.port}/0" in line and "INFO replication" in line, line
    pod.stop()
    no_secret_in_logs(tmp_path)
