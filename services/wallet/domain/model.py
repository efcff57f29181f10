"""The ledger's values: accounts, lots, transfers and their closed set of outcomes.

Pure data, no I/O. Numbers mirror the enums of protos/loyalty/wallet/v1/wallet.proto (a test
keeps them equal), so the edge maps them without tables.
"""

from __future__ import annotations

from dataclasses import MISSING, dataclass, field, fields
from datetime import datetime
from enum import IntEnum
from typing import TypeVar

from services.wallet.domain.pools import Pool

AMOUNT_MAX = 10**15
INT64_MAX = 2**63 - 1

_Frozen = TypeVar("_Frozen", bound=type)


def fast_init(cls: _Frozen) -> _Frozen:
    """Give a frozen dataclass an __init__ that fills the instance dict in one call.

    The one dataclasses generates calls object.__setattr__ once per field (to get past the
    frozen __setattr__), which costs microseconds per object on the transfer path, where
    several such values are made per transfer. Same signature, same defaults, still frozen
    afterwards (assignment raises as before)."""
    parameters, names, defaults = [], [], {}
    for f in fields(cls):
        names.append(f.name)
        if f.default is not MISSING:
            defaults[f"_default_{f.name}"] = f.default
            parameters.append(f"{f.name}=_default_{f.name}")
        elif f.default_factory is not MISSING:
            raise TypeError(f"{cls.__name__}.{f.name}: fast_init takes no default factories")
        else:
            parameters.append(f.name)
    source = (
        f"def __init__(self, {', '.join(parameters)}):\n"
        f"    self.__dict__.update({', '.join(f'{n}={n}' for n in names)})\n"
    )
    namespace: dict[str, object] = {}
    exec(source, defaults, namespace)  # generated from the class's own field names only
    init = namespace["__init__"]
    init.__qualname__ = f"{cls.__qualname__}.__init__"  # type: ignore[attr-defined]
    cls.__init__ = init  # type: ignore[misc]
    return cls


class Code(IntEnum):
    """TransferResultCode."""

    CREATED = 1
    EXISTS = 2
    EXISTS_WITH_DIFFERENT_FIELDS = 3
    LINKED_EVENT_FAILED = 4
    LINKED_EVENT_CHAIN_OPEN = 5
    ID_INVALID = 10
    FLAGS_ARE_MUTUALLY_EXCLUSIVE = 11
    DEBIT_ACCOUNT_ID_REQUIRED = 12
    CREDIT_ACCOUNT_ID_REQUIRED = 13
    ACCOUNTS_MUST_BE_DIFFERENT = 14
    INVALID_AMOUNT = 15
    PENDING_TRANSFER_ID_REQUIRED = 16
    PENDING_TRANSFER_ID_NOT_ALLOWED = 17
    INVALID_TIMEOUT = 18
    INVALID_REASON = 19
    INVALID_REFERENCE = 20
    INVALID_METADATA = 21
    INVALID_LOT_TERMS = 22
    IMPORTED_TIME_REQUIRED = 23
    IMPORTED_TIME_NOT_ALLOWED = 24
    REVERSAL_NOT_ALLOWED = 25
    IMPORTED_TIME_IN_FUTURE = 40
    IMPORTED_TIME_TOO_OLD = 41
    DEBIT_ACCOUNT_NOT_FOUND = 42
    CREDIT_ACCOUNT_NOT_FOUND = 43
    ACCOUNTS_MUST_HAVE_SAME_UNIT = 44
    DEBIT_ACCOUNT_CLOSED = 45
    CREDIT_ACCOUNT_CLOSED = 46
    DEBIT_ACCOUNT_FROZEN = 47
    CREDIT_ACCOUNT_FROZEN = 48
    REASON_NOT_ALLOWED_FOR_ACCOUNT = 49
    POOL_MEMBER_NOT_FOUND = 50
    POOL_SPENDING_LIMIT_EXCEEDED = 51
    PENDING_TRANSFER_NOT_FOUND = 52
    PENDING_TRANSFER_NOT_PENDING = 53
    PENDING_TRANSFER_HAS_DIFFERENT_DEBIT_ACCOUNT = 54
    PENDING_TRANSFER_HAS_DIFFERENT_CREDIT_ACCOUNT = 55
    PENDING_TRANSFER_HAS_DIFFERENT_AMOUNT = 56
    PENDING_TRANSFER_ALREADY_POSTED = 57
    PENDING_TRANSFER_ALREADY_VOIDED = 58
    PENDING_TRANSFER_EXPIRED = 59
    AMOUNT_EXCEEDS_PENDING = 60
    REVERSED_TRANSFER_NOT_FOUND = 61
    REVERSED_TRANSFER_NOT_REVERSIBLE = 62
    REVERSAL_EXCEEDS_ORIGINAL = 63
    INSUFFICIENT_FUNDS = 64
    BALANCE_LIMIT_EXCEEDED = 65
    OVERFLOW = 66

    @property
    def succeeded(self) -> bool:
        return self in (Code.CREATED, Code.EXISTS)

    @property
    def recorded(self) -> bool:
        """State-dependent rejections are recorded: the id is spent (TigerBeetle's rule)."""
        return self >= Code.IMPORTED_TIME_IN_FUTURE


