"""The compiled core's pieces alone, against the pure-Python path (relay.core).

- Frame reader: relay.transport's WebSocket protocol (a real socket pair, its real
  handshake) reads the same masked text frame N times, one `data_received` per frame as
  a publishing client's reads arrive; the receiver does nothing. CPU (user + system) per
  frame: unmask, frame, UTF-8, hand the text over.
- Fan-out: one event pushed to M members' outboxes (RawSockets of real socket pairs, the
  relay's scheduler), then the loop turn's flush, N times; the peers are read as they
  go. User CPU per recipient (the kernel's part, the sends, is the same for both).

Each measured with RELAY_CORE=on / off in turn, interleaved, on uvloop as the relay runs;
medians.

    .venv/bin/python bench/core_pieces.py [-n 100000] [--size 60] [--members 10] [--repeat 3]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import resource
import socket
import statistics
import struct
import sys
import time
from pathlib import Path

import uvloop
from uvicorn.config import Config
from uvicorn.server import ServerState

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "service"))
from relay import core, hub, outbox, transport


class Sink:
    """Endpoint and receiver: accepts the upgrade, counts the messages."""

    def __init__(self) -> None:
        self.count = 0

    def open(self, handshake: transport.Handshake) -> transport.Receiver:
        self.socket = handshake.accept()
        return self

    def receive(self, text: str | None) -> None:
        self.count += 1

    def ended(self, code: int) -> None:
        pass


def masked_text_frame(payload: bytes) -> bytes:
    key = os.urandom(4)
    size = len(payload)
    head = (
        struct.pack("!BB", 0x81, 0x80 | size)
        if size < 126
        else struct.pack("!BBH", 0x81, 0x80 | 126, size)
    )
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


async def connection(
    sink: Sink, reader: core.FrameReaderType | None
) -> tuple[asyncio.Transport, transport.RelayWebSocketProtocol, socket.socket]:
    """An open WebSocket on a socket pair: the transport, the relay's protocol, the peer."""
    _, ws = transport.protocols(sink, lambda status: None, frame_reader=reader)
    config = Config(app=None, ws_max_size=1 << 18, ws_ping_interval=None)
    ours, peer = socket.socketpair()
    peer.setblocking(False)
    loop = asyncio.get_running_loop()
    tr, protocol = await loop.connect_accepted_socket(lambda: ws(config, ServerState(), {}), ours)
    key = base64.b64encode(os.urandom(16)).decode()
    protocol.data_received(
        (
            "GET /ws HTTP/1.1\r\nHost: relay\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    return tr, protocol, peer


def drain(peer: socket.socket) -> None:
    try:
        while peer.recv(1 << 20):
            pass
    except BlockingIOError:
        pass


async def per_frame(kind: str, data: bytes, n: int) -> float:
    sink = Sink()
    reader = core.select("on" if kind == "rust" else "off").frame_reader
    tr, protocol, peer = await connection(sink, reader)
    start = time.process_time()
    for _ in range(n):
        protocol.data_received(data)
    spent = time.process_time() - start
    assert sink.count == n, (kind, sink.count)
    tr.abort()
    peer.close()
    return spent / n * 1e6


class Member:
    """A room's member as the hub sees a session: `push` is its outbox's own method."""

    def __init__(self, queue: outbox.SendQueue) -> None:
        self.push = queue.push


async def per_recipient(
    kind: str, members: list[Sink], peers: list[socket.socket], n: int
) -> float:
    """`rust-loop`: the core's outboxes pushed to from a Python loop over the members (the
    hub before gamecluster_core.Members); `rust` and `python`: the hub's member set."""
    chosen = core.select("off" if kind == "python" else "on")
    scheduler = outbox.scheduler(chosen)
    queues = [scheduler.outbox(m.socket, limit=1000, on_overflow=lambda: None) for m in members]
    room = hub.Members() if kind == "rust-loop" else hub.member_sets(chosen)()
    for queue in queues:
        room.add(Member(queue))
    flush = scheduler._flush  # type: ignore[attr-defined]  # one loop turn's flush
    payload = b'{"op":"event","room":"bench:1","offset":12345,"data":{"x":1,"y":2}}'
    start = resource.getrusage(resource.RUSAGE_SELF).ru_utime
    for i in range(n):
        if kind == "rust-loop":
            for member in room:  # type: ignore[attr-defined]  # (a set)
                member.push(payload)
        else:
            room.push_all(payload)
        flush()
        if i % 50 == 0:
            for peer in peers:
                drain(peer)
    spent = resource.getrusage(resource.RUSAGE_SELF).ru_utime - start
    for peer in peers:
        drain(peer)
    return spent / (n * len(members)) * 1e6


async def main(args: argparse.Namespace) -> None:
    text = b'{"op":"publish","room":"bench:1","data":' + b'"' + b"x" * args.size + b'"}'
    data = masked_text_frame(text)
    results: dict[str, list[float]] = {"python": [], "rust": []}
    for _ in range(args.repeat):
        for kind in results:
            results[kind].append(await per_frame(kind, data, args.n))
    python, rust = (statistics.median(results[k]) for k in ("python", "rust"))
    print(f"{len(text)}-byte text frame, {args.n:,} reads, median of {args.repeat}:")
    print(f"  websockets (RELAY_CORE=off)  {python:6.2f} us per frame")
    print(f"  compiled core (RELAY_CORE=on) {rust:6.2f} us per frame  ({rust / python:.2f}x)")

    members = [Sink() for _ in range(args.members)]
    peers = [(await connection(member, None))[2] for member in members]
    fanout: dict[str, list[float]] = {"python": [], "rust-loop": [], "rust": []}
    for _ in range(args.repeat):
        for kind in fanout:
            fanout[kind].append(await per_recipient(kind, members, peers, args.n // 5))
    python = statistics.median(fanout["python"])
    print(f"fan-out to {args.members} members, {args.n // 5:,} events, median of {args.repeat}:")
    for kind, label in (
        ("python", "relay.outbox + relay.hub.Members (RELAY_CORE=off)"),
        ("rust-loop", "core outboxes, a Python loop over the members"),
        ("rust", "core outboxes + core Members (RELAY_CORE=on)"),
    ):
        spent, least = statistics.median(fanout[kind]), min(fanout[kind])
        print(
            f"  {label:50} {spent:6.2f} us user CPU per recipient ({spent / python:.2f}x;"
            f" min {least:.2f})"  # the least disturbed run, on a shared machine
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=100_000)
    parser.add_argument("--size", type=int, default=60, help="bytes of data in the publish")
    parser.add_argument("--members", type=int, default=10, help="recipients per event")
    parser.add_argument("--repeat", type=int, default=3)
    uvloop.run(main(parser.parse_args()))
