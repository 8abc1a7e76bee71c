"""A TCP proxy that can stall: stop forwarding without closing either side.

This is the "silent partition" that health checks miss: both TCP connections stay
open, bytes just stop flowing. `deafen()` is the narrower fault: only what Redis sends
to Pub/Sub connections (those whose client sent SUBSCRIBE) is held, so a subscriber goes
deaf while its server's commands, publishes and health checks keep working. It runs its
own event loop in a thread, so tests can await their own work while it forwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading

from support.processes import LOOPBACK, free_port


class StallingProxy:
    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self._flowing = threading.Event()
        self._flowing.set()
        self._hearing = threading.Event()
        self._hearing.set()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        return f"redis://{LOOPBACK}:{self.port}/0"

    def start(self) -> StallingProxy:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    def stall(self) -> None:
        """Stop forwarding in both directions; connections stay open."""
        self._flowing.clear()

    def flow(self) -> None:
        self._flowing.set()

    def deafen(self) -> None:
        """Hold what Redis sends to Pub/Sub connections (new ones too); the rest flows."""
        self._hearing.clear()

    def hear(self) -> None:
        self._hearing.set()

    def close(self) -> None:
        async def _close() -> None:
            if self._server is not None:
                self._server.close()
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(_close(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()

    async def _start(self) -> None:
        self._server = await asyncio.start_server(self._accept, LOOPBACK, self.port)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(LOOPBACK, self.target_port)
        except OSError:
            writer.close()
            return
        subscriber = [False]  # set once the client sent SUBSCRIBE: a Pub/Sub connection
        await asyncio.gather(
            self._pipe(reader, up_writer, subscriber, up=True),
            self._pipe(up_reader, writer, subscriber, up=False),
            return_exceptions=True,
        )

    async def _pipe(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        subscriber: list[bool],
        *,
        up: bool,
    ) -> None:
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                if up and b"$9\r\nSUBSCRIBE\r\n" in data.upper():
                    subscriber[0] = True
                # While stalled (or deaf, for what Redis sends a subscriber), hold the bytes
                # (a partition loses nothing it already took, but delivers nothing either)
                # and poll for the link to come back.
                # Threading.Events, set from the test's thread: polled, not awaited.
                while not self._flowing.is_set() or (  # noqa: ASYNC110
                    not up and subscriber[0] and not self._hearing.is_set()
                ):
                    await asyncio.sleep(0.05)
                writer.write(data)
                await writer.drain()
        finally:
            writer.close()
