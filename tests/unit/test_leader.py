"""The Lease decision: who may lead, and when a silent holder may be replaced."""

from datetime import UTC, datetime, timedelta

import pytest

from gamecluster.leader import _micro_time, decide

pytestmark = pytest.mark.unit

NOW = datetime(2026, 1, 1, 12, tzinfo=UTC)


def lease(holder: str | None, renewed_ago: float, duration: int = 15) -> dict[str, object]:
    return {
        "holderIdentity": holder,
        "renewTime": NOW - timedelta(seconds=renewed_ago),
        "leaseDurationSeconds": duration,
    }


def test_no_lease_is_created() -> None:
    assert decide(None, "a", NOW) == "create"


def test_the_holder_renews() -> None:
    assert decide(lease("a", 3), "a", NOW) == "renew"
    assert decide(lease("a", 60), "a", NOW) == "renew"


def test_a_live_holder_is_waited_for() -> None:
    assert decide(lease("b", 14), "a", NOW) == "wait"


def test_an_expired_or_released_lease_is_taken() -> None:
    assert decide(lease("b", 15), "a", NOW) == "take"
    assert decide(lease(None, 0), "a", NOW) == "take"
    assert decide({"holderIdentity": "b"}, "a", NOW) == "take"


def test_micro_time_always_has_six_fraction_digits() -> None:
    assert _micro_time(NOW) == "2026-01-01T12:00:00.000000Z"
