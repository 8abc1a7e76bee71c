"""The server API on the admin port, against real relay processes and a real Redis
(issue 15: API tests; issue 12 item 9: what the player port serves)."""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import subprocess
import sys
from typing import Any

import httpx
import pytest

from gamecluster_client import Connection as RelayClient
from relay import auth
from relay.api import models
from relay.api.client import ApiCallError, AsyncRelayApi
from support.otlp_sink import CONSUMER, PRODUCER, SinkSpan, running
from support.processes import RedisProcess

pytestmark = pytest.mark.integration

KEY = "k" * 40
OLD_KEY = "o" * 40
SECRET = "s" * 40


async def next_event(client: RelayClient) -> dict[str, Any]:
    message = await client.receive(timeout=5)
    assert message["op"] == "event", message
    return message


def assert_error_body(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"code", "message"} and body["code"] == code, body


def test_player_port_serves_only_ws_health_and_the_demo_page(relay_factory) -> None:
    pod = relay_factory("solo")
    with httpx.Client(base_url=pod.http) as player, httpx.Client(base_url=pod.admin) as admin:
        check_ports(pod.http, pod.admin, player, admin)


def check_ports(http: str, admin_url: str, player: httpx.Client, admin: httpx.Client) -> None:
    for path in ("/docs", "/redoc", "/openapi.json", "/metrics", "/api/v1/nodes", "/api/docs"):
        assert player.get(path).status_code == 404, path
    assert player.get("/healthz").status_code == 200
    assert player.get("/readyz").status_code == 200
    page = player.get("/")
    assert page.status_code == 200 and "<html" in page.text.lower()

    assert admin_url != http
    assert "relay_connections" in admin.get("/metrics").text
    schema = admin.get("/api/v1/openapi.json").json()
    assert "/api/v1/rooms/{room}/events" in schema["paths"]
    assert "ApiError" in schema["components"]["schemas"]
    docs = admin.get("/api/docs")
    assert docs.status_code == 200
    # Nothing loaded from elsewhere: no absolute URL in a src or href.
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", docs.text)
    assert admin.get("/ws").status_code == 404
    for path in ("/docs", "/redoc", "/openapi.json"):
        assert admin.get(path).status_code == 404, path


def test_admin_port_zero_serves_everything_on_the_player_port(relay_factory) -> None:
    pod = relay_factory("solo", env={"RELAY_ADMIN_PORT": "0"})
    assert pod.admin == pod.http
    with httpx.Client(base_url=pod.http) as player:
        assert player.get("/metrics").status_code == 200
        assert player.get("/api/v1/nodes").json()["nodes"][0]["node"] == "solo"
        assert player.get("/docs").status_code == 404


def test_api_is_off_without_keys_in_redis_mode(redis: RedisProcess, relay_factory) -> None:
    pod = relay_factory("a", redis_urls=[redis.url])
    response = httpx.post(pod.admin + "/api/v1/rooms/x/events", json={"data": 1})
    assert_error_body(response, 404, "not_found")
    assert httpx.get(pod.admin + "/metrics").status_code == 200  # metrics stay


def test_api_keys_none_wrong_old_right_and_jwt_with_api_claim(
    redis: RedisProcess, relay_factory
) -> None:
    env = {"RELAY_AUTH": "jwt", "RELAY_JWT_SECRET": SECRET}
    url = "/api/v1/rooms/lobby/events"
    # During the rotation both keys work.
    pod = relay_factory(
        "a", redis_urls=[redis.url], env={**env, "RELAY_API_KEYS": f"{KEY},{OLD_KEY}"}
    )
    for key in (KEY, OLD_KEY):
        assert (
            httpx.post(pod.admin + url, json={"data": 1}, headers={"x-api-key": key}).status_code
            == 200
        )
    pod.kill()
    # After the rotation window, only the new key.
    pod = relay_factory("b", redis_urls=[redis.url], env={**env, "RELAY_API_KEYS": KEY})
    player = auth.mint(SECRET, subject="p1", join=["*"], publish=["*"], ttl=600)
    backend = auth.mint(SECRET, subject="matchmaker", ttl=600, api=True)
    with httpx.Client(base_url=pod.admin) as api:
        check_keys(api, url, player, backend)
    # No key, token or secret in any log line.
    log = pod.log.read_text()
    for secret in (KEY, OLD_KEY, SECRET, player, backend):
        assert secret not in log


