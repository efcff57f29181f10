"""Proto <-> domain for the rules engine. No rules here: shapes, units, defaults and validation.

What it decides:
* `compile_rule_set`: a published RuleSetSnapshot (bytes or message) plus the program's settings
  -> the domain RuleSet, with every condition compiled once (the caller caches the result by
  version). UNSPECIFIED enums take the defaults the proto documents; a condition that no longer
  compiles does not break the version: its rule is skipped with CONDITION_ERROR. A snapshot that
  is structurally impossible (a rule without a reward, bad tiers) raises ValueError: publication
  validates those, so it means a corrupt snapshot.
* `receipt_from_request`: loyalty.common.v1.Receipt -> domain Receipt, or INVALID_ARGUMENT with
  one FieldViolation per bad field (proto field paths, e.g. "receipt.lines[2].amount"): 1..500
  lines, unique positive positions, quantity > 0, amounts >= 0 in the program's currency AND
  scale, the total equal to the sum of the lines, identifiers at most 64 characters.
  An unset channel is the terminal's default channel.
* `calculation_to_proto` and back-and-forth helpers for accrual parts, refunds and the facts the
  flow hands to the engine (outlet, member).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Any

from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp
from loyalty.cards.v1 import cards_pb2
from loyalty.common.v1 import errors_pb2, types_pb2
from loyalty.processing.v1 import processing_pb2, program_admin_pb2

from services.processing.domain import refunds as refund_domain
from services.processing.domain.conditions import ConditionError, compile_condition
from services.processing.domain.operations import AccrualPartPlan
from services.processing.domain.program import ProgramSettings, TerminalContext
from services.processing.domain.receipts import RECEIPT_LINES_MAX, Channel, Receipt, ReceiptLine
from services.processing.domain.rules import (
    AccrualBase,
    AccrualPolicy,
    Calculation,
    Campaign,
    CampaignState,
    CumulativePeriod,
    EarningRule,
    ExpiryRounding,
    FixedReward,
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
    RefundPolicy,
    RefundShortfallPolicy,
    Reward,
    RewardType,
    RoundingMode,
    RuleSet,
    RuleSkipReason,
    RuleTarget,
    SpendWindow,
    StackingMode,
    TimeOfDayRange,
)
from shared.errors import FieldViolation, Reason, invalid_argument

pa = program_admin_pb2
IDENTIFIER_MAX = 64

_CHANNELS: Mapping[int, Channel] = {
    types_pb2.SALES_CHANNEL_POS: Channel.POS,
    types_pb2.SALES_CHANNEL_ONLINE: Channel.ONLINE,
    types_pb2.SALES_CHANNEL_APP: Channel.APP,
}
_ACCRUAL_BASES: Mapping[int, AccrualBase] = {pa.ACCRUAL_BASE_FULL_AMOUNT: AccrualBase.FULL_AMOUNT}
_ROUNDING: Mapping[int, RoundingMode] = {
    pa.ROUNDING_MODE_HALF_UP: RoundingMode.HALF_UP,
    pa.ROUNDING_MODE_UP: RoundingMode.UP,
}
_EXPIRY_ROUNDING: Mapping[int, ExpiryRounding] = {
    pa.EXPIRY_ROUNDING_END_OF_DAY: ExpiryRounding.END_OF_DAY,
    pa.EXPIRY_ROUNDING_END_OF_MONTH: ExpiryRounding.END_OF_MONTH,
    pa.EXPIRY_ROUNDING_END_OF_YEAR: ExpiryRounding.END_OF_YEAR,
}
_PRODUCTS: Mapping[int, RedeemableProducts] = {
    pa.REDEEMABLE_PRODUCTS_SUBSET: RedeemableProducts.SUBSET,
    pa.REDEEMABLE_PRODUCTS_MEMBERS_ONLY_ITEMS: RedeemableProducts.MEMBERS_ONLY_ITEMS,
}
_SHORTFALL: Mapping[int, RefundShortfallPolicy] = {
    pa.REFUND_SHORTFALL_POLICY_ONLY_PENDING: RefundShortfallPolicy.ONLY_PENDING,
    pa.REFUND_SHORTFALL_POLICY_ALLOW_DEBT: RefundShortfallPolicy.ALLOW_DEBT,
}
_PERIODS: Mapping[int, CumulativePeriod] = {
    pa.CUMULATIVE_PERIOD_CALENDAR_QUARTER: CumulativePeriod.CALENDAR_QUARTER,
    pa.CUMULATIVE_PERIOD_CALENDAR_YEAR: CumulativePeriod.CALENDAR_YEAR,
    pa.CUMULATIVE_PERIOD_ROLLING_DAYS: CumulativePeriod.ROLLING_DAYS,
}
_CAMPAIGN_STATES: Mapping[int, CampaignState] = {
    pa.CAMPAIGN_STATE_PAUSED: CampaignState.PAUSED,
    pa.CAMPAIGN_STATE_ARCHIVED: CampaignState.ARCHIVED,
}
_REWARD_TYPES: Mapping[RewardType, int] = {
    RewardType.PERCENT: pa.REWARD_TYPE_PERCENT,
    RewardType.FIXED: pa.REWARD_TYPE_FIXED,
    RewardType.PER_ITEM: pa.REWARD_TYPE_PER_ITEM,
    RewardType.PROGRESSIVE: pa.REWARD_TYPE_PROGRESSIVE,
}
_SKIP_REASONS: Mapping[RuleSkipReason, int] = {
    reason: processing_pb2.RuleSkipReason.Value(f"RULE_SKIP_REASON_{reason.value}") for reason in RuleSkipReason
}
_LIMITS: Mapping[RedemptionLimit, int] = {
    limit: processing_pb2.RedemptionLimit.Value(f"REDEMPTION_LIMIT_{limit.value}") for limit in RedemptionLimit
}
_SHORTFALL_TO_PROTO: Mapping[RefundShortfallPolicy, int] = {
    RefundShortfallPolicy.ONLY_PENDING: pa.REFUND_SHORTFALL_POLICY_ONLY_PENDING,
    RefundShortfallPolicy.WITHIN_BALANCE: pa.REFUND_SHORTFALL_POLICY_WITHIN_BALANCE,
    RefundShortfallPolicy.ALLOW_DEBT: pa.REFUND_SHORTFALL_POLICY_ALLOW_DEBT,
}


# ---------------------------------------------------------------------------------------------
# Rule set
# ---------------------------------------------------------------------------------------------


def compile_rule_set(
    snapshot: bytes | program_admin_pb2.RuleSetSnapshot, *, settings: ProgramSettings, version: int
) -> RuleSet:
    """The domain RuleSet of one published version; compile once per version and cache it."""
    if isinstance(snapshot, bytes):
        message = pa.RuleSetSnapshot()
        message.ParseFromString(snapshot)
    else:
        message = snapshot
    point_value = _point_value(message.redemption_policy, settings)
    return RuleSet(
        version=version,
        currency_code=settings.currency_code,
        currency_scale=settings.currency_scale,
        point_scale=settings.point_scale,
        time_zone=settings.time_zone,
        accrual=_accrual_policy(message.accrual_policy),
        redemption=_redemption_policy(message.redemption_policy, point_value),
        refund=_refund_policy(message.refund_policy),
        rules=tuple(
            _earning_rule(rule)
            for rule in message.earning_rules
            if rule.state in (pa.EARNING_RULE_STATE_ACTIVE, pa.EARNING_RULE_STATE_UNSPECIFIED)
        ),
        campaigns={campaign.campaign_id: _campaign(campaign) for campaign in message.campaigns},
    )


def _duration(value: Duration) -> timedelta:
    return value.ToTimedelta()


def _time(value: Timestamp) -> datetime:
    return value.ToDatetime(tzinfo=UTC)


def _optional_time(message: Any, name: str) -> datetime | None:
    return _time(getattr(message, name)) if message.HasField(name) else None


def _lifetime(message: program_admin_pb2.PointsLifetime) -> PointsLifetime:
    expire_after = _duration(message.expire_after) if message.HasField("expire_after") else timedelta(0)
    pending = _duration(message.pending_period) if message.HasField("pending_period") else timedelta(0)
    return PointsLifetime(
        pending_period=max(pending, timedelta(0)),
        expire_after=expire_after if expire_after > timedelta(0) else None,
        expiry_rounding=_EXPIRY_ROUNDING.get(message.expiry_rounding, ExpiryRounding.NONE),
    )


def _accrual_policy(message: program_admin_pb2.AccrualPolicy) -> AccrualPolicy:
    return AccrualPolicy(
        base=_ACCRUAL_BASES.get(message.base, AccrualBase.PAID_WITH_MONEY),
        rounding=_ROUNDING.get(message.rounding, RoundingMode.DOWN),
        lifetime=_lifetime(message.lifetime),
        account_kind=message.account_kind or "base",
    )


def _point_value(message: program_admin_pb2.RedemptionPolicy, settings: ProgramSettings) -> PointValue:
    value = message.point_value
    if value.points.amount_minor > 0 and value.money.amount_minor > 0:
        return PointValue(points=value.points.amount_minor, money=value.money.amount_minor)
    # Unset: one point is worth one unit of the currency.
    return PointValue(points=10**settings.point_scale, money=10**settings.currency_scale)


def _redemption_policy(message: program_admin_pb2.RedemptionPolicy, point_value: PointValue) -> RedemptionPolicy:
    share = message.max_share_bp if 0 < message.max_share_bp < 10_000 else 0
    max_points = message.max_points_per_receipt.amount_minor if message.HasField("max_points_per_receipt") else 0
    return RedemptionPolicy(
        enabled=message.enabled,
        point_value=point_value,
        products=_PRODUCTS.get(message.products, RedeemableProducts.ALL),
        included_skus=frozenset(message.included_skus),
        included_category_ids=frozenset(message.included_category_ids),
        excluded_skus=frozenset(message.excluded_skus),
        excluded_category_ids=frozenset(message.excluded_category_ids),
        members_only_skus=frozenset(message.members_only_skus),
        members_only_category_ids=frozenset(message.members_only_category_ids),
        max_share_bp=share,
        min_receipt_amount=(
            message.min_receipt_amount.amount_minor if message.HasField("min_receipt_amount") else None
        ),
        min_line_remainder=(
            max(0, message.min_line_remainder.amount_minor) if message.HasField("min_line_remainder") else 0
        ),
        min_points_per_receipt=(
            max(0, message.min_points_per_receipt.amount_minor) if message.HasField("min_points_per_receipt") else 0
        ),
        max_points_per_receipt=max_points if max_points > 0 else None,
        require_card_or_qr=message.require_card_or_qr,
        spend_order=tuple(message.spend_order),
    )


def _refund_policy(message: program_admin_pb2.RefundPolicy) -> RefundPolicy:
    lifetime = (
        _duration(message.restored_points_min_lifetime)
        if message.HasField("restored_points_min_lifetime")
        else timedelta(0)
    )
    return RefundPolicy(
        shortfall_policy=_SHORTFALL.get(message.shortfall_policy, RefundShortfallPolicy.WITHIN_BALANCE),
        restored_points_min_lifetime=lifetime if lifetime > timedelta(0) else timedelta(days=30),
    )


def _reward(rule: program_admin_pb2.EarningRule) -> Reward:
    kind = rule.WhichOneof("reward")
    if kind == "percent":
        return PercentReward(rate_bp=rule.percent.rate_bp)
    if kind == "fixed":
        return FixedReward(points=rule.fixed.points.amount_minor)
    if kind == "per_item":
        return PerItemReward(points_per_unit=rule.per_item.points_per_unit.amount_minor)
    if kind == "progressive":
        reward = rule.progressive
        return ProgressiveReward(
            tiers=tuple(ProgressiveTier(threshold=t.threshold.amount_minor, rate_bp=t.rate_bp) for t in reward.tiers),
            basis=(
                ProgressiveBasis.CUMULATIVE
                if reward.basis == pa.PROGRESSIVE_BASIS_CUMULATIVE
                else ProgressiveBasis.PER_RECEIPT
            ),
            method=(
                ProgressiveMethod.MARGINAL
                if reward.method == pa.PROGRESSIVE_METHOD_MARGINAL
                else ProgressiveMethod.WHOLE_AMOUNT
            ),
            period=_PERIODS.get(reward.period, CumulativePeriod.CALENDAR_MONTH),
            rolling_days=reward.rolling_days,
        )
    raise ValueError(f"earning rule {rule.code or rule.rule_id} has no reward")


def _target(message: program_admin_pb2.RuleTarget) -> RuleTarget:
    return RuleTarget(
        skus=frozenset(message.skus),
        category_ids=frozenset(message.category_ids),
        excluded_skus=frozenset(message.excluded_skus),
        excluded_category_ids=frozenset(message.excluded_category_ids),
        outlet_ids=frozenset(message.outlet_ids),
        region_codes=frozenset(message.region_codes),
        channels=frozenset(_CHANNELS[c] for c in message.channels if c in _CHANNELS),
        member_segments=frozenset(message.member_segments),
        days_of_week=frozenset(d for d in message.days_of_week if 1 <= d <= 7),
        times_of_day=tuple(TimeOfDayRange(r.start_minute, r.end_minute) for r in message.times_of_day),
    )


def _earning_rule(rule: program_admin_pb2.EarningRule) -> EarningRule:
    condition = None
    condition_error = ""
    if rule.condition.strip():
        try:
            condition = compile_condition(rule.condition)
        except ConditionError as error:
            condition_error = str(error)
    max_points = rule.max_points_per_receipt.amount_minor if rule.HasField("max_points_per_receipt") else 0
    return EarningRule(
        rule_id=rule.rule_id,
        code=rule.code,
        name=rule.name,
        reward=_reward(rule),
        target=_target(rule.target),
        priority=rule.priority,
        stacking=StackingMode.EXCLUSIVE if rule.stacking == pa.STACKING_MODE_EXCLUSIVE else StackingMode.STACKABLE,
        exclusivity_group=rule.exclusivity_group,
        campaign_id=rule.campaign_id,
        partner_id=rule.partner_id,
        valid_from=_optional_time(rule.validity, "start_time") if rule.HasField("validity") else None,
        valid_until=_optional_time(rule.validity, "end_time") if rule.HasField("validity") else None,
        condition=condition,
        condition_error=condition_error,
        min_eligible_amount=rule.min_eligible_amount.amount_minor if rule.HasField("min_eligible_amount") else None,
        max_points_per_receipt=max_points if max_points > 0 else None,
        max_uses_per_member=max(0, rule.max_uses_per_member),
        account_kind=rule.account_kind,
        lifetime=_lifetime(rule.lifetime) if rule.HasField("lifetime") else None,
        slip_text=rule.slip_text,
    )


def _campaign(message: program_admin_pb2.Campaign) -> Campaign:
    return Campaign(
        campaign_id=message.campaign_id,
        code=message.code,
        name=message.name,
        state=_CAMPAIGN_STATES.get(message.state, CampaignState.ACTIVE),
        start_time=_optional_time(message.period, "start_time") if message.HasField("period") else None,
        end_time=_optional_time(message.period, "end_time") if message.HasField("period") else None,
        partner_ids=frozenset(message.partner_ids),
    )


# ---------------------------------------------------------------------------------------------
# Facts
# ---------------------------------------------------------------------------------------------


def outlet_facts(terminal: TerminalContext) -> OutletFacts:
    return OutletFacts(
        terminal_id=terminal.terminal_id,
        outlet_id=terminal.outlet_id,
        outlet_code=terminal.outlet_code,
        region_code=terminal.region_code,
        partner_id=terminal.partner_id,
        time_zone=terminal.time_zone,
        accrual_enabled=terminal.accrual_enabled,
        redemption_enabled=terminal.redemption_enabled,
        points_account_kind=terminal.partner_account_kind if int(terminal.points_scope) == 2 else "",
    )


def member_facts(
    resolution: cards_pb2.Resolution,
    *,
    purchase_count: int,
    app_purchase_count: int,
    rule_uses: Mapping[str, int],
    spend_by_window: Mapping[SpendWindow, int],
) -> MemberFacts:
    return MemberFacts(
        member_id=resolution.member_id,
        segments=frozenset(resolution.member_segments),
        registration_time=_optional_time(resolution, "member_create_time"),
        birth_date=_birth_date(resolution),
        purchase_count=purchase_count,
        app_purchase_count=app_purchase_count,
        rule_uses=dict(rule_uses),
        spend_by_window=dict(spend_by_window),
    )


def _birth_date(resolution: cards_pb2.Resolution) -> date | None:
    if not resolution.HasField("member_birth_date"):
        return None
    value = resolution.member_birth_date
    try:
        # An unknown year (0) becomes a leap year so that 29 February stays valid; only the
        # month and day matter to birthday conditions.
        return date(value.year or 2000, value.month, value.day)
    except ValueError:
        return None


# ---------------------------------------------------------------------------------------------
# Receipts and amounts from the register
# ---------------------------------------------------------------------------------------------


def money_violations(money: types_pb2.Money, *, settings: ProgramSettings, field: str) -> list[FieldViolation]:
    violations = []
    if money.currency_code != settings.currency_code:
        violations.append(
            FieldViolation(f"{field}.currency_code", f"must be the program's currency {settings.currency_code}")
        )
    if money.scale != settings.currency_scale:
        violations.append(
            FieldViolation(f"{field}.scale", f"must be the program's currency scale {settings.currency_scale}")
        )
    if money.amount_minor < 0:
        violations.append(FieldViolation(f"{field}.amount_minor", "must not be negative"))
    return violations


def points_from_proto(points: types_pb2.Points, *, settings: ProgramSettings, field: str) -> int:
    """A non-negative Points amount in the program's point scale, or INVALID_ARGUMENT."""
    violations = []
    if points.scale != settings.point_scale:
        violations.append(FieldViolation(f"{field}.scale", f"must be the program's point scale {settings.point_scale}"))
    if points.amount_minor < 0:
        violations.append(FieldViolation(f"{field}.amount_minor", "must not be negative"))
    if violations:
        raise invalid_argument(violations)
    return int(points.amount_minor)


