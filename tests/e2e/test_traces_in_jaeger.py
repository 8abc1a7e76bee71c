"""Watching traces in Jaeger (issue 7, scenario 6): two relay processes and a Redis export their
spans to a real Jaeger all-in-one (memory storage); one publish is one trace in Jaeger's query
API, with spans from both relay instances."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import secrets
from collections.abc import Callable
from typing import Any

import pytest

from gamecluster_client import Connection
from support.processes import RedisProcess, RelayProcess

from .cluster import Jaeger, wait_until
from .traces import PROCESS, PUBLISH, flat_spans, room_spans

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
async def test_one_publish_is_one_trace_in_jaeger_with_spans_from_both_pods(
    jaeger: Jaeger,
    redis: RedisProcess,
    relay_factory: Callable[..., RelayProcess],
    protocol: str,
) -> None:
    endpoint = jaeger.otlp_grpc_endpoint if protocol == "grpc" else jaeger.otlp_http_endpoint
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": (f"http://{endpoint}" if protocol == "grpc" else endpoint),
        "OTEL_EXPORTER_OTLP_PROTOCOL": protocol,
        "OTEL_BSP_SCHEDULE_DELAY": "100",
        "RELAY_AUTH": "none",
    }
    since = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=5)
    pod_a = relay_factory("a", redis_urls=[redis.url], env=env)
    pod_b = relay_factory("b", redis_urls=[redis.url], env=env)
    room = f"match:{secrets.token_hex(4)}"  # this test's spans, whatever else Jaeger holds
    data = {"move": "e2e4"}
    async with (
        Connection(pod_a.url) as publisher,
        Connection(pod_a.url) as on_a,
        Connection(pod_b.url) as on_b,
    ):
        for client in (publisher, on_a, on_b):
            await client.join(room)
        await publisher.publish(room, data, id="move-1")
        for client in (publisher, on_a, on_b):
            event = await client.receive(timeout=5)
            assert (event["op"], event["data"]) == ("event", data), event

    def one_trace() -> list[dict[str, Any]] | None:
        spans = room_spans(jaeger, since, room)
        producers = [s for s in spans if s["name"] == PUBLISH]
        consumers = [s for s in spans if s["name"] == PROCESS]
        return spans if len(producers) == 1 and len(consumers) == 2 else None

    spans = await asyncio.to_thread(
        wait_until,
        f"the trace of one publish to {room} in Jaeger",
        one_trace,
        timeout=30,
        interval=0.5,
        on_timeout=lambda: f"{jaeger.process.tail()}\nrelay a:\n{pod_a.tail()}",
    )
    trace_ids = {s["traceId"] for s in spans}
    assert len(trace_ids) == 1, trace_ids
    [producer] = [s for s in spans if s["name"] == PUBLISH]
    consumers = {s["resource"]["service.instance.id"]: s for s in spans if s["name"] == PROCESS}
    assert producer["resource"]["service.instance.id"] == "a"
    assert sorted(consumers) == ["a", "b"]  # the event crossed Redis to the other pod
    for pod, consumer in consumers.items():
        assert consumer["parentSpanId"] == producer["spanId"], pod
        assert consumer["attrs"]["messaging.client.id"] == pod
    assert {s["resource"]["service.name"] for s in spans} == {"relay"}

    # The same trace, fetched by its id, holds exactly these spans.
    [trace_id] = trace_ids
    by_id = flat_spans(jaeger.get(f"/api/v3/traces/{trace_id}"))
    assert sorted((s["name"], s["resource"]["service.instance.id"]) for s in by_id) == [
        (PROCESS, "a"),
        (PROCESS, "b"),
        (PUBLISH, "a"),
    ], json.dumps(by_id)[:2000]
