"""Activation and expiry of lots on real PostgreSQL, with a clock the test moves.

The wallet's use cases run in-process here (the writer and the background work take a clock);
everything else is the production code on a real database.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

import asyncpg
from loyalty.wallet.v1 import wallet_pb2

from services.wallet import mapping, store, usecases, worker
from services.wallet.domain.accounts import AccountKind
from services.wallet.domain.ledger import balance_of
from services.wallet.domain.model import (
    Code,
    ExpiryMode,
    Policy,
    Reason,
    TransferRequest,
    Unit,
)
from shared.db import Connection
from tests.integration.wallet.ledger import open_ledger

DAY = timedelta(days=1)
T0 = datetime(2026, 1, 10, 12, 0, tzinfo=UTC)
POINTS = Unit(1, "", 2)


def request(transfer_id: str, debit: str, credit: str, amount: int, reason: Reason, **flags: bool) -> TransferRequest:
    """As CreateTransfers makes it: the transfer read from its protobuf, which is its body."""
    return mapping.transfer_request(
        wallet_pb2.Transfer(
            transfer_id=transfer_id,
            debit_account_id=debit,
            credit_account_id=credit,
            amount_minor=amount,
            timeout_s=int((3 * DAY).total_seconds()) if flags.get("pending") else 0,
            flags=wallet_pb2.TransferFlags(**flags),
            reason=int(reason),  # type: ignore[arg-type]
        )
    )


async def test_points_activate_expire_and_held_points_wait_for_their_hold(pool: asyncpg.Pool) -> None:
    program = f"clock-{uuid.uuid4().hex[:10]}"
    kind = AccountKind(
        program_id=program,
        kind="base",
        display_name="Bonus points",
        unit=POINTS,
        policy=Policy(
            activation_delay_s=int((14 * DAY).total_seconds()),
            expiry_mode=ExpiryMode.AFTER_DURATION,
            lifetime_s=int((30 * DAY).total_seconds()),
        ),
        open_by_default=True,
    )
    ledger = await open_ledger(pool, kind, T0)
    writer, clock, (member,) = ledger.writer, ledger.clock, ledger.members
    issuance, redemption = ledger.issuance, ledger.redemption

    async def balance_at(now: datetime) -> tuple[int, int]:
        (view,), _ = await usecases.read_accounts(pool, [member], now=now)
        return view.balance.available, view.balance.pending

    try:
        (accrued,) = await writer.submit([request("a1", issuance, member, 1000, Reason.ACCRUAL)])
        assert accrued.code is Code.CREATED
        assert await balance_at(T0) == (0, 1000)  # inside the 14-day pending period
        (early,) = await writer.submit([request("r0", member, redemption, 1, Reason.REDEMPTION)])
        assert early.code is Code.INSUFFICIENT_FUNDS

        clock.now = T0 + 14 * DAY + timedelta(seconds=1)
        assert await balance_at(clock.now) == (1000, 0)
        (spent,) = await writer.submit([request("r1", member, redemption, 300, Reason.REDEMPTION)])
        assert spent.code is Code.CREATED
        clock.now = T0 + 43 * DAY
        (hold,) = await writer.submit([request("h1", member, redemption, 200, Reason.REDEMPTION, pending=True)])
        assert hold.code is Code.CREATED

        # The lot expires 30 days after activation: what is not held goes to EXPIRY, once,
        # even with two workers racing; the held part waits for its hold.
        expired_at = T0 + 44 * DAY + timedelta(seconds=2)
        assert await balance_at(expired_at) == (0, 0)
        rounds = await asyncio.gather(worker.expire_lots(pool, expired_at), worker.expire_lots(pool, expired_at))
        assert sorted(rounds) == [0, 1]
        assert await worker.expire_lots(pool, expired_at) == 0

        clock.now = expired_at
        void = mapping.transfer_request(
            wallet_pb2.Transfer(
                transfer_id="v1", pending_transfer_id="h1", flags=wallet_pb2.TransferFlags(void_pending=True)
            )
        )
        (voided,) = await writer.submit([void])
        assert voided.code is Code.CREATED
        assert await worker.expire_lots(pool, expired_at) == 1  # the released 200 expire now
    finally:
        await writer.stop()

    async with pool.acquire() as connection:
        accounts = await store.load_accounts(connection, [member], lock=False)
        expiry = await store.expiry_account_id(connection, accounts[member])
        records = await store.load_records(connection, [r for r in await _expiry_ids(connection, member)], lock=False)
        sums = await store.ledger_sum(connection)
    assert balance_of(accounts[member], expired_at).available == 0
    assert sorted(r.amount for r in records.values()) == [200, 500]
    assert all(r.request.credit_account_id == expiry for r in records.values())
    assert all(posted == 0 for _, _, posted, _ in sums)


async def _expiry_ids(connection: Connection, account_id: str) -> list[str]:
    rows = await connection.fetch(
        "SELECT transfer_id FROM transfers WHERE debit_account_id = $1 AND transfer_id LIKE 'wallet:expiry:%'",
        account_id,
    )
    return [row["transfer_id"] for row in rows]