def check_keys(api: httpx.Client, url: str, player: str, backend: str) -> None:
    assert_error_body(api.post(url, json={"data": 1}), 401, "unauthorized")
    assert_error_body(
        api.post(url, json={"data": 1}, headers={"x-api-key": "x" * 40}), 401, "unauthorized"
    )
    assert_error_body(
        api.post(url, json={"data": 1}, headers={"x-api-key": OLD_KEY}), 401, "unauthorized"
    )
    assert api.post(url, json={"data": 1}, headers={"x-api-key": KEY}).status_code == 200

    bearer = {"Authorization": f"Bearer {player}"}  # valid, but a player's: no api claim
    assert_error_body(api.post(url, json={"data": 1}, headers=bearer), 403, "forbidden")
    bearer = {"Authorization": f"Bearer {backend}"}
    assert api.post(url, json={"data": 1}, headers=bearer).status_code == 200


async def test_http_publish_reaches_ws_members_on_both_pods_and_a_retry_stores_once(
    redis: RedisProcess, relay_factory
) -> None:
    pod_a = relay_factory("a", redis_urls=[redis.url], env={"RELAY_API_KEYS": KEY})
    pod_b = relay_factory("b", redis_urls=[redis.url], env={"RELAY_API_KEYS": KEY})
    async with (
        RelayClient(pod_a.url) as on_a,
        RelayClient(pod_b.url) as on_b,
        AsyncRelayApi(pod_a.admin, api_key=KEY) as api,
    ):
        await on_a.join("match:1")
        await on_b.join("match:1")
        first = await api.publish("match:1", {"move": "e2e4"}, id="move-1")
        retry = await api.publish("match:1", {"move": "e2e4"}, id="move-1")
        assert (first.offset, first.duplicate) == (1, False)
        assert (retry.offset, retry.epoch, retry.duplicate) == (1, first.epoch, True)
        # The same through the Idempotency-Key header.
        headers = {"x-api-key": KEY, "Idempotency-Key": "move-2"}
        async with httpx.AsyncClient(base_url=pod_a.admin) as http:
            for _ in range(2):
                answer = await http.post(
                    "/api/v1/rooms/match:1/events", json={"data": 2}, headers=headers
                )
                assert answer.json()["offset"] == 2
        for client in (on_a, on_b):
            assert [(await next_event(client))["offset"] for _ in range(2)] == [1, 2]
        page = await api.history("match:1")
        assert [e.offset for e in page.events] == [1, 2]
        assert page.events[0].data == {"move": "e2e4"}


async def test_batch_with_one_bad_item_delivers_the_others(
    redis: RedisProcess, relay_factory
) -> None:
    pod = relay_factory("a", redis_urls=[redis.url], env={"RELAY_API_KEYS": KEY})
    async with RelayClient(pod.url) as member, AsyncRelayApi(pod.admin, api_key=KEY) as api:
        await member.join("b:1")
        items = [
            models.BatchItem(room="b:1", data=1),
            models.BatchItem(room="bad room!", data=2),
            models.BatchItem(room="b:1", data=3, id="x" * 65),
            models.BatchItem(room="b:1", data=4),
        ]
        answer = await api.publish_batch(items)
        outcomes = [(r.index, r.error.code if r.error else r.result.offset) for r in answer.results]  # type: ignore[union-attr]
        assert outcomes == [(0, 1), (1, "bad_request"), (2, "bad_request"), (3, 2)]
        assert [(await next_event(member))["data"] for _ in range(2)] == [1, 4]
    async with httpx.AsyncClient(base_url=pod.admin, headers={"x-api-key": KEY}) as http:
        too_many = {
            "items": [{"room": "b:1", "data": n} for n in range(models.MAX_BATCH_ITEMS + 1)]
        }
        assert_error_body(await http.post("/api/v1/publish", json=too_many), 400, "bad_request")
        big = {"items": [{"room": "b:1", "data": "x" * models.MAX_BODY_BYTES}]}
        assert_error_body(await http.post("/api/v1/publish", json=big), 413, "too_large")
        assert_error_body(await http.get("/api/v1/publish"), 405, "bad_request")


