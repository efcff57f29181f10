"""The published rule set as the engine uses it, the facts it is applied to, and its result.

What it decides: the domain shape of a RuleSetSnapshot (program_admin.proto) with the
program's currency, point scale and time zone, already normalised (enums with their defaults
applied, conditions compiled, rules sorted by descending priority then code), plus the facts the
register flow supplies (outlet, member, redemption request) and the `Calculation` the engine
returns (the domain twin of processing_pb2.Calculation).

Why a separate module: rules.py is the facade the flow imports; accrual.py and redemption.py
implement the two halves of a calculation and both need these types.

Defaults for UNSPECIFIED enum values follow the proto comments: accrual base PAID_WITH_MONEY,
rounding DOWN, expiry rounding NONE, stacking STACKABLE, redeemable products ALL, refund shortfall
WITHIN_BALANCE. A missing or non-positive point value means "one minor point unit is worth one
minor currency unit scaled by the two scales" (scale 0 points, scale 2 currency: 1 point =
1.00).
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from enum import StrEnum
from typing import NamedTuple
from zoneinfo import ZoneInfo

from shared.errors import FieldViolation, Reason, invalid_argument

from .arithmetic import RoundingMode
from .conditions import CompiledCondition
from .receipts import Channel

__all__ = [
    "AccrualBase",
    "AccrualPart",
    "AccrualPolicy",
    "AppliedRule",
    "Calculation",
    "Campaign",
    "CampaignState",
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
]

BP = 10_000  # basis points in 100%


# ---------------------------------------------------------------------------------------------
# Policies
# ---------------------------------------------------------------------------------------------


class AccrualBase(StrEnum):
    PAID_WITH_MONEY = "PAID_WITH_MONEY"  # line amount minus what points paid (the default)
    FULL_AMOUNT = "FULL_AMOUNT"


class ExpiryRounding(StrEnum):
    NONE = "NONE"
    END_OF_DAY = "END_OF_DAY"
    END_OF_MONTH = "END_OF_MONTH"
    END_OF_YEAR = "END_OF_YEAR"


@dataclass(frozen=True)
class PointsLifetime:
    # Time after the operation before points become spendable; zero: at once.
    pending_period: timedelta = timedelta(0)
    # Time after activation when points expire; None: never.
    expire_after: timedelta | None = None
    expiry_rounding: ExpiryRounding = ExpiryRounding.NONE

    def __post_init__(self) -> None:
        if self.pending_period < timedelta(0):
            raise ValueError("pending_period must not be negative")
        if self.expire_after is not None and self.expire_after <= timedelta(0):
            raise ValueError("expire_after must be positive (None: never expires)")


@dataclass(frozen=True)
class AccrualPolicy:
    base: AccrualBase = AccrualBase.PAID_WITH_MONEY
    rounding: RoundingMode = RoundingMode.DOWN
    lifetime: PointsLifetime = PointsLifetime()
    account_kind: str = "base"


@dataclass(frozen=True)
class PointValue:
    """`points` minor point units are worth `money` minor currency units."""

    points: int
    money: int

    def __post_init__(self) -> None:
        if self.points <= 0 or self.money <= 0:
            raise ValueError("a point value needs positive points and money")

    def money_of(self, points: int) -> int:
        """The money `points` cover, rounded down to the currency's minor unit."""
        return points * self.money // self.points

    def points_within(self, money: int) -> int:
        """The most points whose value does not exceed `money`."""
        return money * self.points // self.money


class RedeemableProducts(StrEnum):
    ALL = "ALL"
    SUBSET = "SUBSET"
    MEMBERS_ONLY_ITEMS = "MEMBERS_ONLY_ITEMS"


@dataclass(frozen=True)
class RedemptionPolicy:
    enabled: bool = False
    point_value: PointValue = PointValue(points=1, money=1)
    products: RedeemableProducts = RedeemableProducts.ALL
    included_skus: frozenset[str] = frozenset()
    included_category_ids: frozenset[str] = frozenset()
    excluded_skus: frozenset[str] = frozenset()
    excluded_category_ids: frozenset[str] = frozenset()
    members_only_skus: frozenset[str] = frozenset()
    members_only_category_ids: frozenset[str] = frozenset()
    # 0 or 10000: no limit.
    max_share_bp: int = 0
    min_receipt_amount: int | None = None
    # Money that must remain to be paid on each line; 0: none.
    min_line_remainder: int = 0
    # 0: no minimum.
    min_points_per_receipt: int = 0
    # None: no limit.
    max_points_per_receipt: int | None = None
    require_card_or_qr: bool = False
    spend_order: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not 0 <= self.max_share_bp <= BP:
            raise ValueError("max_share_bp must be within 0..10000")
        if self.min_line_remainder < 0 or self.min_points_per_receipt < 0:
            raise ValueError("redemption minimums must not be negative")
        if self.max_points_per_receipt is not None and self.max_points_per_receipt <= 0:
            raise ValueError("max_points_per_receipt must be positive (None: no limit)")


