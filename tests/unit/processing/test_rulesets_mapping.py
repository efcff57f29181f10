"""Proto <-> domain mapping of the rules engine (services/processing/rulesets.py)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp
from loyalty.cards.v1 import cards_pb2
from loyalty.common.v1 import errors_pb2, types_pb2
from loyalty.processing.v1 import processing_pb2, program_admin_pb2

from services.processing import rulesets
from services.processing.domain import refunds
from services.processing.domain.program import (
    OutletState,
    PartnerState,
    PointsScope,
    ProgramSettings,
    ProgramType,
    RiskFallback,
    SalesChannel,
    TerminalContext,
    TerminalState,
)
from services.processing.domain.rules import (
    AccrualBase,
    CampaignState,
    Channel,
    CumulativePeriod,
    ExpiryRounding,
    FixedReward,
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
    RedemptionRequest,
    RefundShortfallPolicy,
    RoundingMode,
    RuleTarget,
    StackingMode,
    TimeOfDayRange,
    calculate,
)
from shared.errors import DomainError, Reason
from tests.unit.processing.builders import AT

pa = program_admin_pb2
SETTINGS = ProgramSettings(
    program_id="PRG",
    type=ProgramType.SINGLE_BRAND,
    currency_code="RUB",
    currency_scale=2,
    point_scale=0,
    time_zone="Europe/Moscow",
    authorization_ttl=timedelta(minutes=15),
    authorization_ttl_max=timedelta(hours=24),
    offline_max_age=timedelta(days=7),
    risk_fallback=RiskFallback.ALLOW_ACCRUAL_ONLY,
)
TERMINAL = TerminalContext(
    terminal_id="T-1",
    terminal_state=TerminalState.ACTIVE,
    default_channel=SalesChannel.ONLINE,
    offline_allowed=True,
    outlet_id="O-1",
    outlet_code="MSK-01",
    outlet_state=OutletState.ACTIVE,
    region_code="RU-MOW",
    time_zone="Europe/Moscow",
    partner_id="P-1",
    partner_code="ACME",
    partner_state=PartnerState.ACTIVE,
    points_scope=PointsScope.COALITION,
    partner_account_kind="",
    accrual_enabled=True,
    redemption_enabled=True,
)


def rub(amount: int) -> types_pb2.Money:
    return types_pb2.Money(currency_code="RUB", amount_minor=amount, scale=2)


def pts(amount: int) -> types_pb2.Points:
    return types_pb2.Points(amount_minor=amount, scale=0)


def ts(value: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(value)
    return stamp


def days(count: int) -> Duration:
    duration = Duration()
    duration.FromTimedelta(timedelta(days=count))
    return duration


def snapshot() -> program_admin_pb2.RuleSetSnapshot:
    return pa.RuleSetSnapshot(
        accrual_policy=pa.AccrualPolicy(
            base=pa.ACCRUAL_BASE_FULL_AMOUNT,
            rounding=pa.ROUNDING_MODE_HALF_UP,
            lifetime=pa.PointsLifetime(
                pending_period=days(14), expire_after=days(365), expiry_rounding=pa.EXPIRY_ROUNDING_END_OF_MONTH
            ),
            account_kind="base",
        ),
        redemption_policy=pa.RedemptionPolicy(
            enabled=True,
            point_value=pa.PointValue(points=pts(100), money=rub(10_000)),
            products=pa.REDEEMABLE_PRODUCTS_SUBSET,
            included_skus=["A"],
            excluded_category_ids=["TOBACCO"],
            members_only_skus=["GIFT"],
            max_share_bp=5000,
            min_receipt_amount=rub(10_000),
            min_line_remainder=rub(1),
            min_points_per_receipt=pts(10),
            max_points_per_receipt=pts(0),
            require_card_or_qr=True,
            spend_order=["promo", "base"],
        ),
        refund_policy=pa.RefundPolicy(shortfall_policy=pa.REFUND_SHORTFALL_POLICY_ALLOW_DEBT),
        earning_rules=[
            pa.EarningRule(
                rule_id="r1",
                code="BASE",
                name="Base 5%",
                state=pa.EARNING_RULE_STATE_ACTIVE,
                percent=pa.PercentReward(rate_bp=500),
            ),
            pa.EarningRule(
                rule_id="r2",
                code="PROMO",
                state=pa.EARNING_RULE_STATE_ACTIVE,
                campaign_id="c1",
                partner_id="P-1",
                validity=types_pb2.TimeRange(start_time=ts(datetime(2024, 5, 1, tzinfo=UTC))),
                progressive=pa.ProgressiveReward(
                    basis=pa.PROGRESSIVE_BASIS_CUMULATIVE,
                    period=pa.CUMULATIVE_PERIOD_ROLLING_DAYS,
                    rolling_days=30,
                    method=pa.PROGRESSIVE_METHOD_MARGINAL,
                    tiers=[
                        pa.ProgressiveTier(threshold=rub(0), rate_bp=100),
                        pa.ProgressiveTier(threshold=rub(5), rate_bp=200),
                    ],
                ),
                target=pa.RuleTarget(
                    skus=["A"],
                    channels=[types_pb2.SALES_CHANNEL_APP],
                    days_of_week=[pa.WEEKDAY_SATURDAY],
                    times_of_day=[pa.TimeOfDayRange(start_minute=1320, end_minute=120)],
                    member_segments=["GOLD"],
                ),
                condition='receipt.channel == "APP"',
                priority=10,
                stacking=pa.STACKING_MODE_EXCLUSIVE,
                exclusivity_group="G",
                min_eligible_amount=rub(100),
                max_points_per_receipt=pts(50),
                max_uses_per_member=1,
                account_kind="promo",
                lifetime=pa.PointsLifetime(expire_after=days(30)),
                slip_text="Promo!",
            ),
            pa.EarningRule(
                rule_id="r3", code="FIX", state=pa.EARNING_RULE_STATE_ACTIVE, fixed=pa.FixedReward(points=pts(7))
            ),
            pa.EarningRule(
                rule_id="r4",
                code="ITEM",
                state=pa.EARNING_RULE_STATE_ACTIVE,
                per_item=pa.PerItemReward(points_per_unit=pts(3)),
                condition="receipt.totl > 1",
            ),
            pa.EarningRule(
                rule_id="r5", code="PAUSED", state=pa.EARNING_RULE_STATE_PAUSED, fixed=pa.FixedReward(points=pts(1))
            ),
        ],
        campaigns=[
            pa.Campaign(
                campaign_id="c1",
                code="MAY",
                state=pa.CAMPAIGN_STATE_PAUSED,
                period=types_pb2.TimeRange(start_time=ts(datetime(2024, 5, 1, tzinfo=UTC))),
                partner_ids=["P-1"],
            )
        ],
    )


def test_compile_rule_set() -> None:
    rules = rulesets.compile_rule_set(snapshot().SerializeToString(), settings=SETTINGS, version=3)
    assert (rules.version, rules.currency_code, rules.point_scale, rules.time_zone) == (3, "RUB", 0, "Europe/Moscow")
    assert rules.accrual.base is AccrualBase.FULL_AMOUNT
    assert rules.accrual.rounding is RoundingMode.HALF_UP
    assert rules.accrual.lifetime == PointsLifetime(
        pending_period=timedelta(days=14),
        expire_after=timedelta(days=365),
        expiry_rounding=ExpiryRounding.END_OF_MONTH,
    )
    policy = rules.redemption
    assert policy.point_value == PointValue(points=100, money=10_000)
    assert policy.products is RedeemableProducts.SUBSET
    assert (policy.included_skus, policy.excluded_category_ids, policy.members_only_skus) == (
        frozenset({"A"}),
        frozenset({"TOBACCO"}),
        frozenset({"GIFT"}),
    )
    assert (policy.max_share_bp, policy.min_receipt_amount, policy.min_line_remainder) == (5000, 10_000, 1)
    assert (policy.min_points_per_receipt, policy.max_points_per_receipt) == (10, None)
    assert policy.require_card_or_qr and policy.spend_order == ("promo", "base")
    assert rules.refund.shortfall_policy is RefundShortfallPolicy.ALLOW_DEBT
    assert rules.refund.restored_points_min_lifetime == timedelta(days=30)
    assert [r.code for r in rules.rules] == ["PROMO", "BASE", "FIX", "ITEM"]  # by priority, then code
    promo, base, fixed, item = rules.rules
    assert base.reward == PercentReward(rate_bp=500) and base.condition is None and base.lifetime is None
    assert fixed.reward == FixedReward(points=7)
    assert item.reward == PerItemReward(points_per_unit=3)
    assert "receipt has no field 'totl'" in item.condition_error
    assert promo.reward == ProgressiveReward(
        tiers=(ProgressiveTier(0, 100), ProgressiveTier(5, 200)),
        basis=ProgressiveBasis.CUMULATIVE,
        method=ProgressiveMethod.MARGINAL,
        period=CumulativePeriod.ROLLING_DAYS,
        rolling_days=30,
    )
    assert promo.target == RuleTarget(
        skus=frozenset({"A"}),
        channels=frozenset({Channel.APP}),
        days_of_week=frozenset({6}),
        times_of_day=(TimeOfDayRange(1320, 120),),
        member_segments=frozenset({"GOLD"}),
    )
    assert promo.condition is not None and promo.condition.text == 'receipt.channel == "APP"'
    assert (promo.priority, promo.stacking, promo.exclusivity_group) == (10, StackingMode.EXCLUSIVE, "G")
    assert (promo.campaign_id, promo.partner_id, promo.valid_from, promo.valid_until) == (
        "c1",
        "P-1",
        datetime(2024, 5, 1, tzinfo=UTC),
        None,
    )
    assert (promo.min_eligible_amount, promo.max_points_per_receipt, promo.max_uses_per_member) == (100, 50, 1)
    assert (promo.account_kind, promo.slip_text) == ("promo", "Promo!")
    assert promo.lifetime == PointsLifetime(expire_after=timedelta(days=30))
    assert rules.campaigns["c1"].state is CampaignState.PAUSED
    assert rules.campaigns["c1"].partner_ids == frozenset({"P-1"})


def test_unspecified_values_take_the_documented_defaults() -> None:
    rules = rulesets.compile_rule_set(pa.RuleSetSnapshot(), settings=SETTINGS, version=1)
    assert rules.accrual.base is AccrualBase.PAID_WITH_MONEY
    assert rules.accrual.rounding is RoundingMode.DOWN
    assert rules.accrual.lifetime == PointsLifetime()
    assert rules.accrual.account_kind == "base"
    assert not rules.redemption.enabled
    assert rules.redemption.point_value == PointValue(points=1, money=100)  # 1 point = 1.00 RUB
    assert rules.redemption.products is RedeemableProducts.ALL
    assert rules.refund.shortfall_policy is RefundShortfallPolicy.WITHIN_BALANCE


def test_a_rule_without_a_reward_is_a_corrupt_snapshot() -> None:
    broken = pa.RuleSetSnapshot(earning_rules=[pa.EarningRule(rule_id="r", code="X")])
    with pytest.raises(ValueError, match="no reward"):
        rulesets.compile_rule_set(broken, settings=SETTINGS, version=1)


def receipt_proto(**fields: Any) -> types_pb2.Receipt:
    lines = fields.pop(
        "lines",
        [
            types_pb2.ReceiptLine(position=1, sku="A", category_id="DAIRY", quantity_milli=1000, amount=rub(10_000)),
            types_pb2.ReceiptLine(position=2, sku="B", quantity_milli=500, amount=rub(2_550), accrual_excluded=True),
        ],
    )
    total = fields.pop("total", rub(sum(line.amount.amount_minor for line in lines)))
    return types_pb2.Receipt(receipt_id=fields.pop("receipt_id", "R-1"), lines=lines, total=total, **fields)


def test_receipt_from_request() -> None:
    receipt = rulesets.receipt_from_request(
        receipt_proto(issue_time=ts(AT)), settings=SETTINGS, terminal=TERMINAL, field="receipt"
    )
    assert receipt.channel is Channel.ONLINE  # the terminal's default
    assert receipt.issue_time == AT
    assert receipt.total == 12_550
    assert [(line.position, line.amount, line.accrual_excluded) for line in receipt.lines] == [
        (1, 10_000, False),
        (2, 2_550, True),
    ]
    explicit = receipt_proto(channel=types_pb2.SALES_CHANNEL_APP)
    assert rulesets.receipt_from_request(explicit, settings=SETTINGS, terminal=TERMINAL).channel is Channel.APP


def line_proto(position: int, amount: types_pb2.Money | None = None, **fields: Any) -> types_pb2.ReceiptLine:
    return types_pb2.ReceiptLine(
        position=position, quantity_milli=fields.pop("quantity_milli", 1000), amount=amount or rub(100), **fields
    )


BAD_RECEIPTS: list[tuple[str, types_pb2.Receipt, set[str]]] = [
    ("no lines", receipt_proto(lines=[], total=rub(0)), {"receipt.lines"}),
    ("no total", types_pb2.Receipt(receipt_id="R", lines=[line_proto(1)]), {"receipt.total"}),
    ("total differs", receipt_proto(lines=[line_proto(1)], total=rub(99)), {"receipt.total"}),
    ("position twice", receipt_proto(lines=[line_proto(1), line_proto(1)]), {"receipt.lines[1].position"}),
    ("position zero", receipt_proto(lines=[line_proto(0)]), {"receipt.lines[0].position"}),
    ("quantity zero", receipt_proto(lines=[line_proto(1, quantity_milli=0)]), {"receipt.lines[0].quantity_milli"}),
    (
        "negative amount",
        receipt_proto(lines=[line_proto(1, rub(-5))], total=rub(-5)),
        {"receipt.lines[0].amount.amount_minor", "receipt.total.amount_minor"},
    ),
    (
        "another currency",
        receipt_proto(
            lines=[line_proto(1, types_pb2.Money(currency_code="USD", amount_minor=100, scale=2))], total=rub(100)
        ),
        {"receipt.lines[0].amount.currency_code"},
    ),
    (
        "another scale",
        receipt_proto(
            lines=[line_proto(1, types_pb2.Money(currency_code="RUB", amount_minor=1, scale=0))], total=rub(1)
        ),
        {"receipt.lines[0].amount.scale"},
    ),
    (
        "missing amount",
        receipt_proto(lines=[types_pb2.ReceiptLine(position=1, quantity_milli=1)], total=rub(0)),
        {"receipt.lines[0].amount"},
    ),
    ("long SKU", receipt_proto(lines=[line_proto(1, sku="S" * 65)]), {"receipt.lines[0].sku"}),
    ("unknown channel", receipt_proto(channel=99), {"receipt.channel"}),  # type: ignore[arg-type]
    ("no receipt id where required", receipt_proto(receipt_id=""), {"receipt.receipt_id"}),
    ("too many lines", receipt_proto(lines=[line_proto(i) for i in range(1, 502)]), {"receipt.lines"}),
]


@pytest.mark.parametrize(("name", "message", "fields"), BAD_RECEIPTS, ids=[row[0] for row in BAD_RECEIPTS])
def test_receipt_violations(name: str, message: types_pb2.Receipt, fields: set[str]) -> None:
    with pytest.raises(DomainError) as raised:
        rulesets.receipt_from_request(message, settings=SETTINGS, terminal=TERMINAL, receipt_id_required=True)
    assert raised.value.reason is Reason.INVALID_ARGUMENT
    assert {violation.field for violation in raised.value.violations} == fields


def test_points_from_proto() -> None:
    assert rulesets.points_from_proto(pts(12), settings=SETTINGS, field="redeem_points") == 12
    with pytest.raises(DomainError) as raised:
        rulesets.points_from_proto(types_pb2.Points(amount_minor=-1, scale=2), settings=SETTINGS, field="redeem_points")
    assert {v.field for v in raised.value.violations} == {"redeem_points.scale", "redeem_points.amount_minor"}


def test_calculation_to_proto() -> None:
    rules = rulesets.compile_rule_set(snapshot(), settings=SETTINGS, version=3)
    receipt = rulesets.receipt_from_request(receipt_proto(), settings=SETTINGS, terminal=TERMINAL)
    calculation = calculate(
        rules,
        receipt=receipt,
        outlet=rulesets.outlet_facts(TERMINAL),
        member=None,
        at=AT,
        redemption=RedemptionRequest(points=5),
        spendable_points=None,
        redemption_blocked=None,
    )
    message = rulesets.calculation_to_proto(calculation, settings=SETTINGS)
    assert message.rule_set_version == 3
    assert message.accrual == pts(calculation.accrual) and calculation.accrual > 0
    assert message.redemption_refusal == errors_pb2.ERROR_REASON_REDEMPTION_NOT_ALLOWED
    assert message.max_redeemable_limit == processing_pb2.REDEMPTION_LIMIT_NO_MEMBER
    assert message.amount_due == rub(12_550)
    assert [line.position for line in message.lines] == [1, 2]
    assert message.lines[1].accrual_excluded
    assert {r.rule_code: r.reward_type for r in message.applied_rules} == {
        "BASE": pa.REWARD_TYPE_PERCENT,
        "FIX": pa.REWARD_TYPE_FIXED,
    }
    assert {r.rule_code: r.reason for r in message.skipped_rules} == {
        "ITEM": processing_pb2.RULE_SKIP_REASON_CONDITION_ERROR
    }
    part = message.accrual_parts[0]
    assert part.activation_time.ToDatetime(tzinfo=UTC) == AT + timedelta(days=14)
    assert part.expire_time.ToDatetime(tzinfo=UTC) == datetime(2025, 5, 31, 21, tzinfo=UTC)
    assert rulesets.accrual_part_plans(calculation) == rulesets.accrual_part_plans_from_proto(message)


def test_every_enum_value_maps() -> None:
    for limit in RedemptionLimit:
        assert rulesets._LIMITS[limit] != processing_pb2.REDEMPTION_LIMIT_UNSPECIFIED
    for reason in Reason:
        assert rulesets.error_reason(reason) != errors_pb2.ERROR_REASON_UNSPECIFIED
    assert rulesets.error_reason(None) == errors_pb2.ERROR_REASON_UNSPECIFIED


def test_facts_from_the_flow() -> None:
    isolated = rulesets.outlet_facts(replace(TERMINAL, points_scope=PointsScope.ISOLATED, partner_account_kind="acme"))
    assert isolated.points_account_kind == "acme"
    assert rulesets.outlet_facts(TERMINAL).points_account_kind == ""
    resolution = cards_pb2.Resolution(
        member_id="M-1",
        member_segments=["GOLD"],
        member_create_time=ts(datetime(2023, 1, 1, tzinfo=UTC)),
        member_birth_date=cards_pb2.Date(year=0, month=2, day=29),
    )
    facts = rulesets.member_facts(
        resolution, purchase_count=4, app_purchase_count=1, rule_uses={"r1": 2}, spend_by_window={}
    )
    assert facts.birth_date == date(2000, 2, 29)
    assert facts.registration_time == datetime(2023, 1, 1, tzinfo=UTC)
    assert (facts.segments, facts.purchase_count, facts.rule_uses) == (frozenset({"GOLD"}), 4, {"r1": 2})
    assert (
        rulesets.member_facts(
            cards_pb2.Resolution(member_id="M-2"),
            purchase_count=0,
            app_purchase_count=0,
            rule_uses={},
            spend_by_window={},
        ).birth_date
        is None
    )


def test_refunds_to_and_from_protos() -> None:
    receipt = receipt_proto()
    calculation = processing_pb2.Calculation(
        lines=[
            processing_pb2.LineCalculation(position=1, accrual=pts(10), redemption=pts(7)),
            processing_pb2.LineCalculation(position=2, accrual=pts(0), redemption=pts(0)),
        ]
    )
    earlier = [
        processing_pb2.RefundLineResult(
            position=1,
            quantity_milli=500,
            amount=rub(5_000),
            accrual_reversed=pts(3),
            accrual_forgiven=pts(2),
            redemption_restored=pts(3),
        )
    ]
    lines = rulesets.refundable_lines(receipt, calculation, [earlier])
    assert lines[0] == refunds.RefundableLine(
        position=1,
        quantity_milli=1000,
        amount=10_000,
        accrual=10,
        redemption=7,
        refunded_quantity_milli=500,
        refunded_amount=5_000,
        refunded_accrual=5,
        refunded_redemption=3,
    )
    plan = refunds.plan_refund(
        lines, returned=rulesets.returned_quantities([processing_pb2.RefundLine(position=1, quantity_milli=500)])
    )
    details = rulesets.refund_details_to_proto(
        plan,
        original_operation_id="op-1",
        full=False,
        rule_set=rulesets.compile_rule_set(snapshot(), settings=SETTINGS, version=3),
        settings=SETTINGS,
    )
    assert list(details.lines) == [
        processing_pb2.RefundLineResult(
            position=1,
            quantity_milli=500,
            amount=rub(5_000),
            accrual_reversed=pts(5),
            accrual_forgiven=pts(0),
            redemption_restored=pts(4),
            remaining_quantity_milli=0,
        )
    ]
    assert details.redemption_value_restored == rub(400)
    assert details.money_to_return == rub(4_600)
    assert details.mode == processing_pb2.REFUND_MODE_LINES
    assert details.shortfall_policy == pa.REFUND_SHORTFALL_POLICY_ALLOW_DEBT
    running = rulesets.add_refund_totals(
        rulesets.refund_totals_to_proto(
            refunds.RefundTotals(amount=5_000, accrual_reversed=3, accrual_forgiven=2, redemption_restored=3),
            settings=SETTINGS,
        ),
        plan,
        settings=SETTINGS,
    )
    assert running == processing_pb2.RefundTotals(
        amount=rub(10_000), accrual_reversed=pts(8), accrual_forgiven=pts(2), redemption_restored=pts(7)
    )
    with pytest.raises(DomainError):
        rulesets.returned_quantities(
            [
                processing_pb2.RefundLine(position=1, quantity_milli=1),
                processing_pb2.RefundLine(position=1, quantity_milli=1),
            ]
        )
