"""All SQL of the wallet. Functions take a connection; the caller owns the transaction.

Lock order, the same for every writer so that writers never deadlock on accounts: the transfer
records a batch names (sorted by id), then its member and pool accounts (sorted by id, FOR
UPDATE), then its SYSTEM accounts (sorted by id, FOR SHARE: concurrent batches share them);
stripes of SYSTEM accounts last (a rare deadlock between two stripes is retried by the writer).
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import fields
from datetime import UTC, datetime, timedelta
from typing import Any

from services.wallet import mapping
from services.wallet.domain.accounts import PROGRAM_SYSTEM_ROLES, STRIPES, AccountKind, balance_floor
from services.wallet.domain.ledger import (
    KEEPS_LOT_TIMES,
    SYSTEM_ACCOUNT,
    WALLET_ID_PREFIX,
    Batch,
    LedgerInvariantError,
)
from services.wallet.domain.model import (
    INT64_MAX,
    Account,
    AccountState,
    AccountType,
    Balance,
    Code,
    EntryRecord,
    ExpiryMode,
    Flags,
    FreezeMode,
    Lot,
    LotTerms,
    Outcome,
    OverdraftMode,
    Policy,
    Reason,
    Reference,
    SystemRole,
    TransferRecord,
    TransferRequest,
    TransferState,
    Unit,
)
from services.wallet.domain.pools import Period, Pool, PoolMember, PoolState, Role
from shared.db import Connection

_UUID_TEXT = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")

# ------------------------------------------------------------------------------------------------
# Kinds and accounts


async def create_kind(connection: Connection, kind: AccountKind) -> AccountKind:
    """Insert the kind unless it exists; return what is stored (the caller compares)."""
    policy = kind.policy
    await connection.execute(
        """
        INSERT INTO account_kinds (program_id, kind, display_name, unit_type, currency_code, scale, spendable,
            transferable, overdraft_mode, debt_limit_minor, balance_max_minor, activation_delay_s, expiry_mode,
            lifetime_s, fixed_expiry_time, redemption_priority, open_by_default)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17)
        ON CONFLICT (program_id, kind) DO NOTHING
        """,
        kind.program_id,
        kind.kind,
        kind.display_name,
        kind.unit.type,
        kind.unit.currency_code,
        kind.unit.scale,
        policy.spendable,
        policy.transferable,
        int(policy.overdraft_mode),
        policy.debt_limit_minor,
        policy.balance_max_minor,
        policy.activation_delay_s,
        int(policy.expiry_mode),
        policy.lifetime_s,
        policy.fixed_expiry_time,
        policy.redemption_priority,
        kind.open_by_default,
    )
    stored = await get_kind(connection, kind.program_id, kind.kind)
    assert stored is not None  # just inserted or already there; kinds are never deleted
    return stored


async def update_kind(connection: Connection, kind: AccountKind) -> AccountKind | None:
    """Replace a kind's mutable parts; its accounts' balance floors follow the new policy."""
    policy = kind.policy
    updated = await connection.fetchval(
        """
        UPDATE account_kinds SET display_name = $3, spendable = $4, transferable = $5, overdraft_mode = $6,
            debt_limit_minor = $7, balance_max_minor = $8, activation_delay_s = $9, expiry_mode = $10,
            lifetime_s = $11, fixed_expiry_time = $12, redemption_priority = $13, open_by_default = $14,
            update_time = now()
        WHERE program_id = $1 AND kind = $2 RETURNING true
        """,
        kind.program_id,
        kind.kind,
        kind.display_name,
        policy.spendable,
        policy.transferable,
        int(policy.overdraft_mode),
        policy.debt_limit_minor,
        policy.balance_max_minor,
        policy.activation_delay_s,
        int(policy.expiry_mode),
        policy.lifetime_s,
        policy.fixed_expiry_time,
        policy.redemption_priority,
        kind.open_by_default,
    )
    if not updated:
        return None
    await connection.execute(
        "UPDATE accounts SET balance_floor = $3 WHERE program_id = $1 AND kind = $2 AND type <> 3",
        kind.program_id,
        kind.kind,
        balance_floor(policy),
    )
    return await get_kind(connection, kind.program_id, kind.kind)


async def get_kind(connection: Connection, program_id: str, kind: str) -> AccountKind | None:
    row = await connection.fetchrow("SELECT * FROM account_kinds WHERE program_id = $1 AND kind = $2", program_id, kind)
    return _kind(row) if row else None


async def list_kinds(connection: Connection, program_id: str) -> list[AccountKind]:
    rows = await connection.fetch(
        "SELECT * FROM account_kinds WHERE program_id = $1 ORDER BY redemption_priority, kind", program_id
    )
    return [_kind(row) for row in rows]


def _kind(row: Any) -> AccountKind:
    return AccountKind(
        program_id=row["program_id"],
        kind=row["kind"],
        display_name=row["display_name"],
        unit=Unit(row["unit_type"], row["currency_code"], row["scale"]),
        policy=_policy(row),
        open_by_default=row["open_by_default"],
        create_time=row["create_time"],
        update_time=row["update_time"],
    )


def _policy(row: Any) -> Policy:
    return Policy(
        spendable=row["spendable"],
        transferable=row["transferable"],
        overdraft_mode=OverdraftMode(row["overdraft_mode"]),
        debt_limit_minor=row["debt_limit_minor"],
        balance_max_minor=row["balance_max_minor"],
        activation_delay_s=row["activation_delay_s"],
        expiry_mode=ExpiryMode(row["expiry_mode"]),
        lifetime_s=row["lifetime_s"],
        fixed_expiry_time=row["fixed_expiry_time"],
        redemption_priority=row["redemption_priority"],
    )


async def ensure_system_account(
    connection: Connection, *, program_id: str, role: SystemRole, unit: Unit, partner_id: str = ""
) -> tuple[str, bool]:
    """The SYSTEM account of (program, role, partner, unit), opened with its stripes if missing."""
    account_id = str(uuid.uuid4())
    inserted = await connection.fetchval(
        """
        INSERT INTO accounts (account_id, program_id, type, system_role, partner_id, unit_type, currency_code, scale)
        VALUES ($1, $2, 3, $3, $4, $5, $6, $7)
        ON CONFLICT (program_id, system_role, partner_id, unit_type, currency_code, scale) WHERE type = 3 DO NOTHING
        RETURNING account_id
        """,
        account_id,
        program_id,
        int(role),
        partner_id,
        unit.type,
        unit.currency_code,
        unit.scale,
    )
    if inserted is not None:
        await connection.execute(
            "INSERT INTO account_stripes (account_id, stripe) SELECT $1, generate_series(0, $2 - 1)",
            inserted,
            STRIPES,
        )
        return str(inserted), True
    existing = await connection.fetchval(
        """
        SELECT account_id FROM accounts
        WHERE type = 3 AND program_id = $1 AND system_role = $2 AND partner_id = $3
          AND unit_type = $4 AND currency_code = $5 AND scale = $6
        """,
        program_id,
        int(role),
        partner_id,
        unit.type,
        unit.currency_code,
        unit.scale,
    )
    return str(existing), False


async def ensure_program_system_accounts(connection: Connection, kind: AccountKind) -> None:
    for role in PROGRAM_SYSTEM_ROLES:
        await ensure_system_account(connection, program_id=kind.program_id, role=role, unit=kind.unit)


async def ensure_master_account(connection: Connection, program_id: str, member_id: str) -> tuple[str, bool, int]:
    """(master_account_id, created, state) of the member's master account in the program."""
    row = await connection.fetchrow(
        """
        INSERT INTO master_accounts (master_account_id, program_id, member_id) VALUES ($1, $2, $3)
        ON CONFLICT (program_id, member_id) DO NOTHING
        RETURNING master_account_id, state
        """,
        str(uuid.uuid4()),
        program_id,
        member_id,
    )
    if row is not None:
        return str(row["master_account_id"]), True, row["state"]
    existing = await connection.fetchrow(
        "SELECT master_account_id, state FROM master_accounts WHERE program_id = $1 AND member_id = $2",
        program_id,
        member_id,
    )
    assert existing is not None  # the insert conflicted with it, and master accounts are never deleted
    return str(existing["master_account_id"]), False, existing["state"]


