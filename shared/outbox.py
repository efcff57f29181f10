"""The transactional outbox (DESIGN §2) and its relay to Redis Streams.

A service writes an event row with `add_event` in the same transaction as the change the event
describes, so an event exists if and only if its change committed. The relay (one task per
process; several processes may run it) publishes unpublished rows in id order to the Redis stream
`loyalty:events` and marks them. Rows are claimed with FOR UPDATE SKIP LOCKED, so two relays never
publish the same row at the same time; a crash between XADD and the mark publishes the row again
on the next round, which consumers absorb by dropping duplicate `event_id`s.

Published rows are kept `PUBLISHED_RETENTION` (to reconcile a consumer against what was
published, or to publish again by hand), then the relay deletes them, a bounded batch at a time
(unpublished rows are never deleted).

Stream entry fields: `event_id` (uuid), `event_type` (e.g. "points.accrued"), `partition_key`
(the member the event is about), `source` (the producing service), `payload` (a UTF-8 JSON object
with the event's data, the variables loyalty.notifications.v1.EventType lists for its type).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import Mapping
from datetime import timedelta
from typing import Any

import asyncpg
from redis.asyncio import Redis
from redis.exceptions import RedisError

from shared.db import Connection

log = logging.getLogger(__name__)

STREAM = "loyalty:events"
# Redis trims the stream to about this many entries (consumers that fall further behind than this
# lose events: size it to hours of traffic).
STREAM_LENGTH_MAX = 1_000_000
RELAY_BATCH_SIZE = 500
PUBLISHED_RETENTION = timedelta(days=3)
PURGE_BATCH_SIZE = 10_000
PURGE_INTERVAL_S = 60.0


def event_row(
    *, event_type: str, partition_key: str, data: Mapping[str, Any], event_id: uuid.UUID | None = None
) -> tuple[uuid.UUID, str, str, bytes]:
    """The values of one outbox row, for callers that insert events inside their own statement."""
    payload = json.dumps(data, separators=(",", ":"), sort_keys=True).encode()
    return event_id or uuid.uuid4(), event_type, partition_key, payload


async def add_event(
    connection: Connection,
    *,
    event_type: str,
    partition_key: str,
    data: Mapping[str, Any],
    event_id: uuid.UUID | None = None,
) -> uuid.UUID:
    """Record an event in the caller's transaction. Returns its event_id."""
    row = event_row(event_type=event_type, partition_key=partition_key, data=data, event_id=event_id)
    await connection.execute(
        "INSERT INTO outbox (event_id, event_type, partition_key, payload) VALUES ($1, $2, $3, $4)", *row
    )
    return row[0]


async def relay_once(pool: asyncpg.Pool, redis: Redis, *, source: str, batch_size: int = RELAY_BATCH_SIZE) -> int:
    """Publish one batch of unpublished events; returns how many were published."""
    async with pool.acquire() as connection, connection.transaction():
        rows = await connection.fetch(
            """SELECT id, event_id, event_type, partition_key, payload FROM outbox
               WHERE published_at IS NULL ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED""",
            batch_size,
        )
        if not rows:
            return 0
        async with redis.pipeline(transaction=False) as pipe:
            for row in rows:
                pipe.xadd(
                    STREAM,
                    {
                        "event_id": str(row["event_id"]),
                        "event_type": row["event_type"],
                        "partition_key": row["partition_key"],
                        "source": source,
                        "payload": bytes(row["payload"]),
                    },
                    maxlen=STREAM_LENGTH_MAX,
                    approximate=True,
                )
            await pipe.execute()
        await connection.execute(
            "UPDATE outbox SET published_at = now() WHERE id = ANY($1::bigint[])", [row["id"] for row in rows]
        )
        return len(rows)


async def purge_published(
    pool: asyncpg.Pool, *, older_than: timedelta = PUBLISHED_RETENTION, limit: int = PURGE_BATCH_SIZE
) -> int:
    """Delete up to `limit` rows published more than `older_than` ago, oldest first (through the
    outbox_published index: the rows kept are never read); returns how many."""
    async with pool.acquire() as connection:
        status = await connection.execute(
            """DELETE FROM outbox WHERE id IN (
                   SELECT id FROM outbox WHERE published_at < now() - $1::interval ORDER BY published_at LIMIT $2)""",
            older_than,
            limit,
        )
    return int(status.split()[-1])


async def run_relay(pool: asyncpg.Pool, redis: Redis, *, source: str, interval_s: float) -> None:
    """Publish events until cancelled: at once while there is a backlog, then every interval.
    Every PURGE_INTERVAL_S, also delete a batch of rows published long enough ago."""
    purged_at = time.monotonic()
    while True:
        try:
            published = await relay_once(pool, redis, source=source)
            if time.monotonic() - purged_at >= PURGE_INTERVAL_S:
                purged_at = time.monotonic()
                await purge_published(pool)
        except asyncio.CancelledError:
            raise
        except (RedisError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as error:
            log.warning("outbox relay: %s; retrying in %.1f s", error, interval_s)
            published = 0
        if published < RELAY_BATCH_SIZE:
            await asyncio.sleep(interval_s)
