"""The lock-free per-event metrics expose exactly what prometheus_client's own would."""

from __future__ import annotations

import re

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from relay.metrics import LATENCY_BUCKETS, LoopCounter, LoopHistogram, Metrics


def _exposed(registry: CollectorRegistry) -> str:
    # Creation times differ by construction order only.
    return re.sub(r"_created \S+", "_created <t>", generate_latest(registry).decode())


def test_loop_counter_and_histogram_expose_what_prometheus_client_does() -> None:
    library, ours = CollectorRegistry(), CollectorRegistry()
    counter = Counter("relay_events_delivered", "Deliveries.", registry=library)
    buckets = LATENCY_BUCKETS
    histogram = Histogram("relay_delay_seconds", "Delay.", buckets=buckets, registry=library)
    loop_counter = LoopCounter("relay_events_delivered", "Deliveries.", registry=ours)
    loop_histogram = LoopHistogram("relay_delay_seconds", "Delay.", buckets, registry=ours)
    # On a bound (le is "less or equal"), between bounds, past the last one, and zero.
    for value in (0.0, 0.0005, 0.0007, 0.001, 0.003, 0.25, 2.5, 3.0, 100.0):
        histogram.observe(value)
        loop_histogram.observe(value)
    for amount in (20, 1, 0):
        counter.inc(amount)
        loop_counter.inc(amount)
    assert _exposed(ours) == _exposed(library)
    assert 'relay_delay_seconds_bucket{le="0.0005"} 2.0' in _exposed(ours)


def test_the_relays_per_event_metrics_are_scraped_by_their_names() -> None:
    metrics = Metrics()
    metrics.published.inc()
    metrics.delivered.inc(20)
    metrics.delivery_latency.observe(0.002)
    text = generate_latest(metrics.registry).decode()
    assert "relay_events_published_total 1.0" in text
    assert "relay_events_delivered_total 20.0" in text
    assert 'relay_delivery_latency_seconds_bucket{le="0.0025"} 1.0' in text
    assert 'relay_delivery_latency_seconds_bucket{le="0.001"} 0.0' in text
    assert "relay_delivery_latency_seconds_count 1.0" in text
