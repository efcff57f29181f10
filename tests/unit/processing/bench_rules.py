"""Timing loop for the rules engine's hot path (not a test; run it by hand):

    .venv/bin/python -m tests.unit.processing.bench_rules

pyperf style: each measurement runs a tight loop long enough (>= 0.2 s of CPU), repeated 7 times;
CPU time (time.process_time) rather than wall time, because the machine is shared: time spent
descheduled by other processes is not ours;
the median and the best per-call times are printed. Reported:
* per condition: celpy's evaluation vs the Python translation (same compiled condition, same facts);
* `calculate` on a 10-line receipt against a 12-rule program (4 rules with conditions), and on a
  5-line receipt against 3 rules, with and without redemption.
"""

from __future__ import annotations

import functools
import statistics
import time
from collections.abc import Callable
from datetime import date

from services.processing.domain.conditions import ConditionFacts, compile_condition
from services.processing.domain.rules import (
    Channel,
    FixedReward,
    PercentReward,
    PerItemReward,
    ProgressiveMethod,
    ProgressiveReward,
    ProgressiveTier,
    RuleTarget,
    StackingMode,
)
from tests.unit.processing.builders import line, member, receipt, rule, rule_set, run
from tests.unit.processing.test_conditions import FACTS

CONDITIONS = [
    'receipt.channel == "APP" && member.app_purchase_count == 0',
    'receipt.lines.exists(l, l.sku == "4601234567890")',
    "member.birthday_known && (member.days_to_birthday <= 3 || member.days_since_birthday <= 3)",
    'receipt.total >= 100000 && outlet.region_code in ["RU-MOW", "RU-SPE"] && local_hour < 12',
    'size(receipt.lines.filter(l, l.category_id == "DAIRY")) >= 2',
]


def per_call(function: Callable[[], object], *, repeat: int = 7, min_time_s: float = 0.2) -> tuple[float, float]:
    """(median, best) seconds per call."""
    loops = 1
    while True:
        started = time.process_time()
        for _ in range(loops):
            function()
        elapsed = time.process_time() - started
        if elapsed >= min_time_s:
            break
        loops *= 2
    samples = [elapsed / loops]
    for _ in range(repeat - 1):
        started = time.process_time()
        for _ in range(loops):
            function()
        samples.append((time.process_time() - started) / loops)
    return statistics.median(samples), min(samples)


def show(label: str, timing: tuple[float, float]) -> None:
    median, best = timing
    print(f"  {label:<14} median {median * 1e6:9.2f} us   best {best * 1e6:9.2f} us")


def bench_conditions() -> None:
    facts = ConditionFacts(FACTS)
    facts.activation()  # the celpy form is built once per receipt; keep it out of the loop
    print("conditions (per evaluation):")
    for text in CONDITIONS:
        condition = compile_condition(text)
        print(f"- {text}  (translated: {condition.translated})")
        show("celpy", per_call(functools.partial(condition.evaluate_with_celpy, facts)))
        show("translated", per_call(functools.partial(condition.evaluate, facts)))


def bench_calculate() -> None:
    tiers = (ProgressiveTier(0, 100), ProgressiveTier(100_000, 300), ProgressiveTier(500_000, 500))
    rules = rule_set(
        rule("BASE", PercentReward(rate_bp=300)),
        rule("DAIRY", PercentReward(rate_bp=1000), target=RuleTarget(category_ids=frozenset({"DAIRY"}))),
        rule("WEEKEND", PercentReward(rate_bp=500), target=RuleTarget(days_of_week=frozenset({6, 7}))),
        rule("GOLD", PercentReward(rate_bp=200), target=RuleTarget(member_segments=frozenset({"GOLD"}))),
        rule("BIG", ProgressiveReward(tiers=tiers, method=ProgressiveMethod.MARGINAL)),
        rule("WATER", PerItemReward(points_per_unit=5), target=RuleTarget(skus=frozenset({"SKU3"}))),
        rule(
            "X2",
            PercentReward(rate_bp=600),
            stacking=StackingMode.EXCLUSIVE,
            priority=50,
            target=RuleTarget(skus=frozenset({"SKU9"})),
        ),
        rule("G1", FixedReward(points=50), exclusivity_group="WELCOME", priority=5, max_uses_per_member=1),
        rule("APP1", FixedReward(points=100), condition=CONDITIONS[0]),
        rule("PROD", FixedReward(points=30), condition=CONDITIONS[1]),
        rule("BDAY", FixedReward(points=200), condition=CONDITIONS[2]),
        rule("MORNING", PercentReward(rate_bp=100), condition=CONDITIONS[3]),
    )
    lines = [line(i, 1_000 * i + 99, category_id="DAIRY" if i % 3 == 0 else "GROCERY") for i in range(1, 11)]
    the_receipt = receipt(*lines, channel=Channel.APP)
    the_member = member(segments=["GOLD"], birth_date=date(1990, 5, 16))
    print("calculate, 10 lines, 12 rules (4 with conditions):")
    show("no redemption", per_call(lambda: run(rules, the_receipt, the_member=the_member)))
    show("redeem maximum", per_call(lambda: run(rules, the_receipt, the_member=the_member, maximum=True)))
    small = rule_set(
        rule("BASE", PercentReward(rate_bp=300)),
        rule("DAIRY", PercentReward(rate_bp=1000), target=RuleTarget(category_ids=frozenset({"DAIRY"}))),
        rule("APP1", FixedReward(points=100), condition=CONDITIONS[0]),
    )
    five = receipt(*lines[:5], channel=Channel.APP)
    print("calculate, 5 lines, 3 rules (1 with a condition):")
    show("no redemption", per_call(lambda: run(small, five, the_member=the_member)))
    show("redeem maximum", per_call(lambda: run(small, five, the_member=the_member, maximum=True)))


if __name__ == "__main__":
    bench_conditions()
    bench_calculate()
