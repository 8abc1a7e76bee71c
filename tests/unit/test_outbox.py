import asyncio
import contextlib
import gc
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from relay import outbox as outbox_module
from relay.core import Core, select
from relay.hub import Members, MemberSet, member_sets
from relay.outbox import BATCH_BYTES, FlushScheduler

pytestmark = pytest.mark.unit


class FakeSocket:
    """Records what an outbox writes; `paused` plays the transport's flow control."""

    def __init__(self) -> None:
        self.paused = False
        self.sent: list[bytes] = []
        self.frames_shared: list[bool] = []
        self.closed_with: int | None = None
        self.on_resume: Callable[[], None] | None = None
        self.closed = False
        self.pause_on_send = False
        """Play a client that reads slowly: every write fills the transport's buffer."""
        self.broken = False
        """Play a socket in a state nothing expected: every write raises."""
        self.broken_close = False
        """And its close too."""

    def send(self, payload: bytes, frames: dict[bytes, bytes] | None = None) -> None:
        if self.broken:
            raise OSError("the socket is broken")
        self.sent.append(payload)
        self.frames_shared.append(frames is not None)
        self.paused = self.paused or self.pause_on_send

    def close(self, code: int, reason: str = "") -> None:
        if self.broken_close:
            raise OSError("the socket cannot even be closed")
        self.closed_with = code
        self.closed = True

    def resume(self) -> None:
        self.paused = False
        if self.on_resume is not None:
            self.on_resume()


Make = Callable[..., tuple[Any, FakeSocket, list[str]]]


@pytest.fixture(params=["rust", "python"])
def core(request: pytest.FixtureRequest) -> Core:
    """The compiled core (relay.core) or the Python classes: every test here runs against
    both."""
    chosen = select("on" if request.param == "rust" else "off")
    assert chosen.name == request.param
    return chosen


@pytest.fixture
def make(core: Core) -> Make:
    """Outboxes of the compiled core's scheduler or of relay.outbox's."""
    scheduler = outbox_module.scheduler(core)
    assert isinstance(scheduler, FlushScheduler) == (core.name == "python")

    def made(
        limit: int = 10, on_overflow: Callable[[], None] | None = None
    ) -> tuple[Any, FakeSocket, list[str]]:
        overflows: list[str] = []
        socket = FakeSocket()

        def overflowed() -> None:
            overflows.append("!")
            if on_overflow is not None:
                on_overflow()

        outbox = scheduler.outbox(
            socket,  # type: ignore[arg-type]
            limit=limit,
            on_overflow=overflowed,
        )
        return outbox, socket, overflows

    return made


async def test_pending_messages_are_batched_into_one_frame(make: Make) -> None:
    outbox, socket, _ = make()
    for n in range(3):
        outbox.push(b'{"n":%d}' % n)
    outbox.flush({})
    assert socket.sent == [b'{"n":0}\n{"n":1}\n{"n":2}']


async def test_a_lone_message_uses_the_shared_frame_cache(make: Make) -> None:
    outbox, socket, _ = make()
    outbox.push(b"{}")
    outbox.flush({})
    assert socket.frames_shared == [True]


