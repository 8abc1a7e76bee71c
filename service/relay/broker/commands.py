"""A lean, pipelined command connection for the publish path (EVALSHA), one per shard.

Through redis-py one EVALSHA costs the client about 100 us of CPU (Script, command
packing, pool checkout, retry wrapper, a task per socket write, response callbacks);
every event pays it once. This connection does only what a publish needs: the command is
packed by hiredis, appended to a write buffer flushed once per event-loop turn (the
publishes of every session of this pod that were handled in the same turn share one
write and, usually, one read), and its reply is parsed by hiredis.Reader in
`data_received` and handed to the caller's future in order (Redis answers in order).

The socket is opened by redis-py itself (the command client's connection class and
arguments, so its host, port, credentials, TLS, database and handshake apply here too);
once the handshake is done the transport is handed to this module's protocol.

Failure behaviour:
- Every command has a deadline `timeout` after it was sent. When the oldest unanswered
  command passes it, the connection is aborted: every command in flight fails with
  BrokerUnavailable (the client gets `unavailable` and retries with its id; the dedupe
  key makes a script that did run not run twice). The next command opens a new
  connection. Nothing is ever sent again once it may have run: an id-less publish whose
  reply was lost is reported as failed, never repeated.
- A lost connection (Redis restarted, reset) fails what is in flight the same way.
- NOSCRIPT (the script cache is empty after a restart): the command is sent again as
  EVAL with the script's source, which runs it and loads it for the next EVALSHA.
- A caller cancelled while waiting leaves its command in the pipeline; its reply is read
  and dropped, so the replies of the others stay in step.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections import deque
from typing import Any

import hiredis
from redis.asyncio import Redis
from redis.exceptions import RedisError

from relay.broker.base import BrokerUnavailable

log = logging.getLogger("relay.broker.commands")

MAX_IN_FLIGHT = 4096
"""Commands sent (or buffered) and not yet answered, per connection. Overflow policy: a
command over the bound is refused at once with BrokerUnavailable (the client gets
`unavailable` and retries later); nothing waits and nothing is dropped silently. At the
default per-connection publish rate this is far more than a pod produces within one
Redis round trip; reaching it means Redis has stopped answering."""

Arg = str | bytes | int | float


class Script:
    """A Lua script known by its SHA1, sent as EVALSHA and as EVAL when Redis lost it."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()


class _Pipe(asyncio.Protocol):
    """One live connection: its write buffer, a FIFO of futures answered by hiredis, and a
    deadline timer. Every future it accepts ends: by its reply, or failed with the pipe
    (loss, deadline, protocol error, close); a lost pipe accepts nothing more."""

    def __init__(self, url: str, timeout: float) -> None:
        self._url = url
        self._timeout = timeout
        self._reader = hiredis.Reader()
        self.transport: asyncio.Transport | None = None
        self.stream: object = None
        """redis-py's StreamWriter, kept alive: its __del__ would close the transport."""
        self.waiting: deque[tuple[asyncio.Future[Any], float]] = deque()
        self._buffer: list[bytes] = []
        self._flush_scheduled = False
        self._timer: asyncio.TimerHandle | None = None
        self.lost = False

    def send(self, command: tuple[Arg, ...]) -> asyncio.Future[Any]:
        """Queue one command for this loop turn's write; the future of its reply."""
        if self.lost:
            raise BrokerUnavailable(f"connection to {self._url} lost")
        if len(self.waiting) >= MAX_IN_FLIGHT:
            raise BrokerUnavailable(f"{MAX_IN_FLIGHT} commands already in flight to {self._url}")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        deadline = loop.time() + self._timeout
        self.waiting.append((future, deadline))
        self._buffer.append(hiredis.pack_command(command))  # type: ignore[arg-type]
        if not self._flush_scheduled:
            self._flush_scheduled = True
            loop.call_soon(self._flush)
        if self._timer is None:
            self._timer = loop.call_at(deadline, self._check_deadline)
        return future

    def _flush(self) -> None:
        self._flush_scheduled = False
        buffer, self._buffer = self._buffer, []
        if not self.lost and self.transport is not None and buffer:
            self.transport.write(b"".join(buffer))

    def _check_deadline(self) -> None:
        """The oldest command's deadline came: abort if it is still unanswered, else re-arm."""
        self._timer = None
        if self.lost or not self.waiting:
            return
        loop = asyncio.get_running_loop()
        deadline = self.waiting[0][1]
        if deadline <= loop.time():
            self.abort(TimeoutError(f"no reply within {self._timeout}s"))
        else:
            self._timer = loop.call_at(deadline, self._check_deadline)

    def data_received(self, data: bytes) -> None:
        reader = self._reader
        waiting = self.waiting
        reader.feed(data)
        try:
            while (reply := reader.gets()) is not False:
                if not waiting:
                    raise hiredis.ProtocolError(f"a reply nobody asked for: {reply!r:.80}")
                future = waiting.popleft()[0]
                if not future.done():
                    future.set_result(reply)
        except hiredis.ProtocolError as exc:
            log.warning("Redis command connection %s: %s", self._url, exc)
            self.abort(exc)

    def eof_received(self) -> bool:
        return False  # close the transport: connection_lost fails what is in flight

    def connection_lost(self, exc: Exception | None) -> None:
        self.fail(BrokerUnavailable(f"connection to {self._url} lost: {exc!r}"))

    def abort(self, reason: Exception) -> None:
        self.fail(BrokerUnavailable(f"connection to {self._url} aborted: {reason}"))
        if self.transport is not None:
            self.transport.abort()

    def fail(self, error: BrokerUnavailable) -> None:
        self.lost = True
        self._buffer = []
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        waiting, self.waiting = self.waiting, deque()
        for future, _ in waiting:
            if not future.done():
                future.set_exception(error)


