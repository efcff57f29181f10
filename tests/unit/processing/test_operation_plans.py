"""The wallet transfers operations plan (domain/operations.py) and the refund planning around
them (refunding.py): ids derived from the operation, holds posted never above what was held,
reversals that fill postings in order and never exceed them, and what a refund may take back
under each shortfall policy."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st
from loyalty.common.v1 import types_pb2
from loyalty.wallet.v1 import wallet_pb2

from services.processing import refunding
from services.processing.domain import operations as ops
from services.processing.domain import refunds
from services.processing.domain.operations import AccrualPartPlan, Leg, Posting
from services.processing.domain.ruleset import RefundShortfallPolicy

ACCOUNTS = ops.Accounts(
    issuance="sys-issuance",
    redemption="sys-redemption",
    earning={"base": "acc-base", "promo": "acc-promo"},
    spending=(("acc-promo", "promo", 300), ("acc-base", "base", 10_000)),
)


def test_a_sale_redeems_in_spending_order_then_accrues_with_derived_ids() -> None:
    transfers, postings = ops.sale_transfers(
        operation_id="op_1",
        accounts=ACCOUNTS,
        redemption=500,
        accrual_parts=[AccrualPartPlan("base", 120, None, None), AccrualPartPlan("promo", 0, None, None)],
    )
    assert [(t.transfer_id, t.debit_account_id, t.credit_account_id, t.amount) for t in transfers] == [
        ("op_1:redeem:0", "acc-promo", "sys-redemption", 300),
        ("op_1:redeem:1", "acc-base", "sys-redemption", 200),
        ("op_1:accrue:0", "sys-issuance", "acc-base", 120),
    ]
    assert [(p.leg, p.amount) for p in postings] == [(Leg.REDEMPTION, 300), (Leg.REDEMPTION, 200), (Leg.ACCRUAL, 120)]
    assert not any(t.pending for t in transfers)


def test_an_authorization_holds_and_a_partial_capture_posts_no_more_than_held() -> None:
    holds, held = ops.sale_transfers(
        operation_id="op_2",
        accounts=ACCOUNTS,
        redemption=200,
        accrual_parts=[AccrualPartPlan("base", 100, None, None)],
        hold_timeout_s=600,
    )
    assert all(t.pending and t.timeout_s == 600 for t in holds)
    captured, postings = ops.capture_transfers(
        operation_id="op_2",
        holds=held,
        redemption=150,
        accrual_parts=[AccrualPartPlan("base", 130, None, None)],
        accounts=ACCOUNTS,
    )
    posts = [(t.transfer_id, t.pending_transfer_id, t.amount, t.post_pending) for t in captured]
    assert posts == [
        ("op_2:capture:redeem:0", "op_2:redeem:0", 150, True),
        ("op_2:capture:accrue:0", "op_2:accrue:0", 100, True),
        ("op_2:capture-extra:accrue:0", "", 30, False),  # earned beyond the hold: a new credit
    ]
    assert sum(p.amount for p in postings if p.leg is Leg.ACCRUAL) == 130
    with pytest.raises(ValueError, match="more than was held"):
        ops.capture_transfers(operation_id="op_2", holds=held, redemption=201, accrual_parts=[], accounts=ACCOUNTS)


def test_a_void_releases_every_hold() -> None:
    _, held = ops.sale_transfers(
        operation_id="op_3", accounts=ACCOUNTS, redemption=50, accrual_parts=[], hold_timeout_s=60
    )
    voids = ops.void_transfers(operation_id="op_3", holds=held)
    assert [(t.transfer_id, t.pending_transfer_id, t.void_pending) for t in voids] == [
        ("op_3:void:redeem:0", "op_3:redeem:0", True)
    ]


POSTINGS = [
    Posting("op:redeem:0", Leg.REDEMPTION, "acc-promo", "promo", 300),
    Posting("op:redeem:1", Leg.REDEMPTION, "acc-base", "base", 200),
    Posting("op:accrue:0", Leg.ACCRUAL, "acc-base", "base", 70),
    Posting("op:accrue:1", Leg.ACCRUAL, "acc-promo", "promo", 30),
]


@given(cuts=st.lists(st.integers(min_value=0, max_value=100), min_size=1, max_size=6))
def test_reversals_fill_postings_in_order_and_add_up_exactly(cuts: list[int]) -> None:
    """Any sequence of growing cumulative totals reverses each posting exactly once in all."""
    postings = list(POSTINGS)
    accrual_steps = [*sorted(cuts), 100]
    redemption_steps = [*sorted(cut * 5 for cut in cuts), 500]
    moved = {p.transfer_id: 0 for p in postings}
    for step, (accrual, redemption) in enumerate(zip(accrual_steps, redemption_steps, strict=True)):
        transfers, postings = ops.refund_transfers(
            refund_operation_id=f"ref{step}",
            postings=postings,
            accounts=ACCOUNTS,
            accrual_reversed_total=accrual,
            redemption_restored_total=redemption,
            allow_debt=False,
        )
        for transfer in transfers:
            assert transfer.amount > 0
            moved[transfer.reverses_transfer_id] += transfer.amount
        for posting in postings:
            assert 0 <= posting.reversed_amount <= posting.amount
    assert moved == {p.transfer_id: p.amount for p in POSTINGS}


def test_a_refund_gives_back_before_it_takes_back() -> None:
    """In one linked chain, restored points count towards what the member can give back."""
    transfers, _ = ops.refund_transfers(
        refund_operation_id="ref",
        postings=POSTINGS,
        accounts=ACCOUNTS,
        accrual_reversed_total=100,
        redemption_restored_total=500,
        allow_debt=False,
    )
    reasons = [t.reason for t in transfers]
    assert reasons == ["REDEMPTION_REVERSAL"] * 2 + ["ACCRUAL_REVERSAL"] * 2
    assert transfers[2].debit_account_id == "acc-base" and transfers[2].credit_account_id == "sys-issuance"


def plan(accrual_share: int, restored: int = 0) -> refunds.RefundPlan:
    line = refunds.RefundLinePlan(
        position=1,
        quantity_milli=1000,
        amount=10_000,
        accrual_reversed=accrual_share,
        accrual_forgiven=0,
        redemption_restored=restored,
        remaining_quantity_milli=0,
    )
    return refunds.RefundPlan(lines=(line,), completes_purchase=True)


FACTS = refunding.WalletFacts(
    pending_lots={"op:accrue:0": 40, "elsewhere": 999}, available={"acc-base": 25, "acc-promo": -10}, debt_limit=None
)


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        (RefundShortfallPolicy.ONLY_PENDING, 40),  # only the purchase's own pending lot
        # + the earning accounts' balances above zero + what the refund restores to them first
        (RefundShortfallPolicy.WITHIN_BALANCE, 40 + 25 + 0 + 300 + 200),
    ],
)
def test_what_a_refund_may_take_back(policy: RefundShortfallPolicy, expected: int) -> None:
    assert refunding.takeable_points(POSTINGS, plan(100, restored=500), FACTS, policy) == expected


def test_refunded_lines_accumulate_settled_shares() -> None:
    first = refunding.refunded_after({}, plan(60, restored=10))
    second = refunding.refunded_after(first, plan(40, restored=5))
    assert second == {1: {"quantity_milli": 2000, "amount": 20_000, "accrual": 100, "redemption": 15}}


def test_a_dry_run_projects_reversals_out_of_pending_first() -> None:
    view = wallet_pb2.AccountBalanceView(
        balance=types_pb2.AccountBalance(
            account_id="acc-base",
            available=types_pb2.Points(amount_minor=100),
            pending=types_pb2.Points(amount_minor=40),
        )
    )
    transfers, _ = ops.refund_transfers(
        refund_operation_id="ref",
        postings=POSTINGS,
        accounts=ACCOUNTS,
        accrual_reversed_total=70,
        redemption_restored_total=200,
        allow_debt=False,
    )
    (projected,) = refunding.projected_balances([view], transfers, {"op:accrue:0": 40})
    # The 200 restored fill the promo posting first (postings fill in order): base gets none.
    assert projected.pending.amount_minor == 0
    assert projected.available.amount_minor == 100 - (70 - 40)


def test_fully_refunded_when_every_line_is_returned() -> None:
    receipt = types_pb2.Receipt(
        lines=[
            types_pb2.ReceiptLine(position=1, quantity_milli=2000),
            types_pb2.ReceiptLine(position=2, quantity_milli=1),
        ]
    )
    done_one = {1: {"quantity_milli": 2000}}
    assert not refunding.fully_refunded(receipt.SerializeToString(), done_one)
    assert refunding.fully_refunded(receipt.SerializeToString(), {**done_one, 2: {"quantity_milli": 1}})


def test_imported_sales_carry_their_time() -> None:
    when = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
    transfers, _ = ops.sale_transfers(
        operation_id="op_4",
        accounts=ACCOUNTS,
        redemption=0,
        accrual_parts=[AccrualPartPlan("base", 10, None, None)],
        imported_time=when,
    )
    assert transfers[0].imported_time == when
