"""Review of the compiled core (issue #18): holes found in the frame reader and fan-out.

Each test runs with both implementations (the `frames` fixture: RELAY_CORE=on / off) on a
real relay process, and asserts what the pure-Python path already does.
"""

from __future__ import annotations

import asyncio
import resource

import orjson
import pytest

from support.wsraw import TEXT, client_frame, read_frame, rss, upgrade

PONG = 0xA

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("frames")]

LARGE_SENDERS = 150
LARGE = 250_000
"""Under the relay's ws_max_size (4 x RELAY_MAX_MESSAGE_BYTES = 256 KiB): read whole,
then refused by the session (over RELAY_MAX_MESSAGE_BYTES), the connection stays open."""
KEPT_BOUND = 24 * 1024
"""Bytes of relay RSS per connection left after one large message: an idle connection
holds ~6 KB (test_connections); the message itself must not stay."""


async def test_one_large_message_leaves_no_buffer_behind(relay_factory) -> None:
    """A connection that sent one large message and went idle must not keep a buffer of
    that size. The compiled core's reader kept the capacity of its `scratch` (unmasked
    copy) and `pending` (read buffer) vectors for as long as the connection lived: ~2 x
    ws_max_size, 500 KB per connection at the defaults (128 MiB at
    RELAY_MAX_MESSAGE_BYTES=16 MiB), where websockets lets go at the client's next frame
    (so a client that stays connected through the heartbeat holds nothing)."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    pod = relay_factory("a")
    big = client_frame(TEXT, b'{"op":"ping","ref":"' + b"x" * LARGE + b'"}')

    async def opened() -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        reader, writer = await upgrade(pod.port)
        await read_frame(reader)  # welcome
        return reader, writer

    async def send_large(conn: tuple[asyncio.StreamReader, asyncio.StreamWriter]) -> None:
        reader, writer = conn
        writer.write(big)
        opcode, reply = await read_frame(reader)
        assert opcode == TEXT and orjson.loads(reply)["op"] == "error", reply[:200]
        # Then a small frame, as a live client sends one every heartbeat (its pong):
        # websockets' parser lets go of the large frame only when the next one comes.
        writer.write(client_frame(PONG, b"beat"))
        await writer.drain()

    conns = [await opened() for _ in range(LARGE_SENDERS)]
    try:
        await send_large(conns[0])  # warm-up: the allocator's arenas for a large read
        await asyncio.sleep(0.3)
        before = rss(pod)
        for conn in conns[1:]:  # one at a time: the allocator reuses what was freed
            await send_large(conn)
        await asyncio.sleep(0.3)
        kept = (rss(pod) - before) / (LARGE_SENDERS - 1)
        assert kept <= KEPT_BOUND, f"{kept / 1024:.1f} KB kept per connection"
    finally:
        for _, writer in conns:
            writer.close()
