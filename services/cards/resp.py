"""A minimal Redis client for the one command on Resolve's hot path (MGET of generation tokens).

redis-py's asyncio client spends about 250 us of CPU per call here (connection pool with a
condition variable, command packing, a general parser); this plain RESP2 connection spends about
60 us, which is a quarter of a Resolve. It is used by exactly one task at a time (the
generation reader in cache.py), so it needs no pool and no locking. Every failure closes the
connection (the next call reconnects) and is raised to the caller, who treats Redis as
unavailable for that read. Everything else in the service uses redis-py.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

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
        if endpoint.password:
            auth = [endpoint.username, endpoint.password] if endpoint.username else [endpoint.password]
            await self._round_trip(encode(["AUTH", *auth]))
        if endpoint.db:
            await self._round_trip(encode(["SELECT", str(endpoint.db)]))

    async def _round_trip(self, payload: bytes) -> Any:
        if self._writer is None or self._reader is None:
            raise RespError("not connected")
        self._writer.write(payload)
        return await _read_reply(self._reader)

    async def close(self) -> None:
        writer, self._reader, self._writer = self._writer, None, None
        if writer is not None:
            writer.close()


async def _read_reply(reader: asyncio.StreamReader) -> Any:
    line = await reader.readline()
    if not line.endswith(b"\r\n"):
        raise RespError("connection closed")
    kind, body = line[:1], line[1:-2]
    if kind == b"$":
        size = int(body)
        return None if size < 0 else (await reader.readexactly(size + 2))[:-2]
    if kind == b"*":
        count = int(body)
        return None if count < 0 else [await _read_reply(reader) for _ in range(count)]
    if kind == b"+":
        return body
    if kind == b":":
        return int(body)
    if kind == b"-":
        raise RespError(body.decode(errors="replace"))
    raise RespError(f"unexpected reply {line[:40]!r}")