async def test_history_pages_return_offsets_1_to_n_and_a_foreign_epoch_is_409(
    redis: RedisProcess, relay_factory
) -> None:
    pod = relay_factory(
        "a",
        redis_urls=[redis.url],
        env={"RELAY_API_KEYS": KEY, "RELAY_ROOMS": '[{"match": "pos:*", "policy": "volatile"}]'},
    )
    n = 23
    async with AsyncRelayApi(pod.admin, api_key=KEY) as api:
        answer = await api.publish_batch(
            [models.BatchItem(room="h:1", data=i) for i in range(1, n + 1)]
        )
        assert all(r.result is not None for r in answer.results)
        for reverse, expected in ((False, list(range(1, n + 1))), (True, list(range(n, 0, -1)))):
            seen: list[int] = []
            page = await api.history("h:1", limit=5, reverse=reverse)
            pages = 1
            while page.cursor is not None:
                seen += [e.offset for e in page.events]
                page = await api.history("h:1", limit=5, cursor=page.cursor)
                pages += 1
            seen += [e.offset for e in page.events]
            assert seen == expected
            assert pages == 5
        assert [e.data for e in (await api.history("h:1", since=20)).events] == [21, 22, 23]
        with pytest.raises(ApiCallError) as foreign:
            await api.history("h:1", since=3, epoch="not-the-epoch")
        assert (foreign.value.status, foreign.value.code) == (409, "epoch_mismatch")
        with pytest.raises(ApiCallError) as volatile:
            await api.history("pos:1")
        assert (volatile.value.status, volatile.value.code) == (400, "not_durable")


async def test_publish_with_redis_down_is_503_unavailable(
    redis: RedisProcess, relay_factory
) -> None:
    pod = relay_factory("a", redis_urls=[redis.url], env={"RELAY_API_KEYS": KEY})
    redis.kill()
    async with httpx.AsyncClient(base_url=pod.admin, headers={"x-api-key": KEY}) as http:
        answer = await http.post("/api/v1/rooms/r/events", json={"data": 1, "id": "a"})
        assert_error_body(answer, 503, "unavailable")
        answer = await http.post("/api/v1/publish", json={"items": [{"room": "r", "data": 1}]})
        assert answer.status_code == 200
        assert answer.json()["results"][0]["error"]["code"] == "unavailable"


async def test_disconnect_by_subject_closes_its_sockets_on_both_pods_and_nobody_elses(
    redis: RedisProcess, relay_factory
) -> None:
    env = {"RELAY_AUTH": "jwt", "RELAY_JWT_SECRET": SECRET, "RELAY_API_KEYS": KEY}
    pod_a = relay_factory("a", redis_urls=[redis.url], env=env)
    pod_b = relay_factory("b", redis_urls=[redis.url], env=env)

    def token(sub: str) -> str:
        return auth.mint(SECRET, subject=sub, join=["*"], publish=["*"], ttl=300)

    async with (
        RelayClient(pod_a.url, token=token("cheater")) as cheat_a,
        RelayClient(pod_b.url, token=token("cheater")) as cheat_b,
        RelayClient(pod_a.url, token=token("honest")) as honest_a,
        RelayClient(pod_b.url, token=token("honest")) as honest_b,
        AsyncRelayApi(pod_b.admin, api_key=KEY) as api,
    ):
        for client in (cheat_a, cheat_b, honest_a, honest_b):
            await client.join("arena")
        await api.remove("cheater", "arena")
        for client in (cheat_a, cheat_b):
            assert await client.receive(5) == {"op": "left", "room": "arena", "reason": "removed"}
        await api.publish("arena", "after removal")
        for client in (honest_a, honest_b):
            assert (await next_event(client))["data"] == "after removal"

        await api.disconnect("cheater", "cheating")
        for client in (cheat_a, cheat_b):
            # The removed ones got no event: the next message is the disconnect.
            assert await client.receive(5) == {
                "op": "disconnect",
                "reason": "cheating",
                "reconnect": False,
            }
            assert (await client.receive(5))["op"] == "closed"
            assert client.close_code == 4003
        for client in (honest_a, honest_b):
            assert (await client.ping())["op"] == "pong"
            assert client.close_code is None


