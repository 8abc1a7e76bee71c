"""A lean, pipelined command connection for the publish path (EVALSHA), one per shard.

Through redis-py one EVALSHA costs the client about 60-100 us of CPU (Script, command
packing, pool checkout, retry wrapper, a task per socket write, response callbacks);
every event pays it once. This connection does only what a publish needs: the command is
packed by hiredis, appended to a write buffer flushed once per event-loop turn (the
publishes of every session of this pod that were handled in the same turn share one
write and, usually, one read), and its reply is parsed by hiredis.Reader in
`data_received` and handed to the caller's future in order (Redis answers in order).

Opening: redis-py opens the socket and runs the handshake, with the command client's own
connection class and arguments, so everything the client is configured with applies here
too: the credential provider (a password file is read again for each new connection), TLS
and its CA (`rediss://`), the database, the timeouts, and for a Sentinel shard the
Sentinel-managed master address with the shard's failover fence (relay.broker.connection
FencedPool: no connection to a new master before its rooms have new epochs). Only the
RESP version is ours: RESP2, so that Redis never sends this connection a reply nobody
asked for (RESP3 push messages, such as redis-py's maintenance notifications, would put
the replies out of step with the waiting futures). Once the handshake is done the
transport is handed to this module's protocol (`detach`); that step relies on redis-py's
private `_reader`/`_writer` streams, checked at every connect and by
tests/integration/test_broker_commands.py against the pinned redis-py, plain and TLS, on
asyncio's loop and on uvloop.

Failure behaviour:
- Every command has a deadline `timeout` after it was sent. When the oldest unanswered
  command passes it, the connection is aborted: every command in flight fails with
  BrokerUnavailable (the client gets `unavailable` and retries with its id; the dedupe
  key makes a script that did run not run twice). The next command opens a new
  connection. Nothing is ever sent again once it may have run: an id-less publish whose
  reply was lost is reported as failed, never repeated.
- A lost connection (Redis restarted, reset) fails what is in flight the same way.
- NOSCRIPT (the script cache is empty after a restart): the script is loaded with
  SCRIPT LOAD and the EVALSHA sent again (it did not run). Never EVAL: the relay's ACL
  user has exactly EVALSHA and SCRIPT LOAD (relay.contract.RELAY_REDIS_COMMANDS).
- An error reply fails that command alone with BrokerUnavailable saying what Redis meant:
  OOM (a full Redis with `noeviction`: nothing of the publish was stored), READONLY (the
  server was demoted by a failover: the connection is dropped, the next command asks
  Sentinel for the master again), NOPERM (the ACL refused it), anything else as is.
- A caller cancelled while waiting leaves its command in the pipeline; its reply is read
  and dropped, so the replies of the others stay in step.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections import deque
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar, cast

import hiredis
from redis.asyncio import Redis
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import RedisError

from relay.broker.base import BrokerUnavailable, SlotMoved, describe

log = logging.getLogger("relay.broker.commands")

MAX_IN_FLIGHT = 4096
"""Commands sent (or buffered) and not yet answered, per connection. Overflow policy: a
command over the bound is refused at once with BrokerUnavailable (the client gets
`unavailable` and retries later); nothing waits and nothing is dropped silently. At the
default per-connection publish rate this is far more than a pod produces within one
Redis round trip; reaching it means Redis has stopped answering."""

FULL_LOG_SECONDS = 10.0
"""At most one log line per this interval about a full Redis refusing publishes."""

RESP_VERSION = 2
"""The protocol of the publish connection: RESP2 has no push messages (see above)."""

Arg = str | bytes | int | float

CLUSTER_REDIRECTS = frozenset(("MOVED", "ASK", "TRYAGAIN", "CLUSTERDOWN"))
"""Redis Cluster error replies saying the command (which did not run) belongs elsewhere or
later: the relay sends every command to the node its own slot map names, never follows a
redirect by itself (relay.broker.slots: a failover's new master is fenced first)."""


class Script:
    """A Lua script known by its SHA1: EVALSHA, and SCRIPT LOAD when Redis lost it."""

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
        self.stream: asyncio.StreamWriter | None = None
        """redis-py's StreamWriter, kept alive: its __del__ would close the transport."""
        self.waiting: deque[tuple[asyncio.Future[Any], float]] = deque()
        self._buffer: list[bytes] = []
        self._flush_scheduled = False
        self._timer: asyncio.TimerHandle | None = None
        self.lost = False
        self.queued = 0
        """Commands queued on this connection so far: the next one's place in its order."""

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
        self.queued += 1
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
        why = "closed by the server" if exc is None else describe(exc)
        self.fail(BrokerUnavailable(f"connection to {self._url} lost: {why}"))

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


@dataclass(frozen=True, slots=True)
class Sent:
    """Where a command went: its connection, and its place in that connection's order.

    Redis runs one connection's commands in the order they were sent, so a command sent
    `after` this one on the same connection runs after it (WAIT relies on it: its count
    covers the writes of its own connection only)."""

    pipe: _Pipe
    position: int


class CommandConnection:
    """One pipelined connection to one Redis shard, opened on first use and after a loss.

    `client` is the shard's redis-py client: its pool's connection class and arguments open
    every connection (see the module's docstring). `url` names the shard in errors and
    logs, so it must carry no credentials (RedisEndpoint.url)."""

    def __init__(self, client: Redis, *, url: str, timeout: float) -> None:
        self._pool = client.connection_pool
        self.url = url
        self._timeout = timeout
        self._pipe: _Pipe | None = None
        self._connecting: asyncio.Task[_Pipe] | None = None
        self._closed = False
        self._refused_full = 0
        """Writes Redis refused as full (OOM) since the last log line about it."""
        self._full_logged_at = float("-inf")

    async def evalsha(self, script: Script, keys: list[str], args: list[Arg]) -> Any:
        """Run `script`; its reply as hiredis gives it (bytes, ints, lists).

        Raises BrokerUnavailable, on an error reply too (`_refused` says what it meant)."""
        return (await self._evalsha(script, keys, args))[2]

    async def evalsha_sent(
        self, script: Script, keys: list[str], args: list[Arg]
    ) -> tuple[Sent, Any]:
        """`evalsha`, and where the script ran (for a command that must follow it: `after`)."""
        pipe, position, reply = await self._evalsha(script, keys, args)
        return Sent(pipe, position), reply

    async def _evalsha(
        self, script: Script, keys: list[str], args: list[Arg]
    ) -> tuple[_Pipe, int, Any]:
        command = ("EVALSHA", script.sha, len(keys), *keys, *args)
        pipe, position, reply = await self._round_trip(command)
        if isinstance(reply, hiredis.ReplyError) and str(reply).startswith("NOSCRIPT"):
            # It did not run: load it (idempotent; several callers may) and send it again.
            loaded = await self.call("SCRIPT", "LOAD", script.source)
            if loaded != script.sha.encode():
                raise BrokerUnavailable(f"Redis {self.url} loaded the script as {loaded!r}")
            pipe, position, reply = await self._round_trip(command)
        return pipe, position, self._checked(pipe, reply, "EVALSHA")

    def after(self, sent: Sent, *command: Arg) -> tuple[Sent, asyncio.Future[Any]]:
        """Queue `command` on the connection `sent` went through, to run after it; its
        place and the future of its reply (an error reply is the result, not raised).

        Never on another connection: what must follow `sent` would not follow it there.
        Raises BrokerUnavailable when that connection is gone."""
        pipe = sent.pipe
        if pipe.lost or pipe is not self._pipe:
            raise BrokerUnavailable(f"the connection to {self.url} that ran the command is gone")
        future = pipe.send(command)
        return Sent(pipe, pipe.queued - 1), future

    def queue(self, *command: Arg) -> tuple[Sent, asyncio.Future[Any]] | None:
        """Queue `command` on the open connection, after what is queued there, without
        waiting; its place and the future of its reply (an error reply is the result).
        None, and nothing sent, when no connection is open."""
        pipe = self._pipe
        if pipe is None or pipe.lost:
            return None
        future = pipe.send(command)
        return Sent(pipe, pipe.queued - 1), future

    async def call(self, *command: Arg) -> Any:
        """`execute`, with an error reply raised as BrokerUnavailable."""
        pipe, _, reply = await self._round_trip(command)
        return self._checked(pipe, reply, str(command[0]))

    async def execute(self, *command: Arg) -> Any:
        """Send one command and wait for its reply (an error reply is returned, not raised).

        Fails with BrokerUnavailable when the connection cannot be opened, is lost, or no
        reply comes within the timeout. Cancelling the caller leaves the command in flight.
        """
        return (await self._round_trip(command))[2]

    async def _round_trip(self, command: tuple[Arg, ...]) -> tuple[_Pipe, int, Any]:
        """The connection that carried the command, its place there, and the reply."""
        pipe = self._pipe
        if pipe is None or pipe.lost:
            pipe = await self._connect()
        future = pipe.send(command)
        return pipe, pipe.queued - 1, await future

    def close(self) -> None:
        """Drop the connection; what is in flight fails with BrokerUnavailable."""
        self._closed = True
        if self._connecting is not None:
            self._connecting.cancel()
        if self._pipe is not None:
            self._pipe.abort(BrokerUnavailable("closed"))

    def _checked(self, pipe: _Pipe, reply: Any, what: str) -> Any:
        if isinstance(reply, hiredis.ReplyError):
            raise self._refused(pipe, str(reply), what)
        return reply

    def _refused(self, pipe: _Pipe, error: str, what: str) -> BrokerUnavailable:
        """The BrokerUnavailable for an error reply, worded for whoever reads the log."""
        kind = error.partition(" ")[0]
        if kind == "OOM":
            # maxmemory reached under noeviction: Redis refuses a script's first write, so
            # the publish stored nothing and a retry with the same id is safe. Every publish
            # of the pod may get this until memory is freed: one log line per interval.
            self._refused_full += 1
            now = asyncio.get_running_loop().time()
            if now - self._full_logged_at >= FULL_LOG_SECONDS:
                log.warning(
                    "Redis %s is full (maxmemory reached, policy noeviction): %d publishes "
                    "refused since the last line; free memory or raise maxmemory",
                    self.url,
                    self._refused_full,
                )
                self._full_logged_at, self._refused_full = now, 0
            return BrokerUnavailable(
                f"Redis {self.url} is full (maxmemory reached, noeviction): {what} refused, "
                f"nothing stored: {error}"
            )
        if kind == "READONLY":
            # A demoted master (Sentinel failover): drop the connection that reached it (not
            # a newer one), so the next command reconnects, which asks Sentinel again.
            pipe.abort(RuntimeError("the server is a read-only replica now"))
            return BrokerUnavailable(
                f"Redis {self.url} is a read-only replica now (failed over): {what} refused; "
                "the next command reconnects to the master"
            )
        if kind == "NOPERM":
            return BrokerUnavailable(f"Redis {self.url}: the ACL refused {what}: {error}")
        if kind in CLUSTER_REDIRECTS:
            return SlotMoved(f"Redis {self.url} refused {what}: {error}")
        return BrokerUnavailable(f"Redis {self.url} refused {what}: {error}")

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
        # redis-py opens the socket and runs the handshake (TLS, AUTH, SELECT; a Sentinel
        # shard's connection asks for the master and passes its fence first), bounded by the
        # command client's socket_connect_timeout and socket_timeout.
        kwargs = {**self._pool.connection_kwargs, "protocol": RESP_VERSION}
        connection: AbstractConnection = self._pool.connection_class(**kwargs)
        try:
            await connection.connect()  # type: ignore[no-untyped-call]
            return detach(connection, _Pipe(self.url, self._timeout))
        except (RedisError, OSError) as exc:
            with contextlib.suppress(Exception):
                await connection.disconnect()
            # Not repr(): redis-py 8's exceptions leave their message out of it.
            raise BrokerUnavailable(
                f"connecting to {self.url} failed: {type(exc).__name__}: {exc}"
            ) from exc


class _Detached(Protocol):
    """An asyncio protocol that keeps its transport and redis-py's writer."""

    transport: asyncio.Transport | None
    stream: asyncio.StreamWriter | None


P = TypeVar("P", bound=_Detached)


def detach(connection: AbstractConnection, pipe: P) -> P:
    """Take the transport from a connected redis-py connection: its bytes come to `pipe`
    (an asyncio protocol; this module's, or relay.broker.pubsub's).

    redis-py keeps the socket as an asyncio StreamReader/StreamWriter pair in the private
    `_reader` and `_writer` (redis==8.1.0 in pyproject.toml). What this relies on is checked
    here, every time, so that a redis-py that changed fails the connect with a clear error
    rather than losing or misreading bytes: the writer's transport (plain or TLS: asyncio's
    and uvloop's SSL transports both implement set_protocol) takes the new protocol, and
    nothing is left unread in the stream (the handshake read a reply to each of its
    commands, so any byte there would be out of step with our replies).
    """
    reader, writer = connection._reader, connection._writer
    if not isinstance(reader, asyncio.StreamReader) or not isinstance(writer, asyncio.StreamWriter):
        raise ConnectionError(
            f"redis-py's connection has no stream pair (_reader={type(reader).__name__}, "
            f"_writer={type(writer).__name__}): relay.broker.commands needs updating"
        )
    transport = writer.transport
    unread = len(getattr(reader, "_buffer", b""))
    if unread or reader.at_eof() or reader.exception() is not None or transport.is_closing():
        writer.close()
        connection._reader = connection._writer = None
        raise ConnectionError(
            f"the connection closed or left {unread} unread bytes after the handshake"
        )
    connection._reader = connection._writer = None  # detached: redis-py will not close it
    pipe.transport = transport  # type: ignore[assignment]
    pipe.stream = writer
    protocol = cast(asyncio.BaseProtocol, pipe)
    transport.set_protocol(protocol)
    if transport.get_protocol() is not protocol:
        transport.abort()
        raise ConnectionError(f"{type(transport).__name__} did not take the new protocol")
    return pipe
