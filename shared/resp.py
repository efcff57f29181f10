"""A minimal Redis client (RESP2) for the two hot paths where redis-py's cost shows.

redis-py's asyncio client spends about 250 us of CPU per call here (a connection pool with a
condition variable, command packing, a general parser, retries, event hooks); a plain RESP
connection spends about 60 us. Two shapes:

* `RespConnection` - one caller at a time, one round trip per command (the cards service's
  generation reader, which coalesces its callers itself).
* `RespPipeline` - one connection shared by every task of a process: each caller's commands are
  appended to a write buffer flushed once per event-loop turn, and a reader task hands the replies,
  which Redis sends in order, back to their callers. Concurrent requests share system calls and
  round trips without waiting for a timer; `send` queues commands whose replies nobody awaits
  (they still keep their place in the order: a later command of this process sees their effect).

Both follow redis-py's connection settings (so one configuration serves both) and close the
connection on any failure (the next call reconnects). An error reply to one command (`-ERR ...`)
is that command's result as a `RespError`, and the connection stays usable. Everything else in
the services uses redis-py.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import Redis

TEXT_LINE_MAX = 1024 * 1024


class RespError(Exception):
    """Redis answered with an error, or the connection broke mid-answer."""


@dataclass(frozen=True, kw_only=True)
class Endpoint:
    host: str = "127.0.0.1"
    port: int = 6379
    path: str = ""  # a unix socket, when set
    db: int = 0
    username: str = ""
    password: str = ""
    timeout_s: float = 1.0

    @classmethod
    def from_kwargs(cls, kwargs: Mapping[str, Any], *, timeout_s: float) -> Endpoint:
        """From redis-py's connection_kwargs (so both clients follow the same configuration)."""
        return cls(
            host=str(kwargs.get("host") or "127.0.0.1"),
            port=int(kwargs.get("port") or 6379),
            path=str(kwargs.get("path") or ""),
            db=int(kwargs.get("db") or 0),
            username=str(kwargs.get("username") or ""),
            password=str(kwargs.get("password") or ""),
            timeout_s=timeout_s,
        )


def endpoint_of(redis: Redis, *, timeout_s: float) -> Endpoint | None:
    """The endpoint of a redis-py client's server, or None when it speaks TLS (these clients don't)."""
    pool = redis.connection_pool
    if "ssl" in pool.connection_class.__name__.lower():
        return None
    return Endpoint.from_kwargs(pool.connection_kwargs, timeout_s=timeout_s)


def encode(parts: Sequence[bytes | str]) -> bytes:
    chunks = [b"*%d\r\n" % len(parts)]
    for part in parts:
        data = part.encode() if isinstance(part, str) else part
        chunks.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(chunks)


class RespConnection:
    def __init__(self, endpoint: Endpoint) -> None:
        self._endpoint = endpoint
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def command(self, *parts: bytes | str) -> Any:
        try:
            async with asyncio.timeout(self._endpoint.timeout_s):
                if self._writer is None:
                    await self._connect()
                return await self._round_trip(encode(parts))
        except BaseException:
            await self.close()
            raise

    async def _connect(self) -> None:
        endpoint = self._endpoint
        if endpoint.path:
            self._reader, self._writer = await asyncio.open_unix_connection(endpoint.path, limit=TEXT_LINE_MAX)
        else:
            self._reader, self._writer = await asyncio.open_connection(
                endpoint.host, endpoint.port, limit=TEXT_LINE_MAX
            )
        for command in _handshake(endpoint):
            await self._round_trip(encode(command))

    async def _round_trip(self, payload: bytes) -> Any:
        if self._writer is None or self._reader is None:
            raise RespError("not connected")
        self._writer.write(payload)
        return await _read_reply(self._reader)

    async def close(self) -> None:
        writer, self._reader, self._writer = self._writer, None, None
        if writer is not None:
            writer.close()


async def _read_reply(reader: asyncio.StreamReader, *, errors_as_values: bool = False) -> Any:
    """One reply; an error reply is raised, or returned as a RespError with `errors_as_values`
    (a pipeline must read every reply to stay in step)."""
    line = await reader.readline()
    if not line.endswith(b"\r\n"):
        raise RespError("connection closed")
    kind, body = line[:1], line[1:-2]
    if kind == b"$":
        size = int(body)
        return None if size < 0 else (await reader.readexactly(size + 2))[:-2]
    if kind == b"*":
        count = int(body)
        return (
            None if count < 0 else [await _read_reply(reader, errors_as_values=errors_as_values) for _ in range(count)]
        )
    if kind == b"+":
        return body
    if kind == b":":
        return int(body)
    if kind == b"-":
        error = RespError(body.decode(errors="replace"))
        if errors_as_values:
            return error
        raise error
    raise RespError(f"unexpected reply {line[:40]!r}")


