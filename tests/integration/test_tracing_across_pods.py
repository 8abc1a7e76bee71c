"""Traces across the Redis hop, exported by real relay processes to a real OTLP receiver
(issue 4, tests 1-3)."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from redis.asyncio import Redis

from gamecluster_client import Connection
from relay.broker import keys
from support.otlp_sink import CONSUMER, PRODUCER, SERVER, OtlpSink, SinkSpan, running
from support.processes import RedisProcess

pytestmark = pytest.mark.integration

PUBLISH, PROCESS = "publish room", "process room"


@pytest.fixture
def sink() -> Iterator[OtlpSink]:
    with running() as receiver:
        yield receiver


def named(spans: list[SinkSpan], name: str) -> list[SinkSpan]:
    return [span for span in spans if span.name == name]


async def wait_spans(sink: OtlpSink, counts: dict[str, int], what: str) -> list[SinkSpan]:
    def enough(spans: list[SinkSpan]) -> bool:
        return all(len(named(spans, name)) >= n for name, n in counts.items())

    return await asyncio.to_thread(sink.wait_for, enough, 15, what)


async def next_event(client: Connection) -> dict[str, Any]:
    message = await client.receive(timeout=5)
    assert message["op"] == "event", message
    return message


@pytest.mark.parametrize("protocol", ["http/protobuf", "grpc"])
async def test_one_publish_is_one_trace_across_two_pods(
    redis: RedisProcess, relay_factory, protocol: str
) -> None:
    with running(protocol=protocol) as sink:
        pod_a = relay_factory("a", redis_urls=[redis.url], env=sink.env())
        pod_b = relay_factory("b", redis_urls=[redis.url], env=sink.env())
        async with (
            Connection(pod_a.url) as publisher,
            Connection(pod_a.url) as on_a,
            Connection(pod_b.url) as on_b,
        ):
            for client in (publisher, on_a, on_b):
                await client.join("match:7")
            data = {"move": "e2e4", "n": 1}
            await publisher.publish("match:7", data, id="move-1")
            for client in (publisher, on_a, on_b):
                event = await next_event(client)
                assert event["data"] == data
                assert not {"tc", "traceparent", "tracestate"} & event.keys()

            spans = await wait_spans(sink, {PUBLISH: 1, PROCESS: 2}, "producer + 2 consumers")

    [producer] = named(spans, PUBLISH)
    assert producer.kind == PRODUCER
    assert producer.instance == "a"
    assert producer.resource["service.name"] == "relay"
    assert producer.parent_span_id == ""  # no traceparent from the client: a new trace
    assert producer.attributes == {
        "messaging.system": "redis",
        "messaging.operation.type": "send",
        "messaging.operation.name": "publish",
        "messaging.destination.name": "match:7",
        "messaging.message.id": "1",  # a durable room: the offset names the message
        "messaging.client.id": "a",
        "messaging.message.body.size": len(orjson.dumps(data)),
        "relay.session.id": publisher.welcome["session"],
    }

    consumers = {span.instance: span for span in named(spans, PROCESS)}
    assert sorted(consumers) == ["a", "b"]
    for pod, recipients in (("a", 2), ("b", 1)):
        consumer = consumers[pod]
        assert consumer.kind == CONSUMER
        assert consumer.trace_id == producer.trace_id
        assert consumer.parent_span_id == producer.span_id
        assert [(link.trace_id, link.span_id) for link in consumer.links] == [
            (producer.trace_id, producer.span_id)
        ]
        attributes = dict(consumer.attributes)
        delay = attributes.pop("relay.delivery.delay_ms")
        assert 0 <= delay < 5000
        assert attributes == {
            "messaging.system": "redis",
            "messaging.operation.type": "process",
            "messaging.operation.name": "process",
            "messaging.destination.name": "match:7",
            "messaging.message.id": "1",
            "messaging.client.id": pod,
            "relay.recipients": recipients,
        }
        assert consumer.start_ns >= producer.start_ns


@pytest.mark.parametrize("broker", ["embedded", "redis"])
async def test_client_traceparent_is_the_parent_of_the_producer_span(
    sink: OtlpSink, relay_factory, request: pytest.FixtureRequest, broker: str
) -> None:
    urls = [request.getfixturevalue("redis").url] if broker == "redis" else []
    pod = relay_factory("solo", redis_urls=urls, env=sink.env())
    trace_id, parent_id = secrets.token_hex(16), secrets.token_hex(8)
    async with Connection(pod.url) as client:
        await client.join("lobby")
        await client.request(
            {
                "op": "publish",
                "room": "lobby",
                "data": "hello",
                "id": "m1",
                "traceparent": f"00-{trace_id}-{parent_id}-01",
                "tracestate": "game=chess",
            }
        )
        assert (await next_event(client))["data"] == "hello"
        spans = await wait_spans(sink, {PUBLISH: 1, PROCESS: 1}, "producer + consumer")

    [producer], [consumer] = named(spans, PUBLISH), named(spans, PROCESS)
    assert (producer.trace_id, producer.parent_span_id) == (trace_id, parent_id)
    assert (consumer.trace_id, consumer.parent_span_id) == (trace_id, producer.span_id)
    system = "redis" if broker == "redis" else "gamecluster"
    assert producer.attributes["messaging.system"] == consumer.attributes["messaging.system"]
    assert producer.attributes["messaging.system"] == system
    if broker == "embedded":  # the embedded broker numbers events: both spans name the offset
        assert producer.attributes["messaging.message.id"] == "1"
        assert consumer.attributes["messaging.message.id"] == "1"


async def raw_envelope(redis: RedisProcess, room: str, publish: Any) -> dict[str, Any]:
    """Publish through `publish()` while listening on the room's channel; the header."""
    client = Redis.from_url(redis.url)
    pubsub = client.pubsub()
    try:
        await pubsub.subscribe(keys.channel(room))
        await publish()
        async with asyncio.timeout(5):
            while True:
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=5)
                if message is not None:
                    break
        header, _, _ = message["data"].partition(b"\n")
        parsed: dict[str, Any] = orjson.loads(header)
        return parsed
    finally:
        await pubsub.aclose()
        await client.aclose()