class RefundShortfallPolicy(StrEnum):
    ONLY_PENDING = "ONLY_PENDING"
    WITHIN_BALANCE = "WITHIN_BALANCE"  # the default
    ALLOW_DEBT = "ALLOW_DEBT"


@dataclass(frozen=True)
class RefundPolicy:
    shortfall_policy: RefundShortfallPolicy = RefundShortfallPolicy.WITHIN_BALANCE
    restored_points_min_lifetime: timedelta = timedelta(days=30)


# ---------------------------------------------------------------------------------------------
# Earning rules and campaigns
# ---------------------------------------------------------------------------------------------


class RewardType(StrEnum):
    PERCENT = "PERCENT"
    FIXED = "FIXED"
    PER_ITEM = "PER_ITEM"
    PROGRESSIVE = "PROGRESSIVE"


@dataclass(frozen=True)
class PercentReward:
    rate_bp: int

    def __post_init__(self) -> None:
        if not 1 <= self.rate_bp <= 100_000:
            raise ValueError("rate_bp must be within 1..100000")


@dataclass(frozen=True)
class FixedReward:
    points: int

    def __post_init__(self) -> None:
        if self.points <= 0:
            raise ValueError("a fixed reward must be positive")


@dataclass(frozen=True)
class PerItemReward:
    points_per_unit: int

    def __post_init__(self) -> None:
        if self.points_per_unit <= 0:
            raise ValueError("points_per_unit must be positive")


class ProgressiveBasis(StrEnum):
    PER_RECEIPT = "PER_RECEIPT"
    CUMULATIVE = "CUMULATIVE"


class CumulativePeriod(StrEnum):
    CALENDAR_MONTH = "CALENDAR_MONTH"
    CALENDAR_QUARTER = "CALENDAR_QUARTER"
    CALENDAR_YEAR = "CALENDAR_YEAR"
    ROLLING_DAYS = "ROLLING_DAYS"


class ProgressiveMethod(StrEnum):
    WHOLE_AMOUNT = "WHOLE_AMOUNT"
    MARGINAL = "MARGINAL"


@dataclass(frozen=True)
class ProgressiveTier:
    threshold: int  # money, inclusive
    rate_bp: int

    def __post_init__(self) -> None:
        if self.threshold < 0 or not 0 <= self.rate_bp <= 100_000:
            raise ValueError("a tier needs threshold >= 0 and rate_bp within 0..100000")


@dataclass(frozen=True)
class ProgressiveReward:
    tiers: tuple[ProgressiveTier, ...]
    basis: ProgressiveBasis = ProgressiveBasis.PER_RECEIPT
    method: ProgressiveMethod = ProgressiveMethod.WHOLE_AMOUNT
    period: CumulativePeriod = CumulativePeriod.CALENDAR_MONTH
    rolling_days: int = 0

    def __post_init__(self) -> None:
        if not 1 <= len(self.tiers) <= 20:
            raise ValueError("a progressive reward has 1..20 tiers")
        thresholds = [tier.threshold for tier in self.tiers]
        if any(b <= a for a, b in itertools.pairwise(thresholds)):
            raise ValueError("tier thresholds must increase strictly")
        rolling = self.basis is ProgressiveBasis.CUMULATIVE and self.period is CumulativePeriod.ROLLING_DAYS
        if rolling and not 1 <= self.rolling_days <= 366:
            raise ValueError("rolling_days must be within 1..366")


Reward = PercentReward | FixedReward | PerItemReward | ProgressiveReward


def reward_type(reward: Reward) -> RewardType:
    if isinstance(reward, PercentReward):
        return RewardType.PERCENT
    if isinstance(reward, FixedReward):
        return RewardType.FIXED
    if isinstance(reward, PerItemReward):
        return RewardType.PER_ITEM
    return RewardType.PROGRESSIVE


