"""The Redis fast path of idempotency (DESIGN §2): completed responses cached for replays, and an
in-flight marker per key. PostgreSQL stays the truth; this only saves work.

    begin(scope, key)            one pipelined round trip: GET the cached response, SET NX the marker
      -> Cached(digest, bytes)   a completed request: the caller replays it (or refuses a different body)
      -> in flight               another request holds the marker: the caller answers ABORTED
      -> Miss(marked=True)       the caller runs; nothing is known about the key in Redis, so the
                                 database decides (its unique key is what makes the key have one effect)
    complete(...)                SET the response, DEL the marker; not awaited (see below)
    release(...)                 DEL the marker (the request ended without a response to cache)

The commands go through one connection shared by the whole process (shared/resp.py's
RespPipeline): concurrent requests share its writes, and Redis runs a process's commands in the
order they were sent. That is why `complete` is sent without waiting for its reply (a round trip
less on every write's answer): a retry of the key through this process is sent after it and sees
its effect; a retry through another process in the instant between may find the marker and get
ABORTED, which a register retries. If the process dies before the command leaves, the marker
expires with the lease, as it would after any crash.

Redis being slow or down never fails a request: any Redis error (or a call slower than
`timeout_s`) counts as a miss that holds no marker, and the database path answers as it always
would. A cached response lives `ttl_s` (the contract's 24 hours); the marker lives `lease_s`, so a
process that dies holding it blocks retries no longer than the database lease would.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from prometheus_client import Counter

from shared.resp import RespError, RespPipeline

log = logging.getLogger(__name__)

OUTCOMES = Counter(
    "loyalty_replay_cache_total",
    "Redis fast-path lookups of idempotency keys by outcome (hit, in_flight, miss, unavailable).",
    ["outcome"],
)
for _outcome in ("hit", "in_flight", "miss", "unavailable"):
    OUTCOMES.labels(_outcome)


@dataclass(frozen=True)
class Lookup:
    # A completed request's fingerprint and serialized response (None: not cached).
    digest: bytes | None = None
    response: bytes | None = None
    # Another request holds the key's marker.
    in_flight: bool = False
    # This request holds the marker: release or complete it.
    marked: bool = False


MISS_UNMARKED = Lookup()


class ReplayCache:
    def __init__(
        self, redis: RespPipeline | None, *, prefix: str, ttl_s: int, lease_s: float, timeout_s: float
    ) -> None:
        # None: no Redis this client can speak to (TLS); every lookup is a miss without a marker.
        self.redis = redis
        self.prefix = prefix
        self.ttl_s = ttl_s
        self.lease_ms = max(1, int(lease_s * 1000))
        self.timeout_s = timeout_s

    def _keys(self, scope: str, key: str) -> tuple[str, str]:
        # The hash tag keeps both keys of one idempotency key in one Redis Cluster slot.
        tag = f"{{{scope}:{key}}}"
        return f"{self.prefix}:done:{tag}", f"{self.prefix}:busy:{tag}"

    async def begin(self, scope: str, key: str) -> Lookup:
        done, busy = self._keys(scope, key)
        if self.redis is None:
            return MISS_UNMARKED
        try:
            async with asyncio.timeout(self.timeout_s):
                cached, marked = await self.redis.execute(
                    ("GET", done), ("SET", busy, b"1", "NX", "PX", str(self.lease_ms))
                )
            if isinstance(cached, RespError) or isinstance(marked, RespError):
                raise cached if isinstance(cached, RespError) else marked
        except (RespError, OSError, TimeoutError) as error:
            OUTCOMES.labels("unavailable").inc()
            log.debug("replay cache unavailable: %s", error)
            return MISS_UNMARKED
        if cached is not None:
            OUTCOMES.labels("hit").inc()
            if marked is not None:  # a completed key: the marker is not needed
                await self._send(("DEL", busy))
            digest, _, response = bytes(cached).partition(b":")
            return Lookup(digest=bytes.fromhex(digest.decode()), response=response)
        if marked is None:
            OUTCOMES.labels("in_flight").inc()
            return Lookup(in_flight=True)
        OUTCOMES.labels("miss").inc()
        return Lookup(marked=True)

    async def complete(self, scope: str, key: str, digest: bytes, response: bytes) -> None:
        done, busy = self._keys(scope, key)
        await self._send(("SET", done, digest.hex().encode() + b":" + response, "EX", str(self.ttl_s)), ("DEL", busy))

    async def release(self, scope: str, key: str) -> None:
        await self._send(("DEL", self._keys(scope, key)[1]))

    async def _send(self, *commands: tuple[str | bytes, ...]) -> None:
        """Queue commands whose replies we need not wait for; Redis failing here costs nothing:
        the database has the response, and a marker left behind expires with the lease."""
        if self.redis is None:
            return
        try:
            async with asyncio.timeout(self.timeout_s):
                await self.redis.send(*commands)
        except (RespError, OSError, TimeoutError) as error:
            log.debug("replay cache unavailable: %s", error)
