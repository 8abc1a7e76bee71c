"""Where a sampled event's tracing CPU goes, piece by piece, in one process.

Not a test: it prints microseconds (docs/tracing.md, "What it costs"). One sampled event
costs, over the pods: one `publish room` span (publishing pod), one `process room` span
per receiving pod, and the export of each span (the BatchSpanProcessor's thread: the
OTLP exporter's encoding, then one HTTP POST per batch). Each piece is timed alone with
the relay's own code and attributes, as thread CPU time, best of `--repeat` runs:

- publish span, sampled and dropped (`tracing.publishing`, ratio 1 and ratio 0);
- process span (`tracing.process_start` + `process_end`, context from an envelope);
- envelope with and without trace context (pack + unpack);
- OTLP export per span: `encode_spans` alone, and `OTLPSpanExporter.export` over
  HTTP to a loopback server that reads and discards (its CPU is not counted).

To compare with another checkout: `PYTHONPATH=<its service/> .venv/bin/python
bench/tracing_pieces.py`. The protobuf backend in use is printed (upb is the compiled one).

    .venv/bin/python bench/tracing_pieces.py [--events 3000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import gc
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from google.protobuf.internal import api_implementation
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.sampling import ParentBasedTraceIdRatio

from relay import tracing
from relay.broker.envelope import pack, unpack
from relay.protocol import Publish

BATCH = 512
"""The BatchSpanProcessor's default export batch (OTEL_BSP_MAX_EXPORT_BATCH_SIZE)."""
PAYLOAD = b'{"type":"event","room":"bench:3","data":{"t":1733100000000,"seq":1234}}'


class Keep:
    """A span processor that keeps every ended span (to time the export on its own)."""

    def __init__(self) -> None:
        self.spans: list[ReadableSpan] = []

    def on_start(self, span: Any, parent_context: Any = None) -> None:
        pass

    def _on_ending(self, span: Any) -> None:
        pass

    def on_end(self, span: ReadableSpan) -> None:
        self.spans.append(span)

    def shutdown(self) -> None:
        pass

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


class Discard(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def best(repeat: int, count: int, run: Callable[[], None]) -> float:
    """Microseconds of this thread's CPU per item, the best of `repeat` runs of `run`."""
    times = []
    for _ in range(repeat):
        gc.collect()
        start = time.thread_time_ns()
        run()
        times.append((time.thread_time_ns() - start) / count / 1000)
    return min(times)


def traced(ratio: float) -> Keep:
    keep = Keep()
    provider = TracerProvider(
        sampler=ParentBasedTraceIdRatio(ratio), resource=tracing.make_resource("relay-a-0")
    )
    provider.add_span_processor(keep)  # type: ignore[arg-type]
    tracing.configure(provider, node_id="relay-a-0", system="redis")
    return keep


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=3000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    n, repeat = args.events, args.repeat
    message = Publish(room="bench:3", data={"t": 1733100000000, "seq": 1234}, id="42")
    print(f"protobuf backend: {api_implementation.Type()}; {n} events, best of {repeat}")

    def publish() -> None:
        for _ in range(n):
            with tracing.publishing(message, "s-abcdef") as span:
                span.sent(None)

    traced(0.0)
    dropped = best(repeat, n, publish)
    keep = traced(1.0)
    sampled = best(repeat, n, publish)
    with tracing.publishing(message, "s-abcdef") as span:
        pass
    context = span.context
    envelope = pack("relay-a-0", "bench:3", 1733100000000, PAYLOAD, context)
    plain = pack("relay-a-0", "bench:3", 1733100000000, PAYLOAD, None)
    delivery = unpack(envelope)

    def process() -> None:
        for _ in range(n):
            started = tracing.process_start(delivery)
            assert started is not None
            tracing.process_end(started, 10)

    processed = best(repeat, n, process)
    fields, plain_fields = _fields(envelope), _fields(plain)
    with_context = best(repeat, n, lambda: [unpack(pack(*fields)) for _ in range(n)])
    without = best(repeat, n, lambda: [unpack(pack(*plain_fields)) for _ in range(n)])

    # One event's spans, as the pods export them: a producer and two consumers.
    producers = [s for s in keep.spans if s.name == tracing.PUBLISH_SPAN][:n]
    consumers = [s for s in keep.spans if s.name == tracing.PROCESS_SPAN][:n]
    spans = [s for p, c in zip(producers, consumers, strict=True) for s in (p, c, c)]
    batches = [spans[i : i + BATCH] for i in range(0, len(spans), BATCH)]
    encoded = best(repeat, len(spans), lambda: [encode_spans(b) for b in batches])
    server = ThreadingHTTPServer(("127.0.0.1", 0), Discard)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    exporter = OTLPSpanExporter(endpoint=f"http://127.0.0.1:{server.server_port}/v1/traces")
    exported = best(repeat, len(spans), lambda: [exporter.export(b) for b in batches])
    server.shutdown()
    tracing.configure(None, node_id="", system="")

    print(f"publish span, dropped by the sampler      {dropped:6.1f} us")
    print(f"publish span, sampled                     {sampled:6.1f} us")
    print(f"process span (per receiving pod)          {processed:6.1f} us")
    print(f"envelope pack+unpack with / without tc    {with_context:6.1f} / {without:.1f} us")
    print(f"OTLP encode_spans, per span               {encoded:6.1f} us")
    print(f"OTLP/HTTP export, per span (batch {BATCH})   {exported:6.1f} us")
    event = sampled + 2 * processed + 3 * exported
    print(f"one sampled event, two receiving pods     {event:6.1f} us (spans + 3 exports)")


def _fields(envelope: bytes) -> tuple[str, str, int, bytes, dict[str, str] | None]:
    delivery = unpack(envelope)
    return delivery.origin, delivery.room, delivery.ts, delivery.payload, delivery.trace


if __name__ == "__main__":
    main()
