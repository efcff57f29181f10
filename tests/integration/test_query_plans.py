"""The queries that read growing tables find their rows through an index, on real PostgreSQL.

Each test fills the tables a few thousand rows deep (generate_series, then ANALYZE), captures
the exact statement a store function (or the ListLots handler) sends, and EXPLAINs it as the
service runs it: PREPARE, then EXPLAIN EXECUTE under the service's plan_cache_mode (the wallet's
force_generic_plan, processing's auto). The growing table must be read only through an index
whose condition names the filter (no sequential scan, no walk of a whole index), and a page read
in cursor order must come in that order from the index (no sort of every matching row).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any, cast

import asyncpg
import pytest
from loyalty.wallet.v1 import wallet_pb2

from services.processing.store import operations as processing_operations
from services.processing.store import program as processing_program
from services.wallet import store as wallet_store
from shared.config import DEFAULT_PLAN_CACHE_MODES, with_database
from shared.db import Connection, migrate
from tests.harness import Infra
from tests.integration.wallet.ledger import servicer

# A member account's lots, all the lots it was ever given: most of them long spent.
LOT_ACCOUNT = "00000000-0000-0000-0000-000000000007"

WALLET_ROWS = """
INSERT INTO account_kinds (program_id, kind, display_name, unit_type, scale, spendable, transferable,
                           overdraft_mode, expiry_mode)
SELECT 'program-' || p, 'base', 'Points', 1, 0, true, true, 1, 1 FROM generate_series(0, 19) p;

-- 5,000 pool accounts in 20 programs, each with its pool.
INSERT INTO accounts (account_id, program_id, type, kind, unit_type, scale, create_time)
SELECT gen_random_uuid(), 'program-' || (i % 20), 2, 'base', 1, 0, timestamptz '2026-01-01' + i * interval '1 minute'
FROM generate_series(1, 5000) i;
INSERT INTO pools (pool_id, program_id, kind, account_id, owner_member_id, display_name, create_time)
SELECT gen_random_uuid(), program_id, kind, account_id, 'owner', 'Household', create_time FROM accounts;

-- 20,000 transfers: half of them made by an operation, a third of them for a receipt.
INSERT INTO transfers (transfer_id, body, state, debit_account_id, credit_account_id, amount, reason,
                       operation_id, terminal_id, receipt_id, recorded_time, effective_time, outcome)
SELECT 'transfer-' || i, '', 2, 'debit', 'credit', 1, 1,
       CASE WHEN i % 2 = 0 THEN 'operation-' || i ELSE '' END, 'terminal-' || (i % 50),
       CASE WHEN i % 3 = 0 THEN 'receipt-' || i ELSE '' END,
       at, at, '1|1|0|||'
FROM generate_series(1, 20000) i, LATERAL (SELECT timestamptz '2026-01-01' + i * interval '1 second' AS at) moment;

-- 20,000 lots on 50 accounts; nine in ten are spent.
INSERT INTO lots (lot_id, account_id, transfer_id, reason, amount, remaining, activation_time, effective_time)
SELECT gen_random_uuid(), ('00000000-0000-0000-0000-' || lpad((i % 50)::text, 12, '0'))::uuid, 'transfer-' || i, 1, 10,
       CASE WHEN i % 10 = 0 THEN 10 ELSE 0 END, at, at
FROM generate_series(1, 20000) i, LATERAL (SELECT timestamptz '2026-01-01' + i * interval '1 second' AS at) moment;

ANALYZE;
"""

PROCESSING_ROWS = """
-- 51 partners with 2 outlets and 10 terminals each; the last, partner-50, is new: no operation yet.
INSERT INTO partners (partner_id, code, name, state, points_scope, accrual_enabled, redemption_enabled)
SELECT 'partner-' || p, 'partner-' || p, 'Partner', 1, 1, true, true FROM generate_series(0, 50) p;
INSERT INTO outlets (outlet_id, partner_id, code, name, state)
SELECT 'outlet-' || o, 'partner-' || (o % 51), 'outlet-' || o, 'Outlet', 1 FROM generate_series(0, 101) o;
INSERT INTO terminals (terminal_id, outlet_id, state, default_channel, offline_allowed)
SELECT 'terminal-' || t, 'outlet-' || (t % 102), 1, 1, false FROM generate_series(0, 509) t;

-- About 20,000 operations, at the terminals of the other 50 partners.
INSERT INTO operations (operation_id, type, state, terminal_id, outlet_id, partner_id, receipt_id, idempotency_key,
                        request_hash, method, effective_time, create_time, operation)
SELECT 'operation-' || i, 1, 3, 'terminal-' || t, 'outlet-' || (t % 102), 'partner-' || (t % 102 % 51),
       'receipt-' || i, 'key-' || i, '\\x00', 'Purchase', at, at, '\\x00'
