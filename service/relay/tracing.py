"""OpenTelemetry traces that follow each event across the broker hop (docs/tracing.md).

Span structure, after the OpenTelemetry messaging semantic conventions:

- `publish room` (PRODUCER) on the pod a client published through; its parent is the
  client's `traceparent` when the publish carried one. Its context (W3C traceparent and
  tracestate) rides in the broker envelope (`Delivery.trace`), never in the `event`
  message clients receive.
- `process room` (CONSUMER), one per receiving pod and event (not per recipient). Its
  parent is the producer context, and it links to it as well: the conventions make the
  link the default and allow the parent for single messages; the parent puts the whole
  fan-out in one trace, which is what Jaeger shows best.
- `receive room` (CLIENT) for replays from history, one link per replayed message.
- `ws connect` / `ws close`, two short spans per connection (never one span that lives
  as long as the WebSocket: a span is exported only when it ends).

Sampling is decided once, where the event is published: an unsampled publish puts no
context in the envelope, so receiving pods do no span work at all for it.

Cost when tracing is off: the hot path reads the module attribute `tracer` (None) and
goes on; no span objects, no context, no allocation. When it is on, a publish the
sampler drops costs the sampler's call and nothing else. `publish room` and `process
room`, the spans of every sampled event, are `Recorded`, not SDK spans: each reaches the
span processors as one finished ReadableSpan, at half the CPU of a live SDK span.
Setup reads only the standard `OTEL_*` variables; there is one tracer per process.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Final, Protocol

import orjson
from opentelemetry.attributes import BoundedAttributes
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Attributes as ResourceAttributes
from opentelemetry.sdk.resources import OTELResourceDetector, Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanLimits, TracerProvider
from opentelemetry.sdk.trace import Tracer as SdkTracer
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.sampling import Decision
from opentelemetry.sdk.util import BoundedList
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.semconv._incubating.attributes import messaging_attributes as msg
from opentelemetry.semconv.attributes import (
    error_attributes,
    k8s_attributes,
    network_attributes,
    service_attributes,
)
from opentelemetry.trace import (
    Link,
    NonRecordingSpan,
    Span,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    Tracer,
    get_current_span,
    set_span_in_context,
    use_span,
)
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from relay import contract

log = logging.getLogger("relay.tracing")

tracer: Tracer | None = None
"""The relay's tracer, or None while tracing is off: the hot path's only check."""

DEFAULT_SERVICE_NAME: Final = "relay"
INSTRUMENTATION_NAME: Final = "relay"
ROOM: Final = "room"
"""Stands for the destination in span names: room names are high-cardinality, so they go
in `messaging.destination.name` and never into a span name."""
PUBLISH_SPAN: Final = f"publish {ROOM}"
PROCESS_SPAN: Final = f"process {ROOM}"
RECEIVE_SPAN: Final = f"receive {ROOM}"
CONNECT_SPAN: Final = "ws connect"
CLOSE_SPAN: Final = "ws close"

# The relay's own attributes (no convention covers them).
RECIPIENTS: Final = "relay.recipients"
"""Local connections an event was handed to on this pod."""
DELIVERY_DELAY_MS: Final = "relay.delivery.delay_ms"
"""Milliseconds from the publish (the envelope's timestamp) to this pod's fan-out."""
SESSION_ID: Final = "relay.session.id"
CLOSE_CODE: Final = "relay.close.code"
SESSION_SECONDS: Final = "relay.session.duration_s"
REPLAY_REASON: Final = "relay.replay.reason"


SAMPLERS: Final = frozenset(
    {
        "always_on",
        "always_off",
        "traceidratio",
        "parentbased_always_on",
        "parentbased_always_off",
        "parentbased_traceidratio",
    }
)
PROTOCOLS: Final = ("grpc", "http/protobuf")
EXPORTERS: Final = ("otlp", "console")

# W3C trace context on the envelope whatever OTEL_PROPAGATORS says: the envelope is a
# contract between relay servers (docs/protocol.md), not a header of someone else's.
_w3c = TraceContextTextMapPropagator()
_node_id = ""
_system = "gamecluster"
_provider: TracerProvider | None = None


class TracingConfigError(ValueError):
    """An OTEL_* variable has a value the relay cannot trace with; the message names it."""


@dataclass(frozen=True, slots=True)
class TracingConfig:
    enabled: bool
    reason: str
    """Why tracing is on or off, for the start-up log line."""
    exporters: tuple[str, ...] = ()
    protocol: str = "http/protobuf"


def read_env(env: Mapping[str, str]) -> TracingConfig:
    """Decide from the standard OTEL_* variables whether and how to trace.

    Tracing is on when OTEL_SDK_DISABLED is not true and an exporter is asked for:
    OTEL_TRACES_EXPORTER names one (otlp, console), or an OTLP endpoint is set
    (OTEL_EXPORTER_OTLP_ENDPOINT / OTEL_EXPORTER_OTLP_TRACES_ENDPOINT). With neither,
    it is off: an SDK exporting to a default localhost collector nobody runs would only
    log connection errors. Raises TracingConfigError for values it cannot honour.
    """
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return TracingConfig(False, "OTEL_SDK_DISABLED=true")
    named = env.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    endpoint = env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env.get(
        "OTEL_EXPORTER_OTLP_ENDPOINT"
    )
    if named:
        exporters = tuple(dict.fromkeys(name.strip() for name in named.split(",") if name))
        unknown = [name for name in exporters if name not in (*EXPORTERS, "none")]
        if unknown:
            raise TracingConfigError(
                f"OTEL_TRACES_EXPORTER={named!r}: expected otlp, console or none, "
                f"got {unknown[0]!r}"
            )
        exporters = tuple(name for name in exporters if name != "none")
        if not exporters:
            return TracingConfig(False, "OTEL_TRACES_EXPORTER=none")
    elif endpoint:
        exporters = ("otlp",)
    else:
        return TracingConfig(False, "no OTEL_EXPORTER_OTLP_ENDPOINT nor OTEL_TRACES_EXPORTER")
    protocol = (
        env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        or env.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        or "http/protobuf"
    ).strip()
    if "otlp" in exporters and protocol not in PROTOCOLS:
        raise TracingConfigError(
            f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol!r}: expected grpc or http/protobuf"
        )
    sampler = env.get("OTEL_TRACES_SAMPLER", "parentbased_always_on").strip().lower()
    if sampler not in SAMPLERS:
        raise TracingConfigError(
            f"OTEL_TRACES_SAMPLER={sampler!r}: expected one of {', '.join(sorted(SAMPLERS))}"
        )
    arg = env.get("OTEL_TRACES_SAMPLER_ARG")
    if sampler.endswith("traceidratio") and arg is not None:
        try:
            ratio = float(arg)
        except ValueError:
            ratio = -1.0
        if not 0.0 <= ratio <= 1.0:
            raise TracingConfigError(
                f"OTEL_TRACES_SAMPLER_ARG={arg!r}: expected a ratio from 0 to 1"
            )
    where = f" to {endpoint}" if endpoint and "otlp" in exporters else ""
    return TracingConfig(True, f"{','.join(exporters)} ({protocol}){where}", exporters, protocol)


def make_resource(node_id: str) -> Resource:
    """service.name `relay`, service.instance.id the node id, the pod's k8s names.

    These are defaults: OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES override them.
    """
    defaults: dict[str, str] = {
        service_attributes.SERVICE_NAME: DEFAULT_SERVICE_NAME,
        service_attributes.SERVICE_INSTANCE_ID: node_id,
    }
    if pod := os.environ.get(contract.ENV_POD_NAME):
        defaults[k8s_attributes.K8S_POD_NAME] = pod
    if namespace := os.environ.get(contract.ENV_POD_NAMESPACE):
        defaults[k8s_attributes.K8S_NAMESPACE_NAME] = namespace
    from_env = OTELResourceDetector().detect().attributes
    created = Resource.create({**defaults, **from_env})
    return HashedOnce(created.attributes, created.schema_url)


class HashedOnce(Resource):
    """A Resource (equal to the SDK's with the same attributes) that hashes only once.

    The OTLP exporter groups every batch by resource and so hashes the resource of every
    span it encodes; the SDK's hash is a sorted JSON dump of all its attributes, 2.6 us
    a span, about 8% of the encoding. A Resource never changes after it is made.
    """

    def __init__(self, attributes: ResourceAttributes, schema_url: str | None = None) -> None:
        super().__init__(attributes, schema_url)
        self._hash = super().__hash__()

    def __hash__(self) -> int:
        return self._hash


def _exporter(name: str, protocol: str) -> SpanExporter:
    # Imported on demand: the gRPC stack alone takes a noticeable time to load.
    if name == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter()
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
            OTLPSpanExporter as GrpcExporter,
        )

        return GrpcExporter()  # endpoint, headers, timeout: from OTEL_EXPORTER_OTLP_*
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
        OTLPSpanExporter as HttpExporter,
    )

    return HttpExporter()


def setup(node_id: str, *, system: str) -> bool:
    """Start tracing from the OTEL_* environment; True when it is on.

    `system` is the `messaging.system` value: `redis`, or `gamecluster` for the embedded
    broker. Spans go through one BatchSpanProcessor per exporter (OTEL_BSP_* apply), and
    the sampler is the SDK's reading of OTEL_TRACES_SAMPLER / _ARG.
    """
    config = read_env(os.environ)
    if not config.enabled:
        log.info("tracing off: %s", config.reason)
        configure(None, node_id=node_id, system=system)
        return False
    provider = TracerProvider(resource=make_resource(node_id))
    for name in config.exporters:
        provider.add_span_processor(BatchSpanProcessor(_exporter(name, config.protocol)))
    configure(provider, node_id=node_id, system=system)
    log.info("tracing on: %s", config.reason)
    return True


def configure(provider: TracerProvider | None, *, node_id: str, system: str) -> None:
    """Trace with `provider` (None: off). Tests pass their own, with an in-memory exporter."""
    global tracer, _provider, _node_id, _system, _finishing
    _provider, _node_id, _system = provider, node_id, system
    tracer = None if provider is None else provider.get_tracer(INSTRUMENTATION_NAME)
    # The limits and scope the SDK's own spans of this tracer get (the provider's: from
    # OTEL_SPAN_* when it was made, or its span_limits argument). The SDK has no public
    # accessor for them; a SpanLimits() of our own would ignore a provider's argument.
    _finishing = (
        _Finishing(tracer, tracer._span_limits, tracer._instrumentation_scope)
        if isinstance(tracer, SdkTracer)
        else None
    )


async def shutdown(timeout: float = 5.0) -> None:
    """Export what is buffered, then stop; waits at most `timeout` seconds.

    The SDK's flush blocks, so it runs in a thread; past the timeout the relay stops
    anyway and the spans still buffered are lost.
    """
    global tracer, _provider, _finishing
    provider, _provider, tracer, _finishing = _provider, None, None, None
    if provider is None:
        return

    def flush_and_stop() -> None:
        provider.force_flush(int(timeout * 1000))
        provider.shutdown()

    task = asyncio.ensure_future(asyncio.to_thread(flush_and_stop))
    done, _ = await asyncio.wait({task}, timeout=timeout)
    if not done:
        log.warning("tracing: spans not exported within %.1fs were dropped", timeout)
    elif task.exception() is not None:
        log.warning("tracing: shutdown failed: %r", task.exception())


# Publishing side.


class Publishing:
    """The PRODUCER span of one publish, as a context manager.

    `context` is what goes into the envelope (`Broker.publish(trace=...)`): None when
    tracing is off or the publish is not sampled. `sent(offset)` records the offset the
    broker gave the event. An exception leaving the block marks the span failed, with
    `error.type` the exception's class, and propagates.

    The span is a `Recorded` (not an SDK span), handed to the span processors when the
    block ends.
    """

    __slots__ = ("_span", "context")

    def __init__(self, span: Recorded | None) -> None:
        self._span = span
        self.context: dict[str, str] | None = None

    def __enter__(self) -> Publishing:
        span = self._span
        if span is not None and span.context.trace_flags.sampled:
            carrier: dict[str, str] = {}
            _w3c.inject(carrier, set_span_in_context(NonRecordingSpan(span.context)))
            self.context = carrier
        return self

    def sent(self, offset: int | None) -> None:
        if self._span is not None and offset is not None:
            attributes = self._span.attributes
            # Replaced as the SDK's span replaces an attribute: it becomes the latest, so
            # under OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT the offset outlives older attributes.
            attributes.pop(msg.MESSAGING_MESSAGE_ID, None)
            attributes[msg.MESSAGING_MESSAGE_ID] = str(offset)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        span = self._span
        if span is None or _finishing is None:
            return
        status = _UNSET
        if exc is not None:
            span.attributes[error_attributes.ERROR_TYPE] = _error_type(exc)
            status = Status(StatusCode.ERROR, str(exc)[:200])
        _finishing.finish(span, time.time_ns(), status)


_NOT_TRACED: Final = Publishing(None)
_UNSET: Final = Status(StatusCode.UNSET)


class PublishMessage(Protocol):
    """What `publishing` reads of a client publish (relay.protocol.Publish)."""

    @property
    def room(self) -> str: ...
    @property
    def data(self) -> Any: ...
    @property
    def id(self) -> str | None: ...
    @property
    def traceparent(self) -> str | None: ...
    @property
    def tracestate(self) -> str | None: ...


def publishing(message: PublishMessage, session_id: str) -> Publishing:
    """Start the PRODUCER span of a client's publish (see `Publishing`).

    Its parent is the client's `traceparent` (+ `tracestate`) when it sent one and it is
    valid; otherwise the span starts a trace. A publish the sampler drops costs the
    sampler's call and nothing else: no span object, no attributes, no context.
    """
    if tracer is None or _finishing is None:
        return _NOT_TRACED
    parent: Context | None = None
    if message.traceparent is not None:
        carrier = {"traceparent": message.traceparent}
        if message.tracestate is not None:
            carrier["tracestate"] = message.tracestate
        parent = _w3c.extract(carrier)
    span = _finishing.start(PUBLISH_SPAN, SpanKind.PRODUCER, parent)
    if span is None:
        return _NOT_TRACED
    attributes = span.attributes
    attributes[msg.MESSAGING_SYSTEM] = _system
    attributes[msg.MESSAGING_OPERATION_TYPE] = "send"
    attributes[msg.MESSAGING_OPERATION_NAME] = "publish"
    attributes[msg.MESSAGING_DESTINATION_NAME] = message.room
    attributes[msg.MESSAGING_CLIENT_ID] = _node_id
    attributes[SESSION_ID] = session_id
    if message.id is not None:
        attributes[msg.MESSAGING_MESSAGE_ID] = message.id  # replaced by the offset, if any
    attributes[msg.MESSAGING_MESSAGE_BODY_SIZE] = len(orjson.dumps(message.data))
    return Publishing(span)


# Receiving side.


class Traced(Protocol):
    """What the consumer side reads of a relay.broker.Delivery."""

    @property
    def room(self) -> str: ...
    @property
    def ts(self) -> int: ...
    @property
    def offset(self) -> int | None: ...
    @property
    def trace(self) -> dict[str, str] | None: ...


def process_start(delivery: Traced) -> Recorded | None:
    """Start the CONSUMER span of one event arriving on this pod; None if not traced.

    Call only when `tracer` is set (the hub checks `tracing.tracer` first). The span's
    parent is the producer context from the envelope, and it links to it too.
    """
    if _finishing is None or not delivery.trace:
        return None
    parent = _w3c.extract(delivery.trace)
    producer = get_current_span(parent).get_span_context()
    if not producer.is_valid:
        return None
    attributes: dict[str, str | int | float] = {
        msg.MESSAGING_SYSTEM: _system,
        msg.MESSAGING_OPERATION_TYPE: "process",
        msg.MESSAGING_OPERATION_NAME: "process",
        msg.MESSAGING_DESTINATION_NAME: delivery.room,
        msg.MESSAGING_CLIENT_ID: _node_id,
        DELIVERY_DELAY_MS: max(0.0, time.time() * 1000 - delivery.ts),
    }
    if delivery.offset is not None:
        attributes[msg.MESSAGING_MESSAGE_ID] = str(delivery.offset)
    return _finishing.start(PROCESS_SPAN, SpanKind.CONSUMER, parent, attributes, (Link(producer),))


def process_end(span: Recorded, recipients: int) -> None:
    span.attributes[RECIPIENTS] = recipients
    if _finishing is not None:
        _finishing.finish(span, time.time_ns())


class Recorded:
    """A `publish room` or `process room` span between its start and its end.

    Not an SDK Span: neither span is ever the current span (nothing runs inside it that
    could be its child), so each is handed to the provider's span processors as one
    finished `ReadableSpan` when it ends (`_Finishing`). That skips what a live SDK span
    costs and these spans never use (its lock, its mutable bounded attributes, the copy
    into a ReadableSpan at its end, on_start): about half of their CPU (docs/tracing.md,
    "What it costs"). What is exported is the same (tests/unit/test_tracing.py compares
    them with the SDK's spans).
    """

    __slots__ = ("attributes", "context", "kind", "links", "name", "parent", "start")

    def __init__(
        self,
        name: str,
        kind: SpanKind,
        context: SpanContext,
        parent: SpanContext | None,
        attributes: dict[str, Any],
        links: tuple[Link, ...],
    ) -> None:
        self.name, self.kind, self.context, self.parent = name, kind, context, parent
        self.attributes, self.links, self.start = attributes, links, time.time_ns()


@dataclass(frozen=True, slots=True)
class _Finishing:
    """Starts and ends `Recorded` spans with the provider's sampler, ids, limits and
    processors, as the SDK's Tracer.start_span and Span.end do."""

    tracer: SdkTracer
    limits: SpanLimits
    scope: InstrumentationScope

    def start(
        self,
        name: str,
        kind: SpanKind,
        parent: Context | None,
        attributes: dict[str, str | int | float] | None = None,
        links: tuple[Link, ...] = (),
    ) -> Recorded | None:
        """The span, or None when the sampler drops it (then nothing is kept).

        The sampler is asked as Tracer.start_span asks it: the parent context, the
        parent's trace id or a new one, the name, kind, attributes and links; the span
        takes the trace state and the attributes it answers with."""
        tracer = self.tracer
        parent_context: SpanContext | None = get_current_span(parent).get_span_context()
        if parent_context is not None and parent_context.is_valid:
            trace_id = parent_context.trace_id
            random_id = parent_context.trace_flags.random_trace_id
        else:
            parent_context = None
            trace_id = tracer.id_generator.generate_trace_id()
            random_id = tracer.id_generator.is_trace_id_random()
        sampled = tracer.sampler.should_sample(parent, trace_id, name, kind, attributes, links)
        if sampled.decision is Decision.DROP:  # RECORD_ONLY records, unsampled
            return None
        sampling = sampled.decision is Decision.RECORD_AND_SAMPLE
        flags = TraceFlags.SAMPLED if sampling else TraceFlags.DEFAULT
        if random_id:
            flags |= TraceFlags.RANDOM_TRACE_ID
        context = SpanContext(
            trace_id,
            tracer.id_generator.generate_span_id(),
            is_remote=False,
            trace_flags=TraceFlags(flags),
            trace_state=sampled.trace_state,
        )
        return Recorded(name, kind, context, parent_context, dict(sampled.attributes), links)

    def finish(self, span: Recorded, end: int, status: Status = _UNSET) -> None:
        limits = self.limits
        attributes: Mapping[str, Any] = span.attributes
        most = limits.max_span_attributes
        if limits.max_span_attribute_length is not None or (
            most is not None and len(attributes) > most
        ):
            # Only then can the SDK's bounds change anything: the values are str, int
            # and float by construction, about 8 of them against a limit of 128. The
            # same for the links: one at most, against 128.
            attributes = BoundedAttributes(
                most,
                attributes,
                immutable=True,
                max_value_len=limits.max_span_attribute_length,
            )
        links: Sequence[Link] = span.links
        if limits.max_links is not None and len(links) > limits.max_links:
            links = BoundedList.from_seq(limits.max_links, links)  # counts what it drops
        self.tracer.span_processor.on_end(
            ReadableSpan(
                name=span.name,
                context=span.context,
                parent=span.parent,
                resource=self.tracer.resource,
                attributes=attributes,
                links=links,
                kind=span.kind,
                status=status,
                start_time=span.start,
                end_time=end,
                instrumentation_scope=self.scope,
            )
        )


_finishing: _Finishing | None = None
"""Set with `tracer` by `configure` (when the provider is the SDK's)."""


@contextmanager
def replaying(
    room: str, messages: Iterable[Traced], *, reason: str = "resume"
) -> Iterator[Span | None]:
    """A CLIENT `receive room` span around a replay from history (resume, gap healing).

    It links to the creation context of every replayed message that carries one (per
    link: `messaging.message.id` = its offset), counts them all in
    `messaging.batch.message_count`, and takes the ambient context as parent. Links past
    the SDK's limit (OTEL_SPAN_LINK_COUNT_LIMIT, 128 by default) are dropped by the SDK.
    Yields the span, or None when tracing is off.
    """
    if tracer is None:
        yield None
        return
    links: list[Link] = []
    count = 0
    for message in messages:
        count += 1
        if not message.trace:
            continue
        context = get_current_span(_w3c.extract(message.trace)).get_span_context()
        if context.is_valid:
            offset = message.offset
            ids = None if offset is None else {msg.MESSAGING_MESSAGE_ID: str(offset)}
            links.append(Link(context, ids))
    attributes: dict[str, str | int] = {
        msg.MESSAGING_SYSTEM: _system,
        msg.MESSAGING_OPERATION_TYPE: "receive",
        msg.MESSAGING_OPERATION_NAME: "receive",
        msg.MESSAGING_DESTINATION_NAME: room,
        msg.MESSAGING_CLIENT_ID: _node_id,
        msg.MESSAGING_BATCH_MESSAGE_COUNT: count,
        REPLAY_REASON: reason,
    }
    span = tracer.start_span(RECEIVE_SPAN, kind=SpanKind.CLIENT, links=links, attributes=attributes)
    with use_span(span, end_on_exit=True, record_exception=True, set_status_on_exception=True):
        yield span


# Connection lifecycle: two short spans, never one as long as the connection.


@dataclass(frozen=True, slots=True)
class Connection:
    """What `ws_close` needs of `ws_connect`."""

    context: SpanContext
    opened: float


def ws_connect(session_id: str, peer: tuple[str, int] | None) -> Connection | None:
    """A short SERVER `ws connect` span as the session starts; None when not traced."""
    if tracer is None:
        return None
    attributes: dict[str, str | int] = {SESSION_ID: session_id}
    if peer is not None:
        attributes[network_attributes.NETWORK_PEER_ADDRESS] = peer[0]
        attributes[network_attributes.NETWORK_PEER_PORT] = peer[1]
    span = tracer.start_span(CONNECT_SPAN, kind=SpanKind.SERVER, attributes=attributes)
    span.end()
    if not span.get_span_context().trace_flags.sampled:
        return None
    return Connection(span.get_span_context(), time.monotonic())


def ws_close(connection: Connection | None, session_id: str, code: int | None) -> None:
    """A short `ws close` span, child of the connection's `ws connect` (same trace)."""
    if tracer is None or connection is None:
        return
    attributes: dict[str, str | int | float] = {
        SESSION_ID: session_id,
        SESSION_SECONDS: round(time.monotonic() - connection.opened, 3),
    }
    if code is not None:
        attributes[CLOSE_CODE] = code
    parent = set_span_in_context(NonRecordingSpan(connection.context))
    tracer.start_span(CLOSE_SPAN, context=parent, attributes=attributes).end()


def _error_type(exc: BaseException) -> str:
    code = getattr(exc, "code", None)  # relay.protocol.ProtocolError carries a low-cardinality code
    if isinstance(code, str) and code:
        return code
    return type(exc).__qualname__
