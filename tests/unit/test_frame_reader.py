"""The two readers of a client's frames (relay.core): the compiled core and websockets.

Each case drives relay.transport's WebSocket protocol, on a real socket pair, through its
handshake and then the client bytes of the case, cut into reads as given (a frame split
anywhere, several frames in one read), once with the compiled core and once without.
Both must hand the receiver the same messages, write the same bytes back (pongs, close
frames with their codes and reasons) and end the connection with the same code. A
hypothesis test does the same on random frame sequences and random cuts.
"""

from __future__ import annotations

import asyncio
import os
import socket
import struct
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from uvicorn.config import Config
from uvicorn.server import ServerState

from relay import core, transport
from support.wsraw import upgrade_request

pytestmark = pytest.mark.unit

READERS = ["rust", "python"]
MAX = 1000
"""The connection's ws_max_size in these cases."""


def frame(
    opcode: int,
    payload: bytes = b"",
    *,
    fin: bool = True,
    rsv: int = 0,
    key: bytes | None = b"\x11\x22\x33\x44",
    length: int | None = None,
) -> bytes:
    """A client frame; `key=None`: unmasked (a protocol error from a client); `length`
    forces the length field's width (64: the 8-byte form, even for a short payload)."""
    first = (0x80 if fin else 0) | rsv << 4 | opcode
    mask_bit = 0x80 if key is not None else 0
    size = len(payload)
    if length == 64 or size >= 65536:
        head = struct.pack("!BBQ", first, mask_bit | 127, size)
    elif length == 16 or size >= 126:
        head = struct.pack("!BBH", first, mask_bit | 126, size)
    else:
        head = struct.pack("!BB", first, mask_bit | size)
    if key is None:
        return head + payload
    masked = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    return head + key + masked


@dataclass
class Outcome:
    messages: list[str | None] = field(default_factory=list)
    written: bytes = b""
    ended: list[int] = field(default_factory=list)


class Recorder:
    """The endpoint and the receiver: accepts every upgrade, records what it is told."""

    def __init__(self) -> None:
        self.outcome = Outcome()

    def open(self, handshake: transport.Handshake) -> transport.Receiver:
        handshake.accept()
        return self

    def receive(self, text: str | None) -> None:
        self.outcome.messages.append(text)

    def ended(self, code: int) -> None:
        self.outcome.ended.append(code)


def reader_type(kind: str) -> core.FrameReaderType | None:
    chosen = core.select("on" if kind == "rust" else "off")
    assert chosen.name == kind
    return chosen.frame_reader


def drain(peer: socket.socket) -> bytes:
    data = b""
    while True:
        try:
            chunk = peer.recv(65536)
        except BlockingIOError:
            return data
        if not chunk:
            return data
        data += chunk


async def run(kind: str, reads: list[bytes], max_size: int = MAX) -> Outcome:
    """Open a connection with `kind`'s reader, hand it `reads`, one data_received each."""
    recorder = Recorder()
    _, ws_protocol = transport.protocols(
        recorder, lambda status: None, frame_reader=reader_type(kind)
    )
    config = Config(app=None, ws_max_size=max_size, ws_ping_interval=None)
    ours, peer = socket.socketpair()
    peer.setblocking(False)
    loop = asyncio.get_running_loop()
    transport_, protocol = await loop.connect_accepted_socket(
        lambda: ws_protocol(config, ServerState(), {}), ours
    )
    try:
        protocol.data_received(upgrade_request())  # as uvicorn hands an upgrade over
        await asyncio.sleep(0)
        assert drain(peer).startswith(b"HTTP/1.1 101")
        for data in reads:
            protocol.data_received(data)
        await asyncio.sleep(0.01)  # the transport's writes reach the peer
        recorder.outcome.written = drain(peer)
        await asyncio.sleep(0)  # `ended` is called on the next loop turn after a close
        seen = recorder.outcome
        return Outcome(list(seen.messages), seen.written, list(seen.ended))  # before the abort
    finally:
        transport_.abort()
        peer.close()


async def both(reads: list[bytes], max_size: int = MAX) -> Outcome:
    """Run `reads` with each reader; they must agree; returns what they did."""
    rust = await run("rust", reads, max_size)
    python = await run("python", reads, max_size)
    assert rust == python
    return rust


def close_frame(code: int, reason: bytes) -> bytes:
    """A server close frame (unmasked)."""
    return struct.pack("!BBH", 0x88, 2 + len(reason), code) + reason


def split_everywhere(data: bytes) -> list[list[bytes]]:
    return [[data[:i], data[i:]] for i in range(1, len(data))] + [[bytes([b]) for b in data]]


# -- messages --