async def ensure_primary_account(
    connection: Connection, *, master_account_id: str, program_id: str, member_id: str, kind: AccountKind
) -> tuple[str, bool]:
    account_id = await connection.fetchval(
        """
        INSERT INTO accounts (account_id, program_id, type, kind, master_account_id, member_id, unit_type,
            currency_code, scale, is_primary, balance_floor)
        VALUES ($1, $2, 1, $3, $4, $5, $6, $7, $8, true, $9)
        ON CONFLICT (master_account_id, kind) WHERE is_primary DO NOTHING
        RETURNING account_id
        """,
        str(uuid.uuid4()),
        program_id,
        kind.kind,
        master_account_id,
        member_id,
        kind.unit.type,
        kind.unit.currency_code,
        kind.unit.scale,
        balance_floor(kind.policy),
    )
    if account_id is not None:
        return str(account_id), True
    existing = await connection.fetchval(
        "SELECT account_id FROM accounts WHERE master_account_id = $1 AND kind = $2 AND is_primary",
        master_account_id,
        kind.kind,
    )
    return str(existing), False


async def set_account_state(
    connection: Connection, account_id: str, *, state: AccountState, freeze_mode: FreezeMode, reason: str
) -> int | None:
    """Set an account's own state unless it is closed; returns its state before, None if unknown."""
    if not _is_uuid(account_id):
        return None
    before = await connection.fetchval("SELECT state FROM accounts WHERE account_id = $1 FOR UPDATE", account_id)
    if before is None or before == AccountState.CLOSED:
        return before  # type: ignore[no-any-return]
    await connection.execute(
        """
        UPDATE accounts SET state = $2, freeze_mode = $3, state_reason = $4, state_time = now()
        WHERE account_id = $1
        """,
        account_id,
        int(state),
        int(freeze_mode),
        reason,
    )
    return before  # type: ignore[no-any-return]


async def set_master_state(
    connection: Connection, master_account_id: str, *, state: AccountState, freeze_mode: FreezeMode, reason: str
) -> int | None:
    """Set a master account's state, mirrored onto its sub-accounts; returns the state before."""
    if not _is_uuid(master_account_id):
        return None
    before = await connection.fetchval(
        "SELECT state FROM master_accounts WHERE master_account_id = $1 FOR UPDATE", master_account_id
    )
    if before is None or before == AccountState.CLOSED:
        return before  # type: ignore[no-any-return]
    await connection.execute(
        """
        UPDATE master_accounts SET state = $2, freeze_mode = $3, state_reason = $4, state_time = now()
        WHERE master_account_id = $1
        """,
        master_account_id,
        int(state),
        int(freeze_mode),
        reason,
    )
    await connection.execute(
        "UPDATE accounts SET master_state = $2, master_freeze_mode = $3 WHERE master_account_id = $1",
        master_account_id,
        int(state),
        int(freeze_mode),
    )
    return before  # type: ignore[no-any-return]


async def ensure_sub_account(
    connection: Connection,
    *,
    program_id: str,
    kind: AccountKind,
    master_account_id: str,
    member_id: str,
    external_ref: str,
    display_name: str,
) -> tuple[str, bool]:
    """An additional (or bearer) account keyed by (program, external_ref)."""
    account_id = await connection.fetchval(
        """
        INSERT INTO accounts (account_id, program_id, type, kind, master_account_id, member_id, unit_type,
            currency_code, scale, external_ref, display_name, balance_floor)
        VALUES ($1, $2, 1, $3, $4, $5, $6, $7, $8, $9, $10, $11)
        ON CONFLICT (program_id, external_ref) WHERE external_ref IS NOT NULL DO NOTHING
        RETURNING account_id
        """,
        str(uuid.uuid4()),
        program_id,
        kind.kind,
        master_account_id or None,
        member_id or None,
        kind.unit.type,
        kind.unit.currency_code,
        kind.unit.scale,
        external_ref,
        display_name,
        balance_floor(kind.policy),
    )
    if account_id is not None:
        return str(account_id), True
    existing = await connection.fetchrow(
        "SELECT account_id, kind, master_account_id FROM accounts WHERE program_id = $1 AND external_ref = $2",
        program_id,
        external_ref,
    )
    assert existing is not None
    same = existing["kind"] == kind.kind and str(existing["master_account_id"] or "") == master_account_id
    return (str(existing["account_id"]), False) if same else ("", False)


async def master_account(connection: Connection, master_account_id: str) -> Any:
    if not _is_uuid(master_account_id):
        return None
    return await connection.fetchrow("SELECT * FROM master_accounts WHERE master_account_id = $1", master_account_id)


async def find_account_ids(
    connection: Connection,
    *,
    program_id: str,
    member_id: str,
    master_account_id: str,
    account_type: int,
    system_role: int,
    partner_id: str,
    kind: str,
    states: Sequence[int],
    external_ref: str,
    after: tuple[datetime, str] | None,
    limit: int,
) -> list[tuple[str, datetime]]:
    """Ids (and creation times, the page cursor) of accounts matching every given filter."""
    conditions, arguments = [], []

    def where(condition: str, value: Any) -> None:
        arguments.append(value)
        conditions.append(condition.replace("?", f"${len(arguments)}"))

    if program_id:
        where("program_id = ?", program_id)
    if member_id:
        where("member_id = ?", member_id)
    if master_account_id:
        where("master_account_id = ?::uuid", master_account_id if _is_uuid(master_account_id) else None)
    if account_type:
        where("type = ?", account_type)
    if system_role:
        where("system_role = ?", system_role)
    if partner_id:
        where("partner_id = ?", partner_id)
    if kind:
        where("kind = ?", kind)
    if states:
        where("state = ANY(?::smallint[])", list(states))
    if external_ref:
        where("external_ref = ?", external_ref)
    if after is not None:
        where("(create_time, account_id::text) > (?, ", after[0])
        arguments.append(after[1])
        conditions[-1] += f"${len(arguments)})"
    arguments.append(limit)
    rows = await connection.fetch(
        f"SELECT account_id, create_time FROM accounts WHERE {' AND '.join(conditions)}"
        f" ORDER BY create_time, account_id::text LIMIT ${len(arguments)}",
        *arguments,
    )
    return [(str(row["account_id"]), row["create_time"]) for row in rows]


# ------------------------------------------------------------------------------------------------
# Reading accounts and balances

_ACCOUNT_COLUMNS = """
    a.account_id, a.program_id, a.type, a.kind, a.master_account_id, a.member_id, a.system_role, a.partner_id,
    a.pool_id, a.unit_type, a.currency_code, a.scale, a.state, a.freeze_mode, a.is_primary,
    a.external_ref, a.display_name, a.debits_posted, a.credits_posted,
    a.debits_pending, a.credits_pending, a.lifetime_earned, a.entry_sequence, a.master_state, a.master_freeze_mode,
    k.spendable, k.transferable, k.overdraft_mode, k.debt_limit_minor, k.balance_max_minor, k.activation_delay_s,
    k.expiry_mode, k.lifetime_s, k.fixed_expiry_time, k.redemption_priority
"""
_ACCOUNT_FROM = """
    FROM accounts a
    LEFT JOIN account_kinds k ON k.program_id = a.program_id AND k.kind = a.kind
"""


def _is_uuid(value: str) -> bool:
    if _UUID_TEXT.fullmatch(value):  # the canonical form, as the wallet hands out ids
        return True
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


