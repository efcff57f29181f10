"""Between members: gifts of points (TransferPoints) and household pools.

Both go through the ledger's one transfer machinery: a gift is a MEMBER_TRANSFER whose id the
wallet derives from the caller's idempotency key, so a retried gift is the same transfer and a
reused key with another body is refused by the ledger itself; pool spending is checked by the
ledger on every transfer (services.wallet.domain.pools).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from services.wallet import store
from services.wallet.domain.ledger import balance_of, internal_request
from services.wallet.domain.model import Account, AccountType, Balance, Code, Outcome, Reason, TransferRequest
from services.wallet.domain.pools import POOL_MEMBERS_MAX, Period, PoolState, Role, period_start
from services.wallet.writer import TransferWriter
from shared.errors import DomainError
from shared.errors import Reason as ErrorReason

ACTOR_MEMBER = 3  # loyalty.common.v1.ActorType.ACTOR_TYPE_MEMBER

# How a gift's refusal reads as an RPC error.
GIFT_REFUSALS: dict[Code, tuple[ErrorReason, dict[str, str]]] = {
    Code.EXISTS_WITH_DIFFERENT_FIELDS: (ErrorReason.IDEMPOTENCY_KEY_REUSED, {}),
    Code.INSUFFICIENT_FUNDS: (ErrorReason.INSUFFICIENT_POINTS, {}),
    Code.DEBIT_ACCOUNT_FROZEN: (ErrorReason.ACCOUNT_FROZEN, {}),
    Code.CREDIT_ACCOUNT_FROZEN: (ErrorReason.ACCOUNT_FROZEN, {}),
    Code.DEBIT_ACCOUNT_CLOSED: (ErrorReason.ACCOUNT_CLOSED, {}),
    Code.CREDIT_ACCOUNT_CLOSED: (ErrorReason.ACCOUNT_CLOSED, {}),
    Code.REASON_NOT_ALLOWED_FOR_ACCOUNT: (ErrorReason.PERMISSION_DENIED, {"cause": "NOT_TRANSFERABLE"}),
    Code.BALANCE_LIMIT_EXCEEDED: (ErrorReason.LIMIT_EXCEEDED, {"limit": "balance_max_minor"}),
    Code.DEBIT_ACCOUNT_NOT_FOUND: (ErrorReason.ACCOUNT_NOT_FOUND, {}),
    Code.CREDIT_ACCOUNT_NOT_FOUND: (ErrorReason.ACCOUNT_NOT_FOUND, {}),
    Code.ACCOUNTS_MUST_HAVE_SAME_UNIT: (ErrorReason.INVALID_ARGUMENT, {}),
}


@dataclass(frozen=True)
class Actor:
    type: int
    id: str

    @property
    def is_member(self) -> bool:
        return self.type == ACTOR_MEMBER


def gift_transfer_id(actor: Actor, key: str) -> str:
    digest = hashlib.sha256(f"{actor.type}:{actor.id}:{key}".encode()).hexdigest()[:40]
    return f"wallet:tp:{digest}"


async def give_points(
    pool: asyncpg.Pool,
    writer: TransferWriter,
    *,
    from_account_id: str,
    to_account_id: str,
    amount: int,
    memo: str,
    metadata: tuple[tuple[str, str], ...],
    actor: Actor,
    key: str,
    body: bytes,
) -> Outcome:
    async with pool.acquire() as connection:
        accounts = await store.load_accounts(connection, [from_account_id, to_account_id], lock=False, with_lots=False)
    giver, receiver = accounts.get(from_account_id), accounts.get(to_account_id)
    if giver is None or receiver is None:
        missing = from_account_id if giver is None else to_account_id
        raise DomainError(ErrorReason.ACCOUNT_NOT_FOUND, f"no account {missing!r}", metadata={"accountId": missing})
    if (
        giver.account_id == receiver.account_id
        or giver.kind != receiver.kind
        or AccountType.MEMBER not in (giver.type,)
    ):
        raise DomainError(ErrorReason.INVALID_ARGUMENT, "points move between two member accounts of the same kind")
    if actor.is_member and giver.member_id != actor.id:
        raise DomainError(
            ErrorReason.PERMISSION_DENIED, "only the owner may give these points", metadata={"cause": "NOT_OWNER"}
        )
    request = _gift_request(gift_transfer_id(actor, key), giver, receiver, amount, memo, metadata, body)
    (outcome,) = await writer.submit([request], internal=True)
    if not outcome.code.succeeded:
        reason, extra = GIFT_REFUSALS.get(outcome.code, (ErrorReason.INTERNAL, {}))
        raise DomainError(
            reason, f"the gift was refused: {outcome.code.name}", metadata={"code": outcome.code.name, **extra}
        )
    return outcome


def _gift_request(
    transfer_id: str,
    giver: Account,
    receiver: Account,
    amount: int,
    memo: str,
    metadata: tuple[tuple[str, str], ...],
    body: bytes,
) -> TransferRequest:
    base = internal_request(
        transfer_id=transfer_id,
        debit_account_id=giver.account_id,
        credit_account_id=receiver.account_id,
        amount=amount,
        reason=Reason.MEMBER_TRANSFER,
    )
    # The body is the caller's request itself: a retry with the same key and body is the same
    # transfer; the same key with another body is EXISTS_WITH_DIFFERENT_FIELDS.
    return TransferRequest(**{**vars(base), "memo": memo, "metadata": metadata, "body": body})


# ------------------------------------------------------------------------------------------------
# Pools


@dataclass(frozen=True)
class PoolView:
    row: Any
    members: list[Any]
    spent: dict[tuple[str, datetime], int]
    account: Account | None
    balance: Balance | None


def _can_manage(actor: Actor, owner_member_id: str) -> bool:
    return not actor.is_member or actor.id == owner_member_id


async def _primary_account(connection: Any, program_id: str, member_id: str, kind: str) -> str | None:
    ids = await store.member_account_ids(connection, program_id=program_id, member_id=member_id)
    accounts = await store.load_accounts(connection, ids, lock=False, with_lots=False)
    return next((a.account_id for a in accounts.values() if a.kind == kind and a.primary), None)


async def create_pool(
    pool: asyncpg.Pool,
    *,
    program_id: str,
    owner_member_id: str,
    kind: str,
    display_name: str,
    time_zone: str,
    actor: Actor,
) -> str:
    if not _can_manage(actor, owner_member_id):
        raise DomainError(
            ErrorReason.PERMISSION_DENIED, "a member may only create their own pool", metadata={"cause": "NOT_OWNER"}
        )
    async with pool.acquire() as connection, connection.transaction():
        account_kind = await store.get_kind(connection, program_id, kind)
        if account_kind is None:
            raise DomainError(
                ErrorReason.RESOURCE_NOT_FOUND,
                f"no account kind {kind!r}",
                metadata={"resourceType": "AccountKind", "resourceId": f"{program_id}/{kind}"},
            )
        if not account_kind.policy.transferable:
            raise DomainError(
                ErrorReason.PERMISSION_DENIED, f"kind {kind!r} cannot be pooled", metadata={"cause": "NOT_TRANSFERABLE"}
            )
        if await _primary_account(connection, program_id, owner_member_id, kind) is None:
            raise DomainError(ErrorReason.ACCOUNT_NOT_FOUND, f"member {owner_member_id!r} has no {kind!r} account")
        pool_id = await store.create_pool(
            connection,
            program_id=program_id,
            kind=account_kind,
            owner_member_id=owner_member_id,
            display_name=display_name,
            time_zone=time_zone,
        )
        if pool_id is None:  # raising inside the transaction rolls the new pool back
            raise DomainError(
                ErrorReason.ALREADY_EXISTS,
                f"member {owner_member_id!r} already belongs to a pool",
                metadata={"resourceType": "PoolMember", "resourceId": owner_member_id},
            )
        return pool_id


async def _active_pool(connection: Any, pool_id: str, actor: Actor, *, owner_only: bool = True) -> Any:
    row = await store.pool_row(connection, pool_id, lock=True)
    if row is None:
        raise DomainError(
            ErrorReason.RESOURCE_NOT_FOUND,
            f"no pool {pool_id!r}",
            metadata={"resourceType": "Pool", "resourceId": pool_id},
        )
    if owner_only and not _can_manage(actor, row["owner_member_id"]):
        raise DomainError(
            ErrorReason.PERMISSION_DENIED, "only the pool's owner may do this", metadata={"cause": "NOT_OWNER"}
        )
    if row["state"] != PoolState.ACTIVE:
        raise DomainError(ErrorReason.INVALID_STATE_TRANSITION, "the pool is closed", metadata={"cause": "POOL_CLOSED"})
    return row


async def add_member(
    pool: asyncpg.Pool, *, pool_id: str, member_id: str, period: Period, limit_minor: int, actor: Actor
) -> None:
    async with pool.acquire() as connection, connection.transaction():
        row = await _active_pool(connection, pool_id, actor)
        if len(await store.pool_members(connection, pool_id)) >= POOL_MEMBERS_MAX:
            raise DomainError(
                ErrorReason.QUOTA_EXCEEDED,
                f"a pool has at most {POOL_MEMBERS_MAX} members",
                metadata={"cause": "POOL_FULL"},
            )
        if await _primary_account(connection, row["program_id"], member_id, row["kind"]) is None:
            raise DomainError(ErrorReason.ACCOUNT_NOT_FOUND, f"member {member_id!r} has no {row['kind']!r} account")
        added = await store.add_pool_member(
            connection,
            pool_id=pool_id,
            program_id=row["program_id"],
            kind=row["kind"],
            member_id=member_id,
            role=Role.MEMBER,
            period=period,
            limit_minor=limit_minor,
        )
        if not added:
            raise DomainError(
                ErrorReason.ALREADY_EXISTS,
                f"member {member_id!r} already belongs to a pool",
                metadata={"resourceType": "PoolMember", "resourceId": member_id},
            )


async def update_member(
    pool: asyncpg.Pool, *, pool_id: str, member_id: str, period: Period, limit_minor: int, actor: Actor
) -> None:
    async with pool.acquire() as connection, connection.transaction():
        await _active_pool(connection, pool_id, actor)
        updated = await store.update_pool_member(
            connection, pool_id=pool_id, member_id=member_id, period=period, limit_minor=limit_minor
        )
    if not updated:
        raise DomainError(
            ErrorReason.RESOURCE_NOT_FOUND,
            f"{member_id!r} is not a limited member of the pool",
            metadata={"resourceType": "PoolMember", "resourceId": member_id},
        )


async def remove_member(pool: asyncpg.Pool, *, pool_id: str, member_id: str, actor: Actor) -> None:
    async with pool.acquire() as connection, connection.transaction():
        row = await _active_pool(connection, pool_id, actor, owner_only=False)
        if member_id == row["owner_member_id"]:
            raise DomainError(
                ErrorReason.INVALID_STATE_TRANSITION,
                "the owner cannot leave; close the pool",
                metadata={"cause": "POOL_OWNER"},
            )
        if not (_can_manage(actor, row["owner_member_id"]) or actor.id == member_id):
            raise DomainError(
                ErrorReason.PERMISSION_DENIED,
                "only the owner or the member may do this",
                metadata={"cause": "NOT_OWNER"},
            )
        await store.remove_pool_member(connection, pool_id=pool_id, member_id=member_id)


async def close_pool(pool: asyncpg.Pool, writer: TransferWriter, *, pool_id: str, actor: Actor) -> None:
    """Return the pool's balance to its owner (keeping the lots' times), then close it."""
    async with pool.acquire() as connection:
        row = await _active_pool(connection, pool_id, actor)
        now = await store.database_now(connection)
        accounts = await store.load_accounts(connection, [str(row["account_id"])], lock=False)
        owner_account = await _primary_account(connection, row["program_id"], row["owner_member_id"], row["kind"])
    account = accounts[str(row["account_id"])]
    balance = balance_of(account, now)
    if account.debits_pending or account.credits_pending:
        raise DomainError(
            ErrorReason.INVALID_STATE_TRANSITION, "the pool has open holds", metadata={"cause": "OPEN_HOLDS"}
        )
    if account.posted < 0:
        raise DomainError(ErrorReason.ACCOUNT_NOT_EMPTY, "the pool is in debt", metadata={"cause": "DEBT_OUTSTANDING"})
    if balance.pending:
        raise DomainError(
            ErrorReason.ACCOUNT_NOT_EMPTY,
            "points of the pool are not active yet; close it later",
            metadata={"cause": "BALANCE_NOT_ZERO"},
        )
    if balance.available > 0 and owner_account is not None:
        request = internal_request(
            transfer_id=f"wallet:pool-return:{pool_id}",
            debit_account_id=account.account_id,
            credit_account_id=owner_account,
            amount=balance.available,
            reason=Reason.POOL_RETURN,
        )
        (outcome,) = await writer.submit([request], internal=True)
        if not outcome.code.succeeded:
            raise DomainError(ErrorReason.CONCURRENT_MODIFICATION, f"returning the balance failed: {outcome.code.name}")
    async with pool.acquire() as connection, connection.transaction():
        await store.close_pool(connection, pool_id)


async def read_pool(pool: asyncpg.Pool, pool_id: str) -> PoolView:
    async with pool.acquire() as connection:
        row = await store.pool_row(connection, pool_id)
        if row is None:
            raise DomainError(
                ErrorReason.RESOURCE_NOT_FOUND,
                f"no pool {pool_id!r}",
                metadata={"resourceType": "Pool", "resourceId": pool_id},
            )
        members = await store.pool_members(connection, pool_id)
        now = await store.database_now(connection)
        accounts = await store.load_accounts(connection, [str(row["account_id"])], lock=False)
        await store.load_pools(connection, accounts, now)
    account = accounts.get(str(row["account_id"]))
    spent = {}
    if account is not None and account.pool is not None:
        for member in account.pool.members.values():
            start = period_start(member.period, now, account.pool.time_zone)
            if start is not None:
                spent[(member.member_id, start)] = member.spent.get(start, 0)
    balance = balance_of(account, now) if account is not None else None
    return PoolView(row, members, spent, account, balance)


async def find_pools(pool: asyncpg.Pool, **filters: Any) -> list[str]:
    async with pool.acquire() as connection:
        return await store.find_pools(connection, **filters)
