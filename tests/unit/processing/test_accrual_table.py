"""Table-driven tests of the earning mechanics (services/processing/domain/accrual.py).

Every row is a rule set, a receipt and who/where/when, with the points each applied rule gives
(by rule code), the points per line, and the rules reported as skipped (code -> reason). The
program: RUB with kopecks, whole points, 1 point = 1.00 RUB, rounding DOWN, accrual on the money
paid, Europe/Moscow; the operation at 2024-05-15 09:00 UTC (Wednesday, 12:00 in Moscow).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest

from services.processing.domain.rules import (
    AccrualBase,
    AccrualPolicy,
    Campaign,
    CampaignState,
    Channel,
    CumulativePeriod,
    FixedReward,
    MemberFacts,
    OutletFacts,
    PercentReward,
    PerItemReward,
    PointValue,
    ProgressiveBasis,
    ProgressiveMethod,
    ProgressiveReward,
    ProgressiveTier,
    Receipt,
    RedemptionPolicy,
    RoundingMode,
    RuleSet,
    RuleTarget,
    SpendWindow,
    StackingMode,
    TimeOfDayRange,
)
from tests.unit.processing.builders import (
    AT,
    MEMBER,
    OUTLET,
    by_rule,
    line,
    line_points,
    member,
    outlet,
    receipt,
    rule,
    rule_set,
    run,
    skips,
)

TIERS = (
    ProgressiveTier(threshold=0, rate_bp=100),
    ProgressiveTier(threshold=100_000, rate_bp=300),
    ProgressiveTier(threshold=500_000, rate_bp=500),
)
MAY = SpendWindow(date(2024, 5, 1), date(2024, 5, 31))
Q2 = SpendWindow(date(2024, 4, 1), date(2024, 6, 30))
YEAR = SpendWindow(date(2024, 1, 1), date(2024, 12, 31))
LAST_30 = SpendWindow(date(2024, 4, 16), date(2024, 5, 15))
NIGHT = datetime(2024, 5, 14, 22, 30, tzinfo=UTC)  # 01:30 on Wednesday in Moscow, Tuesday in UTC


def progressive(**fields: Any) -> ProgressiveReward:
    return ProgressiveReward(tiers=fields.pop("tiers", TIERS), **fields)


def campaign(**fields: Any) -> Campaign:
    return Campaign(
        campaign_id=fields.pop("campaign_id", "C-1"),
        code=fields.pop("code", "MAY_DAYS"),
        start_time=fields.pop("start_time", datetime(2024, 5, 1, tzinfo=UTC)),
        end_time=fields.pop("end_time", datetime(2024, 6, 1, tzinfo=UTC)),
        **fields,
    )


@dataclass(frozen=True)
class Case:
    name: str
    rules: RuleSet
    receipt: Receipt
    applied: dict[str, int]
    lines: dict[int, int]
    skipped: dict[str, str] = field(default_factory=dict)
    member: MemberFacts | None = MEMBER
    at: datetime = AT
    outlet: OutletFacts = OUTLET
    points: int = 0


ONE_LINE = receipt(line(1, 120_000))
TWO_LINES = receipt(line(1, 120_000, category_id="DAIRY"), line(2, 30_000, category_id="BREAD"))

CASES = [
    # -- percent, fixed, per item ---------------------------------------------------------------
    Case("percent", rule_set(rule("BASE")), ONE_LINE, {"BASE": 60}, {1: 60}),
    Case(
        "percent rounds once per receipt, not per line",
        rule_set(rule("BASE")),
        receipt(line(1, 1010), line(2, 1010)),
        {"BASE": 1},
        {1: 1, 2: 0},
    ),
    Case(
        "rounding DOWN",
        rule_set(rule("BASE")),
        receipt(line(1, 3000)),
        {"BASE": 1},
        {1: 1},
    ),
    Case(
        "rounding HALF_UP: a half goes up",
        rule_set(rule("BASE"), accrual=AccrualPolicy(rounding=RoundingMode.HALF_UP)),
        receipt(line(1, 3000)),
        {"BASE": 2},
        {1: 2},
    ),
    Case(
        "rounding HALF_UP: below a half goes down",
        rule_set(rule("BASE"), accrual=AccrualPolicy(rounding=RoundingMode.HALF_UP)),
        receipt(line(1, 2980)),
        {"BASE": 1},
        {1: 1},
    ),
    Case(
        "rounding UP",
        rule_set(rule("BASE"), accrual=AccrualPolicy(rounding=RoundingMode.UP)),
        receipt(line(1, 2020)),
        {"BASE": 2},
        {1: 2},
    ),
    Case(
        "largest remainder: the extra point goes to the largest remainder",
        rule_set(rule("BASE", PercentReward(rate_bp=1000)), accrual=AccrualPolicy(rounding=RoundingMode.UP)),
        receipt(line(1, 1010), line(2, 1090), line(3, 1000)),
        {"BASE": 4},
        {1: 1, 2: 2, 3: 1},
    ),
    Case(
        "rounding to points with cents (point scale 2)",
        rule_set(
            rule("BASE", PercentReward(rate_bp=333)),
            point_scale=2,
            redemption=RedemptionPolicy(enabled=True, point_value=PointValue(points=100, money=100)),
        ),
        receipt(line(1, 1000), line(2, 2000)),
        {"BASE": 99},
        {1: 33, 2: 66},
    ),
    Case(
        "fixed per receipt, in proportion to line amounts",
        rule_set(rule("FIX", FixedReward(points=100))),
        receipt(line(1, 3000), line(2, 7000)),
        {"FIX": 100},
        {1: 30, 2: 70},
    ),
    Case(
        "fixed per receipt over equal lines: remainder to the first",
        rule_set(rule("FIX", FixedReward(points=100))),
        receipt(line(1, 1000), line(2, 1000), line(3, 1000)),
        {"FIX": 100},
        {1: 34, 2: 33, 3: 33},
    ),
    Case(
        "per item: whole units only (weighted goods per whole kg)",
        rule_set(rule("ITEM", PerItemReward(points_per_unit=10))),
        receipt(
            line(1, 1000, quantity_milli=3000), line(2, 1000, quantity_milli=2500), line(3, 1000, quantity_milli=500)
        ),
        {"ITEM": 50},
        {1: 30, 2: 20, 3: 0},
    ),
    Case(
        "per item without a whole unit gives nothing",
        rule_set(rule("ITEM", PerItemReward(points_per_unit=10))),
        receipt(line(1, 1000, quantity_milli=250)),
        {},
        {1: 0},
        {"ITEM": "MIN_AMOUNT_NOT_REACHED"},
    ),
    # -- progressive ----------------------------------------------------------------------------
    Case(
        "progressive per receipt, whole amount: tier 2 rate on everything",
        rule_set(rule("PRG", progressive())),
        receipt(line(1, 150_000), line(2, 50_000)),
        {"PRG": 60},
        {1: 45, 2: 15},
    ),
    Case(
        "progressive per receipt, marginal: each slice at its rate",
        rule_set(rule("PRG", progressive(method=ProgressiveMethod.MARGINAL))),
        receipt(line(1, 200_000)),
        {"PRG": 40},
        {1: 40},
    ),
    Case(
        "progressive below the first threshold gives nothing",
        rule_set(rule("PRG", progressive(tiers=TIERS[1:]))),
        receipt(line(1, 50_000)),
        {},
        {1: 0},
        {"PRG": "MIN_AMOUNT_NOT_REACHED"},
    ),
    Case(
        "progressive threshold is inclusive",
        rule_set(rule("PRG", progressive(tiers=TIERS[1:]))),
        receipt(line(1, 100_000)),
        {"PRG": 30},
        {1: 30},
    ),
    Case(
        "cumulative month, whole amount: the tier comes from the month's spend",
        rule_set(rule("CUM", progressive(basis=ProgressiveBasis.CUMULATIVE))),
        receipt(line(1, 100_000)),
        {"CUM": 50},
        {1: 50},
        member=member(spend={MAY: 450_000}),
    ),
    Case(
        "cumulative month, marginal: only the slices this receipt adds",
        rule_set(rule("CUM", progressive(basis=ProgressiveBasis.CUMULATIVE, method=ProgressiveMethod.MARGINAL))),
        receipt(line(1, 100_000)),
        {"CUM": 40},
        {1: 40},
        member=member(spend={MAY: 450_000}),
    ),
    Case(
        "cumulative quarter",
        rule_set(rule("CUM", progressive(basis=ProgressiveBasis.CUMULATIVE, period=CumulativePeriod.CALENDAR_QUARTER))),
        receipt(line(1, 100_000)),
        {"CUM": 30},
        {1: 30},
        member=member(spend={Q2: 200_000}),
    ),
    Case(
        "cumulative year",
        rule_set(rule("CUM", progressive(basis=ProgressiveBasis.CUMULATIVE, period=CumulativePeriod.CALENDAR_YEAR))),
        receipt(line(1, 90_000)),
        {"CUM": 9},
        {1: 9},
        member=member(spend={YEAR: 0}),
    ),
    Case(
        "cumulative rolling 30 days",
        rule_set(
            rule(
                "CUM",
                progressive(basis=ProgressiveBasis.CUMULATIVE, period=CumulativePeriod.ROLLING_DAYS, rolling_days=30),
            )
        ),
        receipt(line(1, 100_000)),
        {"CUM": 50},
        {1: 50},
        member=member(spend={LAST_30: 900_000}),
    ),
    Case(
        "cumulative needs a member",
        rule_set(rule("CUM", progressive(basis=ProgressiveBasis.CUMULATIVE))),
        receipt(line(1, 100_000)),
        {},
        {1: 0},
        {"CUM": "MEMBER_REQUIRED"},
        member=None,
    ),
    # -- segmentation -----------------------------------------------------------------------------
    Case(
        "by SKU",
        rule_set(rule("SKU", target=RuleTarget(skus=frozenset({"SKU2"})))),
        TWO_LINES,
        {"SKU": 15},
        {1: 0, 2: 15},
    ),
    Case(
        "by category, minus an excluded SKU",
        rule_set(
            rule(
                "CAT", target=RuleTarget(category_ids=frozenset({"DAIRY", "BREAD"}), excluded_skus=frozenset({"SKU1"}))
            )
        ),
        TWO_LINES,
        {"CAT": 15},
        {1: 0, 2: 15},
    ),
    Case(
        "excluded category",
        rule_set(rule("ALL", target=RuleTarget(excluded_category_ids=frozenset({"DAIRY"})))),
        TWO_LINES,
        {"ALL": 15},
        {1: 0, 2: 15},
    ),
    Case(
        "no matching product: not reported at all",
        rule_set(rule("SKU", target=RuleTarget(skus=frozenset({"OTHER"})))),
        TWO_LINES,
        {},
        {1: 0, 2: 0},
    ),
    Case(
        "by outlet",
        rule_set(rule("OUT", target=RuleTarget(outlet_ids=frozenset({"O-1"})))),
        ONE_LINE,
        {"OUT": 60},
        {1: 60},
    ),
    Case(
        "another outlet: not targeted",
        rule_set(rule("OUT", target=RuleTarget(outlet_ids=frozenset({"O-2"})))),
        ONE_LINE,
        {},
        {1: 0},
    ),
    Case(
        "outlet or region: the region matches",
        rule_set(rule("REG", target=RuleTarget(outlet_ids=frozenset({"O-2"}), region_codes=frozenset({"RU-MOW"})))),
        ONE_LINE,
        {"REG": 60},
        {1: 60},
    ),
    Case(
        "by channel",
        rule_set(rule("APP", target=RuleTarget(channels=frozenset({Channel.APP})))),
        receipt(line(1, 120_000), channel=Channel.APP),
        {"APP": 60},
        {1: 60},
    ),
    Case(
        "another channel: not targeted",
        rule_set(rule("APP", target=RuleTarget(channels=frozenset({Channel.APP, Channel.ONLINE})))),
        ONE_LINE,
        {},
        {1: 0},
    ),
    Case(
        "by member segment",
        rule_set(rule("GOLD", target=RuleTarget(member_segments=frozenset({"GOLD", "VIP"})))),
        ONE_LINE,
        {"GOLD": 60},
        {1: 60},
        member=member(segments=["GOLD"]),
    ),
    Case(
        "member outside the segment: not targeted",
        rule_set(rule("GOLD", target=RuleTarget(member_segments=frozenset({"GOLD"})))),
        ONE_LINE,
        {},
        {1: 0},
        member=member(segments=["SILVER"]),
    ),
    Case(
        "segment rule without a member",
        rule_set(rule("GOLD", target=RuleTarget(member_segments=frozenset({"GOLD"})))),
        ONE_LINE,
        {},
        {1: 0},
        {"GOLD": "MEMBER_REQUIRED"},
        member=None,
    ),
    Case(
        "weekday in the outlet's zone (Wednesday in Moscow, Tuesday in UTC)",
        rule_set(
            rule("WED", target=RuleTarget(days_of_week=frozenset({3}))),
            rule("TUE", target=RuleTarget(days_of_week=frozenset({2}))),
        ),
        ONE_LINE,
        {"WED": 60},
        {1: 60},
        at=NIGHT,
    ),
    Case(
        "time of day in the outlet's zone (12:00 in Moscow, 09:00 UTC)",
        rule_set(
            rule("NOON", target=RuleTarget(times_of_day=(TimeOfDayRange(660, 780),))),
            rule("MORNING", target=RuleTarget(times_of_day=(TimeOfDayRange(480, 600),))),
        ),
        ONE_LINE,
        {"NOON": 60},
        {1: 60},
    ),
    Case(
        "time of day is half-open: the end minute is out",
        rule_set(rule("NOON", target=RuleTarget(times_of_day=(TimeOfDayRange(600, 720),)))),
        ONE_LINE,
        {},
        {1: 0},
    ),
    Case(
        "time of day wrapping past midnight (22:00-02:00 at 01:30)",
        rule_set(rule("NIGHT", target=RuleTarget(times_of_day=(TimeOfDayRange(1320, 120),)))),
        ONE_LINE,
        {"NIGHT": 60},
        {1: 60},
        at=NIGHT,
    ),
    Case(
        "an outlet with its own zone (14:00 in Yekaterinburg)",
        rule_set(
            rule("AFTERNOON", target=RuleTarget(times_of_day=(TimeOfDayRange(840, 900),))),
            rule("NOON", target=RuleTarget(times_of_day=(TimeOfDayRange(720, 780),))),
        ),
        ONE_LINE,
        {"AFTERNOON": 60},
        {1: 60},
        outlet=outlet(time_zone="Asia/Yekaterinburg"),
    ),
    Case(
        "an outlet without a zone uses the program's",
        rule_set(rule("NOON", target=RuleTarget(times_of_day=(TimeOfDayRange(720, 780),)))),
        ONE_LINE,
        {"NOON": 60},
        {1: 60},
        outlet=outlet(time_zone=""),
    ),
    # -- conditions (CEL) -------------------------------------------------------------------------
    Case(
        "first purchase in the app (proto example): met",
        rule_set(
            rule(
                "APP1", FixedReward(points=100), condition='receipt.channel == "APP" && member.app_purchase_count == 0'
            )
        ),
        receipt(line(1, 1000), channel=Channel.APP),
        {"APP1": 100},
        {1: 100},
    ),
    Case(
        "first purchase in the app (proto example): not in the app",
        rule_set(
            rule(
                "APP1", FixedReward(points=100), condition='receipt.channel == "APP" && member.app_purchase_count == 0'
            )
        ),
        receipt(line(1, 1000)),
        {},
        {1: 0},
        {"APP1": "CONDITION_NOT_MET"},
    ),
    Case(
        "first purchase in the app (proto example): not the first",
        rule_set(
            rule(
                "APP1", FixedReward(points=100), condition='receipt.channel == "APP" && member.app_purchase_count == 0'
            )
        ),
        receipt(line(1, 1000), channel=Channel.APP),
        {},
        {1: 0},
        {"APP1": "CONDITION_NOT_MET"},
        member=member(app_purchase_count=1),
    ),
    Case(
        "a condition on the member without a member",
        rule_set(
            rule(
                "APP1", FixedReward(points=100), condition='receipt.channel == "APP" && member.app_purchase_count == 0'
            )
        ),
        receipt(line(1, 1000), channel=Channel.APP),
        {},
        {1: 0},
        {"APP1": "MEMBER_REQUIRED"},
        member=None,
    ),
    Case(
        "buys a given product (proto example)",
        rule_set(rule("PROD", FixedReward(points=50), condition='receipt.lines.exists(l, l.sku == "4601234567890")')),
        receipt(line(1, 1000), line(2, 3000, sku="4601234567890")),
        {"PROD": 50},
        {1: 13, 2: 37},
    ),
    Case(
        "buys a given product (proto example): not bought; works without a member",
        rule_set(rule("PROD", FixedReward(points=50), condition='receipt.lines.exists(l, l.sku == "4601234567890")')),
        receipt(line(1, 1000)),
        {},
        {1: 0},
        {"PROD": "CONDITION_NOT_MET"},
        member=None,
    ),
    Case(
        "birthday week (proto example): 2 days before",
        rule_set(
            rule(
                "BDAY",
                FixedReward(points=200),
                condition="member.birthday_known && (member.days_to_birthday <= 3 || member.days_since_birthday <= 3)",
            )
        ),
        ONE_LINE,
        {"BDAY": 200},
        {1: 200},
        member=member(birth_date=date(1990, 5, 17)),
    ),
    Case(
        "birthday week (proto example): 3 days after",
        rule_set(
            rule(
                "BDAY",
                FixedReward(points=200),
                condition="member.birthday_known && (member.days_to_birthday <= 3 || member.days_since_birthday <= 3)",
            )
        ),
        ONE_LINE,
        {"BDAY": 200},
        {1: 200},
        member=member(birth_date=date(1990, 5, 12)),
    ),
    Case(
        "birthday week (proto example): far away",
        rule_set(
            rule(
                "BDAY",
                FixedReward(points=200),
                condition="member.birthday_known && (member.days_to_birthday <= 3 || member.days_since_birthday <= 3)",
            )
        ),
        ONE_LINE,
        {},
        {1: 0},
        {"BDAY": "CONDITION_NOT_MET"},
        member=member(birth_date=date(1990, 9, 1)),
    ),
    Case(
        "birthday week (proto example): birthday unknown",
        rule_set(
            rule(
                "BDAY",
                FixedReward(points=200),
                condition="member.birthday_known && (member.days_to_birthday <= 3 || member.days_since_birthday <= 3)",
            )
        ),
        ONE_LINE,
        {},
        {1: 0},
        {"BDAY": "CONDITION_NOT_MET"},
    ),
    Case(
        "a condition that fails to evaluate counts as false",
        rule_set(rule("NEW", FixedReward(points=10), condition="member.registration_time > now - duration('720h')")),
        ONE_LINE,
        {},
        {1: 0},
        {"NEW": "CONDITION_ERROR"},
    ),
    Case(
        "a condition on time and outlet",
        rule_set(rule("LUNCH", condition='local_hour >= 12 && local_weekday == 3 && outlet.region_code == "RU-MOW"')),
        ONE_LINE,
        {"LUNCH": 60},
        {1: 60},
    ),
    # -- campaigns and validity ---------------------------------------------------------------------
    Case(
        "campaign running",
        rule_set(rule("PROMO", campaign_id="C-1"), campaigns=[campaign()]),
        ONE_LINE,
        {"PROMO": 60},
        {1: 60},
    ),
    Case(
        "campaign not started: not reported",
        rule_set(rule("PROMO", campaign_id="C-1"), campaigns=[campaign(start_time=datetime(2024, 5, 16, tzinfo=UTC))]),
        ONE_LINE,
        {},
        {1: 0},
    ),
    Case(
        "campaign ended (end is exclusive)",
        rule_set(rule("PROMO", campaign_id="C-1"), campaigns=[campaign(end_time=AT)]),
        ONE_LINE,
        {},
        {1: 0},
    ),
    Case(
        "campaign paused",
        rule_set(rule("PROMO", campaign_id="C-1"), campaigns=[campaign(state=CampaignState.PAUSED)]),
        ONE_LINE,
        {},
        {1: 0},
    ),
    Case(
        "campaign of other partners",
        rule_set(rule("PROMO", campaign_id="C-1"), campaigns=[campaign(partner_ids=frozenset({"P-2"}))]),
        ONE_LINE,
        {},
        {1: 0},
    ),
    Case(
        "campaign missing from the version",
        rule_set(rule("PROMO", campaign_id="C-9"), campaigns=[campaign()]),
        ONE_LINE,
        {},
        {1: 0},
    ),
    Case(
        "rule validity: start inclusive",
        rule_set(rule("VALID", valid_from=AT, valid_until=AT + timedelta(days=1))),
        ONE_LINE,
        {"VALID": 60},
        {1: 60},
    ),
    Case(
        "rule validity: end exclusive",
        rule_set(rule("VALID", valid_until=AT)),
        ONE_LINE,
        {},
        {1: 0},
    ),
    Case(
        "rule of another partner",
        rule_set(rule("OTHER", partner_id="P-2"), rule("MINE", partner_id="P-1")),
        ONE_LINE,
        {"MINE": 60},
        {1: 60},
    ),
    Case(
        "partner with accrual disabled",
        rule_set(rule("BASE")),
        ONE_LINE,
        {},
        {1: 0},
        outlet=outlet(accrual_enabled=False),
    ),
    # -- priority, stacking, exclusivity ------------------------------------------------------------
    Case(
        "stackable rules add up",
        rule_set(
            rule("BASE"),
            rule("DAIRY", PercentReward(rate_bp=1000), target=RuleTarget(category_ids=frozenset({"DAIRY"}))),
        ),
        TWO_LINES,
        {"DAIRY": 120, "BASE": 75},
        {1: 180, 2: 15},
    ),
    Case(
        "an exclusive rule takes its lines from lower priorities",
        rule_set(
            rule("BASE"),
            rule(
                "DAIRY",
                PercentReward(rate_bp=1000),
                target=RuleTarget(category_ids=frozenset({"DAIRY"})),
                stacking=StackingMode.EXCLUSIVE,
                priority=10,
            ),
        ),
        TWO_LINES,
        {"DAIRY": 120, "BASE": 15},
        {1: 120, 2: 15},
    ),
    Case(
        "an exclusive rule on every line skips the lower rules",
        rule_set(rule("BASE"), rule("X3", PercentReward(rate_bp=1500), stacking=StackingMode.EXCLUSIVE, priority=90)),
        TWO_LINES,
        {"X3": 225},
        {1: 180, 2: 45},
        {"BASE": "EXCLUDED_BY_EXCLUSIVE_RULE"},
    ),
    Case(
        "an exclusive rule does not affect higher priorities",
        rule_set(rule("BASE", priority=5), rule("LOW", PercentReward(rate_bp=1000), stacking=StackingMode.EXCLUSIVE)),
        ONE_LINE,
        {"BASE": 60, "LOW": 120},
        {1: 180},
    ),
    Case(
        "equal priorities: the code decides",
        rule_set(
            rule("B_RULE", PercentReward(rate_bp=1000), stacking=StackingMode.EXCLUSIVE),
            rule("A_RULE", stacking=StackingMode.EXCLUSIVE),
        ),
        ONE_LINE,
        {"A_RULE": 60},
        {1: 60},
        {"B_RULE": "EXCLUDED_BY_EXCLUSIVE_RULE"},
    ),
    Case(
        "an exclusive rule that gives a line nothing does not take it",
        rule_set(rule("TINY", PercentReward(rate_bp=1), stacking=StackingMode.EXCLUSIVE, priority=10), rule("BASE")),
        receipt(line(1, 1000), line(2, 1000)),
        {"BASE": 1},
        {1: 1, 2: 0},
        {"TINY": "MIN_AMOUNT_NOT_REACHED"},
    ),
    Case(
        "exclusivity group: the first of the group wins, others still stack",
        rule_set(
            rule("G_HIGH", PercentReward(rate_bp=1000), exclusivity_group="WELCOME", priority=20),
            rule("G_LOW", PercentReward(rate_bp=2000), exclusivity_group="WELCOME", priority=10),
            rule("BASE"),
        ),
        ONE_LINE,
        {"G_HIGH": 120, "BASE": 60},
        {1: 180},
        {"G_LOW": "EXCLUSIVITY_GROUP"},
    ),
    Case(
        "exclusivity group per line: the lower rule keeps the lines the group left",
        rule_set(
            rule(
                "G_DAIRY",
                PercentReward(rate_bp=1000),
                exclusivity_group="G",
                priority=20,
                target=RuleTarget(category_ids=frozenset({"DAIRY"})),
            ),
            rule("G_ALL", exclusivity_group="G", priority=10),
        ),
        TWO_LINES,
        {"G_DAIRY": 120, "G_ALL": 15},
        {1: 120, 2: 15},
    ),
    # -- minimum, maximum, usage ------------------------------------------------------------------
    Case(
        "minimum eligible amount reached exactly",
        rule_set(rule("MIN", min_eligible_amount=120_000)),
        ONE_LINE,
        {"MIN": 60},
        {1: 60},
    ),
    Case(
        "minimum eligible amount not reached; excluded lines do not count",
        rule_set(rule("MIN", min_eligible_amount=120_001)),
        receipt(line(1, 120_000), line(2, 5000, accrual_excluded=True)),
        {},
        {1: 0, 2: 0},
        {"MIN": "MIN_AMOUNT_NOT_REACHED"},
    ),
    Case(
        "maximum points per receipt",
        rule_set(rule("CAP", max_points_per_receipt=25)),
        TWO_LINES,
        {"CAP": 25},
        {1: 20, 2: 5},
    ),
    Case(
        "usage limit not reached",
        rule_set(rule("WELCOME", FixedReward(points=500), max_uses_per_member=1)),
        ONE_LINE,
        {"WELCOME": 500},
        {1: 500},
    ),
    Case(
        "usage limit reached",
        rule_set(rule("WELCOME", FixedReward(points=500), max_uses_per_member=1)),
        ONE_LINE,
        {},
        {1: 0},
        {"WELCOME": "USAGE_LIMIT_REACHED"},
        member=member(rule_uses={"id-WELCOME": 1}),
    ),
    Case(
        "usage limit needs a member",
        rule_set(rule("WELCOME", FixedReward(points=500), max_uses_per_member=1)),
        ONE_LINE,
        {},
        {1: 0},
        {"WELCOME": "MEMBER_REQUIRED"},
        member=None,
    ),
    # -- excluded lines, accrual base ---------------------------------------------------------------
    Case(
        "lines flagged accrual_excluded never earn",
        rule_set(rule("BASE"), rule("FIX", FixedReward(points=10))),
        receipt(line(1, 120_000, accrual_excluded=True), line(2, 30_000)),
        {"BASE": 15, "FIX": 10},
        {1: 0, 2: 25},
    ),
    Case(
        "all matching lines excluded",
        rule_set(rule("TOBACCO", target=RuleTarget(category_ids=frozenset({"TOBACCO"})))),
        receipt(line(1, 120_000, category_id="TOBACCO", accrual_excluded=True), line(2, 30_000)),
        {},
        {1: 0, 2: 0},
        {"TOBACCO": "LINES_EXCLUDED"},
    ),
    Case(
        "paid with money: points paid with points earn nothing",
        rule_set(rule("BASE")),
        receipt(line(1, 10_000)),
        {"BASE": 3},
        {1: 3},
        points=40,
    ),
    Case(
        "full amount: points paid with points earn too",
        rule_set(rule("BASE"), accrual=AccrualPolicy(base=AccrualBase.FULL_AMOUNT)),
        receipt(line(1, 10_000)),
        {"BASE": 5},
        {1: 5},
        points=40,
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_accrual(case: Case) -> None:
    calculation = run(
        case.rules, case.receipt, the_member=case.member, at=case.at, the_outlet=case.outlet, points=case.points
    )
    assert by_rule(calculation) == case.applied
    assert line_points(calculation) == case.lines
    assert skips(calculation) == case.skipped
    assert calculation.accrual == sum(case.applied.values())


def test_rules_are_reported_in_evaluation_order() -> None:
    rules = rule_set(
        rule("LOW", priority=-5),
        rule("HIGH", priority=50),
        rule("MID_B", priority=10),
        rule("MID_A", priority=10),
    )
    calculation = run(rules, ONE_LINE)
    assert [applied.rule_code for applied in calculation.applied_rules] == ["HIGH", "MID_A", "MID_B", "LOW"]
    assert [item.rule_id for item in calculation.lines[0].accrual_by_rule] == [
        "id-HIGH",
        "id-MID_A",
        "id-MID_B",
        "id-LOW",
    ]


def test_at_most_50_skipped_rules_highest_priority_first() -> None:
    rules = rule_set(*(rule(f"R{n:03}", priority=n, condition="receipt.total < 0") for n in range(60)))
    skipped = run(rules, ONE_LINE).skipped_rules
    assert len(skipped) == 50
    assert [item.rule_code for item in skipped] == [f"R{n:03}" for n in range(59, 9, -1)]


def test_cumulative_spend_must_be_supplied() -> None:
    rules = rule_set(rule("CUM", progressive(basis=ProgressiveBasis.CUMULATIVE)))
    with pytest.raises(ValueError, match="spend_windows"):
        run(rules, ONE_LINE, the_member=member(spend={}))