async def load_accounts(
    connection: Connection, account_ids: Iterable[str], *, lock: bool, with_lots: bool = True
) -> dict[str, Account]:
    """The accounts (with their remaining lots), locked in id order when `lock`.

    The lots are read by a statement of their own, after the locks are taken: a statement that
    waited for a lock sees the locked row as it is now, but everything else as it was when the
    statement began, so lots read in the locking statement could predate the row they belong to."""
    ids = sorted({i for i in account_ids if _is_uuid(i)})
    if not ids:
        return {}
    if lock:
        accounts, _ = await _lock_accounts_with_clock(connection, ids)
    else:
        select = f"SELECT {_ACCOUNT_COLUMNS} {_ACCOUNT_FROM} WHERE a.account_id = ANY($1::uuid[])"
        accounts = _accounts(await connection.fetch(select, ids))
    member_ids = [i for i, a in accounts.items() if a.has_lots]
    if with_lots and member_ids:
        for row in await connection.fetch(
            f"SELECT {_LOT_COLUMNS} FROM lots WHERE account_id = ANY($1::uuid[]) AND NOT spent", member_ids
        ):
            lot = Lot(*row)
            accounts[lot.account_id].lots.append(lot)
    return accounts


def _accounts(rows: Iterable[Any]) -> dict[str, Account]:
    policies: dict[tuple[str, str], Policy] = {}
    accounts = {}
    for row in rows:
        account = _account(row, policies)
        accounts[account.account_id] = account
    return accounts


# Only the account rows are locked (OF a), never the master account or the kind. Member and pool
# rows exclusively: the batch writes their balances. SYSTEM rows are shared: their balances live
# in stripes, so concurrent batches may all use them, while a freeze or closure (an UPDATE of the
# row) still waits for the batches in flight and is seen by every later one. (An account's type
# never changes.) One statement, member rows first then SYSTEM rows, each in id order (the lock
# order); the database's clock is read once they are locked (a row with NULL columns when
# none of the ids is an account).
_LOCK_ACCOUNTS = f"""
WITH members AS (
    SELECT {_ACCOUNT_COLUMNS} {_ACCOUNT_FROM}
    WHERE a.account_id = ANY($1::uuid[]) AND a.type <> 3 ORDER BY a.account_id FOR UPDATE OF a
),
systems AS (
    SELECT {_ACCOUNT_COLUMNS} {_ACCOUNT_FROM}
    WHERE a.account_id = ANY($1::uuid[]) AND a.type = 3 ORDER BY a.account_id FOR SHARE OF a
),
locked AS (SELECT * FROM members UNION ALL SELECT * FROM systems)
SELECT clock_timestamp() AS database_now, locked.* FROM (VALUES (0)) AS one LEFT JOIN locked ON true
"""


async def _lock_accounts_with_clock(
    connection: Connection, account_ids: Iterable[str]
) -> tuple[dict[str, Account], datetime]:
    """The accounts (without lots), locked, and the database's clock read once they are."""
    ids = sorted({i for i in account_ids if _is_uuid(i)})
    rows = await connection.fetch(_LOCK_ACCOUNTS, ids)
    now: datetime = max(row["database_now"] for row in rows)
    return _accounts(row for row in rows if row["account_id"] is not None), now


_STATES = {int(s): s for s in AccountState}
_FREEZE_MODES = {int(m): m for m in FreezeMode}
_TYPES = {int(t): t for t in AccountType}
_ROLES = {int(r): r for r in SystemRole}


def _account(row: Any, policies: dict[tuple[str, str], Policy] | None = None) -> Account:
    """An account from its row; `policies` shares one Policy among the rows of the same kind
    read by one statement (so from one version of the kind)."""
    own_state, master_state = _STATES[row["state"]], _STATES[row["master_state"]]
    state = max(own_state, master_state)  # CLOSED > FROZEN > ACTIVE: the stricter one applies
    freeze = _FREEZE_MODES[max(row["freeze_mode"], row["master_freeze_mode"])]
    account_type = _TYPES[row["type"]]
    system = account_type is SYSTEM_ACCOUNT
    policy = None
    if not system:
        key = (row["program_id"], row["kind"])
        policy = policies.get(key) if policies is not None else None
        if policy is None:
            policy = _policy(row)
            if policies is not None:
                policies[key] = policy
    unit = _unit(row["unit_type"], row["currency_code"], row["scale"])
    master_account_id = row["master_account_id"]
    pool_id = row["pool_id"]
    return Account(
        account_id=str(row["account_id"]),
        program_id=row["program_id"],
        type=account_type,
        unit=unit,
        state=state,
        freeze_mode=freeze,
        kind=row["kind"] or "",
        member_id=row["member_id"] or "",
        master_account_id=str(master_account_id) if master_account_id is not None else "",
        system_role=_ROLES[row["system_role"]],
        partner_id=row["partner_id"],
        pool_id=str(pool_id) if pool_id is not None else "",
        primary=row["is_primary"],
        own_state=own_state,
        master_state=master_state,
        external_ref=row["external_ref"] or "",
        display_name=row["display_name"],
        policy=policy,
        # SYSTEM accounts start each batch at zero: the batch accumulates deltas for one stripe.
        debits_posted=0 if system else row["debits_posted"],
        credits_posted=0 if system else row["credits_posted"],
        debits_pending=0 if system else row["debits_pending"],
        credits_pending=0 if system else row["credits_pending"],
        lifetime_earned=row["lifetime_earned"],
        entry_sequence=row["entry_sequence"],
    )


# Units are few and immutable: one object per distinct unit.
_UNITS: dict[tuple[int, str, int], Unit] = {}


def _unit(unit_type: int, currency_code: str, scale: int) -> Unit:
    key = (unit_type, currency_code, scale)
    unit = _UNITS.get(key)
    if unit is None:
        unit = _UNITS.setdefault(key, Unit(*key))
    return unit


# In the order of Lot's fields (load_accounts builds lots positionally); ids as text, which
# asyncpg decodes more cheaply than a UUID it then has to format.
_LOT_COLUMNS = (
    "lot_id::text, account_id::text, transfer_id, reason, amount, remaining, held, expired_amount, activation_time,"
    " expiry_time, effective_time"
)

if tuple(c.strip().removesuffix("::text") for c in _LOT_COLUMNS.split(",")) != tuple(f.name for f in fields(Lot)):
    raise RuntimeError("_LOT_COLUMNS must list Lot's fields, in their order")


def _lot(row: Any) -> Lot:
    return Lot(
        lot_id=str(row["lot_id"]),
        account_id=str(row["account_id"]),
        transfer_id=row["transfer_id"],
        reason=row["reason"],
        amount=row["amount"],
        remaining=row["remaining"],
        held=row["held"],
        expired_amount=row["expired_amount"],
        activation_time=row["activation_time"],
        expiry_time=row["expiry_time"],
        effective_time=row["effective_time"],
    )


async def system_balances(connection: Connection, account_ids: Sequence[str]) -> dict[str, tuple[int, int, int]]:
    """(posted, debits_pending, credits_pending) of SYSTEM accounts: the sums of their stripes."""
    rows = await connection.fetch(
        """
        SELECT account_id, sum(credits_posted - debits_posted)::bigint AS posted,
               sum(debits_pending)::bigint AS debits_pending, sum(credits_pending)::bigint AS credits_pending
        FROM account_stripes WHERE account_id = ANY($1::uuid[]) GROUP BY account_id
        """,
        list(account_ids),
    )
    return {str(r["account_id"]): (r["posted"], r["debits_pending"], r["credits_pending"]) for r in rows}


async def member_account_ids(connection: Connection, *, program_id: str, member_id: str) -> list[str]:
    rows = await connection.fetch(
        """
        SELECT a.account_id FROM accounts a JOIN account_kinds k ON k.program_id = a.program_id AND k.kind = a.kind
        WHERE a.program_id = $1 AND a.member_id = $2
        ORDER BY a.is_primary DESC, k.redemption_priority, a.kind, a.create_time
        """,
        program_id,
        member_id,
    )
    return [str(r["account_id"]) for r in rows]


async def master_account_ids(connection: Connection, master_account_id: str) -> list[str]:
    if not _is_uuid(master_account_id):
        return []
    rows = await connection.fetch(
        """
        SELECT a.account_id FROM accounts a JOIN account_kinds k ON k.program_id = a.program_id AND k.kind = a.kind
        WHERE a.master_account_id = $1 ORDER BY a.is_primary DESC, k.redemption_priority, a.kind, a.create_time
        """,
        master_account_id,
    )
    return [str(r["account_id"]) for r in rows]


