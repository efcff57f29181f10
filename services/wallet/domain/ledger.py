"""Applying transfers: the ledger's state machine, pure and in memory.

The store loads, under row locks, everything a batch touches (accounts with the lots it can
reach, see Account.unloaded_remaining; earlier records of the batch's ids, the holds and
originals they name) into a `Batch`; `Batch.apply`
decides every transfer in order and mutates that working copy; the store then persists exactly
what the batch records as changed, in the same database transaction. So the rules live here,
once, and the database only has to keep what they decided (its constraints repeat the money
invariants as a third line of defence).

Invariants are checked explicitly with `ensure` (not `assert`, which `python -O` removes):
a failed check is a bug, and the whole batch is abandoned before anything is written.
"""

from __future__ import annotations

import copy
import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from services.wallet.domain.model import (
    AMOUNT_MAX,
    EARNING_REASONS,
    INT64_MAX,
    REVERSAL_REASONS,
    SPENDING_REASONS,
    WALLET_ONLY_REASONS,
    Account,
    AccountState,
    AccountType,
    Balance,
    Code,
    Direction,
    EntryRecord,
    EntryType,
    ExpiryMode,
    FreezeMode,
    Lot,
    Outcome,
    OverdraftMode,
    Reason,
    SystemRole,
    TransferRecord,
    TransferRequest,
    TransferState,
)
from services.wallet.domain.pools import Pool, PoolMember

TIMEOUT_S_MAX = 2_592_000  # 30 days
IMPORT_AGE_MAX = timedelta(days=90)
CLOCK_SKEW = timedelta(minutes=5)
REFERENCE_LENGTH_MAX = 64
METADATA_ENTRIES_MAX = 16
METADATA_KEY = re.compile(r"[a-z0-9_.\-]{1,64}")
METADATA_VALUE_LENGTH_MAX = 256
MEMO_LENGTH_MAX = 256
TRANSFER_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")
WALLET_ID_PREFIX = "wallet:"
BATCH_SIZE_MAX = 1000
# Credits whose lots keep the activation and expiry of the lots they came from.
KEEPS_LOT_TIMES = frozenset({Reason.MEMBER_TRANSFER, Reason.POOL_CONTRIBUTION, Reason.POOL_RETURN})
# Debits that never go into debt, whatever their flags: spending and giving away (AccountPolicy,
# TransferFlags.allow_debt; TransferPoints gives only available points).
NEVER_INTO_DEBT = SPENDING_REASONS | {Reason.MEMBER_TRANSFER, Reason.POOL_CONTRIBUTION}


_REASONS = {int(reason): reason for reason in Reason}

# Enum members read on the transfer path, bound to names once. In Python 3.11 EnumType defines
# __getattr__, which puts every Class.MEMBER read on a slow attribute hook (about 0.15 us, and
# the ledger reads dozens per transfer: a tenth of its time). The same objects: `is` holds.
ACCOUNT_CLOSED, ACCOUNT_FROZEN, FROZEN_FOR_ALL = AccountState.CLOSED, AccountState.FROZEN, FreezeMode.ALL
MEMBER_ACCOUNT, POOL_ACCOUNT, SYSTEM_ACCOUNT = AccountType.MEMBER, AccountType.POOL, AccountType.SYSTEM
ADJUSTMENT_ROLE, EXPIRY_ROLE = SystemRole.ADJUSTMENT, SystemRole.EXPIRY
NEVER_EXPIRES, EXPIRES_AFTER_DURATION = ExpiryMode.NEVER, ExpiryMode.AFTER_DURATION
NO_OVERDRAFT, DEBT_ALLOWED = OverdraftMode.NO_OVERDRAFT, OverdraftMode.DEBT_ALLOWED
PENDING, POSTED, VOIDED, EXPIRED, REJECTED = (
    TransferState.PENDING,
    TransferState.POSTED,
    TransferState.VOIDED,
    TransferState.EXPIRED,
    TransferState.REJECTED,
)
PENDING_ENTRY, POSTED_ENTRY = EntryType.PENDING, EntryType.POSTED
POST_PENDING_ENTRY, VOID_PENDING_ENTRY, EXPIRE_PENDING_ENTRY = (
    EntryType.POST_PENDING,
    EntryType.VOID_PENDING,
    EntryType.EXPIRE_PENDING,
)
DEBIT, CREDIT = Direction.DEBIT, Direction.CREDIT
CREATED = Code.CREATED
ACCRUAL_REVERSAL, REDEMPTION_REVERSAL = Reason.ACCRUAL_REVERSAL, Reason.REDEMPTION_REVERSAL
MEMBER_TRANSFER, POOL_CONTRIBUTION, POOL_RETURN = Reason.MEMBER_TRANSFER, Reason.POOL_CONTRIBUTION, Reason.POOL_RETURN
ACCOUNT_CLOSURE, EXPIRY_REASON, ADJUSTMENT_REASON = Reason.ACCOUNT_CLOSURE, Reason.EXPIRY, Reason.ADJUSTMENT
GIFT_LOAD, PARTNER_SETTLEMENT = Reason.GIFT_LOAD, Reason.PARTNER_SETTLEMENT


def new_lot_id() -> str:
    """A random (version 4) UUID in its canonical text form, from a buffer of OS randomness
    refilled every 256 ids: uuid.uuid4() makes a system call and a UUID object per lot."""
    global _random_hex, _random_left
    if _random_left == 0:
        _random_hex = os.urandom(16 * 256).hex()
        _random_left = 256
    _random_left -= 1
    text = _random_hex[32 * _random_left : 32 * _random_left + 32]
    # The version (4) and the variant (RFC 4122: the top bits 10 of the 17th digit), as
    # uuid.UUID(version=4) sets them.
    variant = _VARIANT_DIGITS[text[16]]
    return f"{text[:8]}-{text[8:12]}-4{text[13:16]}-{variant}{text[17:20]}-{text[20:]}"


_random_hex = ""
_random_left = 0
_VARIANT_DIGITS = {digit: "89ab"[int(digit, 16) & 3] for digit in "0123456789abcdef"}


class LedgerInvariantError(Exception):
    """A money invariant does not hold: a bug. The batch is abandoned, nothing is written."""