def receipt_violations(
    receipt: types_pb2.Receipt, *, settings: ProgramSettings, field: str = "receipt", receipt_id_required: bool = False
) -> list[FieldViolation]:
    """Every problem of a register's receipt, as field violations (empty: acceptable)."""
    violations: list[FieldViolation] = []
    if receipt_id_required and not receipt.receipt_id:
        violations.append(FieldViolation(f"{field}.receipt_id", "required"))
    if len(receipt.receipt_id) > IDENTIFIER_MAX:
        violations.append(FieldViolation(f"{field}.receipt_id", f"at most {IDENTIFIER_MAX} characters"))
    if not 1 <= len(receipt.lines) <= RECEIPT_LINES_MAX:
        violations.append(FieldViolation(f"{field}.lines", f"a receipt has 1..{RECEIPT_LINES_MAX} lines"))
    if receipt.channel and receipt.channel not in _CHANNELS:
        violations.append(FieldViolation(f"{field}.channel", "unknown sales channel"))
    seen: set[int] = set()
    for index, line in enumerate(receipt.lines):
        violations.extend(_line_violations(line, settings=settings, field=f"{field}.lines[{index}]", seen=seen))
    if not receipt.HasField("total"):
        violations.append(FieldViolation(f"{field}.total", "required"))
    else:
        violations.extend(money_violations(receipt.total, settings=settings, field=f"{field}.total"))
        line_sum = sum(line.amount.amount_minor for line in receipt.lines)
        if receipt.total.amount_minor != line_sum:
            violations.append(
                FieldViolation(
                    f"{field}.total",
                    f"must equal the sum of the line amounts ({line_sum}), got {receipt.total.amount_minor}",
                )
            )
    return violations