async def database_now(connection: Connection) -> datetime:
    now: datetime = await connection.fetchval("SELECT clock_timestamp()")
    return now


# ------------------------------------------------------------------------------------------------
# Transfers: loading a batch


async def find_transfers(
    connection: Connection,
    *,
    account_id: str,
    operation_id: str,
    terminal_id: str,
    receipt_id: str,
    states: Sequence[int],
    before: tuple[datetime, str] | None,
    limit: int,
) -> list[TransferRecord]:
    """Recorded transfers by operation or by member account, newest first (keyset paging)."""
    conditions, arguments = ["true"], []

    def where(condition: str, *values: Any) -> None:
        for value in values:
            arguments.append(value)
            condition = condition.replace("?", f"${len(arguments)}", 1)
        conditions.append(condition)

    # Each repeats its index's predicate (transfers_by_operation, transfers_by_receipt are partial):
    # the wallet's plans are generic, and a generic plan cannot prove `col <> ''` from `col = $1`,
    # so without it the lookup was a sequential scan of every transfer.
    if operation_id:
        where("t.operation_id = ? AND t.operation_id <> ''", operation_id)
    if receipt_id:
        where("t.terminal_id = ? AND t.receipt_id = ? AND t.receipt_id <> ''", terminal_id, receipt_id)
    if account_id:
        # Member and pool accounts are found through their history (indexed by account).
        where(
            "t.transfer_id IN (SELECT e.transfer_id FROM entries e WHERE e.account_id = ?::uuid)",
            account_id if _is_uuid(account_id) else None,
        )
    if states:
        where("t.state = ANY(?::smallint[])", list(states))
    if before is not None:
        where("(t.recorded_time, t.transfer_id) < (?, ?)", *before)
    arguments.append(limit)
    rows = await connection.fetch(
        f"SELECT t.* FROM transfers t WHERE {' AND '.join(conditions)}"
        f" ORDER BY t.recorded_time DESC, t.transfer_id DESC LIMIT ${len(arguments)}",
        *arguments,
    )
    return [_record(row) for row in rows]


async def load_records(connection: Connection, transfer_ids: Iterable[str], *, lock: bool) -> dict[str, TransferRecord]:
    ids = sorted(set(transfer_ids))
    if not ids:
        return {}
    rows = await connection.fetch(
        "SELECT * FROM transfers WHERE transfer_id = ANY($1::text[]) ORDER BY transfer_id"
        + (" FOR UPDATE" if lock else ""),
        ids,
    )
    return {row["transfer_id"]: _record(row) for row in rows}


async def load_batch(
    connection: Connection, requests: Sequence[TransferRequest], now: datetime | None, *, assume_new: bool = False
) -> Batch:
    """Everything `requests` may touch, locked in the global lock order. `now`: the ledger's
    clock; None takes the database's, read once the batch's rows are locked (so a transaction
    that waited for another one's account gets a later time).

    `assume_new`: when the batch only creates transfers (it names no hold and no original),
    take its ids for new and skip reading their records (a round trip; the records' lock
    protects nothing for an id that does not exist yet: the insert is what orders two
    transactions creating one id). A replayed id then either fails its insert (a unique
    violation) or, decided anew, gets an outcome that records nothing (a failed linked chain,
    refused lot terms). In both cases the caller must decide again on a batch loaded without
    the assumption, as TransferWriter does."""
    named = {r.transfer_id for r in requests}
    referenced = {r.pending_transfer_id for r in requests if r.pending_transfer_id}
    referenced |= {r.reverses_transfer_id for r in requests if r.reverses_transfer_id}
    records: dict[str, TransferRecord] = {}
    if not (assume_new and not referenced):
        records = await load_records(connection, named | referenced, lock=True)
    # A reversal of a posted hold is checked against the hold it posted: load that one too.
    holds_of_reversed_posts = {
        record.request.pending_transfer_id
        for transfer_id in {r.reverses_transfer_id for r in requests if r.reverses_transfer_id}
        if (record := records.get(transfer_id)) is not None and record.request.flags.post_pending
    } - set(records)
    if holds_of_reversed_posts:
        records |= await load_records(connection, holds_of_reversed_posts, lock=True)
    account_ids = {r.debit_account_id for r in requests} | {r.credit_account_id for r in requests}
    for record in records.values():
        account_ids |= {record.request.debit_account_id, record.request.credit_account_id}
    accounts, database_now = await _lock_accounts_with_clock(connection, account_ids - {""})
    now = now or database_now
    await _load_reachable_lots(connection, accounts, _plain_lots_needed(requests, records), now)
    await load_pools(connection, accounts, now)
    return Batch(now=now, accounts=accounts, records=records)


def _plain_lots_needed(requests: Sequence[TransferRequest], records: dict[str, TransferRecord]) -> dict[str, int]:
    """How much a batch may take from each account's plain lots (see _REACHABLE_LOTS): at most
    what it debits there. The accounts of the records it names (holds, reversed originals,
    replays) and the credit side of transfers whose lots take their times from earlier ones
    get every lot: those paths look lots up by id."""
    needed: dict[str, int] = {}
    for request in requests:
        needed[request.debit_account_id] = needed.get(request.debit_account_id, 0) + request.amount
        if request.reason in KEEPS_LOT_TIMES or request.reason == Reason.REDEMPTION_REVERSAL:
            needed[request.credit_account_id] = INT64_MAX
    for record in records.values():
        needed[record.request.debit_account_id] = INT64_MAX
        needed[record.request.credit_account_id] = INT64_MAX
    return needed


# The lots a batch can reach, and the sum of the others. A plain lot (active, never expiring,
# nothing of it held) changes nothing in an account's balances beyond its posted total, and is
# consumed last, oldest first (Lot.consumption_key): so an account gets every lot that is not
# plain, plus its plain lots in consumption order until they cover what the batch may take
# there; the remaining of the plain lots after those is summed (a row with a NULL lot_id), so
# that the ledger can still check that the lots add up to the balance. The order is the
# domain's: uuid order is the order of canonical uuid text. Each account's lots are read by a
# lateral subquery, an index scan whatever the statistics say (right after a bulk load, before
# autovacuum has analysed the table, a join on the account ids would read all lots instead).
_REACHABLE_LOTS = """
WITH ranked AS (
    SELECT l.*, w.needed
    FROM unnest($1::uuid[], $2::bigint[]) AS w(account_id, needed)
    CROSS JOIN LATERAL (
        SELECT lot_id, account_id, transfer_id, reason, amount, remaining, held, expired_amount, activation_time,
            expiry_time, effective_time, plain,
            sum(remaining) FILTER (WHERE plain) OVER (ORDER BY activation_time, lot_id) - remaining AS plain_before
        FROM (
            SELECT *, held = 0 AND expiry_time IS NULL AND activation_time <= $3 AS plain
            FROM lots WHERE account_id = w.account_id AND NOT spent
        ) AS account_lots
    ) AS l
)
SELECT lot_id::text, account_id::text, transfer_id, reason, amount, remaining, held, expired_amount,
    activation_time, expiry_time, effective_time
FROM ranked WHERE NOT plain OR plain_before < needed
UNION ALL
SELECT NULL, account_id::text, NULL, NULL, NULL, sum(remaining)::bigint, NULL, NULL, NULL, NULL, NULL
FROM ranked WHERE plain AND plain_before >= needed GROUP BY account_id
"""


async def _load_reachable_lots(
    connection: Connection, accounts: dict[str, Account], needed: dict[str, int], now: datetime
) -> None:
    ids = [account_id for account_id, account in accounts.items() if account.has_lots]
    if not ids:
        return
    rows = await connection.fetch(_REACHABLE_LOTS, ids, [needed.get(i, 0) for i in ids], now)
    for row in rows:
        if row[0] is None:
            accounts[row[1]].unloaded_remaining = row[5]
        else:
            lot = Lot(*row)
            accounts[lot.account_id].lots.append(lot)