def ensure(condition: bool, message: str, *details: object) -> None:
    """`message` is formatted with `details` (str.format) only when the check fails: these
    checks run several times per transfer, and an f-string would be built every time."""
    if not condition:
        raise LedgerInvariantError(message.format(*details) if details else message)


# ------------------------------------------------------------------------------------------------
# Validation: the body alone. Nothing is recorded for these.


def validate(request: TransferRequest, *, internal: bool = False) -> Code | None:
    """The first failing body check, in the order of the result codes, or None."""
    flags = request.flags
    transfer_id = request.transfer_id
    if not TRANSFER_ID.fullmatch(transfer_id):
        return Code.ID_INVALID
    if transfer_id.startswith(WALLET_ID_PREFIX) and not internal:
        return Code.ID_INVALID
    pending = flags.pending
    resolves_hold = flags.post_pending or flags.void_pending
    if pending + flags.post_pending + flags.void_pending > 1 or (flags.imported and pending):
        return Code.FLAGS_ARE_MUTUALLY_EXCLUSIVE
    if not resolves_hold:
        if not request.debit_account_id:
            return Code.DEBIT_ACCOUNT_ID_REQUIRED
        if not request.credit_account_id:
            return Code.CREDIT_ACCOUNT_ID_REQUIRED
    if request.debit_account_id and request.debit_account_id == request.credit_account_id:
        return Code.ACCOUNTS_MUST_BE_DIFFERENT
    if not _amount_valid(request):
        return Code.INVALID_AMOUNT
    if resolves_hold and not request.pending_transfer_id:
        return Code.PENDING_TRANSFER_ID_REQUIRED
    if not resolves_hold and request.pending_transfer_id:
        return Code.PENDING_TRANSFER_ID_NOT_ALLOWED
    if (pending and not 1 <= request.timeout_s <= TIMEOUT_S_MAX) or (not pending and request.timeout_s):
        return Code.INVALID_TIMEOUT
    if not _reason_valid(request, internal=internal):
        return Code.INVALID_REASON
    if max(map(len, vars(request.reference).values())) > REFERENCE_LENGTH_MAX:
        return Code.INVALID_REFERENCE
    if (request.metadata or len(request.memo) > MEMO_LENGTH_MAX) and not _metadata_valid(request):
        return Code.INVALID_METADATA
    if request.lot_terms is not None and not _lot_terms_valid(request):
        return Code.INVALID_LOT_TERMS
    if flags.imported and request.imported_time is None:
        return Code.IMPORTED_TIME_REQUIRED
    if not flags.imported and request.imported_time is not None:
        return Code.IMPORTED_TIME_NOT_ALLOWED
    if request.reverses_transfer_id and (pending or resolves_hold):
        return Code.REVERSAL_NOT_ALLOWED
    return None


def _amount_valid(request: TransferRequest) -> bool:
    # A post may name 0 (the whole hold); a void 0 or exactly the hold's, checked against the hold.
    lowest = 0 if request.flags.post_pending or request.flags.void_pending else 1
    return lowest <= request.amount <= AMOUNT_MAX


def _reason_valid(request: TransferRequest, *, internal: bool) -> bool:
    if request.reason == 0:
        return request.flags.resolves_hold
    reason = _REASONS.get(request.reason)
    if reason is None:
        return False
    if reason in WALLET_ONLY_REASONS and not internal:
        return False
    if reason is ADJUSTMENT_REASON and not request.memo:
        return False
    return not (reason in REVERSAL_REASONS and not request.reverses_transfer_id)


def _metadata_valid(request: TransferRequest) -> bool:
    if len(request.metadata) > METADATA_ENTRIES_MAX or len(request.memo) > MEMO_LENGTH_MAX:
        return False
    return all(METADATA_KEY.fullmatch(k) and len(v) <= METADATA_VALUE_LENGTH_MAX for k, v in request.metadata)


def _lot_terms_valid(request: TransferRequest) -> bool:
    terms = request.lot_terms
    if terms is None:
        return True
    if request.flags.resolves_hold:
        return False
    if terms.no_expiry and terms.expiry_time is not None:
        return False
    return not (terms.activation_time and terms.expiry_time and terms.expiry_time <= terms.activation_time)


# ------------------------------------------------------------------------------------------------
# Balances.


def balance_of(account: Account, now: datetime) -> Balance:
    """The balances of a member or pool account at `now` (O(lots), lots being what is left)."""
    pending_lots = 0
    expired_free = 0
    next_expiry: datetime | None = None
    next_expiry_amount = 0
    for lot in account.lots:  # runs several times per transfer: the Lot methods are inlined
        remaining = lot.remaining
        if remaining == 0:
            continue
        expiry = lot.expiry_time
        if expiry is not None and expiry <= now:
            # Waiting for the expiry run: no longer spendable. Checked before activation so that a
            # lot that expired before it activated is not subtracted twice.
            expired_free += remaining - lot.held
            continue
        if lot.activation_time > now:
            pending_lots += remaining
        if expiry is not None:
            if next_expiry is None or expiry < next_expiry:
                next_expiry, next_expiry_amount = expiry, remaining
            elif expiry == next_expiry:
                next_expiry_amount += remaining
    debits_pending = account.debits_pending
    return Balance(
        account_id=account.account_id,
        kind=account.kind,
        available=account.credits_posted - account.debits_posted - debits_pending - pending_lots - expired_free,
        pending=pending_lots + account.credits_pending,
        held=debits_pending,
        next_expiry_amount=next_expiry_amount,
        next_expiry_time=next_expiry,
        lifetime_earned=account.lifetime_earned,
        unit=account.unit,
    )


def check_account_invariants(account: Account) -> None:
    """What every member/pool account satisfies after every transfer."""
    if not account.has_lots:
        return
    remaining, held = account.unloaded_remaining, 0  # lots not loaded are plain: none of them held
    for lot in account.lots:
        ensure(0 <= lot.held <= lot.remaining <= lot.amount, "lot bounds: {}", lot.lot_id)
        remaining += lot.remaining
        held += lot.held
    posted = account.credits_posted - account.debits_posted
    if posted >= 0:
        ensure(remaining == posted, "{}: lots {} != posted {}", account.account_id, remaining, posted)
    else:
        ensure(remaining == 0, "{}: in debt but lots remain", account.account_id)
    ensure(
        held == account.debits_pending, "{}: earmarked {} != held {}", account.account_id, held, account.debits_pending
    )
    ensure(account.debits_pending >= 0 and account.credits_pending >= 0, "negative pending totals")
    floor = _debt_floor(account)
    ensure(floor is None or posted - account.debits_pending >= floor, "{}: below floor", account.account_id)


