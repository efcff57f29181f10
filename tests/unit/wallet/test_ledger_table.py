"""Table-driven tests of the wallet's transfer state machine (services/wallet/domain/ledger.py).

TigerBeetle style: every row is a setup (steps at given times), one transfer (or one batch) at a
time, the expected result code and the member balances right after it. The ledger is the pure
domain: accounts are built directly, each step is one `Batch` over the same accounts and records
with a later clock, exactly as the store would load them.

Balances are written (available, pending, held, lifetime_earned).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from services.wallet.domain.ledger import (
    Batch,
    LedgerInvariantError,
    balance_of,
    check_account_invariants,
    internal_request,
    validate,
)
from services.wallet.domain.model import (
    AMOUNT_MAX,
    Account,
    AccountState,
    AccountType,
    Code,
    ExpiryMode,
    Flags,
    FreezeMode,
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

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
MINUTE = 60
HOUR = 3600
DAY = 86_400
POINTS = Unit(type=1, currency_code="", scale=0)
RUB = Unit(type=2, currency_code="RUB", scale=2)

Bal = tuple[int, int, int, int]  # available, pending, held, lifetime_earned


def t(seconds: int) -> datetime:
    return T0 + timedelta(seconds=seconds)


# ------------------------------------------------------------------------------------------------
# Builders.


def member(
    account_id: str,
    policy: Policy | None = None,
    *,
    program_id: str = "p1",
    unit: Unit = POINTS,
    account_type: AccountType = AccountType.MEMBER,
) -> Account:
    return Account(
        account_id=account_id,
        program_id=program_id,
        type=account_type,
        unit=unit,
        state=AccountState.ACTIVE,
        freeze_mode=FreezeMode.NONE,
        kind="base",
        member_id=f"member-{account_id}",
        policy=policy or Policy(transferable=True),
    )


def system(account_id: str, role: SystemRole, *, program_id: str = "p1", unit: Unit = POINTS) -> Account:
    return Account(
        account_id=account_id,
        program_id=program_id,
        type=AccountType.SYSTEM,
        unit=unit,
        state=AccountState.ACTIVE,
        freeze_mode=FreezeMode.NONE,
        system_role=role,
    )


def world() -> dict[str, Account]:
    accounts = [
        system("iss", SystemRole.ISSUANCE),
        system("red", SystemRole.REDEMPTION),
        system("exp", SystemRole.EXPIRY),
        system("adj", SystemRole.ADJUSTMENT),
        system("iss2", SystemRole.ISSUANCE, program_id="p2"),
        system("iss_rub", SystemRole.ISSUANCE, unit=RUB),
        member("a"),
        member("b"),
        member("pool", account_type=AccountType.POOL),
        member("debt", Policy(transferable=True, overdraft_mode=OverdraftMode.DEBT_ALLOWED)),
        member("debt50", Policy(transferable=True, overdraft_mode=OverdraftMode.DEBT_ALLOWED, debt_limit_minor=50)),
        member("nospend", Policy(spendable=False, transferable=True)),
        member("keep", Policy(transferable=False)),
        member("capped", Policy(transferable=True, balance_max_minor=1000)),
        member("delay", Policy(transferable=True, activation_delay_s=14 * DAY)),
        member("expiring", Policy(transferable=True, expiry_mode=ExpiryMode.AFTER_DURATION, lifetime_s=30 * DAY)),
        member("fixed", Policy(transferable=True, expiry_mode=ExpiryMode.FIXED_TIME, fixed_expiry_time=t(10 * DAY))),
        member("p2member", program_id="p2"),
        member("cash", unit=RUB),
    ]
    return {account.account_id: account for account in accounts}


def tr(
    transfer_id: str,
    debit: str = "",
    credit: str = "",
    amount: int = 0,
    *,
    reason: int = 0,
    pending: bool = False,
    post: bool = False,
    void: bool = False,
    linked: bool = False,
    imported: bool = False,
    allow_debt: bool = False,
    pending_id: str = "",
    timeout_s: int = 0,
    reference: Reference | None = None,
    metadata: tuple[tuple[str, str], ...] = (),
    memo: str = "",
    imported_time: datetime | None = None,
    lot_terms: LotTerms | None = None,
    reverses: str = "",
    on_behalf: str = "",
) -> TransferRequest:
    """A transfer as a client submits it; the body is a deterministic encoding of every field."""
    flags = Flags(
        pending=pending, post_pending=post, void_pending=void, linked=linked, imported=imported, allow_debt=allow_debt
    )
    fields = (
        transfer_id,
        debit,
        credit,
        amount,
        pending_id,
        timeout_s,
        flags,
        reason,
        reference or Reference(),
        metadata,
        memo,
        imported_time,
        lot_terms,
        reverses,
        on_behalf,
    )
    return TransferRequest(
        transfer_id=transfer_id,
        debit_account_id=debit,
        credit_account_id=credit,
        amount=amount,
        pending_transfer_id=pending_id,
        timeout_s=timeout_s,
        flags=flags,
        reason=reason,
        reference=reference or Reference(),
        metadata=metadata,
        memo=memo,
        imported_time=imported_time,
        lot_terms=lot_terms,
        reverses_transfer_id=reverses,
        on_behalf_of_member_id=on_behalf,
        body=repr(fields).encode(),
    )


def changed(request: TransferRequest, **changes: Any) -> TransferRequest:
    """The same transfer id with some fields changed (and the body re-encoded)."""
    names: dict[str, Any] = {
        "debit": request.debit_account_id,
        "credit": request.credit_account_id,
        "amount": request.amount,
        "reason": request.reason,
        "pending": request.flags.pending,
        "post": request.flags.post_pending,
        "void": request.flags.void_pending,
        "linked": request.flags.linked,
        "imported": request.flags.imported,
        "allow_debt": request.flags.allow_debt,
        "pending_id": request.pending_transfer_id,
        "timeout_s": request.timeout_s,
        "reference": request.reference,
        "metadata": request.metadata,
        "memo": request.memo,
        "imported_time": request.imported_time,
        "lot_terms": request.lot_terms,
        "reverses": request.reverses_transfer_id,
        "on_behalf": request.on_behalf_of_member_id,
    }
    names.update(changes)
    return tr(request.transfer_id, **names)


def accrue(transfer_id: str, to: str, amount: int, **kw: Any) -> TransferRequest:
    return tr(transfer_id, kw.pop("debit", "iss"), to, amount, reason=kw.pop("reason", Reason.ACCRUAL), **kw)


def redeem(transfer_id: str, frm: str, amount: int, **kw: Any) -> TransferRequest:
    return tr(transfer_id, frm, kw.pop("credit", "red"), amount, reason=kw.pop("reason", Reason.REDEMPTION), **kw)


def hold(transfer_id: str, frm: str, amount: int, timeout_s: int = HOUR, **kw: Any) -> TransferRequest:
    return redeem(transfer_id, frm, amount, pending=True, timeout_s=timeout_s, **kw)


def post(transfer_id: str, hold_id: str, amount: int = 0, **kw: Any) -> TransferRequest:
    return tr(transfer_id, amount=amount, post=True, pending_id=hold_id, **kw)


def void(transfer_id: str, hold_id: str, amount: int = 0, **kw: Any) -> TransferRequest:
    return tr(transfer_id, amount=amount, void=True, pending_id=hold_id, **kw)


def reverse_accrual(transfer_id: str, frm: str, amount: int, original: str, **kw: Any) -> TransferRequest:
    return tr(transfer_id, frm, "iss", amount, reason=Reason.ACCRUAL_REVERSAL, reverses=original, **kw)


def reverse_redemption(transfer_id: str, to: str, amount: int, original: str, **kw: Any) -> TransferRequest:
    return tr(transfer_id, "red", to, amount, reason=Reason.REDEMPTION_REVERSAL, reverses=original, **kw)


# ------------------------------------------------------------------------------------------------
# The harness: one ledger carried across batches.


class Ledger:
    def __init__(self) -> None:
        self.accounts = world()
        self.records: dict[str, TransferRecord] = {}
        self._lot_ids = itertools.count(1)

    def batch(self, at: int) -> Batch:
        return Batch(
            now=t(at), accounts=self.accounts, records=self.records, new_lot_id=lambda: f"lot{next(self._lot_ids)}"
        )

    def submit(self, *requests: TransferRequest, at: int = 0) -> list[Outcome]:
        outcomes = self.batch(at).apply(list(requests))
        self.check()
        return outcomes

    def one(self, request: TransferRequest, at: int = 0) -> Outcome:
        return self.submit(request, at=at)[0]

    def expire_holds(self, at: int) -> list[str]:
        """The hold-timeout worker."""
        batch = self.batch(at)
        due = [
            r
            for r in self.records.values()
            if r.state is TransferState.PENDING and r.pending_expiry_time is not None and r.pending_expiry_time <= t(at)
        ]
        for record in due:
            batch.expire_hold(record)
        self.check()
        return [r.transfer_id for r in due]

    def expire_lots(self, at: int) -> list[TransferRecord]:
        """The lot-expiry worker."""
        batch = self.batch(at)
        made = []
        for account in self.accounts.values():
            for lot in list(account.lots):
                if lot.is_expired(t(at)) and lot.free() > 0:
                    made.append(batch.expire_lot(lot, self.accounts["exp"]))
        self.check()
        return made

    def balance(self, account_id: str, at: int) -> Bal:
        b = balance_of(self.accounts[account_id], t(at))
        return (b.available, b.pending, b.held, b.lifetime_earned)

    def lots(self, account_id: str) -> list[tuple[int, int]]:
        """(amount, remaining) of every lot of the account, in creation order."""
        return [(lot.amount, lot.remaining) for lot in self.accounts[account_id].lots]

    def check(self) -> None:
        assert sum(account.posted for account in self.accounts.values()) == 0, "posted balances must sum to zero"
        for account in self.accounts.values():
            check_account_invariants(account)


Action = Callable[[Ledger, int], object]
Step = tuple[int, TransferRequest | Action]


def freeze(account_id: str, mode: FreezeMode = FreezeMode.DEBITS) -> Action:
    def action(ledger: Ledger, at: int) -> None:
        account = ledger.accounts[account_id]
        account.state, account.freeze_mode = AccountState.FROZEN, mode

    return action


def close(account_id: str) -> Action:
    def action(ledger: Ledger, at: int) -> None:
        ledger.accounts[account_id].state = AccountState.CLOSED

    return action


def workers(ledger: Ledger, at: int) -> None:
    ledger.expire_holds(at)
    ledger.expire_lots(at)


def run_setup(ledger: Ledger, setup: Sequence[Step]) -> None:
    for at, step in setup:
        if isinstance(step, TransferRequest):
            outcome = ledger.one(step, at=at)
            assert outcome.code is Code.CREATED, f"setup {step.transfer_id}: {outcome.code.name}"
        else:
            step(ledger, at)


# ------------------------------------------------------------------------------------------------
# Validation: the body alone; nothing is recorded.

LONG = "x" * 65
VALIDATION = [
    ("empty id", tr("", "iss", "a", 1, reason=Reason.ACCRUAL), Code.ID_INVALID),
    ("id with a space", tr("bad id", "iss", "a", 1, reason=Reason.ACCRUAL), Code.ID_INVALID),
    ("id of 129 characters", tr("i" * 129, "iss", "a", 1, reason=Reason.ACCRUAL), Code.ID_INVALID),
    ("reserved wallet: prefix", tr("wallet:x", "iss", "a", 1, reason=Reason.ACCRUAL), Code.ID_INVALID),
    ("pending and post", tr("t", "a", "red", 1, reason=4, pending=True, post=True), Code.FLAGS_ARE_MUTUALLY_EXCLUSIVE),
    ("post and void", tr("t", amount=1, post=True, void=True, pending_id="h"), Code.FLAGS_ARE_MUTUALLY_EXCLUSIVE),
    (
        "imported with pending",
        hold("t", "a", 1, imported=True, imported_time=T0),
        Code.FLAGS_ARE_MUTUALLY_EXCLUSIVE,
    ),
    ("no debit account", tr("t", "", "a", 1, reason=Reason.ACCRUAL), Code.DEBIT_ACCOUNT_ID_REQUIRED),
    ("no credit account", tr("t", "a", "", 1, reason=Reason.REDEMPTION), Code.CREDIT_ACCOUNT_ID_REQUIRED),
    ("same account twice", tr("t", "a", "a", 1, reason=Reason.ADJUSTMENT, memo="m"), Code.ACCOUNTS_MUST_BE_DIFFERENT),
    ("same account on a post", post("t", "h", debit="a", credit="a"), Code.ACCOUNTS_MUST_BE_DIFFERENT),
    ("zero amount", accrue("t", "a", 0), Code.INVALID_AMOUNT),
    ("negative amount", accrue("t", "a", -1), Code.INVALID_AMOUNT),
    ("amount above 10^15", accrue("t", "a", AMOUNT_MAX + 1), Code.INVALID_AMOUNT),
    ("zero hold", hold("t", "a", 0), Code.INVALID_AMOUNT),
    ("negative post", post("t", "h", -1), Code.INVALID_AMOUNT),
    ("negative void", void("t", "h", -1), Code.INVALID_AMOUNT),
    ("post above 10^15", post("t", "h", AMOUNT_MAX + 1), Code.INVALID_AMOUNT),
    ("post without hold id", post("t", ""), Code.PENDING_TRANSFER_ID_REQUIRED),
    ("void without hold id", void("t", ""), Code.PENDING_TRANSFER_ID_REQUIRED),
    ("hold id on a single-phase", accrue("t", "a", 1, pending_id="h"), Code.PENDING_TRANSFER_ID_NOT_ALLOWED),
    ("hold id on a hold", hold("t", "a", 1, pending_id="h"), Code.PENDING_TRANSFER_ID_NOT_ALLOWED),
    ("hold without timeout", hold("t", "a", 1, timeout_s=0), Code.INVALID_TIMEOUT),
    ("hold timeout above 30 days", hold("t", "a", 1, timeout_s=2_592_001), Code.INVALID_TIMEOUT),
    ("timeout on a single-phase", accrue("t", "a", 1, timeout_s=5), Code.INVALID_TIMEOUT),
    ("timeout on a post", post("t", "h", timeout_s=5), Code.INVALID_TIMEOUT),
    ("unspecified reason", tr("t", "iss", "a", 1), Code.INVALID_REASON),
    ("unknown reason", tr("t", "iss", "a", 1, reason=99), Code.INVALID_REASON),
    ("reserved EXPIRY", tr("t", "a", "exp", 1, reason=Reason.EXPIRY), Code.INVALID_REASON),
    ("reserved POOL_RETURN", tr("t", "pool", "a", 1, reason=Reason.POOL_RETURN), Code.INVALID_REASON),
    ("reserved ACCOUNT_CLOSURE", tr("t", "a", "exp", 1, reason=Reason.ACCOUNT_CLOSURE), Code.INVALID_REASON),
    ("adjustment without memo", tr("t", "adj", "a", 1, reason=Reason.ADJUSTMENT), Code.INVALID_REASON),
    ("accrual reversal without original", tr("t", "a", "iss", 1, reason=6), Code.INVALID_REASON),
    ("redemption reversal without original", tr("t", "red", "a", 1, reason=7), Code.INVALID_REASON),
    ("reference field of 65", accrue("t", "a", 1, reference=Reference(receipt_id=LONG)), Code.INVALID_REFERENCE),
    (
        "17 metadata entries",
        accrue("t", "a", 1, metadata=tuple((f"k{i}", "v") for i in range(17))),
        Code.INVALID_METADATA,
    ),
    ("metadata key with capitals", accrue("t", "a", 1, metadata=(("Key", "v"),)), Code.INVALID_METADATA),
    ("empty metadata key", accrue("t", "a", 1, metadata=(("", "v"),)), Code.INVALID_METADATA),
    ("metadata value of 257", accrue("t", "a", 1, metadata=(("k", "v" * 257),)), Code.INVALID_METADATA),
    ("memo of 257", accrue("t", "a", 1, memo="m" * 257), Code.INVALID_METADATA),
    ("lot terms on a post", post("t", "h", lot_terms=LotTerms(no_expiry=True)), Code.INVALID_LOT_TERMS),
    ("lot terms on a void", void("t", "h", lot_terms=LotTerms(no_expiry=True)), Code.INVALID_LOT_TERMS),
    (
        "no_expiry with an expiry time",
        accrue("t", "a", 1, lot_terms=LotTerms(expiry_time=t(DAY), no_expiry=True)),
        Code.INVALID_LOT_TERMS,
    ),
    (
        "expiry not after activation",
        accrue("t", "a", 1, lot_terms=LotTerms(activation_time=t(DAY), expiry_time=t(DAY))),
        Code.INVALID_LOT_TERMS,
    ),
    ("imported without time", accrue("t", "a", 1, imported=True), Code.IMPORTED_TIME_REQUIRED),
    ("time without imported", accrue("t", "a", 1, imported_time=T0), Code.IMPORTED_TIME_NOT_ALLOWED),
    ("reversal on a hold", hold("t", "a", 1, reverses="x"), Code.REVERSAL_NOT_ALLOWED),
    ("reversal on a post", post("t", "h", reverses="x"), Code.REVERSAL_NOT_ALLOWED),
    ("reversal on a void", void("t", "h", reverses="x"), Code.REVERSAL_NOT_ALLOWED),
]

VALID = [
    ("amount of 10^15", accrue("t", "a", AMOUNT_MAX)),
    ("id of 128 characters", accrue("i" * 128, "a", 1)),
    ("id with every allowed character class", accrue("Az09._:-", "a", 1)),
    ("hold timeout of 30 days", hold("t", "a", 1, timeout_s=2_592_000)),
    ("post of 0 = the whole hold", post("t", "h", 0)),
    ("void of 0", void("t", "h", 0)),
    ("post without reason", post("t", "h")),
    ("adjustment with memo", tr("t", "adj", "a", 1, reason=Reason.ADJUSTMENT, memo="goodwill")),
    ("16 metadata entries", accrue("t", "a", 1, metadata=tuple((f"k{i}", "v" * 256) for i in range(16)))),
    ("reference field of 64", accrue("t", "a", 1, reference=Reference(operation_id="o" * 64))),
    ("memo of 256", accrue("t", "a", 1, memo="m" * 256)),
    ("lot terms with activation only", accrue("t", "a", 1, lot_terms=LotTerms(activation_time=t(DAY)))),
    ("imported with time", accrue("t", "a", 1, imported=True, imported_time=T0)),
    ("reversal of a single-phase", reverse_accrual("t", "a", 1, "x")),
]


@pytest.mark.parametrize(("request_", "code"), [pytest.param(r, c, id=name) for name, r, c in VALIDATION])
def test_validation_codes(request_: TransferRequest, code: Code) -> None:
    assert validate(request_) is code
    ledger = Ledger()
    first, again = ledger.submit(request_, request_)
    assert first == again == Outcome(request_.transfer_id, code)  # unrecorded: no time, no balances
    assert ledger.records == {}, "validation failures are never recorded"


@pytest.mark.parametrize("request_", [pytest.param(r, id=name) for name, r in VALID])
def test_valid_bodies_pass_validation(request_: TransferRequest) -> None:
    assert validate(request_) is None


def test_every_validation_code_appears_in_the_table() -> None:
    assert {code for _, _, code in VALIDATION} == {code for code in Code if 10 <= code < 40}


def test_wallet_ids_are_valid_only_for_internal_transfers() -> None:
    request = internal_request(
        transfer_id="wallet:expiry:lot1:0",
        debit_account_id="a",
        credit_account_id="exp",
        amount=5,
        reason=Reason.EXPIRY,
    )
    assert validate(request) is Code.ID_INVALID
    assert validate(request, internal=True) is None


def test_an_id_refused_by_validation_is_not_spent() -> None:
    ledger = Ledger()
    assert ledger.one(accrue("t1", "a", 0)).code is Code.INVALID_AMOUNT
    assert ledger.one(accrue("t1", "a", 10), at=1).code is Code.CREATED


# ------------------------------------------------------------------------------------------------
# The state machine: setup, one transfer, its code and the balances after it.

TABLE: list[Any] = []


def row(
    name: str, setup: Sequence[Step], transfer: TransferRequest, code: Code, balances: dict[str, Bal], *, at: int = 100
) -> None:
    TABLE.append(pytest.param(setup, at, transfer, code, balances, id=name))


A100: list[Step] = [(0, accrue("t0", "a", 100))]

# fmt: off

# Single-phase movements and funds.
row("accrual credits the member", [], accrue("t1", "a", 100), Code.CREATED, {"a": (100, 0, 0, 100)})
row("bonus counts as earned", [], accrue("t1", "a", 7, reason=Reason.BONUS), Code.CREATED, {"a": (7, 0, 0, 7)})
row("cashback counts as earned", [], accrue("t1", "cash", 7, debit="iss_rub", reason=3), Code.CREATED,
    {"cash": (7, 0, 0, 7)})
row("gift load is not earned", [], accrue("t1", "a", 7, reason=Reason.GIFT_LOAD), Code.CREATED, {"a": (7, 0, 0, 0)})
row("redemption within available", A100, redeem("t1", "a", 60), Code.CREATED, {"a": (40, 0, 0, 100)})
row("redemption of everything", A100, redeem("t1", "a", 100), Code.CREATED, {"a": (0, 0, 0, 100)})
row("redemption beyond available", A100, redeem("t1", "a", 101), Code.INSUFFICIENT_FUNDS, {"a": (100, 0, 0, 100)})
row("redemption from an empty account", [], redeem("t1", "a", 1), Code.INSUFFICIENT_FUNDS, {"a": (0, 0, 0, 0)})
row("member transfer", A100, tr("t1", "a", "b", 30, reason=8), Code.CREATED,
    {"a": (70, 0, 0, 100), "b": (30, 0, 0, 0)})
row("member transfer beyond available", A100, tr("t1", "a", "b", 130, reason=8), Code.INSUFFICIENT_FUNDS,
    {"a": (100, 0, 0, 100), "b": (0, 0, 0, 0)})
row("pool contribution", A100, tr("t1", "a", "pool", 30, reason=9), Code.CREATED,
    {"a": (70, 0, 0, 100), "pool": (30, 0, 0, 0)})
row("operator adjustment up", [], tr("t1", "adj", "a", 5, reason=13, memo="sorry"), Code.CREATED,
    {"a": (5, 0, 0, 0)})
row("operator adjustment down", A100, tr("t1", "a", "adj", 5, reason=13, memo="oops"), Code.CREATED,
    {"a": (95, 0, 0, 100)})
row("partner settlement between system accounts", [], tr("t1", "iss", "red", 5, reason=12), Code.CREATED, {})

# Holds.
H30: list[Step] = [*A100, (10, hold("h", "a", 30, timeout_s=HOUR))]
row("hold reserves the amount", A100, hold("h", "a", 30), Code.CREATED, {"a": (70, 0, 30, 100)})
row("hold beyond available", A100, hold("h", "a", 101), Code.INSUFFICIENT_FUNDS, {"a": (100, 0, 0, 100)})
row("redemption cannot take held points", H30, redeem("t1", "a", 71), Code.INSUFFICIENT_FUNDS,
    {"a": (70, 0, 30, 100)})
row("second hold on what is left", H30, hold("h2", "a", 70), Code.CREATED, {"a": (0, 0, 100, 100)})
row("post 0 posts the whole hold", H30, post("p", "h", 0), Code.CREATED, {"a": (70, 0, 0, 100)})
row("post of the exact amount", H30, post("p", "h", 30), Code.CREATED, {"a": (70, 0, 0, 100)})
row("partial post releases the rest", H30, post("p", "h", 20), Code.CREATED, {"a": (80, 0, 0, 100)})
row("post naming the hold's accounts", H30, post("p", "h", debit="a", credit="red"), Code.CREATED,
    {"a": (70, 0, 0, 100)})
row("post above the hold", H30, post("p", "h", 31), Code.AMOUNT_EXCEEDS_PENDING, {"a": (70, 0, 30, 100)})
row("void releases the hold", H30, void("p", "h"), Code.CREATED, {"a": (100, 0, 0, 100)})
row("void of the exact amount", H30, void("p", "h", 30), Code.CREATED, {"a": (100, 0, 0, 100)})
row("void of another amount", H30, void("p", "h", 29), Code.PENDING_TRANSFER_HAS_DIFFERENT_AMOUNT,
    {"a": (70, 0, 30, 100)})
row("post with another debit account", H30, post("p", "h", debit="b"),
    Code.PENDING_TRANSFER_HAS_DIFFERENT_DEBIT_ACCOUNT, {"a": (70, 0, 30, 100)})
row("void with another credit account", H30, void("p", "h", credit="exp"),
    Code.PENDING_TRANSFER_HAS_DIFFERENT_CREDIT_ACCOUNT, {"a": (70, 0, 30, 100)})
row("post of an unknown hold", A100, post("p", "nope"), Code.PENDING_TRANSFER_NOT_FOUND, {"a": (100, 0, 0, 100)})
row("post of a single-phase transfer", A100, post("p", "t0"), Code.PENDING_TRANSFER_NOT_PENDING,
    {"a": (100, 0, 0, 100)})
row("post of a post", [*H30, (20, post("p1", "h"))], post("p2", "p1"), Code.PENDING_TRANSFER_NOT_PENDING,
    {"a": (70, 0, 0, 100)})
row("post of an already posted hold", [*H30, (20, post("p1", "h", 10))], post("p2", "h"),
    Code.PENDING_TRANSFER_ALREADY_POSTED, {"a": (90, 0, 0, 100)})
row("void of an already posted hold", [*H30, (20, post("p1", "h"))], void("p2", "h"),
    Code.PENDING_TRANSFER_ALREADY_POSTED, {"a": (70, 0, 0, 100)})
row("post of an already voided hold", [*H30, (20, void("v1", "h"))], post("p2", "h"),
    Code.PENDING_TRANSFER_ALREADY_VOIDED, {"a": (100, 0, 0, 100)})
row("void of an already voided hold", [*H30, (20, void("v1", "h"))], void("v2", "h"),
    Code.PENDING_TRANSFER_ALREADY_VOIDED, {"a": (100, 0, 0, 100)})
row("post one second before the deadline", H30, post("p", "h"), Code.CREATED, {"a": (70, 0, 0, 100)},
    at=10 + HOUR - 1)
row("post at the deadline, before the worker", H30, post("p", "h"), Code.PENDING_TRANSFER_EXPIRED,
    {"a": (100, 0, 0, 100)}, at=10 + HOUR)
row("void after the deadline, before the worker", H30, void("p", "h"), Code.PENDING_TRANSFER_EXPIRED,
    {"a": (100, 0, 0, 100)}, at=10 + DAY)
row("post after the worker expired the hold", [*H30, (10 + HOUR, workers)], post("p", "h"),
    Code.PENDING_TRANSFER_EXPIRED, {"a": (100, 0, 0, 100)}, at=10 + HOUR)
row("pending accrual shows as pending", [], accrue("h", "a", 50, pending=True, timeout_s=HOUR), Code.CREATED,
    {"a": (0, 50, 0, 0)})
row("pending accrual posted in part", [(0, accrue("h", "a", 50, pending=True, timeout_s=HOUR))], post("p", "h", 30),
    Code.CREATED, {"a": (30, 0, 0, 30)})
row("pending accrual voided", [(0, accrue("h", "a", 50, pending=True, timeout_s=HOUR))], void("p", "h"),
    Code.CREATED, {"a": (0, 0, 0, 0)})
row("pending member transfer posted", [*A100, (10, tr("h", "a", "b", 40, reason=8, pending=True, timeout_s=HOUR))],
    post("p", "h"), Code.CREATED, {"a": (60, 0, 0, 100), "b": (40, 0, 0, 0)})
row("pending member transfer before post", A100, tr("h", "a", "b", 40, reason=8, pending=True, timeout_s=60),
    Code.CREATED, {"a": (60, 0, 40, 100), "b": (0, 40, 0, 0)})

# Debt: only with allow_debt, a DEBT_ALLOWED kind, within the limit; spending never creates it.
SPENT = [(0, accrue("t0", "debt", 100)), (10, redeem("r0", "debt", 100))]
SPENT50 = [(0, accrue("t0", "debt50", 100)), (10, redeem("r0", "debt50", 60))]
row("reversal into debt needs allow_debt", SPENT, reverse_accrual("x", "debt", 100, "t0"), Code.INSUFFICIENT_FUNDS,
    {"debt": (0, 0, 0, 100)})
row("reversal into debt with allow_debt", SPENT, reverse_accrual("x", "debt", 100, "t0", allow_debt=True),
    Code.CREATED, {"debt": (-100, 0, 0, 0)})
row("allow_debt without a DEBT_ALLOWED kind", [(0, accrue("t0", "a", 100)), (10, redeem("r0", "a", 100))],
    reverse_accrual("x", "a", 100, "t0", allow_debt=True), Code.INSUFFICIENT_FUNDS, {"a": (0, 0, 0, 100)})
row("debt down to the limit", SPENT50, reverse_accrual("x", "debt50", 90, "t0", allow_debt=True), Code.CREATED,
    {"debt50": (-50, 0, 0, 10)})
row("debt beyond the limit", SPENT50, reverse_accrual("x", "debt50", 91, "t0", allow_debt=True),
    Code.INSUFFICIENT_FUNDS, {"debt50": (40, 0, 0, 100)})
row("adjustment into debt", [], tr("x", "debt", "adj", 30, reason=13, memo="fix", allow_debt=True), Code.CREATED,
    {"debt": (-30, 0, 0, 0)})
row("spending never creates debt", [(0, accrue("t0", "debt", 100))], redeem("x", "debt", 101, allow_debt=True),
    Code.INSUFFICIENT_FUNDS, {"debt": (100, 0, 0, 100)})
row("a hold never creates debt", [(0, accrue("t0", "debt", 100))], hold("x", "debt", 101, allow_debt=True),
    Code.INSUFFICIENT_FUNDS, {"debt": (100, 0, 0, 100)})
row("a hold with allow_debt never creates debt", [(0, accrue("t0", "debt", 100))],
    hold("x", "debt", 101, credit="adj", reason=Reason.ADJUSTMENT, memo="m", allow_debt=True),
    Code.INSUFFICIENT_FUNDS, {"debt": (100, 0, 0, 100)})
row("giving away never creates debt", [(0, accrue("t0", "debt", 100))],
    tr("x", "debt", "b", 101, reason=8, allow_debt=True), Code.INSUFFICIENT_FUNDS,
    {"debt": (100, 0, 0, 100)})
IN_DEBT = [*SPENT, (20, reverse_accrual("x", "debt", 100, "t0", allow_debt=True))]
row("a credit pays the debt first", IN_DEBT, accrue("t1", "debt", 150), Code.CREATED, {"debt": (50, 0, 0, 150)})
row("a credit smaller than the debt", IN_DEBT, accrue("t1", "debt", 40), Code.CREATED, {"debt": (-60, 0, 0, 40)})
row("no spending while in debt", [*IN_DEBT, (30, accrue("t1", "debt", 40))], redeem("r1", "debt", 1),
    Code.INSUFFICIENT_FUNDS, {"debt": (-60, 0, 0, 40)})
row("debt takes pending lots too",
    [*SPENT, (20, accrue("t1", "debt", 30, lot_terms=LotTerms(activation_time=t(5 * DAY))))],
    reverse_accrual("x", "debt", 100, "t0", allow_debt=True), Code.CREATED, {"debt": (-70, 0, 0, 30)})
row("debt takes expired lots too",
    [*SPENT, (20, accrue("t1", "debt", 30, lot_terms=LotTerms(expiry_time=t(50))))],
    reverse_accrual("x", "debt", 100, "t0", allow_debt=True), Code.CREATED, {"debt": (-70, 0, 0, 30)})
row("debt cannot take held points", [*SPENT, (20, accrue("t1", "debt", 30)), (30, hold("h", "debt", 30))],
    reverse_accrual("x", "debt", 100, "t0", allow_debt=True), Code.INSUFFICIENT_FUNDS,
    {"debt": (0, 0, 30, 130)})

# Frozen and closed accounts.
row("frozen account refuses debits", [*A100, (10, freeze("a"))], redeem("t1", "a", 10), Code.DEBIT_ACCOUNT_FROZEN,
    {"a": (100, 0, 0, 100)})
row("frozen account refuses holds", [*A100, (10, freeze("a"))], hold("h", "a", 10), Code.DEBIT_ACCOUNT_FROZEN,
    {"a": (100, 0, 0, 100)})
row("frozen account refuses giving", [*A100, (10, freeze("a"))], tr("t1", "a", "b", 10, reason=8),
    Code.DEBIT_ACCOUNT_FROZEN, {"a": (100, 0, 0, 100)})
row("credits land on a debit-frozen account", [(0, freeze("a"))], accrue("t1", "a", 10), Code.CREATED,
    {"a": (10, 0, 0, 10)})
row("unspecified freeze mode blocks debits only", [(0, freeze("a", FreezeMode.NONE))], accrue("t1", "a", 10),
    Code.CREATED, {"a": (10, 0, 0, 10)})
row("freeze ALL refuses credits", [(0, freeze("a", FreezeMode.ALL))], accrue("t1", "a", 10),
    Code.CREDIT_ACCOUNT_FROZEN, {"a": (0, 0, 0, 0)})
row("freeze ALL refuses debits", [*A100, (10, freeze("a", FreezeMode.ALL))], redeem("t1", "a", 10),
    Code.DEBIT_ACCOUNT_FROZEN, {"a": (100, 0, 0, 100)})
row("frozen issuance stops accruals", [(0, freeze("iss"))], accrue("t1", "a", 10), Code.DEBIT_ACCOUNT_FROZEN,
    {"a": (0, 0, 0, 0)})
row("earlier hold posts on a frozen account", [*H30, (20, freeze("a", FreezeMode.ALL))], post("p", "h"),
    Code.CREATED, {"a": (70, 0, 0, 100)})
row("earlier hold voids on a frozen account", [*H30, (20, freeze("a", FreezeMode.ALL))], void("p", "h"),
    Code.CREATED, {"a": (100, 0, 0, 100)})
row("earlier pending accrual posts to a frozen-ALL account",
    [(0, accrue("h", "a", 50, pending=True, timeout_s=HOUR)), (10, freeze("a", FreezeMode.ALL))], post("p", "h"),
    Code.CREATED, {"a": (50, 0, 0, 50)})
row("closed account refuses debits", [*A100, (10, close("a"))], redeem("t1", "a", 10), Code.DEBIT_ACCOUNT_CLOSED,
    {"a": (100, 0, 0, 100)})
row("closed account refuses credits", [(0, close("a"))], accrue("t1", "a", 10), Code.CREDIT_ACCOUNT_CLOSED,
    {"a": (0, 0, 0, 0)})
row("closed wins over frozen", [*A100, (10, close("a")), (10, freeze("red", FreezeMode.ALL))],
    redeem("t1", "a", 10), Code.DEBIT_ACCOUNT_CLOSED, {"a": (100, 0, 0, 100)})

# Accounts and units.
row("unknown debit account", [], accrue("t1", "a", 1, debit="nope"), Code.DEBIT_ACCOUNT_NOT_FOUND, {})
row("unknown credit account", [], accrue("t1", "nope", 1), Code.CREDIT_ACCOUNT_NOT_FOUND, {})
row("accounts of two programs", [], accrue("t1", "p2member", 1), Code.ACCOUNTS_MUST_HAVE_SAME_UNIT, {})
row("points into a money account", [], accrue("t1", "cash", 1), Code.ACCOUNTS_MUST_HAVE_SAME_UNIT, {})
row("the other program's issuance", [], accrue("t1", "p2member", 1, debit="iss2"), Code.CREATED,
    {"p2member": (1, 0, 0, 1)})

# Reasons against account types and policies.
row("accrual debiting a member", A100, tr("t1", "a", "iss", 1, reason=Reason.ACCRUAL),
    Code.REASON_NOT_ALLOWED_FOR_ACCOUNT, {"a": (100, 0, 0, 100)})
row("accrual between members", A100, tr("t1", "a", "b", 1, reason=Reason.ACCRUAL),
    Code.REASON_NOT_ALLOWED_FOR_ACCOUNT, {"a": (100, 0, 0, 100)})
row("redemption between system accounts", [], tr("t1", "iss", "red", 1, reason=Reason.REDEMPTION),
    Code.REASON_NOT_ALLOWED_FOR_ACCOUNT, {})
row("redemption to a member", A100, tr("t1", "a", "b", 1, reason=Reason.REDEMPTION),
    Code.REASON_NOT_ALLOWED_FOR_ACCOUNT, {"a": (100, 0, 0, 100)})
row("redemption of a kind that is not spendable", [(0, accrue("t0", "nospend", 100))], redeem("t1", "nospend", 1),
    Code.REASON_NOT_ALLOWED_FOR_ACCOUNT, {"nospend": (100, 0, 0, 100)})
row("offline allowance of a kind that is not spendable", [(0, accrue("t0", "nospend", 100))],
    hold("h", "nospend", 1, reason=Reason.OFFLINE_ALLOWANCE), Code.REASON_NOT_ALLOWED_FOR_ACCOUNT,
    {"nospend": (100, 0, 0, 100)})
row("giving away a kind that is not spendable", [(0, accrue("t0", "nospend", 100))],
    tr("t1", "nospend", "b", 10, reason=8), Code.CREATED, {"nospend": (90, 0, 0, 100)})
row("giving away a kind that is not transferable", [(0, accrue("t0", "keep", 100))],
    tr("t1", "keep", "b", 10, reason=8), Code.REASON_NOT_ALLOWED_FOR_ACCOUNT, {"keep": (100, 0, 0, 100)})
row("pooling a kind that is not transferable", [(0, accrue("t0", "keep", 100))],
    tr("t1", "keep", "pool", 10, reason=9), Code.REASON_NOT_ALLOWED_FOR_ACCOUNT,
    {"keep": (100, 0, 0, 100)})
row("member transfer into a pool", A100, tr("t1", "a", "pool", 10, reason=8), Code.REASON_NOT_ALLOWED_FOR_ACCOUNT,
    {"a": (100, 0, 0, 100)})
row("pool contribution to a member", A100, tr("t1", "a", "b", 10, reason=9), Code.REASON_NOT_ALLOWED_FOR_ACCOUNT,
    {"a": (100, 0, 0, 100)})
row("adjustment without the ADJUSTMENT account", A100, tr("t1", "a", "red", 1, reason=13, memo="m"),
    Code.REASON_NOT_ALLOWED_FOR_ACCOUNT, {"a": (100, 0, 0, 100)})
row("partner settlement from a member", A100, tr("t1", "a", "red", 1, reason=12),
    Code.REASON_NOT_ALLOWED_FOR_ACCOUNT, {"a": (100, 0, 0, 100)})
row("accrual reversal crediting a member", A100, tr("t1", "a", "b", 1, reason=6, reverses="t0"),
    Code.REASON_NOT_ALLOWED_FOR_ACCOUNT, {"a": (100, 0, 0, 100)})
row("redemption reversal debiting a member", A100, tr("t1", "a", "red", 1, reason=7, reverses="t0"),
    Code.REASON_NOT_ALLOWED_FOR_ACCOUNT, {"a": (100, 0, 0, 100)})

# balance_max: posted plus pending credits plus this credit.
row("credit up to the cap", [], accrue("t1", "capped", 1000), Code.CREATED, {"capped": (1000, 0, 0, 1000)})
row("credit above the cap", [(0, accrue("t0", "capped", 600))], accrue("t1", "capped", 401),
    Code.BALANCE_LIMIT_EXCEEDED, {"capped": (600, 0, 0, 600)})
row("pending credits count against the cap", [(0, accrue("h", "capped", 600, pending=True, timeout_s=HOUR))],
    accrue("t1", "capped", 401), Code.BALANCE_LIMIT_EXCEEDED, {"capped": (0, 600, 0, 0)})
row("a pending credit above the cap", [(0, accrue("t0", "capped", 600))],
    accrue("h", "capped", 401, pending=True, timeout_s=HOUR), Code.BALANCE_LIMIT_EXCEEDED,
    {"capped": (600, 0, 0, 600)})
row("room again after spending", [(0, accrue("t0", "capped", 1000)), (10, redeem("r", "capped", 1))],
    accrue("t1", "capped", 1), Code.CREATED, {"capped": (1000, 0, 0, 1001)})

# Imported (offline) transfers.
row("imported five minutes ahead (its lot activates then)", [],
    accrue("t1", "a", 5, imported=True, imported_time=t(100 + 5 * MINUTE)), Code.CREATED,
    {"a": (0, 5, 0, 5)})
row("imported in the future", [], accrue("t1", "a", 5, imported=True, imported_time=t(101 + 5 * MINUTE)),
    Code.IMPORTED_TIME_IN_FUTURE, {"a": (0, 0, 0, 0)})
row("imported 90 days ago", [], accrue("t1", "a", 5, imported=True, imported_time=t(100 - 90 * DAY)),
    Code.CREATED, {"a": (5, 0, 0, 5)})
row("imported too old", [], accrue("t1", "a", 5, imported=True, imported_time=t(99 - 90 * DAY)),
    Code.IMPORTED_TIME_TOO_OLD, {"a": (0, 0, 0, 0)})
row("imported redemption", A100, redeem("t1", "a", 5, imported=True, imported_time=t(50)), Code.CREATED,
    {"a": (95, 0, 0, 100)})
row("imported accrual activates from its effective time", [],
    accrue("t1", "delay", 5, imported=True, imported_time=t(100 - 14 * DAY)), Code.CREATED,
    {"delay": (5, 0, 0, 5)})
row("imported accrual expires from its effective time", [],
    accrue("t1", "expiring", 5, imported=True, imported_time=t(100 - 30 * DAY)), Code.CREATED,
    {"expiring": (0, 0, 0, 5)})

# Lots: activation and expiry.
row("activation delay makes points pending", [], accrue("t1", "delay", 100), Code.CREATED, {"delay": (0, 100, 0, 100)})
row("pending points cannot be spent", [(0, accrue("t0", "delay", 100))], redeem("t1", "delay", 1),
    Code.INSUFFICIENT_FUNDS, {"delay": (0, 100, 0, 100)}, at=14 * DAY - 1)
row("pending points become available", [(0, accrue("t0", "delay", 100))], redeem("t1", "delay", 100),
    Code.CREATED, {"delay": (0, 0, 0, 100)}, at=14 * DAY)
row("the delay applies to earning reasons only", [], accrue("t1", "delay", 5, reason=Reason.GIFT_LOAD),
    Code.CREATED, {"delay": (5, 0, 0, 0)})
row("member transfers arrive active", [(0, accrue("t0", "a", 100))], tr("t1", "a", "delay", 10, reason=8),
    Code.CREATED, {"delay": (10, 0, 0, 0)})
row("lot terms override the delay", [],
    accrue("t1", "delay", 100, lot_terms=LotTerms(activation_time=t(0))), Code.CREATED,
    {"delay": (100, 0, 0, 100)})
row("expired points cannot be spent before the expiry run", [(0, accrue("t0", "expiring", 100))],
    redeem("t1", "expiring", 1), Code.INSUFFICIENT_FUNDS, {"expiring": (0, 0, 0, 100)}, at=30 * DAY)
row("points can be spent until they expire", [(0, accrue("t0", "expiring", 100))], redeem("t1", "expiring", 100),
    Code.CREATED, {"expiring": (0, 0, 0, 100)}, at=30 * DAY - 1)
row("fixed expiry time", [(0, accrue("t0", "fixed", 100))], redeem("t1", "fixed", 1), Code.INSUFFICIENT_FUNDS,
    {"fixed": (0, 0, 0, 100)}, at=10 * DAY)
row("lot terms: no expiry beats the kind's rule",
    [(0, accrue("t0", "expiring", 100, lot_terms=LotTerms(no_expiry=True)))], redeem("t1", "expiring", 100),
    Code.CREATED, {"expiring": (0, 0, 0, 100)}, at=400 * DAY)
row("a hold keeps its points past their expiry", [(0, accrue("t0", "expiring", 100)),
    (10, hold("h", "expiring", 60, timeout_s=2_592_000))], post("p", "h"), Code.CREATED,
    {"expiring": (0, 0, 0, 100)}, at=30 * DAY + 5)
row("a credit effective at the fixed expiry time", [], accrue("t1", "fixed", 1), Code.INVALID_LOT_TERMS,
    {"fixed": (0, 0, 0, 0)}, at=10 * DAY)
row("lot terms expiring before the effective time", [],
    accrue("t1", "a", 1, lot_terms=LotTerms(expiry_time=t(100))), Code.INVALID_LOT_TERMS,
    {"a": (0, 0, 0, 0)})
row("lot terms expiring before the kind's activation delay", [],
    accrue("t1", "delay", 1, lot_terms=LotTerms(expiry_time=t(DAY))), Code.INVALID_LOT_TERMS,
    {"delay": (0, 0, 0, 0)})
row("lot terms on a credit to a system account", A100,
    redeem("t1", "a", 1, lot_terms=LotTerms(no_expiry=True)), Code.INVALID_LOT_TERMS,
    {"a": (100, 0, 0, 100)})

# Reversals.
row("accrual reversal, whole", A100, reverse_accrual("x", "a", 100, "t0"), Code.CREATED, {"a": (0, 0, 0, 0)})
row("accrual reversal, part", A100, reverse_accrual("x", "a", 40, "t0"), Code.CREATED, {"a": (60, 0, 0, 60)})
row("accrual reversal above the original", A100, reverse_accrual("x", "a", 101, "t0"),
    Code.REVERSAL_EXCEEDS_ORIGINAL, {"a": (100, 0, 0, 100)})
row("reversals in total above the original", [*A100, (10, reverse_accrual("x1", "a", 60, "t0"))],
    reverse_accrual("x2", "a", 41, "t0"), Code.REVERSAL_EXCEEDS_ORIGINAL, {"a": (40, 0, 0, 40)})
row("reversals in total up to the original", [*A100, (10, reverse_accrual("x1", "a", 60, "t0"))],
    reverse_accrual("x2", "a", 40, "t0"), Code.CREATED, {"a": (0, 0, 0, 0)})
row("accrual reversal takes its own pending lot",
    [(0, accrue("t0", "delay", 200, lot_terms=LotTerms(activation_time=T0))), (10, accrue("t1", "delay", 100))],
    reverse_accrual("x", "delay", 100, "t1"), Code.CREATED, {"delay": (200, 0, 0, 200)})
row("accrual reversal of a pending lot with nothing available", [(0, accrue("t1", "delay", 100))],
    reverse_accrual("x", "delay", 60, "t1"), Code.CREATED, {"delay": (0, 40, 0, 40)})
row("accrual reversal of a lot already spent", [*A100, (10, redeem("r", "a", 100)), (20, accrue("t1", "a", 50))],
    reverse_accrual("x", "a", 50, "t0"), Code.CREATED, {"a": (0, 0, 0, 100)})
row("redemption reversal", [*A100, (10, redeem("r", "a", 70))], reverse_redemption("x", "a", 70, "r"),
    Code.CREATED, {"a": (100, 0, 0, 100)})
row("redemption reversal above the original", [*A100, (10, redeem("r", "a", 70))],
    reverse_redemption("x", "a", 71, "r"), Code.REVERSAL_EXCEEDS_ORIGINAL, {"a": (30, 0, 0, 100)})
row("reversal of an unknown transfer", A100, reverse_accrual("x", "a", 1, "nope"), Code.REVERSED_TRANSFER_NOT_FOUND,
    {"a": (100, 0, 0, 100)})
row("reversal the wrong way", [*A100, (10, redeem("r", "a", 70))], reverse_accrual("x", "a", 10, "r"),
    Code.REVERSED_TRANSFER_NOT_REVERSIBLE, {"a": (30, 0, 0, 100)})
row("reversal between other accounts", [*A100, (0, accrue("t1", "b", 100))], reverse_accrual("x", "b", 10, "t0"),
    Code.REVERSED_TRANSFER_NOT_REVERSIBLE, {"a": (100, 0, 0, 100), "b": (100, 0, 0, 100)})
row("reversal of a hold", H30, reverse_redemption("x", "a", 10, "h"), Code.REVERSED_TRANSFER_NOT_REVERSIBLE,
    {"a": (70, 0, 30, 100)})
row("reversal of a void", [*H30, (20, void("v", "h"))], reverse_redemption("x", "a", 10, "v"),
    Code.REVERSED_TRANSFER_NOT_REVERSIBLE, {"a": (100, 0, 0, 100)})
row("reversal of a post", [*H30, (20, post("p", "h", 20))], reverse_redemption("x", "a", 20, "p"), Code.CREATED,
    {"a": (100, 0, 0, 100)})
row("reversal of a post above what was posted", [*H30, (20, post("p", "h", 20))],
    reverse_redemption("x", "a", 21, "p"), Code.REVERSAL_EXCEEDS_ORIGINAL, {"a": (80, 0, 0, 100)})
row("reversal of a posted pending accrual",
    [(0, accrue("h", "a", 50, pending=True, timeout_s=HOUR)), (10, post("p", "h"))],
    reverse_accrual("x", "a", 50, "p"), Code.CREATED, {"a": (0, 0, 0, 0)})
row("reversal of a rejection", [*A100, (10, (lambda ledger, at: ledger.one(redeem("r", "a", 500), at=at)))],
    reverse_redemption("x", "a", 1, "r"), Code.REVERSED_TRANSFER_NOT_FOUND, {"a": (100, 0, 0, 100)})
row("reversal on a frozen account", [*A100, (10, freeze("a"))], reverse_accrual("x", "a", 10, "t0"),
    Code.DEBIT_ACCOUNT_FROZEN, {"a": (100, 0, 0, 100)})

# fmt: on


@pytest.mark.parametrize(("setup", "at", "transfer", "code", "balances"), TABLE)
def test_transfer_table(
    setup: list[Step], at: int, transfer: TransferRequest, code: Code, balances: dict[str, Bal]
) -> None:
    ledger = Ledger()
    run_setup(ledger, setup)
    outcome = ledger.one(transfer, at=at)
    assert outcome.code is code, outcome
    assert not outcome.replayed
    for account_id, expected in balances.items():
        assert ledger.balance(account_id, at) == expected, account_id
    recorded = ledger.records.get(transfer.transfer_id)
    if code.recorded:
        assert recorded is not None and recorded.state is TransferState.REJECTED and recorded.rejection_code is code
        assert outcome.recorded_time == t(at)
    elif code is Code.CREATED:
        assert recorded is not None and recorded.outcome == outcome
        assert outcome.recorded_time == t(at)
        # The balances in the result are those right after the transfer.
        for side, balance in (
            (transfer.debit_account_id, outcome.debit_balance),
            (transfer.credit_account_id, outcome.credit_balance),
        ):
            account = ledger.accounts.get(side)
            if account is not None and account.has_lots:
                assert balance is not None and balance == balance_of(account, t(at))
            elif account is not None:
                assert balance is None, "system accounts' balances are not returned"
    else:
        assert recorded is None


def test_every_state_code_appears_in_the_table() -> None:
    """Every recorded result code but the pool ones and OVERFLOW has at least one row."""
    seen = {param.values[3] for param in TABLE}
    untested = {Code.POOL_MEMBER_NOT_FOUND, Code.POOL_SPENDING_LIMIT_EXCEEDED, Code.OVERFLOW}
    assert {code for code in Code if code.recorded} - untested <= seen


def test_overflow_of_account_totals() -> None:
    ledger = Ledger()
    ledger.accounts["iss"].debits_posted = 2**63 - 1 - 10
    ledger.accounts["iss"].credits_posted = 2**63 - 1 - 10  # posted 0: the sum stays zero
    assert ledger.one(accrue("t1", "a", 11)).code is Code.OVERFLOW
    assert ledger.one(accrue("t2", "a", 10)).code is Code.CREATED


# ------------------------------------------------------------------------------------------------
# Outcome details: amounts, released parts, deadlines, lots.


def test_post_and_void_report_amounts_and_released_parts() -> None:
    ledger = Ledger()
    run_setup(ledger, [*A100, (10, hold("h1", "a", 30)), (10, hold("h2", "a", 30)), (10, hold("h3", "a", 30))])
    full, part, voided = ledger.submit(post("p1", "h1"), post("p2", "h2", 12), void("v3", "h3"), at=20)
    assert (full.amount, full.released_amount) == (30, 0)
    assert (part.amount, part.released_amount) == (12, 18)
    assert (voided.amount, voided.released_amount) == (30, 30)
    h1, h2, h3 = (ledger.records[i] for i in ("h1", "h2", "h3"))
    assert (h1.state, h1.posted_amount, h1.resolved_by_transfer_id, h1.resolved_time) == (
        TransferState.POSTED,
        30,
        "p1",
        t(20),
    )
    assert (h2.state, h2.posted_amount) == (TransferState.POSTED, 12)
    assert (h3.state, h3.posted_amount, h3.resolved_by_transfer_id) == (TransferState.VOIDED, 0, "v3")
    assert ledger.records["v3"].state is TransferState.VOIDED
    assert ledger.balance("a", 20) == (58, 0, 0, 100)
    assert ledger.accounts["red"].posted == 42


def test_a_hold_reports_its_deadline_from_the_recorded_time() -> None:
    ledger = Ledger()
    run_setup(ledger, A100)
    outcome = ledger.one(hold("h", "a", 10, timeout_s=90), at=50)
    assert outcome.pending_expiry_time == t(50 + 90)
    assert ledger.records["h"].pending_expiry_time == t(140)


def test_an_expired_hold_is_released_once_by_a_late_post_and_never_by_the_worker_again() -> None:
    ledger = Ledger()
    run_setup(ledger, [*A100, (10, hold("h", "a", 30, timeout_s=60))])
    late = ledger.one(post("p", "h"), at=70)
    assert late.code is Code.PENDING_TRANSFER_EXPIRED
    record = ledger.records["h"]
    assert (record.state, record.resolved_time, record.posted_amount) == (TransferState.EXPIRED, t(70), 0)
    assert ledger.expire_holds(at=80) == []
    assert ledger.balance("a", 80) == (100, 0, 0, 100)
    assert ledger.one(void("v", "h"), at=90).code is Code.PENDING_TRANSFER_EXPIRED


def test_the_worker_expires_only_holds_past_their_deadline() -> None:
    ledger = Ledger()
    run_setup(ledger, [*A100, (0, hold("h1", "a", 10, timeout_s=60)), (0, hold("h2", "a", 10, timeout_s=120))])
    assert ledger.expire_holds(at=59) == []
    assert ledger.expire_holds(at=60) == ["h1"]
    assert ledger.balance("a", 60) == (90, 0, 10, 100)
    assert ledger.records["h1"].state is TransferState.EXPIRED
    with pytest.raises(LedgerInvariantError):
        ledger.batch(61).expire_hold(ledger.records["h1"])  # a hold resolves once
    with pytest.raises(LedgerInvariantError):
        ledger.batch(61).expire_hold(ledger.records["h2"])  # not before its deadline
    assert ledger.one(post("p", "h2"), at=119).code is Code.CREATED


def test_accrual_result_names_its_lot() -> None:
    ledger = Ledger()
    outcome = ledger.one(accrue("t1", "a", 100))
    assert outcome.lot_id == "lot1"
    assert ledger.accounts["a"].lots[0].transfer_id == "t1"
    assert ledger.one(redeem("r", "a", 10)).lot_id == ""


# ------------------------------------------------------------------------------------------------
# Idempotency: EXISTS, EXISTS_WITH_DIFFERENT_FIELDS, recorded rejections.


def test_same_body_replays_the_original_outcome_with_its_balances() -> None:
    ledger = Ledger()
    first = ledger.one(accrue("t1", "a", 100), at=0)
    ledger.one(redeem("r", "a", 40), at=10)
    again = ledger.one(accrue("t1", "a", 100), at=20)
    assert again.code is Code.EXISTS and again.replayed
    assert again == replace(first, code=Code.EXISTS, replayed=True)
    assert again.credit_balance is not None and again.credit_balance.available == 100  # as it was then
    assert ledger.balance("a", 20) == (60, 0, 0, 100), "nothing happened again"
    assert ledger.accounts["iss"].posted == -100


def test_same_id_twice_in_one_batch() -> None:
    ledger = Ledger()
    first, again = ledger.submit(accrue("t1", "a", 100), accrue("t1", "a", 100))
    assert (first.code, again.code, again.replayed) == (Code.CREATED, Code.EXISTS, True)
    assert ledger.balance("a", 0) == (100, 0, 0, 100)


def test_a_replayed_hold_stays_exists_after_it_was_posted() -> None:
    ledger = Ledger()
    run_setup(ledger, [*A100, (10, hold("h", "a", 30)), (20, post("p", "h"))])
    again = ledger.one(hold("h", "a", 30), at=30)
    assert again.code is Code.EXISTS and again.debit_balance is not None and again.debit_balance.held == 30
    assert ledger.one(post("p", "h"), at=40).code is Code.EXISTS
    assert ledger.balance("a", 40) == (70, 0, 0, 100)


DIFFERENT = [
    ("amount", {"amount": 101}, ("amount_minor",)),
    ("debit", {"debit": "adj"}, ("debit_account_id",)),
    ("credit", {"credit": "b"}, ("credit_account_id",)),
    ("reason", {"reason": Reason.BONUS}, ("reason",)),
    ("linked", {"linked": True}, ("flags.linked",)),
    ("pending", {"pending": True, "timeout_s": 60}, ("timeout_s", "flags.pending")),
    ("memo", {"memo": "hi"}, ("memo",)),
    ("metadata", {"metadata": (("k", "v"),)}, ("metadata",)),
    ("reference", {"reference": Reference(receipt_id="r1")}, ("reference.receipt_id",)),
    ("lot terms", {"lot_terms": LotTerms(no_expiry=True)}, ("lot_terms",)),
    ("imported", {"imported": True, "imported_time": T0}, ("flags.imported", "imported_time")),
    ("on behalf", {"on_behalf": "m"}, ("on_behalf_of_member_id",)),
]


@pytest.mark.parametrize(("changes", "fields"), [pytest.param(c, f, id=n) for n, c, f in DIFFERENT])
def test_same_id_with_a_different_body(changes: dict[str, Any], fields: tuple[str, ...]) -> None:
    ledger = Ledger()
    original = accrue("t1", "a", 100)
    ledger.one(original)
    closing = [accrue("z", "b", 1)] if changes.get("linked") else []  # a linked transfer needs a chain end
    outcome = ledger.submit(changed(original, **changes), *closing, at=10)[0]
    assert outcome.code is Code.EXISTS_WITH_DIFFERENT_FIELDS
    assert set(outcome.different_fields) == set(fields)
    assert not outcome.replayed and outcome.debit_balance is None
    assert ledger.balance("a", 10) == (100, 0, 0, 100)
    assert ledger.records["t1"].request == original, "the recorded body never changes"


def test_a_recorded_rejection_replays_even_when_it_would_now_succeed() -> None:
    ledger = Ledger()
    refused = ledger.one(redeem("r", "a", 50), at=0)
    assert refused.code is Code.INSUFFICIENT_FUNDS and not refused.replayed
    assert refused.debit_balance is not None and refused.debit_balance.available == 0
    ledger.one(accrue("t1", "a", 100), at=10)
    again = ledger.one(redeem("r", "a", 50), at=20)
    assert again == replace(refused, replayed=True)
    assert ledger.balance("a", 20) == (100, 0, 0, 100)
    assert ledger.one(redeem("r", "a", 40), at=30).code is Code.EXISTS_WITH_DIFFERENT_FIELDS


@pytest.mark.parametrize(
    ("setup", "transfer", "code"),
    [
        pytest.param([], accrue("t1", "nope", 1), Code.CREDIT_ACCOUNT_NOT_FOUND, id="unknown account"),
        pytest.param([(0, freeze("a"))], redeem("t1", "a", 1), Code.DEBIT_ACCOUNT_FROZEN, id="frozen"),
        pytest.param([], post("t1", "nope"), Code.PENDING_TRANSFER_NOT_FOUND, id="no hold"),
        pytest.param(A100, reverse_accrual("t1", "a", 101, "t0"), Code.REVERSAL_EXCEEDS_ORIGINAL, id="reversal"),
        pytest.param(
            [], accrue("t1", "a", 1, imported=True, imported_time=t(DAY)), Code.IMPORTED_TIME_IN_FUTURE, id="imported"
        ),
    ],
)
def test_every_recorded_rejection_replays(setup: list[Step], transfer: TransferRequest, code: Code) -> None:
    ledger = Ledger()
    run_setup(ledger, setup)
    first = ledger.one(transfer, at=5)
    assert first.code is code
    # Whatever changes in between (the account appears, thaws, the clock moves), the id stays decided.
    ledger.accounts["a"].state = AccountState.ACTIVE
    ledger.accounts["nope"] = member("nope")
    again = ledger.one(transfer, at=DAY * 2)
    assert again.code is code and again.replayed and again.recorded_time == t(5)


def test_a_recorded_rejection_carries_the_member_balances() -> None:
    ledger = Ledger()
    run_setup(ledger, [*A100, (10, freeze("a"))])
    outcome = ledger.one(tr("t1", "a", "b", 10, reason=8), at=20)
    assert outcome.code is Code.DEBIT_ACCOUNT_FROZEN
    assert outcome.debit_balance == balance_of(ledger.accounts["a"], t(20))
    assert outcome.credit_balance == balance_of(ledger.accounts["b"], t(20))
    refused_post = ledger.one(post("p", "t1"), at=30)
    assert refused_post.code is Code.PENDING_TRANSFER_NOT_PENDING
    assert refused_post.debit_balance is None and refused_post.credit_balance is None  # a rejection has no accounts


# ------------------------------------------------------------------------------------------------
# Linked chains.

CHAINS = [
    (
        "both succeed",
        A100,
        [hold("c1", "a", 60, linked=True), accrue("c2", "a", 10)],
        [Code.CREATED, Code.CREATED],
        (50, 0, 60, 110),
    ),
    (
        "later sees earlier",
        A100,
        [accrue("c1", "a", 50, linked=True), redeem("c2", "a", 150)],
        [Code.CREATED, Code.CREATED],
        (0, 0, 0, 150),
    ),
    (
        "hold posted in the same chain",
        A100,
        [hold("c1", "a", 60, linked=True), post("c2", "c1", 40)],
        [Code.CREATED, Code.CREATED],
        (60, 0, 0, 100),
    ),
    (
        "last fails",
        A100,
        [hold("c1", "a", 60, linked=True), redeem("c2", "a", 50)],
        [Code.LINKED_EVENT_FAILED, Code.INSUFFICIENT_FUNDS],
        (100, 0, 0, 100),
    ),
    (
        "first fails",
        A100,
        [redeem("c1", "a", 500, linked=True), accrue("c2", "a", 10)],
        [Code.INSUFFICIENT_FUNDS, Code.LINKED_EVENT_FAILED],
        (100, 0, 0, 100),
    ),
    (
        "middle fails validation",
        A100,
        [accrue("c1", "a", 5, linked=True), accrue("c2", "a", 0, linked=True), accrue("c3", "a", 5)],
        [Code.LINKED_EVENT_FAILED, Code.INVALID_AMOUNT, Code.LINKED_EVENT_FAILED],
        (100, 0, 0, 100),
    ),
    (
        "different fields fail the chain",
        A100,
        [accrue("c1", "a", 5, linked=True), accrue("t0", "a", 99)],
        [Code.LINKED_EVENT_FAILED, Code.EXISTS_WITH_DIFFERENT_FIELDS],
        (100, 0, 0, 100),
    ),
    (
        "a replayed member keeps the chain",
        [*A100, (10, lambda ledger, at: ledger.submit(accrue("c1", "a", 10, linked=True), accrue("c2", "a", 10)))],
        [accrue("c1", "a", 10, linked=True), redeem("c3", "a", 30)],
        [Code.EXISTS, Code.CREATED],
        (90, 0, 0, 120),
    ),
    (
        "chain open at the end",
        A100,
        [redeem("c1", "a", 10), redeem("c2", "a", 10, linked=True), redeem("c3", "a", 10, linked=True)],
        [Code.CREATED, Code.LINKED_EVENT_CHAIN_OPEN, Code.LINKED_EVENT_CHAIN_OPEN],
        (90, 0, 0, 100),
    ),
    (
        "a failed chain does not stop the next transfer",
        A100,
        [redeem("c1", "a", 10, linked=True), redeem("c2", "a", 500), redeem("c3", "a", 10)],
        [Code.LINKED_EVENT_FAILED, Code.INSUFFICIENT_FUNDS, Code.CREATED],
        (90, 0, 0, 100),
    ),
    (
        "two chains, one fails",
        A100,
        [
            redeem("c1", "a", 10, linked=True),
            redeem("c2", "a", 10),
            redeem("c3", "a", 10, linked=True),
            post("c4", "nope"),
        ],
        [Code.CREATED, Code.CREATED, Code.LINKED_EVENT_FAILED, Code.PENDING_TRANSFER_NOT_FOUND],
        (80, 0, 0, 100),
    ),
    (
        "failure undoes reversals, lots and holds",
        [*A100, (10, hold("h", "a", 20))],
        [
            reverse_accrual("c1", "a", 30, "t0", linked=True),
            post("c2", "h", 20, linked=True),
            accrue("c3", "a", 7, linked=True),
            tr("c4", "a", "b", 1000, reason=8),
        ],
        [Code.LINKED_EVENT_FAILED, Code.LINKED_EVENT_FAILED, Code.LINKED_EVENT_FAILED, Code.INSUFFICIENT_FUNDS],
        (80, 0, 20, 100),
    ),
]


@pytest.mark.parametrize(
    ("setup", "batch", "codes", "balance"), [pytest.param(s, b, c, x, id=n) for n, s, b, c, x in CHAINS]
)
def test_linked_chains(setup: list[Step], batch: list[TransferRequest], codes: list[Code], balance: Bal) -> None:
    ledger = Ledger()
    run_setup(ledger, setup)
    before = {i: (r.state, r.reversed_amount, r.posted_amount) for i, r in ledger.records.items()}
    lots_before = [(lot.lot_id, lot.remaining, lot.held) for lot in ledger.accounts["a"].lots]
    outcomes = ledger.submit(*batch, at=50)
    assert [o.code for o in outcomes] == codes
    assert ledger.balance("a", 50) == balance
    for request, outcome in zip(batch, outcomes, strict=True):
        if outcome.code is Code.CREATED:
            assert request.transfer_id in ledger.records
        elif outcome.code is not Code.EXISTS and request.transfer_id not in before:
            assert request.transfer_id not in ledger.records, "nothing of a failed chain is recorded"
    if not any(c.succeeded for c in codes):
        assert {i: (r.state, r.reversed_amount, r.posted_amount) for i, r in ledger.records.items()} == before
        assert [(lot.lot_id, lot.remaining, lot.held) for lot in ledger.accounts["a"].lots] == lots_before


def test_a_failed_chain_can_be_resent_with_the_same_ids() -> None:
    ledger = Ledger()
    run_setup(ledger, A100)
    failing = [hold("c1", "a", 60, linked=True), redeem("c2", "a", 50)]
    assert [o.code for o in ledger.submit(*failing, at=10)] == [Code.LINKED_EVENT_FAILED, Code.INSUFFICIENT_FUNDS]
    fixed = [hold("c1", "a", 60, linked=True), redeem("c2", "a", 40)]
    assert [o.code for o in ledger.submit(*fixed, at=20)] == [Code.CREATED, Code.CREATED]
    assert [o.code for o in ledger.submit(*fixed, at=30)] == [Code.EXISTS, Code.EXISTS]
    assert ledger.balance("a", 30) == (0, 0, 60, 100)


def test_a_late_post_in_a_failed_chain_fails_with_expired() -> None:
    ledger = Ledger()
    run_setup(ledger, [*A100, (0, hold("h", "a", 30, timeout_s=60))])
    outcomes = ledger.submit(post("c1", "h", linked=True), accrue("c2", "a", 1), at=100)
    assert [o.code for o in outcomes] == [Code.PENDING_TRANSFER_EXPIRED, Code.LINKED_EVENT_FAILED]
    assert "c1" not in ledger.records and "c2" not in ledger.records
    # The worker still releases it; the deadline decided, not the chain.
    assert ledger.expire_holds(at=100) == ["h"]
    assert ledger.balance("a", 100) == (100, 0, 0, 100)


# ------------------------------------------------------------------------------------------------
# Lots: order of consumption, expiry, earmarks.


def test_debits_consume_the_soonest_expiring_lots_first() -> None:
    ledger = Ledger()
    ledger.submit(
        accrue("never", "a", 100, lot_terms=LotTerms(no_expiry=True)),
        accrue("late", "a", 100, lot_terms=LotTerms(expiry_time=t(20 * DAY))),
        accrue("soon", "a", 100, lot_terms=LotTerms(expiry_time=t(10 * DAY))),
        accrue("soon_older", "a", 100, lot_terms=LotTerms(activation_time=t(-DAY), expiry_time=t(10 * DAY))),
    )
    assert ledger.accounts["a"].lots[0].expiry_time is None
    ledger.one(redeem("r1", "a", 150), at=10)
    # Ties on expiry go to the older activation.
    assert ledger.lots("a") == [(100, 100), (100, 100), (100, 50), (100, 0)]
    ledger.one(redeem("r2", "a", 120), at=20)
    assert ledger.lots("a") == [(100, 100), (100, 30), (100, 0), (100, 0)]
    assert ledger.records["r2"].allocations == [("lot3", 50), ("lot2", 70)]


def test_a_pending_lot_is_skipped_by_spending() -> None:
    ledger = Ledger()
    ledger.submit(
        accrue("pending", "a", 100, lot_terms=LotTerms(activation_time=t(DAY), expiry_time=t(2 * DAY))),
        accrue("active", "a", 100, lot_terms=LotTerms(expiry_time=t(3 * DAY))),
    )
    ledger.one(redeem("r", "a", 60), at=10)
    assert ledger.lots("a") == [(100, 100), (100, 40)]
    assert ledger.balance("a", 10) == (40, 100, 0, 200)


def test_expiry_moves_the_rest_of_a_lot_to_the_expiry_account() -> None:
    ledger = Ledger()
    ledger.one(accrue("t1", "expiring", 100), at=0)
    ledger.one(redeem("r", "expiring", 30), at=DAY)
    balance = balance_of(ledger.accounts["expiring"], t(DAY))
    assert (balance.next_expiry_amount, balance.next_expiry_time) == (70, t(30 * DAY))
    assert ledger.expire_lots(at=30 * DAY - 1) == []
    made = ledger.expire_lots(at=30 * DAY)
    assert len(made) == 1
    record = made[0]
    assert record.request.reason == Reason.EXPIRY and record.amount == 70
    assert (record.request.debit_account_id, record.request.credit_account_id) == ("expiring", "exp")
    assert record.transfer_id == "wallet:expiry:lot1:0"
    assert record.outcome is not None and record.outcome.code is Code.CREATED
    assert ledger.accounts["exp"].posted == 70
    assert ledger.balance("expiring", 30 * DAY) == (0, 0, 0, 100), "expiry does not lower lifetime earned"
    lot = ledger.accounts["expiring"].lots[0]
    assert (lot.remaining, lot.expired_amount) == (0, 70)
    assert ledger.expire_lots(at=31 * DAY) == [], "expiry runs once"
    with pytest.raises(LedgerInvariantError):
        ledger.batch(31 * DAY).expire_lot(lot, ledger.accounts["exp"])


def test_expiry_only_goes_to_the_expiry_account_and_only_when_due() -> None:
    ledger = Ledger()
    ledger.one(accrue("t1", "expiring", 100), at=0)
    lot = ledger.accounts["expiring"].lots[0]
    with pytest.raises(LedgerInvariantError):
        ledger.batch(DAY).expire_lot(lot, ledger.accounts["exp"])
    with pytest.raises(LedgerInvariantError):
        ledger.batch(30 * DAY).expire_lot(lot, ledger.accounts["red"])


def test_a_hold_earmarks_its_lots_so_they_do_not_expire_while_held() -> None:
    ledger = Ledger()
    ledger.one(accrue("t1", "expiring", 100), at=0)
    ledger.one(hold("h", "expiring", 60, timeout_s=2_592_000), at=DAY)
    made = ledger.expire_lots(at=30 * DAY)
    assert [r.amount for r in made] == [40], "only the unheld part expires"
    assert ledger.balance("expiring", 30 * DAY) == (0, 0, 60, 100)
    # The hold is voided after the lot's expiry: the released part expires in the next run.
    ledger.one(void("v", "h"), at=30 * DAY + 1)
    assert ledger.balance("expiring", 30 * DAY + 1) == (0, 0, 0, 100)
    again = ledger.expire_lots(at=30 * DAY + 2)
    assert [(r.transfer_id, r.amount) for r in again] == [("wallet:expiry:lot1:40", 60)]
    assert ledger.accounts["exp"].posted == 100


def test_a_held_expired_lot_can_still_be_posted() -> None:
    ledger = Ledger()
    ledger.one(accrue("t1", "expiring", 100), at=0)
    ledger.one(hold("h", "expiring", 60, timeout_s=2_592_000), at=DAY)
    ledger.expire_lots(at=30 * DAY)
    assert ledger.one(post("p", "h", 50), at=30 * DAY + 1).code is Code.CREATED
    assert ledger.accounts["red"].posted == 50
    assert [r.amount for r in ledger.expire_lots(at=30 * DAY + 2)] == [10]


def test_redemption_reversal_restores_the_lots_times() -> None:
    ledger = Ledger()
    ledger.one(accrue("t1", "expiring", 100), at=0)  # expires at 30 days
    ledger.one(redeem("r", "expiring", 80), at=DAY)
    ledger.one(reverse_redemption("x1", "expiring", 50, "r"), at=10 * DAY)
    lots = ledger.accounts["expiring"].lots
    assert [(lot.amount, lot.expiry_time) for lot in lots[1:]] == [(50, t(30 * DAY))], "not 40 days"
    ledger.one(reverse_redemption("x2", "expiring", 30, "r"), at=40 * DAY)
    assert [(lot.amount, lot.expiry_time) for lot in lots[1:]] == [(50, t(30 * DAY)), (30, t(30 * DAY))]
    # Restored past its expiry, the lot is expired again by the next run.
    assert ledger.balance("expiring", 40 * DAY) == (0, 0, 0, 100)
    assert sum(r.amount for r in ledger.expire_lots(at=40 * DAY)) == 100
    assert ledger.one(reverse_redemption("x3", "expiring", 1, "r"), at=41 * DAY).code is Code.REVERSAL_EXCEEDS_ORIGINAL


def test_redemption_reversal_of_a_posted_hold_restores_the_lots_times() -> None:
    ledger = Ledger()
    ledger.one(accrue("t1", "expiring", 100), at=0)
    ledger.one(hold("h", "expiring", 100), at=DAY)
    ledger.one(post("p", "h", 70), at=DAY + 1)
    assert ledger.one(reverse_redemption("x", "expiring", 70, "p"), at=2 * DAY).code is Code.CREATED
    assert [lot.expiry_time for lot in ledger.accounts["expiring"].lots] == [t(30 * DAY), t(30 * DAY)]


def test_member_transfers_keep_the_lots_times() -> None:
    ledger = Ledger()
    ledger.one(accrue("t1", "expiring", 100), at=0)
    ledger.one(tr("g", "expiring", "b", 60, reason=Reason.MEMBER_TRANSFER), at=5 * DAY)
    assert [(lot.amount, lot.expiry_time) for lot in ledger.accounts["b"].lots] == [(60, t(30 * DAY))]
    assert ledger.balance("b", 30 * DAY) == (0, 0, 0, 0), "giving points away never extends their life"


def test_lots_of_a_kind_with_a_lifetime_expire_after_activation() -> None:
    ledger = Ledger()
    ledger.one(accrue("t1", "expiring", 10, lot_terms=LotTerms(activation_time=t(5 * DAY))), at=0)
    lot = ledger.accounts["expiring"].lots[0]
    assert (lot.activation_time, lot.expiry_time) == (t(5 * DAY), t(35 * DAY))


def test_an_imported_accrual_takes_its_lot_times_from_the_effective_time() -> None:
    ledger = Ledger()
    at = 20 * DAY
    outcome = ledger.one(accrue("t1", "delay", 10, imported=True, imported_time=t(at - 10 * DAY)), at=at)
    assert outcome.effective_time == t(10 * DAY) and outcome.recorded_time == t(at)
    lot = ledger.accounts["delay"].lots[0]
    assert (lot.effective_time, lot.activation_time) == (t(10 * DAY), t(24 * DAY))
    assert ledger.balance("delay", at) == (0, 10, 0, 10)
    assert ledger.balance("delay", 24 * DAY) == (10, 0, 0, 10)


def test_a_lot_that_expires_before_it_activates_counts_once() -> None:
    ledger = Ledger()
    ledger.accounts["late"] = member(
        "late", Policy(activation_delay_s=14 * DAY, expiry_mode=ExpiryMode.FIXED_TIME, fixed_expiry_time=t(10 * DAY))
    )
    ledger.one(accrue("t1", "late", 100), at=0)  # activates at 14 days, the kind ends at 10
    assert ledger.balance("late", 5 * DAY) == (0, 100, 0, 100)
    assert ledger.balance("late", 10 * DAY) == (0, 0, 0, 100)
    assert ledger.balance("late", 14 * DAY) == (0, 0, 0, 100)
    assert [r.amount for r in ledger.expire_lots(at=10 * DAY)] == [100]
    assert ledger.balance("late", 14 * DAY) == (0, 0, 0, 100)


def test_lifetime_earned_counts_earning_credits_less_their_reversals() -> None:
    ledger = Ledger()
    ledger.submit(
        accrue("t1", "a", 100),
        accrue("t2", "a", 50, reason=Reason.BONUS),
        redeem("r", "a", 120),
        reverse_redemption("x1", "a", 20, "r"),
        reverse_accrual("x2", "a", 30, "t2"),
        accrue("t3", "b", 5),
        tr("g", "b", "a", 5, reason=Reason.MEMBER_TRANSFER),
    )
    assert ledger.balance("a", 0)[3] == 120


def test_result_balances_name_next_expiry() -> None:
    ledger = Ledger()
    first = ledger.one(accrue("t1", "expiring", 10), at=0)
    ledger.one(accrue("t2", "expiring", 5), at=0)
    assert first.credit_balance is not None
    assert (first.credit_balance.next_expiry_amount, first.credit_balance.next_expiry_time) == (10, t(30 * DAY))
    assert balance_of(ledger.accounts["expiring"], t(0)).next_expiry_amount == 15
