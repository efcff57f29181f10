"""Properties of `calculate` over generated rule sets, receipts and redemptions (hypothesis).

* The per-line accruals add up to the total, and per rule the lines' RuleAccruals add up to
  AppliedRule.points (and name exactly AppliedRule.positions).
* Exclusive rules and exclusivity groups hold per line; excluded lines never earn; caps hold.
* Redemption stays within every line's cap and the receipt's maximum, and its value adds up.
* Against a reference model (plain Fractions): with stackable untargeted percent rules each
  rule's points are the rounded sum of base x rate over the lines, and every line's share is the
  floor or ceiling of its exact proportional share.
"""

from __future__ import annotations

import math
from fractions import Fraction

from hypothesis import given, settings
from hypothesis import strategies as st

from services.processing.domain.rules import (
    AccrualBase,
    AccrualPolicy,
    Calculation,
    Channel,
    EarningRule,
    FixedReward,
    PercentReward,
    PerItemReward,
    PointValue,
    ProgressiveBasis,
    ProgressiveMethod,
    ProgressiveReward,
    ProgressiveTier,
    Receipt,
    ReceiptLine,
    RedemptionPolicy,
    Reward,
    RoundingMode,
    RuleSet,
    RuleTarget,
    StackingMode,
    spend_windows,
)
from tests.unit.processing.builders import AT, OUTLET, member, rule, rule_set, run

SKUS = ["A", "B", "C", "D"]
CATEGORIES = ["DAIRY", "BREAD", "TOBACCO"]
ROUNDING = st.sampled_from(list(RoundingMode))
POINT_VALUES = st.sampled_from(
    [PointValue(points=1, money=100), PointValue(points=100, money=100), PointValue(points=3, money=100)]
)


@st.composite
def rewards(draw: st.DrawFn) -> Reward:
    kind = draw(st.sampled_from(["percent", "fixed", "per_item", "progressive"]))
    if kind == "percent":
        return PercentReward(rate_bp=draw(st.integers(1, 100_000)))
    if kind == "fixed":
        return FixedReward(points=draw(st.integers(1, 10_000)))
    if kind == "per_item":
        return PerItemReward(points_per_unit=draw(st.integers(1, 500)))
    thresholds = sorted(draw(st.sets(st.integers(0, 500_000), min_size=1, max_size=4)))
    tiers = tuple(ProgressiveTier(threshold=t, rate_bp=draw(st.integers(0, 3000))) for t in thresholds)
    return ProgressiveReward(
        tiers=tiers,
        basis=draw(st.sampled_from(list(ProgressiveBasis))),
        method=draw(st.sampled_from(list(ProgressiveMethod))),
    )


@st.composite
def earning_rules(draw: st.DrawFn, index: int) -> EarningRule:
    skus = draw(st.sets(st.sampled_from(SKUS), max_size=2))
    categories = draw(st.sets(st.sampled_from(CATEGORIES), max_size=2))
    return rule(
        f"R{index}",
        draw(rewards()),
        priority=draw(st.integers(-3, 3)),
        stacking=draw(st.sampled_from(list(StackingMode))),
        exclusivity_group=draw(st.sampled_from(["", "", "G1", "G2"])),
        target=RuleTarget(
            skus=frozenset(skus),
            category_ids=frozenset(categories),
            excluded_skus=frozenset(draw(st.sets(st.sampled_from(SKUS), max_size=1))),
        ),
        min_eligible_amount=draw(st.none() | st.integers(0, 200_000)),
        max_points_per_receipt=draw(st.none() | st.integers(1, 2_000)),
    )


@st.composite
def rule_sets(draw: st.DrawFn) -> RuleSet:
    count = draw(st.integers(0, 6))
    return rule_set(
        *(draw(earning_rules(index)) for index in range(count)),
        accrual=AccrualPolicy(
            base=draw(st.sampled_from(list(AccrualBase))),
            rounding=draw(ROUNDING),
        ),
        redemption=RedemptionPolicy(
            enabled=True,
            point_value=draw(POINT_VALUES),
            max_share_bp=draw(st.sampled_from([0, 5000, 9000])),
            min_line_remainder=draw(st.sampled_from([0, 1, 100])),
            members_only_skus=frozenset(draw(st.sets(st.sampled_from(SKUS), max_size=1))),
        ),
    )


@st.composite
def receipts(draw: st.DrawFn) -> Receipt:
    count = draw(st.integers(1, 6))
    lines = tuple(
        ReceiptLine(
            position=position,
            sku=draw(st.sampled_from(SKUS)),
            category_id=draw(st.sampled_from(CATEGORIES)),
            quantity_milli=draw(st.integers(1, 5000)),
            amount=draw(st.integers(0, 300_000)),
            accrual_excluded=draw(st.booleans()),
            redemption_excluded=draw(st.booleans()),
        )
        for position in range(1, count + 1)
    )
    return Receipt(lines=lines, total=sum(line.amount for line in lines), channel=Channel.POS)


def calculate(rules: RuleSet, the_receipt: Receipt, points: int, maximum: bool, spend: int) -> Calculation:
    windows = spend_windows(rules, outlet=OUTLET, at=AT)
    return run(
        rules,
        the_receipt,
        the_member=member(spend={window: spend for window in windows}),
        points=points,
        maximum=maximum,
        spendable=50_000,
    )