def _debt_floor(account: Account) -> int | None:
    """The lowest posted-minus-held an account may reach: 0, -debt_limit, or None (unbounded)."""
    policy = account.policy
    if policy is None or policy.overdraft_mode is NO_OVERDRAFT:
        return 0
    return -policy.debt_limit_minor if policy.debt_limit_minor else None


# ------------------------------------------------------------------------------------------------
# The batch.


@dataclass
class Batch:
    """The working state of one CreateTransfers batch (or one round of background work)."""

    now: datetime
    accounts: dict[str, Account]
    records: dict[str, TransferRecord]
    new_lot_id: Callable[[], str] = new_lot_id
    # What to persist.
    created: list[TransferRecord] = field(default_factory=list)
    updated: dict[str, TransferRecord] = field(default_factory=dict)
    entries: list[EntryRecord] = field(default_factory=list)
    new_lots: list[Lot] = field(default_factory=list)
    touched_lots: dict[str, Lot] = field(default_factory=dict)
    touched_accounts: set[str] = field(default_factory=set)
    # The accounts changed since the last invariant check (a batch may be applied in several
    # calls; each checks what it changed, not everything the batch touched before).
    _unchecked_accounts: set[str] = field(default_factory=set)
    # Undo journal, active while a linked chain is being applied.
    _journal: dict[int, tuple[Any, dict[str, Any]]] | None = None

    # -- public -----------------------------------------------------------------------------

    def apply(self, requests: list[TransferRequest], *, internal: bool = False) -> list[Outcome]:
        """Decide every transfer in order; a linked chain succeeds or fails as one. `internal`:
        transfers the wallet makes itself (ids under "wallet:", its reserved reasons)."""
        outcomes: list[Outcome] = []
        index = 0
        while index < len(requests):
            end = index
            while end < len(requests) and requests[end].flags.linked:
                end += 1
            if end == len(requests):  # the last transfer is linked: the chain never closes
                outcomes += [Outcome(r.transfer_id, Code.LINKED_EVENT_CHAIN_OPEN) for r in requests[index:]]
                break
            chain = requests[index : end + 1]
            if len(chain) > 1:
                outcomes += self._apply_chain(chain, internal=internal)
            else:
                outcomes.append(self._decide(chain[0], internal=internal))
            index = end + 1
        for account_id in self._unchecked_accounts:
            check_account_invariants(self.accounts[account_id])
        self._unchecked_accounts.clear()
        return outcomes

    def expire_hold(self, record: TransferRecord) -> None:
        """Release a hold whose deadline passed (the background worker, or a late post)."""
        ensure(record.state is PENDING, "only open holds expire")
        deadline = record.pending_expiry_time
        ensure(deadline is not None and deadline <= self.now, "hold {} expired before its deadline", record.transfer_id)
        self._touch(record)
        self._release_hold(record, posted=0, entry_type=EXPIRE_PENDING_ENTRY)
        record.state = EXPIRED
        record.resolved_time = self.now
        self.updated[record.transfer_id] = record

    def expire_lot(self, lot: Lot, expiry_account: Account) -> TransferRecord:
        """Move what is left unheld of an expired lot to the program's EXPIRY account.

        The transfer id is derived from the lot and what it had already lost, so a second worker
        (or a retry) doing the same step finds the same id already decided."""
        account = self.accounts[lot.account_id]
        amount = lot.free()
        ensure(lot.is_expired(self.now) and amount > 0, "lot {} has nothing to expire", lot.lot_id)
        ensure(expiry_account.system_role is EXPIRY_ROLE, "expiry goes to the EXPIRY account")
        request = internal_request(
            transfer_id=f"{WALLET_ID_PREFIX}expiry:{lot.lot_id}:{lot.expired_amount}",
            debit_account_id=account.account_id,
            credit_account_id=expiry_account.account_id,
            amount=amount,
            reason=EXPIRY_REASON,
        )
        self._touch_accounts(account, expiry_account)
        self._touch_lot(lot)
        lot.remaining -= amount
        lot.expired_amount += amount
        account.debits_posted += amount
        expiry_account.credits_posted += amount
        record = TransferRecord(
            request=request,
            state=POSTED,
            rejection_code=None,
            recorded_time=self.now,
            effective_time=self.now,
            amount=amount,
            allocations=[(lot.lot_id, amount)],
        )
        record.outcome = self._outcome(record, account, expiry_account, amount=amount, lot_id="")
        self._add_record(record)
        self._entries(record, account, expiry_account, POSTED_ENTRY, amount=amount, released=0, after=record.outcome)
        return record

    # -- chains -------------------------------------------------------------------------------

    def _apply_chain(self, chain: list[TransferRequest], *, internal: bool) -> list[Outcome]:
        marks = (len(self.created), len(self.entries), len(self.new_lots), set(self.records), set(self.updated))
        self._journal = {}
        try:
            decided = []
            for request in chain:
                outcome = self._decide(request, in_chain=True, internal=internal)
                decided.append(outcome)
                if not outcome.code.succeeded:
                    self._undo(marks)
                    failed = [o if o is outcome else Outcome(o.transfer_id, Code.LINKED_EVENT_FAILED) for o in decided]
                    rest = [Outcome(r.transfer_id, Code.LINKED_EVENT_FAILED) for r in chain[len(decided) :]]
                    return failed + rest
            return decided
        finally:
            self._journal = None

    def _touch(self, obj: Any) -> None:
        """Remember `obj` as it was before the chain first changed it."""
        if self._journal is not None and id(obj) not in self._journal:
            saved = dict(vars(obj))
            if isinstance(obj, Account):
                saved["lots"] = list(obj.lots)
            if isinstance(obj, PoolMember):
                saved["spent"] = dict(obj.spent)
            if isinstance(obj, Pool):
                saved["changed"] = set(obj.changed)
            self._journal[id(obj)] = (obj, copy.copy(saved))

    def _undo(self, marks: tuple[int, int, int, set[str], set[str]]) -> None:
        created, entries, new_lots, record_ids, updated_ids = marks
        assert self._journal is not None
        for obj, saved in self._journal.values():
            vars(obj).clear()
            vars(obj).update(saved)
        del self.created[created:]
        del self.entries[entries:]
        for lot in self.new_lots[new_lots:]:
            self.touched_lots.pop(lot.lot_id, None)
        del self.new_lots[new_lots:]
        for transfer_id in set(self.records) - record_ids:
            del self.records[transfer_id]
        for transfer_id in set(self.updated) - updated_ids:
            del self.updated[transfer_id]

    # -- one transfer -------------------------------------------------------------------------

    def _decide(self, request: TransferRequest, *, in_chain: bool = False, internal: bool = False) -> Outcome:
        invalid = validate(request, internal=internal)
        if invalid is not None:
            return Outcome(request.transfer_id, invalid)
        existing = self.records.get(request.transfer_id)
        if existing is not None:
            return self._replay(existing, request)
        effective_time = request.imported_time if request.flags.imported and request.imported_time else self.now
        if self._lot_terms_refused(request, effective_time):
            return Outcome(request.transfer_id, Code.INVALID_LOT_TERMS)  # a validation code: not recorded
        rejection = self._reject_reason(request, effective_time)
        if rejection is not None:
            if in_chain:  # a failed chain records nothing (TigerBeetle's rule)
                return Outcome(request.transfer_id, rejection)
            return self._record_rejection(request, rejection, effective_time)
        return self._apply(request, effective_time)

    def _replay(self, existing: TransferRecord, request: TransferRequest) -> Outcome:
        if existing.request.body != request.body:
            return Outcome(
                request.transfer_id,
                Code.EXISTS_WITH_DIFFERENT_FIELDS,
                different_fields=tuple(_different_fields(existing.request, request)),
            )
        original = existing.outcome
        ensure(original is not None, "{}: recorded without an outcome", request.transfer_id)
        assert original is not None
        code = Code.EXISTS if existing.state is not REJECTED else original.code
        return replace(original, code=code, replayed=True)

    def _record_rejection(self, request: TransferRequest, code: Code, effective_time: datetime) -> Outcome:
        # The contract returns the balances of a state-dependent rejection too (as they were when it
        # was refused), for both member-side accounts; a post or void names its hold's accounts.
        debit_id, credit_id = self._account_ids(request)
        outcome = Outcome(
            request.transfer_id,
            code,
            recorded_time=self.now,
            effective_time=effective_time,
            debit_balance=self._member_balance(self.accounts.get(debit_id)),
            credit_balance=self._member_balance(self.accounts.get(credit_id)),
        )
        record = TransferRecord(
            request=request,
            state=REJECTED,
            rejection_code=code,
            recorded_time=self.now,
            effective_time=effective_time,
            amount=request.amount,
            outcome=outcome,
        )
        self._add_record(record)
        return outcome

    def _account_ids(self, request: TransferRequest) -> tuple[str, str]:
        """The accounts a transfer moves: a post or void may leave them empty, meaning its hold's."""
        if request.flags.resolves_hold:
            hold = self.records.get(request.pending_transfer_id)
            if hold is not None and hold.is_hold and hold.state is not REJECTED:
                return hold.request.debit_account_id, hold.request.credit_account_id
        return request.debit_account_id, request.credit_account_id

    def _add_record(self, record: TransferRecord) -> None:
        self.records[record.transfer_id] = record
        self.created.append(record)

    # -- state-dependent checks -----------------------------------------------------------------

    def _reject_reason(self, request: TransferRequest, effective_time: datetime) -> Code | None:
        if request.flags.imported:
            if effective_time > self.now + CLOCK_SKEW:
                return Code.IMPORTED_TIME_IN_FUTURE
            if effective_time < self.now - IMPORT_AGE_MAX:
                return Code.IMPORTED_TIME_TOO_OLD
        if request.flags.resolves_hold:
            return self._reject_resolution(request)
        debit = self.accounts.get(request.debit_account_id)
        credit = self.accounts.get(request.credit_account_id)
        if debit is None:
            return Code.DEBIT_ACCOUNT_NOT_FOUND
        if credit is None:
            return Code.CREDIT_ACCOUNT_NOT_FOUND
        if debit.program_id != credit.program_id or (debit.unit is not credit.unit and debit.unit != credit.unit):
            return Code.ACCOUNTS_MUST_HAVE_SAME_UNIT
        if debit.state is ACCOUNT_CLOSED:
            return Code.DEBIT_ACCOUNT_CLOSED
        if credit.state is ACCOUNT_CLOSED:
            return Code.CREDIT_ACCOUNT_CLOSED
        # An account is frozen before it is closed, so that nothing lands between its forfeiture
        # and its closure; the forfeiture itself must pass.
        if debit.state is ACCOUNT_FROZEN and request.reason != ACCOUNT_CLOSURE:
            return Code.DEBIT_ACCOUNT_FROZEN
        if credit.state is ACCOUNT_FROZEN and credit.freeze_mode is FROZEN_FOR_ALL:
            return Code.CREDIT_ACCOUNT_FROZEN
        if not _reason_fits(_REASONS[request.reason], debit, credit):
            return Code.REASON_NOT_ALLOWED_FOR_ACCOUNT
        if debit.pool is not None or credit.pool is not None:
            pool_refusal = _pool_refusal(request, debit, credit, effective_time)
            if pool_refusal is not None:
                return pool_refusal
        if request.reverses_transfer_id:
            rejection = self._reject_reversal(request)
            if rejection is not None:
                return rejection
        if debit.has_lots and self._usable(debit, request) < request.amount:
            return Code.INSUFFICIENT_FUNDS
        if credit.has_lots and _exceeds_balance_max(credit, request.amount):
            return Code.BALANCE_LIMIT_EXCEEDED
        if max(debit.debits_posted + debit.debits_pending, credit.credits_posted + credit.credits_pending) > (
            INT64_MAX - request.amount
        ):
            return Code.OVERFLOW
        return None

    def _reject_resolution(self, request: TransferRequest) -> Code | None:
        hold = self.records.get(request.pending_transfer_id)
        if hold is None:
            return Code.PENDING_TRANSFER_NOT_FOUND
        if not hold.is_hold or hold.state is REJECTED:
            return Code.PENDING_TRANSFER_NOT_PENDING
        if request.debit_account_id and request.debit_account_id != hold.request.debit_account_id:
            return Code.PENDING_TRANSFER_HAS_DIFFERENT_DEBIT_ACCOUNT
        if request.credit_account_id and request.credit_account_id != hold.request.credit_account_id:
            return Code.PENDING_TRANSFER_HAS_DIFFERENT_CREDIT_ACCOUNT
        if request.flags.void_pending and request.amount not in (0, hold.amount):
            return Code.PENDING_TRANSFER_HAS_DIFFERENT_AMOUNT
        if hold.state is POSTED:
            return Code.PENDING_TRANSFER_ALREADY_POSTED
        if hold.state is VOIDED:
            return Code.PENDING_TRANSFER_ALREADY_VOIDED
        if hold.state is EXPIRED:
            return Code.PENDING_TRANSFER_EXPIRED
        ensure(hold.pending_expiry_time is not None, "an open hold has a deadline")
        assert hold.pending_expiry_time is not None
        if self.now >= hold.pending_expiry_time:
            self.expire_hold(hold)  # the deadline decides, not when the worker runs
            return Code.PENDING_TRANSFER_EXPIRED
        if request.flags.post_pending and request.amount > hold.amount:
            return Code.AMOUNT_EXCEEDS_PENDING
        return None

    def _reject_reversal(self, request: TransferRequest) -> Code | None:
        original = self.records.get(request.reverses_transfer_id)
        if original is None or original.state is REJECTED:
            return Code.REVERSED_TRANSFER_NOT_FOUND
        posted_single_phase = original.state is POSTED and not original.is_hold
        if not posted_single_phase or original.request.flags.void_pending:
            return Code.REVERSED_TRANSFER_NOT_REVERSIBLE
        original_debit, original_credit = self._account_ids(original.request)  # a post's are its hold's
        goes_back = original_credit == request.debit_account_id and original_debit == request.credit_account_id
        if not goes_back:
            return Code.REVERSED_TRANSFER_NOT_REVERSIBLE
        if original.reversed_amount + request.amount > original.amount:
            return Code.REVERSAL_EXCEEDS_ORIGINAL
        return None

    def _lot_terms_refused(self, request: TransferRequest, effective_time: datetime) -> bool:
        """The rules of lot terms that need the credit account and the clock (INVALID_LOT_TERMS):
        no terms on a credit to a SYSTEM account; an explicit expiry after the lot's activation and
        after the effective time; nothing credited on or after a FIXED_TIME kind's expiry."""
        if request.flags.resolves_hold:
            return False  # the hold's terms apply; validated when the hold was made
        credit = self.accounts.get(request.credit_account_id)
        if credit is None:
            return False  # CREDIT_ACCOUNT_NOT_FOUND decides
        if not credit.has_lots:
            return request.lot_terms is not None
        if request.reason in KEEPS_LOT_TIMES or request.reason == REDEMPTION_REVERSAL:
            return False  # the lots keep (or get back) the times of the lots they came from
        policy = credit.policy
        if request.lot_terms is None and (policy is None or policy.expiry_mode is NEVER_EXPIRES):
            return False  # its lot never expires (what _lot_times would find, without the work)
        activation, expiry = self._lot_times(credit, request, effective_time)
        if expiry is None:
            return False
        if request.lot_terms is not None and request.lot_terms.expiry_time is not None:
            return expiry <= max(activation, effective_time)
        return expiry <= effective_time

    def _usable(self, debit: Account, request: TransferRequest) -> int:
        """How much this transfer may take from a member or pool account."""
        if request.reason == ACCOUNT_CLOSURE:
            return debit.posted - debit.debits_pending  # closure forfeits every lot, pending or expired
        available = balance_of(debit, self.now).available
        own_lot = self._own_pending_lot(request, debit)
        if own_lot is not None:
            available += own_lot.free()  # an accrual's reversal may take its own not-yet-active lot
        debt_allowed = (
            request.flags.allow_debt
            and not request.flags.pending
            and request.reason not in NEVER_INTO_DEBT  # "spending never creates debt" (AccountPolicy)
            and debit.policy is not None
            and debit.policy.overdraft_mode is DEBT_ALLOWED
        )
        if not debt_allowed:
            return available
        assert debit.policy is not None
        usable = INT64_MAX if debit.policy.debt_limit_minor == 0 else available + debit.policy.debt_limit_minor
        if debit.debits_pending:
            # A debt has no lots, and the lots open holds earmarked must stay for them: while holds
            # are open, a debit may take every unheld lot (not yet active or expired too) but not
            # reach below what the holds keep.
            usable = min(usable, debit.posted - debit.debits_pending)
        return usable

    def _own_pending_lot(self, request: TransferRequest, debit: Account) -> Lot | None:
        lot = self._own_lot(request, debit)
        return lot if lot is not None and not lot.is_active(self.now) else None

    # -- effects ------------------------------------------------------------------------------

    def _apply(self, request: TransferRequest, effective_time: datetime) -> Outcome:
        if request.flags.resolves_hold:
            return self._resolve_hold(request, effective_time)
        debit = self.accounts[request.debit_account_id]
        credit = self.accounts[request.credit_account_id]
        record = TransferRecord(
            request=request,
            state=PENDING if request.flags.pending else POSTED,
            rejection_code=None,
            recorded_time=self.now,
            effective_time=effective_time,
            amount=request.amount,
        )
        self._touch(debit)
        self._touch(credit)
        self._touch_accounts(debit, credit)
        lot_id = ""
        if request.flags.pending:
            record.pending_expiry_time = self.now + timedelta(seconds=request.timeout_s)
            record.allocations = self._earmark(debit, request.amount)
            debit.debits_pending += request.amount
            credit.credits_pending += request.amount
            self._count_pool_spending(debit, request, request.amount, at=effective_time)
            entry_type = PENDING_ENTRY
        else:
            consumed = self._debit_posted(debit, request)
            lot_id, created = self._credit_posted(credit, request, request.amount, effective_time, consumed)
            # What a reversal needs later: the lots a debit consumed (a redemption's reversal
            # restores their times), else the lots a credit created (an accrual's reversal takes
            # its own lot first).
            record.allocations = consumed if debit.has_lots else created
            self._note_reversal(request)
            self._count_pool_spending(debit, request, request.amount, at=effective_time)
            entry_type = POSTED_ENTRY
        outcome = self._outcome(record, debit, credit, amount=request.amount, lot_id=lot_id)
        record.outcome = outcome
        self._add_record(record)
        self._entries(record, debit, credit, entry_type, amount=request.amount, released=0, after=outcome)
        return outcome

    def _resolve_hold(self, request: TransferRequest, effective_time: datetime) -> Outcome:
        hold = self.records[request.pending_transfer_id]
        debit = self.accounts[hold.request.debit_account_id]
        credit = self.accounts[hold.request.credit_account_id]
        self._touch(hold)
        self._touch(debit)
        self._touch(credit)
        posted = (request.amount or hold.amount) if request.flags.post_pending else 0
        released = hold.amount - posted
        entry_type = POST_PENDING_ENTRY if request.flags.post_pending else VOID_PENDING_ENTRY
        lot_id, allocations = self._release_hold(hold, posted=posted, entry_type=None)
        hold.state = POSTED if request.flags.post_pending else VOIDED
        hold.posted_amount = posted
        hold.resolved_by_transfer_id = request.transfer_id
        hold.resolved_time = self.now
        self.updated[hold.transfer_id] = hold
        record = TransferRecord(
            request=request,
            state=POSTED if request.flags.post_pending else VOIDED,
            rejection_code=None,
            recorded_time=self.now,
            effective_time=effective_time,
            amount=posted if request.flags.post_pending else hold.amount,
            # As for a single-phase transfer: what a reversal of this post needs later.
            allocations=allocations,
        )
        outcome = self._outcome(record, debit, credit, amount=record.amount, lot_id=lot_id, released=released)
        record.outcome = outcome
        self._add_record(record)
        self._entries(record, debit, credit, entry_type, amount=record.amount, released=released, after=outcome)
        return outcome

    def _release_hold(
        self, hold: TransferRecord, *, posted: int, entry_type: EntryType | None
    ) -> tuple[str, list[tuple[str, int]]]:
        """Release a hold's reservation; move `posted` of it. Returns the credit lot's id, if any, and
        the lots the posted part consumed (debit side with lots) or created (credit side)."""
        debit = self.accounts[hold.request.debit_account_id]
        credit = self.accounts[hold.request.credit_account_id]
        self._touch(debit)
        self._touch(credit)
        self._touch_accounts(debit, credit)
        debit.debits_pending -= hold.amount
        credit.credits_pending -= hold.amount
        # A pool member's open hold counted as spent; what it did not post is spendable again.
        self._count_pool_spending(debit, hold.request, -(hold.amount - posted), at=hold.effective_time)
        left_to_post = posted
        consumed: list[tuple[str, int]] = []
        for lot_id, earmarked in hold.allocations:
            lot = self._lot(debit, lot_id)
            self._touch_lot(lot)
            lot.held -= earmarked
            take = min(earmarked, left_to_post)
            lot.remaining -= take
            left_to_post -= take
            if take:
                consumed.append((lot_id, take))
        if debit.has_lots:
            ensure(left_to_post == 0, "{}: hold posted beyond its earmarked lots", hold.transfer_id)
        debit.debits_posted += posted
        credit_lot_id, created = "", list[tuple[str, int]]()
        if posted:
            credit_lot_id, created = self._credit_posted(credit, hold.request, posted, hold.effective_time, consumed)
        if entry_type is not None:
            self._entries(hold, debit, credit, entry_type, amount=hold.amount, released=hold.amount - posted)
        return credit_lot_id, consumed if debit.has_lots else created

    def _earmark(self, debit: Account, amount: int) -> list[tuple[str, int]]:
        if not debit.has_lots:
            return []
        allocations = self._take(debit, amount, lambda lot, take: setattr(lot, "held", lot.held + take))
        ensure(sum(a for _, a in allocations) == amount, "{}: hold not covered by lots", debit.account_id)
        return allocations

    def _debit_posted(self, debit: Account, request: TransferRequest) -> list[tuple[str, int]]:
        """Post a debit; returns the lots consumed (their times travel with transfers between members)."""
        debit.debits_posted += request.amount
        if request.reason == ACCRUAL_REVERSAL:
            debit.lifetime_earned -= request.amount
        if not debit.has_lots:
            return []
        first = self._own_lot(request, debit)
        consumed = self._take(debit, request.amount, _consume, first=first)
        taken = sum(a for _, a in consumed)
        if taken < request.amount:
            # Only a debit allowed into debt gets here (`_usable`). A debt has no lots, so it also
            # takes the unheld lots that are not yet active or already expired.
            consumed += self._take(debit, request.amount - taken, _consume, any_unheld=True)
            taken = sum(a for _, a in consumed)
        ensure(taken == request.amount or debit.posted < 0, "{}: debit not covered by lots", request.transfer_id)
        return consumed

    def _own_lot(self, request: TransferRequest, debit: Account) -> Lot | None:
        if request.reason != ACCRUAL_REVERSAL:
            return None
        original = self.records.get(request.reverses_transfer_id)
        if original is None or not original.allocations:
            return None
        return next((lot for lot in debit.lots if lot.lot_id == original.allocations[0][0]), None)

    def _take(
        self,
        account: Account,
        amount: int,
        action: Callable[[Lot, int], None],
        *,
        first: Lot | None = None,
        any_unheld: bool = False,
    ) -> list[tuple[str, int]]:
        """Walk the spendable lots (with `any_unheld`, every lot with an unheld part) in consumption
        order (`first` before all), applying `action`."""
        now = self.now
        # Lot.free, is_active and is_expired inlined: this runs for every debit.
        if any_unheld:
            spendable = [lot for lot in account.lots if lot.remaining > lot.held]
        else:
            spendable = [
                lot
                for lot in account.lots
                if lot.remaining > lot.held
                and lot.activation_time <= now
                and (lot.expiry_time is None or lot.expiry_time > now)
            ]
        if len(spendable) > 1:
            spendable.sort(key=Lot.consumption_key)
        if first is not None and first.free() > 0:
            spendable = [first, *(lot for lot in spendable if lot is not first)]
        allocations = []
        left = amount
        for lot in spendable:
            if left == 0:
                break
            take = min(lot.remaining - lot.held, left)
            self._touch_lot(lot)
            action(lot, take)
            allocations.append((lot.lot_id, take))
            left -= take
        return allocations

    def _credit_posted(
        self,
        credit: Account,
        request: TransferRequest,
        amount: int,
        effective_time: datetime,
        sources: list[tuple[str, int]],
    ) -> tuple[str, list[tuple[str, int]]]:
        """Post a credit: pay back debt first, then create lots. Returns (first lot id, lots)."""
        debt = max(0, -credit.posted)
        credit.credits_posted += amount
        if request.reason in EARNING_REASONS:
            credit.lifetime_earned += amount
        if not credit.has_lots:
            return "", []
        to_lots = amount - min(debt, amount)
        if to_lots == 0:
            return "", []
        if request.reason not in KEEPS_LOT_TIMES and request.reason != REDEMPTION_REVERSAL:
            created = [self._new_lot(credit, request, to_lots, effective_time, None)]  # one lot, fresh terms
        else:
            created = [
                self._new_lot(credit, request, lot_amount, effective_time, terms_from)
                for lot_amount, terms_from in self._lot_shapes(request, to_lots, sources)
            ]
        return created[0][0], created

    def _lot_shapes(
        self, request: TransferRequest, amount: int, sources: list[tuple[str, int]]
    ) -> Iterable[tuple[int, Lot | None]]:
        """Transfers between members keep the times of the lots they took; a redemption's reversal
        restores those of the lots it spent; any other credit is one lot with fresh terms."""
        keep_times = request.reason in KEEPS_LOT_TIMES
        if request.reason == REDEMPTION_REVERSAL:
            sources = self._restorable(request)
            keep_times = True
        if not keep_times or not sources:
            yield amount, None
            return
        left = amount
        for lot_id, taken in sources:
            if left == 0:
                return
            share = min(taken, left)
            yield share, self._find_lot(lot_id)
            left -= share
        if left:
            yield left, None

    def _restorable(self, request: TransferRequest) -> list[tuple[str, int]]:
        """The part of the original redemption's consumed lots that earlier reversals did not restore."""
        original = self.records[request.reverses_transfer_id]
        skip = original.reversed_amount
        restorable = []
        for lot_id, taken in original.allocations:
            if skip >= taken:
                skip -= taken
                continue
            restorable.append((lot_id, taken - skip))
            skip = 0
        return restorable

    def _new_lot(
        self, account: Account, request: TransferRequest, amount: int, effective_time: datetime, like: Lot | None
    ) -> tuple[str, int]:
        if like is not None:
            activation, expiry = like.activation_time, like.expiry_time
        else:
            activation, expiry = self._lot_times(account, request, effective_time)
        lot = Lot(
            lot_id=self.new_lot_id(),
            account_id=account.account_id,
            transfer_id=request.transfer_id,
            reason=request.reason,
            amount=amount,
            remaining=amount,
            held=0,
            expired_amount=0,
            activation_time=activation,
            expiry_time=expiry,
            effective_time=effective_time,
        )
        account.lots.append(lot)
        self.new_lots.append(lot)
        self.touched_lots[lot.lot_id] = lot
        return lot.lot_id, amount

    def _lot_times(
        self, account: Account, request: TransferRequest, effective_time: datetime
    ) -> tuple[datetime, datetime | None]:
        policy = account.policy
        terms = request.lot_terms
        delay = policy.activation_delay_s if policy and request.reason in EARNING_REASONS else 0
        activation = effective_time + timedelta(seconds=delay) if delay else effective_time
        if terms is not None and terms.activation_time is not None:
            activation = terms.activation_time
        if terms is not None and terms.no_expiry:
            return activation, None
        if terms is not None and terms.expiry_time is not None:
            return activation, terms.expiry_time
        if policy is None or policy.expiry_mode is NEVER_EXPIRES:
            return activation, None
        if policy.expiry_mode is EXPIRES_AFTER_DURATION:
            return activation, activation + timedelta(seconds=policy.lifetime_s)
        return activation, policy.fixed_expiry_time

    def _count_pool_spending(self, debit: Account, request: TransferRequest, amount: int, *, at: datetime) -> None:
        """Spending from a pool counts against the spender's limit in the period it happened."""
        pool = debit.pool
        if pool is None or request.reason not in SPENDING_REASONS or amount == 0:
            return
        member = pool.members.get(request.on_behalf_of_member_id)
        self._touch(pool)
        if member is not None:
            self._touch(member)
        pool.count(request.on_behalf_of_member_id, at, amount)

    def _note_reversal(self, request: TransferRequest) -> None:
        if not request.reverses_transfer_id:
            return
        original = self.records[request.reverses_transfer_id]
        credit = self.accounts.get(request.credit_account_id)
        if credit is not None and request.reason == REDEMPTION_REVERSAL:
            # A refund of pool spending gives the spender's allowance back (to its period).
            self._count_pool_spending(credit, original.request, -request.amount, at=original.effective_time)
        self._touch(original)
        original.reversed_amount += request.amount
        ensure(original.reversed_amount <= original.amount, "reversals exceed the original")
        self.updated[original.transfer_id] = original

    # -- lots, entries, outcomes ------------------------------------------------------------------

    def _touch_accounts(self, debit: Account, credit: Account) -> None:
        self.touched_accounts.add(debit.account_id)
        self.touched_accounts.add(credit.account_id)
        self._unchecked_accounts.add(debit.account_id)
        self._unchecked_accounts.add(credit.account_id)

    def _touch_lot(self, lot: Lot) -> None:
        self._touch(lot)
        self.touched_lots[lot.lot_id] = lot

    def _lot(self, account: Account, lot_id: str) -> Lot:
        lot = next((lot for lot in account.lots if lot.lot_id == lot_id), None)
        ensure(lot is not None, "lot {} of {} not loaded", lot_id, account.account_id)
        assert lot is not None
        return lot

    def _find_lot(self, lot_id: str) -> Lot | None:
        for account in self.accounts.values():
            for lot in account.lots:
                if lot.lot_id == lot_id:
                    return lot
        return None

    def _member_balance(self, account: Account | None) -> Balance | None:
        if account is None or not account.has_lots:
            return None
        return balance_of(account, self.now)

    def _outcome(
        self, record: TransferRecord, debit: Account, credit: Account, *, amount: int, lot_id: str, released: int = 0
    ) -> Outcome:
        return Outcome(
            transfer_id=record.transfer_id,
            code=CREATED,
            recorded_time=record.recorded_time,
            effective_time=record.effective_time,
            debit_balance=self._member_balance(debit),
            credit_balance=self._member_balance(credit),
            amount=amount,
            released_amount=released,
            pending_expiry_time=record.pending_expiry_time,
            lot_id=lot_id,
        )

    def _entries(
        self,
        record: TransferRecord,
        debit: Account,
        credit: Account,
        entry_type: EntryType,
        *,
        amount: int,
        released: int,
        after: Outcome | None = None,
    ) -> None:
        """History lines for member and pool accounts (SYSTEM accounts are read through transfers).
        `after`: the transfer's outcome, computed from the same state, whose balances are reused."""
        if debit.has_lots:
            balance = after.debit_balance if after is not None else None
            self._entry(record, debit, DEBIT, credit, balance, entry_type, amount, released)
        if credit.has_lots:
            balance = after.credit_balance if after is not None else None
            self._entry(record, credit, CREDIT, debit, balance, entry_type, amount, released)

    def _entry(
        self,
        record: TransferRecord,
        account: Account,
        direction: Direction,
        other: Account,
        balance: Balance | None,
        entry_type: EntryType,
        amount: int,
        released: int,
    ) -> None:
        if balance is None:
            balance = balance_of(account, self.now)
        ensure(balance.account_id == account.account_id, "an entry's balance is its own account's")
        account.entry_sequence += 1
        self.entries.append(
            EntryRecord(
                account_id=account.account_id,
                sequence=account.entry_sequence,
                transfer_id=record.transfer_id,
                type=entry_type,
                direction=direction,
                amount=amount,
                released_amount=released,
                counterparty_account_id=other.account_id,
                balance_after=balance,
                recorded_time=self.now,
                effective_time=record.effective_time,
            )
        )