FROM generate_series(1, 20000) i,
     LATERAL (SELECT i % 510 AS t, timestamptz '2026-01-01' + i * interval '1 second' AS at
              WHERE i % 510 % 102 % 51 <> 50) terminal;

ANALYZE;
"""


# -- capturing and explaining ------------------------------------------------------------------


class Recorder:
    """A real connection that remembers every statement sent through it."""

    def __init__(self, connection: asyncpg.Connection) -> None:
        self.connection = connection
        self.statements: list[tuple[str, tuple[Any, ...]]] = []

    async def fetch(self, sql: str, *args: Any) -> list[Any]:
        self.statements.append((sql, args))
        return await self.connection.fetch(sql, *args)

    async def fetchrow(self, sql: str, *args: Any) -> Any:
        self.statements.append((sql, args))
        return await self.connection.fetchrow(sql, *args)

    async def fetchval(self, sql: str, *args: Any) -> Any:
        self.statements.append((sql, args))
        return await self.connection.fetchval(sql, *args)

    def as_connection(self) -> Connection:
        return cast(Connection, self)

    def the_one_reading(self, table: str) -> tuple[str, tuple[Any, ...]]:
        (statement,) = [(sql, args) for sql, args in self.statements if f"FROM {table}" in sql]
        return statement


class RecordingPool:
    """What a use case needs of a pool (acquire), handing out one recorder."""

    def __init__(self, recorder: Recorder) -> None:
        self.recorder = recorder

    @asynccontextmanager
    async def acquire(self) -> AsyncIterator[Recorder]:
        yield self.recorder


def literal(value: Any) -> str:
    """An argument of EXECUTE: an untyped literal, which takes the type of its parameter."""
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, datetime):
        return f"'{value.isoformat()}'"
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'"
    if isinstance(value, list | tuple):
        assert all(isinstance(v, int) for v in value), value
        return "'{" + ",".join(str(v) for v in value) + "}'"
    raise TypeError(f"no literal for {value!r}")


async def explain(connection: asyncpg.Connection, sql: str, args: Sequence[Any], *, service: str) -> dict[str, Any]:
    """The plan the service's connections run `sql` with: prepared, then executed under the
    service's plan_cache_mode (a first execution under auto is a custom plan)."""
    mode = DEFAULT_PLAN_CACHE_MODES.get(service, "AUTO").lower()
    await connection.execute(f"SET plan_cache_mode = {mode}")
    await connection.execute(f"PREPARE statement_under_test AS {sql}")
    try:
        arguments = f"({', '.join(literal(a) for a in args)})" if args else ""
        text = await connection.fetchval(f"EXPLAIN (FORMAT JSON) EXECUTE statement_under_test{arguments}")
    finally:
        await connection.execute("DEALLOCATE statement_under_test")
        await connection.execute("RESET plan_cache_mode")
    (explained,) = json.loads(text)
    return cast(dict[str, Any], explained["Plan"])


def nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", []):
        yield from nodes(child)


def whole_reads(plan: dict[str, Any], table: str, *, by: str, in_order: bool = False) -> list[str]:
    """What in the plan reads more of `table` than the rows `by` selects: a sequential scan, an
    index scan whose condition does not name `by`, and (`in_order`) any sort."""
    found = []
    for node in nodes(plan):
        kind = node["Node Type"]
        if in_order and kind in ("Sort", "Incremental Sort"):
            found.append(f"{kind} by {node.get('Sort Key')}")
        if node.get("Relation Name") != table:
            continue
        if kind == "Seq Scan":
            found.append(f"Seq Scan on {table}")
        elif kind in ("Index Scan", "Index Only Scan") and by not in node.get("Index Cond", ""):
            found.append(f"{kind} using {node['Index Name']} with Index Cond {node.get('Index Cond')}")
        elif kind == "Bitmap Heap Scan" and by not in node.get("Recheck Cond", ""):
            found.append(f"Bitmap Heap Scan on {table} with Recheck Cond {node.get('Recheck Cond')}")
    return found


# -- databases -----------------------------------------------------------------------------------


@asynccontextmanager
async def filled_database(infra: Infra, service: str, rows: str) -> AsyncIterator[asyncpg.Connection]:
    url = with_database(infra.database_server_url, f"loyalty_test_{service}_plans_{uuid.uuid4().hex[:8]}")
    migrate(service=service, database_url=url)
    connection = await asyncpg.connect(url)
    try:
        await connection.execute(rows)
        yield connection
    finally:
        await connection.close()


@pytest.fixture(scope="module")
async def wallet_db(infra: Infra) -> AsyncIterator[asyncpg.Connection]:
    async with filled_database(infra, "wallet", WALLET_ROWS) as connection:
        yield connection


@pytest.fixture(scope="module")
async def processing_db(infra: Infra) -> AsyncIterator[asyncpg.Connection]:
    async with filled_database(infra, "processing", PROCESSING_ROWS) as connection:
        yield connection


# -- the wallet (generic plans) ------------------------------------------------------------------