@dataclass
class _Waiter:
    """The replies one caller expects, in order; a waiter nobody awaits (`send`, or a caller
    that gave up) still takes its replies off the connection, so the ones after it stay in step."""

    expected: int
    future: asyncio.Future[list[Any]] | None
    replies: list[Any] = field(default_factory=list)


class RespPipeline:
    """One Redis connection multiplexed among the tasks of a process (see the module docstring)."""

    def __init__(self, endpoint: Endpoint) -> None:
        self._endpoint = endpoint
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._connecting: asyncio.Future[None] | None = None
        self._waiters: deque[_Waiter] = deque()
        self._buffer: list[bytes] = []
        self._flush_scheduled = False

    async def execute(self, *commands: Sequence[bytes | str]) -> list[Any]:
        """Send the commands (one after another, nothing in between from this process) and
        return their replies; an error reply is a `RespError` in its place. Raises RespError or
        OSError when the connection fails, TimeoutError after the endpoint's timeout."""
        try:
            async with asyncio.timeout(self._endpoint.timeout_s):
                await self._connected()
                future: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
                self._enqueue(commands, future)
                return await future
        except TimeoutError:
            # A Redis this slow is treated as gone: dropping the connection fails the other
            # waiters at once (they would time out too) and bounds what a hung server makes us keep.
            self._drop(RespError("Redis did not answer in time"))
            raise

    async def send(self, *commands: Sequence[bytes | str]) -> None:
        """Queue the commands without waiting for their replies (errors are only logged by the
        caller's next `execute`, which fails the same way if the connection broke)."""
        async with asyncio.timeout(self._endpoint.timeout_s):
            await self._connected()
        self._enqueue(commands, None)

    def _enqueue(self, commands: Sequence[Sequence[bytes | str]], future: asyncio.Future[list[Any]] | None) -> None:
        self._waiters.append(_Waiter(len(commands), future))
        self._buffer.extend(encode(command) for command in commands)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self._writer is None or not self._buffer:
            return
        payload, self._buffer = b"".join(self._buffer), []
        self._writer.write(payload)

    async def _connected(self) -> None:
        if self._writer is not None:
            return
        if self._connecting is None:  # one connect for all the callers that find it closed
            self._connecting = asyncio.ensure_future(self._connect())
        connecting = self._connecting
        try:
            await asyncio.shield(connecting)
        finally:
            if connecting.done() and self._connecting is connecting:
                self._connecting = None

    async def _connect(self) -> None:
        endpoint = self._endpoint
        if endpoint.path:
            reader, writer = await asyncio.open_unix_connection(endpoint.path, limit=TEXT_LINE_MAX)
        else:
            reader, writer = await asyncio.open_connection(endpoint.host, endpoint.port, limit=TEXT_LINE_MAX)
        try:
            for command in _handshake(endpoint):
                writer.write(encode(command))
                await _read_reply(reader)
        except BaseException:
            writer.close()
            raise
        self._writer = writer
        self._reader_task = asyncio.get_running_loop().create_task(self._read_replies(reader, writer))

    async def _read_replies(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                reply = await _read_reply(reader, errors_as_values=True)
                if not self._waiters:
                    raise RespError("a reply nobody asked for")
                waiter = self._waiters[0]
                waiter.replies.append(reply)
                if len(waiter.replies) == waiter.expected:
                    self._waiters.popleft()
                    if waiter.future is not None and not waiter.future.done():
                        waiter.future.set_result(waiter.replies)
        except asyncio.CancelledError:
            self._fail(writer, RespError("the connection was closed"))
            raise
        except (RespError, OSError, ValueError, asyncio.IncompleteReadError) as error:
            failure = error if isinstance(error, RespError) else RespError(f"the connection broke: {error!r}")
            self._fail(writer, failure)

    def _fail(self, writer: asyncio.StreamWriter, error: RespError) -> None:
        """The connection is gone: every caller still waiting gets the error, the next call
        reconnects (commands queued for the broken connection may or may not have run)."""
        writer.close()
        if self._writer is not writer:
            return  # an older connection's reader ending after a newer connection took over
        self._writer = None
        self._buffer.clear()
        waiters, self._waiters = self._waiters, deque()
        for waiter in waiters:
            if waiter.future is not None and not waiter.future.done():
                waiter.future.set_exception(error)

    def _drop(self, error: RespError) -> None:
        if self._writer is not None:
            self._fail(self._writer, error)
        if self._reader_task is not None:
            self._reader_task.cancel()
            self._reader_task = None

    async def close(self) -> None:
        task = self._reader_task
        self._drop(RespError("the connection was closed"))
        if task is not None:
            await asyncio.gather(task, return_exceptions=True)


def _handshake(endpoint: Endpoint) -> list[list[str]]:
    commands = []
    if endpoint.password:
        commands.append(
            ["AUTH", endpoint.username, endpoint.password] if endpoint.username else ["AUTH", endpoint.password]
        )
    if endpoint.db:
        commands.append(["SELECT", str(endpoint.db)])
    return commands