async def test_text_messages_in_one_read_and_cut_anywhere() -> None:
    data = frame(0x1, b'{"op": "ping"}') + frame(0x1, "é€😀".encode()) + frame(0x2, b"\x00")
    for reads in [[data], *split_everywhere(data)]:
        outcome = await both(reads)
        assert outcome.messages == ['{"op": "ping"}', "é€😀", None]
        assert outcome.written == b"" and outcome.ended == []


async def test_16_and_64_bit_lengths() -> None:
    medium, large = b"m" * 300, b"L" * 70_000
    outcome = await both(
        [frame(0x1, medium), frame(0x1, large), frame(0x1, b"short", length=64)],
        max_size=100_000,
    )
    assert outcome.messages == [medium.decode(), large.decode(), "short"]


async def test_fragments_join_with_control_frames_between() -> None:
    # "é" split between two fragments: each alone is not UTF-8, the message is.
    data = (
        frame(0x1, b"caf\xc3", fin=False)
        + frame(0x9, b"ping between")
        + frame(0x0, b"\xa9 ", fin=False)
        + frame(0xA, b"unsolicited pong")
        + frame(0x0, b"au lait")
    )
    for reads in [[data], *split_everywhere(data)[::7]]:
        outcome = await both(reads)
        assert outcome.messages == ["café au lait"]
        assert outcome.written == b"\x8a\x0cping between"  # the pong, unmasked


async def test_a_client_close_is_echoed_and_ends_the_session() -> None:
    outcome = await both([frame(0x8, struct.pack("!H", 1000) + b"bye") + frame(0x1, b"after")])
    assert outcome.messages == []  # what follows a close frame is discarded
    assert outcome.written == close_frame(1000, b"bye")
    assert outcome.ended == [1000]


# -- faults: the same close code and reason from both --

FAULTS = {
    "unmasked": ([frame(0x1, b"x", key=None)], 1002, b"incorrect masking"),
    "reserved bits": ([frame(0x1, b"x", rsv=0b100)], 1002, b"reserved bits must be 0"),
    "invalid opcode": ([frame(0x3, b"x")], 1002, b"invalid opcode"),
    "control frame too long": ([frame(0x9, b"p" * 126)], 1002, b"control frame too long"),
    "fragmented control frame": ([frame(0x9, b"p", fin=False)], 1002, b"fragmented control frame"),
    "unexpected continuation": ([frame(0x0, b"x")], 1002, b"unexpected continuation frame"),
    "expected continuation": (
        [frame(0x1, b"a", fin=False) + frame(0x1, b"b")],
        1002,
        b"expected a continuation frame",
    ),
    "close within a message": (
        [frame(0x1, b"a", fin=False) + frame(0x8, struct.pack("!H", 1000))],
        1002,
        b"incomplete fragmented message",
    ),
    "bad close code": ([frame(0x8, struct.pack("!H", 999))], 1002, b"invalid status code"),
    "oversize frame": (
        [frame(0x1, b"x" * (MAX + 1))],
        1009,
        b"frame with 1001 bytes exceeds limit of 1000 bytes",
    ),
    "oversize message": (
        [frame(0x1, b"x" * 600, fin=False) + frame(0x0, b"y" * 401)],
        1009,
        b"frame with 401 bytes after reading 600 bytes exceeds limit of 1000 bytes",
    ),
    "64-bit oversize": (
        [struct.pack("!BBQ", 0x81, 0xFF, 2**63 + 5)],
        1009,
        b"frame with 9223372036854775813 bytes exceeds limit of 1000 bytes",
    ),
    "bad UTF-8": ([frame(0x1, b"ok\xff")], 1007, b"invalid UTF-8 in a text message"),
    "bad UTF-8 over fragments": (
        [frame(0x1, b"caf\xc3", fin=False) + frame(0x0, b"!")],
        1007,
        b"invalid UTF-8 in a text message",
    ),
}


@pytest.mark.parametrize("case", FAULTS)
async def test_faults_close_alike(case: str) -> None:
    reads, code, reason = FAULTS[case]
    before = [frame(0x1, b"first")]
    after = [frame(0x1, b"never read")]
    outcome = await both(before + reads + after)
    assert outcome.messages == ["first"]
    assert outcome.written == close_frame(code, reason)
    assert outcome.ended == [code]


async def test_a_read_is_parsed_whole_before_its_bad_text_fails_the_connection() -> None:
    """websockets answers every control frame of a read before the relay decodes its
    texts: a close frame after invalid UTF-8 is echoed (no 1007), and a ping is answered
    before the 1007 close."""
    outcome = await both([frame(0x1, b"\xff") + frame(0x8) + frame(0x1, b"later")])
    assert (outcome.messages, outcome.written, outcome.ended) == ([], b"\x88\x00", [1005])
    outcome = await both([frame(0x1, b"\xff") + frame(0x9, b"p") + frame(0x1, b"later")])
    assert outcome.messages == []
    assert outcome.written == b"\x8a\x01p" + close_frame(1007, b"invalid UTF-8 in a text message")