def _request(row: Any) -> TransferRequest:
    """A recorded transfer's request. A client's transfer is stored once, as its body (the
    protobuf `Transfer` it submitted); the wallet's own transfers have other bodies (see
    ledger.internal_request) and keep their request as JSON beside it."""
    body = bytes(row["body"])
    if row["request"] is not None:
        return decode_request(row["transfer_id"], body, json.loads(row["request"]))
    return mapping.request_from_body(body)


def _record(row: Any) -> TransferRecord:
    record = TransferRecord(
        request=_request(row),
        state=TransferState(row["state"]),
        rejection_code=Code(row["rejection_code"]) if row["rejection_code"] is not None else None,
        recorded_time=row["recorded_time"],
        effective_time=row["effective_time"],
        amount=row["amount"],
        posted_amount=row["posted_amount"],
        pending_expiry_time=row["pending_expiry_time"],
        resolved_by_transfer_id=row["resolved_by_transfer_id"],
        resolved_time=row["resolved_time"],
        reversed_amount=row["reversed_amount"],
        allocations=decode_allocations(row["allocations"]),
    )
    record.outcome = decode_outcome(row["outcome"], record)
    return record


# ------------------------------------------------------------------------------------------------
# Transfers: persisting a batch


# A batch is written by one statement: its new rows (transfers, lots, history) and its changes
# (transfers resolved, lots consumed, balances) as one data-modifying CTE each, every column one
# array parameter. One round trip however many transfers the batch carries: a single transfer's
# latency and CPU went mostly to round trips when each table had a COPY of its own (two round
# trips each). The CTEs touch disjoint rows (a row the batch creates is inserted as it ends), so
# that none needs to see another's effects.
_TRANSFER_COLUMNS = (
    "transfer_id",
    "body",
    "request",
    "state",
    "rejection_code",
    "debit_account_id",
    "credit_account_id",
    "amount",
    "reason",
    "operation_id",
    "terminal_id",
    "receipt_id",
    "recorded_time",
    "effective_time",
    "posted_amount",
    "pending_expiry_time",
    "resolved_by_transfer_id",
    "resolved_time",
    "reversed_amount",
    "allocations",
    "outcome",
)
_NEW_LOT_COLUMNS = tuple(f.name for f in fields(Lot))
_ENTRY_COLUMNS = (
    "account_id",
    "sequence",
    "transfer_id",
    "type",
    "direction",
    "amount",
    "released_amount",
    "counterparty_account_id",
    "available",
    "pending",
    "held",
    "next_expiry_amount",
    "next_expiry_time",
    "lifetime_earned",
    "recorded_time",
    "effective_time",
)

_PERSIST_TEMPLATE = """
WITH
changed_transfers AS (
    UPDATE transfers t SET state = u.state, posted_amount = u.posted_amount,
        resolved_by_transfer_id = u.resolved_by, resolved_time = u.resolved_time, reversed_amount = u.reversed_amount
    FROM unnest($1::text[], $2::smallint[], $3::bigint[], $4::text[], $5::timestamptz[], $6::bigint[])
        AS u(transfer_id, state, posted_amount, resolved_by, resolved_time, reversed_amount)
    WHERE t.transfer_id = u.transfer_id
),
changed_lots AS (
    UPDATE lots l SET remaining = u.remaining, held = u.held, expired_amount = u.expired_amount
    FROM unnest($7::uuid[], $8::bigint[], $9::bigint[], $10::bigint[])
        AS u(lot_id, remaining, held, expired_amount)
    WHERE l.lot_id = u.lot_id
    RETURNING 1
),
member_balances AS (
    UPDATE accounts a SET debits_posted = u.debits_posted, credits_posted = u.credits_posted,
        debits_pending = u.debits_pending, credits_pending = u.credits_pending,
        lifetime_earned = u.lifetime_earned, entry_sequence = u.entry_sequence
    FROM unnest($11::uuid[], $12::bigint[], $13::bigint[], $14::bigint[], $15::bigint[], $16::bigint[], $17::bigint[])
        AS u(account_id, debits_posted, credits_posted, debits_pending, credits_pending, lifetime_earned,
             entry_sequence)
    WHERE a.account_id = u.account_id
),
system_balances AS (
    UPDATE account_stripes s SET debits_posted = s.debits_posted + u.debits_posted,
        credits_posted = s.credits_posted + u.credits_posted, debits_pending = s.debits_pending + u.debits_pending,
        credits_pending = s.credits_pending + u.credits_pending
    FROM unnest($18::uuid[], $19::bigint[], $20::bigint[], $21::bigint[], $22::bigint[])
        AS u(account_id, debits_posted, credits_posted, debits_pending, credits_pending)
    WHERE s.account_id = u.account_id AND s.stripe = $23
),
new_transfers AS (
    INSERT INTO transfers ({transfer_columns})
    SELECT * FROM unnest($24::text[], $25::bytea[], $26::jsonb[], $27::smallint[], $28::smallint[], $29::text[],
        $30::text[], $31::bigint[], $32::smallint[], $33::text[], $34::text[], $35::text[], $36::timestamptz[],
        $37::timestamptz[], $38::bigint[], $39::timestamptz[], $40::text[], $41::timestamptz[], $42::bigint[],
        $43::text[], $44::text[])
),
new_lots AS (
    INSERT INTO lots ({lot_columns})
    SELECT * FROM unnest($45::uuid[], $46::uuid[], $47::text[], $48::smallint[], $49::bigint[], $50::bigint[],
        $51::bigint[], $52::bigint[], $53::timestamptz[], $54::timestamptz[], $55::timestamptz[])
),
new_entries AS (
    INSERT INTO entries ({entry_columns})
    SELECT * FROM unnest($56::uuid[], $57::bigint[], $58::text[], $59::smallint[], $60::smallint[], $61::bigint[],
        $62::bigint[], $63::text[], $64::bigint[], $65::bigint[], $66::bigint[], $67::bigint[], $68::timestamptz[],
        $69::bigint[], $70::timestamptz[], $71::timestamptz[])
)
SELECT count(*) FROM changed_lots
""".format(
    transfer_columns=", ".join(_TRANSFER_COLUMNS),
    lot_columns=", ".join(_NEW_LOT_COLUMNS),
    entry_columns=", ".join(_ENTRY_COLUMNS),
)


# Array parameters of the update statement travel as one text literal each ('{1,2,NULL}') that
# PostgreSQL casts: asyncpg's binary array encoder inspects every element (several isinstance
# checks against collections.abc per value). Only as arguments of unnest(), evaluated once: in
# a WHERE clause the cast is not folded into a constant, and would run again for every row.
def _int_literal(values: Sequence[Any]) -> str:
    if None in values:
        return "{" + ",".join(["NULL" if v is None else _DECIMAL(v) for v in values]) + "}"
    return "{" + ",".join(map(_DECIMAL, values)) + "}"


# int.__str__ for ints and int-valued enums alike (str() of an IntEnum member is its name in
# some Python versions).
_DECIMAL = "{:d}".format


def _uuid_literal(values: Sequence[Any]) -> str:
    # Canonical UUID text only (account and lot ids the ledger made or read back): no quoting.
    return "{" + ",".join(["NULL" if v is None else _canonical_uuid(v) for v in values]) + "}"


def _canonical_uuid(value: str) -> str:
    # 36 characters cannot hold two UUIDs (nor one with a literal's separators and another
    # that PostgreSQL accepts), so at worst the statement fails; anything else is normalised.
    if len(value) != 36:
        value = str(uuid.UUID(value))  # raises on anything that is not a UUID
    return value


def _time_literal(values: Sequence[Any]) -> str:
    # Most times of a batch are the same instant (its clock): format each distinct one once.
    texts: dict[datetime, str] = {}
    parts = []
    for value in values:
        if value is None:
            parts.append("NULL")
            continue
        text = texts.get(value)
        if text is None:
            text = texts[value] = _timestamptz_text(value)
        parts.append(text)
    return "{" + ",".join(parts) + "}"


