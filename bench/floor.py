"""The fan-out floor: the least work a WebSocket relay can do per delivered event.

One process, one event loop, no broker. It speaks just enough of docs/protocol.md for
bench/fanout.py's load generator: `welcome` on connect, `join` -> `joined`, `publish` ->
`event` (with `offset` and `ts`) to every member of the room. Per event it encodes the
event JSON once, frames it once (one unmasked text frame) and hands the same bytes to
every member's transport.write(): no await per recipient, no batching of several events
into one frame, no queue of its own. The kernel's send() per socket dominates.

The WebSocket handshake and the parsing of (masked) client frames are websockets'
sans-I/O ServerProtocol; server frames are built here and written directly, bypassing it.
No auth, no limits, no leave, no history: a measuring instrument, not a server. Run it as
`python bench/floor.py --port N` (loopback only).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import struct
import time
from typing import Any, cast

import orjson
from websockets.frames import Opcode
from websockets.http11 import Request
from websockets.server import ServerProtocol

LOOPBACK = "127.0.0.1"


def frame_text(payload: bytes) -> bytes:
    """One final, unmasked text frame (RFC 6455 5.2): what a server sends."""
    n = len(payload)
    if n < 126:
        return struct.pack("!BB", 0x81, n) + payload
    if n < 1 << 16:
        return struct.pack("!BBH", 0x81, 126, n) + payload
    return struct.pack("!BBQ", 0x81, 127, n) + payload


class Room:
    __slots__ = ("members", "offset")

    def __init__(self) -> None:
        self.members: list[asyncio.Transport] = []
        self.offset = 0


class Floor:
    def __init__(self) -> None:
        self.rooms: dict[str, Room] = {}
        self.sessions = itertools.count(1)


class Connection(asyncio.Protocol):
    def __init__(self, floor: Floor) -> None:
        self.floor = floor
        self.ws = ServerProtocol(max_size=None)
        self.transport: asyncio.Transport | None = None
        self.open = False
        self.joined: list[Room] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        self.ws.receive_data(data)
        for event in self.ws.events_received():
            if isinstance(event, Request):
                self.ws.send_response(self.ws.accept(event))
                self.flush()
                if self.ws.handshake_exc is not None:
                    self.transport.close()
                    return
                self.open = True
                welcome = {"op": "welcome", "session": f"s{next(self.floor.sessions)}"}
                self.send({**welcome, "node": "floor", "heartbeat": 3600})
            elif event.opcode is Opcode.TEXT:
                for line in event.data.split(b"\n"):
                    self.handle(orjson.loads(line))
        # Pongs and the reply to a close frame, queued by the sans-I/O protocol.
        self.flush()
        if self.ws.close_expected():
            self.transport.close()

    def flush(self) -> None:
        assert self.transport is not None
        for chunk in self.ws.data_to_send():
            if chunk:
                self.transport.write(chunk)

    def send(self, message: dict[str, Any]) -> None:
        assert self.transport is not None
        self.transport.write(frame_text(orjson.dumps(message)))

    def handle(self, message: dict[str, Any]) -> None:
        op = message.get("op")
        if op == "publish":
            room = self.floor.rooms.get(message["room"])
            if room is None:
                return
            room.offset += 1
            event = {
                "op": "event",
                "room": message["room"],
                "offset": room.offset,
                "data": message["data"],
                "ts": time.time_ns() // 1_000_000,
            }
            frame = frame_text(orjson.dumps(event))  # once per event
            for transport in room.members:  # the same bytes to every member
                transport.write(frame)
        elif op == "join":
            assert self.transport is not None
            room = self.floor.rooms.setdefault(message["room"], Room())
            if room not in self.joined:
                room.members.append(self.transport)
                self.joined.append(room)
            reply = {"op": "joined", "room": message["room"], "offset": room.offset}
            self.send({**reply, "epoch": "floor", "ref": message.get("ref")})
        elif op == "ping":
            self.send({"op": "pong", "ref": message.get("ref")})

    def connection_lost(self, exc: Exception | None) -> None:
        for room in self.joined:
            if self.transport in room.members:
                room.members.remove(self.transport)
        self.joined.clear()


async def serve(port: int) -> None:
    floor = Floor()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Connection(floor), LOOPBACK, port)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument(
        "--loop",
        choices=["uvloop", "asyncio"],
        default="uvloop",
        help="event loop; uvloop is what uvicorn picks for the relay when it is installed",
    )
    args = parser.parse_args()
    if args.loop == "uvloop":
        import uvloop

        uvloop.run(serve(args.port))
    else:
        asyncio.run(serve(args.port))


if __name__ == "__main__":
    main()
