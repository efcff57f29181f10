"""The two database writes of every sale, shared by concurrent sales (DESIGN §6).

A sale writes twice: its operation row with the plan, before the wallet is called (the saga's
recovery point), and its outcome after. Each write is one statement, and the writes of sales
that arrive while earlier ones are being written go together in the next statement
(shared/batching.py: no timer, so a lone sale is written at once). The statement is atomic, so a
batch commits or fails as a whole; a failure that is not the database being unreachable is
retried one sale at a time, so that one sale's bad row never fails the others.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

import asyncpg

from services.processing.store import operations as store
from shared.batching import Coalescer

BATCH_SIZE_MAX = 200
# Statements in flight per kind; sales that arrive meanwhile wait for the next one (together).
WRITES_IN_FLIGHT_MAX = 2
# Failures that say nothing about the rows: the whole batch gets them, and the requests answer
# UNAVAILABLE (retry with the same key).
UNREACHABLE = (OSError, TimeoutError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError)

InsertResult = store.OperationRow | None | Exception
ItemT = TypeVar("ItemT")
ResultT = TypeVar("ResultT")


class SaleWrites:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool
        self._inserts: Coalescer[store.NewOperation, InsertResult] = Coalescer(
            self._insert_batch, batch_size_max=BATCH_SIZE_MAX, calls_in_flight_max=WRITES_IN_FLIGHT_MAX
        )
        self._outcomes: Coalescer[store.Outcome, Exception | None] = Coalescer(
            self._record_batch, batch_size_max=BATCH_SIZE_MAX, calls_in_flight_max=WRITES_IN_FLIGHT_MAX
        )

    async def insert(self, new: store.NewOperation) -> store.OperationRow | None:
        """The recorded row, or None when the key or (a live purchase) the receipt is taken."""
        result = await self._inserts.submit(new)
        if isinstance(result, Exception):
            raise result
        return result

    async def record(self, outcome: store.Outcome) -> None:
        failure = await self._outcomes.submit(outcome)
        if failure is not None:
            raise failure

    async def _insert_batch(self, news: Sequence[store.NewOperation]) -> list[InsertResult]:
        async with self._pool.acquire() as connection:
            return await _each_alone_on_failure(news, lambda batch: store.insert_many(connection, batch))

    async def _record_batch(self, outcomes: Sequence[store.Outcome]) -> list[Exception | None]:
        async with self._pool.acquire() as connection:

            async def record(batch: Sequence[store.Outcome]) -> list[None]:
                await store.record_outcomes(connection, batch)
                return [None] * len(batch)

            return await _each_alone_on_failure(outcomes, record)


async def _each_alone_on_failure(
    items: Sequence[ItemT], write: Callable[[Sequence[ItemT]], Awaitable[Sequence[ResultT]]]
) -> list[ResultT | Exception]:
    """`write(items)`'s results; if it fails for another reason than an unreachable database,
    each item written alone, its failure (if any) in its place."""
    try:
        return list(await write(items))
    except UNREACHABLE:
        raise
    except Exception as error:
        if len(items) == 1:
            return [error]
    results: list[ResultT | Exception] = []
    for item in items:
        try:
            results.extend(await write([item]))
        except UNREACHABLE:
            raise
        except Exception as error:
            results.append(error)
    return results