@pytest.mark.parametrize(
    "off",
    [{"OTEL_SDK_DISABLED": "true"}, {"OTEL_TRACES_SAMPLER": "always_off"}],
    ids=["sdk-disabled", "always-off"],
)
async def test_tracing_off_exports_nothing_and_the_envelope_carries_no_context(
    sink: OtlpSink, redis: RedisProcess, relay_factory, off: dict[str, str]
) -> None:
    quiet = relay_factory("quiet", redis_urls=[redis.url], env={**sink.env(), **off})
    async with Connection(quiet.url) as member:
        await member.join("hush")

        async def publish() -> None:
            await member.publish("hush", "psst", id="q1")

        header = await raw_envelope(redis, "hush", publish)
        assert header["node"] == "quiet" and header["room"] == "hush"
        assert "tc" not in header
        assert (await next_event(member))["data"] == "psst"

    # A pod that traces, exporting to the same receiver: once its connection span is in,
    # the quiet pod (same batch delay) had its chance to export and did not.
    control = relay_factory("control", redis_urls=[redis.url], env=sink.env())
    async with Connection(control.url):
        spans = await wait_spans(sink, {"ws connect": 1}, "the control pod's ws connect")
    assert {span.instance for span in spans} == {"control"}


async def test_traced_envelope_carries_w3c_context_of_the_producer_span(
    sink: OtlpSink, redis: RedisProcess, relay_factory
) -> None:
    pod = relay_factory("a", redis_urls=[redis.url], env=sink.env())
    async with Connection(pod.url) as member:
        await member.join("loud")

        async def publish() -> None:
            await member.publish("loud", "hey", id="l1")

        header = await raw_envelope(redis, "loud", publish)
        spans = await wait_spans(sink, {PUBLISH: 1}, "the producer span")
    [producer] = named(spans, PUBLISH)
    assert set(header["tc"]) == {"traceparent"}  # no tracestate was set, none is sent
    version, trace_id, span_id, flags = header["tc"]["traceparent"].split("-")
    assert (version, trace_id, span_id) == ("00", producer.trace_id, producer.span_id)
    assert int(flags, 16) & 1  # sampled


async def test_connection_lifecycle_is_two_short_spans(sink: OtlpSink, relay_factory) -> None:
    pod = relay_factory("a", env=sink.env())
    async with Connection(pod.url) as client:
        session = client.welcome["session"]
        [connect] = named(await wait_spans(sink, {"ws connect": 1}, "ws connect"), "ws connect")
        assert connect.kind == SERVER
        assert connect.attributes["relay.session.id"] == session
        assert connect.attributes["network.peer.address"] == "127.0.0.1"
    [close] = named(await wait_spans(sink, {"ws close": 1}, "ws close"), "ws close")
    assert (close.trace_id, close.parent_span_id) == (connect.trace_id, connect.span_id)
    assert close.attributes["relay.session.id"] == session
    assert close.attributes["relay.close.code"] == 1000
    assert close.attributes["relay.session.duration_s"] >= 0


async def test_spans_still_buffered_are_exported_when_the_relay_stops(
    sink: OtlpSink, redis: RedisProcess, relay_factory
) -> None:
    # A batch delay far longer than the test: only a flush at shutdown can send them
    # (node.stop's, with the SDK's exit hook as a fallback).
    env = {**sink.env(), "OTEL_BSP_SCHEDULE_DELAY": "600000"}
    pod = relay_factory("a", redis_urls=[redis.url], env=env)
    async with Connection(pod.url) as member:
        await member.join("last-words")
        await member.publish("last-words", "bye", id="b1")
        assert (await next_event(member))["data"] == "bye"
    assert sink.spans() == []
    await asyncio.to_thread(pod.stop)  # SIGTERM: drain, then flush
    assert pod.proc is not None and pod.proc.returncode == 0
    spans = sink.spans()
    assert len(named(spans, PUBLISH)) == 1 and len(named(spans, PROCESS)) == 1


async def test_a_resume_replay_is_one_receive_span_linked_to_each_producer(
    sink: OtlpSink, redis: RedisProcess, relay_factory
) -> None:
    pod_a = relay_factory("a", redis_urls=[redis.url], env=sink.env())
    pod_b = relay_factory("b", redis_urls=[redis.url], env=sink.env())
    async with Connection(pod_a.url) as publisher:
        async with Connection(pod_a.url) as player:
            joined = await player.join("replayed")
        for n in range(2):  # missed by the player, who comes back on pod b
            await publisher.publish("replayed", n, id=f"r{n}")
        async with Connection(pod_b.url) as player:
            since = {"epoch": joined["epoch"], "offset": joined["offset"]}
            assert (await player.join("replayed", since=since))["recovered"] is True
            assert [(await player.receive(timeout=5))["data"] for _ in range(2)] == [0, 1]
        spans = await wait_spans(sink, {PUBLISH: 2, "receive room": 1}, "2 producers + replay")

    [replay] = named(spans, "receive room")
    assert replay.instance == "b"
    assert replay.attributes["relay.replay.reason"] == "resume"
    assert replay.attributes["messaging.batch.message_count"] == 2
    producers = {(span.trace_id, span.span_id) for span in named(spans, PUBLISH)}
    assert {(link.trace_id, link.span_id) for link in replay.links} == producers
