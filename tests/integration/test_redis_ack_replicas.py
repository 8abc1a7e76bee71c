"""RELAY_REDIS_ACK_REPLICAS: a durable publish is acked only once replicas have it (WAIT).

Real processes: a master and a replica (support.sentinel.replicated, the operator's ACL
file; the relay logs in as the relay's ACL user, so WAIT and the duplicate's EXPIRE are
proven allowed). A replica that cannot confirm is a SIGSTOPped one: connected, its offset
frozen.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from pydantic import SecretStr

from gamecluster_client import Connection as RelayClient
from gamecluster_client import ServerError as RelayError
from relay import contract, protocol
from relay.api.client import ApiCallError, AsyncRelayApi
from relay.broker import keys
from relay.broker.base import BrokerUnavailable, NotReplicated
from relay.broker.connection import Connector
from relay.broker.options import RedisOptions
from relay.broker.redis import RedisBroker
from relay.rooms import RoomPolicy
from support import redis_acl
from support.metrics import metric_value
from support.processes import RedisProcess, stop_process
from support.sentinel import replicated
from support.waiting import eventually

pytestmark = pytest.mark.integration

ACK_TIMEOUT = 0.3
API_KEY = "k" * 40
DURABLE = RoomPolicy()
VOLATILE = RoomPolicy(policy="volatile")


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[tuple[RedisProcess, RedisProcess]]:
    master, replica = replicated(tmp_path)
    yield master, replica
    if replica.proc is not None and replica.proc.poll() is None:
        os.kill(replica.proc.pid, signal.SIGCONT)
    for process in (replica.proc, master.proc):
        stop_process(process)


def broker(master: RedisProcess, node: str, *, ack_timeout: float = ACK_TIMEOUT) -> RedisBroker:
    connector = Connector(
        username=contract.RELAY_REDIS_USER, password=SecretStr(redis_acl.RELAY_PASSWORD)
    )
    return RedisBroker(
        [master.url],
        node,
        RedisOptions(
            connector,
            timeout=1.0,
            probe_interval=0.5,
            probe_timeout=1.0,
            ack_replicas=1,
            ack_timeout=ack_timeout,
        ),
    )


async def started(made: RedisBroker, brokers: list[RedisBroker]) -> None:
    """Start `made` (closed by the fixture) and wait until its shard is live: a room of a
    shard not live yet is refused at once (relay.broker.base.ShardDown)."""
    brokers.append(made)
    await made.start()
    await eventually(lambda: made.ready, 10, "the broker's shard to be live")


@pytest.fixture
async def brokers(pair: tuple[RedisProcess, RedisProcess]) -> AsyncIterator[list[RedisBroker]]:
    made: list[RedisBroker] = []
    yield made
    await asyncio.gather(*(b.close() for b in made))


def stored_offset(server: RedisProcess, room: str) -> int:
    """The room's last offset on `server`, read at once (no waiting for replication)."""
    return int(redis_acl.admin(server).hget(keys.meta(room), "offset") or 0)


def stopped(replica: RedisProcess) -> None:
    assert replica.proc is not None
    os.kill(replica.proc.pid, signal.SIGSTOP)


def resumed(replica: RedisProcess) -> None:
    assert replica.proc is not None
    os.kill(replica.proc.pid, signal.SIGCONT)


async def test_an_acked_durable_publish_is_on_the_replica_and_an_unconfirmed_one_is_refused(
    pair: tuple[RedisProcess, RedisProcess], brokers: list[RedisBroker], tmp_path: Path
) -> None:
    master, replica = pair
    first = broker(master, "a")
    await started(first, brokers)
    # Confirmed: the replica has every acked event the moment the ack comes.
    for n in range(1, 6):
        result = await first.publish("match", n, ts=1, policy=DURABLE, msg_id=f"e{n}")
        assert result.offset == n
        assert stored_offset(replica, "match") == n
    # The replica stops (connected, frozen): the master stores, nobody confirms.
    stopped(replica)
    with pytest.raises(NotReplicated, match="0 of 1 replicas confirmed"):
        await first.publish("match", 6, ts=1, policy=DURABLE, msg_id="e6")
    assert stored_offset(master, "match") == 6
    # Volatile rooms never wait.
    sent = await first.publish("fast", 1, ts=1, policy=VOLATILE, msg_id="v1")
    assert sent.offset is None and not sent.duplicate
    # A retry through another relay server (a fresh connection that never wrote) is not
    # confirmed either: by WAIT's documented rule (the connection's own writes) only the
    # EXPIRE before it makes it cover event 6; redis-server's WAIT covers it anyway (it
    # moves a connection's offset after any command), so this checks the outcome only.
    second = broker(master, "b")
    await started(second, brokers)
    with pytest.raises(NotReplicated):
        await second.publish("match", 6, ts=1, policy=DURABLE, msg_id="e6")
    # The replica catches up: the retry is acked with the original offset, stored once.
    resumed(replica)
    retried = await second.publish("match", 6, ts=1, policy=DURABLE, msg_id="e6")
    assert (retried.offset, retried.duplicate) == (6, True)
    assert stored_offset(replica, "match") == 6
    assert redis_acl.acl_denials(master) == []
    ran, refused = redis_acl.commands_run(master)
    assert {"wait", "expire"} <= ran
    assert set(refused) <= {"ping"}  # the replica's sync handshake pings before its AUTH
    redis_acl.no_secret_in_logs(tmp_path)