class Reason(IntEnum):
    """TransferReason."""

    ACCRUAL = 1
    BONUS = 2
    CASHBACK = 3
    REDEMPTION = 4
    OFFLINE_ALLOWANCE = 5
    ACCRUAL_REVERSAL = 6
    REDEMPTION_REVERSAL = 7
    MEMBER_TRANSFER = 8
    POOL_CONTRIBUTION = 9
    POOL_RETURN = 10
    GIFT_LOAD = 11
    PARTNER_SETTLEMENT = 12
    ADJUSTMENT = 13
    EXPIRY = 14
    ACCOUNT_CLOSURE = 15


EARNING_REASONS = frozenset({Reason.ACCRUAL, Reason.BONUS, Reason.CASHBACK})
SPENDING_REASONS = frozenset({Reason.REDEMPTION, Reason.OFFLINE_ALLOWANCE})
REVERSAL_REASONS = frozenset({Reason.ACCRUAL_REVERSAL, Reason.REDEMPTION_REVERSAL})
WALLET_ONLY_REASONS = frozenset({Reason.POOL_RETURN, Reason.EXPIRY, Reason.ACCOUNT_CLOSURE})


class AccountType(IntEnum):
    MEMBER = 1
    POOL = 2
    SYSTEM = 3


# Read once per account loaded (Class.MEMBER reads are slow in Python 3.11: see ledger.py).
_SYSTEM_ACCOUNT = AccountType.SYSTEM


class SystemRole(IntEnum):
    NONE = 0
    ISSUANCE = 1
    REDEMPTION = 2
    EXPIRY = 3
    PARTNER_LIABILITY = 4
    ADJUSTMENT = 5


class AccountState(IntEnum):
    ACTIVE = 1
    FROZEN = 2
    CLOSED = 3


class FreezeMode(IntEnum):
    NONE = 0
    DEBITS = 1
    ALL = 2


class OverdraftMode(IntEnum):
    NO_OVERDRAFT = 1
    DEBT_ALLOWED = 2


class ExpiryMode(IntEnum):
    NEVER = 1
    AFTER_DURATION = 2
    FIXED_TIME = 3


class TransferState(IntEnum):
    PENDING = 1
    POSTED = 2
    VOIDED = 3
    EXPIRED = 4
    REJECTED = 5


class EntryType(IntEnum):
    POSTED = 1
    PENDING = 2
    POST_PENDING = 3
    VOID_PENDING = 4
    EXPIRE_PENDING = 5


class Direction(IntEnum):
    DEBIT = 1
    CREDIT = 2


@fast_init
@dataclass(frozen=True)
class Unit:
    type: int  # UnitType: 1 points, 2 money
    currency_code: str
    scale: int


@fast_init
@dataclass(frozen=True)
class Policy:
    spendable: bool = True
    transferable: bool = False
    overdraft_mode: OverdraftMode = OverdraftMode.NO_OVERDRAFT
    debt_limit_minor: int = 0  # 0 = no limit (with DEBT_ALLOWED)
    balance_max_minor: int = 0  # 0 = no cap
    activation_delay_s: int = 0
    expiry_mode: ExpiryMode = ExpiryMode.NEVER
    lifetime_s: int = 0
    fixed_expiry_time: datetime | None = None
    redemption_priority: int = 0


@fast_init
@dataclass(frozen=True)
class Flags:
    pending: bool = False
    post_pending: bool = False
    void_pending: bool = False
    linked: bool = False
    imported: bool = False
    allow_debt: bool = False

    @property
    def resolves_hold(self) -> bool:
        return self.post_pending or self.void_pending


@fast_init
@dataclass(frozen=True)
class Reference:
    operation_id: str = ""
    terminal_id: str = ""
    receipt_id: str = ""
    outlet_id: str = ""
    partner_id: str = ""
    campaign_id: str = ""


@fast_init
@dataclass(frozen=True)
class LotTerms:
    activation_time: datetime | None = None
    expiry_time: datetime | None = None
    no_expiry: bool = False


