"""Refund arithmetic: what a return of goods takes back and gives back, line by line.

What it decides (processing.proto, Refund / RefundLineResult / RefundTotals):

* `plan_refund`: each returned line's share of the original line's amount, accrual and redemption
  is floor(original * returned_quantity / original_quantity); the refund that returns the last of
  a line gets exactly what is left (original minus everything earlier refunds took). Hence any
  sequence of partial refunds adds up to the full refund, no share is ever negative, and the
  refunded totals never exceed the original. A quantity above what is left is
  REFUND_EXCEEDS_ORIGINAL (metadata `position`); an unknown position or a non-positive quantity is
  INVALID_ARGUMENT. `returned=None` (REFUND_MODE_FULL) returns everything not yet refunded; if
  nothing is left that is REFUND_EXCEEDS_ORIGINAL too.
* `apply_shortfall`: how much of the accrual share the member actually gives back.
  Reading of the proto: a line's accrual share splits into `accrual_reversed` (taken back from the
  member) + `accrual_forgiven` (the member keeps it); the two are disjoint and add up to the
  share. `takeable_points` is what the wallet can take without breaking the policy, computed by
  the caller:
    ONLY_PENDING    the points of this purchase's accrual lots that are still pending;
    WITHIN_BALANCE  those plus the member's spendable balance down to zero (include the points
                    this refund restores if the wallet applies restore and reversal together);
    ALLOW_DEBT      the same as WITHIN_BALANCE; what exceeds it is still taken back, creating a
                    debt, up to `debt_limit_points` (None: no limit) beyond which the rest is
                    forgiven, as the proto's fallback to WITHIN_BALANCE says.
  The forgiven points are spread over the refunded lines by largest remainder in proportion to
  their accrual shares (ties to the earlier line), so no line forgives more than its share.
* For the next refund, a line's `refunded_accrual` must be the SHARE settled so far (reversed +
  forgiven): forgiven points are settled, not owed later.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

from shared.errors import DomainError, FieldViolation, Reason

from .arithmetic import distribute
from .ruleset import PointValue, RefundShortfallPolicy


@dataclass(frozen=True)
class RefundableLine:
    """One line of the original purchase and what earlier refunds took from it."""

    position: int
    quantity_milli: int
    amount: int
    accrual: int
    redemption: int
    refunded_quantity_milli: int = 0
    refunded_amount: int = 0
    # The accrual share settled by earlier refunds: reversed + forgiven.
    refunded_accrual: int = 0
    refunded_redemption: int = 0

    def __post_init__(self) -> None:
        originals = (self.quantity_milli, self.amount, self.accrual, self.redemption)
        refunded = (self.refunded_quantity_milli, self.refunded_amount, self.refunded_accrual, self.refunded_redemption)
        if self.quantity_milli <= 0 or min(originals) < 0 or min(refunded) < 0:
            raise ValueError(f"line {self.position}: quantities and amounts must not be negative")
        if any(done > total for done, total in zip(refunded, originals, strict=True)):
            raise ValueError(f"line {self.position}: earlier refunds exceed the original")

    @property
    def remaining_quantity_milli(self) -> int:
        return self.quantity_milli - self.refunded_quantity_milli


@dataclass(frozen=True)
class RefundLinePlan:
    position: int
    quantity_milli: int
    amount: int
    # Taken back from the member now.
    accrual_reversed: int
    # The part of the line's accrual share the member keeps (see apply_shortfall).
    accrual_forgiven: int
    redemption_restored: int
    remaining_quantity_milli: int

    @property
    def accrual_share(self) -> int:
        return self.accrual_reversed + self.accrual_forgiven


@dataclass(frozen=True)
class RefundTotals:
    amount: int = 0
    accrual_reversed: int = 0
    accrual_forgiven: int = 0
    redemption_restored: int = 0


@dataclass(frozen=True)
class RefundPlan:
    lines: tuple[RefundLinePlan, ...]
    # True when no line has anything left after this refund (the original becomes REFUNDED).
    completes_purchase: bool
    # Points by which this refund takes the member below zero (ALLOW_DEBT only).
    debt_created: int = 0

    @property
    def totals(self) -> RefundTotals:
        return RefundTotals(
            amount=sum(line.amount for line in self.lines),
            accrual_reversed=sum(line.accrual_reversed for line in self.lines),
            accrual_forgiven=sum(line.accrual_forgiven for line in self.lines),
            redemption_restored=sum(line.redemption_restored for line in self.lines),
        )

    @property
    def accrual_share(self) -> int:
        return sum(line.accrual_share for line in self.lines)


def plan_refund(lines: Sequence[RefundableLine], *, returned: Mapping[int, int] | None) -> RefundPlan:
    """The shares of a refund of `returned` (position -> quantity_milli; None: everything left)."""
    by_position = {line.position: line for line in lines}
    if len(by_position) != len(lines):
        raise ValueError("refundable lines must have unique positions")
    if returned is None:
        wanted = {line.position: line.remaining_quantity_milli for line in lines if line.remaining_quantity_milli > 0}
        if not wanted:
            raise DomainError(Reason.REFUND_EXCEEDS_ORIGINAL, "the purchase is already fully refunded")
    else:
        _check_request(by_position, returned)
        wanted = dict(returned)
    planned = tuple(
        _line_share(line, wanted[line.position]) for line in lines if line.position in wanted
    )  # receipt order
    left = {line.position: line.remaining_quantity_milli for line in lines}
    for plan in planned:
        left[plan.position] = plan.remaining_quantity_milli
    return RefundPlan(lines=planned, completes_purchase=not any(left.values()))


def _check_request(by_position: Mapping[int, RefundableLine], returned: Mapping[int, int]) -> None:
    if not returned:
        raise DomainError(
            Reason.INVALID_ARGUMENT,
            "a refund by lines needs at least one line",
            violations=[FieldViolation("lines", "must not be empty with REFUND_MODE_LINES")],
        )
    violations = []
    bad: list[int] = []
    for position, quantity in returned.items():
        if position not in by_position:
            violations.append(FieldViolation("lines", f"position {position} is not a line of the original receipt"))
            bad.append(position)
        elif quantity <= 0:
            violations.append(FieldViolation("lines", f"position {position}: quantity_milli must be positive"))
            bad.append(position)
    if violations:
        raise DomainError(
            Reason.INVALID_ARGUMENT,
            "; ".join(v.description for v in violations),
            metadata={"position": str(bad[0])},
            violations=violations,
        )
    for position, quantity in returned.items():
        line = by_position[position]
        if quantity > line.remaining_quantity_milli:
            raise DomainError(
                Reason.REFUND_EXCEEDS_ORIGINAL,
                f"line {position}: {quantity} returned but only {line.remaining_quantity_milli} left to refund",
                metadata={"position": str(position)},
            )


def _line_share(line: RefundableLine, quantity: int) -> RefundLinePlan:
    last = quantity == line.remaining_quantity_milli

    def share(original: int, refunded: int) -> int:
        left = original - refunded
        if last:
            return left
        # Earlier refunds may have been rounded by another rule; never take more than is left.
        return min(original * quantity // line.quantity_milli, left)

    return RefundLinePlan(
        position=line.position,
        quantity_milli=quantity,
        amount=share(line.amount, line.refunded_amount),
        accrual_reversed=share(line.accrual, line.refunded_accrual),
        accrual_forgiven=0,
        redemption_restored=share(line.redemption, line.refunded_redemption),
        remaining_quantity_milli=line.remaining_quantity_milli - quantity,
    )


def apply_shortfall(
    plan: RefundPlan,
    *,
    policy: RefundShortfallPolicy,
    takeable_points: int,
    debt_limit_points: int | None = None,
) -> RefundPlan:
    """Splits the plan's accrual shares into reversed and forgiven (see the module docstring)."""
    if takeable_points < 0 or (debt_limit_points is not None and debt_limit_points < 0):
        raise ValueError("takeable_points and debt_limit_points must not be negative")
    shares = [line.accrual_share for line in plan.lines]
    total = sum(shares)
    taken = min(total, takeable_points)
    debt = 0
    if policy is RefundShortfallPolicy.ALLOW_DEBT:
        room = total - taken if debt_limit_points is None else min(total - taken, debt_limit_points)
        debt = room
        taken += room
    forgiven = distribute(total - taken, shares)
    lines = tuple(
        replace(line, accrual_reversed=share - kept, accrual_forgiven=kept)
        for line, share, kept in zip(plan.lines, shares, forgiven, strict=True)
    )
    return RefundPlan(lines=lines, completes_purchase=plan.completes_purchase, debt_created=debt)


def redemption_value_restored(plan: RefundPlan, *, point_value: PointValue) -> int:
    """RefundDetails.redemption_value_restored: the restored points at the original point value,
    rounded down, never above the returned goods' amount."""
    totals = plan.totals
    return min(point_value.money_of(totals.redemption_restored), totals.amount)


def money_to_return(plan: RefundPlan, *, point_value: PointValue) -> int:
    """RefundDetails.money_to_return: the returned amount minus the value given back as points."""
    return plan.totals.amount - redemption_value_restored(plan, point_value=point_value)
