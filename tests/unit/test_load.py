"""Reading the load: which pods count, and when the reading is unknown instead of low."""

from datetime import UTC, datetime, timedelta

import pytest

from gamecluster.load import ReadyPod, combine, ready_pods
from relay import contract

pytestmark = pytest.mark.unit

NOW = datetime(2026, 1, 1, 12, tzinfo=UTC)
OLD = NOW - timedelta(minutes=10)


def pod(name: str, ready: str, since: datetime = OLD, deleting: bool = False) -> dict[str, object]:
    meta: dict[str, object] = {"name": name}
    if deleting:
        meta["deletionTimestamp"] = "2026-01-01T11:59:00Z"
    stamp = since.strftime("%Y-%m-%dT%H:%M:%SZ")
    return {
        "metadata": meta,
        "status": {"conditions": [{"type": "Ready", "status": ready, "lastTransitionTime": stamp}]},
    }


def test_only_ready_pods_that_are_not_terminating_count() -> None:
    pods = [
        pod("a", "True"),
        pod("b", "False"),
        pod("c", "True", deleting=True),
        {"metadata": {"name": "d"}},
    ]
    assert ready_pods(pods) == [ReadyPod("a", OLD)]


def test_every_report_present_sums() -> None:
    reading = combine([ReadyPod("a", OLD), ReadyPod("b", OLD)], [b"10", b"5"], NOW)
    assert (reading.total, reading.per_pod, reading.unknown) == (15, {"a": 10, "b": 5}, None)


def test_a_missing_report_from_a_long_ready_pod_is_unknown() -> None:
    reading = combine([ReadyPod("a", OLD), ReadyPod("b", OLD)], [b"10", None], NOW)
    assert reading.total is None
    assert reading.unknown == "no fresh load report from ready pod b"


def test_a_just_ready_pod_without_a_report_counts_zero() -> None:
    fresh = NOW - timedelta(seconds=contract.LOAD_REPORT_TTL_SECONDS - 1)
    reading = combine([ReadyPod("a", OLD), ReadyPod("new", fresh)], [b"10", None], NOW)
    assert reading.total == 10


def test_a_malformed_report_is_unknown() -> None:
    reading = combine([ReadyPod("a", OLD)], [b"lots"], NOW)
    assert reading.total is None and "malformed" in (reading.unknown or "")
