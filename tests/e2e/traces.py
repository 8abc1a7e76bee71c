"""Reading the relay's spans back from Jaeger's query API (api/v3, OTLP JSON), shared by the
e2e tier's trace test (relay processes) and the real-pod tier's (relay pods)."""

from __future__ import annotations

import datetime as dt
import urllib.parse
from typing import Any

from .cluster import E2EError, Jaeger

PUBLISH, PROCESS = "publish room", "process room"
"""The relay's span names: the publish on the publisher's pod, its delivery on each pod."""


def _rfc3339(t: dt.datetime) -> str:
    return t.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _value(v: dict[str, Any]) -> Any:
    """An OTLP AnyValue in JSON (stringValue, intValue as a string, ...) as a Python value."""
    for key in ("stringValue", "boolValue", "doubleValue"):
        if key in v:
            return v[key]
    if "intValue" in v:
        return int(v["intValue"])
    return v


def _attrs(items: list[dict[str, Any]] | None) -> dict[str, Any]:
    return {a["key"]: _value(a.get("value") or {}) for a in items or []}


def flat_spans(payload: dict[str, Any]) -> list[dict[str, Any]]:
    """Jaeger's /api/v3/traces answer ({"result": {"resourceSpans": [...]}}, OTLP JSON) as one
    list of spans, each with its resource attributes under "resource"."""
    out = []
    for rs in (payload.get("result") or {}).get("resourceSpans") or []:
        resource = _attrs((rs.get("resource") or {}).get("attributes"))
        for ss in rs.get("scopeSpans") or []:
            for span in ss.get("spans") or []:
                out.append({**span, "resource": resource, "attrs": _attrs(span.get("attributes"))})
    return out


def query_traces(
    jaeger: Jaeger, since: dt.datetime, service: str = "relay", **params: str
) -> list[dict[str, Any]]:
    """GET /api/v3/traces for `service` since `since`; spans of every trace found. A relay
    process calls itself `relay`; the operator names a GameCluster's `<name>-relay`."""
    until = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=1)
    query = {
        "query.service_name": service,
        "query.start_time_min": _rfc3339(since),
        "query.start_time_max": _rfc3339(until),
        "query.num_traces": "100",  # Jaeger refuses a search without a depth
        **params,
    }
    try:
        return flat_spans(jaeger.get(f"/api/v3/traces?{urllib.parse.urlencode(query)}"))
    except E2EError as err:
        if "HTTP 404" in str(err):  # "trace not found": nothing stored yet
            return []
        raise


def room_spans(
    jaeger: Jaeger, since: dt.datetime, room: str, service: str = "relay"
) -> list[dict[str, Any]]:
    """The relay's spans about `room` (its messaging.destination.name) since `since`."""
    return [
        s
        for s in query_traces(jaeger, since, service)
        if s["attrs"].get("messaging.destination.name") == room
    ]
