"""relay.tracing in-process: configuration from OTEL_*, span structure, replay links."""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import pytest
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanLimits, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.id_generator import IdGenerator
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    Decision,
    ParentBasedTraceIdRatio,
    Sampler,
    SamplingResult,
)
from opentelemetry.trace import Link, SpanKind, Status, StatusCode, TraceState, set_span_in_context
from opentelemetry.util.types import Attributes

from relay import tracing
from relay.broker import BrokerUnavailable, Delivery
from relay.broker.memory import MemoryBroker
from relay.hub import Hub
from relay.metrics import Metrics
from relay.protocol import Publish
from relay.rooms import DEFAULT_POLICY, RoomPolicies

pytestmark = pytest.mark.unit


def trace_into(exporter: InMemorySpanExporter, node_id: str, system: str) -> TracerProvider:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.configure(provider, node_id=node_id, system=system)
    return provider


@pytest.fixture
def exported() -> Iterator[InMemorySpanExporter]:
    """Trace with an in-memory exporter (synchronous), as node "a" on Redis."""
    exporter = InMemorySpanExporter()
    provider = trace_into(exporter, "a", "redis")
    yield exporter
    tracing.configure(None, node_id="", system="")
    provider.shutdown()


def one(spans: tuple[ReadableSpan, ...], name: str) -> ReadableSpan:
    found = [span for span in spans if span.name == name]
    assert len(found) == 1, [span.name for span in spans]
    return found[0]


# Configuration.


@pytest.mark.parametrize(
    ("env", "reason"),
    [
        ({}, "no OTEL_EXPORTER_OTLP_ENDPOINT nor OTEL_TRACES_EXPORTER"),
        (
            {"OTEL_SDK_DISABLED": "TRUE", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"},
            "OTEL_SDK_DISABLED=true",
        ),
        (
            {"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"},
            "OTEL_TRACES_EXPORTER=none",
        ),
    ],
)
def test_tracing_is_off_without_an_exporter_or_when_disabled(
    env: dict[str, str], reason: str
) -> None:
    assert tracing.read_env(env) == tracing.TracingConfig(False, reason)


@pytest.mark.parametrize(
    ("env", "exporters", "protocol"),
    [
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}, ("otlp",), "http/protobuf"),
        (
            {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4318/v1/traces"},
            ("otlp",),
            "http/protobuf",
        ),
        (
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"},
            ("otlp",),
            "grpc",
        ),
        (
            {
                "OTEL_TRACES_EXPORTER": "otlp",
                "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
                "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "grpc",
            },
            ("otlp",),
            "grpc",
        ),
        ({"OTEL_TRACES_EXPORTER": "console,otlp"}, ("console", "otlp"), "http/protobuf"),
    ],
)
def test_tracing_is_on_with_an_exporter_or_an_endpoint(
    env: dict[str, str], exporters: tuple[str, ...], protocol: str
) -> None:
    config = tracing.read_env(env)
    assert (config.enabled, config.exporters, config.protocol) == (True, exporters, protocol)


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"OTEL_TRACES_EXPORTER": "zipkin"}, "OTEL_TRACES_EXPORTER='zipkin'"),
        (
            {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"},
            "OTEL_EXPORTER_OTLP_PROTOCOL='http/json'",
        ),
        (
            {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_TRACES_SAMPLER": "sometimes"},
            "OTEL_TRACES_SAMPLER='sometimes'",
        ),
        (
            {
                "OTEL_TRACES_EXPORTER": "otlp",
                "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
                "OTEL_TRACES_SAMPLER_ARG": "10%",
            },
            "OTEL_TRACES_SAMPLER_ARG='10%'",
        ),
    ],
)
def test_values_tracing_cannot_honour_are_named_at_start(
    env: dict[str, str], variable: str
) -> None:
    with pytest.raises(tracing.TracingConfigError, match=variable):
        tracing.read_env(env)


