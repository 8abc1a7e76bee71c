import asyncio

import orjson
import pytest

from relay import hub as hub_module
from relay.broker import BrokerUnavailable, Delivery, History
from relay.broker import memory as memory_broker
from relay.broker.memory import MemoryBroker
from relay.core import select
from relay.hub import Hub, JoinResult
from relay.metrics import Metrics
from relay.protocol import Position
from relay.rooms import RoomPolicies, RoomPolicy
from support.waiting import eventually

pytestmark = pytest.mark.unit


@pytest.fixture(autouse=True, params=["rust", "python"])
def member_set(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test here runs with each implementation of a room's member set: the compiled
    core's (gamecluster_core.Members) and relay.hub.Members, made the default of every
    Hub the test builds."""
    chosen = select("on" if request.param == "rust" else "off")
    assert chosen.name == request.param
    defaults = Hub.__init__.__kwdefaults__
    assert defaults is not None and "member_set" in defaults
    monkeypatch.setitem(defaults, "member_set", hub_module.member_sets(chosen))


DURABLE = RoomPolicy()
VOLATILE = RoomPolicy(match="v:*", policy="volatile")


class Member:
    def __init__(self) -> None:
        self.received: list[bytes] = []

        self.overflowed = False

    def push(self, payload: bytes) -> None:
        self.received.append(payload)

    async def replay(self, payloads: list[bytes]) -> None:
        self.received.extend(payloads)

    def overflow(self) -> None:
        self.overflowed = True

    def messages(self) -> list[dict[str, object]]:
        return [orjson.loads(p) for p in self.received]

    def offsets(self) -> list[object]:
        return [m.get("offset") for m in self.messages() if m["op"] == "event"]


class CountingBroker(MemoryBroker):
    """The memory broker, recording subscriptions; `muted` publishes are stored but not
    delivered live, as Pub/Sub loses a message while the subscriber's link is down."""

    def __init__(self) -> None:
        super().__init__("n")
        self.calls: list[str] = []
        self.unsubscribed = asyncio.Event()
        self.muted = False

    async def subscribe(self, room: str) -> None:
        self.calls.append(f"sub {room}")
        await super().subscribe(room)

    async def unsubscribe(self, room: str) -> None:
        self.calls.append(f"unsub {room}")
        await super().unsubscribe(room)
        self.unsubscribed.set()

    def _deliver(self, delivery: Delivery) -> None:
        if not self.muted:
            super()._deliver(delivery)


def make_hub(broker: CountingBroker, delay: float = 0) -> Hub:
    return Hub(broker, Metrics(), RoomPolicies([VOLATILE]), unsubscribe_delay=delay)


async def join(hub: Hub, member: Member, room: str, since: Position | None = None) -> JoinResult:
    results: list[JoinResult] = []
    await hub.join(member, room, since, results.append)
    return results[0]


@pytest.mark.parametrize("room", ["durable", "v:volatile"])
async def test_same_bytes_reach_every_member_and_only_members(room: str) -> None:
    broker = CountingBroker()
    hub = make_hub(broker)
    one, two, other = Member(), Member(), Member()
    await join(hub, one, room)
    await join(hub, two, room)
    await join(hub, other, "elsewhere")
    await broker.publish(room, {"x": 1}, ts=0, policy=hub_policy(room))
    assert len(one.received) == 1
    assert one.received[0] is two.received[0]  # encoded once, shared
    assert other.received == []
    assert broker.calls == [f"sub {room}", "sub elsewhere"]


def hub_policy(room: str) -> RoomPolicy:
    return RoomPolicies([VOLATILE]).for_room(room)


def hold_history(monkeypatch: pytest.MonkeyPatch, broker: CountingBroker) -> asyncio.Event:
    """Hold every history read of `broker` until the event returned is set."""
    held = asyncio.Event()
    real_history = broker.history

    async def slow_history(
        room: str, after: int | None, policy: RoomPolicy, *, limit: int | None = None
    ) -> History:
        await held.wait()
        return await real_history(room, after, policy, limit=limit)

    monkeypatch.setattr(broker, "history", slow_history)
    return held


async def test_subscription_is_released_after_the_delay_and_kept_when_rejoined() -> None:
    broker = CountingBroker()
    hub = make_hub(broker, delay=0.05)
    member = Member()
    await join(hub, member, "r")
    hub.leave(member, "r")
    await join(hub, member, "r")  # back within the delay: no churn
    hub.leave(member, "r")
    await asyncio.wait_for(broker.unsubscribed.wait(), 2)
    assert not hub.is_subscribed("r")
    assert broker.calls == ["sub r", "unsub r"]


async def test_concurrent_first_joins_subscribe_once() -> None:
    broker = CountingBroker()
    hub = make_hub(broker)
    members = [Member() for _ in range(5)]
    await asyncio.gather(*(join(hub, m, "r") for m in members))
    assert broker.calls == ["sub r"]
    await broker.publish("r", 1, ts=0, policy=DURABLE)
    assert all(m.offsets() == [1] for m in members)


async def test_join_with_since_replays_exactly_the_missed_events_then_live() -> None:
    broker = CountingBroker()
    hub = make_hub(broker)
    for n in range(3):
        await broker.publish("r", n, ts=0, policy=DURABLE)
    epoch = (await broker.history("r", None, DURABLE)).epoch
    member = Member()
    result = await join(hub, member, "r", Position(1, epoch))
    assert result == JoinResult(3, epoch, True)
    await broker.publish("r", 3, ts=0, policy=DURABLE)
    assert member.offsets() == [2, 3, 4]


@pytest.mark.parametrize(("offset", "epoch_ok"), [(1, False), (9, True)])
async def test_join_from_another_epoch_or_the_future_is_not_recovered(
    offset: int, epoch_ok: bool
) -> None:
    broker = CountingBroker()
    hub = make_hub(broker)
    await broker.publish("r", 0, ts=0, policy=DURABLE)
    epoch = (await broker.history("r", None, DURABLE)).epoch
    member = Member()
    result = await join(hub, member, "r", Position(offset, epoch if epoch_ok else "other"))
    assert result == JoinResult(1, epoch, False)
    assert member.offsets() == []


async def test_gap_in_the_live_feed_is_filled_from_history_in_order() -> None:
    broker = CountingBroker()
    hub = make_hub(broker)
    member = Member()
    await join(hub, member, "r")
    await broker.publish("r", "a", ts=0, policy=DURABLE)
    broker.muted = True  # these two never arrive live
    await broker.publish("r", "b", ts=0, policy=DURABLE)
    await broker.publish("r", "c", ts=0, policy=DURABLE)
    broker.muted = False
    await broker.publish("r", "d", ts=0, policy=DURABLE)  # offset 4: a jump
    for _ in range(10):
        if len(member.offsets()) == 4:
            break
        await asyncio.sleep(0)  # the fill runs as a task; yield until it has
    assert member.offsets() == [1, 2, 3, 4]


async def test_an_epoch_change_tells_members_to_resync() -> None:
    broker = CountingBroker()
    hub = make_hub(broker)
    member = Member()
    await join(hub, member, "r")
    hub.deliver(Delivery("r", b'{"op":"event","room":"r","offset":1}', 0, 1, "new-epoch", "x"))
    notice, event = member.messages()
    assert notice == {
        "op": "joined",
        "room": "r",
        "offset": 0,
        "epoch": "new-epoch",
        "recovered": False,
    }
    assert event["offset"] == 1


async def test_a_join_that_fails_after_subscribing_leaves_nothing_subscribed() -> None:
    class NoHistory(CountingBroker):
        async def history(
            self, room: str, after: int | None, policy: RoomPolicy, *, limit: int | None = None
        ) -> History:
            raise BrokerUnavailable("history read failed")

    broker = NoHistory()
    hub = make_hub(broker)
    with pytest.raises(BrokerUnavailable):
        await join(hub, Member(), "r")
    await asyncio.wait_for(broker.unsubscribed.wait(), 2)
    assert broker.calls == ["sub r", "unsub r"]
    assert not hub.is_subscribed("r")


async def test_a_history_lost_while_idle_is_noticed_at_the_next_join_and_resynced_once() -> None:
    broker = CountingBroker()
    hub = make_hub(broker)
    present = Member()
    await join(hub, present, "r")
    await broker.publish("r", "old", ts=0, policy=DURABLE)
    lost = memory_broker._Room(DURABLE)  # as if Redis came back empty
    lost.epoch = "after-loss"
    broker._rooms["r"] = lost
    result = await join(hub, Member(), "r")
    assert result.epoch == "after-loss"
    await broker.publish("r", "new", ts=0, policy=DURABLE)
    kinds = [(m["op"], m.get("epoch")) for m in present.messages()]
    assert kinds == [("event", None), ("joined", "after-loss"), ("event", None)]


async def test_a_join_whose_history_read_fails_does_not_keep_the_room() -> None:
    class FlakyHistory(CountingBroker):
        fail = False

        async def history(
            self, room: str, after: int | None, policy: RoomPolicy, *, limit: int | None = None
        ) -> History:
            if self.fail:
                raise BrokerUnavailable("history read failed")
            return await super().history(room, after, policy, limit=limit)

    broker = FlakyHistory()
    hub = make_hub(broker, delay=0.01)
    first = Member()
    await join(hub, first, "r")
    hub.leave(first, "r")
    broker.fail = True  # the room is still subscribed (release delay) when this join fails
    with pytest.raises(BrokerUnavailable):
        await join(hub, Member(), "r")
    await asyncio.wait_for(broker.unsubscribed.wait(), 2)
    assert not hub.is_subscribed("r")


async def test_live_events_during_a_catch_up_are_bounded_and_overflow_drops_the_member(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Review finding: `catching_up` grew without limit while a joiner waited."""
    broker = CountingBroker()
    hub = Hub(broker, Metrics(), RoomPolicies([]), unsubscribe_delay=0, catch_up_limit=3)
    watcher = Member()
    await join(hub, watcher, "r")
    epoch = (await broker.history("r", None, DURABLE)).epoch
    held = hold_history(monkeypatch, broker)
    joiner = Member()
    joining = asyncio.create_task(join(hub, joiner, "r", Position(0, epoch)))
    await asyncio.sleep(0)
    for n in range(10):  # live events while the joiner's history read is held
        await broker.publish("r", n, ts=0, policy=DURABLE)
    assert joiner.overflowed  # past 3 buffered: dropped as a slow consumer
    held.set()
    await asyncio.wait_for(joining, 2)
    assert len(watcher.offsets()) == 10  # the others were not held up


async def test_a_stuck_catch_up_fails_the_join_instead_of_holding_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Review finding: a join waited through `catch_up` for as long as history failed."""
    monkeypatch.setattr(hub_module, "CATCH_UP_SECONDS", 0.3)
    broker = CountingBroker()
    hub = make_hub(broker)
    await join(hub, Member(), "r")
    await broker.publish("r", 1, ts=0, policy=DURABLE)
    real_history = broker.history
    calls = 0

    async def failing_after_the_first(
        room: str, after: int | None, policy: RoomPolicy, *, limit: int | None = None
    ) -> History:
        nonlocal calls
        calls += 1
        if calls == 1:  # the joiner's own read sees a newer top than this server's feed
            history = await real_history(room, after, policy, limit=limit)
            return History(history.epoch, history.top + 5, history.entries)
        raise BrokerUnavailable("redis is down")

    monkeypatch.setattr(broker, "history", failing_after_the_first)
    with pytest.raises(BrokerUnavailable, match="did not catch up"):
        await asyncio.wait_for(join(hub, Member(), "r"), 5)


async def test_the_embedded_broker_forgets_rooms_that_were_only_joined(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Finding 4: ~919 B per distinct room name ever joined, kept forever."""
    monkeypatch.setattr(memory_broker, "EMPTY_ROOM_SECONDS", 0)
    broker = CountingBroker()
    hub = make_hub(broker)
    member = Member()
    await join(hub, member, "kept")
    await broker.publish("kept", 1, ts=0, policy=DURABLE)
    for n in range(2000):  # join and leave 2,000 names nobody publishes to
        await join(hub, member, f"r{n}")
        hub.leave(member, f"r{n}")
        await broker.unsubscribe(f"r{n}")  # what the hub's release does after its delay
    assert len(broker._rooms) <= 1 + memory_broker.SWEEP_STEP
    assert (await broker.history("kept", 0, DURABLE)).top == 1  # in use: kept


async def test_the_embedded_broker_keeps_at_most_max_rooms(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(memory_broker, "MAX_ROOMS", 50)
    broker = CountingBroker()
    epochs = {}
    for n in range(500):  # published to: each has history, within its TTL
        epochs[f"p{n}"] = (await broker.publish(f"p{n}", n, ts=0, policy=DURABLE)).epoch
    assert len(broker._rooms) <= 50
    forgotten = next(name for name in epochs if name not in broker._rooms)
    again = await broker.history(forgotten, None, DURABLE)
    assert again.top == 0 and again.epoch != epochs[forgotten]  # a new epoch: no offset reused


async def test_arrivals_before_a_rooms_first_history_read_are_bounded_and_not_lost(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Review finding: `_Room.early` grew without limit while the first read was held."""
    monkeypatch.setattr(hub_module, "PENDING_LIMIT", 2)
    broker = CountingBroker()
    hub = make_hub(broker)
    held = hold_history(monkeypatch, broker)
    sizes: list[int] = []
    member = Member()
    joining = asyncio.create_task(join(hub, member, "r"))
    await asyncio.sleep(0)  # subscribed; its first history read is held
    for n in range(6):
        await broker.publish("r", n, ts=0, policy=DURABLE)
        early = hub._rooms["r"].early
        sizes.append(len(early) if early is not None else -1)
    assert max(sizes) <= 2
    held.set()
    await asyncio.wait_for(joining, 2)
    await broker.publish("r", 6, ts=0, policy=DURABLE)
    for _ in range(20):  # the history read that brings the dropped arrivals back
        if len(member.offsets()) == 1:
            break
        await asyncio.sleep(0)
    assert member.offsets() == [7]  # joined at the top it read (6): nothing before, no gap


async def test_a_resume_longer_than_the_send_queue_is_read_and_replayed_in_pages() -> None:
    broker = CountingBroker()
    hub = Hub(broker, Metrics(), RoomPolicies([]), unsubscribe_delay=0, catch_up_limit=10)
    for n in range(25):
        await broker.publish("r", n, ts=0, policy=DURABLE)
    epoch = (await broker.history("r", None, DURABLE)).epoch
    member = Member()
    result = await join(hub, member, "r", Position(0, epoch))
    assert result == JoinResult(25, epoch, True)
    assert member.offsets() == list(range(1, 26))


async def test_a_history_trimmed_between_replay_pages_makes_the_joiner_resync(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    broker = CountingBroker()
    hub = Hub(broker, Metrics(), RoomPolicies([]), unsubscribe_delay=0, catch_up_limit=10)
    for n in range(25):
        await broker.publish("r", n, ts=0, policy=DURABLE)
    epoch = (await broker.history("r", None, DURABLE)).epoch
    real_history = broker.history

    async def trimmed_after_the_first_page(
        room: str, after: int | None, policy: RoomPolicy, *, limit: int | None = None
    ) -> History:
        history = await real_history(room, after, policy, limit=limit)
        if after == 10:  # the second page: 11..14 were trimmed meanwhile
            return History(history.epoch, history.top, history.entries[4:])
        return history

    monkeypatch.setattr(broker, "history", trimmed_after_the_first_page)
    member = Member()
    await join(hub, member, "r", Position(0, epoch))
    await broker.publish("r", 25, ts=0, policy=DURABLE)
    kinds = [(m["op"], m.get("offset"), m.get("recovered")) for m in member.messages()]
    assert kinds[:10] == [("event", n, None) for n in range(1, 11)]
    assert kinds[10:] == [("joined", 25, False), ("event", 26, None)]


async def test_a_join_between_an_unsubscribe_and_its_cleanup_subscribes_again() -> None:
    """A join whose step runs after the room's UNSUBSCRIBE finished but before the task's
    done callback forgot it (a resume storm makes that ordering common) must subscribe
    again, not recurse on the finished task."""
    hub: Hub | None = None
    joiner: list[asyncio.Task[JoinResult]] = []
    second = Member()

    class JoinDuringUnsubscribe(CountingBroker):
        async def unsubscribe(self, room: str) -> None:
            await super().unsubscribe(room)
            assert hub is not None
            # Scheduled now, so it runs before the callbacks of this task's completion.
            joiner.append(asyncio.create_task(join(hub, second, room)))

    broker = JoinDuringUnsubscribe()
    hub = make_hub(broker)
    first = Member()
    await join(hub, first, "r")
    hub.leave(first, "r")
    await asyncio.wait_for(broker.unsubscribed.wait(), 2)
    await asyncio.wait_for(joiner[0], 2)
    assert broker.calls == ["sub r", "unsub r", "sub r"]
    await broker.publish("r", 1, ts=0, policy=DURABLE)
    assert second.offsets() == [1]


async def test_joins_history_reads_are_bounded_per_shard() -> None:
    """At most JOIN_READS history reads of joins are in flight per shard; the rest wait
    their turn (none fails), and a stuck shard does not hold up another shard's joins."""
    release = asyncio.Event()

    class TwoShards(CountingBroker):
        in_flight = 0
        most = 0

        def placement(self, room: str) -> str:
            return room.split(":")[0]

        async def history(
            self, room: str, after: int | None, policy: RoomPolicy, *, limit: int | None = None
        ) -> History:
            if room.startswith("stuck:"):
                self.in_flight += 1
                self.most = max(self.most, self.in_flight)
                await release.wait()
                self.in_flight -= 1
            return await super().history(room, after, policy, limit=limit)

    broker = TwoShards()
    hub = make_hub(broker)
    waiting = [
        asyncio.create_task(join(hub, Member(), f"stuck:{n}"))
        for n in range(hub_module.JOIN_READS + 10)
    ]
    await asyncio.wait_for(join(hub, Member(), "free:1"), 2)  # not behind the stuck shard
    assert broker.most == hub_module.JOIN_READS and not any(t.done() for t in waiting)
    release.set()
    results = await asyncio.wait_for(asyncio.gather(*waiting), 2)
    assert all(r.offset == 0 for r in results)
    assert broker.most == hub_module.JOIN_READS


async def test_a_join_waits_for_a_read_slot_at_most_its_bound(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A stalled shard under a queue of joins: the ones beyond JOIN_READS are refused
    (`unavailable`, the client retries) after JOIN_READ_WAIT_SECONDS, not after their place
    in the queue times a command timeout; the reads in flight are left to end."""
    monkeypatch.setattr(hub_module, "JOIN_READ_WAIT_SECONDS", 0.2)
    release = asyncio.Event()

    class Stalled(CountingBroker):
        async def history(
            self, room: str, after: int | None, policy: RoomPolicy, *, limit: int | None = None
        ) -> History:
            await release.wait()
            return await super().history(room, after, policy, limit=limit)

    hub = make_hub(Stalled())
    reading = [
        asyncio.create_task(join(hub, Member(), f"r:{n}")) for n in range(hub_module.JOIN_READS)
    ]
    await eventually(lambda: hub._read_slot("late").locked(), 2, "every read slot taken")
    with pytest.raises(BrokerUnavailable, match="history reads are in flight"):
        await asyncio.wait_for(join(hub, Member(), "late"), 2)
    release.set()
    results = await asyncio.wait_for(asyncio.gather(*reading), 2)
    assert all(r.offset == 0 for r in results)


async def test_a_joiner_waiting_for_a_read_slot_buffers_nothing_and_keeps_the_room() -> None:
    """A busy room's joiner queued behind JOIN_READS stalled reads: the room's events
    meanwhile (more than its catch-up buffer holds) are in its history read, so they do
    not fill the buffer and drop it as a slow consumer; and the room stays subscribed
    though its last member left while the join waited."""
    release = asyncio.Event()

    class Stalled(CountingBroker):
        async def history(
            self, room: str, after: int | None, policy: RoomPolicy, *, limit: int | None = None
        ) -> History:
            if room.startswith("stalled:"):
                await release.wait()
            return await super().history(room, after, policy, limit=limit)

    broker = Stalled()
    hub = Hub(broker, Metrics(), RoomPolicies([]), unsubscribe_delay=0, catch_up_limit=10)
    first, joiner = Member(), Member()
    start = await join(hub, first, "busy")
    reading = [
        asyncio.create_task(join(hub, Member(), f"stalled:{n}"))
        for n in range(hub_module.JOIN_READS)
    ]
    await eventually(lambda: hub._read_slot("busy").locked(), 2, "every read slot taken")
    since = Position(start.offset or 0, start.epoch or "")
    waiting = asyncio.create_task(join(hub, joiner, "busy", since))
    await eventually(lambda: hub.waiting(joiner), 2, "the join to queue for a slot")
    for n in range(25):
        await broker.publish("busy", n, ts=0, policy=DURABLE)
    hub.leave(first, "busy")
    await asyncio.sleep(0.01)  # the unsubscribe timer (delay 0) has had its turn
    release.set()
    result = await asyncio.wait_for(waiting, 2)
    await asyncio.wait_for(asyncio.gather(*reading), 2)
    assert not joiner.overflowed
    assert result.recovered and joiner.offsets() == list(range(1, 26))
    assert "unsub busy" not in broker.calls


async def test_members_who_leave_during_a_fan_out_do_not_cut_it_short() -> None:
    """A push may change the room's members (a slow consumer dropped on overflow leaves
    its rooms): the event still reaches every member it was fanned out to, and the room
    is left as the pushes made it."""
    broker = CountingBroker()
    hub = make_hub(broker)
    members = [Member() for _ in range(4)]
    late = Member()

    class Leaving(Member):
        def push(self, payload: bytes) -> None:
            super().push(payload)
            for member in [self, *members]:
                hub.leave(member, "v:r")
            hub._rooms["v:r"].members.add(late)  # a join completing meanwhile

    leaving = Leaving()
    for member in [*members, leaving]:
        await join(hub, member, "v:r")
    await broker.publish("v:r", {"x": 1}, ts=0, policy=VOLATILE)
    assert all(len(m.received) == 1 for m in [*members, leaving])
    assert late.received == []
    assert hub.local_rooms() == {"v:r": 1}
    await broker.publish("v:r", {"x": 2}, ts=0, policy=VOLATILE)
    assert len(late.received) == 1 and all(len(m.received) == 1 for m in members)


class Refusing(Member):
    """A member whose push and overflow raise (a connection in a state nothing expected)."""

    def push(self, payload: bytes) -> None:
        raise RuntimeError("this member cannot take it")

    def overflow(self) -> None:
        raise RuntimeError("this member cannot be dropped")


async def test_a_member_whose_push_raises_costs_the_others_nothing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The fan-out logs the failure and never raises: its callers (the broker's reader, a
    gap fill, the embedded broker's publish, which had stored and delivered the event and
    would have refused it to its publisher) could only stop short."""
    broker = CountingBroker()
    hub = make_hub(broker)
    members = [Member(), Refusing(), Member(), Member()]
    for member in members:
        await join(hub, member, "v:r")
    await broker.publish("v:r", 1, ts=0, policy=VOLATILE)  # would raise without the guard
    assert [len(member.received) for member in members] == [1, 0, 1, 1]
    assert "a member of room 'v:r' failed to take a message" in caplog.text


async def test_a_joining_member_whose_drop_raises_costs_the_live_members_nothing(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    broker = CountingBroker()
    hub = Hub(broker, Metrics(), RoomPolicies([]), unsubscribe_delay=0, catch_up_limit=1)
    watcher = Member()
    await join(hub, watcher, "r")
    epoch = (await broker.history("r", None, DURABLE)).epoch
    held = hold_history(monkeypatch, broker)
    joining = asyncio.create_task(join(hub, Refusing(), "r", Position(0, epoch)))
    await asyncio.sleep(0)
    for n in range(3):  # the second overflows the joiner's buffer: its drop raises
        await broker.publish("r", n, ts=0, policy=DURABLE)
    assert len(watcher.offsets()) == 3
    assert "a joining member of room 'r' failed to take an event" in caplog.text
    held.set()
    await asyncio.gather(joining, return_exceptions=True)
