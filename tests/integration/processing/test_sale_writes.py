"""A sale's two writes, batched across concurrent sales (services/processing/writes.py), on the
real processing database: a batch gives each sale exactly the answer it would get alone (its
row, or None when its key or receipt is taken, also by a sale earlier in the same batch), member
statistics of several sales in one batch add up as if written one by one, and one sale's bad
row fails only that sale."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, date, datetime
from typing import Any

import asyncpg
import pytest

from services.processing.domain.operations import OperationState, OperationType
from services.processing.store import operations as store
from services.processing.writes import SaleWrites
from shared import outbox
from shared.db import Connection
from tests.harness import Infra


@pytest.fixture
async def pool(infra: Infra) -> AsyncIterator[asyncpg.Pool]:
    pool = await asyncpg.create_pool(infra.database_url("processing"), min_size=1, max_size=4)
    yield pool
    await pool.close()


def new_sale(*, terminal_id: str = "", key: str = "", receipt_id: str = "", member_id: str = "m") -> store.NewOperation:
    operation_id = f"op_{uuid.uuid4().hex}"
    return store.NewOperation(
        operation_id=operation_id,
        type=OperationType.PURCHASE,
        state=OperationState.PROCESSING,
        terminal_id=terminal_id or f"T-{uuid.uuid4().hex[:8]}",
        outlet_id="O-1",
        partner_id="P-1",
        member_id=member_id,
        receipt_id=receipt_id or f"R-{uuid.uuid4().hex[:8]}",
        idempotency_key=key or uuid.uuid4().hex,
        request_hash=b"digest",
        method="Purchase",
        offline=False,
        original_operation_id=None,
        effective_time=datetime.now(UTC),
        lease_s=10.0,
        expire_time=None,
        operation=b"operation-" + operation_id.encode(),
        receipt=b"receipt",
        plan=store.NO_PLAN,
        postings=[],
    )


async def member_stats(connection: Connection, member_id: str) -> Any:
    record = await connection.fetchrow("SELECT * FROM member_stats WHERE member_id = $1", member_id)
    assert record is not None
    return record


async def test_a_batch_answers_each_sale_as_alone(pool: asyncpg.Pool) -> None:
    first = new_sale()
    same_key = new_sale(terminal_id=first.terminal_id, key=first.idempotency_key)
    same_receipt = new_sale(terminal_id=first.terminal_id, receipt_id=first.receipt_id)
    other = new_sale()
    async with pool.acquire() as connection:
        rows = await store.insert_many(connection, [first, same_key, same_receipt, other])
        assert [row is not None for row in rows] == [True, False, False, True]
        assert rows[0] is not None and rows[0].operation_id == first.operation_id
        assert rows[0].operation == first.operation and rows[0].state is OperationState.PROCESSING
        assert rows[0].lease_until is not None and rows[0].lease_until > rows[0].now
        assert rows[3] is not None and rows[3].idempotency_key == other.idempotency_key
        # a later batch finds the earlier rows just the same
        again = await store.insert_many(
            connection, [new_sale(terminal_id=first.terminal_id, key=first.idempotency_key)]
        )
        assert again == [None]
        found = await store.find_by_key(connection, terminal_id=first.terminal_id, key=same_key.idempotency_key)
        assert found is not None and replace(found, now=rows[0].now) == rows[0]


async def test_outcomes_of_one_member_in_one_batch_add_up(pool: asyncpg.Pool) -> None:
    member_id = f"m-{uuid.uuid4().hex[:8]}"
    sales = [new_sale(member_id=member_id) for _ in range(3)]
    day = date(2026, 11, 23)
    async with pool.acquire() as connection:
        await store.insert_many(connection, sales)
        changes = [
            store.StatsChange(member_id, purchases=1, app_purchases=1, rule_ids=["r1", "r2", "r1"], day=day, spend=500),
            store.StatsChange(member_id, purchases=1, rule_ids=["r1"], day=day, spend=250),
            store.StatsChange(member_id, purchases=1, rule_ids=[], day=date(2026, 11, 24), spend=100),
        ]
        outcomes = [
            store.Outcome(
                operation_id=sale.operation_id,
                state=OperationState.CAPTURED,
                operation=b"captured",
                response=b"response-" + sale.operation_id.encode(),
                expire_time=None,
                stats=change,
                events=[outbox.event_row(event_type="points.accrued", partition_key=member_id, data={"i": index})],
            )
            for index, (sale, change) in enumerate(zip(sales, changes, strict=True))
        ]
        await store.record_outcomes(connection, outcomes)
        stats = await member_stats(connection, member_id)
        assert (stats["purchase_count"], stats["app_purchase_count"]) == (3, 1)
        assert json.loads(stats["rule_uses"]) == {"r1": 2, "r2": 1}  # a rule counts once per receipt
        spend = await connection.fetch(
            "SELECT day, amount FROM member_daily_spend WHERE member_id = $1 ORDER BY day", member_id
        )
        assert [(r["day"], r["amount"]) for r in spend] == [(day, 750), (date(2026, 11, 24), 100)]
        events = await connection.fetchval("SELECT count(*) FROM outbox WHERE partition_key = $1", member_id)
        assert events == 3
        for sale in sales:
            row = await store.find(connection, sale.operation_id)
            assert row is not None and row.state is OperationState.CAPTURED and row.lease_until is None
            assert row.response == b"response-" + sale.operation_id.encode()
        # written again one by one, the same statistics come out (a batch is just a shorthand)
        for outcome in outcomes[:2]:
            await store.record_outcomes(connection, [replace(outcome, events=[])])
        stats = await member_stats(connection, member_id)
        assert stats["purchase_count"] == 5 and json.loads(stats["rule_uses"]) == {"r1": 4, "r2": 2}


async def test_one_bad_sale_fails_alone_among_concurrent_ones(pool: asyncpg.Pool) -> None:
    writes = SaleWrites(pool)
    sales = [new_sale() for _ in range(30)]
    bad = replace(sales[7], receipt_id=None)  # type: ignore[arg-type]  # NOT NULL: the statement fails
    sales[7] = bad
    results = await asyncio.gather(*(writes.insert(sale) for sale in sales), return_exceptions=True)
    assert isinstance(results[7], asyncpg.NotNullViolationError)
    recorded = [r for i, r in enumerate(results) if i != 7]
    assert all(isinstance(r, store.OperationRow) for r in recorded)
    assert [r.operation_id for r in recorded] == [s.operation_id for i, s in enumerate(sales) if i != 7]  # type: ignore[union-attr]
    async with pool.acquire() as connection:
        assert await store.find(connection, bad.operation_id) is None