def _timestamptz_text(value: datetime) -> str:
    if value.tzinfo is None:
        raise ValueError(f"a naive time reached the ledger: {value!r}")
    return value.isoformat()


def _text_literal(values: Sequence[str]) -> str:
    """Every element quoted, with its backslashes and double quotes escaped. The values are
    joined around NUL first so that the escaping runs once over all of them: PostgreSQL text
    can never hold NUL, so a value with one is refused (it would split into two elements)."""
    if not values:
        return "{}"
    joined = "\x00".join(values)
    if joined.count("\x00") != len(values) - 1:
        raise ValueError("text with a NUL character cannot be stored")
    escaped = joined.replace("\\", "\\\\").replace('"', '\\"')
    return '{"' + escaped.replace("\x00", '","') + '"}'


def _nullable_text_literal(values: Sequence[str | None]) -> str:
    if None not in values:
        return _text_literal(values)  # type: ignore[arg-type]
    return "{" + ",".join("NULL" if v is None else _text_literal([v])[1:-1] for v in values) + "}"


def _bytea_literal(values: Sequence[bytes]) -> str:
    # Hex form, each element quoted (its backslash escaped for the array literal).
    return "{" + ",".join(['"\\\\x' + v.hex() + '"' for v in values]) + "}"


_LITERALS = {
    "smallint": _int_literal,
    "bigint": _int_literal,
    "uuid": _uuid_literal,
    "timestamptz": _time_literal,
    "text": _text_literal,
    "jsonb": _nullable_text_literal,
    "bytea": _bytea_literal,
}
_ARRAY_PARAMETER = re.compile(r"\$(\d+)::(\w+)\[\]")
# Parameter number -> how its column becomes a literal.
_PERSIST_LITERALS = {
    int(number) - 1: _LITERALS[kind]
    for number, kind in _ARRAY_PARAMETER.findall(_PERSIST_TEMPLATE)
    if kind in _LITERALS
}
_PERSIST = _ARRAY_PARAMETER.sub(lambda m: f"${m[1]}::text::{m[2]}[]" if m[2] in _LITERALS else m[0], _PERSIST_TEMPLATE)


def _columns(rows: Sequence[Sequence[Any]], width: int) -> list[list[Any]]:
    """Rows to the column arrays that unnest() takes."""
    return [list(column) for column in zip(*rows, strict=True)] if rows else [[] for _ in range(width)]


async def persist(connection: Connection, batch: Batch, *, stripe: int) -> None:
    """Write what the batch decided: one statement (and one more when pools spent)."""
    await persist_pool_spending(connection, (batch.accounts[i] for i in batch.touched_accounts))
    created_ids = {record.transfer_id for record in batch.created}
    changed = [
        (r.transfer_id, int(r.state), r.posted_amount, r.resolved_by_transfer_id, r.resolved_time, r.reversed_amount)
        for r in batch.updated.values()
        if r.transfer_id not in created_ids  # a hold created and resolved in one batch is inserted as it ends
    ]
    created_lots = {lot.lot_id for lot in batch.new_lots}
    new_lots, changed_lots = [], []
    for lot in batch.touched_lots.values():
        if lot.lot_id in created_lots:
            new_lots.append(_lot_row(lot))
        else:
            changed_lots.append((lot.lot_id, lot.remaining, lot.held, lot.expired_amount))
    touched = [batch.accounts[i] for i in sorted(batch.touched_accounts)]
    members = [
        (
            a.account_id,
            a.debits_posted,
            a.credits_posted,
            a.debits_pending,
            a.credits_pending,
            a.lifetime_earned,
            a.entry_sequence,
        )
        for a in touched
        if a.has_lots
    ]
    systems = [
        (a.account_id, a.debits_posted, a.credits_posted, a.debits_pending, a.credits_pending)
        for a in touched
        if not a.has_lots
    ]
    arguments: list[Any] = [
        *_columns(changed, 6),
        *_columns(changed_lots, 4),
        *_columns(members, 7),
        *_columns(systems, 5),
        stripe,
        *_columns([_transfer_row(record) for record in batch.created], len(_TRANSFER_COLUMNS)),
        *_columns(new_lots, len(_NEW_LOT_COLUMNS)),
        *_columns([_entry_row(entry) for entry in batch.entries], len(_ENTRY_COLUMNS)),
    ]
    for index, literal in _PERSIST_LITERALS.items():
        arguments[index] = literal(arguments[index])
    updated_lots = await connection.fetchval(_PERSIST, *arguments)
    # Every lot the batch changed was loaded from the database, under its account's lock.
    if updated_lots != len(changed_lots):
        raise LedgerInvariantError(f"{len(changed_lots) - updated_lots} changed lots are not in the database")


def _lot_row(lot: Lot) -> tuple[Any, ...]:
    """A lot's fields in _NEW_LOT_COLUMNS order (dataclasses.astuple deep-copies; this does not)."""
    return (
        lot.lot_id,
        lot.account_id,
        lot.transfer_id,
        lot.reason,
        lot.amount,
        lot.remaining,
        lot.held,
        lot.expired_amount,
        lot.activation_time,
        lot.expiry_time,
        lot.effective_time,
    )


def _transfer_row(record: TransferRecord) -> tuple[Any, ...]:
    """A new transfer's row, in _TRANSFER_COLUMNS order."""
    request = record.request
    reference = request.reference
    return (
        record.transfer_id,
        request.body,
        json.dumps(encode_request(request)) if record.transfer_id.startswith(WALLET_ID_PREFIX) else None,
        record.state,
        record.rejection_code,
        request.debit_account_id,
        request.credit_account_id,
        record.amount,
        request.reason,
        reference.operation_id,
        reference.terminal_id,
        reference.receipt_id,
        record.recorded_time,
        record.effective_time,
        record.posted_amount,
        record.pending_expiry_time,
        record.resolved_by_transfer_id,
        record.resolved_time,
        record.reversed_amount,
        encode_allocations(record.allocations),
        encode_outcome(record.outcome),
    )


def _entry_row(entry: EntryRecord) -> tuple[Any, ...]:
    balance = entry.balance_after
    assert balance is not None  # entries are only written for member and pool accounts
    return (
        entry.account_id,
        entry.sequence,
        entry.transfer_id,
        int(entry.type),
        int(entry.direction),
        entry.amount,
        entry.released_amount,
        entry.counterparty_account_id,
        balance.available,
        balance.pending,
        balance.held,
        balance.next_expiry_amount,
        balance.next_expiry_time,
        balance.lifetime_earned,
        entry.recorded_time,
        entry.effective_time,
    )


# ------------------------------------------------------------------------------------------------
# Background work: what is due


async def due_holds(connection: Connection, now: datetime, limit: int) -> list[str]:
    """Open holds past their deadline, skipping those another worker is on."""
    rows = await connection.fetch(
        """
        SELECT transfer_id FROM transfers WHERE state = 1 AND pending_expiry_time <= $1
        ORDER BY pending_expiry_time LIMIT $2 FOR UPDATE SKIP LOCKED
        """,
        now,
        limit,
    )
    return [row["transfer_id"] for row in rows]


async def due_lots(connection: Connection, now: datetime, limit: int) -> list[tuple[str, str]]:
    """(lot_id, account_id) of expired lots with something unheld left."""
    rows = await connection.fetch(
        """
        SELECT lot_id, account_id FROM lots
        WHERE expirable AND expiry_time <= $1
        ORDER BY expiry_time LIMIT $2
        """,
        now,
        limit,
    )
    return [(str(row["lot_id"]), str(row["account_id"])) for row in rows]


async def expiry_account_id(connection: Connection, account: Account) -> str | None:
    value = await connection.fetchval(
        """
        SELECT account_id FROM accounts WHERE type = 3 AND program_id = $1 AND system_role = $2 AND partner_id = ''
          AND unit_type = $3 AND currency_code = $4 AND scale = $5
        """,
        account.program_id,
        int(SystemRole.EXPIRY),
        account.unit.type,
        account.unit.currency_code,
        account.unit.scale,
    )
    return str(value) if value else None


