"""Refunds and cancels of a captured purchase: from the stored purchase to the plan (mapping).

The arithmetic lives in domain/refunds.py (line shares, shortfall policy) and
domain/operations.py (the reversal transfers); this module reads the stored purchase into those
and builds the protos a refund records and returns. No I/O: the flow passes in what the wallet
said (pending lots, balances, the kind's debt limit).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from loyalty.common.v1 import types_pb2
from loyalty.processing.v1 import processing_pb2 as p
from loyalty.wallet.v1 import wallet_pb2

from services.processing import rulesets
from services.processing.domain import operations as ops
from services.processing.domain import refunds
from services.processing.domain.operations import Leg, OperationState, OperationType, Posting
from services.processing.domain.ruleset import RefundShortfallPolicy
from services.processing.store.operations import OperationRow
from shared.errors import DomainError, Reason

# Per receipt position, what refunds took so far (the purchase's `refunded` column).
Refunded = dict[int, dict[str, int]]


@dataclass(frozen=True)
class WalletFacts:
    """What the wallet says about the member when a refund is planned."""

    # transfer id -> what is left of its lot while still PENDING.
    pending_lots: Mapping[str, int]
    # account id -> available balance.
    available: Mapping[str, int]
    # How far below zero the refund may go: None = no limit, 0 = not at all.
    debt_limit: int | None


@dataclass(frozen=True)
class RefundDraft:
    plan: refunds.RefundPlan
    # The policy that applied (ALLOW_DEBT falls back to WITHIN_BALANCE where debt is not allowed).
    policy: RefundShortfallPolicy
    transfers: list[ops.PlannedTransfer]
    # The purchase's postings and refunded lines once the refund has applied.
    postings_after: list[Posting]
    refunded_after: Refunded


def check_refundable(row: OperationRow) -> None:
    """Refunds apply to captured purchases only; the refusal names what to do instead."""
    if row.type is not OperationType.PURCHASE:
        raise DomainError(Reason.INVALID_STATE_TRANSITION, "only a purchase can be refunded")
    if row.state in ops.REFUNDABLE:
        return
    if row.state is OperationState.PROCESSING:
        raise DomainError(Reason.REQUEST_IN_PROGRESS, "the purchase is still being processed; retry shortly")
    if row.state is OperationState.AUTHORIZED:
        raise DomainError(Reason.INVALID_STATE_TRANSITION, "the purchase is only authorized: void it instead")
    if row.state is OperationState.REFUNDED:
        raise DomainError(Reason.REFUND_EXCEEDS_ORIGINAL, "the purchase is already fully refunded")
    raise DomainError(Reason.INVALID_STATE_TRANSITION, f"a {row.state.name.lower()} purchase cannot be refunded")


def refundable_lines(row: OperationRow, purchase: p.Operation) -> list[refunds.RefundableLine]:
    receipt = types_pb2.Receipt()
    receipt.ParseFromString(row.receipt or b"")
    taken = [
        p.RefundLineResult(
            position=position,
            quantity_milli=totals["quantity_milli"],
            amount=types_pb2.Money(amount_minor=totals["amount"]),
            accrual_reversed=types_pb2.Points(amount_minor=totals["accrual"]),
            redemption_restored=types_pb2.Points(amount_minor=totals["redemption"]),
        )
        for position, totals in row.refunded.items()
    ]
    return rulesets.refundable_lines(receipt, purchase.purchase.calculation, [taken])


def takeable_points(
    postings: Sequence[Posting], plan: refunds.RefundPlan, facts: WalletFacts, policy: RefundShortfallPolicy
) -> int:
    """What the member can give back of the accrual without going below zero (see
    domain/refunds.apply_shortfall): the purchase's own lots still pending, and under
    WITHIN_BALANCE and ALLOW_DEBT the available balance plus what this refund gives back first."""
    accruals = [posting for posting in postings if posting.leg is Leg.ACCRUAL]
    pending = sum(facts.pending_lots.get(posting.transfer_id, 0) for posting in accruals)
    if policy is RefundShortfallPolicy.ONLY_PENDING:
        return pending
    accounts = {posting.account_id for posting in accruals}
    available = sum(max(facts.available.get(account, 0), 0) for account in accounts)
    restoring = _cumulative(postings, Leg.REDEMPTION, plan.totals.redemption_restored)
    restored_here = sum(
        amount
        for posting, amount in ops.fill_sequentially(postings, leg=Leg.REDEMPTION, cumulative=restoring)
        if posting.account_id in accounts
    )
    return pending + available + restored_here


def _cumulative(postings: Sequence[Posting], leg: Leg, now: int) -> int:
    return sum(posting.reversed_amount for posting in postings if posting.leg is leg) + now


def draft_refund(
    row: OperationRow,
    purchase: p.Operation,
    *,
    returned: Mapping[int, int] | None,
    refund_operation_id: str,
    rule_set: object,
    facts: WalletFacts | None,
    accounts: ops.Accounts,
) -> RefundDraft:
    """The refund of `returned` (None: everything left) of the purchase in `row`.
    `facts` may be None only when the refund takes back no accrual."""
    plan = refunds.plan_refund(refundable_lines(row, purchase), returned=returned)
    policy = RefundShortfallPolicy(rule_set.refund.shortfall_policy)  # type: ignore[attr-defined]
    if plan.accrual_share:
        if facts is None:
            raise ValueError("a refund that takes back points needs the wallet's facts")
        debt_room: int | None = None
        if policy is RefundShortfallPolicy.ALLOW_DEBT:
            if facts.debt_limit == 0:  # the kind allows no debt: WITHIN_BALANCE (processing.proto)
                policy = RefundShortfallPolicy.WITHIN_BALANCE
            elif facts.debt_limit is not None:
                debt_room = max(facts.debt_limit - _debt(row.postings, facts), 0)
        plan = refunds.apply_shortfall(
            plan,
            policy=policy,
            takeable_points=takeable_points(row.postings, plan, facts, policy),
            debt_limit_points=debt_room,
        )
    totals = plan.totals
    transfers, postings_after = ops.refund_transfers(
        refund_operation_id=refund_operation_id,
        postings=row.postings,
        accounts=accounts,
        accrual_reversed_total=_cumulative(row.postings, Leg.ACCRUAL, totals.accrual_reversed),
        redemption_restored_total=_cumulative(row.postings, Leg.REDEMPTION, totals.redemption_restored),
        allow_debt=plan.debt_created > 0,
    )
    return RefundDraft(plan, policy, transfers, postings_after, refunded_after(row.refunded, plan))


def _debt(postings: Sequence[Posting], facts: WalletFacts) -> int:
    accounts = {posting.account_id for posting in postings if posting.leg is Leg.ACCRUAL}
    return sum(max(-facts.available.get(account, 0), 0) for account in accounts)


def refunded_after(refunded: Mapping[int, Mapping[str, int]], plan: refunds.RefundPlan) -> Refunded:
    after = {position: dict(totals) for position, totals in refunded.items()}
    for line in plan.lines:
        totals = after.setdefault(line.position, {"quantity_milli": 0, "amount": 0, "accrual": 0, "redemption": 0})
        totals["quantity_milli"] += line.quantity_milli
        totals["amount"] += line.amount
        totals["accrual"] += line.accrual_share  # reversed + forgiven: both are settled
        totals["redemption"] += line.redemption_restored
    return after


def fully_refunded(receipt_bytes: bytes | None, refunded: Mapping[int, Mapping[str, int]]) -> bool:
    receipt = types_pb2.Receipt()
    receipt.ParseFromString(receipt_bytes or b"")
    return all(
        refunded.get(line.position, {}).get("quantity_milli", 0) >= line.quantity_milli for line in receipt.lines
    )


def projected_balances(
    views: Sequence[wallet_pb2.AccountBalanceView], transfers: Sequence[ops.PlannedTransfer], pending: Mapping[str, int]
) -> list[types_pb2.AccountBalance]:
    """The member's balances as a dry-run refund would leave them: restored points become
    available; reversed points come out of the purchase's own pending lots first, then out of
    the available balance (as the wallet takes them)."""
    by_account = {}
    for view in views:
        balance = types_pb2.AccountBalance()
        balance.CopyFrom(view.balance)
        by_account[balance.account_id] = balance
    pending_left = dict(pending)
    for transfer in transfers:
        if transfer.reason == "REDEMPTION_REVERSAL" and transfer.credit_account_id in by_account:
            by_account[transfer.credit_account_id].available.amount_minor += transfer.amount
        elif transfer.reason == "ACCRUAL_REVERSAL" and transfer.debit_account_id in by_account:
            balance = by_account[transfer.debit_account_id]
            lot = transfer.reverses_transfer_id
            from_pending = min(pending_left.get(lot, 0), transfer.amount)
            pending_left[lot] = pending_left.get(lot, 0) - from_pending
            balance.pending.amount_minor -= from_pending
            balance.available.amount_minor -= transfer.amount - from_pending
    return list(by_account.values())