class StackingMode(StrEnum):
    STACKABLE = "STACKABLE"
    EXCLUSIVE = "EXCLUSIVE"


@dataclass(frozen=True)
class TimeOfDayRange:
    """[start_minute, end_minute) after local midnight; wraps past midnight when end < start."""

    start_minute: int
    end_minute: int

    def __post_init__(self) -> None:
        if not 0 <= self.start_minute <= 1439 or not 1 <= self.end_minute <= 1440:
            raise ValueError("time of day range: start 0..1439, end 1..1440")

    def contains(self, minute: int) -> bool:
        if self.start_minute < self.end_minute:
            return self.start_minute <= minute < self.end_minute
        if self.start_minute == self.end_minute:
            return False
        return minute >= self.start_minute or minute < self.end_minute


@dataclass(frozen=True)
class RuleTarget:
    """Within a field values are alternatives; fields combine with AND; empty: no restriction."""

    skus: frozenset[str] = frozenset()
    category_ids: frozenset[str] = frozenset()
    excluded_skus: frozenset[str] = frozenset()
    excluded_category_ids: frozenset[str] = frozenset()
    outlet_ids: frozenset[str] = frozenset()
    region_codes: frozenset[str] = frozenset()
    channels: frozenset[Channel] = frozenset()
    member_segments: frozenset[str] = frozenset()
    # ISO weekdays, 1 = Monday .. 7 = Sunday.
    days_of_week: frozenset[int] = frozenset()
    times_of_day: tuple[TimeOfDayRange, ...] = ()

    def __post_init__(self) -> None:
        if any(not 1 <= day <= 7 for day in self.days_of_week):
            raise ValueError("days_of_week holds ISO weekdays 1..7")


@dataclass(frozen=True)
class EarningRule:
    rule_id: str
    code: str
    reward: Reward
    name: str = ""
    target: RuleTarget = RuleTarget()
    priority: int = 0
    stacking: StackingMode = StackingMode.STACKABLE
    exclusivity_group: str = ""
    campaign_id: str = ""
    partner_id: str = ""
    # The rule's own validity [valid_from, valid_until); None bounds are open.
    valid_from: datetime | None = None
    valid_until: datetime | None = None
    condition: CompiledCondition | None = None
    # Set when a stored condition no longer compiles: the rule is then skipped with
    # CONDITION_ERROR instead of failing every calculation.
    condition_error: str = ""
    min_eligible_amount: int | None = None
    max_points_per_receipt: int | None = None
    # 0: unlimited.
    max_uses_per_member: int = 0
    # "": AccrualPolicy.account_kind.
    account_kind: str = ""
    # None: AccrualPolicy.lifetime.
    lifetime: PointsLifetime | None = None
    slip_text: str = ""

    def __post_init__(self) -> None:
        if not self.rule_id or not self.code:
            raise ValueError("an earning rule needs rule_id and code")
        if self.max_uses_per_member < 0:
            raise ValueError("max_uses_per_member must not be negative")
        if self.max_points_per_receipt is not None and self.max_points_per_receipt <= 0:
            raise ValueError("max_points_per_receipt must be positive (None: no cap)")

    @property
    def reward_type(self) -> RewardType:
        return reward_type(self.reward)

    @property
    def is_cumulative(self) -> bool:
        return isinstance(self.reward, ProgressiveReward) and self.reward.basis is ProgressiveBasis.CUMULATIVE


class CampaignState(StrEnum):
    ACTIVE = "ACTIVE"
    PAUSED = "PAUSED"
    ARCHIVED = "ARCHIVED"


@dataclass(frozen=True)
class Campaign:
    campaign_id: str
    code: str
    start_time: datetime | None
    end_time: datetime | None = None
    state: CampaignState = CampaignState.ACTIVE
    name: str = ""
    # Empty: all partners.
    partner_ids: frozenset[str] = frozenset()

    def running(self, at: datetime) -> bool:
        if self.state is not CampaignState.ACTIVE:
            return False
        if self.start_time is not None and at < self.start_time:
            return False
        return self.end_time is None or at < self.end_time