async def test_publishes_in_flight_share_one_wait(
    pair: tuple[RedisProcess, RedisProcess], brokers: list[RedisBroker]
) -> None:
    """One WAIT covers every write its connection sent before it: 400 concurrent publishes
    need far fewer WAITs than events."""
    master, replica = pair
    shared = broker(master, "a", ack_timeout=0.9)  # a busy machine must not fail this one
    await started(shared, brokers)
    await shared.publish("warm", 0, ts=1, policy=DURABLE)  # connection open, script loaded
    before = redis_acl.admin(master).info("commandstats").get("cmdstat_wait", {}).get("calls", 0)
    results = await asyncio.gather(
        *(shared.publish(f"r{n % 8}", n, ts=1, policy=DURABLE) for n in range(400))
    )
    waits = redis_acl.admin(master).info("commandstats")["cmdstat_wait"]["calls"] - before
    assert sorted(r.offset or 0 for r in results) == sorted(n // 8 + 1 for n in range(400))
    assert sum(stored_offset(replica, f"r{n}") for n in range(8)) == 400
    assert 1 <= waits <= 400 // 4, f"{waits} WAITs for 400 publishes"


async def test_a_client_is_told_an_unconfirmed_publish_may_not_survive_a_failover(
    pair: tuple[RedisProcess, RedisProcess], relay_factory, tmp_path: Path
) -> None:
    master, replica = pair
    pod = relay_factory(
        "a",
        redis_urls=[master.url],
        env={
            contract.ENV_REDIS_USERNAME: contract.RELAY_REDIS_USER,
            contract.ENV_REDIS_PASSWORD: redis_acl.RELAY_PASSWORD,
            contract.ENV_REDIS_ACK_REPLICAS: "1",
            contract.ENV_REDIS_ACK_TIMEOUT: str(ACK_TIMEOUT),
            contract.ENV_ROOMS: '[{"match": "fast:*", "policy": "volatile"}]',
            contract.ENV_API_KEYS: API_KEY,
        },
    )
    async with RelayClient(pod.url) as client, AsyncRelayApi(pod.admin, api_key=API_KEY) as api:
        ack = await client.publish("match", 1, id="e1")
        assert ack is not None and ack["offset"] == 1
        stopped(replica)
        with pytest.raises(RelayError) as refused:
            await client.publish("match", 2, id="e2")
        assert refused.value.code == "unavailable"
        assert refused.value.message == protocol.NOT_REPLICATED
        assert await client.publish("fast:1", "zoom", id="v1") is not None  # never waits
        with pytest.raises(ApiCallError) as api_refused:  # the server API says the same
            await api.publish("match", 3, id="s3")
        assert (api_refused.value.status, api_refused.value.code) == (503, "unavailable")
        assert api_refused.value.message == protocol.NOT_REPLICATED
        with pytest.raises(ApiCallError) as without_id:  # no id: a retry is not safe
            await api.publish("match", 4)
        assert without_id.value.message == protocol.NOT_REPLICATED_WITHOUT_ID
        resumed(replica)
        ack = await client.publish("match", 2, id="e2")  # the retry: stored once
        assert ack is not None and ack["offset"] == 2
        published = await api.publish("match", 3, id="s3")
        assert (published.offset, published.duplicate) == (3, True)  # 4: the id-less one
    assert metric_value(pod.metrics(), "relay_publishes_unreplicated_total") == 3
    assert "replicas confirmed a write within" in pod.log.read_text()
    redis_acl.no_secret_in_logs(tmp_path)


def waits_run(master: RedisProcess) -> int:
    stats = redis_acl.admin(master).info("commandstats")
    return int(stats.get("cmdstat_wait", {}).get("calls", 0))


async def test_a_volatile_publish_is_not_held_behind_a_durable_one_waiting_for_replicas(
    pair: tuple[RedisProcess, RedisProcess], brokers: list[RedisBroker]
) -> None:
    """While Redis holds a WAIT it runs no other command of that connection: a volatile
    publish ("volatile rooms never wait") must not be queued behind it."""
    master, replica = pair
    connector = Connector(
        username=contract.RELAY_REDIS_USER, password=SecretStr(redis_acl.RELAY_PASSWORD)
    )
    slow = RedisBroker(
        [master.url],
        "a",
        RedisOptions(
            connector,
            timeout=10.0,
            probe_interval=0.5,
            probe_timeout=1.0,
            ack_replicas=1,
            ack_timeout=5.0,  # long: the check below is ordered by events, not by time
        ),
    )
    await started(slow, brokers)
    await slow.publish("warm", 0, ts=1, policy=DURABLE)  # connection open, script loaded
    stopped(replica)
    durable = asyncio.create_task(slow.publish("match", 1, ts=1, policy=DURABLE, msg_id="d1"))

    def waiting() -> bool:
        return int(redis_acl.admin(master).info("clients")["blocked_clients"]) == 1

    await eventually(waiting, 5, "the durable publish's WAIT to block on the master")
    sent = await slow.publish("fast", 1, ts=1, policy=VOLATILE, msg_id="v1")
    assert sent.offset is None and not sent.duplicate
    await slow.publish("fast", 2, ts=1, policy=VOLATILE)  # an id-less one: a plain PUBLISH
    held = durable.done()  # the WAIT's reply came first: the volatile ones waited for it
    with pytest.raises(NotReplicated):
        await durable
    assert not held, "the volatile publishes waited for the durable one's WAIT"


async def test_retries_of_unconfirmed_publishes_share_one_wait(
    pair: tuple[RedisProcess, RedisProcess], brokers: list[RedisBroker]
) -> None:
    """Replicas down, clients retry with their ids (as told): the retries are duplicates,
    each with an EXPIRE before its WAIT. A WAIT of its own per retry would queue them back
    to back on the connection, ACK_TIMEOUT each, past the command timeout: the connection
    is aborted and every publish on it fails as 'unreachable' instead of NotReplicated."""
    master, replica = pair
    first = broker(master, "a")  # command timeout 1.0 s, ACK_TIMEOUT 0.3 s
    await started(first, brokers)
    await first.publish("warm", 0, ts=1, policy=DURABLE)
    stopped(replica)
    ids = [f"e{n}" for n in range(8)]

    async def publish_all() -> list[BaseException | object]:
        return await asyncio.gather(
            *(first.publish("match", i, ts=1, policy=DURABLE, msg_id=i) for i in ids),
            return_exceptions=True,
        )

    refused = await publish_all()
    assert all(isinstance(r, NotReplicated) for r in refused), refused
    before = waits_run(master)
    retried = await publish_all()
    assert all(isinstance(r, NotReplicated) for r in retried), retried
    assert waits_run(master) - before <= 2, f"{waits_run(master) - before} WAITs for 8 retries"
    assert stored_offset(master, "match") == len(ids)  # each stored once


async def test_a_wait_from_before_a_reconnect_confirms_nothing_after_it(
    pair: tuple[RedisProcess, RedisProcess], brokers: list[RedisBroker]
) -> None:
    """The acked connection is reopened (killed by the server): places start again at 0 on
    the new one, so an answered WAIT of the old connection, at a higher place, must not be
    taken as covering a write of the new one."""
    master, replica = pair
    first = broker(master, "a")
    await started(first, brokers)
    for n in range(1, 6):  # confirmed WAITs at growing places on the first connection
        await first.publish("match", n, ts=1, policy=DURABLE, msg_id=f"e{n}")
    stopped(replica)
    killed = redis_acl.admin(master).client_kill_filter(user=contract.RELAY_REDIS_USER)
    assert killed >= 1
    for _ in range(3):  # the first attempt may still find the killed connection
        try:
            result = await first.publish("match", 6, ts=1, policy=DURABLE, msg_id="e6")
        except NotReplicated:
            break
        except BrokerUnavailable:
            continue
        pytest.fail(f"acked without a replica: {result}")
    else:
        pytest.fail("the publish never reached the master again")
    assert stored_offset(master, "match") == 6
