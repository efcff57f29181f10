"""Background work of the cards service, in every cards process (each step is safe to run in
several at once): complete registrations whose wallet accounts could not be opened, expire cards
past their expire_time, purge used QR tokens and old idempotency keys. Bounded per round."""

from __future__ import annotations

import asyncio
import logging
import random
from dataclasses import dataclass

import asyncpg

from services.cards import members, store, usecases
from services.cards.cache import Generations
from services.cards.wallet import Wallet
from shared import idempotency
from shared.errors import DomainError

log = logging.getLogger(__name__)
ROUND_ITEMS_MAX = 500


@dataclass(frozen=True, kw_only=True)
class WorkerSettings:
    interval_s: float
    # A registration younger than this is left to the request that is completing it.
    pending_grace_s: float


async def run_round(pool: asyncpg.Pool, wallet: Wallet, generations: Generations, settings: WorkerSettings) -> None:
    try:
        completed = await members.complete_pending(
            pool, wallet, older_than_s=settings.pending_grace_s, limit=ROUND_ITEMS_MAX
        )
    except DomainError as error:  # the wallet is still down: next round
        log.warning("pending registrations not completed: %s", error)
        completed = 0
    expired = await usecases.expire_due_cards(pool, generations, limit=ROUND_ITEMS_MAX)
    async with pool.acquire() as connection:
        await store.purge_qr_token_uses(connection, limit=ROUND_ITEMS_MAX * 10)
    await idempotency.purge_expired(pool)
    if completed or expired:
        log.info("cards work: %d registrations completed, %d cards expired", completed, expired)


async def run(pool: asyncpg.Pool, wallet: Wallet, generations: Generations, settings: WorkerSettings) -> None:
    """Forever: one round, then sleep (with jitter, so processes spread out)."""
    while True:
        try:
            await run_round(pool, wallet, generations, settings)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("cards background work failed; retrying next round")
        await asyncio.sleep(settings.interval_s * random.uniform(0.8, 1.2))