def _exceeds_balance_max(credit: Account, amount: int) -> bool:
    cap = credit.policy.balance_max_minor if credit.policy else 0
    return bool(cap) and credit.posted + credit.credits_pending + amount > cap


def _pool_refusal(request: TransferRequest, debit: Account, credit: Account, at: datetime) -> Code | None:
    """Pool rules: only current members spend (within their limit) or contribute."""
    reason = _REASONS[request.reason]
    if debit.pool is not None and reason in SPENDING_REASONS:
        allowance = debit.pool.allowance(request.on_behalf_of_member_id, at)
        if allowance == -1:
            return Code.POOL_MEMBER_NOT_FOUND
        if allowance is not None and request.amount > allowance:
            return Code.POOL_SPENDING_LIMIT_EXCEEDED
    if credit.pool is not None and reason is POOL_CONTRIBUTION:
        contributor = request.on_behalf_of_member_id or debit.member_id
        if contributor != debit.member_id or contributor not in credit.pool.members:
            return Code.POOL_MEMBER_NOT_FOUND
    return None


def _consume(lot: Lot, take: int) -> None:
    lot.remaining -= take


def _reason_fits(reason: Reason, debit: Account, credit: Account) -> bool:
    """Which way each reason may move value, and which kinds' policies it needs."""
    debit_member = debit.type is not SYSTEM_ACCOUNT
    credit_member = credit.type is not SYSTEM_ACCOUNT
    if reason in EARNING_REASONS or reason is GIFT_LOAD:
        return not debit_member and credit_member
    if reason in SPENDING_REASONS:
        return debit_member and not credit_member and debit.policy is not None and debit.policy.spendable
    if reason is ACCRUAL_REVERSAL:
        return debit_member and not credit_member
    if reason is REDEMPTION_REVERSAL:
        return not debit_member and credit_member
    if reason is MEMBER_TRANSFER:
        return (
            debit.type is MEMBER_ACCOUNT
            and credit.type is MEMBER_ACCOUNT
            and debit.policy is not None
            and debit.policy.transferable
        )
    if reason is POOL_CONTRIBUTION:
        return (
            debit.type is MEMBER_ACCOUNT
            and credit.type is POOL_ACCOUNT
            and debit.policy is not None
            and debit.policy.transferable
        )
    if reason is PARTNER_SETTLEMENT:
        return not debit_member and not credit_member
    if reason is ADJUSTMENT_REASON:
        return ADJUSTMENT_ROLE in (debit.system_role, credit.system_role)
    if reason is EXPIRY_REASON or reason is ACCOUNT_CLOSURE:
        return debit_member and credit.system_role is EXPIRY_ROLE
    if reason is POOL_RETURN:
        return debit.type is POOL_ACCOUNT and credit.type is MEMBER_ACCOUNT
    return False


