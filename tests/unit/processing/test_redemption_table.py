"""Table-driven tests of paying with points (services/processing/domain/redemption.py).

Rows: a redemption policy, a receipt, who pays and how much they ask for; expected the maximum
payable, the limit that set it (every RedemptionLimit value is reached), the redemption, a
refusal, and where the points landed (position -> (points, money value)).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import pytest

from services.processing.domain.rules import (
    Calculation,
    MemberFacts,
    OutletFacts,
    PointValue,
    Receipt,
    RedeemableProducts,
    RedemptionLimit,
    RedemptionPolicy,
    RedemptionRequest,
)
from shared.errors import DomainError, Reason
from tests.unit.processing.builders import MEMBER, OUTLET, RUB_PER_POINT, line, outlet, receipt, rule_set, run

ON = RedemptionPolicy(enabled=True, point_value=RUB_PER_POINT)


def policy(**fields: Any) -> RedemptionPolicy:
    return replace(ON, **fields)


@dataclass(frozen=True)
class Case:
    name: str
    policy: RedemptionPolicy
    receipt: Receipt
    max_redeemable: int
    limit: RedemptionLimit
    redemption: int = 0
    refusal: Reason | None = None
    refusal_policy: str = ""
    placed: dict[int, tuple[int, int]] = field(default_factory=dict)
    points: int = 0
    maximum: bool = False
    spendable: int | None = 1_000
    member: MemberFacts | None = MEMBER
    outlet: OutletFacts = OUTLET
    blocked: Reason | None = None
    card_or_qr: bool = True


HUNDRED = receipt(line(1, 10_000))
THREE = receipt(line(1, 10_000), line(2, 5_000), line(3, 5_000))

CASES = [
    # -- every limit ------------------------------------------------------------------------------
    Case("balance", ON, HUNDRED, 50, RedemptionLimit.BALANCE, spendable=50),
    Case("negative balance (debt) allows nothing", ON, HUNDRED, 0, RedemptionLimit.BALANCE, spendable=-5),
    Case("eligible lines", ON, HUNDRED, 100, RedemptionLimit.ELIGIBLE_LINES),
    Case(
        "a tie names the first limit (eligible lines before balance)",
        ON,
        HUNDRED,
        100,
        RedemptionLimit.ELIGIBLE_LINES,
        spendable=100,
    ),
    Case("unknown balance does not limit", ON, HUNDRED, 100, RedemptionLimit.ELIGIBLE_LINES, spendable=None),
    Case("max share", policy(max_share_bp=5000), HUNDRED, 50, RedemptionLimit.MAX_SHARE),
    Case("max share 100% is no limit", policy(max_share_bp=10_000), HUNDRED, 100, RedemptionLimit.ELIGIBLE_LINES),
    Case("max points per receipt", policy(max_points_per_receipt=30), HUNDRED, 30, RedemptionLimit.MAX_POINTS),
    Case("minimum receipt", policy(min_receipt_amount=20_000), HUNDRED, 0, RedemptionLimit.MIN_RECEIPT),
    Case(
        "minimum receipt reached exactly",
        policy(min_receipt_amount=10_000),
        HUNDRED,
        100,
        RedemptionLimit.ELIGIBLE_LINES,
    ),
    Case("redemption disabled", policy(enabled=False), HUNDRED, 0, RedemptionLimit.NOT_ALLOWED),
    Case(
        "partner without redemption",
        ON,
        HUNDRED,
        0,
        RedemptionLimit.NOT_ALLOWED,
        outlet=outlet(redemption_enabled=False),
    ),
    Case("frozen account", ON, HUNDRED, 0, RedemptionLimit.NOT_ALLOWED, blocked=Reason.ACCOUNT_FROZEN),
    Case(
        "phone only when a card or QR is required",
        policy(require_card_or_qr=True),
        HUNDRED,
        0,
        RedemptionLimit.NOT_ALLOWED,
        card_or_qr=False,
    ),
    Case("card or QR when required", policy(require_card_or_qr=True), HUNDRED, 100, RedemptionLimit.ELIGIBLE_LINES),
    Case("no member", ON, HUNDRED, 0, RedemptionLimit.NO_MEMBER, member=None, spendable=None),
    # -- which lines, how much of each ------------------------------------------------------------
    Case(
        "register-excluded line",
        ON,
        receipt(line(1, 5_000, redemption_excluded=True), line(2, 3_000)),
        30,
        RedemptionLimit.ELIGIBLE_LINES,
    ),
    Case(
        "policy-excluded SKU and category",
        policy(excluded_skus=frozenset({"SKU1"}), excluded_category_ids=frozenset({"TOBACCO"})),
        receipt(line(1, 5_000), line(2, 3_000, category_id="TOBACCO"), line(3, 2_000)),
        20,
        RedemptionLimit.ELIGIBLE_LINES,
    ),
    Case(
        "subset: only included SKUs and categories",
        policy(
            products=RedeemableProducts.SUBSET,
            included_skus=frozenset({"SKU1"}),
            included_category_ids=frozenset({"DAIRY"}),
        ),
        receipt(line(1, 5_000), line(2, 3_000, category_id="DAIRY"), line(3, 2_000)),
        80,
        RedemptionLimit.ELIGIBLE_LINES,
    ),
    Case(
        "members-only items mode",
        policy(products=RedeemableProducts.MEMBERS_ONLY_ITEMS, members_only_category_ids=frozenset({"REWARDS"})),
        receipt(line(1, 5_000), line(2, 3_000, category_id="REWARDS")),
        30,
        RedemptionLimit.ELIGIBLE_LINES,
    ),
    Case(
        "minimum left per line",
        policy(min_line_remainder=1),
        receipt(line(1, 10_000), line(2, 5_000)),
        148,
        RedemptionLimit.ELIGIBLE_LINES,
    ),
    Case(
        "a line cheaper than a point takes none",
        ON,
        receipt(line(1, 50), line(2, 250)),
        2,
        RedemptionLimit.ELIGIBLE_LINES,
    ),
    Case(
        "members-only items are exempt from max share and the line minimum",
        policy(max_share_bp=5000, min_line_remainder=100, members_only_skus=frozenset({"SKU1"})),
        receipt(line(1, 2_000), line(2, 8_000)),
        70,
        RedemptionLimit.MAX_SHARE,
    ),
    Case(
        "minimum points above the maximum: nothing payable",
        policy(min_points_per_receipt=100),
        HUNDRED,
        0,
        RedemptionLimit.BALANCE,
        spendable=50,
    ),
    # -- requests -----------------------------------------------------------------------------------
    Case(
        "maximum",
        ON,
        THREE,
        200,
        RedemptionLimit.ELIGIBLE_LINES,
        redemption=200,
        maximum=True,
        placed={1: (100, 10_000), 2: (50, 5_000), 3: (50, 5_000)},
    ),
    Case(
        "requested points spread in proportion to line caps",
        ON,
        THREE,
        200,
        RedemptionLimit.ELIGIBLE_LINES,
        redemption=100,
        points=100,
        placed={1: (50, 5_000), 2: (25, 2_500), 3: (25, 2_500)},
    ),
    Case(
        "largest remainder: the points left after flooring go to the largest remainders",
        ON,
        THREE,
        200,
        RedemptionLimit.ELIGIBLE_LINES,
        redemption=3,
        points=3,
        placed={1: (1, 100), 2: (1, 100), 3: (1, 100)},
    ),
    Case(
        "members-only items take the points first",
        policy(members_only_skus=frozenset({"SKU2"})),
        receipt(line(1, 8_000), line(2, 2_000)),
        100,
        RedemptionLimit.ELIGIBLE_LINES,
        redemption=30,
        points=30,
        placed={1: (10, 1_000), 2: (20, 2_000)},
    ),
    Case(
        "a point worth a fraction of a kopeck: values rounded per group, spread by largest remainder",
        policy(point_value=PointValue(points=3, money=100)),
        receipt(line(1, 1_000), line(2, 1_000)),
        60,
        RedemptionLimit.ELIGIBLE_LINES,
        redemption=4,
        points=4,
        placed={1: (2, 67), 2: (2, 66)},
    ),
    Case(
        "more than the balance",
        ON,
        HUNDRED,
        50,
        RedemptionLimit.BALANCE,
        points=60,
        spendable=50,
        refusal=Reason.INSUFFICIENT_POINTS,
        refusal_policy="balance",
    ),
    Case(
        "more than the policy allows",
        policy(max_share_bp=5000),
        HUNDRED,
        50,
        RedemptionLimit.MAX_SHARE,
        points=60,
        refusal=Reason.REDEMPTION_NOT_ALLOWED,
        refusal_policy="max_share",
    ),
    Case(
        "more than the per-receipt maximum",
        policy(max_points_per_receipt=30),
        HUNDRED,
        30,
        RedemptionLimit.MAX_POINTS,
        points=31,
        refusal=Reason.REDEMPTION_NOT_ALLOWED,
        refusal_policy="max_points",
    ),
    Case(
        "more than the lines allow",
        ON,
        HUNDRED,
        100,
        RedemptionLimit.ELIGIBLE_LINES,
        points=101,
        refusal=Reason.REDEMPTION_NOT_ALLOWED,
        refusal_policy="eligible_lines",
    ),
    Case(
        "fewer than the minimum points",
        policy(min_points_per_receipt=10),
        HUNDRED,
        100,
        RedemptionLimit.ELIGIBLE_LINES,
        points=9,
        refusal=Reason.REDEMPTION_NOT_ALLOWED,
        refusal_policy="min_points",
    ),
    Case(
        "the minimum points exactly",
        policy(min_points_per_receipt=10),
        HUNDRED,
        100,
        RedemptionLimit.ELIGIBLE_LINES,
        redemption=10,
        points=10,
        placed={1: (10, 1_000)},
    ),
    Case(
        "requested from a frozen account: the caller's reason",
        ON,
        HUNDRED,
        0,
        RedemptionLimit.NOT_ALLOWED,
        points=10,
        blocked=Reason.ACCOUNT_FROZEN,
        refusal=Reason.ACCOUNT_FROZEN,
        refusal_policy="account",
    ),
    Case(
        "requested by phone only",
        policy(require_card_or_qr=True),
        HUNDRED,
        0,
        RedemptionLimit.NOT_ALLOWED,
        points=10,
        card_or_qr=False,
        refusal=Reason.REDEMPTION_NOT_ALLOWED,
        refusal_policy="identification",
    ),
    Case(
        "requested without a member",
        ON,
        HUNDRED,
        0,
        RedemptionLimit.NO_MEMBER,
        points=10,
        member=None,
        refusal=Reason.REDEMPTION_NOT_ALLOWED,
        refusal_policy="no_member",
    ),
    Case(
        "requested below the minimum receipt",
        policy(min_receipt_amount=20_000),
        HUNDRED,
        0,
        RedemptionLimit.MIN_RECEIPT,
        points=10,
        refusal=Reason.REDEMPTION_NOT_ALLOWED,
        refusal_policy="min_receipt",
    ),
    Case(
        "the maximum is never refused, even when nothing is payable",
        policy(enabled=False),
        HUNDRED,
        0,
        RedemptionLimit.NOT_ALLOWED,
        maximum=True,
    ),
]


def calculate(case: Case) -> Calculation:
    return run(
        rule_set(redemption=case.policy),
        case.receipt,
        the_member=case.member,
        the_outlet=case.outlet,
        points=case.points,
        maximum=case.maximum,
        spendable=case.spendable,
        redemption_blocked=case.blocked,
        identified_by_card_or_qr=case.card_or_qr,
    )


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_redemption(case: Case) -> None:
    calculation = calculate(case)
    assert (calculation.max_redeemable, calculation.max_redeemable_limit) == (case.max_redeemable, case.limit)
    assert calculation.redemption == case.redemption
    assert calculation.redemption_refusal == case.refusal
    assert calculation.redemption_refusal_policy == case.refusal_policy
    placed = {item.position: (item.redemption, item.redemption_value) for item in calculation.lines if item.redemption}
    assert placed == case.placed
    assert calculation.redemption_value == sum(value for _, value in case.placed.values())
    assert calculation.amount_due == case.receipt.total - calculation.redemption_value


def test_every_redemption_limit_is_reached() -> None:
    assert {case.limit for case in CASES} == set(RedemptionLimit)


def test_line_flags_and_caps() -> None:
    calculation = run(
        rule_set(redemption=policy(excluded_skus=frozenset({"SKU2"}), min_line_remainder=1)),
        receipt(line(1, 10_000), line(2, 5_000), line(3, 3_000, redemption_excluded=True)),
        maximum=True,
    )
    flags = {item.position: (item.redemption_excluded, item.max_redeemable) for item in calculation.lines}
    assert flags == {1: (False, 99), 2: (True, 0), 3: (True, 0)}
    assert [item.amount_due for item in calculation.lines] == [100, 5_000, 3_000]


def test_gated_receipts_report_zero_line_caps() -> None:
    calculation = run(rule_set(redemption=ON), HUNDRED, the_member=None, spendable=None)
    assert [item.max_redeemable for item in calculation.lines] == [0]


@pytest.mark.parametrize(
    ("points", "maximum", "fields"),
    [(-1, False, {"redeem_points.amount_minor"}), (5, True, {"redeem_maximum"})],
)
def test_bad_requests_are_invalid_arguments(points: int, maximum: bool, fields: set[str]) -> None:
    with pytest.raises(DomainError) as raised:
        RedemptionRequest(points=points, maximum=maximum)
    assert raised.value.reason is Reason.INVALID_ARGUMENT
    assert {violation.field for violation in raised.value.violations} == fields
