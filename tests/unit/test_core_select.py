"""relay.core.select with an installed core that predates a piece the relay uses."""

import sys
import types

import pytest

from relay.core import CoreMissing, select
from relay.hub import Members, member_sets
from relay.outbox import FlushScheduler, scheduler

pytestmark = pytest.mark.unit


@pytest.fixture
def stale_core(monkeypatch: pytest.MonkeyPatch) -> None:
    """gamecluster_core as built before its member set (core-fanout), 0.1.0: the image
    build pins the current version and refuses that wheel, but `pip install ./core` from an older
    checkout, or a hand-built image, can still put it next to this relay. It has the
    frame reader and outboxes but no Members."""
    stale = types.ModuleType("gamecluster_core")
    stale.__version__ = "0.1.0"  # type: ignore[attr-defined]
    for name in ("FrameReader", "Outbox", "FlushScheduler"):
        setattr(stale, name, type(name, (), {}))
    monkeypatch.setitem(sys.modules, "gamecluster_core", stale)


@pytest.mark.usefixtures("stale_core")
def test_auto_runs_the_python_path_when_the_core_lacks_a_piece() -> None:
    """Not a relay that fails at start on an AttributeError (module 'gamecluster_core'
    has no attribute 'Members') under the default RELAY_CORE=auto: the Python classes,
    and the start-up line says why."""
    chosen = select("auto")
    assert chosen.name == "python" and chosen.module is None
    assert "Members" in chosen.why
    assert member_sets(chosen) is Members
    assert isinstance(scheduler(chosen), FlushScheduler)


@pytest.mark.usefixtures("stale_core")
def test_on_refuses_a_core_that_lacks_a_piece() -> None:
    with pytest.raises(CoreMissing, match="lacks Members"):
        select("on")
