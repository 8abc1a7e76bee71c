"""Run the relay on uvicorn, with its WebSocket protocol and a graceful drain on SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
from collections.abc import Iterator
from types import FrameType

import uvicorn

from relay.app import create_admin_app, create_app
from relay.config import Settings
from relay.node import RelayNode
from relay.transport import RelayWebSocketProtocol

HARD_FRAME_FACTOR = 4
"""Frames over this many times RELAY_MAX_MESSAGE_BYTES are closed with 1009, unread."""


class RelayServer(uvicorn.Server):
    """uvicorn's server, whose shutdown first drains the relay's sessions.

    uvicorn's own shutdown closes every WebSocket at once with 1012; draining first
    spreads the reconnects over RELAY_DRAIN_SECONDS instead.
    """

    def __init__(
        self, config: uvicorn.Config, node: RelayNode, admin: uvicorn.Server | None = None
    ) -> None:
        super().__init__(config)
        self.node = node
        self.admin = admin
        self._admin_task: asyncio.Task[None] | None = None

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.admin is not None and not self.should_exit:
            self._admin_task = asyncio.create_task(self.admin.serve(), name="admin port")

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        await self.node.drain(self.node.settings.drain_seconds)
        # The admin port stays up through the drain (metrics, API), then stops.
        if self.admin is not None and self._admin_task is not None:
            self.admin.should_exit = True
            await asyncio.wait({self._admin_task}, timeout=5)
        await super().shutdown(sockets)


class AdminServer(uvicorn.Server):
    """uvicorn's server for the admin port, inside the player server's process and loop:
    signals belong to the player server, which stops this one after its drain."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def build_server(settings: Settings) -> RelayServer:
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        ws=RelayWebSocketProtocol,
        ws_max_size=settings.max_message_bytes * HARD_FRAME_FACTOR,
        ws_ping_interval=settings.heartbeat_seconds,
        ws_ping_timeout=settings.heartbeat_seconds,
        ws_per_message_deflate=settings.compression,
        log_level=settings.log_level,
        lifespan="on",
        timeout_graceful_shutdown=5,
        server_header=False,
        access_log=False,
    )
    admin = None
    if settings.admin_port:
        admin_config = uvicorn.Config(
            create_admin_app(app.state.node),
            host=settings.host,
            port=settings.admin_port,
            log_level=settings.log_level,
            lifespan="off",
            server_header=False,
            access_log=False,
        )
        admin = AdminServer(admin_config)
    return RelayServer(config, app.state.node, admin)


def serve(settings: Settings) -> None:
    """Run until SIGTERM/SIGINT; returns after the drain, so the process exits 0."""
    server = build_server(settings)
    # uvicorn re-raises the captured signal once its shutdown is done; with the default
    # handler that would end a fully drained relay with "killed by SIGTERM". The handler
    # installed here is what uvicorn restores before re-raising: it lets the process
    # return normally, since the signal has already been acted on.
    signal.signal(signal.SIGTERM, _already_handled)
    server.run()


def _already_handled(signum: int, frame: FrameType | None) -> None:
    return None