@dataclass(frozen=True)
class RuleSet:
    """One published rule set version with the program settings it is read with."""

    version: int
    currency_code: str
    currency_scale: int
    point_scale: int
    # IANA zone for calendar periods and expiry rounding, and outlets without their own.
    time_zone: str
    accrual: AccrualPolicy = AccrualPolicy()
    redemption: RedemptionPolicy = RedemptionPolicy()
    refund: RefundPolicy = RefundPolicy()
    # Sorted on construction: descending priority, then code.
    rules: tuple[EarningRule, ...] = ()
    campaigns: Mapping[str, Campaign] = field(default_factory=dict)

    def __post_init__(self) -> None:
        ordered = tuple(sorted(self.rules, key=lambda rule: (-rule.priority, rule.code)))
        object.__setattr__(self, "rules", ordered)
        if len({rule.rule_id for rule in ordered}) != len(ordered):
            raise ValueError("rule ids must be unique within a rule set")
        ZoneInfo(self.time_zone)  # fails early on an unknown zone

    @property
    def zone(self) -> ZoneInfo:
        return _zone(self.time_zone)

    @functools.cached_property
    def reads_member_history(self) -> bool:
        """Whether any rule needs the member's past (MemberFacts counts, rule uses, spend):
        conditions may read it, usage limits and cumulative tiers do. When none does, the flow
        skips reading it (a database round trip per purchase)."""
        return any(
            rule.condition is not None
            or rule.condition_error
            or rule.max_uses_per_member
            or (isinstance(rule.reward, ProgressiveReward) and rule.reward.basis is ProgressiveBasis.CUMULATIVE)
            for rule in self.rules
        )

    def rules_in_force(self, *, partner_id: str, at: datetime) -> tuple[EarningRule, ...]:
        """Rules whose own validity, campaign and partner admit an operation at `at`."""
        return tuple(rule for rule in self.rules if self._in_force(rule, partner_id=partner_id, at=at))

    def _in_force(self, rule: EarningRule, *, partner_id: str, at: datetime) -> bool:
        if rule.valid_from is not None and at < rule.valid_from:
            return False
        if rule.valid_until is not None and at >= rule.valid_until:
            return False
        if rule.partner_id and rule.partner_id != partner_id:
            return False
        if rule.campaign_id:
            campaign = self.campaigns.get(rule.campaign_id)
            if campaign is None or not campaign.running(at):
                return False
            if campaign.partner_ids and partner_id not in campaign.partner_ids:
                return False
        return True


@functools.lru_cache(maxsize=256)
def _zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


def zone(name: str) -> ZoneInfo:
    return _zone(name)


# ---------------------------------------------------------------------------------------------
# Facts supplied by the register flow
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OutletFacts:
    """The terminal, its outlet and partner, from processing's configuration."""

    terminal_id: str
    outlet_id: str
    outlet_code: str
    region_code: str
    partner_id: str
    # IANA zone of the outlet; "" means the program's.
    time_zone: str
    # Partner switches (Partner.accrual_enabled / redemption_enabled).
    accrual_enabled: bool = True
    redemption_enabled: bool = True
    # An ISOLATED partner's account kind: every point earned here goes to it; "" otherwise.
    points_account_kind: str = ""


@dataclass(frozen=True)
class SpendWindow:
    """Inclusive local dates in the program's time zone."""

    first_day: date
    last_day: date


@dataclass(frozen=True)
class MemberFacts:
    member_id: str
    segments: frozenset[str] = frozenset()
    registration_time: datetime | None = None
    birth_date: date | None = None
    # Captured purchases before this one.
    purchase_count: int = 0
    app_purchase_count: int = 0
    # rule_id -> receipts it already gave points to.
    rule_uses: Mapping[str, int] = field(default_factory=dict)
    # Spend (accrual base of captured purchases minus refunds, this receipt NOT included) in each
    # window `spend_windows` asked for.
    spend_by_window: Mapping[SpendWindow, int] = field(default_factory=dict)


@dataclass(frozen=True)
class RedemptionRequest:
    points: int = 0
    maximum: bool = False

    def __post_init__(self) -> None:
        # Client input (CalculateRequest/PurchaseRequest redeem_points, redeem_maximum): refused
        # as INVALID_ARGUMENT naming the request fields, not as a programming error.
        violations = []
        if self.points < 0:
            violations.append(FieldViolation("redeem_points.amount_minor", "must not be negative"))
        if self.maximum and self.points:
            violations.append(FieldViolation("redeem_maximum", "mutually exclusive with redeem_points"))
        if violations:
            raise invalid_argument(violations)


# ---------------------------------------------------------------------------------------------
# The result
# ---------------------------------------------------------------------------------------------


