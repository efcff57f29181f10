"""Small builders for the rules-engine tests: a rule set, receipts, an outlet and a member.

Defaults describe a plain program: RUB with kopecks, whole points, 1 point = 1.00 RUB,
Europe/Moscow, redemption enabled without limits, accrual on the money paid, rounding down.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import UTC, date, datetime
from typing import Any

from services.processing.domain.conditions import compile_condition
from services.processing.domain.rules import (
    AccrualPolicy,
    Campaign,
    Channel,
    EarningRule,
    MemberFacts,
    OutletFacts,
    PercentReward,
    PointValue,
    Receipt,
    ReceiptLine,
    RedemptionPolicy,
    RedemptionRequest,
    Reward,
    RuleSet,
    SpendWindow,
    calculate,
)
from services.processing.domain.ruleset import Calculation

AT = datetime(2024, 5, 15, 9, 0, tzinfo=UTC)  # Wednesday, 12:00 in Moscow
RUB_PER_POINT = PointValue(points=1, money=100)


def rule(code: str, reward: Reward | None = None, **fields: Any) -> EarningRule:
    condition = fields.pop("condition", None)
    return EarningRule(
        rule_id=fields.pop("rule_id", f"id-{code}"),
        code=code,
        name=fields.pop("name", code.title()),
        reward=reward or PercentReward(rate_bp=500),
        condition=compile_condition(condition) if condition else None,
        **fields,
    )


def rule_set(
    *rules: EarningRule,
    campaigns: Sequence[Campaign] = (),
    accrual: AccrualPolicy | None = None,
    redemption: RedemptionPolicy | None = None,
    point_scale: int = 0,
    **fields: Any,
) -> RuleSet:
    return RuleSet(
        version=fields.pop("version", 7),
        currency_code="RUB",
        currency_scale=2,
        point_scale=point_scale,
        time_zone=fields.pop("time_zone", "Europe/Moscow"),
        accrual=accrual or AccrualPolicy(),
        redemption=redemption or RedemptionPolicy(enabled=True, point_value=RUB_PER_POINT),
        rules=tuple(rules),
        campaigns={campaign.campaign_id: campaign for campaign in campaigns},
        **fields,
    )


def line(position: int, amount: int, **fields: Any) -> ReceiptLine:
    return ReceiptLine(
        position=position,
        sku=fields.pop("sku", f"SKU{position}"),
        category_id=fields.pop("category_id", "GROCERY"),
        quantity_milli=fields.pop("quantity_milli", 1000),
        amount=amount,
        **fields,
    )


def receipt(*lines: ReceiptLine, channel: Channel = Channel.POS, issue_time: datetime | None = None) -> Receipt:
    return Receipt(
        lines=tuple(lines),
        total=sum(item.amount for item in lines),
        channel=channel,
        receipt_id="R-1",
        issue_time=issue_time,
    )


OUTLET = OutletFacts(
    terminal_id="T-1",
    outlet_id="O-1",
    outlet_code="MSK-01",
    region_code="RU-MOW",
    partner_id="P-1",
    time_zone="Europe/Moscow",
)


def outlet(**fields: Any) -> OutletFacts:
    return replace(OUTLET, **fields)


def member(
    *,
    segments: Sequence[str] = (),
    rule_uses: Mapping[str, int] | None = None,
    spend: Mapping[SpendWindow, int] | None = None,
    birth_date: date | None = None,
    registration_time: datetime | None = None,
    purchase_count: int = 3,
    app_purchase_count: int = 0,
) -> MemberFacts:
    return MemberFacts(
        member_id="M-1",
        segments=frozenset(segments),
        registration_time=registration_time,
        birth_date=birth_date,
        purchase_count=purchase_count,
        app_purchase_count=app_purchase_count,
        rule_uses=dict(rule_uses or {}),
        spend_by_window=dict(spend or {}),
    )


MEMBER = member()


def run(
    rules: RuleSet,
    the_receipt: Receipt,
    *,
    the_member: MemberFacts | None = MEMBER,
    at: datetime = AT,
    the_outlet: OutletFacts = OUTLET,
    points: int = 0,
    maximum: bool = False,
    spendable: int | None = 1_000_000,
    **fields: Any,
) -> Calculation:
    return calculate(
        rules,
        receipt=the_receipt,
        outlet=the_outlet,
        member=the_member,
        at=at,
        redemption=RedemptionRequest(points=points, maximum=maximum),
        spendable_points=spendable,
        redemption_blocked=fields.pop("redemption_blocked", None),
        **fields,
    )


def by_rule(calculation: Calculation) -> dict[str, int]:
    """rule code -> points, from the applied rules."""
    return {applied.rule_code: applied.points for applied in calculation.applied_rules}


def line_points(calculation: Calculation) -> dict[int, int]:
    return {item.position: item.accrual for item in calculation.lines}


def skips(calculation: Calculation) -> dict[str, str]:
    """rule code -> skip reason value."""
    return {skipped.rule_code: skipped.reason.value for skipped in calculation.skipped_rules}
