"""Review of the off-ASGI `/ws` transport (relay.transport): closing handshake, fragments.

Raw sockets against real relay processes: what a browser or a hostile client can do on
the wire, beyond what a well-behaved `websockets` client ever sends.
"""

from __future__ import annotations

import asyncio
import struct

import orjson
import pytest
from websockets.asyncio.client import connect

from support.wsraw import client_frame, read_frame, rss, upgrade

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("frames")]


async def test_a_server_close_waits_for_the_peers_close_frame(relay_factory) -> None:
    """After its close frame the server keeps the TCP connection until the peer's close
    frame (or the close grace): a message the peer sent before it saw the close must not
    make the server drop the connection, or the peer's echo meets a reset."""
    pod = relay_factory("a", env={"RELAY_MAX_CONNECTIONS": "1"})
    async with connect(pod.url) as holder:
        await holder.recv()  # welcome: the one slot is taken
        reader, writer = await upgrade(pod.port)
        try:
            opcode, payload = await read_frame(reader)  # 1013: connection limit reached
            assert (opcode, payload[:2]) == (0x8, struct.pack("!H", 1013)), payload
            writer.write(client_frame(0x1, b'{"op": "ping", "ref": "in flight"}'))
            try:  # the server waits for our close frame (up to its close grace, 5 s)
                data = await asyncio.wait_for(reader.read(), 1.0)
            except TimeoutError:
                pass
            else:
                pytest.fail(f"the server closed before the closing handshake: {data!r}")
            writer.write(client_frame(0x8, payload[:2]))  # the echo
            assert await asyncio.wait_for(reader.read(), 10) == b""  # a clean close, no reset
        finally:
            writer.close()


async def test_a_client_still_sending_during_the_drain_gets_reconnect_and_1012(
    relay_factory,
) -> None:
    """A slow reader that keeps sending (a game client's inputs) while the relay drains
    still receives everything queued, then `reconnect` and close 1012: the server must not
    close the socket under data the client is still sending (a reset drops the queue)."""
    pod = relay_factory(
        "a",
        env={
            "RELAY_DRAIN_SECONDS": "2",
            "RELAY_HEARTBEAT_SECONDS": "60",
            "RELAY_OP_RATE": "100000",
            "RELAY_OP_BURST": "100000",
            "RELAY_PUBLISH_RATE": "100000",
            "RELAY_PUBLISH_BURST": "100000",
            "RELAY_SEND_QUEUE": "100000",
        },
    )
    reader, writer = await upgrade(pod.port, rcvbuf=8192)
    await read_frame(reader)  # welcome
    writer.write(client_frame(0x1, b'{"op": "join", "room": "d", "ref": "j"}'))
    assert b'"joined"' in (await read_frame(reader))[1]
    async with connect(pod.url) as publisher:
        await publisher.recv()  # welcome
        for n in range(600):  # ~2.4 MB the slow client has not read yet
            last = {"id": "last"} if n == 599 else {}
            message = {"op": "publish", "room": "d", "data": "y" * 4000, **last}
            await publisher.send(orjson.dumps(message).decode())
        while orjson.loads(await asyncio.wait_for(publisher.recv(), 10)).get("op") != "ack":
            pass
        pod.terminate()
        received = b""
        try:
            while True:
                writer.write(client_frame(0x1, b'{"op": "ping"}'))  # its inputs go on
                chunk = await asyncio.wait_for(reader.read(16384), 15)
                if not chunk:
                    break
                received += chunk
                await asyncio.sleep(0.01)  # a slow reader: ~1.6 MB/s
        except ConnectionResetError:
            pass  # checked below: what arrived before the reset
        finally:
            writer.close()
    assert b'"reason":"draining"' in received, f"no reconnect in the last {received[-200:]!r}"
    assert received.endswith(b"\x88\x02" + struct.pack("!H", 1012)), received[-40:]


async def test_empty_continuation_frames_do_not_grow_the_relays_memory(relay_factory) -> None:
    """A fragmented message is bounded by its size (ws_max_size), not by its frame count:
    endless empty continuation frames (6 bytes each on the wire) must not pile up."""
    # Unanswered heartbeat pings would end the connection while a loaded machine is
    # still pushing the 60 MB through: a long heartbeat keeps the test about memory.
    pod = relay_factory("a", env={"RELAY_HEARTBEAT_SECONDS": "600"})
    reader, writer = await upgrade(pod.port)
    try:
        await read_frame(reader)  # welcome
        before = rss(pod)
        writer.write(client_frame(0x1, b'{"op": "ping", ', fin=False))
        empty = client_frame(0x0, b"", fin=False) * 100_000
        for _ in range(100):  # 60 MB of frames carrying no payload
            writer.write(empty)
            await writer.drain()
        writer.write(client_frame(0x9, b"read all"))  # a ping may come between fragments
        while await read_frame(reader, 60) != (0xA, b"read all"):
            pass  # the heartbeat's pings, unanswered here
        grown = rss(pod) - before  # the message is still incomplete: all it holds is held
        writer.write(client_frame(0x0, b'"ref": "after"}'))
        opcode, payload = await read_frame(reader, 60)
        while opcode == 0x9:
            opcode, payload = await read_frame(reader, 60)
        assert orjson.loads(payload) == {"op": "pong", "ref": "after"}
        assert grown < 20 * 1024 * 1024, f"relay RSS grew {grown / 1e6:.0f} MB"
    finally:
        writer.close()
