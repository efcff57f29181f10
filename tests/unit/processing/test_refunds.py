"""Refund arithmetic (services/processing/domain/refunds.py): tables and hypothesis properties.

Properties: any sequence of partial refunds of a purchase, with any shortfall, adds up exactly to
the full refund; no share is ever negative; no running total ever exceeds the original.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.processing.domain.refunds import (
    RefundableLine,
    RefundLinePlan,
    RefundPlan,
    apply_shortfall,
    money_to_return,
    plan_refund,
    redemption_value_restored,
)
from services.processing.domain.ruleset import PointValue, RefundShortfallPolicy
from shared.errors import DomainError, Reason

LINE = RefundableLine(position=1, quantity_milli=3000, amount=1000, accrual=10, redemption=7)


def shares(plan: RefundPlan) -> list[tuple[int, int, int, int, int, int]]:
    return [
        (p.position, p.quantity_milli, p.amount, p.accrual_reversed, p.redemption_restored, p.remaining_quantity_milli)
        for p in plan.lines
    ]


def after(line: RefundableLine, plan: RefundPlan) -> RefundableLine:
    """The line as the next refund sees it."""
    done = next(p for p in plan.lines if p.position == line.position)
    return replace(
        line,
        refunded_quantity_milli=line.refunded_quantity_milli + done.quantity_milli,
        refunded_amount=line.refunded_amount + done.amount,
        refunded_accrual=line.refunded_accrual + done.accrual_share,
        refunded_redemption=line.refunded_redemption + done.redemption_restored,
    )


def test_partial_refunds_floor_and_the_last_gets_the_rest() -> None:
    line = LINE
    first = plan_refund([line], returned={1: 1000})
    assert shares(first) == [(1, 1000, 333, 3, 2, 2000)]
    assert not first.completes_purchase
    line = after(line, first)
    second = plan_refund([line], returned={1: 1000})
    assert shares(second) == [(1, 1000, 333, 3, 2, 1000)]
    line = after(line, second)
    last = plan_refund([line], returned={1: 1000})
    assert shares(last) == [(1, 1000, 334, 4, 3, 0)]
    assert last.completes_purchase


def test_full_refund_takes_what_is_left_of_every_line() -> None:
    lines = [
        replace(LINE, refunded_quantity_milli=1000, refunded_amount=333, refunded_accrual=3, refunded_redemption=2),
        RefundableLine(position=2, quantity_milli=1000, amount=500, accrual=5, redemption=0),
        RefundableLine(
            position=3,
            quantity_milli=1000,
            amount=100,
            accrual=1,
            redemption=1,
            refunded_quantity_milli=1000,
            refunded_amount=100,
            refunded_accrual=1,
            refunded_redemption=1,
        ),
    ]
    plan = plan_refund(lines, returned=None)
    assert shares(plan) == [(1, 2000, 667, 7, 5, 0), (2, 1000, 500, 5, 0, 0)]
    assert plan.completes_purchase
    assert plan.totals.amount == 1167


@pytest.mark.parametrize(
    ("returned", "reason", "position"),
    [
        ({1: 3001}, Reason.REFUND_EXCEEDS_ORIGINAL, "1"),
        ({1: 1000, 2: 1001}, Reason.REFUND_EXCEEDS_ORIGINAL, "2"),
        ({9: 1000}, Reason.INVALID_ARGUMENT, "9"),
        ({1: 0}, Reason.INVALID_ARGUMENT, "1"),
        ({}, Reason.INVALID_ARGUMENT, None),
    ],
)
def test_refusals(returned: Mapping[int, int], reason: Reason, position: str | None) -> None:
    lines = [LINE, RefundableLine(position=2, quantity_milli=1000, amount=1, accrual=0, redemption=0)]
    with pytest.raises(DomainError) as raised:
        plan_refund(lines, returned=returned)
    assert raised.value.reason is reason
    assert raised.value.metadata.get("position") == position


def test_nothing_left_to_refund() -> None:
    done = replace(LINE, refunded_quantity_milli=3000, refunded_amount=1000, refunded_accrual=10, refunded_redemption=7)
    with pytest.raises(DomainError) as raised:
        plan_refund([done], returned=None)
    assert raised.value.reason is Reason.REFUND_EXCEEDS_ORIGINAL
    with pytest.raises(DomainError):
        plan_refund([done], returned={1: 1})


TWO = plan_refund(
    [
        RefundableLine(position=1, quantity_milli=1000, amount=7000, accrual=7, redemption=0),
        RefundableLine(position=2, quantity_milli=1000, amount=3000, accrual=3, redemption=0),
    ],
    returned=None,
)


@pytest.mark.parametrize(
    ("policy", "takeable", "debt_limit", "reversed_", "forgiven", "debt"),
    [
        (RefundShortfallPolicy.WITHIN_BALANCE, 10, None, [7, 3], [0, 0], 0),
        (RefundShortfallPolicy.WITHIN_BALANCE, 50, None, [7, 3], [0, 0], 0),
        (RefundShortfallPolicy.WITHIN_BALANCE, 5, None, [3, 2], [4, 1], 0),
        (RefundShortfallPolicy.ONLY_PENDING, 0, None, [0, 0], [7, 3], 0),
        (RefundShortfallPolicy.ALLOW_DEBT, 5, None, [7, 3], [0, 0], 5),
        (RefundShortfallPolicy.ALLOW_DEBT, 5, 2, [5, 2], [2, 1], 2),
        (RefundShortfallPolicy.ALLOW_DEBT, 0, 0, [0, 0], [7, 3], 0),
    ],
)
def test_shortfall(
    policy: RefundShortfallPolicy,
    takeable: int,
    debt_limit: int | None,
    reversed_: list[int],
    forgiven: list[int],
    debt: int,
) -> None:
    plan = apply_shortfall(TWO, policy=policy, takeable_points=takeable, debt_limit_points=debt_limit)
    assert [line.accrual_reversed for line in plan.lines] == reversed_
    assert [line.accrual_forgiven for line in plan.lines] == forgiven
    assert plan.debt_created == debt
    assert plan.totals.accrual_reversed + plan.totals.accrual_forgiven == 10


def test_money_values_of_restored_points() -> None:
    plan = RefundPlan(
        lines=(RefundLinePlan(1, 1000, 5000, 0, 0, 30, 0),),
        completes_purchase=True,
    )
    rub = PointValue(points=1, money=100)
    assert redemption_value_restored(plan, point_value=rub) == 3000
    assert money_to_return(plan, point_value=rub) == 2000
    assert redemption_value_restored(plan, point_value=PointValue(points=1, money=1000)) == 5000


# -- properties ------------------------------------------------------------------------------


@st.composite
def purchases(draw: st.DrawFn) -> list[RefundableLine]:
    count = draw(st.integers(1, 5))
    return [
        RefundableLine(
            position=position,
            quantity_milli=draw(st.integers(1, 10_000)),
            amount=draw(st.integers(0, 1_000_000)),
            accrual=draw(st.integers(0, 10_000)),
            redemption=draw(st.integers(0, 10_000)),
        )
        for position in range(1, count + 1)
    ]


POLICIES = st.sampled_from(list(RefundShortfallPolicy))


@settings(max_examples=300, deadline=None)
@given(lines=purchases(), data=st.data())
def test_any_sequence_of_partial_refunds_adds_up_to_the_full_refund(
    lines: list[RefundableLine], data: st.DataObject
) -> None:
    original = {line.position: line for line in lines}
    current = {line.position: line for line in lines}
    reversed_total = forgiven_total = 0
    for _ in range(data.draw(st.integers(0, 8))):
        open_lines = [line for line in current.values() if line.remaining_quantity_milli > 0]
        if not open_lines:
            break
        chosen = data.draw(st.lists(st.sampled_from(open_lines), min_size=1, unique_by=lambda line: line.position))
        returned = {line.position: data.draw(st.integers(1, line.remaining_quantity_milli)) for line in chosen}
        plan = _refund(list(current.values()), returned, data)
        reversed_total += plan.totals.accrual_reversed
        forgiven_total += plan.totals.accrual_forgiven
        for line_plan in plan.lines:
            current[line_plan.position] = after(current[line_plan.position], plan)
        _check_running(original, current)
    if any(line.remaining_quantity_milli for line in current.values()):
        plan = _refund(list(current.values()), None, data)
        reversed_total += plan.totals.accrual_reversed
        forgiven_total += plan.totals.accrual_forgiven
        assert plan.completes_purchase
        for line_plan in plan.lines:
            current[line_plan.position] = after(current[line_plan.position], plan)
    for position, line in current.items():
        first = original[position]
        assert line.refunded_quantity_milli == first.quantity_milli
        assert line.refunded_amount == first.amount
        assert line.refunded_accrual == first.accrual
        assert line.refunded_redemption == first.redemption
    assert reversed_total + forgiven_total == sum(line.accrual for line in lines)


def _refund(lines: Sequence[RefundableLine], returned: Mapping[int, int] | None, data: st.DataObject) -> RefundPlan:
    plan = plan_refund(lines, returned=returned)
    share = plan.accrual_share
    policy = data.draw(POLICIES)
    takeable = data.draw(st.integers(0, share + 5))
    limit = data.draw(st.none() | st.integers(0, share + 5))
    settled = apply_shortfall(plan, policy=policy, takeable_points=takeable, debt_limit_points=limit)
    for before, line in zip(plan.lines, settled.lines, strict=True):
        assert line.accrual_reversed >= 0 and line.accrual_forgiven >= 0
        assert line.accrual_share == before.accrual_reversed
        assert min(line.amount, line.redemption_restored, line.quantity_milli) >= 0
    assert settled.totals.accrual_reversed >= min(share, takeable)
    if policy is not RefundShortfallPolicy.ALLOW_DEBT:
        assert settled.totals.accrual_reversed == min(share, takeable)
        assert settled.debt_created == 0
    else:
        assert settled.debt_created == settled.totals.accrual_reversed - min(share, takeable)
    return settled


def _check_running(original: Mapping[int, RefundableLine], current: Mapping[int, RefundableLine]) -> None:
    for position, line in current.items():
        first = original[position]
        assert 0 <= line.refunded_amount <= first.amount
        assert 0 <= line.refunded_accrual <= first.accrual
        assert 0 <= line.refunded_redemption <= first.redemption
        assert 0 <= line.refunded_quantity_milli <= first.quantity_milli
