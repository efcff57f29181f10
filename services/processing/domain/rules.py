"""The rules engine's entry points: what a receipt earns and what may be paid with points.

What it decides: `calculate` turns a receipt, the outlet and the member (or none) at an
operation time into a `Calculation` (the domain twin of processing_pb2.Calculation);
`spend_windows` tells the flow which cumulative-spend windows to load before calling it.

How the two halves fit (the details are in the docstrings of redemption.py and accrual.py):
1. Redemption first: the maximum payable, the requested (or maximum) points, their money value
   and their distribution over the lines. A refused request (Calculate's `redemption_refusal`)
   leaves redemption at zero.
2. Accrual second, on line amounts minus their redemption value when the accrual base is
   PAID_WITH_MONEY (points paid with points earn nothing), on full amounts otherwise.
3. The result is assembled and checked: accrual = sum of accrual parts = sum of line accruals =
   sum of applied rules; per line, accrual = sum of accrual_by_rule; redemption and its value =
   sums over lines (Calculation.__post_init__ raises on any violation).

Decisions the flow must know:
* `redemption_blocked` is a reason the caller already knows (ACCOUNT_FROZEN, or
  REDEMPTION_NOT_ALLOWED e.g. redemption disabled for the member or anti-fraud degradation);
  `identified_by_card_or_qr=False` (a phone-only identification) lets the engine apply
  RedemptionPolicy.require_card_or_qr itself (policy "identification"). The engine still computes
  the accrual for a frozen account: refusing the whole operation is the flow's decision.
* `spendable_points=None` with a member means "balance unknown here": the balance does not limit
  max_redeemable, and the wallet's own check refuses an overdraft later.
* The operation time `at` (the original time for offline operations) drives rule validity,
  campaigns, weekday and time of day (outlet's zone), cumulative windows and lot times (program's
  zone). The register's `issue_time` only feeds the CEL variable receipt.issue_time (`at` when the
  register did not send it).
"""

from __future__ import annotations

from datetime import datetime

from shared.errors import Reason

from .accrual import accrue, spend_window
from .conditions import ConditionError, compile_condition
from .receipts import Channel, Receipt, ReceiptLine
from .redemption import redeem
from .ruleset import (
    AccrualBase,
    AccrualPart,
    AccrualPolicy,
    AppliedRule,
    Calculation,
    Campaign,
    CampaignState,
    CumulativePeriod,
    EarningRule,
    ExpiryRounding,
    FixedReward,
    LineCalculation,
    MemberFacts,
    OutletFacts,
    PercentReward,
    PerItemReward,
    PointsLifetime,
    PointValue,
    ProgressiveBasis,
    ProgressiveMethod,
    ProgressiveReward,
    ProgressiveTier,
    RedeemableProducts,
    RedemptionLimit,
    RedemptionPolicy,
    RedemptionRequest,
    RefundPolicy,
    RefundShortfallPolicy,
    Reward,
    RewardType,
    RoundingMode,
    RuleAccrual,
    RuleSet,
    RuleSkipReason,
    RuleTarget,
    SkippedRule,
    SpendWindow,
    StackingMode,
    TimeOfDayRange,
)

__all__ = [
    "AccrualBase",
    "AccrualPart",
    "AccrualPolicy",
    "AppliedRule",
    "Calculation",
    "Campaign",
    "CampaignState",
    "Channel",
    "ConditionError",
    "CumulativePeriod",
    "EarningRule",
    "ExpiryRounding",
    "FixedReward",
    "LineCalculation",
    "MemberFacts",
    "OutletFacts",
    "PerItemReward",
    "PercentReward",
    "PointValue",
    "PointsLifetime",
    "ProgressiveBasis",
    "ProgressiveMethod",
    "ProgressiveReward",
    "ProgressiveTier",
    "Receipt",
    "ReceiptLine",
    "RedeemableProducts",
    "RedemptionLimit",
    "RedemptionPolicy",
    "RedemptionRequest",
    "RefundPolicy",
    "RefundShortfallPolicy",
    "Reward",
    "RewardType",
    "RoundingMode",
    "RuleAccrual",
    "RuleSet",
    "RuleSkipReason",
    "RuleTarget",
    "SkippedRule",
    "SpendWindow",
    "StackingMode",
    "TimeOfDayRange",
    "calculate",
    "compile_condition",
    "spend_windows",
]


