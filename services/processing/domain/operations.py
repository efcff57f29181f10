"""Operations and the wallet transfers they make (pure).

An operation's wallet transfers are PLANNED before anything is sent: their ids derive from the
operation id ("<operation_id>:redeem:0", "<operation_id>:accrue:1", ...), and the plan is stored
with the operation as its recovery point. Sending a plan twice is harmless (the wallet answers
EXISTS with the original result), so a retry and the recovery worker simply send it again.

One operation's transfers form one linked chain: they all apply or none does.

Refund arithmetic across postings uses a sequential fill: the cumulative amount taken back so far
fills the operation's postings in order, so every refund's share is exact, never negative, and the
refund that takes the last point empties every posting exactly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from enum import IntEnum


class OperationType(IntEnum):  # loyalty.processing.v1.OperationType
    PURCHASE = 1
    REFUND = 2
    CANCEL = 3


class OperationState(IntEnum):  # loyalty.processing.v1.OperationState
    PROCESSING = 1
    AUTHORIZED = 2
    CAPTURED = 3
    VOIDED = 4
    EXPIRED = 5
    PARTIALLY_REFUNDED = 6
    REFUNDED = 7
    COMPLETED = 8
    REJECTED = 9


# Where a purchase may go next (processing.proto, OperationState).
PURCHASE_TRANSITIONS: dict[OperationState, frozenset[OperationState]] = {
    OperationState.PROCESSING: frozenset(
        {OperationState.AUTHORIZED, OperationState.CAPTURED, OperationState.VOIDED, OperationState.REJECTED}
    ),
    OperationState.AUTHORIZED: frozenset(
        {OperationState.PROCESSING, OperationState.CAPTURED, OperationState.VOIDED, OperationState.EXPIRED}
    ),
    OperationState.CAPTURED: frozenset({OperationState.PARTIALLY_REFUNDED, OperationState.REFUNDED}),
    OperationState.PARTIALLY_REFUNDED: frozenset({OperationState.PARTIALLY_REFUNDED, OperationState.REFUNDED}),
}
REFUNDABLE = frozenset({OperationState.CAPTURED, OperationState.PARTIALLY_REFUNDED})


def may_move(current: OperationState, target: OperationState) -> bool:
    return target in PURCHASE_TRANSITIONS.get(current, frozenset())


class Leg(IntEnum):
    """What a posting did for the member."""

    REDEMPTION = 1
    ACCRUAL = 2


@dataclass(frozen=True)
class PlannedTransfer:
    """One wallet transfer, as stored in an operation's plan (JSON) and sent to the wallet."""

    transfer_id: str
    reason: str  # loyalty.wallet.v1.TransferReason name without its prefix, e.g. "ACCRUAL"
    debit_account_id: str = ""
    credit_account_id: str = ""
    amount: int = 0
    pending: bool = False
    post_pending: bool = False
    void_pending: bool = False
    pending_transfer_id: str = ""
    timeout_s: int = 0
    imported_time: datetime | None = None
    activation_time: datetime | None = None
    expiry_time: datetime | None = None
    no_expiry: bool = False
    reverses_transfer_id: str = ""
    allow_debt: bool = False


@dataclass(frozen=True)
class Posting:
    """A transfer that moved points for the member (or holds them, while AUTHORIZED)."""

    transfer_id: str
    leg: Leg
    account_id: str
    account_kind: str
    amount: int
    reversed_amount: int = 0


@dataclass(frozen=True)
class Accounts:
    """The accounts one purchase touches."""

    issuance: str
    redemption: str
    # account_kind -> the member's account of that kind that earns it.
    earning: dict[str, str]
    # (account_id, account_kind) in the order points are spent, with what each may give.
    spending: tuple[tuple[str, str, int], ...]


@dataclass(frozen=True)
class AccrualPartPlan:
    account_kind: str
    points: int
    activation_time: datetime | None
    expire_time: datetime | None


