"""CPU per client frame read: the compiled core's reader against websockets' parser.

Drives relay.transport's WebSocket protocol (a real socket pair, its real handshake) with
the same masked text frame N times, one `data_received` per frame as a publishing client's
reads arrive, with each reader (relay.core: RELAY_CORE=on / off), interleaved, on uvloop
as the relay runs; prints the process's CPU (time.process_time) per frame. The receiver
does nothing: this is the reading alone (unmask, frame, UTF-8, hand the text over).

    .venv/bin/python bench/frame_reader.py [-n 100000] [--size 100] [--repeat 3]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
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
from relay import core, transport


class Sink:
    """Endpoint and receiver: accepts the upgrade, counts the messages."""

    def __init__(self) -> None:
        self.count = 0

    def open(self, handshake: transport.Handshake) -> transport.Receiver:
        handshake.accept()
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


async def per_frame(kind: str, data: bytes, n: int) -> float:
    sink = Sink()
    reader = core.select("on" if kind == "rust" else "off").frame_reader
    _, ws = transport.protocols(sink, lambda status: None, frame_reader=reader)
    config = Config(app=None, ws_max_size=1 << 18, ws_ping_interval=None)
    ours, peer = socket.socketpair()
    loop = asyncio.get_running_loop()
    tr, protocol = await loop.connect_accepted_socket(lambda: ws(config, ServerState(), {}), ours)
    key = base64.b64encode(os.urandom(16)).decode()
    protocol.data_received(
        (
            "GET /ws HTTP/1.1\r\nHost: relay\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    start = time.process_time()
    for _ in range(n):
        protocol.data_received(data)
    spent = time.process_time() - start
    assert sink.count == n, (kind, sink.count)
    tr.abort()
    peer.close()
    return spent / n * 1e6


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


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=100_000)
    parser.add_argument("--size", type=int, default=60, help="bytes of data in the publish")
    parser.add_argument("--repeat", type=int, default=3)
    uvloop.run(main(parser.parse_args()))
