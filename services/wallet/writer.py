"""Applying transfers: one database transaction for many concurrent requests.

A CreateTransfers call costs a gRPC round trip the wallet cannot avoid, but its database work
can be shared: calls that arrive while a transaction is running wait in a queue, and the next
transaction takes all of them (up to a bound). Each call's transfers stay a group of their own
(their linked chains never run into another call's), and each call gets its own outcomes.

If a shared transaction fails for a reason that is not transient (a bug caught by an invariant
or a constraint), its calls are retried one transaction each, so one bad call fails alone.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

import asyncpg

from services.wallet import store
from services.wallet.domain.accounts import STRIPES
from services.wallet.domain.model import Outcome, TransferRequest
from shared.db import Connection

log = logging.getLogger(__name__)

# Transient conflicts between concurrent writers: retry the whole transaction.
RETRYABLE = (asyncpg.DeadlockDetectedError, asyncpg.SerializationError, asyncpg.UniqueViolationError)
ATTEMPTS_MAX = 5


@dataclass
class _Call:
    requests: Sequence[TransferRequest]
    internal: bool = False  # transfers the wallet makes itself (ids under "wallet:")
    done: asyncio.Future[list[Outcome]] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


Clock = Callable[[Connection], Awaitable[datetime]]


class TransferWriter:
    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        writers: int,
        transfers_per_transaction_max: int,
        clock: Clock = store.database_now,
    ) -> None:
        # The ledger's clock is the database's, so every wallet process agrees on it; tests
        # pass their own to move time forward.
        self.clock = clock
        self.pool = pool
        self.writers = writers
        self.transfers_max = transfers_per_transaction_max
        self.queue: asyncio.Queue[_Call] = asyncio.Queue()
        self.tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self.tasks = [asyncio.create_task(self._run(), name=f"transfer-writer-{i}") for i in range(self.writers)]

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)

    async def submit(self, requests: Sequence[TransferRequest], *, internal: bool = False) -> list[Outcome]:
        call = _Call(requests, internal)
        await self.queue.put(call)
        return await call.done

    async def _run(self) -> None:
        while True:
            calls = [await self.queue.get()]
            size = len(calls[0].requests)
            while not self.queue.empty() and size < self.transfers_max:
                call = self.queue.get_nowait()
                calls.append(call)
                size += len(call.requests)
            await self._apply(calls)

    async def _apply(self, calls: list[_Call]) -> None:
        try:
            results = await self._transaction(calls)
        except asyncio.CancelledError:
            raise
        except Exception as error:
            if len(calls) == 1:
                if not calls[0].done.done():
                    calls[0].done.set_exception(error)
                return
            log.warning("a shared transfer transaction failed (%s); retrying its %d calls alone", error, len(calls))
            for call in calls:
                await self._apply([call])
            return
        for call, outcomes in zip(calls, results, strict=True):
            if not call.done.done():  # the caller may have given up (deadline); the work is done anyway
                call.done.set_result(outcomes)

    async def _transaction(self, calls: list[_Call]) -> list[list[Outcome]]:
        requests = [request for call in calls for request in call.requests]
        for attempt in range(1, ATTEMPTS_MAX + 1):
            try:
                async with self.pool.acquire() as connection, connection.transaction():
                    now = await self.clock(connection)
                    batch = await store.load_batch(connection, requests, now)
                    results = [batch.apply(list(call.requests), internal=call.internal) for call in calls]
                    await store.persist(connection, batch, stripe=random.randrange(STRIPES))
                return results
            except RETRYABLE as error:
                if attempt == ATTEMPTS_MAX:
                    raise
                log.info("transfer transaction conflict (%s), attempt %d", type(error).__name__, attempt)
                await asyncio.sleep(random.uniform(0, 0.005 * attempt))
        raise AssertionError("unreachable")
