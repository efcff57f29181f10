"""Paying with points: how many points a receipt may take, and where they land.

What it decides (RedemptionPolicy in program_admin.proto, Calculation/RedemptionLimit in
processing.proto):

1. Which lines may be paid with points. A line is excluded when the register flags it
   `redemption_excluded`, when its SKU or category is in the policy's exclusions, or when the
   policy's product mode leaves it out (SUBSET: only included SKUs/categories and members-only
   items; MEMBERS_ONLY_ITEMS: only members-only items).
2. Each eligible line's money cap: a members-only item up to its whole amount; any other line up
   to its amount minus `min_line_remainder`. Its point cap (LineCalculation.max_redeemable) is the
   most WHOLE minor point units whose value fits that cap: floor(cap * points / money). Points are
   never split below the point's minor unit, so a line cheaper than one point cannot take one
   (with 1 point = 1.00 and a 0.50 line, that line's cap is 0).
3. The receipt maximum (`max_redeemable`) is the smallest of
     ELIGIBLE_LINES  the sum of the line point caps;
     MAX_SHARE       members-only caps + the points worth floor(total * max_share_bp / 10000)
                     (the share applies to the other lines only, as the proto says members-only
                     items are exempt from it);
     MAX_POINTS      max_points_per_receipt;
     BALANCE         the member's spendable balance (when the caller knows it; None: not
                     limited here, the wallet refuses later if it must).
   On a tie the limit reported is the first of that list. If the maximum is below
   `min_points_per_receipt` nothing may be paid: max_redeemable becomes 0 and the limit that bound
   stays reported. Before all of these, gates give 0: NOT_ALLOWED (policy disabled, partner
   disabled, the caller's `redemption_blocked`, a phone-only identification under
   `require_card_or_qr`), NO_MEMBER, MIN_RECEIPT (total below `min_receipt_amount`). Gated
   receipts also report every line's max_redeemable as 0.
4. The request: `maximum` takes max_redeemable (never refused). A number of points is refused
   (redemption 0, `redemption_refusal` set, the accrual then computed without redemption) when a
   gate is closed (the caller's reason, else REDEMPTION_NOT_ALLOWED), when it is below
   min_points_per_receipt (REDEMPTION_NOT_ALLOWED, policy "min_points"), when it exceeds the
   balance (INSUFFICIENT_POINTS), or any other limit (REDEMPTION_NOT_ALLOWED, policy naming it).
5. Distribution: members-only items first (they are offered to be bought with points), then the
   other lines; within each group the points go by largest remainder in proportion to the line
   point caps, so no line gets more than its cap. Each group's money value is floor(points *
   money / points) (rounded down once per group) and is spread over its lines as floor(line
   points value) plus one minor unit to the lines with the largest fractional parts; a line's
   value therefore never exceeds its money cap. With a point worth a whole number of minor
   units (the usual case) every line's value is exactly its points' value.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

from shared.errors import Reason

from .arithmetic import distribute
from .receipts import Receipt, ReceiptLine
from .ruleset import (
    BP,
    OutletFacts,
    PointValue,
    RedeemableProducts,
    RedemptionLimit,
    RedemptionPolicy,
    RedemptionRequest,
)


class LineRedemption(NamedTuple):
    position: int
    excluded: bool
    max_redeemable: int
    redemption: int
    redemption_value: int


@dataclass(frozen=True)
class RedemptionOutcome:
    max_redeemable: int
    limit: RedemptionLimit
    redemption: int
    redemption_value: int
    refusal: Reason | None
    refusal_policy: str
    refusal_message: str
    lines: tuple[LineRedemption, ...]


class _Eligibility(NamedTuple):
    excluded: bool
    members_only: bool
    money_cap: int
    point_cap: int


@dataclass(frozen=True)
class _Gate:
    limit: RedemptionLimit
    reason: Reason
    policy: str
    message: str


def line_eligibility(policy: RedemptionPolicy, line: ReceiptLine) -> tuple[bool, bool]:
    """(excluded, members_only) for one line under the policy."""
    members_only = line.sku in policy.members_only_skus or line.category_id in policy.members_only_category_ids
    if line.redemption_excluded or line.sku in policy.excluded_skus or line.category_id in policy.excluded_category_ids:
        return True, members_only
    if policy.products is RedeemableProducts.MEMBERS_ONLY_ITEMS:
        return not members_only, members_only
    if policy.products is RedeemableProducts.SUBSET:
        included = line.sku in policy.included_skus or line.category_id in policy.included_category_ids
        return not (included or members_only), members_only
    return False, members_only


def _eligibility(policy: RedemptionPolicy, line: ReceiptLine) -> _Eligibility:
    excluded, members_only = line_eligibility(policy, line)
    if excluded:
        return _Eligibility(True, members_only, 0, 0)
    money_cap = line.amount if members_only else max(0, line.amount - policy.min_line_remainder)
    return _Eligibility(False, members_only, money_cap, policy.point_value.points_within(money_cap))


def redeem(
    policy: RedemptionPolicy,
    *,
    receipt: Receipt,
    outlet: OutletFacts,
    member_present: bool,
    request: RedemptionRequest,
    spendable_points: int | None,
    redemption_blocked: Reason | None,
    identified_by_card_or_qr: bool,
) -> RedemptionOutcome:
    lines = [_eligibility(policy, line) for line in receipt.lines]
    gate = _gate(
        policy,
        receipt=receipt,
        outlet=outlet,
        member_present=member_present,
        redemption_blocked=redemption_blocked,
        identified_by_card_or_qr=identified_by_card_or_qr,
    )
    if gate is not None:
        refused = request.points > 0
        return RedemptionOutcome(
            max_redeemable=0,
            limit=gate.limit,
            redemption=0,
            redemption_value=0,
            refusal=gate.reason if refused else None,
            refusal_policy=gate.policy if refused else "",
            refusal_message=gate.message if refused else "",
            lines=tuple(
                LineRedemption(line.position, e.excluded, 0, 0, 0) for line, e in zip(receipt.lines, lines, strict=True)
            ),
        )
    maximum, limit = _maximum(policy, receipt=receipt, lines=lines, spendable_points=spendable_points)
    points, refusal, refusal_policy, message = _requested(
        policy, request=request, maximum=maximum, limit=limit, spendable_points=spendable_points
    )
    placed = _place(policy.point_value, lines, points)
    return RedemptionOutcome(
        max_redeemable=maximum,
        limit=limit,
        redemption=points,
        redemption_value=sum(value for _, value in placed),
        refusal=refusal,
        refusal_policy=refusal_policy,
        refusal_message=message,
        lines=tuple(
            LineRedemption(line.position, e.excluded, e.point_cap, p, v)
            for line, e, (p, v) in zip(receipt.lines, lines, placed, strict=True)
        ),
    )


def _gate(
    policy: RedemptionPolicy,
    *,
    receipt: Receipt,
    outlet: OutletFacts,
    member_present: bool,
    redemption_blocked: Reason | None,
    identified_by_card_or_qr: bool,
) -> _Gate | None:
    not_allowed = RedemptionLimit.NOT_ALLOWED
    if not policy.enabled:
        return _Gate(not_allowed, Reason.REDEMPTION_NOT_ALLOWED, "disabled", "paying with points is disabled")
    if not outlet.redemption_enabled:
        return _Gate(not_allowed, Reason.REDEMPTION_NOT_ALLOWED, "partner", "this partner does not accept points")
    if redemption_blocked is not None:
        policy_name = "account" if redemption_blocked is not Reason.REDEMPTION_NOT_ALLOWED else "member"
        return _Gate(
            not_allowed, redemption_blocked, policy_name, f"paying with points is blocked ({redemption_blocked})"
        )
    if not member_present:
        return _Gate(
            RedemptionLimit.NO_MEMBER,
            Reason.REDEMPTION_NOT_ALLOWED,
            "no_member",
            "no member identified to pay with points",
        )
    if policy.require_card_or_qr and not identified_by_card_or_qr:
        return _Gate(
            not_allowed,
            Reason.REDEMPTION_NOT_ALLOWED,
            "identification",
            "paying with points needs a card or the app's QR code, not a phone number",
        )
    if policy.min_receipt_amount is not None and receipt.total < policy.min_receipt_amount:
        return _Gate(
            RedemptionLimit.MIN_RECEIPT,
            Reason.REDEMPTION_NOT_ALLOWED,
            "min_receipt",
            "the receipt is below the minimum amount for paying with points",
        )
    return None


def _maximum(
    policy: RedemptionPolicy, *, receipt: Receipt, lines: Sequence[_Eligibility], spendable_points: int | None
) -> tuple[int, RedemptionLimit]:
    members_only = sum(e.point_cap for e in lines if not e.excluded and e.members_only)
    regular = sum(e.point_cap for e in lines if not e.excluded and not e.members_only)
    candidates: list[tuple[int, RedemptionLimit]] = [(members_only + regular, RedemptionLimit.ELIGIBLE_LINES)]
    if 0 < policy.max_share_bp < BP:
        share_money = receipt.total * policy.max_share_bp // BP
        candidates.append((members_only + policy.point_value.points_within(share_money), RedemptionLimit.MAX_SHARE))
    if policy.max_points_per_receipt is not None:
        candidates.append((policy.max_points_per_receipt, RedemptionLimit.MAX_POINTS))
    if spendable_points is not None:
        candidates.append((max(0, spendable_points), RedemptionLimit.BALANCE))
    maximum = min(value for value, _ in candidates)
    limit = next(name for value, name in candidates if value == maximum)
    if maximum < policy.min_points_per_receipt:
        maximum = 0
    return maximum, limit


_LIMIT_POLICY = {
    RedemptionLimit.ELIGIBLE_LINES: ("eligible_lines", "the lines payable with points allow at most"),
    RedemptionLimit.MAX_SHARE: ("max_share", "the maximum share of the receipt payable with points is"),
    RedemptionLimit.MAX_POINTS: ("max_points", "at most this many points may be paid per receipt:"),
    RedemptionLimit.BALANCE: ("balance", "the balance allows at most"),
}


def _requested(
    policy: RedemptionPolicy,
    *,
    request: RedemptionRequest,
    maximum: int,
    limit: RedemptionLimit,
    spendable_points: int | None,
) -> tuple[int, Reason | None, str, str]:
    if request.maximum:
        return maximum, None, "", ""
    wanted = request.points
    if wanted == 0:
        return 0, None, "", ""
    if wanted < policy.min_points_per_receipt:
        message = f"at least {policy.min_points_per_receipt} points must be paid at once"
        return 0, Reason.REDEMPTION_NOT_ALLOWED, "min_points", message
    if wanted <= maximum:
        return wanted, None, "", ""
    if spendable_points is not None and wanted > spendable_points:
        return 0, Reason.INSUFFICIENT_POINTS, "balance", f"the balance is {max(0, spendable_points)} points"
    policy_name, text = _LIMIT_POLICY[limit]
    if maximum == 0 and policy.min_points_per_receipt:
        text = f"less than the minimum of {policy.min_points_per_receipt} points is payable; at most"
    return 0, Reason.REDEMPTION_NOT_ALLOWED, policy_name, f"{text} {maximum} points"


def _place(point_value: PointValue, lines: Sequence[_Eligibility], points: int) -> list[tuple[int, int]]:
    """(points, value) per line: members-only items first, then the rest (see module docstring)."""
    placed = [(0, 0)] * len(lines)
    remaining = points
    for members_only in (True, False):
        group = [i for i, e in enumerate(lines) if not e.excluded and e.members_only is members_only]
        caps = [lines[i].point_cap for i in group]
        take = min(remaining, sum(caps))
        remaining -= take
        if take == 0:
            continue
        shares = distribute(take, caps)
        values = _values(point_value, shares)
        for i, share, value in zip(group, shares, values, strict=True):
            placed[i] = (share, value)
    if remaining:
        raise ValueError("redemption above what the lines can take")  # _maximum guarantees it
    return placed


def _values(point_value: PointValue, shares: Sequence[int]) -> list[int]:
    """Line money values adding up to the group's value, each floor or ceil of its exact value."""
    total_value = point_value.money_of(sum(shares))
    exact = [share * point_value.money for share in shares]  # over point_value.points
    floors = [numerator // point_value.points for numerator in exact]
    missing = total_value - sum(floors)
    order = sorted(range(len(shares)), key=lambda i: (-(exact[i] % point_value.points), i))
    for i in order[:missing]:
        floors[i] += 1
    return floors
