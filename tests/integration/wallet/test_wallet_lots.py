"""A batch reads only the lots it can reach (store._REACHABLE_LOTS), on real PostgreSQL: what it
consumes, in which order, the balances it answers, and the invariants it checks must be those of
a ledger that reads every lot. ListLots reads spent lots only for the states a spent lot has."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
from loyalty.wallet.v1 import wallet_pb2

from services.wallet import mapping, store, usecases, worker
from services.wallet.domain.accounts import AccountKind
from services.wallet.domain.model import Code, ExpiryMode, Policy, Reason, TransferRequest, Unit
from tests.integration.wallet.ledger import open_ledger, servicer

DAY = timedelta(days=1)
T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
POINTS = Unit(1, "", 0)


def points_kind() -> AccountKind:
    """A kind whose points never expire, in a program of its own."""
    return AccountKind(
        f"lots-{uuid.uuid4().hex[:10]}", "base", "Points", POINTS, Policy(expiry_mode=ExpiryMode.NEVER), True
    )


def transfer(
    transfer_id: str, debit: str, credit: str, amount: int, reason: Reason, **extra: object
) -> TransferRequest:
    return mapping.transfer_request(
        wallet_pb2.Transfer(
            transfer_id=transfer_id,
            debit_account_id=debit,
            credit_account_id=credit,
            amount_minor=amount,
            reason=int(reason),  # type: ignore[arg-type]
            **extra,  # type: ignore[arg-type]
        )
    )


def seconds(value: datetime) -> dict[str, int]:
    return {"seconds": int(value.timestamp())}


async def test_a_batch_consumes_the_lots_a_full_read_would(pool: asyncpg.Pool) -> None:
    ledger = await open_ledger(pool, points_kind(), T0, members=("m", "o"))
    writer, clock, (member, other) = ledger.writer, ledger.clock, ledger.members
    issuance, redemption = ledger.issuance, ledger.redemption
    try:
        # Three plain lots a day apart, a lot that expires, and one not active yet.
        for day, transfer_id in enumerate(("a1", "a2", "a3")):
            clock.now = T0 + day * DAY
            (outcome,) = await writer.submit([transfer(transfer_id, issuance, member, 100, Reason.ACCRUAL)])
            assert outcome.code is Code.CREATED
        clock.now = T0 + 3 * DAY
        expiring = transfer(
            "e1", issuance, member, 50, Reason.ACCRUAL, lot_terms={"expiry_time": seconds(T0 + 30 * DAY)}
        )
        pending = transfer(
            "p1", issuance, member, 40, Reason.ACCRUAL, lot_terms={"activation_time": seconds(T0 + 60 * DAY)}
        )
        assert [o.code for o in await writer.submit([expiring, pending])] == [Code.CREATED, Code.CREATED]
        (gift,) = await writer.submit([transfer("g1", issuance, other, 10, Reason.ACCRUAL)])
        assert gift.code is Code.CREATED

        # One batch: two redemptions that reach the expiring lot, all of a1 and part of a2 (a3 is
        # never read), and a credit to an account whose plain lot it does not read either.
        clock.now = T0 + 4 * DAY
        r1, r2, credit = await writer.submit(
            [
                transfer("r1", member, redemption, 120, Reason.REDEMPTION),
                transfer("r2", member, redemption, 60, Reason.REDEMPTION),
                transfer("g2", issuance, other, 5, Reason.ACCRUAL),
            ]
        )
    finally:
        await writer.stop()

    assert [r1.code, r2.code, credit.code] == [Code.CREATED] * 3
    assert r2.debit_balance is not None and credit.credit_balance is not None
    assert (r2.debit_balance.available, r2.debit_balance.pending) == (100 * 3 + 50 - 180, 40)
    assert (credit.credit_balance.available, credit.credit_balance.pending) == (15, 0)
    records = await usecases.lookup(pool, ["a1", "a2", "e1", "r1", "r2"])
    lot_of = {transfer_id: records[transfer_id].allocations[0][0] for transfer_id in ("a1", "a2", "e1")}
    assert records["r1"].allocations == [(lot_of["e1"], 50), (lot_of["a1"], 70)]
    assert records["r2"].allocations == [(lot_of["a1"], 30), (lot_of["a2"], 30)]
    lots, _ = await usecases.lots(pool, member, offset=0, limit=10, include_spent=True)
    assert sorted((lot.transfer_id, lot.remaining) for lot in lots) == [
        ("a1", 0),
        ("a2", 70),
        ("a3", 100),
        ("e1", 0),
        ("p1", 40),
    ]


async def test_a_debit_beyond_the_plain_lots_in_reach_reads_them_all(pool: asyncpg.Pool) -> None:
    ledger = await open_ledger(pool, points_kind(), T0)
    writer, clock, (member,) = ledger.writer, ledger.clock, ledger.members
    issuance, redemption = ledger.issuance, ledger.redemption
    try:
        for day in range(4):
            clock.now = T0 + day * DAY
            await writer.submit([transfer(f"a{day}", issuance, member, 10, Reason.ACCRUAL)])
        clock.now = T0 + 5 * DAY
        too_much, everything, nothing_left = await writer.submit(
            [
                transfer("r1", member, redemption, 41, Reason.REDEMPTION),
                transfer("r2", member, redemption, 40, Reason.REDEMPTION),
                transfer("r3", member, redemption, 1, Reason.REDEMPTION),
            ]
        )
    finally:
        await writer.stop()
    assert [too_much.code, everything.code, nothing_left.code] == [
        Code.INSUFFICIENT_FUNDS,
        Code.CREATED,
        Code.INSUFFICIENT_FUNDS,
    ]
    assert everything.debit_balance is not None and everything.debit_balance.available == 0
    records = await usecases.lookup(pool, ["r2"])
    assert [amount for _, amount in records["r2"].allocations] == [10, 10, 10, 10]


async def test_list_lots_reads_spent_lots_only_for_the_states_spent_lots_have(pool: asyncpg.Pool) -> None:
    # ListLots tells a lot's state by the database's clock: the lots are made around it.
    now = datetime.now(UTC)
    ledger = await open_ledger(pool, points_kind(), now - 10 * DAY)
    writer, clock, (member,) = ledger.writer, ledger.clock, ledger.members
    issuance, redemption = ledger.issuance, ledger.redemption
    try:
        # c1 is spent by r1 (the oldest plain lot goes first), a1 stays active, e1 expires, p1
        # activates in a month.
        (c1,) = await writer.submit([transfer("c1", issuance, member, 30, Reason.ACCRUAL)])
        clock.now = now - 9 * DAY
        (a1,) = await writer.submit([transfer("a1", issuance, member, 100, Reason.ACCRUAL)])
        clock.now = now - 8 * DAY
        (r1,) = await writer.submit([transfer("r1", member, redemption, 30, Reason.REDEMPTION)])
        clock.now = now - 7 * DAY
        expiring = {"expiry_time": seconds(now - 6 * DAY)}
        later = {"activation_time": seconds(now + 30 * DAY)}
        e1, p1 = await writer.submit(
            [
                transfer("e1", issuance, member, 20, Reason.ACCRUAL, lot_terms=expiring),
                transfer("p1", issuance, member, 40, Reason.ACCRUAL, lot_terms=later),
            ]
        )
    finally:
        await writer.stop()
    assert [o.code for o in (c1, a1, r1, e1, p1)] == [Code.CREATED] * 5
    assert await worker.expire_lots(pool, now - 5 * DAY) == 1

    handlers = servicer(pool)

    async def listed(*states: wallet_pb2.LotState.ValueType) -> dict[str, wallet_pb2.LotState.ValueType]:
        response = await handlers.ListLots(wallet_pb2.ListLotsRequest(account_id=member, states=states), None)
        return {lot.transfer_id: lot.state for lot in response.lots}

    pending, active = wallet_pb2.LOT_STATE_PENDING, wallet_pb2.LOT_STATE_ACTIVE
    consumed, expired = wallet_pb2.LOT_STATE_CONSUMED, wallet_pb2.LOT_STATE_EXPIRED
    assert await listed() == {"a1": active, "p1": pending}
    assert await listed(pending) == {"p1": pending}  # as processing asks on every refund
    assert await listed(active) == {"a1": active}
    assert await listed(consumed) == {"c1": consumed}
    assert await listed(expired) == {"e1": expired}
    assert await listed(pending, consumed) == {"p1": pending, "c1": consumed}
    every = await listed(pending, active, consumed, expired)
    assert every == {"a1": active, "p1": pending, "c1": consumed, "e1": expired}
    # The rule ListLots reads by: a lot is spent (nothing remains) exactly in SPENT_LOT_STATES.
    lots, now = await usecases.lots(pool, member, offset=0, limit=10, include_spent=True)
    assert len(lots) == 4
    for lot in lots:
        assert (mapping.lot_message(lot, now).state in mapping.SPENT_LOT_STATES) is (lot.remaining == 0)


async def test_text_array_literals_survive_any_character(pool: asyncpg.Pool) -> None:
    values = ["", "a", "NULL", "null", 'q"uo\\te', "{x,y}", " sp ", "ünï", "a,b", "\\", '"', "\t\n"]
    async with pool.acquire() as connection:
        assert await connection.fetchval("SELECT $1::text::text[]", store._text_literal(values)) == values
        assert await connection.fetchval("SELECT $1::text::text[]", store._text_literal([])) == []
    with pytest.raises(ValueError, match="NUL"):
        store._text_literal(["a\x00b"])