async def test_http_publish_with_traceparent_is_one_trace_to_the_consumer_on_another_pod(
    redis: RedisProcess, relay_factory
) -> None:
    with running() as sink:
        env = {**sink.env(), "RELAY_API_KEYS": KEY}
        pod_a = relay_factory("a", redis_urls=[redis.url], env=env)
        pod_b = relay_factory("b", redis_urls=[redis.url], env=env)
        trace_id, parent_id = secrets.token_hex(16), secrets.token_hex(8)
        async with RelayClient(pod_b.url) as member, AsyncRelayApi(pod_a.admin, api_key=KEY) as api:
            await member.join("t:1")
            await api.publish("t:1", "traced", id="t1", traceparent=f"00-{trace_id}-{parent_id}-01")
            assert (await next_event(member))["data"] == "traced"

            def both(spans: list[SinkSpan]) -> bool:
                names = [s.name for s in spans]
                return "publish room" in names and "process room" in names

            spans = await asyncio.to_thread(sink.wait_for, both, 15, "producer + consumer")
    [producer] = [s for s in spans if s.name == "publish room"]
    [consumer] = [s for s in spans if s.name == "process room"]
    assert (producer.kind, producer.instance) == (PRODUCER, "a")
    assert (producer.trace_id, producer.parent_span_id) == (trace_id, parent_id)
    assert (consumer.kind, consumer.instance) == (CONSUMER, "b")
    assert (consumer.trace_id, consumer.parent_span_id) == (trace_id, producer.span_id)
    assert producer.attributes["relay.session.id"] == "api"


def relay_cli(*args: str) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-m", "relay.cli", *args], capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stderr
    answer: dict[str, Any] = json.loads(done.stdout)
    return answer


def test_cli_verbs_use_the_api(redis: RedisProcess, relay_factory) -> None:
    rooms = '[{"match": "lobby:*", "presence": true}]'
    pod = relay_factory(
        "a", redis_urls=[redis.url], env={"RELAY_API_KEYS": KEY, "RELAY_ROOMS": rooms}
    )
    api = ("--api", pod.admin, "--api-key", KEY)
    first = relay_cli("publish", "cli:1", '{"n": 1}', "--id", "one", *api)
    again = relay_cli("publish", "cli:1", '{"n": 1}', "--id", "one", *api)
    assert (first["offset"], again["duplicate"]) == (1, True)
    page = relay_cli("history", "cli:1", *api)
    assert [(e["offset"], e["data"]) for e in page["events"]] == [(1, {"n": 1})]
    assert relay_cli("presence", "lobby:1", *api) == {"room": "lobby:1", "count": 0, "members": []}
    assert relay_cli("disconnect", "someone", "--reason", "cheating", *api)["subject"] == "someone"
    refused = subprocess.run(
        [
            sys.executable,
            "-m",
            "relay.cli",
            "history",
            "cli:1",
            "--api",
            pod.admin,
            "--api-key",
            "x" * 40,
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert refused.returncode == 1 and "401 unauthorized" in refused.stderr


async def test_rooms_and_nodes_come_from_every_pods_reports(
    redis: RedisProcess, relay_factory
) -> None:
    env = {"RELAY_API_KEYS": KEY, "RELAY_LOAD_REPORT_SECONDS": "0.5"}
    pod_a = relay_factory("a", redis_urls=[redis.url], env=env)
    pod_b = relay_factory("b", redis_urls=[redis.url], env=env)
    async with (
        RelayClient(pod_a.url) as one,
        RelayClient(pod_b.url) as two,
        RelayClient(pod_b.url) as three,
        AsyncRelayApi(pod_a.admin, api_key=KEY) as api,
    ):
        await one.join("lobby:eu")
        await two.join("lobby:eu")
        await three.join("match:9")

        async def reported() -> dict[str, int]:
            # The reports are written every 0.5 s: poll them, bounded.
            for _ in range(40):
                rooms = await api.rooms()
                counts = {r.room: r.members for r in rooms.rooms}
                if counts.get("lobby:eu") == 2 and "match:9" in counts:
                    return counts
                await asyncio.sleep(0.25)
            raise TimeoutError(f"rooms never reported: {counts}")

        assert await reported() == {"lobby:eu": 2, "match:9": 1}
        lobbies = await api.rooms(match="lobby:*")
        assert [(r.room, r.members) for r in lobbies.rooms] == [("lobby:eu", 2)]
        nodes = {n.node: n for n in (await api.nodes()).nodes}
        assert sorted(nodes) == ["a", "b"]
        assert (nodes["a"].connections, nodes["b"].connections) == (1, 2)
        assert nodes["b"].rooms == 2 and nodes["a"].version
