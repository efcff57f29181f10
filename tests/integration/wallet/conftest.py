"""The in-process wallet tests' database."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest

from shared.config import with_database
from shared.db import migrate
from tests.harness import Infra


@pytest.fixture
async def pool(infra: Infra) -> AsyncIterator[asyncpg.Pool]:
    # A database of its own: the wallet processes other tests run have background workers on
    # the real clock, to which this test's moved-in-time holds and lots look long expired.
    database_url = with_database(infra.database_server_url, f"loyalty_test_wallet_{uuid.uuid4().hex[:8]}")
    migrate(service="wallet", database_url=database_url)
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=4)
    assert pool is not None
    yield pool
    await pool.close()
