"""Opening one WebSocket to a relay: credentials in the header, refusals as our errors."""

from __future__ import annotations

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus

from gamecluster_client.errors import HandshakeError, UnauthorizedError

MAX_FRAME = 64 * 2**20
"""Largest frame accepted from a server (bytes); a bigger one closes the connection with
1009. The relay's own limit on events is far lower (64 KiB by default); batches and
replays stay well under this."""


async def open_socket(url: str, token: str | None, timeout: float) -> ClientConnection:
    """Open a WebSocket to `url` within `timeout` seconds.

    Raises UnauthorizedError (401), HandshakeError (any other refusal status), and
    OSError/TimeoutError/websockets' InvalidHandshake for the network and the rest.
    """
    headers = {"Authorization": f"Bearer {token}"} if token else None
    try:
        return await connect(
            url,
            additional_headers=headers,
            open_timeout=timeout,
            max_size=MAX_FRAME,
            compression=None,
        )
    except InvalidStatus as exc:
        status = exc.response.status_code
        body = exc.response.body or b""
        reason = body.decode(errors="replace").strip().splitlines()[0][:200] if body.strip() else ""
        error = UnauthorizedError if status == 401 else HandshakeError
        raise error(status, reason) from exc