def _line_violations(
    line: types_pb2.ReceiptLine, *, settings: ProgramSettings, field: str, seen: set[int]
) -> list[FieldViolation]:
    violations = []
    if line.position < 1:
        violations.append(FieldViolation(f"{field}.position", "must be positive"))
    elif line.position in seen:
        violations.append(FieldViolation(f"{field}.position", f"position {line.position} appears twice"))
    seen.add(line.position)
    for name in ("sku", "category_id"):
        if len(getattr(line, name)) > IDENTIFIER_MAX:
            violations.append(FieldViolation(f"{field}.{name}", f"at most {IDENTIFIER_MAX} characters"))
    if line.quantity_milli <= 0:
        violations.append(FieldViolation(f"{field}.quantity_milli", "must be positive"))
    if not line.HasField("amount"):
        violations.append(FieldViolation(f"{field}.amount", "required"))
    else:
        violations.extend(money_violations(line.amount, settings=settings, field=f"{field}.amount"))
    if line.HasField("unit_price"):
        violations.extend(money_violations(line.unit_price, settings=settings, field=f"{field}.unit_price"))
    return violations


def receipt_from_request(
    receipt: types_pb2.Receipt,
    *,
    settings: ProgramSettings,
    terminal: TerminalContext,
    field: str = "receipt",
    receipt_id_required: bool = False,
) -> Receipt:
    """The domain receipt, or INVALID_ARGUMENT listing every bad field."""
    violations = receipt_violations(receipt, settings=settings, field=field, receipt_id_required=receipt_id_required)
    if violations:
        raise invalid_argument(violations)
    channel = _CHANNELS.get(receipt.channel) or _CHANNELS.get(int(terminal.default_channel), Channel.POS)
    return Receipt(
        receipt_id=receipt.receipt_id,
        issue_time=_optional_time(receipt, "issue_time"),
        channel=channel,
        total=receipt.total.amount_minor,
        lines=tuple(
            ReceiptLine(
                position=line.position,
                sku=line.sku,
                name=line.name,
                category_id=line.category_id,
                quantity_milli=line.quantity_milli,
                unit_price=line.unit_price.amount_minor,
                amount=line.amount.amount_minor,
                accrual_excluded=line.accrual_excluded,
                redemption_excluded=line.redemption_excluded,
            )
            for line in receipt.lines
        ),
    )


