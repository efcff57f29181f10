"""`migrate` on a real PostgreSQL repairs what an interrupted concurrent index build leaves: an
INVALID index, which the rerun's `CREATE INDEX CONCURRENTLY IF NOT EXISTS` would accept as built."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import pytest

from shared.config import with_database
from shared.db import MigrationError, migrate
from tests.harness import Infra


async def validity(database_url: str, index: str) -> bool | None:
    connection = await asyncpg.connect(database_url)
    try:
        valid: bool | None = await connection.fetchval(
            "SELECT indisvalid FROM pg_index WHERE indexrelid = to_regclass($1)", index
        )
        return valid
    finally:
        await connection.close()


async def break_concurrent_build(database_url: str, *, keep_duplicates: bool) -> None:
    """What a failed CREATE UNIQUE INDEX CONCURRENTLY leaves: the index, INVALID."""
    connection = await asyncpg.connect(database_url)
    try:
        await connection.execute("CREATE TABLE things (code text)")
        await connection.execute("INSERT INTO things VALUES ('a'), ('a'), ('b')")
        with pytest.raises(asyncpg.UniqueViolationError):
            await connection.execute("CREATE UNIQUE INDEX CONCURRENTLY things_code ON things (code)")
        if not keep_duplicates:
            await connection.execute("DELETE FROM things WHERE ctid = (SELECT max(ctid) FROM things WHERE code = 'a')")
    finally:
        await connection.close()


def fresh_wallet_database(infra: Infra) -> str:
    url = with_database(infra.database_server_url, f"loyalty_test_migrations_{uuid.uuid4().hex[:8]}")
    migrate(service="wallet", database_url=url)
    return url


def test_migrate_rebuilds_an_index_a_failed_concurrent_build_left_invalid(infra: Infra) -> None:
    url = fresh_wallet_database(infra)
    asyncio.run(break_concurrent_build(url, keep_duplicates=False))
    assert asyncio.run(validity(url, "things_code")) is False

    migrate(service="wallet", database_url=url)  # nothing left to apply; the index is rebuilt

    assert asyncio.run(validity(url, "things_code")) is True
    assert asyncio.run(validity(url, "accounts_by_master")) is True


def test_migrate_fails_naming_an_invalid_index_it_cannot_rebuild(infra: Infra) -> None:
    url = fresh_wallet_database(infra)
    asyncio.run(break_concurrent_build(url, keep_duplicates=True))

    for _ in range(2):  # and leaves nothing behind for the next attempt to trip over
        with pytest.raises(MigrationError, match=r"index public\.things_code is invalid .* could not be rebuilt"):
            migrate(service="wallet", database_url=url)
    assert asyncio.run(validity(url, "things_code")) is False
    assert asyncio.run(validity(url, "things_code_ccnew")) is None
    assert asyncio.run(validity(url, "things_code_ccnew1")) is None