def split_redemption(points: int, spending: Sequence[tuple[str, str, int]]) -> list[tuple[str, str, int]]:
    """Take `points` from the spending accounts in order; each gives at most what it has.
    Anything left over goes to the first account (the wallet then refuses it for funds)."""
    parts: list[tuple[str, str, int]] = []
    left = points
    for account_id, kind, available in spending:
        take = min(left, max(available, 0))
        if take > 0:
            parts.append((account_id, kind, take))
            left -= take
    if left > 0:
        if not spending:
            raise ValueError("points to redeem but no account to redeem from")
        account_id, kind, _ = spending[0]
        merged = [p for p in parts if p[0] != account_id]
        already = sum(p[2] for p in parts if p[0] == account_id)
        parts = [(account_id, kind, already + left), *merged]
    return parts


def sale_transfers(
    *,
    operation_id: str,
    accounts: Accounts,
    redemption: int,
    accrual_parts: Sequence[AccrualPartPlan],
    hold_timeout_s: int = 0,
    imported_time: datetime | None = None,
) -> tuple[list[PlannedTransfer], list[Posting]]:
    """The transfers of a sale: redemptions first, then accruals; holds when `hold_timeout_s`."""
    pending = hold_timeout_s > 0
    transfers: list[PlannedTransfer] = []
    postings: list[Posting] = []
    for index, (account_id, kind, amount) in enumerate(split_redemption(redemption, accounts.spending)):
        transfer_id = f"{operation_id}:redeem:{index}"
        transfers.append(
            PlannedTransfer(
                transfer_id=transfer_id,
                reason="REDEMPTION",
                debit_account_id=account_id,
                credit_account_id=accounts.redemption,
                amount=amount,
                pending=pending,
                timeout_s=hold_timeout_s,
            )
        )
        postings.append(Posting(transfer_id, Leg.REDEMPTION, account_id, kind, amount))
    for index, part in enumerate(p for p in accrual_parts if p.points > 0):
        account_id = accounts.earning[part.account_kind]
        transfer_id = f"{operation_id}:accrue:{index}"
        transfers.append(
            PlannedTransfer(
                transfer_id=transfer_id,
                reason="ACCRUAL",
                debit_account_id=accounts.issuance,
                credit_account_id=account_id,
                amount=part.points,
                pending=pending,
                timeout_s=hold_timeout_s,
                imported_time=imported_time,
                activation_time=part.activation_time,
                expiry_time=part.expire_time,
                no_expiry=part.expire_time is None,
            )
        )
        postings.append(Posting(transfer_id, Leg.ACCRUAL, account_id, part.account_kind, part.points))
    return transfers, postings


def capture_transfers(
    *,
    operation_id: str,
    holds: Sequence[Posting],
    redemption: int,
    accrual_parts: Sequence[AccrualPartPlan],
    accounts: Accounts,
) -> tuple[list[PlannedTransfer], list[Posting]]:
    """Post the holds of an authorization for the final amounts (never more than held), release
    the rest, and credit any accrual the final receipt earns beyond what was held."""
    transfers: list[PlannedTransfer] = []
    postings: list[Posting] = []
    redeem_left = redemption
    accrual_by_kind: dict[str, int] = {}
    for part in accrual_parts:
        accrual_by_kind[part.account_kind] = accrual_by_kind.get(part.account_kind, 0) + part.points
    for hold in holds:
        if hold.leg is Leg.REDEMPTION:
            amount = min(redeem_left, hold.amount)
            redeem_left -= amount
        else:
            amount = min(accrual_by_kind.get(hold.account_kind, 0), hold.amount)
            accrual_by_kind[hold.account_kind] = accrual_by_kind.get(hold.account_kind, 0) - amount
        suffix = hold.transfer_id.removeprefix(f"{operation_id}:")
        transfer_id = f"{operation_id}:capture:{suffix}"
        if amount > 0:
            transfers.append(
                PlannedTransfer(
                    transfer_id=transfer_id,
                    reason="",
                    amount=amount,
                    post_pending=True,
                    pending_transfer_id=hold.transfer_id,
                )
            )
            postings.append(replace(hold, transfer_id=transfer_id, amount=amount))
        else:
            transfers.append(
                PlannedTransfer(
                    transfer_id=transfer_id, reason="", void_pending=True, pending_transfer_id=hold.transfer_id
                )
            )
    if redeem_left > 0:
        raise ValueError("capture redeems more than was held")
    extra = [
        AccrualPartPlan(
            part.account_kind, accrual_by_kind.pop(part.account_kind), part.activation_time, part.expire_time
        )
        for part in accrual_parts
        if accrual_by_kind.get(part.account_kind, 0) > 0
    ]
    more, more_postings = sale_transfers(
        operation_id=f"{operation_id}:capture-extra", accounts=accounts, redemption=0, accrual_parts=extra
    )
    return transfers + more, postings + more_postings