# ---------------------------------------------------------------------------------------------
# Calculation
# ---------------------------------------------------------------------------------------------


def _money(amount: int, settings: ProgramSettings) -> types_pb2.Money:
    return types_pb2.Money(currency_code=settings.currency_code, amount_minor=amount, scale=settings.currency_scale)


def _points(amount: int, settings: ProgramSettings) -> types_pb2.Points:
    return types_pb2.Points(amount_minor=amount, scale=settings.point_scale)


def _timestamp(value: datetime) -> Timestamp:
    timestamp = Timestamp()
    timestamp.FromDatetime(value.astimezone(UTC))
    return timestamp


def error_reason(reason: Reason | None) -> errors_pb2.ErrorReason.ValueType:
    if reason is None:
        return errors_pb2.ERROR_REASON_UNSPECIFIED
    return errors_pb2.ErrorReason.Value(f"ERROR_REASON_{reason.value}")


def calculation_to_proto(calculation: Calculation, *, settings: ProgramSettings) -> processing_pb2.Calculation:
    message = processing_pb2.Calculation(
        rule_set_version=calculation.rule_set_version,
        accrual=_points(calculation.accrual, settings),
        max_redeemable=_points(calculation.max_redeemable, settings),
        max_redeemable_limit=_LIMITS[calculation.max_redeemable_limit],  # type: ignore[arg-type]
        redemption=_points(calculation.redemption, settings),
        redemption_value=_money(calculation.redemption_value, settings),
        amount_due=_money(calculation.amount_due, settings),
        redemption_refusal=error_reason(calculation.redemption_refusal),
        slip_lines=list(calculation.slip_lines),
    )
    for part in calculation.accrual_parts:
        proto_part = message.accrual_parts.add(account_kind=part.account_kind, points=_points(part.points, settings))
        proto_part.activation_time.CopyFrom(_timestamp(part.activation_time))
        if part.expire_time is not None:
            proto_part.expire_time.CopyFrom(_timestamp(part.expire_time))
    for line in calculation.lines:
        message.lines.add(
            position=line.position,
            accrual=_points(line.accrual, settings),
            accrual_by_rule=[
                processing_pb2.RuleAccrual(rule_id=item.rule_id, points=_points(item.points, settings))
                for item in line.accrual_by_rule
            ],
            max_redeemable=_points(line.max_redeemable, settings),
            redemption=_points(line.redemption, settings),
            redemption_value=_money(line.redemption_value, settings),
            amount_due=_money(line.amount_due, settings),
            accrual_excluded=line.accrual_excluded,
            redemption_excluded=line.redemption_excluded,
        )
    for rule in calculation.applied_rules:
        message.applied_rules.add(
            rule_id=rule.rule_id,
            rule_code=rule.rule_code,
            rule_name=rule.rule_name,
            campaign_id=rule.campaign_id,
            reward_type=_REWARD_TYPES[rule.reward_type],  # type: ignore[arg-type]
            points=_points(rule.points, settings),
            base_amount=_money(rule.base_amount, settings),
            rate_bp=rule.rate_bp,
            positions=list(rule.positions),
            explanation=rule.explanation,
        )
    for skipped in calculation.skipped_rules:
        message.skipped_rules.add(
            rule_id=skipped.rule_id,
            rule_code=skipped.rule_code,
            reason=_SKIP_REASONS[skipped.reason],  # type: ignore[arg-type]
            explanation=skipped.explanation,
        )
    return message