async def test_batches_are_split_at_the_batch_size(make: Make) -> None:
    outbox, socket, _ = make(limit=100)
    big = b"x" * (BATCH_BYTES // 3)
    for _ in range(4):
        outbox.push(big)
    outbox.flush({})
    assert len(socket.sent) == 2
    assert all(len(frame) <= BATCH_BYTES for frame in socket.sent)


async def test_nothing_is_written_while_paused_and_overflow_is_reported_once_full(
    make: Make,
) -> None:
    outbox, socket, overflows = make(limit=3)
    socket.paused = True
    for n in range(3):
        outbox.push(b"%d" % n)
    outbox.flush({})
    assert socket.sent == []
    outbox.push(b"3")
    assert overflows == ["!"]


async def test_what_waits_on_a_paused_socket_goes_out_once_it_drains(make: Make) -> None:
    """A push to a paused socket marks its outbox all the same (the push reads no socket
    state); the loop turn's flush skips it, and the drain (`on_resume`) marks it again."""
    outbox, socket, overflows = make(limit=3)
    socket.paused = True
    outbox.push(b"a")
    outbox.push(b"b")
    await loop_turns()
    assert socket.sent == []
    socket.resume()
    await loop_turns()
    assert socket.sent == [b"a\nb"]
    outbox.push(b"c")  # unpaused again: the next turn's flush writes it
    await loop_turns()
    assert socket.sent == [b"a\nb", b"c"] and overflows == []


async def test_close_drops_or_flushes_pending_then_sends_final_message(make: Make) -> None:
    outbox, socket, _ = make()
    outbox.push(b"a")
    outbox.close(b"bye", 1012)
    assert socket.sent == [b"a", b"bye"]
    assert socket.closed_with == 1012
    outbox.push(b"late")
    assert socket.sent == [b"a", b"bye"]

    outbox, socket, _ = make()
    outbox.push(b"a")
    outbox.close(b"slow", 4008, drop_pending=True)
    assert socket.sent == [b"slow"]


async def test_a_burst_within_one_turn_is_not_a_slow_consumer(make: Make) -> None:
    outbox, socket, overflows = make(limit=3)
    for n in range(10):  # e.g. a resume replaying more than the queue limit
        outbox.push(b"%d" % n)
    outbox.flush({})
    assert overflows == []
    assert socket.sent == [b"\n".join(b"%d" % n for n in range(10))]


async def loop_turns(n: int = 5) -> None:
    """Let the event loop run the scheduled flushes and the replay task (no timing)."""
    for _ in range(n):
        await asyncio.sleep(0)


async def test_a_replay_goes_out_a_send_queue_at_a_time_as_the_socket_drains(make: Make) -> None:
    outbox, socket, overflows = make(limit=3)
    socket.pause_on_send = True
    replay = asyncio.create_task(outbox.replay([b"%d" % n for n in range(10)]))
    frames: list[bytes] = []
    for _ in range(4):  # 3 + 3 + 3 + 1
        await loop_turns()
        assert len(socket.sent) == len(frames) + 1, "one chunk per drained socket"
        frames.append(socket.sent[-1])
        assert frames[-1].count(b"\n") < 3  # never more than the limit at once
        socket.resume()
    await asyncio.wait_for(replay, 1)
    assert b"\n".join(frames).split(b"\n") == [b"%d" % n for n in range(10)]
    assert overflows == []


async def test_a_replay_to_a_socket_that_never_drains_ends_when_it_closes(make: Make) -> None:
    outbox, socket, _ = make(limit=3)
    socket.pause_on_send = True
    replay = asyncio.create_task(outbox.replay([b"%d" % n for n in range(10)]))
    await loop_turns()
    assert not replay.done() and len(socket.sent) == 1
    outbox.close(None, 4008, drop_pending=True)
    await asyncio.wait_for(replay, 1)
    assert len(socket.sent) == 1


async def test_a_closed_connections_outbox_and_socket_are_collected(make: Make) -> None:
    """The outbox and its socket refer to each other (`on_resume`), as a session and its
    outbox do (`on_overflow`): the garbage collector must see through the compiled core's
    outbox too, or every connection would leak them."""
    outbox, socket, _ = make()
    outbox.push(b"x")
    outbox.close(b"bye", 1000)
    gone = weakref.ref(socket)
    del outbox, socket
    await loop_turns()  # the scheduled flush lets go of the outbox
    gc.collect()
    assert gone() is None


async def test_a_push_from_inside_a_send_is_queued_not_a_crash(make: Make) -> None:
    """Review of #18: the compiled core held a borrow of the outbox while a lone message
    was sent, so a `push` coming back from the socket's `send` panicked ("Already
    borrowed", a PanicException out of the loop's flush callback) and the message was
    lost; the Python outbox queues it for the next flush."""
    outbox, socket, _ = make()
    send = socket.send

    def send_then_push(payload: bytes, frames: dict[bytes, bytes] | None = None) -> None:
        send(payload, frames)
        if payload == b"first":
            outbox.push(b"pushed while sending")

    socket.send = send_then_push  # type: ignore[method-assign]
    outbox.push(b"first")
    await loop_turns()
    assert socket.sent == [b"first", b"pushed while sending"]


class Joined:
    """A room's member as a session is one: its `push` is its outbox's own method (so the
    compiled core's member set pushes to the outbox without a Python call)."""

    def __init__(self, outbox: Any) -> None:
        self.outbox = outbox
        self.push = outbox.push
        self.room: MemberSet | None = None


def member_set(core: Core) -> MemberSet:
    made = member_sets(core)()
    assert isinstance(made, Members) == (core.name == "python")
    return made


async def test_a_member_set_is_a_set_and_pushes_each_event_to_every_member(
    make: Make, core: Core
) -> None:
    members = member_set(core)
    joined = [Joined(make()[0]) for _ in range(3)]
    sockets = [member.outbox._socket for member in joined]
    for member in [*joined, joined[0]]:
        members.add(member)
    members.discard(Joined(make()[0]))  # not a member: nothing happens
    assert len(members) == 3 and all(member in members for member in joined)
    payload = b'{"op":"event"}'
    assert members.push_all(payload) == 3
    await loop_turns()
    assert all(socket.sent == [payload] and socket.sent[0] is payload for socket in sockets)
    members.discard(joined[1])
    assert joined[1] not in members and len(members) == 2
    assert members.push_all(b"2") == 2
    await loop_turns()
    assert [len(socket.sent) for socket in sockets] == [2, 1, 2]


async def test_push_all_keeps_each_outboxs_bound_and_skips_a_closed_one(
    make: Make, core: Core
) -> None:
    """The core's member set pushes through the outbox's own logic: a closed outbox takes
    nothing, a paused one at its bound overflows (once per push) instead of queueing."""
    members = member_set(core)
    live, closed, slow = (Joined(make(limit=2)[0]) for _ in range(3))
    closed.outbox.close(None, 1000)
    slow_socket = slow.outbox._socket
    slow_socket.paused = True
    for member in (live, closed, slow):
        members.add(member)
    for n in range(3):
        assert members.push_all(b"%d" % n) == 3
    await loop_turns()
    assert live.outbox._socket.sent == [b"0\n1\n2"]  # one batch per loop turn
    assert closed.outbox._socket.sent == []
    assert slow_socket.sent == []
    slow_socket.resume()
    await loop_turns()
    assert slow_socket.sent == [b"0\n1"]  # the third push overflowed, not queued


async def test_a_member_dropped_during_push_all_does_not_cut_it_short(
    make: Make, core: Core
) -> None:
    """The overflow callback runs inside push_all and may change the set (a slow consumer
    leaves its rooms): every member at the call is still pushed to, a member added
    meanwhile is not, and the set ends as the callback left it."""
    members = member_set(core)
    others = [Joined(make()[0]) for _ in range(4)]
    late = Joined(make()[0])

    def drop_everyone() -> None:
        for member in [slow, *others]:
            members.discard(member)
        members.add(late)

    slow = Joined(make(limit=0, on_overflow=drop_everyone)[0])
    slow.outbox._socket.paused = True
    for member in [*others, slow]:
        members.add(member)
    assert members.push_all(b"x") == 5
    await loop_turns()
    assert [member.outbox._socket.sent for member in others] == [[b"x"]] * 4
    assert late.outbox._socket.sent == []
    assert len(members) == 1 and late in members


async def test_a_member_with_its_own_push_is_called(make: Make, core: Core) -> None:
    """Only the outbox's own push is taken directly: a member's Python `push`, even one
    bound to an outbox (a subclass's override), is called."""
    base = type(make()[0])
    pushed: list[bytes] = []

    class Counting(base):  # type: ignore[misc, valid-type]
        __slots__ = ()

        def push(self, payload: bytes) -> None:
            pushed.append(payload)
            super().push(payload)

    members = member_set(core)
    scheduler = outbox_module.scheduler(core)
    counted = Counting(FakeSocket(), scheduler, limit=10, on_overflow=lambda: None)
    plain: list[bytes] = []

    class Plain:
        def push(self, payload: bytes) -> None:
            plain.append(payload)

    members.add(Joined(counted))
    members.add(Plain())
    assert members.push_all(b"y") == 2
    assert pushed == [b"y"] and plain == [b"y"]
    await loop_turns()
    assert counted._socket.sent == [b"y"]


async def test_a_member_set_in_a_reference_cycle_is_collected(make: Make, core: Core) -> None:
    """A session refers, through its services' hub, to the member sets it is in: the
    garbage collector must see through the compiled core's set, or no room's members
    would ever be freed."""
    members = member_set(core)
    member = Joined(make()[0])
    member.room = members
    members.add(member)
    gone = weakref.ref(member)  # (the core's set takes no weak reference)
    del member, members
    gc.collect()
    assert gone() is None


async def test_a_push_from_inside_a_batchs_send_is_not_lost(make: Make) -> None:
    """An emptied queue is kept for reuse (the core's `reuse`) only if nothing was queued
    meanwhile: a push from inside the send of a batch (a queue grown past the new one's
    first allocation) goes out next, after the batch, not dropped with the old queue."""
    outbox, socket, _ = make(limit=100)
    send = socket.send

    def send_then_push(payload: bytes, frames: dict[bytes, bytes] | None = None) -> None:
        send(payload, frames)
        if len(socket.sent) == 1:
            outbox.push(b"pushed while sending")

    socket.send = send_then_push  # type: ignore[method-assign]
    for n in range(8):
        outbox.push(b"%d" % n)
    await loop_turns()
    assert socket.sent == [b"\n".join(b"%d" % n for n in range(8)), b"pushed while sending"]
    for n in range(3):  # the kept queue starts empty: nothing of the batch is sent again
        outbox.push(b"%d" % n)
    outbox.flush({})
    outbox.push(b"next")
    await loop_turns()
    assert socket.sent[2:] == [b"0\n1\n2", b"next"]


async def test_an_outbox_marked_from_inside_a_flush_is_flushed_next_turn(make: Make) -> None:
    """The scheduler's emptied list of dirty outboxes is kept for reuse only if no outbox
    was marked meanwhile: one first pushed to from inside another's send (many dirty in
    that turn) is still written on the next turn."""
    outboxes = [make() for _ in range(8)]
    late, late_socket, _ = make()
    first_socket = outboxes[0][1]
    send = first_socket.send

    def send_then_push(payload: bytes, frames: dict[bytes, bytes] | None = None) -> None:
        send(payload, frames)
        late.push(b"pushed while flushing")

    first_socket.send = send_then_push  # type: ignore[method-assign]
    for outbox, _, _ in outboxes:
        outbox.push(b"x")
    await loop_turns()
    assert all(socket.sent == [b"x"] for _, socket, _ in outboxes)
    assert late_socket.sent == [b"pushed while flushing"]


async def test_adding_an_equal_member_again_keeps_the_first_as_a_set_does(core: Core) -> None:
    """Membership is a set's (the members' own hash and equality): adding a member equal
    to one already there changes nothing, so events still go to the first one's `push`,
    as with set.add, not to the later one's."""
    pushed: list[tuple[str, bytes]] = []

    class Keyed:
        def __init__(self, key: int, name: str) -> None:
            self.key = key
            self.push = lambda payload: pushed.append((name, payload))

        def __hash__(self) -> int:
            return hash(self.key)

        def __eq__(self, other: object) -> bool:
            return isinstance(other, Keyed) and other.key == self.key

    members = member_set(core)
    first, again = Keyed(1, "first"), Keyed(1, "again")
    members.add(first)
    members.add(again)
    assert len(members) == 1 and again in members
    assert members.push_all(b"e") == 1
    assert pushed == [("first", b"e")]


async def test_a_member_whose_push_is_another_outbox_method_is_called(
    make: Make, core: Core
) -> None:
    """Only the outbox's `push` is taken as the outbox: a member whose `push` is another
    of its methods is called (here it takes no payload: a TypeError out of push_all), not
    treated as a push into that outbox."""
    outbox, socket, _ = make()
    odd = Joined(outbox)
    odd.push = outbox._resumed
    members = member_set(core)
    members.add(odd)
    with pytest.raises(TypeError):
        members.push_all(b"x")
    await loop_turns()
    assert socket.sent == []


@contextlib.contextmanager
def loop_errors() -> Iterator[list[object]]:
    """The exceptions the event loop's handler gets meanwhile (a callback's that raised)."""
    errors: list[object] = []
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(lambda _loop, context: errors.append(context.get("exception")))
    try:
        yield errors
    finally:
        loop.set_exception_handler(None)


async def test_a_write_that_raises_costs_its_connection_alone(make: Make) -> None:
    """The flush writes every other outbox of its loop turn (they are off the dirty list
    already: stopped there, an idle socket's events would wait for ever), closes the
    failed connection with 1011 (what it was sent may be lost: its client resumes), and
    hands the error to the event loop's handler once."""
    boxes = [make() for _ in range(3)]
    failed, broken, _ = boxes[1]
    broken.broken = True
    with loop_errors() as errors:
        for outbox, _, _ in boxes:
            outbox.push(b"e")
        await loop_turns()
    assert [socket.sent for _, socket, _ in boxes] == [[b"e"], [], [b"e"]]
    assert broken.closed_with == 1011 and failed.closed and failed.close_code == 1011
    assert len(errors) == 1 and isinstance(errors[0], OSError)
    for outbox, _, _ in boxes:
        outbox.push(b"f")
    await loop_turns()
    assert [socket.sent for _, socket, _ in boxes] == [[b"e", b"f"], [], [b"e", b"f"]]


async def test_a_member_whose_push_raises_costs_the_others_nothing(make: Make, core: Core) -> None:
    """push_all pushes to every member, then raises the first member's error (the hub's
    caller logs it): the members after a failing one still get the event."""
    members = member_set(core)
    joined = [Joined(make()[0]) for _ in range(4)]

    def refuse(payload: bytes) -> None:
        raise RuntimeError("this member cannot take it")

    joined[1].push = refuse
    for member in joined:
        members.add(member)
    with pytest.raises(RuntimeError, match="cannot take it"):
        members.push_all(b"e")
    await loop_turns()
    sent = [member.outbox._socket.sent for member in joined]
    assert sent == [[b"e"], [], [b"e"], [b"e"]]


async def test_a_socket_whose_close_raises_too_costs_the_others_nothing(make: Make) -> None:
    """`fail` never raises: the write's error is the one the loop's handler gets."""
    boxes = [make() for _ in range(3)]
    failed, broken, _ = boxes[1]
    broken.broken = broken.broken_close = True
    with loop_errors() as errors:
        for outbox, _, _ in boxes:
            outbox.push(b"e")
        await loop_turns()
    assert [socket.sent for _, socket, _ in boxes] == [[b"e"], [], [b"e"]]
    assert failed.closed and failed.close_code == 1011
    assert [str(error) for error in errors] == ["the socket is broken"]


async def test_a_close_whose_write_raises_ends_the_connection_all_the_same(make: Make) -> None:
    outbox, socket, _ = make()
    outbox.push(b"a")
    socket.broken = True
    with pytest.raises(OSError, match="broken"):
        outbox.close(b"bye", 4008)
    assert outbox.closed and outbox.close_code == 1011 and socket.closed_with == 1011
    outbox.push(b"late")  # a closed outbox takes nothing
    assert socket.sent == []


async def test_a_replay_waiting_on_an_outbox_that_fails_returns(make: Make) -> None:
    """The failed outbox wakes what waits on it (the socket's close does not here)."""
    outbox, socket, _ = make(limit=3)
    socket.paused = True
    replay = asyncio.create_task(outbox.replay([b"%d" % n for n in range(10)]))
    await loop_turns()
    assert not replay.done()
    socket.paused, socket.broken = False, True  # no `on_resume`: nothing else wakes it
    outbox.push(b"x")  # marked: the next flush's write raises, and the outbox fails
    with loop_errors():
        await asyncio.wait_for(replay, 1)
    assert outbox.closed and socket.sent == []
