"""A tiny OTLP trace receiver for tests and benchmarks: OTLP/HTTP (protobuf) or OTLP/gRPC.

It decodes each ExportTraceServiceRequest with the opentelemetry-proto package and keeps
the spans as flat `SinkSpan` records (hex ids, plain attribute dicts, the resource's
attributes), or, with `keep=False`, only counts them (the benchmark's sink).
`wait_for` blocks until a condition on the spans holds, with a bound; run it with
`asyncio.to_thread` from async tests.
"""

from __future__ import annotations

import gzip
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

from support.processes import LOOPBACK, free_port

# OTLP span kinds (opentelemetry.proto.trace.v1.Span.SpanKind).
INTERNAL, SERVER, CLIENT, PRODUCER, CONSUMER = 1, 2, 3, 4, 5


@dataclass(frozen=True)
class SinkLink:
    trace_id: str
    span_id: str
    attributes: dict[str, Any]


@dataclass(frozen=True)
class SinkSpan:
    name: str
    kind: int
    trace_id: str
    span_id: str
    parent_span_id: str
    """Empty for a root span."""
    attributes: dict[str, Any]
    resource: dict[str, Any]
    links: list[SinkLink] = field(default_factory=list)
    start_ns: int = 0
    end_ns: int = 0
    status_code: int = 0

    @property
    def instance(self) -> str:
        return str(self.resource.get("service.instance.id", ""))


def _value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [_value(v) for v in value.array_value.values]
    if kind == "kvlist_value":
        return _attributes(value.kvlist_value.values)
    return getattr(value, kind)


def _attributes(pairs: Any) -> dict[str, Any]:
    return {pair.key: _value(pair.value) for pair in pairs if isinstance(pair, KeyValue)}


def _link(link: Any) -> SinkLink:
    return SinkLink(link.trace_id.hex(), link.span_id.hex(), _attributes(link.attributes))


def decode(request: trace_service_pb2.ExportTraceServiceRequest) -> list[SinkSpan]:
    spans = []
    for resource_spans in request.resource_spans:
        resource = _attributes(resource_spans.resource.attributes)
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                spans.append(
                    SinkSpan(
                        name=span.name,
                        kind=span.kind,
                        trace_id=span.trace_id.hex(),
                        span_id=span.span_id.hex(),
                        parent_span_id=span.parent_span_id.hex(),
                        attributes=_attributes(span.attributes),
                        resource=resource,
                        links=[_link(link) for link in span.links],
                        start_ns=span.start_time_unix_nano,
                        end_ns=span.end_time_unix_nano,
                        status_code=span.status.code,
                    )
                )
    return spans


class OtlpSink:
    """Receives OTLP traces on a free loopback port; `endpoint` is what OTEL_* should say."""

    def __init__(self, *, protocol: str = "http/protobuf", keep: bool = True) -> None:
        if protocol not in ("http/protobuf", "grpc"):
            raise ValueError(f"protocol must be http/protobuf or grpc, got {protocol!r}")
        self.protocol = protocol
        self.port = free_port()
        self.keep = keep
        self.span_count = 0
        self.requests = 0
        self._spans: list[SinkSpan] = []
        self._changed = threading.Condition()
        self._http: ThreadingHTTPServer | None = None
        self._grpc: Any = None

    @property
    def endpoint(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def env(self) -> dict[str, str]:
        """OTEL_* variables that make a relay export here, quickly."""
        return {
            "OTEL_EXPORTER_OTLP_ENDPOINT": self.endpoint,
            "OTEL_EXPORTER_OTLP_PROTOCOL": self.protocol,
            "OTEL_BSP_SCHEDULE_DELAY": "50",
        }

    def spans(self) -> list[SinkSpan]:
        with self._changed:
            return list(self._spans)

    def wait_for(
        self, condition: Callable[[list[SinkSpan]], bool], timeout: float, what: str
    ) -> list[SinkSpan]:
        """Block until `condition(spans)` holds; TimeoutError naming `what` after `timeout`."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while not condition(list(self._spans)):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(
                        f"timed out after {timeout}s waiting for {what}; "
                        f"got {[(s.name, s.instance) for s in self._spans]}"
                    )
                self._changed.wait(left)
            return list(self._spans)

    def received(self, request: trace_service_pb2.ExportTraceServiceRequest) -> None:
        spans = decode(request)
        with self._changed:
            self.requests += 1
            self.span_count += len(spans)
            if self.keep:
                self._spans.extend(spans)
            self._changed.notify_all()

    def start(self) -> OtlpSink:
        if self.protocol == "grpc":
            self._start_grpc()
        else:
            self._start_http()
        return self

    def stop(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
        if self._grpc is not None:
            self._grpc.stop(grace=None).wait(5)

    def _start_http(self) -> None:
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                if self.path != "/v1/traces":
                    self.send_error(404)
                    return
                request = trace_service_pb2.ExportTraceServiceRequest()
                request.ParseFromString(body)
                sink.received(request)
                reply = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def do_GET(self) -> None:
                """`GET /count`: spans received so far, as a decimal number."""
                body = str(sink.span_count).encode()
                self.send_response(200 if self.path == "/count" else 404)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                return None

        self._http = ThreadingHTTPServer((LOOPBACK, self.port), Handler)
        self._http.daemon_threads = True
        threading.Thread(target=self._http.serve_forever, name="otlp-sink", daemon=True).start()

    def _start_grpc(self) -> None:
        import grpc

        sink = self

        class Service(trace_service_pb2_grpc.TraceServiceServicer):
            def Export(
                self, request: trace_service_pb2.ExportTraceServiceRequest, context: Any
            ) -> trace_service_pb2.ExportTraceServiceResponse:
                sink.received(request)
                return trace_service_pb2.ExportTraceServiceResponse()

        server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Service(), server)
        server.add_insecure_port(f"{LOOPBACK}:{self.port}")
        server.start()
        self._grpc = server


@contextmanager
def running(*, protocol: str = "http/protobuf", keep: bool = True) -> Iterator[OtlpSink]:
    sink = OtlpSink(protocol=protocol, keep=keep).start()
    try:
        yield sink
    finally:
        sink.stop()


def main() -> None:
    """`python -m support.otlp_sink PORT`: a counting OTLP/HTTP sink in its own process
    (the benchmark's, so decoding spans takes no CPU from the load generator's process)."""
    import signal
    import sys

    stop = {signal.SIGTERM, signal.SIGINT}
    signal.pthread_sigmask(signal.SIG_BLOCK, stop)  # before the server's threads start
    sink = OtlpSink(keep=False)
    sink.port = int(sys.argv[1])
    sink.start()
    signal.sigwait(stop)
    sink.stop()


if __name__ == "__main__":
    main()