def accrual_part_plans(calculation: Calculation) -> list[AccrualPartPlan]:
    """The wallet accruals of a calculation: one per accrual part with points."""
    return [
        AccrualPartPlan(
            account_kind=part.account_kind,
            points=part.points,
            activation_time=part.activation_time,
            expire_time=part.expire_time,
        )
        for part in calculation.accrual_parts
        if part.points > 0
    ]


def accrual_part_plans_from_proto(calculation: processing_pb2.Calculation) -> list[AccrualPartPlan]:
    """The same from a stored Calculation message (e.g. an authorization's)."""
    return [
        AccrualPartPlan(
            account_kind=part.account_kind,
            points=part.points.amount_minor,
            activation_time=_optional_time(part, "activation_time"),
            expire_time=_optional_time(part, "expire_time"),
        )
        for part in calculation.accrual_parts
        if part.points.amount_minor > 0
    ]


# ---------------------------------------------------------------------------------------------
# Refunds
# ---------------------------------------------------------------------------------------------


def refundable_lines(
    receipt: types_pb2.Receipt,
    calculation: processing_pb2.Calculation,
    earlier_refunds: Iterable[Sequence[processing_pb2.RefundLineResult]] = (),
) -> list[refund_domain.RefundableLine]:
    """The original purchase's lines with what earlier refunds (their RefundDetails.lines) took."""
    taken: dict[int, list[int]] = {}
    for refund in earlier_refunds:
        for result in refund:
            running = taken.setdefault(result.position, [0, 0, 0, 0])
            running[0] += result.quantity_milli
            running[1] += result.amount.amount_minor
            running[2] += result.accrual_reversed.amount_minor + result.accrual_forgiven.amount_minor
            running[3] += result.redemption_restored.amount_minor
    calculated = {line.position: line for line in calculation.lines}
    lines = []
    for line in receipt.lines:
        computed = calculated.get(line.position)
        quantity, amount, accrual, redemption = taken.get(line.position, [0, 0, 0, 0])
        lines.append(
            refund_domain.RefundableLine(
                position=line.position,
                quantity_milli=line.quantity_milli,
                amount=line.amount.amount_minor,
                accrual=computed.accrual.amount_minor if computed else 0,
                redemption=computed.redemption.amount_minor if computed else 0,
                refunded_quantity_milli=quantity,
                refunded_amount=amount,
                refunded_accrual=accrual,
                refunded_redemption=redemption,
            )
        )
    return lines


