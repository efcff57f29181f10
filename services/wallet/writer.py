"""Applying transfers: one database transaction for many concurrent requests.

A CreateTransfers call costs a gRPC round trip the wallet cannot avoid, but its database work
can be shared: calls that arrive while a transaction is running wait in a queue, and the next
transaction takes them (up to a bound). Each call's transfers stay a group of their own (their
linked chains never run into another call's), and each call gets its own outcomes.

Up to `writers` transactions run at once; a second one starts beside a running one when at
least `parallel_transfers_min` transfers wait (the service's default is 1: a call does not wait
for a transaction it is not part of). A higher bound makes small calls share the next
transaction, one commit and one set of round trips however many it carries (less CPU per
transfer when many calls are in flight), at the price of their latency. Big batches overlap one
transaction's database work with the other one's Python: with a writer free beside it, a
transaction takes only an even share of what waits, so that the rest starts at once beside it.

Overlapping transactions must not wait for each other's locks: calls that name a member
account a running transaction holds stay queued for a later one (their order does not matter:
they are concurrent calls). Otherwise the second transaction would queue behind the first on
that account's row lock, and the process would idle through the first one's database work.
SYSTEM accounts do not count: transactions share them (FOR SHARE, a stripe each).

If a shared transaction fails for a reason that is not transient (a bug caught by an invariant
or a constraint), its calls are retried one transaction each, so one bad call fails alone.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

import asyncpg

from services.wallet import store
from services.wallet.domain.accounts import STRIPES
from services.wallet.domain.ledger import Batch
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
    # The accounts the call names (a post or void may name none: its hold's are found later).
    accounts: frozenset[str] = field(init=False)

    def __post_init__(self) -> None:
        self.accounts = frozenset(
            account_id for r in self.requests for account_id in (r.debit_account_id, r.credit_account_id) if account_id
        )


Clock = Callable[[Connection], Awaitable[datetime]]


class _RecordsNeededError(Exception):
    """Decide the transaction's transfers again, with their ids' records read."""


def _all_recorded(batch: Batch, requests: Sequence[TransferRequest]) -> bool:
    created = {record.transfer_id for record in batch.created}
    return all(request.transfer_id in created for request in requests)


class TransferWriter:
    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        writers: int,
        transfers_per_transaction_max: int,
        parallel_transfers_min: int = 1,
        clock: Clock | None = None,
    ) -> None:
        # The ledger's clock is the database's, so every wallet process agrees on it (read in
        # the same round trip that locks the batch's records); tests pass their own to move time.
        self.clock = clock
        self.pool = pool
        self.writers = writers
        self.transfers_max = transfers_per_transaction_max
        # A writer starts a transaction while another one runs only when at least this many
        # transfers wait: small calls are better off sharing the next transaction (one commit,
        # one set of round trips) than splitting into two half-empty ones.
        self.parallel_transfers_min = parallel_transfers_min
        self.queue: deque[_Call] = deque()  # unbounded: each call is bounded (BATCH_SIZE_MAX), callers by the server
        self.queued_transfers = 0
        self.running = 0  # transactions in flight
        self.changed = asyncio.Event()  # something was queued, or a transaction ended
        # The accounts each running transaction names, and the ids known to be SYSTEM accounts
        # (an account's type never changes; learnt from the batches, so bounded by their number).
        self.accounts_in_use: list[frozenset[str]] = []
        self.shared_accounts: set[str] = set()
        # The stripes of SYSTEM accounts that this process's running transactions write: the next
        # one picks another, so that they do not queue behind each other on a stripe row.
        self.stripes_in_use: set[int] = set()
        self.tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self.tasks = [asyncio.create_task(self._dispatch(), name="transfer-writer")]

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)

    async def submit(self, requests: Sequence[TransferRequest], *, internal: bool = False) -> list[Outcome]:
        return await self.enqueue(requests, internal=internal)

    def enqueue(self, requests: Sequence[TransferRequest], *, internal: bool = False) -> asyncio.Future[list[Outcome]]:
        """Queue the requests; the future gets their outcomes. Cancelling it does not take them
        back: a transaction that already carries them completes (a retry finds the outcomes)."""
        call = _Call(requests, internal)
        self.queue.append(call)
        self.queued_transfers += len(requests)
        self.changed.set()
        return call.done

    async def _dispatch(self) -> None:
        """Take calls in arrival order into transactions, at most `writers` at once."""
        while True:
            calls = self._next_transaction()
            if not calls:
                self.changed.clear()
                await self.changed.wait()
                continue
            accounts = frozenset().union(*(call.accounts for call in calls)) - self.shared_accounts
            self.running += 1
            self.accounts_in_use.append(accounts)
            task = asyncio.create_task(self._run(calls, accounts), name="transfer-transaction")
            self.tasks.append(task)
            task.add_done_callback(self.tasks.remove)

    def _next_transaction(self) -> list[_Call]:
        """The calls of the next transaction, in arrival order, leaving queued the calls that name
        a member account of a running transaction; none when no transaction should start now.

        It takes all that waits when it is the last free writer, else an even share (at least
        `parallel_transfers_min`): callers that wait for their answers resubmit together, and one
        transaction taking them all would leave the other writer idle, and the process idle
        through each transaction's database work."""
        if not self.queue or self.running >= self.writers:
            return []
        if not self.running:
            in_use: frozenset[str] = frozenset()
        elif self.queued_transfers < self.parallel_transfers_min:
            return []
        else:
            in_use = frozenset().union(*self.accounts_in_use) - self.shared_accounts
        free_writers = self.writers - self.running
        share = -(-self.queued_transfers // free_writers)  # rounded up
        limit = min(self.transfers_max, max(self.parallel_transfers_min, share))
        calls, waiting, size = [], deque[_Call](), 0
        while self.queue and size < limit:
            call = self.queue.popleft()
            if in_use and not in_use.isdisjoint(call.accounts):
                waiting.append(call)
                continue
            calls.append(call)
            size += len(call.requests)
        self.queue.extendleft(reversed(waiting))
        if self.running and size < self.parallel_transfers_min:
            self.queue.extendleft(reversed(calls))  # not worth a second transaction yet
            return []
        self.queued_transfers -= size
        return calls

    async def _run(self, calls: list[_Call], accounts: frozenset[str]) -> None:
        try:
            await self._apply(calls)
        finally:
            self.running -= 1
            self.accounts_in_use.remove(accounts)
            self.changed.set()

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
        # The first attempt takes a batch of creates for new ids (store.load_batch). An id that
        # exists fails its insert; a transfer that records nothing (refused terms, a failed
        # linked chain) might be a replay whose original the batch did not see. Either way the
        # next attempt, at once, reads the records.
        assume_new = True
        for attempt in range(1, ATTEMPTS_MAX + 1):
            stripe = random.choice([s for s in range(STRIPES) if s not in self.stripes_in_use] or [0])
            self.stripes_in_use.add(stripe)
            try:
                async with self.pool.acquire() as connection, connection.transaction():
                    now = await self.clock(connection) if self.clock is not None else None
                    batch = await store.load_batch(connection, requests, now, assume_new=assume_new)
                    self.shared_accounts.update(i for i, account in batch.accounts.items() if not account.has_lots)
                    results = [batch.apply(list(call.requests), internal=call.internal) for call in calls]
                    if assume_new and not _all_recorded(batch, requests):
                        raise _RecordsNeededError
                    await store.persist(connection, batch, stripe=stripe)
                return results
            except _RecordsNeededError:
                assume_new = False
            except RETRYABLE as error:
                if attempt == ATTEMPTS_MAX:
                    raise
                replayed = assume_new and isinstance(error, asyncpg.UniqueViolationError)
                assume_new = False  # so that only a first attempt can ask for the records
                if replayed:
                    continue  # a replayed id, most likely: no conflict to back off from
                log.info("transfer transaction conflict (%s), attempt %d", type(error).__name__, attempt)
                await asyncio.sleep(random.uniform(0, 0.005 * attempt))
            finally:
                self.stripes_in_use.discard(stripe)
        raise AssertionError("unreachable")