def test_resource_names_the_pod_and_yields_to_the_standard_variables(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("OTEL_SERVICE_NAME", "OTEL_RESOURCE_ATTRIBUTES"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("POD_NAME", "relay-7d9f-x2")
    monkeypatch.setenv("POD_NAMESPACE", "games")
    attributes = tracing.make_resource("node-1").attributes
    assert attributes["service.name"] == "relay"
    assert attributes["service.instance.id"] == "node-1"
    assert attributes["k8s.pod.name"] == "relay-7d9f-x2"
    assert attributes["k8s.namespace.name"] == "games"

    monkeypatch.setenv("OTEL_SERVICE_NAME", "relay-eu")
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "service.instance.id=i-9,deployment.env=prod")
    attributes = tracing.make_resource("node-1").attributes
    assert attributes["service.name"] == "relay-eu"
    assert attributes["service.instance.id"] == "i-9"
    assert attributes["deployment.env"] == "prod"


def test_resource_hashes_once_and_as_the_sdk_resource_does(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The exporter groups spans by resource: ours must be the same key as the SDK's.
    resource = tracing.make_resource("node-1")
    plain = Resource(resource.attributes, resource.schema_url)
    expected = hash(plain)
    assert resource == plain and hash(resource) == expected
    # Made once at start: hashing it again (per exported span) does not redo the work.
    monkeypatch.setattr(Resource, "__hash__", lambda _: pytest.fail("hashed again"))
    assert hash(resource) == expected


async def test_setup_off_by_default_and_on_with_an_endpoint(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_TRACES_EXPORTER", "OTEL_SDK_DISABLED"):
        monkeypatch.delenv(name, raising=False)
    assert tracing.setup("a", system="redis") is False
    assert tracing.tracer is None

    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9")  # nobody there
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
    try:
        assert tracing.setup("a", system="redis") is True
        assert tracing.tracer is not None
    finally:
        await tracing.shutdown(timeout=2)
    assert tracing.tracer is None


# Spans.


def publish(room: str = "match:1", **fields: Any) -> Publish:
    return Publish(room=room, data={"x": 1}, **fields)


def test_off_costs_no_span_and_puts_nothing_in_the_envelope() -> None:
    assert tracing.tracer is None
    with tracing.publishing(publish(id="p1"), "s1") as traced:
        traced.sent(3)
    assert traced.context is None
    delivery = Delivery(
        "r", b"{}", 0, None, None, "a", {"traceparent": "00-" + "1" * 32 + "-" + "2" * 16 + "-01"}
    )
    assert tracing.process_start(delivery) is None
    assert tracing.ws_connect("s1", None) is None


def test_producer_span_context_goes_into_the_envelope(exported: InMemorySpanExporter) -> None:
    with tracing.publishing(publish(id="p1"), "s1") as traced:
        assert traced.context is not None
        traced.sent(None)
    producer = one(exported.get_finished_spans(), "publish room")
    context = producer.get_span_context()
    assert producer.kind is SpanKind.PRODUCER
    assert producer.parent is None
    assert traced.context["traceparent"].startswith(
        f"00-{context.trace_id:032x}-{context.span_id:016x}-"
    )
    assert dict(producer.attributes or {}) == {
        "messaging.system": "redis",
        "messaging.operation.type": "send",
        "messaging.operation.name": "publish",
        "messaging.destination.name": "match:1",
        "messaging.message.id": "p1",
        "messaging.client.id": "a",
        "messaging.message.body.size": len(b'{"x":1}'),
        "relay.session.id": "s1",
    }


def test_client_traceparent_and_tracestate_are_the_producer_parent(
    exported: InMemorySpanExporter,
) -> None:
    trace_id, span_id = secrets.token_hex(16), secrets.token_hex(8)
    message = publish(traceparent=f"00-{trace_id}-{span_id}-01", tracestate="game=go")
    with tracing.publishing(message, "s1") as traced:
        pass
    producer = one(exported.get_finished_spans(), "publish room")
    assert producer.parent is not None and producer.parent.is_remote
    assert (f"{producer.parent.trace_id:032x}", f"{producer.parent.span_id:016x}") == (
        trace_id,
        span_id,
    )
    assert traced.context is not None and traced.context["tracestate"] == "game=go"


def test_a_malformed_client_traceparent_starts_a_new_trace(
    exported: InMemorySpanExporter,
) -> None:
    with tracing.publishing(publish(traceparent="00-not-a-trace-01"), "s1"):
        pass
    assert one(exported.get_finished_spans(), "publish room").parent is None


def test_a_failed_publish_is_an_error_span_with_a_low_cardinality_type(
    exported: InMemorySpanExporter,
) -> None:
    with (
        pytest.raises(BrokerUnavailable),
        tracing.publishing(publish(), "s1"),
    ):
        raise BrokerUnavailable("PUBLISH on redis://10.0.0.7:6379 failed")
    producer = one(exported.get_finished_spans(), "publish room")
    assert producer.status.status_code is StatusCode.ERROR
    assert (producer.attributes or {})["error.type"] == "BrokerUnavailable"


def test_an_unsampled_publish_leaves_the_envelope_empty() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(sampler=ALWAYS_OFF)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.configure(provider, node_id="a", system="redis")
    try:
        with tracing.publishing(publish(), "s1") as traced:
            pass
    finally:
        tracing.configure(None, node_id="", system="")
    assert traced.context is None
    assert exporter.get_finished_spans() == ()


class ListedIds(IdGenerator):
    """Trace ids from a list, in order: which publishes a ratio sampler keeps is known."""

    def __init__(self, trace_ids: list[int]) -> None:
        self._trace_ids = iter(trace_ids)

    def generate_trace_id(self) -> int:
        return next(self._trace_ids)

    def generate_span_id(self) -> int:
        return secrets.randbits(63) + 1


def test_a_publish_the_sampler_drops_makes_no_span_and_the_kept_ones_get_their_ids() -> None:
    # Ratio 0.5 keeps a root trace id whose low 64 bits are below 2**63.
    kept = [(1 << 70) | n for n in (5, 6, 7)]
    dropped = [(1 << 70) | (1 << 63) | n for n in (1, 2, 3)]
    order = [kept[0], dropped[0], dropped[1], kept[1], dropped[2], kept[2]]
    exporter = InMemorySpanExporter()
    provider = TracerProvider(sampler=ParentBasedTraceIdRatio(0.5), id_generator=ListedIds(order))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.configure(provider, node_id="a", system="redis")
    unsampled_parent = f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-00"
    try:
        contexts = []
        for trace_id in order:
            with tracing.publishing(publish(), "s1") as traced:
                contexts.append(traced.context)
            if trace_id == dropped[0]:  # a client's unsampled parent: no span, no id used
                with tracing.publishing(publish(traceparent=unsampled_parent), "s1") as traced:
                    assert traced.context is None
    finally:
        tracing.configure(None, node_id="", system="")
    exported_ids = [span.get_span_context().trace_id for span in exporter.get_finished_spans()]
    assert exported_ids == kept  # the sampler's own decision for each id: none lost, none added
    assert [context is not None for context in contexts] == [t in kept for t in order]


def comparable(span: ReadableSpan) -> dict[str, Any]:
    """What an exporter reads of a span, with the ids and times left out."""
    context = span.get_span_context()
    return {
        "name": span.name,
        "kind": span.kind,
        "flags": int(context.trace_flags),
        "trace_state": context.trace_state,
        "remote": context.is_remote,
        "parent": None if span.parent is None else (span.parent.span_id, span.parent.is_remote),
        "attributes": dict(span.attributes or {}),
        "dropped_attributes": span.dropped_attributes,
        "links": [(link.context.span_id, dict(link.attributes or {})) for link in span.links],
        "dropped_links": span.dropped_links,
        "events": list(span.events),
        "status": (span.status.status_code, span.status.description),
        "resource": span.resource,
        "scope": span.instrumentation_scope,
        "ended": (span.start_time or 0) <= (span.end_time or 0),
    }


@pytest.mark.parametrize(
    "limits",
    [
        {},
        {"OTEL_SPAN_ATTRIBUTE_VALUE_LENGTH_LIMIT": "4", "OTEL_SPAN_LINK_COUNT_LIMIT": "0"},
    ],
)
def test_publish_and_process_spans_are_what_the_sdk_would_export(
    monkeypatch: pytest.MonkeyPatch, limits: dict[str, str]
) -> None:
    """`publish room` and `process room` skip the SDK's live Span (tracing.Recorded): what
    reaches the exporter must be what Tracer.start_span + Span.end would have given, with
    the same sampler answer, parent, link, attributes, status, limits, resource and scope."""
    for name, value in limits.items():
        monkeypatch.setenv(name, value)
    trace_id, span_id = secrets.token_hex(16), secrets.token_hex(8)
    client = {"traceparent": f"00-{trace_id}-{span_id}-01", "tracestate": "game=go"}
    exporter = InMemorySpanExporter()
    provider = TracerProvider(resource=tracing.make_resource("a"))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.configure(provider, node_id="a", system="redis")
    try:
        traced = tracing.publishing(publish(id="p1", **client), "s1")

        def fail() -> None:
            with traced:
                traced.sent(7)  # the offset replaces the client's id
                raise BrokerUnavailable("PUBLISH failed")

        with pytest.raises(BrokerUnavailable):
            fail()
        assert traced.context is not None
        delivery = Delivery("match:1", b"{}", 0, 7, "e1", "a", traced.context)
        span = tracing.process_start(delivery)
        assert span is not None
        tracing.process_end(span, 3)
        ours = exporter.get_finished_spans()

        # The same spans through the SDK's own Tracer, as the relay started them before.
        exporter.clear()
        assert tracing.tracer is not None
        producer = tracing.tracer.start_span(
            "publish room",
            context=tracing._w3c.extract(client),
            kind=SpanKind.PRODUCER,
            attributes=dict(ours[0].attributes or {}),
        )
        producer.set_status(Status(StatusCode.ERROR, "PUBLISH failed"))
        producer.end()
        envelope: dict[str, str] = {}
        tracing._w3c.inject(envelope, set_span_in_context(producer))
        parent = tracing._w3c.extract(envelope)
        consumer = tracing.tracer.start_span(
            "process room",
            context=parent,
            kind=SpanKind.CONSUMER,
            links=(Link(producer.get_span_context()),),
            attributes=dict(ours[1].attributes or {}),
        )
        consumer.end()
        theirs = exporter.get_finished_spans()
    finally:
        tracing.configure(None, node_id="", system="")
        provider.shutdown()

    assert [span.name for span in ours] == ["publish room", "process room"]
    mine, sdk = [comparable(span) for span in ours], [comparable(span) for span in theirs]
    # The consumer's parent and link are each run's own producer.
    for spans, exported in ((mine, ours), (sdk, theirs)):
        producer_id = exported[0].get_span_context().span_id
        assert spans[1]["parent"] == (producer_id, True)
        assert spans[1]["links"] == (
            [(producer_id, {})] if not limits.get("OTEL_SPAN_LINK_COUNT_LIMIT") else []
        )
        spans[1]["parent"] = spans[1]["links"] = None
    assert mine == sdk
    assert ours[0].get_span_context().trace_id == int(trace_id, 16)
    assert ours[1].get_span_context().trace_id == int(trace_id, 16)


def test_the_providers_own_span_limits_bound_publish_and_process_spans() -> None:
    """configure(provider) traces with that provider: its span limits, not only those the
    OTEL_SPAN_* variables give a new SpanLimits(), bound the Recorded spans as they bound
    the SDK's (a provider built with span_limits=... in a test or an embedding app)."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider(span_limits=SpanLimits(max_span_attribute_length=3))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.configure(provider, node_id="a", system="redis")
    try:
        with tracing.publishing(publish(), "s1") as traced:
            traced.sent(7)
        assert traced.context is not None
        span = tracing.process_start(Delivery("match:1", b"{}", 0, 7, "e1", "a", traced.context))
        assert span is not None
        tracing.process_end(span, 3)
    finally:
        tracing.configure(None, node_id="", system="")
        provider.shutdown()
    for exported in exporter.get_finished_spans():
        attributes = exported.attributes or {}
        assert attributes["messaging.system"] == "red", exported.name
        assert attributes["messaging.destination.name"] == "mat", exported.name


def test_the_offset_is_the_latest_attribute_as_in_the_sdk_under_a_count_limit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The SDK's span keeps the attributes set last when OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT is
    reached, and re-setting one (the offset replacing the client's id) makes it the
    latest: a failed publish keeps its offset and error.type, not the body size."""
    monkeypatch.setenv("OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT", "2")
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.configure(provider, node_id="a", system="redis")
    try:
        traced = tracing.publishing(publish(id="p1"), "s1")

        def fail() -> None:
            with traced:
                traced.sent(7)
                raise BrokerUnavailable("PUBLISH failed")

        with pytest.raises(BrokerUnavailable):
            fail()
    finally:
        tracing.configure(None, node_id="", system="")
        provider.shutdown()
    producer = one(exporter.get_finished_spans(), "publish room")
    assert dict(producer.attributes or {}) == {
        "messaging.message.id": "7",
        "error.type": "BrokerUnavailable",
    }
    assert producer.dropped_attributes == 7


@pytest.mark.parametrize(
    ("client_flags", "flags"),
    [(None, "03"), ("01", "01"), ("03", "03")],
)
def test_publish_and_process_spans_carry_the_sdks_flags_and_their_own_times(
    exported: InMemorySpanExporter, client_flags: str | None, flags: str
) -> None:
    """The W3C level 2 random-trace-id flag as the SDK's Tracer sets it (a root span: the
    id generator's ids are random; else the parent's flag), in the span and the envelope;
    each span starts and ends within its own block (the SDK comparison leaves times out)."""
    traceparent = None
    if client_flags is not None:
        traceparent = f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-{client_flags}"
    before = time.time_ns()
    with tracing.publishing(publish(traceparent=traceparent), "s1") as traced:
        traced.sent(7)
    published = time.time_ns()
    assert traced.context is not None and traced.context["traceparent"].endswith(f"-{flags}")
    span = tracing.process_start(Delivery("match:1", b"{}", 0, 7, "e1", "a", traced.context))
    assert span is not None
    tracing.process_end(span, 3)
    after = time.time_ns()
    producer = one(exported.get_finished_spans(), "publish room")
    consumer = one(exported.get_finished_spans(), "process room")
    for exported_span in (producer, consumer):
        assert f"{int(exported_span.get_span_context().trace_flags):02x}" == flags
    assert before <= (producer.start_time or 0) <= (producer.end_time or 0) <= published
    assert published <= (consumer.start_time or 0) <= (consumer.end_time or 0) <= after


class RecordOnly(Sampler):
    """Records without sampling, with an attribute and a trace state of its own."""

    def should_sample(
        self,
        parent_context: Context | None,
        trace_id: int,
        name: str,
        kind: SpanKind | None = None,
        attributes: Attributes = None,
        links: Sequence[Link] | None = None,
        trace_state: TraceState | None = None,
    ) -> SamplingResult:
        return SamplingResult(
            Decision.RECORD_ONLY,
            {**(attributes or {}), "sampler.note": "kept"},
            TraceState([("s", "1")]),
        )

    def get_description(self) -> str:
        return "RecordOnly"


class Ended(SpanProcessor):
    """Every span that ends, sampled or not (the exporting processors skip unsampled)."""

    def __init__(self) -> None:
        self.spans: list[ReadableSpan] = []

    def on_end(self, span: ReadableSpan) -> None:
        self.spans.append(span)


def test_a_record_only_decision_records_unsampled_with_the_samplers_answer() -> None:
    """RECORD_ONLY: the span reaches the processors, unsampled (so not exported, and no
    context in the envelope), with the attributes and trace state the sampler answered."""
    exporter, ended = InMemorySpanExporter(), Ended()
    provider = TracerProvider(sampler=RecordOnly())
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    provider.add_span_processor(ended)
    tracing.configure(provider, node_id="a", system="redis")
    try:
        with tracing.publishing(publish(), "s1") as traced:
            traced.sent(7)
    finally:
        tracing.configure(None, node_id="", system="")
        provider.shutdown()
    assert traced.context is None
    assert exporter.get_finished_spans() == ()
    producer = one(tuple(ended.spans), "publish room")
    context = producer.get_span_context()
    assert not context.trace_flags.sampled
    assert context.trace_state == TraceState([("s", "1")])
    assert (producer.attributes or {})["sampler.note"] == "kept"
    assert (producer.attributes or {})["messaging.message.id"] == "7"


@dataclass(eq=False)
class Member:
    received: list[bytes]

    def push(self, payload: bytes) -> None:
        self.received.append(payload)


async def test_embedded_broker_gives_producer_and_consumer_spans_like_redis(
    exported: InMemorySpanExporter,
) -> None:
    trace_into(exported, "solo", "gamecluster")
    broker = MemoryBroker("solo")
    hub = Hub(broker, Metrics(), RoomPolicies(()), unsubscribe_delay=0)
    members = [Member([]), Member([])]
    for member in members:
        await hub.join(member, "arena", None, lambda _: None)
    message = publish("arena", id="m1")
    with tracing.publishing(message, "s1") as traced:
        result = await broker.publish(
            "arena", message.data, ts=0, policy=DEFAULT_POLICY, trace=traced.context
        )
        traced.sent(result.offset)
    assert all(len(member.received) == 1 for member in members)

    spans = exported.get_finished_spans()
    producer, consumer = one(spans, "publish room"), one(spans, "process room")
    assert consumer.kind is SpanKind.CONSUMER
    assert consumer.parent is not None
    assert consumer.parent.span_id == producer.get_span_context().span_id
    assert [link.context.span_id for link in consumer.links] == [
        producer.get_span_context().span_id
    ]
    attributes = consumer.attributes or {}
    assert attributes["messaging.system"] == "gamecluster"
    assert attributes["relay.recipients"] == 2
    assert (
        attributes["messaging.message.id"]
        == "1"
        == (producer.attributes or {})["messaging.message.id"]
    )
    assert attributes["relay.delivery.delay_ms"] > 0  # ts=0: published in 1970


async def test_hub_makes_no_span_for_an_event_published_untraced(
    exported: InMemorySpanExporter,
) -> None:
    broker = MemoryBroker("solo")
    hub = Hub(broker, Metrics(), RoomPolicies(()), unsubscribe_delay=0)
    member = Member([])
    await hub.join(member, "arena", None, lambda _: None)
    await broker.publish("arena", "x", ts=0, policy=DEFAULT_POLICY, trace=None)
    assert len(member.received) == 1
    assert exported.get_finished_spans() == ()


def traced_delivery(offset: int) -> Delivery:
    with tracing.publishing(publish("arena"), "s") as traced:
        pass
    return Delivery("arena", b"{}", 0, offset, "e1", "a", traced.context)


def test_replay_links_every_traced_message_it_covers(exported: InMemorySpanExporter) -> None:
    history = [traced_delivery(1), Delivery("arena", b"{}", 0, 2, "e1", "a"), traced_delivery(3)]
    producers = [span.get_span_context() for span in exported.get_finished_spans()]
    exported.clear()

    with tracing.replaying("arena", history, reason="gap") as span:
        assert span is not None and span.is_recording()
    replay = one(exported.get_finished_spans(), "receive room")
    assert replay.kind is SpanKind.CLIENT
    assert [(link.context.span_id, dict(link.attributes or {})) for link in replay.links] == [
        (producers[0].span_id, {"messaging.message.id": "1"}),
        (producers[1].span_id, {"messaging.message.id": "3"}),
    ]
    attributes = replay.attributes or {}
    assert attributes["messaging.batch.message_count"] == 3
    assert attributes["messaging.operation.type"] == "receive"
    assert attributes["relay.replay.reason"] == "gap"


def test_replay_is_a_no_op_when_tracing_is_off() -> None:
    with tracing.replaying("arena", [Delivery("arena", b"{}", 0, 1, "e", "a")]) as span:
        assert span is None


def test_connection_spans_share_a_trace(exported: InMemorySpanExporter) -> None:
    connection = tracing.ws_connect("s9", ("10.0.0.1", 5555))
    assert connection is not None
    tracing.ws_close(connection, "s9", 4008)
    spans = exported.get_finished_spans()
    connect, close = one(spans, "ws connect"), one(spans, "ws close")
    assert connect.kind is SpanKind.SERVER
    assert (connect.attributes or {})["network.peer.port"] == 5555
    assert close.parent is not None
    assert close.parent.span_id == connect.get_span_context().span_id
    assert (close.attributes or {})["relay.close.code"] == 4008
