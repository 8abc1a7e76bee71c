"""The Python reference server for bench/compare.py: python-socketio + AsyncRedisManager.

What a Python user would pick instead of the relay. One process per port; run two on one
Redis. `join` (room) joins the room and acks; `publish` (room, data) emits `event`
{room, data} to the room on every process through Redis Pub/Sub. Served by uvicorn with
uvloop, as the relay is. Not a server to deploy: no auth, no limits.

    python bench/sio_server.py --port N --redis redis://127.0.0.1:PORT
"""

from __future__ import annotations

import argparse
from typing import Any

import socketio
import uvicorn


def app(redis_url: str) -> socketio.ASGIApp:
    sio = socketio.AsyncServer(
        async_mode="asgi",
        client_manager=socketio.AsyncRedisManager(redis_url),
        transports=["websocket"],
        http_compression=False,
        logger=False,
        engineio_logger=False,
    )

    @sio.on("join")  # type: ignore[misc]
    async def join(sid: str, room: str) -> str:
        await sio.enter_room(sid, room)
        return "ok"

    @sio.on("publish")  # type: ignore[misc]
    async def publish(sid: str, room: str, data: Any) -> None:
        await sio.emit("event", {"room": room, "data": data}, room=room)

    return socketio.ASGIApp(sio)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--redis", required=True)
    args = parser.parse_args()
    uvicorn.run(
        app(args.redis),
        host="127.0.0.1",
        port=args.port,
        loop="uvloop",
        log_level="warning",
        ws_per_message_deflate=False,
    )


if __name__ == "__main__":
    main()