class CommandConnection:
    """One pipelined connection to one Redis server, opened on first use and after a loss."""

    def __init__(self, client: Redis, *, timeout: float) -> None:
        pool = client.connection_pool
        self._pool = pool
        kwargs = pool.connection_kwargs
        self.url = f"{kwargs.get('host', kwargs.get('path', '?'))}:{kwargs.get('port', '')}"
        self._timeout = timeout
        self._pipe: _Pipe | None = None
        self._connecting: asyncio.Task[_Pipe] | None = None
        self._closed = False

    async def evalsha(self, script: Script, keys: list[str], args: list[Arg]) -> Any:
        """Run `script`; its reply as hiredis gives it (bytes, ints, lists)."""
        reply = await self.execute("EVALSHA", script.sha, len(keys), *keys, *args)
        if isinstance(reply, hiredis.ReplyError) and str(reply).startswith("NOSCRIPT"):
            reply = await self.execute("EVAL", script.source, len(keys), *keys, *args)
        if isinstance(reply, hiredis.ReplyError):
            raise BrokerUnavailable(f"Redis {self.url} refused the script: {reply}")
        return reply

    async def execute(self, *command: Arg) -> Any:
        """Send one command and wait for its reply (an error reply is returned, not raised).

        Fails with BrokerUnavailable when the connection cannot be opened, is lost, or no
        reply comes within the timeout. Cancelling the caller leaves the command in flight.
        """
        pipe = self._pipe
        if pipe is None or pipe.lost:
            pipe = await self._connect()
        return await pipe.send(command)

    def close(self) -> None:
        """Drop the connection; what is in flight fails with BrokerUnavailable."""
        self._closed = True
        if self._connecting is not None:
            self._connecting.cancel()
        if self._pipe is not None:
            self._pipe.abort(BrokerUnavailable("closed"))

    async def _connect(self) -> _Pipe:
        if self._closed:
            raise BrokerUnavailable(f"the command connection to {self.url} is closed")
        task = self._connecting
        if task is None:
            task = asyncio.create_task(self._open(), name=f"connect {self.url}")
            self._connecting = task
            task.add_done_callback(self._connected)
        # shield: one caller's cancellation must not cancel the others' connect
        return await asyncio.shield(task)

    def _connected(self, task: asyncio.Task[_Pipe]) -> None:
        if self._connecting is task:
            self._connecting = None
        if not task.cancelled() and task.exception() is None:
            self._pipe = task.result()
            if self._closed:  # closed while connecting
                self._pipe.abort(BrokerUnavailable("closed"))

    async def _open(self) -> _Pipe:
        """Connect through redis-py (its timeouts bound it), then take over the transport."""
        # 1. redis-py opens the socket and runs the handshake (TLS, AUTH, HELLO, SELECT),
        #    bounded by socket_connect_timeout / socket_timeout of the command client.
        connection = self._pool.connection_class(**self._pool.connection_kwargs)
        try:
            await connection.connect()  # type: ignore[no-untyped-call]
        except (RedisError, OSError) as exc:
            await connection.disconnect()
            raise BrokerUnavailable(f"connecting to {self.url} failed: {exc!r}") from exc
        # 2. Take the transport from redis-py's stream: from now on its bytes come to us.
        #    Nothing is buffered in the stream: the handshake read every reply it sent for.
        writer = connection._writer
        if writer is None:  # pragma: no cover - connect() returned without a socket
            raise BrokerUnavailable(f"connecting to {self.url} gave no socket")
        transport = writer.transport
        connection._reader = connection._writer = None  # detached: redis-py will not close it
        pipe = _Pipe(self.url, self._timeout)
        pipe.transport = transport  # type: ignore[assignment]
        pipe.stream = writer
        transport.set_protocol(pipe)
        if transport.is_closing():
            pipe.fail(BrokerUnavailable(f"connection to {self.url} closed during the handshake"))
        return pipe
