"""The wallet's use cases other than applying transfers: each owns its connection and transaction."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from services.wallet import store
from services.wallet.domain.accounts import AccountKind
from services.wallet.domain.ledger import balance_of, internal_request
from services.wallet.domain.model import (
    Account,
    AccountState,
    Balance,
    FreezeMode,
    Lot,
    SystemRole,
    TransferRecord,
    Unit,
)
from services.wallet.domain.model import (
    Reason as TransferReason,
)
from shared.errors import DomainError, Reason


async def create_kind(pool: asyncpg.Pool, kind: AccountKind) -> AccountKind:
    """Define a kind (and its program's system accounts); the same definition again is a success."""
    async with pool.acquire() as connection, connection.transaction():
        stored = await store.create_kind(connection, kind)
        if not stored.same_definition(kind):
            raise DomainError(
                Reason.ALREADY_EXISTS,
                f"kind {kind.kind!r} already exists in program {kind.program_id!r} with a different definition",
                metadata={"resourceType": "AccountKind", "resourceId": f"{kind.program_id}/{kind.kind}"},
            )
        await store.ensure_program_system_accounts(connection, stored)
    return stored


async def list_kinds(pool: asyncpg.Pool, program_id: str) -> list[AccountKind]:
    async with pool.acquire() as connection:
        return await store.list_kinds(connection, program_id)


@dataclass(frozen=True)
class OpenedAccounts:
    master_account_id: str
    master_created: bool
    opened_account_ids: list[str]


async def open_member_accounts(
    pool: asyncpg.Pool, *, program_id: str, member_id: str, kinds: Sequence[str]
) -> OpenedAccounts:
    async with pool.acquire() as connection, connection.transaction():
        program_kinds = {k.kind: k for k in await store.list_kinds(connection, program_id)}
        wanted = list(kinds) or [k.kind for k in program_kinds.values() if k.open_by_default]
        unknown = [k for k in wanted if k not in program_kinds]
        if unknown:
            raise DomainError(
                Reason.RESOURCE_NOT_FOUND,
                f"program {program_id!r} has no account kind {unknown[0]!r}",
                metadata={"resourceType": "AccountKind", "resourceId": f"{program_id}/{unknown[0]}"},
            )
        master_id, created, state = await store.ensure_master_account(connection, program_id, member_id)
        if state == AccountState.CLOSED:
            raise DomainError(Reason.ACCOUNT_CLOSED, f"the master account of member {member_id!r} is closed")
        opened = []
        for kind in wanted:
            account_id, was_opened = await store.ensure_primary_account(
                connection,
                master_account_id=master_id,
                program_id=program_id,
                member_id=member_id,
                kind=program_kinds[kind],
            )
            if was_opened:
                opened.append(account_id)
    return OpenedAccounts(master_id, created, opened)


async def open_system_account(
    pool: asyncpg.Pool, *, program_id: str, role: SystemRole, unit: Unit, partner_id: str
) -> tuple[str, bool]:
    async with pool.acquire() as connection, connection.transaction():
        units = {k.unit for k in await store.list_kinds(connection, program_id)}
        if unit not in units:
            raise DomainError(Reason.INVALID_ARGUMENT, f"program {program_id!r} has no kind with this unit")
        return await store.ensure_system_account(
            connection, program_id=program_id, role=role, unit=unit, partner_id=partner_id
        )


@dataclass(frozen=True)
class AccountView:
    account: Account
    balance: Balance


async def read_accounts(
    pool: asyncpg.Pool, account_ids: Sequence[str], *, now: datetime | None = None
) -> tuple[list[AccountView], datetime]:
    """Accounts with their balances at one instant (the database's clock unless given), in the
    order asked; unknown ids are skipped."""
    async with pool.acquire() as connection:
        now = now or await store.database_now(connection)
        accounts = await store.load_accounts(connection, account_ids, lock=False)
        systems = await store.system_balances(connection, [i for i, a in accounts.items() if not a.has_lots])
    views = []
    for account_id in account_ids:
        account = accounts.get(account_id)
        if account is None:
            continue
        if account.has_lots:
            balance = balance_of(account, now)
        else:
            posted, debits_pending, credits_pending = systems.get(account_id, (0, 0, 0))
            balance = Balance(
                account_id, "", posted - debits_pending, credits_pending, debits_pending, 0, None, 0, account.unit
            )
        views.append(AccountView(account, balance))
    return views, now


async def member_account_ids(pool: asyncpg.Pool, *, program_id: str, member_id: str) -> list[str]:
    async with pool.acquire() as connection:
        return await store.member_account_ids(connection, program_id=program_id, member_id=member_id)


async def master_account_ids(pool: asyncpg.Pool, master_account_id: str) -> list[str]:
    async with pool.acquire() as connection:
        return await store.master_account_ids(connection, master_account_id)


async def lookup(pool: asyncpg.Pool, transfer_ids: Sequence[str]) -> dict[str, TransferRecord]:
    async with pool.acquire() as connection:
        return await store.load_records(connection, transfer_ids, lock=False)


async def entries(pool: asyncpg.Pool, account_ids: Sequence[str], **filters: Any) -> list[Any]:
    async with pool.acquire() as connection:
        return await store.list_entries(connection, account_ids, **filters)


async def lots(
    pool: asyncpg.Pool, account_id: str, *, offset: int, limit: int, include_spent: bool
) -> tuple[list[Lot], datetime]:
    async with pool.acquire() as connection:
        now = await store.database_now(connection)
        return await store.list_lots(
            connection, account_id, offset=offset, limit=limit, include_spent=include_spent
        ), now


async def set_frozen(
    pool: asyncpg.Pool, *, account_id: str, master_account_id: str, frozen: bool, mode: FreezeMode, reason: str
) -> None:
    """Freeze (or unfreeze) one account or a master account with all its sub-accounts."""
    state = AccountState.FROZEN if frozen else AccountState.ACTIVE
    mode = (mode or FreezeMode.DEBITS) if frozen else FreezeMode.NONE
    async with pool.acquire() as connection, connection.transaction():
        if master_account_id:
            before = await store.set_master_state(
                connection, master_account_id, state=state, freeze_mode=mode, reason=reason
            )
        else:
            before = await store.set_account_state(connection, account_id, state=state, freeze_mode=mode, reason=reason)
    if before is None:
        raise DomainError(Reason.ACCOUNT_NOT_FOUND, f"no account {master_account_id or account_id!r}")
    if before == AccountState.CLOSED:
        raise DomainError(Reason.ACCOUNT_CLOSED, f"account {master_account_id or account_id!r} is closed")


async def open_sub_account(
    pool: asyncpg.Pool, *, program_id: str, kind: str, master_account_id: str, external_ref: str, display_name: str
) -> tuple[str, bool]:
    """An additional account under a master account, or a bearer account (money kinds only)."""
    async with pool.acquire() as connection, connection.transaction():
        account_kind = await store.get_kind(connection, program_id, kind)
        if account_kind is None:
            raise DomainError(
                Reason.RESOURCE_NOT_FOUND,
                f"program {program_id!r} has no account kind {kind!r}",
                metadata={"resourceType": "AccountKind", "resourceId": f"{program_id}/{kind}"},
            )
        member_id = ""
        if master_account_id:
            master = await store.master_account(connection, master_account_id)
            if master is None or master["program_id"] != program_id:
                raise DomainError(Reason.ACCOUNT_NOT_FOUND, f"no master account {master_account_id!r} in the program")
            if master["state"] == AccountState.CLOSED:
                raise DomainError(Reason.ACCOUNT_CLOSED, f"master account {master_account_id!r} is closed")
            member_id = master["member_id"]
        elif account_kind.unit.type != 2:
            raise DomainError(
                Reason.INVALID_ARGUMENT,
                "a bearer account (no master account) must be of a MONEY kind (gift balances)",
            )
        account_id, created = await store.ensure_sub_account(
            connection,
            program_id=program_id,
            kind=account_kind,
            master_account_id=master_account_id,
            member_id=member_id,
            external_ref=external_ref,
            display_name=display_name,
        )
    if not account_id:
        raise DomainError(
            Reason.ALREADY_EXISTS,
            f"external_ref {external_ref!r} already names another account",
            metadata={"resourceType": "Account", "resourceId": external_ref},
        )
    return account_id, created


async def find_accounts(pool: asyncpg.Pool, **filters: Any) -> list[tuple[str, datetime]]:
    async with pool.acquire() as connection:
        return await store.find_account_ids(connection, **filters)


async def close_accounts(
    pool: asyncpg.Pool, writer: Any, *, account_ids: Sequence[str], forfeit: bool, reason: str
) -> list[str]:
    """Close accounts for good; with `forfeit`, what is left goes to EXPIRY first. Returns the
    forfeiture transfer ids. Each account is frozen (mode ALL) before it is emptied, so nothing
    lands between the forfeiture and the closure; a failure leaves it frozen, and the call can
    be repeated (the forfeiture's id is derived from the account's state)."""
    views, _ = await read_accounts(pool, account_ids)
    for view in views:
        _check_closable(view, forfeit=forfeit)
    forfeits = []
    for view in views:
        account = view.account
        if account.state is AccountState.CLOSED:
            continue
        async with pool.acquire() as connection, connection.transaction():
            await store.set_account_state(
                connection, account.account_id, state=AccountState.FROZEN, freeze_mode=FreezeMode.ALL, reason=reason
            )
        (fresh,), _ = await read_accounts(pool, [account.account_id])
        _check_closable(fresh, forfeit=forfeit)
        left = fresh.account.posted
        if left > 0:
            async with pool.acquire() as connection:
                expiry = await store.expiry_account_id(connection, fresh.account)
            if expiry is None:
                raise DomainError(Reason.INTERNAL, "the program has no EXPIRY account")
            transfer_id = f"wallet:closure:{account.account_id}:{fresh.account.credits_posted}"
            request = internal_request(
                transfer_id=transfer_id,
                debit_account_id=account.account_id,
                credit_account_id=expiry,
                amount=left,
                reason=TransferReason.ACCOUNT_CLOSURE,
            )
            (outcome,) = await writer.submit([request], internal=True)
            if not outcome.code.succeeded:
                raise DomainError(Reason.CONCURRENT_MODIFICATION, f"forfeiting the balance failed: {outcome.code.name}")
            forfeits.append(transfer_id)
        async with pool.acquire() as connection, connection.transaction():
            await store.set_account_state(
                connection, account.account_id, state=AccountState.CLOSED, freeze_mode=FreezeMode.NONE, reason=reason
            )
    return forfeits


def _check_closable(view: AccountView, *, forfeit: bool) -> None:
    account = view.account
    if account.state is AccountState.CLOSED:
        return
    if account.debits_pending or account.credits_pending:
        raise DomainError(
            Reason.INVALID_STATE_TRANSITION,
            f"account {account.account_id} has open holds",
            metadata={"cause": "OPEN_HOLDS"},
        )
    if account.posted < 0:
        raise DomainError(
            Reason.ACCOUNT_NOT_EMPTY, f"account {account.account_id} is in debt", metadata={"cause": "DEBT_OUTSTANDING"}
        )
    if account.posted > 0 and not forfeit:
        raise DomainError(
            Reason.ACCOUNT_NOT_EMPTY,
            f"account {account.account_id} still has a balance",
            metadata={"cause": "BALANCE_NOT_ZERO"},
        )


async def close_master(pool: asyncpg.Pool, master_account_id: str, *, reason: str) -> None:
    async with pool.acquire() as connection, connection.transaction():
        await store.set_master_state(
            connection, master_account_id, state=AccountState.CLOSED, freeze_mode=FreezeMode.NONE, reason=reason
        )


async def update_kind(pool: asyncpg.Pool, kind: AccountKind) -> AccountKind:
    async with pool.acquire() as connection, connection.transaction():
        stored = await store.get_kind(connection, kind.program_id, kind.kind)
        if stored is None:
            raise DomainError(
                Reason.RESOURCE_NOT_FOUND,
                f"program {kind.program_id!r} has no account kind {kind.kind!r}",
                metadata={"resourceType": "AccountKind", "resourceId": f"{kind.program_id}/{kind.kind}"},
            )
        if stored.unit != kind.unit:
            raise DomainError(Reason.INVALID_ARGUMENT, "a kind's unit never changes")
        updated = await store.update_kind(connection, kind)
    assert updated is not None
    return updated


async def transfers(pool: asyncpg.Pool, **filters: Any) -> list[TransferRecord]:
    async with pool.acquire() as connection:
        return await store.find_transfers(connection, **filters)


async def member_pools(pool: asyncpg.Pool, *, program_id: str, member_id: str) -> list[tuple[AccountView, int]]:
    """The pools the member belongs to, each with what the member may spend from it now."""
    async with pool.acquire() as connection:
        ids = await store.member_pool_accounts(connection, program_id=program_id, member_id=member_id)
        now = await store.database_now(connection)
        accounts = await store.load_accounts(connection, ids, lock=False)
        await store.load_pools(connection, accounts, now)
    result = []
    for account_id in ids:
        account = accounts[account_id]
        balance = balance_of(account, now)
        allowance = account.pool.allowance(member_id, now) if account.pool is not None else -1
        spendable = balance.available if allowance is None else min(balance.available, max(0, allowance))
        result.append((AccountView(account, balance), max(0, spendable)))
    return result


async def master_owner(pool: asyncpg.Pool, master_account_id: str) -> tuple[str, str] | None:
    """(program_id, member_id) of a master account."""
    async with pool.acquire() as connection:
        row = await store.master_account(connection, master_account_id)
    return (row["program_id"], row["member_id"]) if row is not None else None