@settings(max_examples=400, deadline=None)
@given(
    rules=rule_sets(),
    the_receipt=receipts(),
    points=st.integers(0, 5_000),
    maximum=st.booleans(),
    spend=st.integers(0, 1_000_000),
)
def test_calculation_invariants(rules: RuleSet, the_receipt: Receipt, points: int, maximum: bool, spend: int) -> None:
    calculation = calculate(rules, the_receipt, 0 if maximum else points, maximum, spend)
    lines = {line.position: line for line in calculation.lines}
    assert sum(line.accrual for line in calculation.lines) == calculation.accrual
    assert sum(part.points for part in calculation.accrual_parts) == calculation.accrual
    by_id = {r.rule_id: r for r in rules.rules}
    for applied in calculation.applied_rules:
        given_points = {
            position: item.points
            for position, line in lines.items()
            for item in line.accrual_by_rule
            if item.rule_id == applied.rule_id
        }
        assert sum(given_points.values()) == applied.points > 0
        assert tuple(sorted(given_points)) == applied.positions
        assert all(value > 0 for value in given_points.values())
        cap = by_id[applied.rule_id].max_points_per_receipt
        assert cap is None or applied.points <= cap
    order = [applied.rule_id for applied in calculation.applied_rules]
    for line in calculation.lines:
        source = the_receipt.line(line.position)
        if source.accrual_excluded:
            assert line.accrual == 0
        rule_ids = [item.rule_id for item in line.accrual_by_rule]
        assert rule_ids == sorted(rule_ids, key=order.index)  # evaluation order
        for index, rule_id in enumerate(rule_ids):
            if by_id[rule_id].stacking is StackingMode.EXCLUSIVE:
                assert index == len(rule_ids) - 1, "an exclusive rule's line got points from a later rule"
        groups = [by_id[rule_id].exclusivity_group for rule_id in rule_ids if by_id[rule_id].exclusivity_group]
        assert len(groups) == len(set(groups))
        assert 0 <= line.redemption <= line.max_redeemable
        assert 0 <= line.redemption_value <= source.amount
        assert line.amount_due == source.amount - line.redemption_value
    assert calculation.redemption <= calculation.max_redeemable
    assert sum(line.redemption for line in calculation.lines) == calculation.redemption
    assert sum(line.redemption_value for line in calculation.lines) == calculation.redemption_value
    if maximum:
        assert calculation.redemption == calculation.max_redeemable
    elif calculation.redemption_refusal is None:
        assert calculation.redemption == points
    else:
        assert calculation.redemption == 0 and points > calculation.max_redeemable


@settings(max_examples=300, deadline=None)
@given(
    rates=st.lists(st.integers(1, 100_000), min_size=1, max_size=3),
    caps=st.lists(st.none() | st.integers(1, 500), min_size=3, max_size=3),
    rounding=ROUNDING,
    point_value=POINT_VALUES,
    the_receipt=receipts(),
    base=st.sampled_from(list(AccrualBase)),
    points=st.integers(0, 3_000),
)
def test_percent_rules_match_a_reference_model(
    rates: list[int],
    caps: list[int | None],
    rounding: RoundingMode,
    point_value: PointValue,
    the_receipt: Receipt,
    base: AccrualBase,
    points: int,
) -> None:
    rules = rule_set(
        *(rule(f"P{i}", PercentReward(rate_bp=rate), max_points_per_receipt=caps[i]) for i, rate in enumerate(rates)),
        accrual=AccrualPolicy(base=base, rounding=rounding),
        redemption=RedemptionPolicy(enabled=True, point_value=point_value),
    )
    calculation = run(rules, the_receipt, points=points)
    paid = {line.position: line.redemption_value for line in calculation.lines}
    bases = {
        line.position: 0
        if line.accrual_excluded
        else line.amount - (paid[line.position] if base is AccrualBase.PAID_WITH_MONEY else 0)
        for line in the_receipt.lines
    }
    applied = {r.rule_code: r for r in calculation.applied_rules}
    for i, rate in enumerate(rates):
        exact = {
            position: Fraction(amount * rate * point_value.points, 10_000 * point_value.money)
            for position, amount in bases.items()
        }
        total = _round(sum(exact.values(), Fraction(0)), rounding)
        cap = caps[i]
        expected = total if cap is None else min(total, cap)
        got = applied.get(f"P{i}")
        assert (got.points if got else 0) == expected
        if got is None or expected == 0:
            continue
        exact_sum = sum(exact.values(), Fraction(0))
        for line in calculation.lines:
            share = sum(item.points for item in line.accrual_by_rule if item.rule_id == f"id-P{i}")
            ideal = expected * exact[line.position] / exact_sum
            assert math.floor(ideal) <= share <= math.ceil(ideal)


def _round(value: Fraction, mode: RoundingMode) -> int:
    floor = math.floor(value)
    if value == floor or mode is RoundingMode.DOWN:
        return floor
    if mode is RoundingMode.UP:
        return floor + 1
    return floor + 1 if value - floor >= Fraction(1, 2) else floor
