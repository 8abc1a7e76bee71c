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

`--redis URL`: the floor with a Redis hop (run two, like the relay's two pods, each with
`--me` its own name and `--peers` the others'), in one of two shapes (`--hop`):
- `relay` (the default): the relay's shape, none of its features. A publish frames the
  event once and PUBLISHes the frame on the room's channel (replies read and dropped,
  nothing awaited); every process SUBSCRIBEs to the channels of its members' rooms and
  writes each message's bytes as they come to every local member, its own publishes
  included (Redis gives every process the room's events in one order, as the relay
  relies on). No envelope, offsets, acks or limits.
- `lean`: the least a relay whose rooms span processes through Redis Pub/Sub can do. No
  replies (CLIENT REPLY OFF on the publish connection); a publish is written to the
  local members at once and PUBLISHed to one channel per other process (`room@peer`),
  so Redis sends nothing back to the publisher. It gives up what the relay keeps: one
  order per room on every process, errors from Redis, and (for more processes) it must
  know which peers hold members. A lower bound, not a design for durable rooms, whose
  events get their offset in Redis before anyone may deliver them.
Events carry no `offset` in either, as a relay's volatile-room events do not.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import struct
import time
from collections.abc import Callable
from typing import Any, cast
from urllib.parse import urlsplit

import hiredis
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
    __slots__ = ("channel", "members", "name", "offset", "subscribed", "waiting")

    def __init__(self, name: str, channel: bytes) -> None:
        self.name = name
        self.members: list[asyncio.Transport] = []
        self.offset = 0
        self.channel = channel
        """With a Redis hop: what this process subscribes to for the room."""
        self.subscribed = False
        """With a Redis hop: the channel's subscription is confirmed."""
        self.waiting: list[tuple[Connection, Any]] = []
        """Joins answered once it is (connection, ref)."""


class RedisConnection(asyncio.Protocol):
    """Commands written at once, replies parsed by hiredis and handed to `on_reply`."""

    def __init__(self, on_reply: Callable[[Any], None]) -> None:
        self.on_reply = on_reply
        self.reader = hiredis.Reader()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        while (reply := self.reader.gets()) is not False:
            self.on_reply(reply)

    def command(self, *args: bytes) -> None:
        assert self.transport is not None
        # hiredis's stubs want a tuple of str | bytes | int | float; bytes are what it packs.
        self.transport.write(hiredis.pack_command(args))  # type: ignore[arg-type]


class Floor:
    def __init__(self, hop: str | None = None, me: str = "", peers: list[str] | None = None):
        self.hop = hop
        """None (one process), "relay" or "lean" (the module's docstring)."""
        self.me = me
        self.peers = peers or []
        self.rooms: dict[str, Room] = {}
        self.channels: dict[bytes, Room] = {}
        self.sessions = itertools.count(1)
        self.publisher: RedisConnection | None = None
        """With a Redis hop: where events are PUBLISHed (replies dropped, or none)."""
        self.subscriber: RedisConnection | None = None
        """With a Redis hop: the Pub/Sub connection events come in on."""
        self.targets: dict[str, list[bytes]] = {}
        """Room -> the channels a publish goes to (built once per room name)."""

    async def connect(self, url: str) -> None:
        loop = asyncio.get_running_loop()
        where = urlsplit(url)
        host, port = where.hostname or LOOPBACK, where.port or 6379
        _, self.publisher = await loop.create_connection(
            lambda: RedisConnection(lambda reply: None), host, port
        )
        if self.hop == "lean":
            self.publisher.command(b"CLIENT", b"REPLY", b"OFF")
        _, self.subscriber = await loop.create_connection(
            lambda: RedisConnection(self.pubsub), host, port
        )

    def channel(self, room: str, process: str) -> bytes:
        """The room's channel (relay shape), or its channel to one process (lean)."""
        shared = b"floor:" + room.encode()
        return shared + b"@" + process.encode() if self.hop == "lean" else shared

    def publish_to(self, room: str) -> list[bytes]:
        targets = self.targets.get(room)
        if targets is None:
            peers = self.peers if self.hop == "lean" else [self.me]
            targets = self.targets[room] = [self.channel(room, peer) for peer in peers]
        return targets

    def room(self, name: str) -> Room:
        room = self.rooms.get(name)
        if room is None:
            room = self.rooms[name] = Room(name, self.channel(name, self.me))
            self.channels[room.channel] = room
            if self.subscriber is None:
                room.subscribed = True
            else:
                self.subscriber.command(b"SUBSCRIBE", room.channel)
        return room

    def pubsub(self, reply: list[Any]) -> None:
        kind, channel, data = reply
        room = self.channels[channel]
        if kind == b"message":
            for transport in room.members:  # the same bytes to every local member
                transport.write(data)
        elif kind == b"subscribe":
            room.subscribed = True
            for connection, ref in room.waiting:
                if connection.transport is not None and not connection.transport.is_closing():
                    connection.answer_join(room, ref)
            room.waiting.clear()


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
            event = {"op": "event", "room": message["room"], "data": message["data"]}
            event["ts"] = time.time_ns() // 1_000_000
            floor = self.floor
            room = floor.rooms.get(message["room"])
            if floor.hop is None:
                if room is None:
                    return
                room.offset += 1
                event["offset"] = room.offset
            frame = frame_text(orjson.dumps(event))  # once per event
            if floor.publisher is not None:  # to the other processes through Redis
                for channel in floor.publish_to(message["room"]):
                    floor.publisher.command(b"PUBLISH", channel, frame)
                if floor.hop == "relay":
                    return  # its own members get it from Redis, in the room's one order
            if room is not None:
                for transport in room.members:  # the same bytes to every member
                    transport.write(frame)
        elif op == "join":
            assert self.transport is not None
            room = self.floor.room(message["room"])
            if room not in self.joined:
                room.members.append(self.transport)
                self.joined.append(room)
            if room.subscribed:
                self.answer_join(room, message.get("ref"))
            else:
                room.waiting.append((self, message.get("ref")))
        elif op == "ping":
            self.send({"op": "pong", "ref": message.get("ref")})

    def answer_join(self, room: Room, ref: Any) -> None:
        offset = None if self.floor.hop else room.offset  # no offsets through the hop
        reply = {"op": "joined", "room": room.name, "offset": offset}
        self.send({**reply, "epoch": "floor", "ref": ref})

    def connection_lost(self, exc: Exception | None) -> None:
        for room in self.joined:
            if self.transport in room.members:
                room.members.remove(self.transport)
        self.joined.clear()


async def serve(port: int, args: argparse.Namespace) -> None:
    peers = [peer for peer in args.peers.split(",") if peer]
    floor = Floor(args.hop if args.redis else None, args.me or str(port), peers)
    if args.redis is not None:
        await floor.connect(args.redis)
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
    parser.add_argument("--redis", help="redis://host:port: the floor with a Redis hop")
    parser.add_argument("--hop", choices=["relay", "lean"], default="relay")
    parser.add_argument("--me", default="", help="this process's name (default: its port)")
    parser.add_argument("--peers", default="", help="the other processes' names, comma-separated")
    args = parser.parse_args()
    if args.hop == "lean" and args.redis and not args.peers:
        parser.error("--hop lean needs --peers: it publishes to each other process's channel")
    if args.loop == "uvloop":
        import uvloop

        uvloop.run(serve(args.port, args))
    else:
        asyncio.run(serve(args.port, args))


if __name__ == "__main__":
    main()
