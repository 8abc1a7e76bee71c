"""Redis with ACL users, as the operator runs it: the relay's user can do what the relay
needs and nothing else, credentials never reach a log line, a wrong password is named."""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from collections.abc import Awaitable, Callable, Iterator
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
from gamecluster.manifests.secrets import RedisPasswords, acl_file
from gamecluster.spec import parse
from gamecluster_client import Connection as RelayClient
from relay import auth as relay_auth
from relay import contract
from relay.api.client import AsyncRelayApi
from relay.broker import keys
from support.processes import RedisProcess, RelayProcess, free_port, stop_process, wait_until
from support.waiting import eventually

pytestmark = pytest.mark.integration

RELAY_PASSWORD = "relay-" + token_urlsafe(24)
OPERATOR_PASSWORD = "operator-" + token_urlsafe(24)


@pytest.fixture
def acl_redis(tmp_path: Path) -> Iterator[RedisProcess]:
    """A redis-server with the operator's ACL file: default user off, protected mode on."""
    acl = tmp_path / "users.acl"
    acl.write_text(acl_file(RedisPasswords(RELAY_PASSWORD, OPERATOR_PASSWORD)))
    server = RedisProcess(
        tmp_path,
        extra_args=["--aclfile", str(acl), "--protected-mode", "yes"],
        cli_auth=(contract.OPERATOR_REDIS_USER, OPERATOR_PASSWORD),
    ).start()
    yield server
    server.stop()


def relay_client(server: RedisProcess) -> redis.Redis:
    return redis.Redis(
        port=server.port, username=contract.RELAY_REDIS_USER, password=RELAY_PASSWORD
    )


def no_secret_in_logs(tmp_path: Path) -> None:
    """Every log line of the run (relays, redis-server), searched for every password."""
    logs = list(tmp_path.glob("*.log"))
    assert logs
    for log in logs:
        text = log.read_text(errors="replace")
        for password in (RELAY_PASSWORD, OPERATOR_PASSWORD):
            assert password not in text, f"a password is in {log.name}"


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
    # Durable and volatile publishes, history, dedupe, the probe: every script and command.
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


async def until(check: Callable[[], Awaitable[bool]], what: str, timeout: float = 10) -> None:
    """Poll an async state check (presence and node reports have no event to await)."""
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.05)


async def test_presence_the_server_api_and_the_control_channel_work_as_the_relay_user(
    acl_redis: RedisProcess, relay_factory, tmp_path: Path
) -> None:
    """Every Redis command of presence (member hashes, the alive set, node reports, the
    dead-node sweep), of the server API (publish, history, rooms, nodes) and of the control
    channel between relay servers (disconnect), run under the relay's ACL user: a command or
    name missing from RELAY_ACL_RULES fails here with NOPERM."""
    report_seconds = 0.3
    env = {
        contract.ENV_REDIS_USERNAME: contract.RELAY_REDIS_USER,
        contract.ENV_REDIS_PASSWORD: RELAY_PASSWORD,
        contract.ENV_LOAD_REPORT_SECONDS: str(report_seconds),
        contract.ENV_AUTH: "jwt",
        contract.ENV_JWT_SECRET: JWT_SECRET,
        contract.ENV_API_KEYS: API_KEY,
        contract.ENV_ROOMS: orjson.dumps([{"match": "lobby:*", "presence": True}]).decode(),
    }
    urls = [f"shard-a=redis://127.0.0.1:{acl_redis.port}/0"]
    pod_a = relay_factory("a", redis_urls=urls, env=env)
    pod_b = relay_factory("b", redis_urls=urls, env=env)

    def token(sub: str) -> str:
        return relay_auth.mint(JWT_SECRET, subject=sub, join=["*"], publish=["*"], ttl=300)

    async with (
        RelayClient(pod_a.url, token=token("ann")) as ann,
        RelayClient(pod_b.url, token=token("bob")) as bob,
        AsyncRelayApi(pod_a.admin, api_key=API_KEY) as api,
    ):
        for client in (ann, bob):
            await client.join("lobby:1")
        # Presence: members on both pods listed by either (HSET/HVALS/HLEN on the room's
        # hash, the joins sent between pods over the control channel).
        everyone = {ann.welcome["session"], bob.welcome["session"]}

        async def members() -> set[str]:
            reply = await ann.request({"op": "presence", "room": "lobby:1"})
            return {m["conn"] for m in reply["members"] or []}

        async def both_listed() -> bool:
            return await members() == everyone

        await until(both_listed, "both members listed")
        listed = await api.presence("lobby:1")
        assert listed.count == 2
        # The server API: publish (a Lua script) and read the history back.
        published = await api.publish("lobby:1", {"from": "server"}, id="s1")
        assert published.offset == 1 and not published.duplicate
        page = await api.history("lobby:1")
        assert [event.data for event in page.events] == [{"from": "server"}]

        # GET /nodes and /rooms read the node reports and room counts (MGET, HGETALL, ZRANGE).
        async def reported() -> bool:
            nodes = {n.node for n in (await api.nodes()).nodes}
            rooms = {r.room: r.members for r in (await api.rooms("lobby:*")).rooms}
            return nodes == {"a", "b"} and rooms == {"lobby:1": 2}

        await until(reported, "both nodes' reports (GET /nodes, GET /rooms)")
        # The control channel: a disconnect asked on pod a closes bob's socket on pod b.
        await api.disconnect("bob", "test")
        message = await bob.receive(5)
        while message["op"] != "disconnect":
            message = await bob.receive(5)
        assert message == {"op": "disconnect", "reason": "test", "reconnect": False}

        # bob's leave reaches ann: his member entry was removed (HDEL) and announced.
        async def bob_left() -> bool:
            return await members() == {ann.welcome["session"]}

        await until(bob_left, "bob's leave of the presence room")
    # A killed pod: the survivor sweeps its node from the alive set and its members out
    # (ZRANGEBYSCORE, ZREM, SMEMBERS, DEL): its keys are gone after a few report intervals.
    async with RelayClient(pod_b.url, token=token("cyd")) as cyd:
        await cyd.join("lobby:2")
        client = relay_client(acl_redis)
        await eventually(
            lambda: client.hlen(keys.presence("lobby:2")) == 1, 10, "cyd's member entry"
        )
        pod_b.kill()
    await eventually(
        lambda: (
            client.hlen(keys.presence("lobby:2")) == 0
            and b"b" not in client.zrange(keys.ALIVE, 0, -1)
        ),
        15,
        "the dead node's members swept by the survivor",
    )
    pod_a.stop()
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
        a.replace("/etc/redis/acl", str(tmp_path / "acl")).replace("/data", str(tmp_path))
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