@fast_init
@dataclass(frozen=True)
class TransferRequest:
    """One transfer as submitted. `body` is its canonical encoding: two submissions are the same
    transfer exactly when their bodies are equal."""

    transfer_id: str
    debit_account_id: str
    credit_account_id: str
    amount: int
    pending_transfer_id: str
    timeout_s: int
    flags: Flags
    reason: int  # a Reason value, or 0 (unspecified) / unknown values, refused by validation
    reference: Reference
    metadata: tuple[tuple[str, str], ...]
    memo: str
    imported_time: datetime | None
    lot_terms: LotTerms | None
    reverses_transfer_id: str
    on_behalf_of_member_id: str
    body: bytes


@dataclass
class Account:
    """An account's working copy inside one batch. Balances of SYSTEM accounts are kept in
    stripes by the store; here they only accumulate the batch's deltas."""

    account_id: str
    program_id: str
    type: AccountType
    unit: Unit
    state: AccountState
    freeze_mode: FreezeMode
    kind: str = ""
    member_id: str = ""
    master_account_id: str = ""
    system_role: SystemRole = SystemRole.NONE
    partner_id: str = ""
    pool_id: str = ""
    primary: bool = False
    # The account's own state; `state` above is the effective one (the stricter of its own and
    # its master account's), which is what transfers see.
    own_state: AccountState = AccountState.ACTIVE
    master_state: AccountState = AccountState.ACTIVE
    external_ref: str = ""
    display_name: str = ""
    policy: Policy | None = None
    debits_posted: int = 0
    credits_posted: int = 0
    debits_pending: int = 0
    credits_pending: int = 0
    lifetime_earned: int = 0
    entry_sequence: int = 0
    lots: list[Lot] = field(default_factory=list)
    # What the lots not in `lots` still hold: a batch loads only the lots it can reach (plain
    # ones past what it may take are summed, see store._REACHABLE_LOTS); 0 when all are loaded.
    unloaded_remaining: int = 0
    # POOL accounts: the pool's members and their spending.
    pool: Pool | None = None
    # Member and pool accounts keep lots and history; SYSTEM accounts neither. Set from `type`
    # (which never changes) once: the ledger asks it several times per transfer.
    has_lots: bool = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.has_lots = self.type is not _SYSTEM_ACCOUNT

    @property
    def posted(self) -> int:
        return self.credits_posted - self.debits_posted


@dataclass
class Lot:
    lot_id: str
    account_id: str
    transfer_id: str
    reason: int
    amount: int
    remaining: int
    held: int
    expired_amount: int
    activation_time: datetime
    expiry_time: datetime | None
    effective_time: datetime

    def is_active(self, now: datetime) -> bool:
        return self.activation_time <= now

    def is_expired(self, now: datetime) -> bool:
        return self.expiry_time is not None and self.expiry_time <= now

    def free(self) -> int:
        return self.remaining - self.held

    def consumption_key(self) -> tuple[bool, datetime, datetime, str]:
        """Soonest expiry first, lots that never expire last; ties by older activation."""
        never = self.expiry_time is None
        return (never, self.expiry_time or self.activation_time, self.activation_time, self.lot_id)


@fast_init
@dataclass(frozen=True)
class Balance:
    """common.v1.AccountBalance in minor units."""

    account_id: str
    kind: str
    available: int
    pending: int
    held: int
    next_expiry_amount: int
    next_expiry_time: datetime | None
    lifetime_earned: int
    unit: Unit


@dataclass
class TransferRecord:
    """A decided transfer id: applied (any state but REJECTED) or a recorded rejection."""

    request: TransferRequest
    state: TransferState
    rejection_code: Code | None
    recorded_time: datetime
    effective_time: datetime
    amount: int
    posted_amount: int = 0
    pending_expiry_time: datetime | None = None
    resolved_by_transfer_id: str = ""
    resolved_time: datetime | None = None
    reversed_amount: int = 0
    # Lots this transfer consumed or earmarked (debits), or created (credits): [(lot_id, amount)].
    allocations: list[tuple[str, int]] = field(default_factory=list)
    outcome: Outcome | None = None

    @property
    def transfer_id(self) -> str:
        return self.request.transfer_id

    @property
    def is_hold(self) -> bool:
        return self.request.flags.pending


@fast_init
@dataclass(frozen=True)
class Outcome:
    """The result of one transfer (TransferResult)."""

    transfer_id: str
    code: Code
    replayed: bool = False
    different_fields: tuple[str, ...] = ()
    recorded_time: datetime | None = None
    effective_time: datetime | None = None
    debit_balance: Balance | None = None
    credit_balance: Balance | None = None
    amount: int = 0
    released_amount: int = 0
    pending_expiry_time: datetime | None = None
    lot_id: str = ""


@fast_init
@dataclass(frozen=True)
class EntryRecord:
    account_id: str
    sequence: int
    transfer_id: str
    type: EntryType
    direction: Direction
    amount: int
    released_amount: int
    counterparty_account_id: str
    balance_after: Balance | None
    recorded_time: datetime
    effective_time: datetime
