"""Replays through the transfer writer, whose first attempt takes a batch of creates for new ids
without reading their records (store.load_batch, assume_new): every replay must still answer
its original outcome and change nothing, whether its insert fails (a plain create) or it would
record nothing if decided anew (a linked chain that would now fail, lot terms the clock has
since overtaken)."""

from __future__ import annotations

import asyncio

import asyncpg

from services.wallet.domain.model import Code, Reason
from tests.integration.wallet.ledger import Ledger, open_ledger
from tests.integration.wallet.test_wallet_lots import DAY, T0, points_kind, seconds, transfer


async def replays_ledger(pool: asyncpg.Pool) -> Ledger:
    return await open_ledger(pool, points_kind(), T0)


async def posted(pool: asyncpg.Pool, account_id: str) -> int:
    value: int = await pool.fetchval(
        "SELECT credits_posted - debits_posted FROM accounts WHERE account_id = $1::uuid", account_id
    )
    return value


async def transfers_named(pool: asyncpg.Pool, *transfer_ids: str) -> int:
    value: int = await pool.fetchval("SELECT count(*) FROM transfers WHERE transfer_id = ANY($1::text[])", transfer_ids)
    return value


async def test_a_replayed_create_answers_its_original_and_changes_nothing(pool: asyncpg.Pool) -> None:
    ledger = await replays_ledger(pool)
    try:
        accrual = transfer("c1", ledger.issuance, ledger.members[0], 100, Reason.ACCRUAL)
        (first,) = await ledger.writer.submit([accrual])
        (again,) = await ledger.writer.submit([accrual])
        assert (first.code, again.code) == (Code.CREATED, Code.EXISTS)
        assert again.debit_balance == first.debit_balance and again.credit_balance == first.credit_balance
        assert await posted(pool, ledger.members[0]) == 100
    finally:
        await ledger.writer.stop()


async def test_a_replay_sharing_a_transaction_with_new_transfers(pool: asyncpg.Pool) -> None:
    """The replay fails the shared transaction's first attempt; the new transfers beside it are
    created once, by the attempt that reads the records."""
    ledger = await replays_ledger(pool)
    try:
        accrual = transfer("s1", ledger.issuance, ledger.members[0], 100, Reason.ACCRUAL)
        await ledger.writer.submit([accrual])
        # Queued together before the dispatcher runs: one transaction takes all three calls.
        calls = [
            ledger.writer.enqueue([transfer("s2", ledger.issuance, ledger.members[0], 10, Reason.ACCRUAL)]),
            ledger.writer.enqueue([accrual]),
            ledger.writer.enqueue([transfer("s3", ledger.members[0], ledger.redemption, 30, Reason.REDEMPTION)]),
        ]
        answers = [outcome.code for outcomes in await asyncio.gather(*calls) for outcome in outcomes]
        assert answers == [Code.CREATED, Code.EXISTS, Code.CREATED]
        assert await posted(pool, ledger.members[0]) == 80
        assert await transfers_named(pool, "s1", "s2", "s3") == 3
    finally:
        await ledger.writer.stop()


async def test_a_replayed_linked_chain_answers_its_original_even_when_it_would_now_fail(pool: asyncpg.Pool) -> None:
    """Decided anew, the chain's first redemption would now lack funds and the chain would record
    nothing (no insert to fail): the writer must find the originals all the same."""
    ledger = await replays_ledger(pool)
    try:
        await ledger.writer.submit([transfer("l0", ledger.issuance, ledger.members[0], 100, Reason.ACCRUAL)])
        chain = [
            transfer("l1", ledger.members[0], ledger.redemption, 80, Reason.REDEMPTION, flags={"linked": True}),
            transfer("l2", ledger.members[0], ledger.redemption, 10, Reason.REDEMPTION),
        ]
        assert [o.code for o in await ledger.writer.submit(chain)] == [Code.CREATED, Code.CREATED]
        assert [o.code for o in await ledger.writer.submit(chain)] == [Code.EXISTS, Code.EXISTS]
        assert await posted(pool, ledger.members[0]) == 10
    finally:
        await ledger.writer.stop()


async def test_a_replay_whose_lot_terms_the_clock_has_overtaken(pool: asyncpg.Pool) -> None:
    """Decided anew after its expiry, the accrual's terms would be refused (INVALID_LOT_TERMS,
    recorded nowhere): the replay must answer the original instead."""
    ledger = await replays_ledger(pool)
    try:
        accrual = transfer(
            "x1", ledger.issuance, ledger.members[0], 50, Reason.ACCRUAL, lot_terms={"expiry_time": seconds(T0 + DAY)}
        )
        (first,) = await ledger.writer.submit([accrual])
        assert first.code is Code.CREATED
        ledger.clock.now = T0 + 2 * DAY
        (again,) = await ledger.writer.submit([accrual])
        assert again.code is Code.EXISTS
        assert await transfers_named(pool, "x1") == 1
    finally:
        await ledger.writer.stop()
