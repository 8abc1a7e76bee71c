"""Fixtures shared by every tier: real redis-server and relay processes on free ports."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from support.processes import RedisProcess, RelayProcess
from support.rediscluster import RedisCluster

RelayFactory = Callable[..., RelayProcess]
RedisFactory = Callable[..., RedisProcess]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The slowest, most environment-dependent tiers last: e2e, then the real-pod tier
    (a stable sort keeps the order within each)."""
    items.sort(
        key=lambda item: (
            item.get_closest_marker("e2e") is not None
            or item.get_closest_marker("pods") is not None,
            item.get_closest_marker("pods") is not None,
        )
    )


@pytest.fixture
def redis_factory(tmp_path: Path) -> Iterator[RedisFactory]:
    started: list[RedisProcess] = []

    def make(*, aof: bool = False) -> RedisProcess:
        server = RedisProcess(tmp_path, aof=aof).start()
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop()


@pytest.fixture
def redis(redis_factory: RedisFactory) -> RedisProcess:
    return redis_factory()


@pytest.fixture(scope="module")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    """A 3-master Redis Cluster on loopback, shared by a module's tests (each test that
    needs it empty flushes it: `redis_cluster.flush()`)."""
    cluster = RedisCluster(tmp_path_factory.mktemp("redis-cluster")).start()
    yield cluster
    cluster.stop()


@pytest.fixture
def relay_factory(tmp_path: Path) -> Iterator[RelayFactory]:
    """Start relay servers: `relay_factory("a", redis_urls=[...], env={...})`."""
    started: list[RelayProcess] = []

    def make(
        node_id: str,
        *,
        redis_urls: list[str] | None = None,
        env: dict[str, str] | None = None,
        ready: bool = True,
    ) -> RelayProcess:
        settings = {"RELAY_REDIS_URLS": ",".join(redis_urls or []), "RELAY_AUTH": "none"}
        relay = RelayProcess(tmp_path, {**settings, **(env or {})}, node_id).start(ready=ready)
        started.append(relay)
        return relay

    yield make
    for relay in started:
        relay.kill()


@pytest.fixture(params=["rust", "python"])
def frames(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Runs a test once with each implementation of the frame reader and the fan-out's
    outboxes (relay.core): the compiled core (RELAY_CORE=on: a relay without it refuses
    to start, so a missing core fails here rather than passing on Python twice) and the
    pure-Python path (RELAY_CORE=off). The relay processes the test starts inherit it."""
    monkeypatch.setenv("RELAY_CORE", "on" if request.param == "rust" else "off")
    return str(request.param)