@pytest.mark.parametrize("paged", [False, True], ids=["first page", "after a cursor"])
async def test_list_accounts_by_program_reads_one_page_in_order(wallet_db: asyncpg.Connection, paged: bool) -> None:
    recorder = Recorder(wallet_db)
    filters: dict[str, Any] = {
        "program_id": "program-7",
        **dict.fromkeys(("member_id", "master_account_id", "partner_id", "kind", "external_ref"), ""),
        **dict.fromkeys(("account_type", "system_role"), 0),
    }
    first = await wallet_store.find_account_ids(recorder.as_connection(), **filters, states=(), after=None, limit=51)
    assert len(first) == 51
    if paged:
        recorder.statements.clear()
        create_time = first[-1][1]
        await wallet_store.find_account_ids(
            recorder.as_connection(), **filters, states=(), after=(create_time, first[-1][0]), limit=51
        )
    sql, args = recorder.the_one_reading("accounts")

    plan = await explain(wallet_db, sql, args, service="wallet")

    assert whole_reads(plan, "accounts", by="program_id", in_order=True) == []


async def test_list_pools_by_program_reads_one_page_in_order(wallet_db: asyncpg.Connection) -> None:
    recorder = Recorder(wallet_db)
    found = await wallet_store.find_pools(
        recorder.as_connection(), program_id="program-7", member_id="", states=(), offset=0, limit=51
    )
    assert len(found) == 51
    sql, args = recorder.the_one_reading("pools")

    plan = await explain(wallet_db, sql, args, service="wallet")

    assert whole_reads(plan, "pools", by="program_id", in_order=True) == []


@pytest.mark.parametrize(
    ("by", "filters"),
    [
        ("operation_id", {"operation_id": "operation-1000", "terminal_id": "", "receipt_id": ""}),
        ("receipt_id", {"operation_id": "", "terminal_id": "terminal-0", "receipt_id": "receipt-1200"}),
    ],
    ids=["by operation", "by receipt"],
)
async def test_list_transfers_by_operation_or_receipt_uses_their_partial_indexes(
    wallet_db: asyncpg.Connection, by: str, filters: dict[str, str]
) -> None:
    recorder = Recorder(wallet_db)
    found = await wallet_store.find_transfers(
        recorder.as_connection(), account_id="", **filters, states=(), before=None, limit=51
    )
    assert len(found) == 1
    sql, args = recorder.the_one_reading("transfers")

    plan = await explain(wallet_db, sql, args, service="wallet")

    assert whole_reads(plan, "transfers", by=by) == []


async def test_list_lots_in_pending_state_reads_only_the_lots_left(wallet_db: asyncpg.Connection) -> None:
    # As processing asks on every refund: the handler decides which lots the store reads.
    recorder = Recorder(wallet_db)
    response = await servicer(cast(asyncpg.Pool, RecordingPool(recorder))).ListLots(
        wallet_pb2.ListLotsRequest(account_id=LOT_ACCOUNT, states=[wallet_pb2.LOT_STATE_PENDING]), None
    )
    assert list(response.lots) == []  # every lot here is active or spent
    sql, args = recorder.the_one_reading("lots")

    plan = await explain(wallet_db, sql, args, service="wallet")

    assert whole_reads(plan, "lots", by="account_id") == []


# -- processing (auto: custom plans) --------------------------------------------------------------


@pytest.mark.parametrize("partner_id", ["partner-7", "partner-50"], ids=["with operations", "without any"])
async def test_whether_a_partner_has_operations_probes_its_terminals(
    processing_db: asyncpg.Connection, partner_id: str
) -> None:
    recorder = Recorder(processing_db)
    has = await processing_program.partner_has_operations(recorder.as_connection(), partner_id)
    assert has is (partner_id != "partner-50")
    sql, args = recorder.the_one_reading("terminals")

    plan = await explain(processing_db, sql, args, service="processing")

    assert whole_reads(plan, "operations", by="terminal_id") == []


@pytest.mark.parametrize("paged", [False, True], ids=["first page", "after a cursor"])
async def test_list_operations_by_terminal_reads_one_page_in_order(
    processing_db: asyncpg.Connection, paged: bool
) -> None:
    recorder = Recorder(processing_db)
    where = processing_operations.OperationFilter(terminal_id="terminal-7")
    first = await processing_operations.list_operations(recorder.as_connection(), where, after=None, limit=11)
    assert len(first) == 11
    if paged:
        recorder.statements.clear()
        last = await processing_db.fetchval(
            "SELECT operation_id FROM operations WHERE terminal_id = 'terminal-7' AND create_time = $1", first[-1][2]
        )
        await processing_operations.list_operations(
            recorder.as_connection(), where, after=(first[-1][2], last), limit=11
        )
    sql, args = recorder.the_one_reading("operations")

    plan = await explain(processing_db, sql, args, service="processing")

    assert whole_reads(plan, "operations", by="terminal_id", in_order=True) == []
