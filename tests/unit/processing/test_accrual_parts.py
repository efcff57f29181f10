"""Where earned points go and for how long: accrual parts, lot times, slip lines, explanations."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest

from services.processing.domain.accrual import birthday_distances, lot_times
from services.processing.domain.rules import (
    AccrualPart,
    AccrualPolicy,
    ExpiryRounding,
    FixedReward,
    PercentReward,
    PointsLifetime,
    ProgressiveBasis,
    ProgressiveReward,
    ProgressiveTier,
    RuleTarget,
    SpendWindow,
    StackingMode,
)
from tests.unit.processing.builders import AT, line, member, outlet, receipt, rule, rule_set, run

PROMO = PointsLifetime(
    pending_period=timedelta(days=14), expire_after=timedelta(days=30), expiry_rounding=ExpiryRounding.END_OF_DAY
)


@pytest.mark.parametrize(
    ("lifetime", "activation", "expiry"),
    [
        (PointsLifetime(), AT, None),
        (PointsLifetime(pending_period=timedelta(days=14)), datetime(2024, 5, 29, 9, tzinfo=UTC), None),
        (
            PointsLifetime(expire_after=timedelta(days=30)),
            AT,
            datetime(2024, 6, 14, 9, tzinfo=UTC),
        ),
        # 2024-06-28 12:00 in Moscow -> the end of that local day, 2024-06-29 00:00 MSK.
        (PROMO, datetime(2024, 5, 29, 9, tzinfo=UTC), datetime(2024, 6, 28, 21, tzinfo=UTC)),
        (
            PointsLifetime(
                pending_period=timedelta(days=14),
                expire_after=timedelta(days=30),
                expiry_rounding=ExpiryRounding.END_OF_MONTH,
            ),
            datetime(2024, 5, 29, 9, tzinfo=UTC),
            datetime(2024, 6, 30, 21, tzinfo=UTC),
        ),
        (
            PointsLifetime(expire_after=timedelta(days=365), expiry_rounding=ExpiryRounding.END_OF_YEAR),
            AT,
            datetime(2025, 12, 31, 21, tzinfo=UTC),
        ),
    ],
)
def test_lot_times(lifetime: PointsLifetime, activation: datetime, expiry: datetime | None) -> None:
    assert lot_times(lifetime, at=AT, zone_name="Europe/Moscow") == (activation, expiry)


def test_expiry_rounding_uses_the_program_zone_not_utc() -> None:
    # 2024-05-31 22:30 UTC is already 1 June in Moscow: the end of June, not of May.
    at = datetime(2024, 5, 31, 22, 30, tzinfo=UTC)
    lifetime = PointsLifetime(expire_after=timedelta(seconds=1), expiry_rounding=ExpiryRounding.END_OF_MONTH)
    assert lot_times(lifetime, at=at, zone_name="Europe/Moscow")[1] == datetime(2024, 6, 30, 21, tzinfo=UTC)
    assert lot_times(lifetime, at=at, zone_name="UTC")[1] == datetime(2024, 6, 1, tzinfo=UTC)


def test_parts_by_account_kind_and_lifetime() -> None:
    rules = rule_set(
        rule("BASE"),
        rule("PROMO", FixedReward(points=100), account_kind="promo", lifetime=PROMO),
        rule("BONUS", FixedReward(points=7)),
        accrual=AccrualPolicy(lifetime=PointsLifetime(expire_after=timedelta(days=365))),
    )
    calculation = run(rules, receipt(line(1, 120_000)))
    year = AT + timedelta(days=365)
    assert calculation.accrual_parts == (
        AccrualPart("base", 67, AT, year),
        AccrualPart("promo", 100, datetime(2024, 5, 29, 9, tzinfo=UTC), datetime(2024, 6, 28, 21, tzinfo=UTC)),
    )
    assert calculation.accrual == 167
    assert calculation.slip_lines == ("100 points spendable from 2024-05-29",)


def test_isolated_partner_kind_takes_every_point() -> None:
    rules = rule_set(rule("BASE"), rule("PROMO", FixedReward(points=10), account_kind="promo"))
    calculation = run(rules, receipt(line(1, 120_000)), the_outlet=outlet(points_account_kind="acme"))
    assert [(part.account_kind, part.points) for part in calculation.accrual_parts] == [("acme", 70)]


def test_slip_texts_in_rule_order() -> None:
    rules = rule_set(
        rule("A", slip_text="Double points on Wednesdays!", priority=2),
        rule("B", FixedReward(points=5), slip_text="x" * 80),
        rule("C", condition="receipt.total < 0", slip_text="never printed"),
    )
    assert run(rules, receipt(line(1, 10_000))).slip_lines == ("Double points on Wednesdays!", "x" * 64)


def test_explanations_in_plain_english() -> None:
    window = SpendWindow(date(2024, 5, 1), date(2024, 5, 31))
    tiers = (
        ProgressiveTier(threshold=0, rate_bp=100),
        ProgressiveTier(threshold=1_000_000, rate_bp=500),
        ProgressiveTier(threshold=5_000_000, rate_bp=700),
    )
    rules = rule_set(
        rule(
            "GOLD_DAIRY",
            ProgressiveReward(tiers=tiers, basis=ProgressiveBasis.CUMULATIVE),
            target=RuleTarget(category_ids=frozenset({"DAIRY"}), member_segments=frozenset({"GOLD"})),
            stacking=StackingMode.EXCLUSIVE,
            priority=90,
        ),
        rule("BASE", PercentReward(rate_bp=250), max_points_per_receipt=1),
    )
    calculation = run(
        rules,
        receipt(line(1, 120_000, category_id="DAIRY"), line(2, 10_000)),
        the_member=member(segments=["GOLD"], spend={window: 1_380_000}),
    )
    explanations = {applied.rule_code: applied.explanation for applied in calculation.applied_rules}
    assert explanations == {
        "GOLD_DAIRY": "5% of 1200.00 RUB on category DAIRY (line 1), member segment GOLD, "
        "tier 2 of 3 (cumulative spend this month 15000.00 RUB)",
        "BASE": "2.5% of 100.00 RUB on line 2; capped at 1 point per receipt; "
        "exclusive rule GOLD_DAIRY (priority 90) applied to line 1",
    }


def test_skip_explanations() -> None:
    rules = rule_set(
        rule("X3", PercentReward(rate_bp=1500), stacking=StackingMode.EXCLUSIVE, priority=90),
        rule("BASE"),
        rule("MIN", min_eligible_amount=1_000_000),
        rule("COND", condition='receipt.channel == "APP"'),
    )
    calculation = run(rules, receipt(line(1, 120_000), line(3, 1_000)))
    assert {skipped.rule_code: skipped.explanation for skipped in calculation.skipped_rules} == {
        "BASE": "exclusive rule X3 (priority 90) applied to lines 1, 3",
        "COND": 'condition not met: receipt.channel == "APP"',
        "MIN": "eligible amount 1210.00 RUB is below the minimum 10000.00 RUB",
    }


@pytest.mark.parametrize(
    ("birth", "today", "distances"),
    [
        (date(1990, 5, 15), date(2024, 5, 15), (0, 0)),
        (date(1990, 5, 17), date(2024, 5, 15), (2, 364)),
        (date(1990, 5, 12), date(2024, 5, 15), (362, 3)),
        (date(1990, 1, 2), date(2024, 12, 31), (2, 364)),
        (date(2000, 2, 29), date(2023, 2, 27), (1, 364)),
        (date(2000, 2, 29), date(2024, 2, 28), (1, 365)),
        (date(2000, 2, 29), date(2024, 3, 1), (364, 1)),
    ],
)
def test_birthday_distances(birth: date, today: date, distances: tuple[int, int]) -> None:
    assert birthday_distances(birth, today=today) == distances
