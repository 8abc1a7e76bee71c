import pytest

from relay.broker import Delivery, envelope
from relay.broker.redis import RedisBroker, room_channel

pytestmark = pytest.mark.unit


def broker(*urls: str) -> RedisBroker:
    return RedisBroker(urls, "n", timeout=1, probe_interval=1, probe_timeout=1)


def test_envelope_round_trip_keeps_the_event_bytes_untouched() -> None:
    sent = Delivery(
        "r",
        b'{"op":"event","room":"r","data":1,"ts":5}',
        5,
        3,
        "e",
        "node-a",
        {"traceparent": "00-x"},
    )
    assert envelope.unpack(envelope.pack(sent)) == sent


@pytest.mark.parametrize("junk", [b"", b"no newline", b'{"v":2}\n{}', b"[]\n{}", b'{"v":1}\n{}'])
def test_envelope_refuses_what_it_does_not_understand(junk: bytes) -> None:
    with pytest.raises(envelope.EnvelopeError):
        envelope.unpack(junk)


def test_room_channels_are_hash_tagged() -> None:
    assert room_channel("match:1") == b"room:{match:1}"


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


def test_a_failing_delivery_does_not_end_the_reader() -> None:
    redis_broker = broker("redis://a:1/0")

    def explode(_: Delivery) -> None:
        raise RuntimeError("a bug downstream")

    redis_broker.set_listener(explode)
    sent = Delivery("r", b'{"op":"event"}', 1, None, None, "a")
    redis_broker._received(envelope.pack(sent))  # logs, does not raise
