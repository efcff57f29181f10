"""The Resolve cache: in-process entries validated against generation tokens in Redis.

Why this is safe ("a block wins"):

* Every card and every member has a generation token in Redis (a random value). Every change
  that can alter a resolution (block, unblock, bind, replace, expiry; member block, close,
  profile changes) commits in PostgreSQL and THEN replaces the token with a new random value,
  before the RPC returns OK.
* An entry is stored together with the tokens of everything it depends on, read BEFORE the
  database read that produced it.
* An entry is served only if the tokens read AFTER the request arrived are equal to the stored
  ones. (One MGET, shared by the lookups that arrive before it is sent; under concurrent load a
  read waits up to 2 ms for company, so it costs a fraction of a round trip per request.)

So if BlockCard returned before a Resolve arrived, that Resolve reads the new token and cannot
use an entry made before it. The classic race - a Resolve reads the database before the block
commits and writes its stale result into the cache after the invalidation - cannot poison the
cache: the stale entry carries the token read before its database read, i.e. the old one, and
never validates again. Tokens that vanish (Redis restarted or the key expired) are recreated
with new random values, so entries made before never validate either. Every cards process has
its own entries and all share the tokens, so a block made through one process wins in all.

When Redis cannot be reached, Resolve reads the database (the truth) and caches nothing, and a
change that cannot replace its tokens fails with DEPENDENCY_UNAVAILABLE after its commit (a
retry with the same key repeats the invalidation). Entries also expire after `entry_ttl_s`.

Keys are one per card and member (`cards:gen:{c:<card id>}`, `cards:gen:{m:<member id>}`);
a read (MGET, and the script creating missing tokens) touches several at once, which needs a
single Redis node (a cluster would group them by slot).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

from prometheus_client import Counter
from redis.asyncio import Redis

from services.cards.domain.resolution import Identifier, Subject
from shared.resp import RespConnection

GENERATION_TTL_S = 86_400
READ_KEYS_MAX = 2048
# Under concurrent load (lookups closer than BUSY_INTERVAL_S apart on average, and often arriving
# while another one is still being read) a read waits two average intervals, at most
# COALESCE_WAIT_MAX_S, so that several lookups share one round trip: measured here at 64 in
# flight, about 3 lookups per read instead of 1, about 150 us of CPU less per Resolve and a lower
# p50, because the process is the bottleneck. A lone client (each lookup waits for the previous
# one's answer, so none overlaps another) never waits.
COALESCE_WAIT_MAX_S = 0.002
BUSY_INTERVAL_S = 0.001
OVERLAP_BUSY = 0.1

READ_BATCHES = Counter(
    "loyalty_cards_generation_reads_total", "Round trips to Redis reading generation tokens for Resolve."
)
READ_REQUESTS = Counter(
    "loyalty_cards_generation_read_requests_total",
    "Resolve lookups answered by those round trips (requests per round trip = this / reads).",
)

# Returns the token of every key, creating the missing ones with the random values passed in.
_READ_OR_CREATE = """
local ttl = ARGV[#KEYS + 1]
local tokens = {}
for i, key in ipairs(KEYS) do
  local token = redis.call('GET', key)
  if not token then
    token = ARGV[i]
    redis.call('SET', key, token, 'EX', ttl)
  end
  tokens[i] = token
end
return tokens
"""


def card_key(card_id: str) -> str:
    return f"cards:gen:{{c:{card_id}}}"


def member_key(member_id: str) -> str:
    return f"cards:gen:{{m:{member_id}}}"


def subject_keys(subject: Subject) -> tuple[str, ...]:
    """The generations a resolution of `subject` depends on."""
    keys = []
    if subject.card is not None:
        keys.append(card_key(subject.card.card_id))
    if subject.member is not None:
        keys.append(member_key(subject.member.member_id))
    return tuple(keys)


def _new_token() -> str:
    return os.urandom(8).hex()


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class Generations:
    """Generation tokens in Redis. Reads are coalesced: the lookups that arrive while one read is
    in flight (or while the reader waits for company) share the next one, which is sent only
    after all of them arrived - never an earlier one, which could miss a bump."""

    def __init__(self, redis: Redis, fast: RespConnection | None = None) -> None:
        self._redis = redis
        # The hot read (MGET) goes through a plain connection when there is one (resp.py).
        self._fast = fast
        self._script = redis.register_script(_READ_OR_CREATE)
        self._queue: deque[tuple[Sequence[str], asyncio.Future[dict[str, str]]]] = deque()
        self._wakeup = asyncio.Event()
        self._reader: asyncio.Task[None] | None = None
        # Moving averages of the time between lookups and of the share of lookups that arrive
        # while another is queued or being read; when the last one arrived; whether a read is on.
        self._interval_s = 1.0
        self._overlap = 0.0
        self._last_arrival = time.monotonic()
        self._reading = False

    async def read(self, keys: Sequence[str]) -> dict[str, str]:
        """The current token of every key, read after this call started."""
        if not keys:
            return {}
        now = time.monotonic()
        overlapped = 1.0 if self._queue or self._reading else 0.0
        self._interval_s = 0.9 * self._interval_s + 0.1 * (now - self._last_arrival)
        self._overlap = 0.9 * self._overlap + 0.1 * overlapped
        self._last_arrival = now
        future: asyncio.Future[dict[str, str]] = asyncio.get_running_loop().create_future()
        self._queue.append((keys, future))
        self._wakeup.set()
        if self._reader is None or self._reader.done():
            self._reader = asyncio.create_task(self._read_forever(), name="cards-generation-reader")
        return await future

    def coalescing_wait_s(self) -> float:
        """How long the next read waits for company (0 unless lookups are concurrent and dense)."""
        if self._interval_s < BUSY_INTERVAL_S and self._overlap > OVERLAP_BUSY:
            return min(COALESCE_WAIT_MAX_S, 2 * self._interval_s)
        return 0.0

    async def _read_forever(self) -> None:
        while True:
            await self._wakeup.wait()
            self._reading = True
            await asyncio.sleep(self.coalescing_wait_s())
            self._wakeup.clear()
            while self._queue:
                await self._read_batch()
            self._reading = False

    async def _read_batch(self) -> None:
        batch: list[tuple[Sequence[str], asyncio.Future[dict[str, str]]]] = []
        keys: dict[str, None] = {}
        while self._queue and len(keys) < READ_KEYS_MAX:
            item = self._queue.popleft()
            batch.append(item)
            keys.update(dict.fromkeys(item[0]))
        try:
            tokens = await self._tokens(list(keys))
        except Exception as error:  # handed to every waiter, who decides (Redis down: no cache)
            for _, future in batch:
                if not future.done():
                    future.set_exception(error)
            return
        READ_BATCHES.inc()
        READ_REQUESTS.inc(len(batch))
        for wanted, future in batch:
            if not future.done():
                future.set_result({key: tokens[key] for key in wanted})

    async def _tokens(self, names: list[str]) -> dict[str, str]:
        """The tokens of `names`: one MGET; the missing ones (new, expired, or lost with Redis)
        are created with new random values by the script, which keeps a token made meanwhile."""
        values = await self._fast.command("MGET", *names) if self._fast else await self._redis.mget(names)
        tokens = {name: _text(value) for name, value in zip(names, values, strict=True) if value is not None}
        missing = [name for name in names if name not in tokens]
        if missing:
            created = await self._script(keys=missing, args=[*(_new_token() for _ in missing), GENERATION_TTL_S])
            tokens.update((name, _text(value)) for name, value in zip(missing, created, strict=True))
        return tokens

    async def bump(self, keys: Sequence[str]) -> None:
        """Give every key a new random token: entries made before no longer validate."""
        if not keys:
            return
        async with self._redis.pipeline(transaction=False) as pipe:
            for key in dict.fromkeys(keys):
                pipe.set(key, _new_token(), ex=GENERATION_TTL_S)
            await pipe.execute()

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
        if self._fast is not None:
            await self._fast.close()


@dataclass(frozen=True)
class Entry:
    subject: Subject
    # (generation key, token read before the database read; None = not read, never valid).
    tokens: tuple[tuple[str, str | None], ...]
    stored_at: float

    @property
    def keys(self) -> tuple[str, ...]:
        return tuple(key for key, _ in self.tokens)

    def valid(self, current: dict[str, str]) -> bool:
        return all(token is not None and current.get(key) == token for key, token in self.tokens)


class LocalEntries:
    """This process's entries, bounded in number and age (oldest dropped first)."""

    def __init__(self, *, entries_max: int, entry_ttl_s: float) -> None:
        self._entries: dict[Identifier, Entry] = {}
        self.entries_max = entries_max
        self.entry_ttl_s = entry_ttl_s

    def get(self, identifier: Identifier) -> Entry | None:
        entry = self._entries.get(identifier)
        if entry is not None and time.monotonic() - entry.stored_at > self.entry_ttl_s:
            del self._entries[identifier]
            return None
        return entry

    def put(self, identifier: Identifier, subject: Subject, pre_read: dict[str, str]) -> None:
        """Store `subject` with the tokens read before it was read from the database; keys it
        depends on that were not read then get None (the entry only teaches the next request
        which keys to read)."""
        tokens = tuple((key, pre_read.get(key)) for key in subject_keys(subject))
        self._entries.pop(identifier, None)
        while len(self._entries) >= self.entries_max:
            del self._entries[next(iter(self._entries))]
        self._entries[identifier] = Entry(subject, tokens, time.monotonic())

    def drop(self, identifier: Identifier) -> None:
        self._entries.pop(identifier, None)

    def __len__(self) -> int:
        return len(self._entries)
