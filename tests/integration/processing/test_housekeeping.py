"""Processing's housekeeping on the real database: offline cancels whose purchase never came are
forgotten once no program could still accept that purchase, oldest first and a bounded batch at a
time; younger ones stay and still void their purchase."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import timedelta

import asyncpg
import pytest

from services.processing.api import EARLY_CANCEL_RETENTION
from services.processing.program_mapping import OFFLINE_MAX_AGE_MAX
from services.processing.store import operations as store
from shared.db import Connection
from tests.harness import Infra
from tests.integration.processing.test_sale_writes import new_sale


@pytest.fixture
async def pool(infra: Infra) -> AsyncIterator[asyncpg.Pool]:
    pool = await asyncpg.create_pool(infra.database_url("processing"), min_size=1, max_size=2)
    yield pool
    await pool.close()


async def remember_cancel(connection: Connection, terminal_id: str, *, age: timedelta) -> str:
    receipt_id = f"R-{uuid.uuid4().hex[:8]}"
    purchase = await store.purchase_to_cancel(
        connection, terminal_id=terminal_id, receipt_id=receipt_id, cancel_operation_id=f"op_{uuid.uuid4().hex}"
    )
    assert purchase is None  # no purchase yet: the cancel is remembered
    await connection.execute(
        "UPDATE early_cancels SET create_time = now() - $3::interval WHERE terminal_id = $1 AND receipt_id = $2",
        terminal_id,
        receipt_id,
        age,
    )
    return receipt_id


async def remembered(connection: Connection, terminal_id: str) -> set[str]:
    rows = await connection.fetch("SELECT receipt_id FROM early_cancels WHERE terminal_id = $1", terminal_id)
    return {row["receipt_id"] for row in rows}


async def test_cancels_past_every_offline_limit_are_forgotten_oldest_first(pool: asyncpg.Pool) -> None:
    assert EARLY_CANCEL_RETENTION > OFFLINE_MAX_AGE_MAX  # a purchase no program accepts any more
    terminal_id = f"T-{uuid.uuid4().hex[:8]}"
    async with pool.acquire() as connection:
        oldest = await remember_cancel(connection, terminal_id, age=EARLY_CANCEL_RETENTION + timedelta(days=30))
        old = await remember_cancel(connection, terminal_id, age=EARLY_CANCEL_RETENTION + timedelta(days=1))
        young = await remember_cancel(connection, terminal_id, age=EARLY_CANCEL_RETENTION - timedelta(days=1))
        fresh = await remember_cancel(connection, terminal_id, age=timedelta(seconds=1))

        assert await store.purge_early_cancels(connection, older_than=EARLY_CANCEL_RETENTION, limit=1) == 1
        assert await remembered(connection, terminal_id) == {old, young, fresh}
        assert await store.purge_early_cancels(connection, older_than=EARLY_CANCEL_RETENTION, limit=100) == 1
        assert await remembered(connection, terminal_id) == {young, fresh}
        assert await store.purge_early_cancels(connection, older_than=EARLY_CANCEL_RETENTION, limit=100) == 0

        # A cancel still remembered voids its purchase; a forgotten one no longer can.
        inserted, cancelled_by = await store.insert_offline_sale(
            connection, new_sale(terminal_id=terminal_id, receipt_id=young)
        )
        assert (inserted, cancelled_by is not None) == (False, True)
        inserted, cancelled_by = await store.insert_offline_sale(
            connection, new_sale(terminal_id=terminal_id, receipt_id=oldest)
        )
        assert (inserted, cancelled_by) == (True, None)