async def test_an_oversize_frame_is_refused_from_its_header() -> None:
    """The reader fails as soon as the length is known: nothing of it is buffered."""
    reader_cls = reader_type("rust")
    assert reader_cls is not None
    reader = reader_cls(MAX)
    assert reader.feed(frame(0x1, b"x" * 600, fin=False)[:300]) == []
    assert reader.error is None
    assert reader.feed(frame(0x1, b"x" * 600, fin=False)[300:]) == []
    assert reader.feed(struct.pack("!BBH", 0x80, 0xFE, 401)) == []  # 600 + 401 > MAX
    assert reader.error == (
        1009,
        "frame with 401 bytes after reading 600 bytes exceeds limit of 1000 bytes",
    )


async def test_a_reader_never_holds_more_than_a_frame_and_a_message() -> None:
    reader_cls = reader_type("rust")
    assert reader_cls is not None
    reader = reader_cls(MAX)
    reader.feed(frame(0x1, b"x" * 999, fin=False))  # 999 of the message's 1000 bytes
    partial = frame(0x0, b"y", fin=True)[:-1]  # a frame waiting for its last byte
    assert reader.feed(partial) == []
    assert reader.buffered == 999 + len(partial)
    assert reader.feed(b"\x00" * 0) == []
    assert reader.feed(frame(0x0, b"y")[-1:]) == ["x" * 999 + "y"]
    assert reader.buffered == 0


# -- random sequences --

payloads = st.one_of(
    st.text(max_size=40).map(str.encode),
    st.binary(max_size=40),
    st.sampled_from([b"", b"\xc3", b"\xa9", b"\xf0\x9f\x98", b"\x80"]),
)
frames = st.builds(
    frame,
    st.sampled_from([0x0, 0x1, 0x2, 0x9, 0xA, 0x3]),
    payloads,
    fin=st.booleans(),
    rsv=st.sampled_from([0, 0, 0, 0, 0b100]),
    key=st.sampled_from([b"\x11\x22\x33\x44", b"\x00\x00\x00\x00", os.urandom(4), None]),
)
closes = st.sampled_from(
    [
        frame(0x8),
        frame(0x8, struct.pack("!H", 1000) + b"done"),
        frame(0x8, struct.pack("!H", 4000)),
        frame(0x8, b"\x03"),
    ]
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    stream=st.lists(st.one_of(frames, frames, frames, closes), max_size=8),
    cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=6),
    max_size=st.sampled_from([MAX, 30, 5]),
)
async def test_random_streams_are_read_alike(
    stream: list[bytes], cuts: list[int], max_size: int
) -> None:
    data = b"".join(stream)
    points = sorted({c for c in cuts if 0 < c < len(data)})
    reads = [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]
    await both([r for r in reads if r], max_size)


async def test_a_large_message_leaves_no_buffer_of_its_size() -> None:
    """Review of #18: the reader kept the capacity of its unmasked copy and of its read
    buffer after a large message, ~2 x ws_max_size per connection for its lifetime (an
    idle connection is ~6 KB). Now it keeps at most 4 KiB between reads."""
    reader_cls = reader_type("rust")
    assert reader_cls is not None
    limit = 1 << 20
    large = frame(0x2, b"x" * limit)
    for reads in (
        [large],  # one read: the unmasked copy
        [large[: limit // 2], large[limit // 2 :]],  # two reads: the read buffer too
        [large[i : i + 65536] for i in range(0, len(large), 65536)] + [frame(0x1, b"hi")],
    ):
        reader = reader_cls(limit)
        for data in reads:
            reader.feed(data)
        assert reader.error is None
        assert reader.allocated <= 4096, reader.allocated


async def test_a_length_past_the_address_space_fails_cleanly_without_a_limit() -> None:
    """Review of #18: with max_size None a 64-bit length near 2**64 overflowed
    `at + 4 + length` and panicked (PanicException, a BaseException: the loop aborts the
    connection without a close frame and logs a Rust backtrace). It is a 1009 now."""
    reader_cls = reader_type("rust")
    assert reader_cls is not None
    reader = reader_cls(None)
    assert reader.feed(struct.pack("!BBQ", 0x81, 0xFF, 2**64 - 1) + b"\x00" * 20) == []
    assert reader.error is not None and reader.error[0] == 1009