# ------------------------------------------------------------------------------------------------
# History


async def list_entries(
    connection: Connection,
    account_ids: Sequence[str],
    *,
    recorded_from: datetime | None,
    recorded_to: datetime | None,
    reasons: Sequence[int],
    operation_id: str,
    after: tuple[datetime, str, int] | None,
    oldest_first: bool,
    limit: int,
) -> list[tuple[Any, TransferRequest]]:
    """History rows, each with its transfer's request, of one or several accounts, in recorded
    order (ties by account and sequence), after the keyset cursor `after`."""
    ids = [i for i in account_ids if _is_uuid(i)]
    if not ids:
        return []
    conditions = ["e.account_id = ANY($1::uuid[])"]
    arguments: list[Any] = [ids]

    def where(condition: str, *values: Any) -> None:
        for value in values:
            arguments.append(value)
            condition = condition.replace("?", f"${len(arguments)}", 1)
        conditions.append(condition)

    if recorded_from is not None:
        where("e.recorded_time >= ?", recorded_from)
    if recorded_to is not None:
        where("e.recorded_time < ?", recorded_to)
    if reasons:
        where("t.reason = ANY(?::smallint[])", list(reasons))
    if operation_id:
        where("t.operation_id = ?", operation_id)
    if after is not None:
        comparison = ">" if oldest_first else "<"
        where(f"(e.recorded_time, e.account_id::text, e.sequence) {comparison} (?, ?, ?)", *after)
    direction = "ASC" if oldest_first else "DESC"
    arguments.append(limit)
    rows = await connection.fetch(
        f"""
        SELECT e.*, t.body, t.request FROM entries e JOIN transfers t ON t.transfer_id = e.transfer_id
        WHERE {" AND ".join(conditions)}
        ORDER BY e.recorded_time {direction}, e.account_id::text {direction}, e.sequence {direction}
        LIMIT ${len(arguments)}
        """,
        *arguments,
    )
    return [(row, _request(row)) for row in rows]


async def list_lots(
    connection: Connection, account_id: str, *, offset: int, limit: int, include_spent: bool
) -> list[Lot]:
    if not _is_uuid(account_id):
        return []
    rows = await connection.fetch(
        f"""
        SELECT * FROM lots WHERE account_id = $1 {"" if include_spent else "AND NOT spent"}
        ORDER BY expiry_time IS NULL, expiry_time, activation_time, lot_id OFFSET $2 LIMIT $3
        """,
        account_id,
        offset,
        limit,
    )
    return [_lot(row) for row in rows]


async def ledger_sum(connection: Connection) -> list[tuple[int, str, int, int]]:
    """Per unit: the sum of posted balances over every account (must be 0) and of pending."""
    rows = await connection.fetch(
        """
        WITH balances AS (
            SELECT unit_type, currency_code, scale, credits_posted - debits_posted AS posted,
                   credits_pending - debits_pending AS pending
            FROM accounts WHERE type <> 3
            UNION ALL
            SELECT a.unit_type, a.currency_code, a.scale, s.credits_posted - s.debits_posted,
                   s.credits_pending - s.debits_pending
            FROM account_stripes s JOIN accounts a USING (account_id)
        )
        SELECT unit_type, currency_code, sum(posted)::bigint AS posted, sum(pending)::bigint AS pending
        FROM balances GROUP BY unit_type, currency_code, scale
        """
    )
    return [(r["unit_type"], r["currency_code"], r["posted"], r["pending"]) for r in rows]


# ------------------------------------------------------------------------------------------------
# Domain values <-> the `request` JSON of the wallet's own transfers, and the compact text of the
# `outcome` and `allocations` columns
#
# A client's transfer is its body (mapping.request_from_body reads it back); an outcome's times
# are the row's recorded_time, effective_time and pending_expiry_time (an outcome is made with
# the record's, and they never change). The rest of the outcome is one line:
#     code|amount|released_amount|lot_id|debit balance|credit balance
# a balance being empty (none: a SYSTEM account, or an account not found) or
#     account_id,kind,available,pending,held,next_expiry_amount,next_expiry_time,lifetime_earned,
#     unit_type,currency_code,scale
# with times in ISO 8601. No field can hold a separator: ids are UUIDs (the wallet's own),
# kinds [a-z0-9_], currency codes [A-Z]{3}. Allocations are "lot_id:amount" joined by commas.
# (The migration 20261123000005 converted the earlier JSON to exactly these forms.)


def _time_text(value: datetime | None) -> str:
    return "" if value is None else value.isoformat()


def _parse_time(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text).astimezone(UTC) if text else None


def encode_request(request: TransferRequest) -> dict[str, Any]:
    terms = request.lot_terms
    return {
        "d": request.debit_account_id,
        "c": request.credit_account_id,
        "a": request.amount,
        "p": request.pending_transfer_id,
        "t": request.timeout_s,
        "f": [
            getattr(request.flags, f)
            for f in ("pending", "post_pending", "void_pending", "linked", "imported", "allow_debt")
        ],
        "r": request.reason,
        "ref": list(vars(request.reference).values()),
        "m": [list(pair) for pair in request.metadata],
        "memo": request.memo,
        "it": _time_text(request.imported_time) or None,
        "lt": None
        if terms is None
        else [_time_text(terms.activation_time) or None, _time_text(terms.expiry_time) or None, terms.no_expiry],
        "rev": request.reverses_transfer_id,
        "obo": request.on_behalf_of_member_id,
    }


def decode_request(transfer_id: str, body: bytes, data: dict[str, Any]) -> TransferRequest:
    terms = data["lt"]
    return TransferRequest(
        transfer_id=transfer_id,
        debit_account_id=data["d"],
        credit_account_id=data["c"],
        amount=data["a"],
        pending_transfer_id=data["p"],
        timeout_s=data["t"],
        flags=Flags(*data["f"]),
        reason=data["r"],
        reference=Reference(*data["ref"]),
        metadata=tuple((k, v) for k, v in data["m"]),
        memo=data["memo"],
        imported_time=_parse_time(data["it"]),
        lot_terms=None if terms is None else LotTerms(_parse_time(terms[0]), _parse_time(terms[1]), terms[2]),
        reverses_transfer_id=data["rev"],
        on_behalf_of_member_id=data["obo"],
        body=body,
    )


def encode_outcome(outcome: Outcome | None) -> str:
    if outcome is None:
        raise LedgerInvariantError("a transfer was recorded without its outcome")
    return (
        f"{outcome.code:d}|{outcome.amount:d}|{outcome.released_amount:d}|{outcome.lot_id}"
        f"|{_encode_balance(outcome.debit_balance)}|{_encode_balance(outcome.credit_balance)}"
    )


def _encode_balance(balance: Balance | None) -> str:
    if balance is None:
        return ""
    unit = balance.unit
    return (
        f"{balance.account_id},{balance.kind},{balance.available:d},{balance.pending:d},{balance.held:d},"
        f"{balance.next_expiry_amount:d},{_time_text(balance.next_expiry_time)},{balance.lifetime_earned:d},"
        f"{unit.type:d},{unit.currency_code},{unit.scale:d}"
    )


def decode_outcome(text: str, record: TransferRecord) -> Outcome:
    code, amount, released, lot_id, debit, credit = text.split("|")
    return Outcome(
        transfer_id=record.transfer_id,
        code=Code(int(code)),
        recorded_time=record.recorded_time,
        effective_time=record.effective_time,
        debit_balance=_decode_balance(debit),
        credit_balance=_decode_balance(credit),
        amount=int(amount),
        released_amount=int(released),
        pending_expiry_time=record.pending_expiry_time,
        lot_id=lot_id,
    )


