"""Transactions with bounded retries, and domain refusals as edge errors."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

import asyncpg

from services.cards.domain.errors import RefusalError
from shared.db import Connection
from shared.errors import DomainError, FieldViolation, Reason

T = TypeVar("T")
ATTEMPTS_MAX = 3
# Lost races the database resolved by aborting one side: the whole transaction is retried.
RETRYABLE = (asyncpg.DeadlockDetectedError, asyncpg.SerializationError)


async def run_transaction(pool: asyncpg.Pool, work: Callable[[Connection], Awaitable[T]]) -> T:
    """`work(connection)` inside one transaction, retried a bounded number of times when the
    database aborts it for a deadlock or a serialization failure."""
    for attempt in range(1, ATTEMPTS_MAX + 1):
        try:
            async with pool.acquire() as connection, connection.transaction():
                return await work(connection)
        except RETRYABLE:
            if attempt == ATTEMPTS_MAX:
                raise DomainError(
                    Reason.CONCURRENT_MODIFICATION, "a concurrent change won a race; retry with the same key"
                ) from None
    raise RuntimeError("unreachable")


def refusal_to_error(refusal: RefusalError) -> DomainError:
    return DomainError(
        Reason(refusal.reason),
        refusal.message,
        metadata=refusal.metadata,
        violations=[FieldViolation(field, description) for field, description in refusal.violations],
    )
