"""Run the relay on uvicorn, with its WebSocket protocol and a graceful drain on SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import resource
import signal
import socket
from collections.abc import Iterator
from types import FrameType

import uvicorn

from relay import core, transport
from relay.app import create_admin_app, create_app
from relay.config import Settings
from relay.node import RelayNode

HARD_FRAME_FACTOR = 4
"""Frames over this many times RELAY_MAX_MESSAGE_BYTES are closed with 1009, unread."""
FILE_RESERVE = 256
"""File descriptors kept for what is not a player's connection: the listening sockets,
Redis connections, admin port clients, the interpreter's own files."""

log = logging.getLogger("relay.server")


_CREDENTIAL = re.compile(
    r"(?i)((?:authorization:\s*)?(?:bearer|basic)\s+|\b(?:token|secret|password)=)[^\s&\"',;]+"
)
_JWT = re.compile(r"eyJ[\w-]*\.[\w-]+\.[\w-]*")
"""A JWT anywhere (its header always starts with `{"` = `eyJ` in base64url)."""
_USERINFO = re.compile(r"(\b[a-z][a-z0-9+.-]*://)[^/\s@]+@")
"""The `user:password@` of a URL (a Redis URL with its password)."""
_QUERY = re.compile(r"(/[^\s\"'?]*)\?[^\s\"']+")
"""The query string of a path or URL (`/ws?token=...`): browsers send their token there."""


def redact(text: str) -> str:
    """`text` without credentials: bearer/`token=` values, JWTs, URL passwords, queries."""
    text = _CREDENTIAL.sub(r"\1[redacted]", text)
    text = _JWT.sub("[redacted]", text)
    text = _USERINFO.sub(r"\1[redacted]@", text)
    return _QUERY.sub(r"\1?[query redacted]", text)


class CredentialFilter(logging.Filter):
    """Keeps credentials out of every log line, whoever writes it.

    uvicorn logs each WebSocket handshake as `"WebSocket /ws?token=<JWT>" [accepted]`
    (at INFO, whatever `access_log` says), and websockets logs request lines and headers
    at DEBUG: the browser client's token would land in the log. Installed on the
    handlers, so records propagated from any logger pass through it.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = redact(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(redact(a) if isinstance(a, str) else a for a in record.args)
        elif isinstance(record.args, dict):
            record.args = {
                k: redact(v) if isinstance(v, str) else v for k, v in record.args.items()
            }
        return True


def install_credential_filter() -> None:
    """On every handler of the root logger and of uvicorn's own (non-propagating) ones."""
    credential_filter = CredentialFilter()
    for name in (None, "uvicorn", "uvicorn.error", "uvicorn.access"):
        for handler in logging.getLogger(name).handlers:
            if not any(isinstance(f, CredentialFilter) for f in handler.filters):
                handler.addFilter(credential_filter)


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
    chosen = core.select(settings.core)  # CoreMissing: RELAY_CORE=on without the core
    log.info("frame reader and fan-out: %s (%s)", chosen.name, chosen.why)
    app = create_app(settings)
    metrics = app.state.node.metrics
    metrics.core.labels(chosen.name).set(1)
    refusals = metrics.handshake_refusals
    http_protocol, ws_protocol = transport.protocols(
        app.state.node,
        lambda status: refusals.labels(str(status)).inc(),
        settings.handshake_seconds,
        chosen.frame_reader,
    )
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        http=http_protocol,
        ws=ws_protocol,
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
    install_credential_filter()  # after uvicorn.Config, which configures its loggers
    return RelayServer(config, app.state.node, admin)


def raise_file_limit(max_connections: int) -> int:
    """Lift the open-file limit (RLIMIT_NOFILE) from its soft value to its hard one, and
    warn when even that cannot hold `max_connections`; returns the limit now in force.

    Every WebSocket is a file descriptor. Container runtimes start a process with a soft
    limit (often 1,024) far below the hard one (often 524,288 or more) and leave servers
    to raise it themselves, as nginx and Go programs do; an unprivileged process may go
    up to the hard limit, not past it. Past the limit a connection fails at accept()
    (EMFILE) instead of getting the clean 1013 of RELAY_MAX_CONNECTIONS.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = max_connections + FILE_RESERVE
    target = hard if hard != resource.RLIM_INFINITY else max(soft, wanted)
    if soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as exc:
            log.warning("could not raise the open-file limit from %d to %d: %s", soft, target, exc)
    if soft < wanted:
        log.warning(
            "open-file limit %d is below RELAY_MAX_CONNECTIONS=%d + %d in reserve: "
            "connections past about %d fail at accept(); raise the container's nofile "
            "limit or lower RELAY_MAX_CONNECTIONS (docs/operations.md)",
            soft,
            max_connections,
            FILE_RESERVE,
            max(0, soft - FILE_RESERVE),
        )
    else:
        log.info("open-file limit %d (RELAY_MAX_CONNECTIONS=%d)", soft, max_connections)
    return soft


def serve(settings: Settings) -> None:
    """Run until SIGTERM/SIGINT; returns after the drain, so the process exits 0."""
    raise_file_limit(settings.max_connections)
    server = build_server(settings)
    # uvicorn re-raises the captured signal once its shutdown is done; with the default
    # handler that would end a fully drained relay with "killed by SIGTERM". The handler
    # installed here is what uvicorn restores before re-raising: it lets the process
    # return normally, since the signal has already been acted on.
    signal.signal(signal.SIGTERM, _already_handled)
    server.run()


def _already_handled(signum: int, frame: FrameType | None) -> None:
    return None