def refund_lines_to_proto(
    plan: refund_domain.RefundPlan, *, settings: ProgramSettings
) -> list[processing_pb2.RefundLineResult]:
    return [
        processing_pb2.RefundLineResult(
            position=line.position,
            quantity_milli=line.quantity_milli,
            amount=_money(line.amount, settings),
            accrual_reversed=_points(line.accrual_reversed, settings),
            accrual_forgiven=_points(line.accrual_forgiven, settings),
            redemption_restored=_points(line.redemption_restored, settings),
            remaining_quantity_milli=line.remaining_quantity_milli,
        )
        for line in plan.lines
    ]


def refund_totals_to_proto(
    totals: refund_domain.RefundTotals, *, settings: ProgramSettings
) -> processing_pb2.RefundTotals:
    return processing_pb2.RefundTotals(
        amount=_money(totals.amount, settings),
        accrual_reversed=_points(totals.accrual_reversed, settings),
        accrual_forgiven=_points(totals.accrual_forgiven, settings),
        redemption_restored=_points(totals.redemption_restored, settings),
    )


def add_refund_totals(
    running: processing_pb2.RefundTotals, plan: refund_domain.RefundPlan, *, settings: ProgramSettings
) -> processing_pb2.RefundTotals:
    """PurchaseDetails.refunded after this refund: the running totals plus this plan's."""
    totals = plan.totals
    return refund_totals_to_proto(
        refund_domain.RefundTotals(
            amount=running.amount.amount_minor + totals.amount,
            accrual_reversed=running.accrual_reversed.amount_minor + totals.accrual_reversed,
            accrual_forgiven=running.accrual_forgiven.amount_minor + totals.accrual_forgiven,
            redemption_restored=running.redemption_restored.amount_minor + totals.redemption_restored,
        ),
        settings=settings,
    )


