import asyncio
import contextlib
import logging
import time

import pytest
from redis.backoff import FullJitterBackoff

from relay.broker import Delivery, envelope, keys
from relay.broker import redis as redis_broker_module
from relay.broker.base import ShardDown
from relay.broker.options import RedisOptions
from relay.broker.redis import RedisBroker
from relay.broker.shardmap import MapState, ShardMap
from relay.rooms import RoomPolicy

pytestmark = pytest.mark.unit


def broker(*urls: str) -> RedisBroker:
    return RedisBroker(urls, "n", RedisOptions(timeout=1, probe_interval=1, probe_timeout=1))


def test_envelope_round_trip_keeps_the_event_bytes_untouched() -> None:
    payload = b'{"op":"event","room":"r","data":1,"ts":5}'
    trace = {"traceparent": "00-x"}
    volatile = envelope.pack("node-a", "r", 5, payload, trace)
    assert envelope.unpack(volatile) == Delivery("r", payload, 5, None, None, "node-a", trace)
    # A durable event's header: the script puts `<offset>,"epoch":"<epoch>"` in between.
    head, tail = envelope.header_parts("node-a", "r", 5, trace)
    durable = head + b'3,"epoch":"e"' + tail + b"\n" + payload
    assert envelope.unpack(durable) == Delivery("r", payload, 5, 3, "e", "node-a", trace)


@pytest.mark.parametrize("junk", [b"", b"no newline", b'{"v":2}\n{}', b"[]\n{}", b'{"v":1}\n{}'])
def test_envelope_refuses_what_it_does_not_understand(junk: bytes) -> None:
    with pytest.raises(envelope.EnvelopeError):
        envelope.unpack(junk)


def test_every_name_of_a_room_shares_its_hash_tag_and_the_channel_maps_back() -> None:
    names = [
        keys.channel("match:1").decode(),
        keys.meta("match:1"),
        keys.log("match:1"),
        keys.dedupe("match:1", "alice", "id-1"),
    ]
    assert all(name.startswith("room:{match:1}") for name in names), names
    assert len(set(names)) == len(names)
    # The subject's length keeps ("a:1", "x") and ("a", "1:x") apart.
    assert keys.dedupe("r", "a:1", "x") != keys.dedupe("r", "a", "1:x")
    assert keys.channel("match:1") == b"room:{match:1}"
    assert keys.room_of(keys.channel("a}b{c")) == "a}b{c"
    assert keys.room_of(b"relay:node:x") is None


def test_adding_a_shard_moves_only_about_a_third_of_rooms() -> None:
    two = broker("redis://a:1/0", "redis://b:1/0")
    three = broker("redis://a:1/0", "redis://b:1/0", "redis://c:1/0")
    rooms = [f"room-{n}" for n in range(1000)]
    moved = [r for r in rooms if two.shard_for(r).url != three.shard_for(r).url]
    assert all(three.shard_for(r).url == "redis://c:1/0" for r in moved)
    assert 250 < len(moved) < 420  # ~1/3 expected


@pytest.mark.parametrize(
    "header",
    [
        b'{"v":1,"room":[1],"ts":1,"node":"a"}',
        b'{"v":1,"room":"r","ts":"x","node":"a"}',
        b'{"v":1,"room":"r","ts":1,"node":"a","tc":"x"}',
        b'{"v":1,"room":"r","ts":1,"node":"a","offset":"3","epoch":"e"}',
        b'{"v":1,"room":"r","ts":1,"node":"a","offset":3}',
    ],
)
def test_envelope_refuses_fields_of_the_wrong_type(header: bytes) -> None:
    with pytest.raises(envelope.EnvelopeError):
        envelope.unpack(header + b'\n{"op":"event"}')


