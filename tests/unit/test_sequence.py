import asyncio

import pytest

from relay import sequence as sequence_module
from relay.broker import BrokerUnavailable, Delivery, History
from relay.sequence import RoomSequence

pytestmark = pytest.mark.unit


def event(offset: int, epoch: str = "e") -> Delivery:
    return Delivery("r", b"%d" % offset, 0, offset, epoch, "n")


class Store:
    """The room's history; reads can be held to make arrivals pile up meanwhile."""

    def __init__(self) -> None:
        self.events: list[Delivery] = []
        self.epoch = "e"
        self.release = asyncio.Event()
        self.release.set()
        self.reads = 0

    async def fetch(self, after: int) -> History:
        self.reads += 1
        seen = list(self.events)  # the read sees the history as it was when it started
        await self.release.wait()
        top = seen[-1].offset if seen else 0
        return History(self.epoch, top or 0, [d for d in seen if (d.offset or 0) > after])


async def settle(seq: RoomSequence) -> None:
    for _ in range(50):
        if seq._filling is None:
            return
        await asyncio.shield(seq._filling)


async def test_arrivals_dropped_during_a_read_are_read_again_even_in_a_quiet_room(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(sequence_module, "PENDING_LIMIT", 2)
    store = Store()
    emitted: list[int] = []
    seq = RoomSequence(
        "r",
        History("e", 1),
        fetch=store.fetch,
        emit=lambda d: emitted.append(d.offset or 0),
        resync=lambda offset, epoch: pytest.fail("no re-sync expected"),
    )
    store.events = [event(n) for n in range(1, 4)]
    store.release.clear()
    seq.accept(event(3))  # 2 is missing: a read starts, and is held
    store.events += [event(n) for n in range(4, 7)]
    for n in range(4, 7):  # arrive during the read; past the limit they are dropped
        seq.accept(event(n))
    store.release.set()
    await settle(seq)
    assert emitted == [2, 3, 4, 5, 6]  # nothing more will be published: no live event heals it


async def test_deliveries_without_a_position_are_ignored_in_a_durable_room() -> None:
    emitted: list[int] = []
    seq = RoomSequence(
        "r",
        History("e", 0),
        fetch=Store().fetch,
        emit=lambda d: emitted.append(d.offset or 0),
        resync=lambda offset, epoch: pytest.fail("no re-sync expected"),
    )
    seq.accept(Delivery("r", b"{}", 0, None, None, "n"))
    seq.accept(event(1))
    assert emitted == [1]
    assert seq.epoch == "e"


async def test_a_history_that_stays_unreadable_is_given_up_with_backoff_and_a_resync(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Review finding: the read retried every 0.5 s forever; now it backs off and stops."""
    monkeypatch.setattr(sequence_module, "READ_GIVE_UP_SECONDS", 0.5)
    reads: list[float] = []

    async def broken(after: int) -> History:
        reads.append(asyncio.get_running_loop().time())
        raise BrokerUnavailable("redis is down")

    emitted: list[int] = []
    resyncs: list[tuple[int, str]] = []
    seq = RoomSequence(
        "r",
        History("e", 1),
        fetch=broken,
        emit=lambda d: emitted.append(d.offset or 0),
        resync=lambda offset, epoch: resyncs.append((offset, epoch)),
    )
    seq.accept(event(4))  # 2 and 3 are missing, and the history cannot be read
    seq.accept(event(5))
    await asyncio.wait_for(settle(seq), 5)
    assert seq._filling is None
    assert resyncs == [(3, "e")]  # members re-sync: the feed continues after the gap
    assert emitted == [4, 5]
    assert 2 <= len(reads) <= 20  # retried, with pauses between the tries
    seq.accept(event(6))
    assert emitted == [4, 5, 6]
