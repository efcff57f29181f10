"""Background work of the ledger: release holds past their deadline, expire lots.

Safe to run in several wallet processes at once: holds are claimed with SKIP LOCKED; lots are
re-read under their account's lock, and each expiry step has an id derived from the lot and
what it already lost, so a step done twice is decided once. Bounded per round.
"""

from __future__ import annotations

import asyncio
import logging
import random
from datetime import datetime

import asyncpg

from services.wallet import store
from services.wallet.domain.accounts import STRIPES
from services.wallet.domain.ledger import Batch
from services.wallet.domain.model import TransferState
from shared import idempotency

log = logging.getLogger(__name__)
ROUND_ITEMS_MAX = 500


async def expire_holds(pool: asyncpg.Pool, now: datetime | None = None) -> int:
    """Release the holds whose deadline passed; returns how many."""
    async with pool.acquire() as connection, connection.transaction():
        now = now or await store.database_now(connection)
        hold_ids = await store.due_holds(connection, now, ROUND_ITEMS_MAX)
        if not hold_ids:
            return 0
        records = await store.load_records(connection, hold_ids, lock=True)
        account_ids = {i for r in records.values() for i in (r.request.debit_account_id, r.request.credit_account_id)}
        accounts = await store.load_accounts(connection, account_ids, lock=True)
        await store.load_pools(connection, accounts, now)
        batch = Batch(now=now, accounts=accounts, records=records)
        for record in records.values():
            if record.state is TransferState.PENDING:
                batch.expire_hold(record)
        await store.persist(connection, batch, stripe=random.randrange(STRIPES))
    return len(hold_ids)


async def expire_lots(pool: asyncpg.Pool, now: datetime | None = None) -> int:
    """Move what is left of expired lots to their program's EXPIRY account; returns how many lots."""
    async with pool.acquire() as connection, connection.transaction():
        now = now or await store.database_now(connection)
        due = await store.due_lots(connection, now, ROUND_ITEMS_MAX)
        if not due:
            return 0
        accounts = await store.load_accounts(connection, {account_id for _, account_id in due}, lock=True)
        expiry_ids = {}
        for account in accounts.values():
            expiry_id = await store.expiry_account_id(connection, account)
            if expiry_id is not None:
                expiry_ids[account.account_id] = expiry_id
        accounts |= await store.load_accounts(connection, set(expiry_ids.values()), lock=True)
        batch = Batch(now=now, accounts=accounts, records={})
        expired = 0
        for lot_id, account_id in due:
            account = accounts[account_id]
            lot = next((lot for lot in account.lots if lot.lot_id == lot_id), None)
            # Re-read under the lock: another worker may have expired it, or a hold now covers it.
            if lot is None or lot.free() <= 0 or account_id not in expiry_ids:
                continue
            batch.expire_lot(lot, accounts[expiry_ids[account_id]])
            expired += 1
        await store.persist(connection, batch, stripe=random.randrange(STRIPES))
    return expired


async def run(pool: asyncpg.Pool, *, interval_s: float) -> None:
    """Forever: one round of each kind of work, then sleep (with jitter, so processes spread out)."""
    while True:
        try:
            holds = await expire_holds(pool)
            lots = await expire_lots(pool)
            await idempotency.purge_expired(pool)
            if holds or lots:
                log.info("ledger work: %d holds released, %d lots expired", holds, lots)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("ledger background work failed; retrying next round")
        await asyncio.sleep(interval_s * random.uniform(0.8, 1.2))