def refund_details_to_proto(
    plan: refund_domain.RefundPlan,
    *,
    original_operation_id: str,
    full: bool,
    rule_set: RuleSet,
    settings: ProgramSettings,
) -> processing_pb2.RefundDetails:
    """RefundDetails of a refund, with its money values at the original rule set's point value."""
    point_value = rule_set.redemption.point_value
    return processing_pb2.RefundDetails(
        original_operation_id=original_operation_id,
        mode=processing_pb2.REFUND_MODE_FULL if full else processing_pb2.REFUND_MODE_LINES,
        lines=refund_lines_to_proto(plan, settings=settings),
        totals=refund_totals_to_proto(plan.totals, settings=settings),
        redemption_value_restored=_money(
            refund_domain.redemption_value_restored(plan, point_value=point_value), settings
        ),
        money_to_return=_money(refund_domain.money_to_return(plan, point_value=point_value), settings),
        debt_created=_points(plan.debt_created, settings),
        shortfall_policy=_SHORTFALL_TO_PROTO[rule_set.refund.shortfall_policy],  # type: ignore[arg-type]
    )


def shortfall_to_proto(policy: RefundShortfallPolicy) -> program_admin_pb2.RefundShortfallPolicy.ValueType:
    return _SHORTFALL_TO_PROTO[policy]  # type: ignore[return-value]


def returned_quantities(request_lines: Sequence[processing_pb2.RefundLine]) -> dict[int, int]:
    """RefundRequest.lines as position -> quantity_milli; INVALID_ARGUMENT on repeats."""
    returned: dict[int, int] = {}
    violations = []
    for index, line in enumerate(request_lines):
        if line.position in returned:
            violations.append(FieldViolation(f"lines[{index}].position", f"position {line.position} is listed twice"))
        returned[line.position] = line.quantity_milli
    if violations:
        raise invalid_argument(violations)
    return returned
