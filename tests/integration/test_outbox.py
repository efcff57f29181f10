"""The outbox relay on real PostgreSQL and Redis: committed events reach the stream once per
relay round, rolled-back ones never, and two relays never publish the same row twice at once."""

from __future__ import annotations

import asyncio
import json
import uuid

import asyncpg
import pytest
from redis.asyncio import Redis

from shared import outbox
from tests.harness import Infra


@pytest.fixture
async def pool(infra: Infra):  # type: ignore[no-untyped-def]
    pool = await asyncpg.create_pool(infra.database_url("processing"), min_size=1, max_size=4)
    async with pool.acquire() as connection:
        await connection.execute("DELETE FROM outbox")
    yield pool
    await pool.close()


@pytest.fixture
async def redis(infra: Infra):  # type: ignore[no-untyped-def]
    client = Redis.from_url(infra.redis_url)
    await client.delete(outbox.STREAM)
    yield client
    await client.aclose()


async def test_committed_events_are_published_once_and_rolled_back_ones_never(pool, redis) -> None:  # type: ignore[no-untyped-def]
    member = f"m-{uuid.uuid4().hex[:8]}"
    async with pool.acquire() as connection, connection.transaction():
        kept = await outbox.add_event(connection, event_type="points.accrued", partition_key=member, data={"points": 5})
    async with pool.acquire() as connection:
        transaction = connection.transaction()
        await transaction.start()
        await outbox.add_event(connection, event_type="points.accrued", partition_key=member, data={"points": 7})
        await transaction.rollback()  # the change failed, so its event must not exist
    assert await outbox.relay_once(pool, redis, source="processing") == 1
    assert await outbox.relay_once(pool, redis, source="processing") == 0
    entries = await redis.xrange(outbox.STREAM)
    assert len(entries) == 1
    fields = entries[0][1]
    assert fields[b"event_id"].decode() == str(kept)
    assert fields[b"source"] == b"processing"
    assert json.loads(fields[b"payload"]) == {"points": 5}


async def test_two_relays_share_the_backlog_without_duplicates(pool, redis) -> None:  # type: ignore[no-untyped-def]
    async with pool.acquire() as connection, connection.transaction():
        for index in range(1200):
            await outbox.add_event(connection, event_type="refund", partition_key="m", data={"index": index})
    totals = await asyncio.gather(
        *(outbox.relay_once(pool, redis, source="processing", batch_size=100) for _ in range(20))
    )
    while sum(totals) < 1200:
        published = await outbox.relay_once(pool, redis, source="processing")
        assert published > 0
        totals.append(published)
    entries = await redis.xrange(outbox.STREAM)
    indexes = [json.loads(fields[b"payload"])["index"] for _, fields in entries]
    assert sorted(indexes) == list(range(1200))
