"""The outbox relay on real PostgreSQL and Redis: committed events reach the stream once per
relay round, rolled-back ones never, and two relays never publish the same row twice at once."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from datetime import timedelta

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


async def test_published_rows_past_the_retention_are_purged_oldest_first_and_unpublished_never(pool) -> None:  # type: ignore[no-untyped-def]
    async with pool.acquire() as connection, connection.transaction():
        ids = [
            await outbox.add_event(connection, event_type="points.accrued", partition_key="m", data={"index": index})
            for index in range(6)
        ]
        # Two published 5 and 4 days ago, one just inside the retention, one a minute ago; two not
        # published at all, one of them written a week ago (a relay that was down for long).
        ages = {
            ids[0]: timedelta(days=5),
            ids[1]: timedelta(days=4),
            ids[2]: outbox.PUBLISHED_RETENTION - timedelta(hours=1),
            ids[3]: timedelta(minutes=1),
        }
        for event_id, age in ages.items():
            await connection.execute(
                "UPDATE outbox SET published_at = now() - $2::interval WHERE event_id = $1", event_id, age
            )
        await connection.execute("UPDATE outbox SET created_at = now() - interval '7 days' WHERE event_id = $1", ids[4])

    async def remaining() -> set[uuid.UUID]:
        async with pool.acquire() as connection:
            return {row["event_id"] for row in await connection.fetch("SELECT event_id FROM outbox")}

    assert await outbox.purge_published(pool, limit=1) == 1
    assert await remaining() == set(ids) - {ids[0]}  # the oldest first
    assert await outbox.purge_published(pool) == 1
    assert await remaining() == {ids[2], ids[3], ids[4], ids[5]}
    assert await outbox.purge_published(pool) == 0


async def test_the_purge_reads_the_index_not_the_rows_it_keeps(pool) -> None:  # type: ignore[no-untyped-def]
    async with pool.acquire() as connection:
        await connection.execute("SET enable_seqscan = off")  # as on a big table: would it scan?
        try:
            plan = await connection.fetchval(
                """EXPLAIN (FORMAT JSON) SELECT id FROM outbox WHERE published_at < now() - $1::interval
                   ORDER BY published_at LIMIT $2""",
                outbox.PUBLISHED_RETENTION,
                outbox.PURGE_BATCH_SIZE,
            )
        finally:
            await connection.execute("RESET enable_seqscan")
    assert "outbox_published" in json.dumps(json.loads(plan))


async def test_the_relay_purges_as_it_goes(pool, redis, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(outbox, "PURGE_INTERVAL_S", 0.0)
    async with pool.acquire() as connection, connection.transaction():
        old = await outbox.add_event(connection, event_type="points.accrued", partition_key="m", data={})
        new = await outbox.add_event(connection, event_type="points.accrued", partition_key="m", data={})
    relay = asyncio.create_task(outbox.run_relay(pool, redis, source="processing", interval_s=0.05))
    try:
        async with pool.acquire() as connection:
            for _ in range(100):  # published within a round; then aged past the retention
                if await connection.fetchval("SELECT count(*) FROM outbox WHERE published_at IS NULL") == 0:
                    break
                await asyncio.sleep(0.05)
            await connection.execute(
                "UPDATE outbox SET published_at = now() - $2::interval WHERE event_id = $1",
                old,
                outbox.PUBLISHED_RETENTION + timedelta(minutes=1),
            )
            for _ in range(100):
                kept = {row["event_id"] for row in await connection.fetch("SELECT event_id FROM outbox")}
                if kept == {new}:
                    break
                await asyncio.sleep(0.05)
    finally:
        relay.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await relay
    assert kept == {new}
    assert len(await redis.xrange(outbox.STREAM)) == 2
