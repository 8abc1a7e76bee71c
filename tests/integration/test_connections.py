"""The `/ws` connection itself (relay.transport): paths, fragments, bad text, idle cost."""

from __future__ import annotations

import asyncio
import os
import resource
import struct
import subprocess
import sys

import httpx
import orjson
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus

from gamecluster_client import Connection as RelayClient
from support.processes import LOOPBACK
from support.wsraw import TEXT, client_frame, rss, upgrade

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("frames")]

IDLE = 1000
IDLE_BOUND = 12 * 1024
"""Bytes of relay RSS per idle joined connection: about 6 KB measured with
bench/compare.py, 33 KB when every connection held an ASGI task and its queue."""


async def test_the_frame_reader_in_use_is_logged_once_and_exposed(relay_factory, frames) -> None:
    pod = relay_factory("a")
    async with RelayClient(pod.url) as client:
        assert (await client.ping())["op"] == "pong"
    async with httpx.AsyncClient(timeout=10) as admin:
        metrics = (await admin.get(f"{pod.admin}/metrics")).text
    assert f'relay_core_info{{impl="{frames}"}} 1.0' in metrics, metrics
    assert pod.log.read_text().count(f"frame reader and fan-out: {frames} (") == 1


def test_relay_core_on_without_the_core_refuses_to_start(tmp_path) -> None:
    """RELAY_CORE=on where gamecluster_core cannot be imported: one clear line, exit 2."""
    blocker = tmp_path / "gamecluster_core.py"
    blocker.write_text("raise ImportError('not built here')\n")  # shadows the installed core
    env = {**os.environ, "RELAY_CORE": "on", "RELAY_AUTH": "none", "PYTHONPATH": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-m", "relay.cli", "serve"], env=env, capture_output=True, timeout=60
    )
    assert done.returncode == 2, done.stderr
    assert b"RELAY_CORE=on but the compiled core cannot be imported (not built here)" in (
        done.stderr
    )


async def test_an_upgrade_to_another_path_is_refused_with_404(relay_factory) -> None:
    pod = relay_factory("a")
    with pytest.raises(InvalidStatus) as refused:
        async with connect(f"ws://{LOOPBACK}:{pod.port}/elsewhere", open_timeout=5):
            pass
    assert refused.value.response.status_code == 404
    async with RelayClient(pod.url) as client:  # /ws is served as ever
        assert (await client.ping())["op"] == "pong"


async def test_a_fragmented_message_is_handled_as_one(relay_factory) -> None:
    pod = relay_factory("a")
    async with connect(pod.url) as ws:
        await ws.recv()  # welcome
        await ws.send(['{"op": "join", ', '"room": "frag", ', '"ref": "f"}'])
        assert orjson.loads(await asyncio.wait_for(ws.recv(), 5))["ref"] == "f"


async def test_a_text_frame_that_is_not_utf8_closes_with_1007(relay_factory) -> None:
    pod = relay_factory("a")
    reader, writer = await upgrade(pod.port)
    writer.write(client_frame(TEXT, b"\xff\xfe"))
    try:
        received = await asyncio.wait_for(reader.read(), 10)  # to the server's close
    finally:
        writer.close()
    close_frame = struct.pack("!BBH", 0x88, 2 + len(b"invalid UTF-8 in a text message"), 1007)
    assert close_frame in received, received[-80:]


async def test_idle_connections_hold_a_few_kilobytes_each(relay_factory) -> None:
    """An idle connection holds its parser state, the relay's session and a timer: no
    task, no queue, no coroutine frames (relay.transport, relay.session)."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # this process holds them all
    if hard < 2 * IDLE:
        pytest.skip(f"the file limit ({hard}) cannot hold {IDLE} connections on both ends")
    pod = relay_factory("a")

    async def idle(n: int) -> ClientConnection:
        ws = await connect(pod.url, open_timeout=30)
        await ws.recv()  # welcome
        await ws.send(orjson.dumps({"op": "join", "room": f"idle:{n % 100}", "ref": "j"}).decode())
        assert orjson.loads(await ws.recv())["op"] == "joined"
        return ws

    async def settled(ref: str) -> None:
        """A ping's pong: the server has handled everything sent before it (every join
        was already answered), so its memory is what the connections hold, not work."""
        await clients[-1].send(orjson.dumps({"op": "ping", "ref": ref}).decode())
        assert orjson.loads(await asyncio.wait_for(clients[-1].recv(), 5))["ref"] == ref

    clients = [await idle(n) for n in range(100)]  # warm-up: rooms, caches, free lists
    try:
        await settled("before")
        before = rss(pod)
        for start in range(0, IDLE, 100):
            clients += await asyncio.gather(*(idle(n) for n in range(start, start + 100)))
        await settled("after")
        per_connection = (rss(pod) - before) / IDLE
        assert per_connection <= IDLE_BOUND, f"{per_connection / 1024:.1f} KB per connection"
    finally:
        await asyncio.gather(*(ws.close() for ws in clients), return_exceptions=True)
