"""The Resolve cache against a real Redis (its own server here, so that its command counts are
ours): the classic race - a Resolve that read the database before the block committed writes
its stale result into the cache after the invalidation - cannot make a stale entry valid, in
this process or another; lost tokens (a Redis restart) invalidate everything; token reads are
coalesced but never answered by a read sent before the request arrived.

The interleavings are driven step by step, as the two racing requests would run them."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
from redis.asyncio import Redis

from services.cards.cache import Generations, LocalEntries, card_key, member_key
from services.cards.domain.model import CardState
from services.cards.domain.resolution import Identifier, Lookup, Subject
from shared.embedded import EmbeddedRedis, free_port
from shared.resp import Endpoint, RespConnection, RespError
from tests.unit.cards.test_lifecycle_table import MEMBER_ID, card, member

ACTIVE = Subject("p1", card(CardState.ACTIVE, bound_to=MEMBER_ID), member())
NUMBER = Identifier("p1", Lookup.CARD_NUMBER, "7788000000000006")
KEYS = [card_key(ACTIVE.card.card_id), member_key(MEMBER_ID)]  # type: ignore[union-attr]


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedis]:
    server = EmbeddedRedis(Path(tmp_path_factory.mktemp("cache-redis")), free_port()).start()
    yield server
    server.stop()


@pytest.fixture
async def redis(redis_server: EmbeddedRedis) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_server.url)
    await client.flushall()
    yield client
    await client.aclose()


@pytest.fixture(params=["redis-py", "resp"])
def make_generations(
    request: pytest.FixtureRequest, redis: Redis, redis_server: EmbeddedRedis
) -> Callable[[], Generations]:
    """Generations reading through redis-py, or through the plain connection of the hot path."""

    def make() -> Generations:
        if request.param == "redis-py":
            return Generations(redis)
        return Generations(redis, RespConnection(Endpoint(port=redis_server.port, timeout_s=2)))

    return make


def entries() -> LocalEntries:
    return LocalEntries(entries_max=100, entry_ttl_s=60)


async def served(cache: LocalEntries, generations: Generations, identifier: Identifier) -> Subject | None:
    """What Resolve would serve from the cache now: the entry if the tokens read now match."""
    entry = cache.get(identifier)
    if entry is None:
        return None
    return entry.subject if entry.valid(await generations.read(entry.keys)) else None


async def test_an_entry_filled_with_tokens_read_before_the_database_read_is_served(
    make_generations: Callable[[], Generations],
) -> None:
    generations, cache = make_generations(), entries()
    pre_read = await generations.read(KEYS)
    cache.put(NUMBER, ACTIVE, pre_read)
    assert await served(cache, generations, NUMBER) == ACTIVE
    await generations.close()


async def test_a_stale_fill_after_the_invalidation_is_never_served(make_generations: Callable[[], Generations]) -> None:
    generations, cache = make_generations(), entries()
    # Resolve: reads the tokens, then the database - before the block commits: ACTIVE.
    pre_read = await generations.read(KEYS)
    stale = ACTIVE
    # BlockCard: commits, replaces the card's token, returns OK.
    await generations.bump([KEYS[0]])
    # Resolve, late: stores what it read. The entry carries the old token.
    cache.put(NUMBER, stale, pre_read)
    assert await served(cache, generations, NUMBER) is None
    await generations.close()


async def test_a_block_through_one_process_invalidates_the_entries_of_another(
    make_generations: Callable[[], Generations],
) -> None:
    mine, theirs = make_generations(), make_generations()  # each process has its own connections
    their_cache = entries()
    their_cache.put(NUMBER, ACTIVE, await theirs.read(KEYS))
    assert await served(their_cache, theirs, NUMBER) == ACTIVE
    await mine.bump([member_key(MEMBER_ID)])  # BlockMember through the first process
    assert await served(their_cache, theirs, NUMBER) is None
    await mine.close()
    await theirs.close()


async def test_tokens_lost_with_redis_never_validate_older_entries(
    redis: Redis, make_generations: Callable[[], Generations]
) -> None:
    generations, cache = make_generations(), entries()
    cache.put(NUMBER, ACTIVE, await generations.read(KEYS))
    await redis.flushall()  # a Redis restarted empty: tokens are created again, at random
    assert await served(cache, generations, NUMBER) is None
    await generations.close()


async def test_keys_not_read_before_the_database_read_make_an_entry_that_only_teaches_keys(
    make_generations: Callable[[], Generations],
) -> None:
    generations, cache = make_generations(), entries()
    cache.put(NUMBER, ACTIVE, {})  # the first lookup of a number: its ids were unknown before
    entry = cache.get(NUMBER)
    assert entry is not None and set(entry.keys) == set(KEYS)
    assert await served(cache, generations, NUMBER) is None
    await generations.close()


async def test_reads_are_coalesced_but_never_answered_by_an_earlier_round_trip(
    redis: Redis, make_generations: Callable[[], Generations]
) -> None:
    generations = make_generations()
    before = await _read_calls(redis)
    results = await asyncio.gather(*(generations.read([card_key(f"card-{i}")]) for i in range(200)))
    assert all(len(r) == 1 for r in results)
    calls = await _read_calls(redis) - before
    assert 1 <= calls <= 10, f"{calls} round trips for 200 concurrent reads"
    # A read that starts after a bump returned sees the new token, even with a read in flight.
    key = KEYS[0]
    old = (await generations.read([key]))[key]
    in_flight = asyncio.create_task(generations.read([key]))
    await asyncio.sleep(0)
    bumper = make_generations()
    await bumper.bump([key])
    after = (await generations.read([key]))[key]
    assert after != old
    await in_flight
    await generations.close()
    await bumper.close()


async def _read_calls(redis: Redis) -> int:
    stats = await redis.info("commandstats")
    return sum(int(stats.get(name, {}).get("calls", 0)) for name in ("cmdstat_mget", "cmdstat_evalsha", "cmdstat_eval"))


async def test_the_plain_connection_reconnects_after_redis_dropped_it(
    redis: Redis, redis_server: EmbeddedRedis
) -> None:
    connection = RespConnection(Endpoint(port=redis_server.port, timeout_s=2))
    await redis.set("k", "v")
    assert await connection.command("MGET", "k", "missing") == [b"v", None]
    await redis.client_kill_filter(_type="normal", skipme=True)
    with pytest.raises((RespError, OSError)):
        await connection.command("MGET", "k")
    assert await connection.command("MGET", "k") == [b"v"]
    with pytest.raises(RespError):
        await connection.command("NOSUCHCOMMAND")
    await connection.close()


async def test_only_concurrent_lookups_wait_for_company(make_generations: Callable[[], Generations]) -> None:
    generations = make_generations()
    for i in range(50):  # a lone client: each lookup after the previous one's answer
        await generations.read([card_key(f"lone-{i}")])
        assert generations.coalescing_wait_s() == 0
    await asyncio.gather(*(generations.read([card_key(f"busy-{i}")]) for i in range(50)))
    assert 0 < generations.coalescing_wait_s() <= 0.002
    await generations.close()
