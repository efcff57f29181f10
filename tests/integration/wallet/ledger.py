"""A program for the in-process wallet tests: members, its issuance and redemption accounts, and a
transfer writer on a clock the test moves."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from types import SimpleNamespace
from typing import cast

import asyncpg

from services.wallet import store, usecases
from services.wallet.api import WalletServicer
from services.wallet.domain.accounts import AccountKind
from services.wallet.domain.model import SystemRole
from services.wallet.writer import TransferWriter
from shared.server import Runtime


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    async def __call__(self, _connection: object) -> datetime:
        return self.now


@dataclass
class Ledger:
    writer: TransferWriter
    clock: Clock
    members: list[str]  # each member's account of the kind, in the order asked
    issuance: str
    redemption: str


async def open_ledger(pool: asyncpg.Pool, kind: AccountKind, now: datetime, members: Sequence[str] = ("m",)) -> Ledger:
    """The kind's program with `members`, its accounts, and a started writer (the caller stops it)."""
    await usecases.create_kind(pool, kind)
    accounts = []
    for member_id in members:
        opened = await usecases.open_member_accounts(pool, program_id=kind.program_id, member_id=member_id, kinds=[])
        accounts.append(opened.opened_account_ids[0])
    async with pool.acquire() as connection:
        issuance, _ = await store.ensure_system_account(
            connection, program_id=kind.program_id, role=SystemRole.ISSUANCE, unit=kind.unit
        )
        redemption, _ = await store.ensure_system_account(
            connection, program_id=kind.program_id, role=SystemRole.REDEMPTION, unit=kind.unit
        )
    clock = Clock(now)
    writer = TransferWriter(pool, writers=1, transfers_per_transaction_max=100, clock=clock)
    writer.start()
    return Ledger(writer, clock, accounts, issuance, redemption)


def servicer(pool: asyncpg.Pool) -> WalletServicer:
    """The wallet's gRPC handlers on `pool`, for the reads (which need no writer, nor the rest of a
    service's runtime)."""
    return WalletServicer(cast(Runtime, SimpleNamespace(pool=pool)), cast(TransferWriter, None))