def void_transfers(*, operation_id: str, holds: Sequence[Posting]) -> list[PlannedTransfer]:
    return [
        PlannedTransfer(
            transfer_id=f"{operation_id}:void:{hold.transfer_id.removeprefix(f'{operation_id}:')}",
            reason="",
            void_pending=True,
            pending_transfer_id=hold.transfer_id,
        )
        for hold in holds
    ]


def fill_sequentially(postings: Sequence[Posting], *, leg: Leg, cumulative: int) -> list[tuple[Posting, int]]:
    """How much of each posting of `leg` to reverse now so that `cumulative` is reversed in all:
    postings are filled in order, each up to its amount (see the module docstring)."""
    shares: list[tuple[Posting, int]] = []
    before = 0
    for posting in (p for p in postings if p.leg is leg):
        target = min(max(cumulative - before, 0), posting.amount)
        now = target - posting.reversed_amount
        if now < 0:
            raise ValueError(f"posting {posting.transfer_id} already reversed beyond the new total")
        shares.append((posting, now))
        before += posting.amount
    return shares


def refund_transfers(
    *,
    refund_operation_id: str,
    postings: Sequence[Posting],
    accounts: Accounts,
    accrual_reversed_total: int,
    redemption_restored_total: int,
    allow_debt: bool,
) -> tuple[list[PlannedTransfer], list[Posting]]:
    """Reversals bringing the purchase's cumulative reversed amounts to the given totals.
    Returns the transfers and the postings with their new reversed amounts. Redeemed points are
    given back before earned ones are taken back: in one linked chain the points restored count
    towards what the member can give back (RefundShortfallPolicy WITHIN_BALANCE)."""
    transfers: list[PlannedTransfer] = []
    updated: dict[str, Posting] = {}
    for leg, total in ((Leg.REDEMPTION, redemption_restored_total), (Leg.ACCRUAL, accrual_reversed_total)):
        for index, (posting, amount) in enumerate(fill_sequentially(postings, leg=leg, cumulative=total)):
            if amount == 0:
                continue
            accrual = leg is Leg.ACCRUAL
            transfers.append(
                PlannedTransfer(
                    transfer_id=f"{refund_operation_id}:{'unaccrue' if accrual else 'restore'}:{index}",
                    reason="ACCRUAL_REVERSAL" if accrual else "REDEMPTION_REVERSAL",
                    debit_account_id=posting.account_id if accrual else accounts.redemption,
                    credit_account_id=accounts.issuance if accrual else posting.account_id,
                    amount=amount,
                    reverses_transfer_id=posting.transfer_id,
                    allow_debt=allow_debt and accrual,
                )
            )
            updated[posting.transfer_id] = replace(posting, reversed_amount=posting.reversed_amount + amount)
    return transfers, [updated.get(p.transfer_id, p) for p in postings]