def spend_windows(rule_set: RuleSet, *, outlet: OutletFacts, at: datetime) -> frozenset[SpendWindow]:
    """The windows the cumulative progressive rules in force at `at` at this outlet need.

    Dates are local to the program's time zone. Receipt-level targeting (channel, time of day,
    products) is not known yet, so every cumulative rule in force for the partner counts.
    """
    if not outlet.accrual_enabled:
        return frozenset()
    local_day = at.astimezone(rule_set.zone).date()
    return frozenset(
        spend_window(rule.reward, local_day=local_day)
        for rule in rule_set.rules_in_force(partner_id=outlet.partner_id, at=at)
        if isinstance(rule.reward, ProgressiveReward) and rule.reward.basis is ProgressiveBasis.CUMULATIVE
    )


def calculate(
    rule_set: RuleSet,
    *,
    receipt: Receipt,
    outlet: OutletFacts,
    member: MemberFacts | None,
    at: datetime,
    redemption: RedemptionRequest,
    spendable_points: int | None,
    redemption_blocked: Reason | None,
    identified_by_card_or_qr: bool = True,
) -> Calculation:
    """What the rule set makes of the receipt at `at` (pure; see the module docstring)."""
    if at.tzinfo is None:
        raise ValueError("`at` must be timezone-aware")
    paid = redeem(
        rule_set.redemption,
        receipt=receipt,
        outlet=outlet,
        member_present=member is not None,
        request=redemption,
        spendable_points=spendable_points,
        redemption_blocked=redemption_blocked,
        identified_by_card_or_qr=identified_by_card_or_qr,
    )
    earned = accrue(
        rule_set,
        receipt=receipt,
        outlet=outlet,
        member=member,
        at=at,
        redemption_values={line.position: line.redemption_value for line in paid.lines},
    )
    lines = tuple(
        LineCalculation(
            position=line.position,
            accrual=_points_of(earned.line_rules[line.position]),
            accrual_by_rule=earned.line_rules[line.position],
            max_redeemable=paid_line.max_redeemable,
            redemption=paid_line.redemption,
            redemption_value=paid_line.redemption_value,
            amount_due=line.amount - paid_line.redemption_value,
            accrual_excluded=line.accrual_excluded,
            redemption_excluded=paid_line.excluded,
        )
        for line, paid_line in zip(receipt.lines, paid.lines, strict=True)
    )
    return Calculation(
        rule_set_version=rule_set.version,
        accrual=sum(part.points for part in earned.parts),
        accrual_parts=earned.parts,
        max_redeemable=paid.max_redeemable,
        max_redeemable_limit=paid.limit,
        redemption=paid.redemption,
        redemption_value=paid.redemption_value,
        amount_due=receipt.total - paid.redemption_value,
        redemption_refusal=paid.refusal,
        redemption_refusal_policy=paid.refusal_policy,
        redemption_refusal_message=paid.refusal_message,
        lines=lines,
        applied_rules=earned.applied,
        skipped_rules=earned.skipped,
        slip_lines=earned.slip_lines,
    )


def _points_of(items: tuple[RuleAccrual, ...]) -> int:
    total = 0
    for item in items:
        total += item.points
    return total


def validate_condition(text: str) -> str | None:
    """None when `text` is an acceptable rule condition, else the message to show."""
    try:
        compile_condition(text)
    except ConditionError as error:
        return str(error)
    return None