def _decode_balance(text: str) -> Balance | None:
    if not text:
        return None
    account_id, kind, available, pending, held, expiry_amount, expiry_time, lifetime, *unit = text.split(",")
    unit_type, currency_code, scale = unit
    return Balance(
        account_id=account_id,
        kind=kind,
        available=int(available),
        pending=int(pending),
        held=int(held),
        next_expiry_amount=int(expiry_amount),
        next_expiry_time=_parse_time(expiry_time),
        lifetime_earned=int(lifetime),
        unit=_unit(int(unit_type), currency_code, int(scale)),
    )


def encode_allocations(allocations: list[tuple[str, int]]) -> str:
    return ",".join([f"{lot_id}:{amount:d}" for lot_id, amount in allocations])


def decode_allocations(text: str) -> list[tuple[str, int]]:
    if not text:
        return []
    return [(lot_id, int(amount)) for lot_id, _, amount in (pair.partition(":") for pair in text.split(","))]


# ------------------------------------------------------------------------------------------------
# Household pools


async def create_pool(
    connection: Connection,
    *,
    program_id: str,
    kind: AccountKind,
    owner_member_id: str,
    display_name: str,
    time_zone: str,
) -> str | None:
    """A POOL account and its pool, with the owner as its first member; None when the owner
    already belongs to a pool of this program and kind."""
    account_id, pool_id = str(uuid.uuid4()), str(uuid.uuid4())
    await connection.execute(
        """
        INSERT INTO accounts (account_id, program_id, type, kind, pool_id, unit_type, currency_code, scale,
            balance_floor)
        VALUES ($1, $2, 2, $3, $4, $5, $6, $7, $8)
        """,
        account_id,
        program_id,
        kind.kind,
        pool_id,
        kind.unit.type,
        kind.unit.currency_code,
        kind.unit.scale,
        balance_floor(kind.policy),
    )
    await connection.execute(
        """
        INSERT INTO pools (pool_id, program_id, kind, account_id, owner_member_id, display_name, time_zone)
        VALUES ($1, $2, $3, $4, $5, $6, $7)
        """,
        pool_id,
        program_id,
        kind.kind,
        account_id,
        owner_member_id,
        display_name,
        time_zone,
    )
    owner_added = await add_pool_member(
        connection,
        pool_id=pool_id,
        program_id=program_id,
        kind=kind.kind,
        member_id=owner_member_id,
        role=Role.OWNER,
        period=Period.NO_LIMIT,
        limit_minor=0,
    )
    if not owner_added:
        return None  # the owner belongs to another pool of this kind: the caller rolls back
    return pool_id


async def add_pool_member(
    connection: Connection,
    *,
    pool_id: str,
    program_id: str,
    kind: str,
    member_id: str,
    role: Role,
    period: Period,
    limit_minor: int,
) -> bool:
    """False when the member already belongs to a pool of this program and kind."""
    added = await connection.fetchval(
        """
        INSERT INTO pool_members (pool_id, member_id, program_id, kind, role, limit_period, limit_minor)
        VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING RETURNING true
        """,
        pool_id,
        member_id,
        program_id,
        kind,
        int(role),
        int(period),
        limit_minor,
    )
    return bool(added)


async def update_pool_member(
    connection: Connection, *, pool_id: str, member_id: str, period: Period, limit_minor: int
) -> bool:
    status = await connection.execute(
        "UPDATE pool_members SET limit_period = $3, limit_minor = $4"
        " WHERE pool_id = $1 AND member_id = $2 AND role = 2",
        pool_id,
        member_id,
        int(period),
        limit_minor,
    )
    return status.endswith(" 1")


async def remove_pool_member(connection: Connection, *, pool_id: str, member_id: str) -> None:
    await connection.execute(
        "DELETE FROM pool_members WHERE pool_id = $1 AND member_id = $2 AND role = 2", pool_id, member_id
    )


async def pool_row(connection: Connection, pool_id: str, *, lock: bool = False) -> Any:
    if not _is_uuid(pool_id):
        return None
    return await connection.fetchrow(
        "SELECT * FROM pools WHERE pool_id = $1" + (" FOR UPDATE" if lock else ""), pool_id
    )


async def pool_members(connection: Connection, pool_id: str) -> list[Any]:
    return list(
        await connection.fetch(
            "SELECT * FROM pool_members WHERE pool_id = $1 ORDER BY role, join_time, member_id", pool_id
        )
    )


async def close_pool(connection: Connection, pool_id: str) -> None:
    await connection.execute("UPDATE pools SET state = 2, close_time = now() WHERE pool_id = $1", pool_id)
    await connection.execute(
        "UPDATE accounts SET state = 3, state_reason = 'pool closed', state_time = now()"
        " WHERE account_id = (SELECT account_id FROM pools WHERE pool_id = $1)",
        pool_id,
    )


async def find_pools(
    connection: Connection, *, program_id: str, member_id: str, states: Sequence[int], offset: int, limit: int
) -> list[str]:
    rows = await connection.fetch(
        """
        SELECT p.pool_id FROM pools p
        WHERE p.program_id = $1
          AND ($2 = '' OR EXISTS (SELECT 1 FROM pool_members m WHERE m.pool_id = p.pool_id AND m.member_id = $2))
          AND (cardinality($3::smallint[]) = 0 OR p.state = ANY($3::smallint[]))
        ORDER BY p.create_time, p.pool_id OFFSET $4 LIMIT $5
        """,
        program_id,
        member_id,
        list(states),
        offset,
        limit,
    )
    return [str(row["pool_id"]) for row in rows]


async def load_pools(connection: Connection, accounts: dict[str, Account], now: datetime) -> None:
    """Attach its pool (members and recent spending) to every POOL account of a batch."""
    pool_ids = [a.pool_id for a in accounts.values() if a.type is AccountType.POOL and a.pool_id]
    if not pool_ids:
        return
    pools = {
        str(r["pool_id"]): Pool(str(r["pool_id"]), r["time_zone"], PoolState(r["state"]), {})
        for r in await connection.fetch("SELECT * FROM pools WHERE pool_id = ANY($1::uuid[])", pool_ids)
    }
    for row in await connection.fetch("SELECT * FROM pool_members WHERE pool_id = ANY($1::uuid[])", pool_ids):
        pools[str(row["pool_id"])].members[row["member_id"]] = PoolMember(
            row["member_id"], Role(row["role"]), Period(row["limit_period"]), row["limit_minor"]
        )
    # Holds live at most 30 days, so no period older than ~32 days can still change.
    for row in await connection.fetch(
        """
        SELECT * FROM pool_spending WHERE pool_id = ANY($1::uuid[])
          AND (period_start >= $2 OR period_start = 'epoch'::timestamptz)
        """,
        pool_ids,
        now - timedelta(days=62),
    ):
        member = pools[str(row["pool_id"])].members.get(row["member_id"])
        if member is not None:
            member.spent[row["period_start"]] = row["spent_minor"]
    for account in accounts.values():
        if account.pool_id in pools:
            account.pool = pools[account.pool_id]


async def member_pool_accounts(connection: Connection, *, program_id: str, member_id: str) -> list[str]:
    rows = await connection.fetch(
        """
        SELECT p.account_id FROM pools p JOIN pool_members m ON m.pool_id = p.pool_id
        WHERE m.member_id = $1 AND p.program_id = $2 AND p.state = 1 ORDER BY p.create_time
        """,
        member_id,
        program_id,
    )
    return [str(row["account_id"]) for row in rows]


async def persist_pool_spending(connection: Connection, accounts: Iterable[Account]) -> None:
    rows = [
        (account.pool.pool_id, member_id, start, account.pool.members[member_id].spent[start])
        for account in accounts
        if account.pool is not None
        for member_id, start in sorted(account.pool.changed)
        if member_id in account.pool.members
    ]
    if rows:
        await connection.execute(
            """
            INSERT INTO pool_spending (pool_id, member_id, period_start, spent_minor)
            SELECT * FROM unnest($1::uuid[], $2::text[], $3::timestamptz[], $4::bigint[])
            ON CONFLICT (pool_id, member_id, period_start) DO UPDATE SET spent_minor = EXCLUDED.spent_minor
            """,
            *_columns(rows, 4),
        )
