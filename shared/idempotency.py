"""Idempotency keys of mutating RPCs (AIP-155, Stripe's semantics), with the truth in PostgreSQL.

    same (scope, key), same request       -> the stored response, nothing runs again
    same (scope, key), different request  -> FAILED_PRECONDITION, IDEMPOTENCY_KEY_REUSED
    same (scope, key) while still running -> ABORTED, REQUEST_IN_PROGRESS (+ RetryInfo)

A key is claimed before the work runs and completed with the serialized response after it (the
"atomic phases" of brandur.org/idempotency-keys). The work itself must be safe to run again
(every use case behind this is naturally idempotent or transactional): if the process dies
between the work's commit and the key's completion, the claim is abandoned, and after
`CLAIM_TIMEOUT` a retry takes the key over and runs the work again, which then changes nothing.
A refusal (DomainError) releases the key, so the client can retry once it fixed the cause.
Keys are kept `RETENTION` (at least the 24 hours the contract promises), then purged.

Each service using it has an `idempotency_keys` table (see the wallet's migrations).
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import TypeVar

import asyncpg
from google.protobuf.message import Message

from shared.db import Connection
from shared.errors import DomainError, Reason

CLAIM_TIMEOUT = timedelta(seconds=30)
RETENTION = timedelta(days=7)

ResponseT = TypeVar("ResponseT", bound=Message)


def fingerprint(method: str, request: Message) -> bytes:
    return hashlib.sha256(method.encode() + b"\0" + request.SerializeToString(deterministic=True)).digest()


async def run_once(
    pool: asyncpg.Pool,
    *,
    scope: str,
    key: str,
    method: str,
    request: Message,
    response_type: type[ResponseT],
    work: Callable[[], Awaitable[ResponseT]],
    claim_timeout: timedelta = CLAIM_TIMEOUT,
) -> ResponseT:
    """Run `work` at most once per (scope, key) with effect; replays get the stored response.
    A claim older than `claim_timeout` is taken over (its request died): work that guards
    itself with a shorter lease passes that lease here, so a retry after a crash need not wait."""
    digest = fingerprint(method, request)
    async with pool.acquire() as connection:
        claimed = await connection.fetchval(
            """
            INSERT INTO idempotency_keys (scope, key, fingerprint) VALUES ($1, $2, $3)
            ON CONFLICT (scope, key) DO NOTHING RETURNING true
            """,
            scope,
            key,
            digest,
        )
        if not claimed:
            stored = await _existing(
                connection,
                scope=scope,
                key=key,
                digest=digest,
                response_type=response_type,
                claim_timeout=claim_timeout,
            )
            if stored is not None:
                return stored
    try:
        response = await work()
    except BaseException:
        async with pool.acquire() as connection:
            await connection.execute("DELETE FROM idempotency_keys WHERE scope = $1 AND key = $2", scope, key)
        raise
    async with pool.acquire() as connection:
        await connection.execute(
            "UPDATE idempotency_keys SET response = $3, complete_time = now() WHERE scope = $1 AND key = $2",
            scope,
            key,
            response.SerializeToString(deterministic=True),
        )
    return response


async def _existing(
    connection: Connection,
    *,
    scope: str,
    key: str,
    digest: bytes,
    response_type: type[ResponseT],
    claim_timeout: timedelta,
) -> ResponseT | None:
    """The stored response; None when an abandoned claim was taken over (the caller runs the work)."""
    row = await connection.fetchrow(
        "SELECT fingerprint, response, claim_time, now() - claim_time AS age FROM idempotency_keys"
        " WHERE scope = $1 AND key = $2",
        scope,
        key,
    )
    if row is None:  # released by a refusal a moment ago: claim it again
        claimed = await connection.fetchval(
            "INSERT INTO idempotency_keys (scope, key, fingerprint) VALUES ($1, $2, $3)"
            " ON CONFLICT (scope, key) DO NOTHING RETURNING true",
            scope,
            key,
            digest,
        )
        if claimed:
            return None
        raise _in_progress(key)
    if bytes(row["fingerprint"]) != digest:
        raise DomainError(
            Reason.IDEMPOTENCY_KEY_REUSED,
            f"idempotency key {key!r} was already used with a different request; use a new key",
            metadata={"idempotencyKey": key},
        )
    if row["response"] is not None:
        response = response_type()
        response.ParseFromString(bytes(row["response"]))
        return response
    if row["age"] < claim_timeout:
        raise _in_progress(key)
    took_over = await connection.fetchval(
        "UPDATE idempotency_keys SET claim_time = now() WHERE scope = $1 AND key = $2 AND claim_time = $3"
        " RETURNING true",
        scope,
        key,
        row["claim_time"],
    )
    if not took_over:
        raise _in_progress(key)
    return None


def _in_progress(key: str) -> DomainError:
    return DomainError(
        Reason.REQUEST_IN_PROGRESS,
        f"a request with idempotency key {key!r} is still running; retry with the same key",
        metadata={"idempotencyKey": key},
    )


async def purge_expired(pool: asyncpg.Pool) -> int:
    async with pool.acquire() as connection:
        status = await connection.execute(
            "DELETE FROM idempotency_keys WHERE claim_time < now() - $1::interval", RETENTION
        )
    return int(status.split()[-1])