def test_a_failing_delivery_is_logged_and_the_next_one_still_arrives(
    caplog: pytest.LogCaptureFixture,
) -> None:
    redis_broker = broker("redis://a:1/0")
    arrived: list[Delivery] = []

    def listener(delivery: Delivery) -> None:
        if delivery.room == "bad":
            raise RuntimeError("a bug downstream")
        arrived.append(delivery)

    redis_broker.set_listener(listener)
    good = Delivery("good", b'{"op":"event"}', 2, None, None, "a")
    # The Pub/Sub reader hands every message to _received: had it raised, the reader
    # task would have ended and this shard gone deaf.
    with caplog.at_level(logging.ERROR, logger="relay.broker.redis"):
        redis_broker._received(envelope.pack("a", "bad", 1, b'{"op":"event"}', None))
    redis_broker._received(envelope.pack("a", "good", 2, good.payload, None))
    assert arrived == [good]
    (record,) = caplog.records
    assert "'bad'" in record.getMessage() and record.exc_info is not None


async def test_reconnect_pauses_use_full_jitter_up_to_the_cap_through_any_long_outage(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    shard = broker("redis://a:1/0")._shards[0]
    real = redis_broker_module.RECONNECT_BACKOFF
    exponents: list[int] = []
    enough = asyncio.Event()

    class Recording(FullJitterBackoff):
        def compute(self, failures: int) -> float:
            exponents.append(failures)
            if len(exponents) == 1200:  # past 2**1024: a float would have overflowed
                enough.set()
            return 0.0

    async def refused() -> None:
        raise OSError("connection refused")

    monkeypatch.setattr(redis_broker_module, "RECONNECT_BACKOFF", Recording())
    monkeypatch.setattr(shard, "_session", refused)
    supervisor = asyncio.create_task(shard._supervise())
    await asyncio.wait_for(enough.wait(), 30)
    supervisor.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await supervisor
    assert exponents[:3] == [0, 1, 2]
    assert max(exponents) == redis_broker_module.MAX_BACKOFF_EXPONENT
    pauses = [real.compute(redis_broker_module.MAX_BACKOFF_EXPONENT) for _ in range(200)]
    assert all(0 <= pause <= 2.0 for pause in pauses) and max(pauses) > 1.0


@pytest.mark.parametrize(
    ("live", "ready"),
    [
        ((True,), True),
        ((False,), False),
        ((True, False), True),  # one of two shards down: only its rooms fail
        ((False, True), False),  # the control shard down
        ((True, False, False), False),  # fewer than half live
        ((True, True, False), True),
        ((True, False, True, False), True),  # half live, the control shard among them
        ((True, False, False, False), False),
    ],
)
def test_readiness_needs_the_control_shard_and_half_of_all_shards(
    live: tuple[bool, ...], ready: bool
) -> None:
    made = RedisBroker(
        [f"s{n}=redis://h{n}:1/0" for n in range(len(live))],
        "n",
        RedisOptions(timeout=1, probe_interval=1, probe_timeout=1),
    )
    for shard, up in zip(made._shards, live, strict=True):
        shard._ready = up
    assert made.ready is False  # until the shard map is read
    made._map = MapState(ShardMap(1, tuple(made.shards())))
    made.shard_map._lease_until = time.monotonic() + 60  # a map read just granted it
    assert made.ready is ready
    assert made.shards() == {f"s{n}": up for n, up in enumerate(live)}


async def test_a_room_on_a_shard_that_is_down_fails_at_once_and_names_the_shard() -> None:
    made = RedisBroker(
        ["s0=redis://127.0.0.1:1/0", "s1=redis://127.0.0.1:2/0"],
        "n",
        # timeout: a command sent to a stalled shard would wait this long
        RedisOptions(timeout=30, probe_interval=1, probe_timeout=1),
    )
    made._shards[0]._ready = True
    room = next(r for r in (f"r{n}" for n in range(100)) if made.shard_for(r).name == "s1")
    try:
        async with asyncio.timeout(1):
            for call in (
                made.publish(room, 1, ts=1, policy=RoomPolicy()),
                made.history(room, None, RoomPolicy()),
                made.subscribe(room),
            ):
                with pytest.raises(ShardDown) as refused:
                    await call
                assert refused.value.shard == "s1"
                assert str(refused.value).startswith(
                    "Redis shard s1 (redis://127.0.0.1:2/0) is down"
                )
                assert "shard of this room is down" in refused.value.client_message
    finally:
        await made.close()
