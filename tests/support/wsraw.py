"""WebSocket on raw sockets, for tests that must send what no well-behaved client sends.

Frames are built by hand (masked with a zero key: a client must mask, any key will do,
and a zero key leaves the payload readable in a capture); the upgrade request is the
plain RFC 6455 one. Also the relay process's memory, as the tests that bound it read it.
"""

from __future__ import annotations

import asyncio
import base64
import os
import socket
import struct
from pathlib import Path

from support.processes import LOOPBACK, RelayProcess

NO_MASK = b"\x00\x00\x00\x00"
TEXT, CLOSE = 0x1, 0x8


def upgrade_request(target: str = "/ws", extra_headers: str = "") -> bytes:
    """An upgrade request for `target`; `extra_headers` are whole `Name: value\\r\\n` lines."""
    key = base64.b64encode(os.urandom(16)).decode()
    return (
        f"GET {target} HTTP/1.1\r\nHost: relay\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n{extra_headers}\r\n"
    ).encode()


def client_frame(opcode: int, payload: bytes = b"", *, fin: bool = True) -> bytes:
    first = (0x80 if fin else 0) | opcode
    size = len(payload)
    if size < 126:
        head = struct.pack("!BB", first, 0x80 | size)
    elif size < 65536:
        head = struct.pack("!BBH", first, 0x80 | 126, size)
    else:
        head = struct.pack("!BBQ", first, 0x80 | 127, size)
    return head + NO_MASK + payload


async def read_frame(reader: asyncio.StreamReader, timeout: float = 10) -> tuple[int, bytes]:
    """The next server frame (servers never mask): its opcode and payload."""
    head = await asyncio.wait_for(reader.readexactly(2), timeout)
    size = head[1] & 0x7F
    if size == 126:
        size = struct.unpack("!H", await reader.readexactly(2))[0]
    elif size == 127:
        size = struct.unpack("!Q", await reader.readexactly(8))[0]
    return head[0] & 0x0F, await reader.readexactly(size)


async def upgrade(
    port: int, *, rcvbuf: int | None = None
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """An upgraded `/ws` connection; `rcvbuf` shrinks the receive buffer before connecting
    (a client that stops reading then backs up on the server at once)."""
    sock = socket.socket()
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, (LOOPBACK, port))
    reader, writer = await asyncio.open_connection(sock=sock)
    writer.write(upgrade_request())
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    assert head.startswith(b"HTTP/1.1 101"), head
    return reader, writer


def rss(relay: RelayProcess) -> int:
    """The relay process's resident memory now, bytes."""
    assert relay.proc is not None
    pages = int(Path(f"/proc/{relay.proc.pid}/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE")


def peak_rss(relay: RelayProcess) -> int:
    """The relay process's peak resident memory (VmHWM), bytes."""
    assert relay.proc is not None
    status = Path(f"/proc/{relay.proc.pid}/status").read_text()
    line = next(x for x in status.splitlines() if x.startswith("VmHWM:"))
    return int(line.split()[1]) * 1024