_COMPARED_FIELDS = (
    "debit_account_id",
    "credit_account_id",
    "amount",
    "pending_transfer_id",
    "timeout_s",
    "flags",
    "reason",
    "reference",
    "metadata",
    "memo",
    "imported_time",
    "lot_terms",
    "reverses_transfer_id",
    "on_behalf_of_member_id",
)
_PROTO_NAMES = {"amount": "amount_minor"}


def _different_fields(recorded: TransferRequest, submitted: TransferRequest) -> list[str]:
    """Which body fields differ, as proto field paths of `Transfer`."""
    different = []
    for name in _COMPARED_FIELDS:
        old, new = getattr(recorded, name), getattr(submitted, name)
        if old == new:
            continue
        if name in ("flags", "reference", "lot_terms") and old is not None and new is not None:
            different += [f"{name}.{f}" for f in vars(old) if getattr(old, f) != getattr(new, f)]
        else:
            different.append(_PROTO_NAMES.get(name, name))
    return different or ["body"]


def internal_request(
    *, transfer_id: str, debit_account_id: str, credit_account_id: str, amount: int, reason: Reason
) -> TransferRequest:
    """A transfer the wallet makes itself (expiry, closure). Its id is never submitted by a
    client ("wallet:" prefix), so its body only has to be unique, not proto-encoded."""
    from services.wallet.domain.model import Flags, Reference

    body = f"{transfer_id}|{debit_account_id}|{credit_account_id}|{amount}|{int(reason)}".encode()
    return TransferRequest(
        transfer_id=transfer_id,
        debit_account_id=debit_account_id,
        credit_account_id=credit_account_id,
        amount=amount,
        pending_transfer_id="",
        timeout_s=0,
        flags=Flags(),
        reason=int(reason),
        reference=Reference(),
        metadata=(),
        memo="",
        imported_time=None,
        lot_terms=None,
        reverses_transfer_id="",
        on_behalf_of_member_id="",
        body=body,
    )
