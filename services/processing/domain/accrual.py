"""Earning points: which rules apply to a receipt, how many points each gives and to which lines.

What it decides, following "HOW A RECEIPT EARNS POINTS" in program_admin.proto:

* Rules in force: the rule's validity covers the operation time, its campaign (if any) is ACTIVE
  and running and takes part at this partner, the rule's partner (if any) is this one, and the
  partner has accrual enabled. Rules not in force are not reported at all.
* Targeting (RuleTarget). The receipt must match outlet-or-region, channel, weekday and time of
  day (the operation time in the outlet's zone), and at least one line must match the products;
  otherwise the rule does not target the receipt and is not reported. Member segments: without a
  member the rule is skipped MEMBER_REQUIRED; a member outside the segments is not targeted.
* Then, in this order, the first that fails skips the rule (SkippedRule, at most 50, in
  evaluation order): all matching lines flagged accrual_excluded (LINES_EXCLUDED); a usage limit
  or a cumulative basis without a member (MEMBER_REQUIRED); the usage limit reached
  (USAGE_LIMIT_REACHED); the condition names `member` but there is none (MEMBER_REQUIRED), is
  false (CONDITION_NOT_MET) or fails (CONDITION_ERROR); the eligible amount of the matching lines
  is below min_eligible_amount (MIN_AMOUNT_NOT_REACHED); every matching line is already taken by
  a higher exclusive rule (EXCLUDED_BY_EXCLUSIVE_RULE) or by a rule of the same exclusivity group
  (EXCLUSIVITY_GROUP); the rule computes zero points (below the first progressive tier, a 0%
  tier, no whole unit, or less than one point after rounding: MIN_AMOUNT_NOT_REACHED, explained).
  The minimum amount and progressive tiers look at every matching line (the receipt qualifies as
  a whole), while the points go only to the lines other rules did not take.
* Exclusivity: rules are taken in descending priority, ties by code. A line is "given points" by a
  rule only if it ends with more than zero points from it; an EXCLUSIVE rule then takes the line
  from every later rule, and a rule with an exclusivity group takes it from the later rules of
  its group.
* Points. The accrual base of a line is its amount minus its redemption value
  (PAID_WITH_MONEY, the default) or its amount (FULL_AMOUNT). PERCENT: base * rate at the point
  value. FIXED: the points split over the rule's lines in proportion to their amounts (equally if
  all amounts are zero). PER_ITEM: points per whole unit (quantity_milli // 1000). PROGRESSIVE:
  the tier comes from the eligible amount of this receipt (PER_RECEIPT) or from the member's
  window spend before this receipt plus this receipt's eligible amount (CUMULATIVE);
  WHOLE_AMOUNT applies the tier reached to all of it, MARGINAL gives each slice between
  thresholds its own rate (for CUMULATIVE, the slices this receipt adds) and the resulting
  average rate applies to each line. Every line's points are exact rationals over a common
  denominator; the rule's sum is rounded once (AccrualPolicy.rounding), capped at
  max_points_per_receipt, and distributed back over the lines by largest remainder in proportion
  to the exact amounts (services/processing/domain/arithmetic.py).
* Each applied rule's points go to `OutletFacts.points_account_kind` (an isolated partner), else
  the rule's account kind, else the policy's, with the rule's lifetime or else the policy's:
  activation = operation time + pending period; expiry = activation + expire_after, moved to the
  end of its day/month/year in the program's zone. "End of" is the first instant of the next
  day/month/year (local midnight), i.e. the points are usable through the whole last day. Parts
  with equal kind, activation and expiry are merged, in order of first appearance.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from .arithmetic import distribute, format_decimal, format_money, format_positions, format_rate, round_ratio
from .conditions import ConditionEvaluationError, ConditionFacts
from .receipts import Receipt, ReceiptLine
from .ruleset import (
    BP,
    AccrualBase,
    AccrualPart,
    AppliedRule,
    CumulativePeriod,
    EarningRule,
    ExpiryRounding,
    FixedReward,
    MemberFacts,
    OutletFacts,
    PercentReward,
    PerItemReward,
    PointsLifetime,
    ProgressiveBasis,
    ProgressiveMethod,
    ProgressiveReward,
    RuleAccrual,
    RuleSet,
    RuleSkipReason,
    RuleTarget,
    SkippedRule,
    SpendWindow,
    StackingMode,
    zone,
)

SKIPPED_RULES_MAX = 50
# RuleAccrual(rule_id, points) without the NamedTuple's Python-level __new__ (one per line and rule).
_new_tuple = tuple.__new__
SLIP_LINE_MAX = 64


@dataclass(frozen=True)
class AccrualOutcome:
    # position -> the rules that gave the line points, in evaluation order.
    line_rules: Mapping[int, tuple[RuleAccrual, ...]]
    applied: tuple[AppliedRule, ...]
    skipped: tuple[SkippedRule, ...]
    parts: tuple[AccrualPart, ...]
    slip_lines: tuple[str, ...]


@dataclass(frozen=True)
class _Skip:
    reason: RuleSkipReason
    explanation: str


@dataclass(frozen=True)
class _Exact:
    """Per-line exact points: numerators[i] / denominator for candidate line i."""

    numerators: list[int]
    denominator: int
    rate_bp: int
    description: str  # what was earned on what: "5% of 1200.00 RUB"
    base_amount: int  # the accrual base of the lines it applies to
    detail: str = ""  # how the rate was found: "tier 2 of 3 (cumulative spend this month ...)"


def local_time(at: datetime, zone_name: str) -> datetime:
    if at.tzinfo is None:
        raise ValueError("operation times must be timezone-aware")
    return at.astimezone(zone(zone_name))


def spend_window(reward: ProgressiveReward, *, local_day: date) -> SpendWindow:
    """The inclusive local dates a cumulative reward sums spend over, for a day in the period."""
    if reward.period is CumulativePeriod.CALENDAR_MONTH:
        first = local_day.replace(day=1)
        return SpendWindow(first, _next_month(first) - timedelta(days=1))
    if reward.period is CumulativePeriod.CALENDAR_QUARTER:
        first = local_day.replace(month=(local_day.month - 1) // 3 * 3 + 1, day=1)
        last = _next_month(_next_month(_next_month(first))) - timedelta(days=1)
        return SpendWindow(first, last)
    if reward.period is CumulativePeriod.CALENDAR_YEAR:
        return SpendWindow(date(local_day.year, 1, 1), date(local_day.year, 12, 31))
    return SpendWindow(local_day - timedelta(days=reward.rolling_days - 1), local_day)


def _next_month(first: date) -> date:
    return date(first.year + 1, 1, 1) if first.month == 12 else date(first.year, first.month + 1, 1)


def lot_times(lifetime: PointsLifetime, *, at: datetime, zone_name: str) -> tuple[datetime, datetime | None]:
    """(activation_time, expire_time) of points earned at `at` (UTC)."""
    activation = (at + lifetime.pending_period).astimezone(UTC)
    if lifetime.expire_after is None:
        return activation, None
    raw = activation + lifetime.expire_after
    if lifetime.expiry_rounding is ExpiryRounding.NONE:
        return activation, raw
    local_day = raw.astimezone(zone(zone_name)).date()
    if lifetime.expiry_rounding is ExpiryRounding.END_OF_DAY:
        boundary = local_day + timedelta(days=1)
    elif lifetime.expiry_rounding is ExpiryRounding.END_OF_MONTH:
        boundary = _next_month(local_day.replace(day=1))
    else:
        boundary = date(local_day.year + 1, 1, 1)
    return activation, datetime.combine(boundary, time(0), tzinfo=zone(zone_name)).astimezone(UTC)


def accrue(
    rule_set: RuleSet,
    *,
    receipt: Receipt,
    outlet: OutletFacts,
    member: MemberFacts | None,
    at: datetime,
    redemption_values: Mapping[int, int],
) -> AccrualOutcome:
    return _Accrual(
        rule_set, receipt=receipt, outlet=outlet, member=member, at=at, redemption_values=redemption_values
    ).run()


class _Accrual:
    def __init__(
        self,
        rule_set: RuleSet,
        *,
        receipt: Receipt,
        outlet: OutletFacts,
        member: MemberFacts | None,
        at: datetime,
        redemption_values: Mapping[int, int],
    ) -> None:
        self.rule_set = rule_set
        self.receipt = receipt
        self.outlet = outlet
        self.member = member
        self.at = at
        self.outlet_zone = outlet.time_zone or rule_set.time_zone
        self.local = local_time(at, self.outlet_zone)
        self.minute = self.local.hour * 60 + self.local.minute
        full = rule_set.accrual.base is AccrualBase.FULL_AMOUNT
        self.base = {
            line.position: line.amount if full else line.amount - redemption_values.get(line.position, 0)
            for line in receipt.lines
        }
        if any(value < 0 for value in self.base.values()):
            raise ValueError("a line's redemption value exceeds its amount")
        self.earning_lines = [line for line in receipt.lines if not line.accrual_excluded]
        self.earning_amount = sum(self.base[line.position] for line in self.earning_lines)
        self.lot_times: dict[int, tuple[datetime, datetime | None]] = {}
        self.point_value = rule_set.redemption.point_value
        self._facts: ConditionFacts | None = None
        self.exclusive_owner: dict[int, EarningRule] = {}
        self.group_owner: dict[tuple[str, int], EarningRule] = {}
        self.line_rules: dict[int, list[RuleAccrual]] = {line.position: [] for line in receipt.lines}
        self.applied: list[AppliedRule] = []
        self.skipped: list[SkippedRule] = []
        self.slips: list[str] = []

    # -- the loop ----------------------------------------------------------------------------

    def run(self) -> AccrualOutcome:
        if self.outlet.accrual_enabled:
            for rule in self.rule_set.rules_in_force(partner_id=self.outlet.partner_id, at=self.at):
                outcome = self.evaluate(rule)
                if isinstance(outcome, _Skip) and len(self.skipped) < SKIPPED_RULES_MAX:
                    self.skipped.append(SkippedRule(rule.rule_id, rule.code, outcome.reason, outcome.explanation))
        parts = self.parts()
        return AccrualOutcome(
            line_rules={position: tuple(items) for position, items in self.line_rules.items()},
            applied=tuple(self.applied),
            skipped=tuple(self.skipped),
            parts=parts,
            slip_lines=self.slip_lines(parts),
        )

    def evaluate(self, rule: EarningRule) -> _Skip | None:
        """Applies one rule; returns why it gave nothing, or None (applied or not targeted)."""
        target = rule.target
        if not self.targets_receipt(target):
            return None
        filters_lines = bool(target.skus or target.category_ids or target.excluded_skus or target.excluded_category_ids)
        if filters_lines:
            matching: Sequence[ReceiptLine] = [line for line in self.receipt.lines if _line_matches(target, line)]
            if not matching:
                return None
        else:
            matching = self.receipt.lines
        if target.member_segments:
            if self.member is None:
                segments = ", ".join(sorted(target.member_segments))
                return _Skip(RuleSkipReason.MEMBER_REQUIRED, f"targets member segments {segments}")
            if not self.member.segments & target.member_segments:
                return None
        eligible = [line for line in matching if not line.accrual_excluded] if filters_lines else self.earning_lines
        if not eligible:
            positions = format_positions([line.position for line in matching])
            return _Skip(RuleSkipReason.LINES_EXCLUDED, f"its lines ({positions}) are excluded from accrual")
        skip = self.member_checks(rule)
        if skip is not None:
            return skip
        eligible_amount = sum(self.base[line.position] for line in eligible) if filters_lines else self.earning_amount
        if rule.min_eligible_amount is not None and eligible_amount < rule.min_eligible_amount:
            return _Skip(
                RuleSkipReason.MIN_AMOUNT_NOT_REACHED,
                f"eligible amount {self.money(eligible_amount)} is below the minimum "
                f"{self.money(rule.min_eligible_amount)}",
            )
        candidates, taken = self.free_lines(rule, eligible)
        if not candidates:
            return self.excluded_skip(rule, taken)
        exact = self.exact_points(rule, candidates, eligible_amount)
        if isinstance(exact, _Skip):
            return exact
        return self.award(rule, candidates, exact, taken)

    def targets_receipt(self, target: RuleTarget) -> bool:
        outlet_listed = self.outlet.outlet_id in target.outlet_ids or self.outlet.region_code in target.region_codes
        if (target.outlet_ids or target.region_codes) and not outlet_listed:
            return False
        if target.channels and self.receipt.channel not in target.channels:
            return False
        if target.days_of_week and self.local.isoweekday() not in target.days_of_week:
            return False
        return not target.times_of_day or any(r.contains(self.minute) for r in target.times_of_day)

    def member_checks(self, rule: EarningRule) -> _Skip | None:
        member = self.member
        if rule.max_uses_per_member:
            if member is None:
                return _Skip(RuleSkipReason.MEMBER_REQUIRED, "has a usage limit per member")
            uses = member.rule_uses.get(rule.rule_id, 0)
            if uses >= rule.max_uses_per_member:
                return _Skip(
                    RuleSkipReason.USAGE_LIMIT_REACHED,
                    f"the member already used it {uses} of {rule.max_uses_per_member} times",
                )
        if rule.is_cumulative and member is None:
            return _Skip(RuleSkipReason.MEMBER_REQUIRED, "its tiers depend on the member's cumulative spend")
        if rule.condition_error:
            return _Skip(RuleSkipReason.CONDITION_ERROR, f"its condition does not compile: {rule.condition_error}")
        condition = rule.condition
        if condition is None:
            return None
        if condition.uses_member and member is None:
            return _Skip(RuleSkipReason.MEMBER_REQUIRED, "its condition is about the member")
        try:
            holds = condition.evaluate(self.facts())
        except ConditionEvaluationError as error:
            return _Skip(RuleSkipReason.CONDITION_ERROR, f"condition failed: {error}")
        if not holds:
            return _Skip(RuleSkipReason.CONDITION_NOT_MET, f"condition not met: {_shorten(condition.text)}")
        return None

    def free_lines(
        self, rule: EarningRule, eligible: Sequence[ReceiptLine]
    ) -> tuple[list[ReceiptLine], dict[int, tuple[RuleSkipReason, EarningRule]]]:
        """The lines no earlier rule took from this one, and who took the others."""
        taken: dict[int, tuple[RuleSkipReason, EarningRule]] = {}
        group = rule.exclusivity_group
        if not self.exclusive_owner and not (group and self.group_owner):
            return list(eligible), taken
        candidates: list[ReceiptLine] = []
        for line in eligible:
            owner = self.exclusive_owner.get(line.position)
            if owner is not None:
                taken[line.position] = (RuleSkipReason.EXCLUDED_BY_EXCLUSIVE_RULE, owner)
                continue
            if group:
                owner = self.group_owner.get((group, line.position))
                if owner is not None:
                    taken[line.position] = (RuleSkipReason.EXCLUSIVITY_GROUP, owner)
                    continue
            candidates.append(line)
        return candidates, taken

    def excluded_skip(self, rule: EarningRule, taken: Mapping[int, tuple[RuleSkipReason, EarningRule]]) -> _Skip:
        reasons = {reason for reason, _ in taken.values()}
        reason = (
            RuleSkipReason.EXCLUDED_BY_EXCLUSIVE_RULE
            if RuleSkipReason.EXCLUDED_BY_EXCLUSIVE_RULE in reasons
            else RuleSkipReason.EXCLUSIVITY_GROUP
        )
        return _Skip(reason, _taken_text(taken, rule.exclusivity_group))

    # -- the mechanics -----------------------------------------------------------------------

    def exact_points(self, rule: EarningRule, lines: Sequence[ReceiptLine], eligible_amount: int) -> _Exact | _Skip:
        reward = rule.reward
        p, m = self.point_value.points, self.point_value.money
        base = self.base
        bases = [base[line.position] for line in lines]
        base_amount = sum(bases)
        if isinstance(reward, PercentReward):
            factor = reward.rate_bp * p
            text = f"{format_rate(reward.rate_bp)} of {self.money(base_amount)}"
            return _Exact([b * factor for b in bases], BP * m, reward.rate_bp, text, base_amount)
        if isinstance(reward, FixedReward):
            amounts = [line.amount for line in lines]
            if sum(amounts) == 0:
                amounts = [1] * len(lines)
            numerators = [reward.points * amount for amount in amounts]
            return _Exact(numerators, sum(amounts), 0, f"{self.points_text(reward.points)} per receipt", base_amount)
        if isinstance(reward, PerItemReward):
            units = [line.quantity_milli // 1000 for line in lines]
            count = sum(units)
            if count == 0:
                return _Skip(RuleSkipReason.MIN_AMOUNT_NOT_REACHED, "no whole unit bought on its lines")
            text = f"{self.points_text(reward.points_per_unit)} per unit on {count} unit{'s' if count != 1 else ''}"
            return _Exact([reward.points_per_unit * u for u in units], 1, 0, text, base_amount)
        return self.progressive(rule, reward, bases, eligible_amount)

    def progressive(
        self, rule: EarningRule, reward: ProgressiveReward, bases: Sequence[int], spend: int
    ) -> _Exact | _Skip:
        prior, period_text = 0, ""
        if reward.basis is ProgressiveBasis.CUMULATIVE:
            if self.member is None:  # member_checks guarantees a member; kept explicit under -O
                return _Skip(RuleSkipReason.MEMBER_REQUIRED, "its tiers depend on the member's cumulative spend")
            window = spend_window(reward, local_day=self.at.astimezone(self.rule_set.zone).date())
            if window not in self.member.spend_by_window:
                raise ValueError(f"rule {rule.code}: spend for {window} was not supplied (see spend_windows)")
            prior = self.member.spend_by_window[window]
            period_text = f"cumulative spend {_period_text(reward)} {self.money(prior + spend)}"
        thresholds = [tier.threshold for tier in reward.tiers]
        total = prior + spend
        reached = sum(1 for threshold in thresholds if threshold <= total)
        if reached == 0:
            what = period_text or f"eligible amount {self.money(spend)}"
            return _Skip(
                RuleSkipReason.MIN_AMOUNT_NOT_REACHED,
                f"{what} is below the first tier ({self.money(thresholds[0])})",
            )
        tier_text = f"tier {reached} of {len(thresholds)}"
        p, m = self.point_value.points, self.point_value.money
        base_amount = sum(bases)
        base_text = self.money(base_amount)
        detail = tier_text + (f" ({period_text})" if period_text else "")
        if reward.method is ProgressiveMethod.WHOLE_AMOUNT:
            rate = reward.tiers[reached - 1].rate_bp
            text = f"{format_rate(rate)} of {base_text}"
            return _Exact([b * rate * p for b in bases], BP * m, rate, text, base_amount, detail)
        weighted = _marginal(reward, low=prior, high=total)  # bp * money over the slices
        if spend == 0:
            return _Exact([0] * len(bases), 1, 0, "", base_amount)
        average = weighted // spend
        description = f"{format_rate(average)} on average of {base_text}"
        detail = f"marginal rates up to {detail}"
        return _Exact([b * weighted * p for b in bases], spend * BP * m, average, description, base_amount, detail)

    def award(
        self,
        rule: EarningRule,
        lines: Sequence[ReceiptLine],
        exact: _Exact,
        taken: Mapping[int, tuple[RuleSkipReason, EarningRule]],
    ) -> _Skip | None:
        total = round_ratio(sum(exact.numerators), exact.denominator, self.rule_set.accrual.rounding)
        capped = rule.max_points_per_receipt is not None and total > rule.max_points_per_receipt
        if capped and rule.max_points_per_receipt is not None:
            total = rule.max_points_per_receipt
        if total == 0:
            what = exact.description or "its lines"
            return _Skip(RuleSkipReason.MIN_AMOUNT_NOT_REACHED, f"{what} earns less than one point")
        shares = distribute(total, exact.numerators)
        positions: list[int] = []
        line_rules = self.line_rules
        rule_id = rule.rule_id
        for line, share in zip(lines, shares, strict=True):
            if share:
                positions.append(line.position)
                line_rules[line.position].append(_new_tuple(RuleAccrual, (rule_id, share)))
        if rule.stacking is StackingMode.EXCLUSIVE:
            for position in positions:
                self.exclusive_owner[position] = rule
        if rule.exclusivity_group:
            for position in positions:
                self.group_owner[(rule.exclusivity_group, position)] = rule
        if rule.slip_text:
            self.slips.append(rule.slip_text[:SLIP_LINE_MAX])
        lifetime = rule.lifetime or self.rule_set.accrual.lifetime
        times = self.lot_times.get(id(lifetime))
        if times is None:
            times = self.lot_times[id(lifetime)] = lot_times(lifetime, at=self.at, zone_name=self.rule_set.time_zone)
        activation, expiry = times
        self.applied.append(
            AppliedRule(
                rule_id=rule.rule_id,
                rule_code=rule.code,
                rule_name=rule.name,
                campaign_id=rule.campaign_id,
                reward_type=rule.reward_type,
                points=total,
                base_amount=exact.base_amount,
                rate_bp=exact.rate_bp,
                positions=tuple(positions),
                explanation=self.explanation(rule, exact, positions, capped, taken),
                account_kind=self.outlet.points_account_kind or rule.account_kind or self.rule_set.accrual.account_kind,
                activation_time=activation,
                expire_time=expiry,
            )
        )
        return None

    # -- results -----------------------------------------------------------------------------

    def parts(self) -> tuple[AccrualPart, ...]:
        merged: dict[tuple[str, datetime, datetime | None], int] = {}
        for rule in self.applied:
            key = (rule.account_kind, rule.activation_time, rule.expire_time)
            merged[key] = merged.get(key, 0) + rule.points
        return tuple(
            AccrualPart(kind, points, activation, expiry) for (kind, activation, expiry), points in merged.items()
        )

    def slip_lines(self, parts: Sequence[AccrualPart]) -> tuple[str, ...]:
        lines = list(self.slips)
        for part in parts:
            if part.activation_time > self.at:
                day = part.activation_time.astimezone(self.rule_set.zone).date().isoformat()
                lines.append(f"{self.points_text(part.points)} spendable from {day}"[:SLIP_LINE_MAX])
        return tuple(lines)

    def explanation(
        self,
        rule: EarningRule,
        exact: _Exact,
        positions: Sequence[int],
        capped: bool,
        taken: Mapping[int, tuple[RuleSkipReason, EarningRule]],
    ) -> str:
        target = rule.target
        parts = [f"{exact.description} on {_scope_text(target, positions)}".strip()]
        if target.member_segments and self.member is not None:
            segments = sorted(self.member.segments & target.member_segments)
            parts.append(f"member segment {', '.join(segments)}")
        if target.channels:
            parts.append(f"channel {self.receipt.channel}")
        if rule.campaign_id:
            campaign = self.rule_set.campaigns.get(rule.campaign_id)
            parts.append(f"campaign {campaign.code if campaign else rule.campaign_id}")
        parts.append(exact.detail)
        text = ", ".join(part for part in parts if part)
        if capped:
            text += f"; capped at {self.points_text(rule.max_points_per_receipt or 0)} per receipt"
        if taken:
            text += f"; {_taken_text(taken, rule.exclusivity_group)}"
        return text

    # -- helpers -----------------------------------------------------------------------------

    def money(self, amount: int) -> str:
        return format_money(amount, self.rule_set.currency_scale, self.rule_set.currency_code)

    def points_text(self, points: int) -> str:
        """ "1 point", "12 points", "0.50 points" (the point's scale)."""
        text = format_decimal(points, self.rule_set.point_scale)
        return f"{text} point" if text == "1" else f"{text} points"

    def facts(self) -> ConditionFacts:
        if self._facts is None:
            self._facts = ConditionFacts(condition_values(self))
        return self._facts


def condition_values(accrual: _Accrual) -> dict[str, Any]:
    """The CEL variables of conditions/EarningRule.condition for this receipt."""
    receipt, outlet, member = accrual.receipt, accrual.outlet, accrual.member
    values: dict[str, Any] = {
        "receipt": {
            "total": receipt.total,
            "channel": str(receipt.channel),
            "issue_time": (receipt.issue_time or accrual.at).astimezone(UTC),
            "lines": [
                {
                    "sku": line.sku,
                    "category_id": line.category_id,
                    "quantity_milli": line.quantity_milli,
                    "amount": line.amount,
                    "accrual_excluded": line.accrual_excluded,
                }
                for line in receipt.lines
            ],
        },
        "outlet": {
            "id": outlet.outlet_id,
            "code": outlet.outlet_code,
            "region_code": outlet.region_code,
            "partner_id": outlet.partner_id,
        },
        "terminal": {"id": outlet.terminal_id},
        "now": accrual.at.astimezone(UTC),
        "local_hour": accrual.local.hour,
        "local_weekday": accrual.local.isoweekday(),
    }
    if member is not None:
        values["member"] = member_values(member, today=accrual.local.date())
    return values


def member_values(member: MemberFacts, *, today: date) -> dict[str, Any]:
    values: dict[str, Any] = {
        "id": member.member_id,
        "segments": sorted(member.segments),
        "purchase_count": member.purchase_count,
        "app_purchase_count": member.app_purchase_count,
        "birthday_known": member.birth_date is not None,
    }
    if member.registration_time is not None:
        values["registration_time"] = member.registration_time.astimezone(UTC)
    if member.birth_date is not None:
        values["days_to_birthday"], values["days_since_birthday"] = birthday_distances(member.birth_date, today=today)
    return values


def birthday_distances(birth_date: date, *, today: date) -> tuple[int, int]:
    """(days to the next birthday, days since the last), both 0 on the birthday.

    A 29 February birthday falls on 28 February in other years.
    """

    def on(year: int) -> date:
        if birth_date.month == 2 and birth_date.day == 29:
            try:
                return date(year, 2, 29)
            except ValueError:
                return date(year, 2, 28)
        return birth_date.replace(year=year)

    upcoming = on(today.year) if on(today.year) >= today else on(today.year + 1)
    last = on(today.year) if on(today.year) <= today else on(today.year - 1)
    return (upcoming - today).days, (today - last).days


def _line_matches(target: RuleTarget, line: ReceiptLine) -> bool:
    listed = line.sku in target.skus or line.category_id in target.category_ids
    if (target.skus or target.category_ids) and not listed:
        return False
    return line.sku not in target.excluded_skus and line.category_id not in target.excluded_category_ids


def _marginal(reward: ProgressiveReward, *, low: int, high: int) -> int:
    """Sum over tiers of rate_bp * (the part of [low, high) inside the tier)."""
    weighted = 0
    tiers = reward.tiers
    for index, tier in enumerate(tiers):
        upper = tiers[index + 1].threshold if index + 1 < len(tiers) else None
        start = max(low, tier.threshold)
        end = high if upper is None else min(high, upper)
        if end > start:
            weighted += tier.rate_bp * (end - start)
    return weighted


def _period_text(reward: ProgressiveReward) -> str:
    if reward.period is CumulativePeriod.CALENDAR_MONTH:
        return "this month"
    if reward.period is CumulativePeriod.CALENDAR_QUARTER:
        return "this quarter"
    if reward.period is CumulativePeriod.CALENDAR_YEAR:
        return "this year"
    return f"in the last {reward.rolling_days} days"


def _scope_text(target: RuleTarget, positions: Sequence[int]) -> str:
    scope = []
    if target.category_ids:
        scope.append(_listed("category", "categories", target.category_ids))
    if target.skus:
        scope.append(_listed("SKU", "SKUs", target.skus))
    lines = f"line {positions[0]}" if len(positions) == 1 else f"lines {format_positions(positions)}"
    return f"{' or '.join(scope)} ({lines})" if scope else lines


def _listed(singular: str, plural: str, values: frozenset[str], shown: int = 3) -> str:
    ordered = sorted(values)
    if len(ordered) == 1:
        return f"{singular} {ordered[0]}"
    text = ", ".join(ordered[:shown])
    if len(ordered) > shown:
        text += f" and {len(ordered) - shown} more"
    return f"{plural} {text}"


def _taken_text(taken: Mapping[int, tuple[RuleSkipReason, EarningRule]], group: str) -> str:
    by_owner: dict[str, tuple[RuleSkipReason, EarningRule, list[int]]] = {}
    for position, (reason, owner) in sorted(taken.items()):
        by_owner.setdefault(owner.rule_id, (reason, owner, []))[2].append(position)
    texts = []
    for reason, owner, positions in by_owner.values():
        lines = f"line {positions[0]}" if len(positions) == 1 else f"lines {format_positions(positions)}"
        if reason is RuleSkipReason.EXCLUDED_BY_EXCLUSIVE_RULE:
            texts.append(f"exclusive rule {owner.code} (priority {owner.priority}) applied to {lines}")
        else:
            texts.append(f"rule {owner.code} of exclusivity group {group} applied to {lines}")
    return "; ".join(texts)


def _shorten(text: str, limit: int = 120) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."