class RuleSkipReason(StrEnum):
    CONDITION_NOT_MET = "CONDITION_NOT_MET"
    CONDITION_ERROR = "CONDITION_ERROR"
    EXCLUDED_BY_EXCLUSIVE_RULE = "EXCLUDED_BY_EXCLUSIVE_RULE"
    EXCLUSIVITY_GROUP = "EXCLUSIVITY_GROUP"
    MIN_AMOUNT_NOT_REACHED = "MIN_AMOUNT_NOT_REACHED"
    USAGE_LIMIT_REACHED = "USAGE_LIMIT_REACHED"
    MEMBER_REQUIRED = "MEMBER_REQUIRED"
    LINES_EXCLUDED = "LINES_EXCLUDED"


class RedemptionLimit(StrEnum):
    BALANCE = "BALANCE"
    MAX_SHARE = "MAX_SHARE"
    ELIGIBLE_LINES = "ELIGIBLE_LINES"
    MAX_POINTS = "MAX_POINTS"
    MIN_RECEIPT = "MIN_RECEIPT"
    NOT_ALLOWED = "NOT_ALLOWED"
    NO_MEMBER = "NO_MEMBER"


@dataclass(frozen=True)
class AccrualPart:
    account_kind: str
    points: int
    activation_time: datetime
    # None: the points never expire.
    expire_time: datetime | None


class RuleAccrual(NamedTuple):
    """Points one rule gave one line. A NamedTuple, not a dataclass: one is made per line and
    rule on the hot path, and tuples are several times cheaper to build (still immutable)."""

    rule_id: str
    points: int


@dataclass(frozen=True)
class LineCalculation:
    position: int
    accrual: int
    accrual_by_rule: tuple[RuleAccrual, ...]
    max_redeemable: int
    redemption: int
    redemption_value: int
    amount_due: int
    accrual_excluded: bool
    redemption_excluded: bool


@dataclass(frozen=True)
class AppliedRule:
    rule_id: str
    rule_code: str
    rule_name: str
    campaign_id: str
    reward_type: RewardType
    points: int
    base_amount: int
    rate_bp: int
    positions: tuple[int, ...]
    explanation: str
    # Where the points go and their lot terms (the flow builds the wallet transfer from them).
    account_kind: str
    activation_time: datetime
    expire_time: datetime | None


@dataclass(frozen=True)
class SkippedRule:
    rule_id: str
    rule_code: str
    reason: RuleSkipReason
    explanation: str


@dataclass(frozen=True)
class Calculation:
    rule_set_version: int
    accrual: int
    accrual_parts: tuple[AccrualPart, ...]
    max_redeemable: int
    max_redeemable_limit: RedemptionLimit
    redemption: int
    redemption_value: int
    amount_due: int
    # None: the requested redemption is possible (or none was requested).
    redemption_refusal: Reason | None
    # With a refusal: the ErrorInfo metadata `policy` the flow attaches (e.g. "identification",
    # "max_share", "min_points"); and a sentence for the error message.
    redemption_refusal_policy: str
    redemption_refusal_message: str
    lines: tuple[LineCalculation, ...]
    applied_rules: tuple[AppliedRule, ...]
    skipped_rules: tuple[SkippedRule, ...]
    slip_lines: tuple[str, ...]

    def __post_init__(self) -> None:
        # The engine's own invariants, checked on every result (kept under python -O).
        accrual = redemption = value = 0
        for line in self.lines:
            by_rule = 0
            for item in line.accrual_by_rule:
                by_rule += item.points
            if line.accrual != by_rule:
                raise ValueError(f"line {line.position}: accrual differs from its rules")
            if line.redemption > line.max_redeemable or line.accrual < 0 or line.amount_due < 0:
                raise ValueError(f"line {line.position}: redemption or amounts out of range")
            accrual += line.accrual
            redemption += line.redemption
            value += line.redemption_value
        if self.accrual != accrual:
            raise ValueError("accrual differs from the sum of the line accruals")
        if self.accrual != sum(part.points for part in self.accrual_parts):
            raise ValueError("accrual differs from the sum of the accrual parts")
        if self.accrual != sum(rule.points for rule in self.applied_rules):
            raise ValueError("accrual differs from the sum of the applied rules")
        if self.redemption != redemption or self.redemption_value != value:
            raise ValueError("redemption or its value differs from the sum over lines")
        if self.redemption > self.max_redeemable:
            raise ValueError("redemption above max_redeemable")
        if self.redemption_refusal is not None and self.redemption != 0:
            raise ValueError("a refused redemption must be zero")
