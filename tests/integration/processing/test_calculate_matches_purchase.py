"""Property: what Calculate says a receipt earns and spends is exactly what Purchase then records
and the wallet posts — for random receipts (1-20 lines, several rules stacking) and random
redemptions, through the real services."""

from __future__ import annotations

import difflib
from dataclasses import dataclass

import pytest
from google.protobuf import text_format
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from loyalty.common.v1 import types_pb2
from loyalty.processing.v1 import processing_pb2 as p
from loyalty.processing.v1 import program_admin_pb2 as pa

from tests.integration.processing.world import ACTOR, World, key, new_receipt_id, register, rub, wallet_total


@dataclass
class Shopper:
    member_id: str
    phone: str


@pytest.fixture(scope="module")
async def shopper(world: World) -> Shopper:
    """One member, and rules beyond the world's 5% that stack and round differently: +3% on
    coffee, 1.00 point per bonus item, and a progressive marginal rate over 2,000 RUB."""
    rules = [
        pa.EarningRule(
            code="COFFEE3",
            name="Coffee +3%",
            percent=pa.PercentReward(rate_bp=300),
            target=pa.RuleTarget(category_ids=["COFFEE"]),
        ),
        pa.EarningRule(
            code="BONUSITEM",
            name="1 point per bonus item",
            per_item=pa.PerItemReward(points_per_unit=types_pb2.Points(amount_minor=100, scale=2)),
            target=pa.RuleTarget(skus=["SKU-BONUS"]),
        ),
        pa.EarningRule(
            code="BIGBASKET",
            name="Big basket",
            progressive=pa.ProgressiveReward(
                basis=pa.PROGRESSIVE_BASIS_PER_RECEIPT,
                method=pa.PROGRESSIVE_METHOD_MARGINAL,
                tiers=[
                    pa.ProgressiveTier(threshold=rub(200_000), rate_bp=200),
                    pa.ProgressiveTier(threshold=rub(500_000), rate_bp=400),
                ],
            ),
        ),
    ]
    for rule in rules:
        await world.admin.CreateEarningRule(
            pa.CreateEarningRuleRequest(idempotency_key=key(), actor=ACTOR, earning_rule=rule)
        )
    await world.admin.PublishRuleSet(pa.PublishRuleSetRequest(idempotency_key=key(), actor=ACTOR, comment="rich"))
    member_id, phone = await register(world)
    return Shopper(member_id, phone)


LINE = st.tuples(
    st.sampled_from([("SKU-1", "TEA"), ("SKU-2", "COFFEE"), ("SKU-BONUS", "SWEETS"), ("SKU-4", "")]),
    st.sampled_from([250, 1000, 2000, 3000, 1500]),
    st.integers(min_value=1, max_value=500_000),
)


def receipt_of(lines: list[tuple[tuple[str, str], int, int]]) -> types_pb2.Receipt:
    receipt = types_pb2.Receipt(receipt_id=new_receipt_id())
    for position, ((sku, category), quantity, unit_price) in enumerate(lines, start=1):
        amount = unit_price * quantity // 1000
        receipt.lines.append(
            types_pb2.ReceiptLine(
                position=position,
                sku=sku,
                name=sku,
                category_id=category,
                quantity_milli=quantity,
                unit_price=rub(unit_price),
                amount=rub(amount),
            )
        )
    receipt.total.CopyFrom(rub(sum(line.amount.amount_minor for line in receipt.lines)))
    return receipt


def comparable(calculation: p.Calculation) -> str:
    """A calculation without `max_redeemable(_limit)` (a Purchase that spends nothing does not read
    the balances, so it does not record what could have been spent) and without the accrual's
    activation and expiry times (they count from each call's own time)."""
    copy = p.Calculation()
    copy.CopyFrom(calculation)
    copy.ClearField("max_redeemable")
    copy.ClearField("max_redeemable_limit")
    for part in copy.accrual_parts:  # they count from the operation's own time (seconds apart)
        part.ClearField("activation_time")
        part.ClearField("expire_time")
    return text_format.MessageToString(copy)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines=st.lists(LINE, min_size=1, max_size=20), redeem_share=st.integers(min_value=0, max_value=100))
async def test_calculate_is_what_purchase_posts(
    world: World, shopper: Shopper, lines: list[tuple[tuple[str, str], int, int]], redeem_share: int
) -> None:
    receipt = receipt_of(lines)
    if receipt.total.amount_minor == 0:
        return
    before = await wallet_total(world, shopper.member_id)
    redeem = types_pb2.Points(amount_minor=before * redeem_share // 100, scale=2)
    member = types_pb2.MemberIdentifier(phone=shopper.phone)
    calculated: p.CalculateResponse = await world.processing.Calculate(
        p.CalculateRequest(terminal_id=world.terminal_id, member=member, receipt=receipt, redeem_points=redeem)
    )
    if calculated.calculation.redemption.amount_minor != redeem.amount_minor:
        redeem.amount_minor = calculated.calculation.redemption.amount_minor  # what policy allows
        calculated = await world.processing.Calculate(
            p.CalculateRequest(terminal_id=world.terminal_id, member=member, receipt=receipt, redeem_points=redeem)
        )
    bought: p.PurchaseResponse = await world.processing.Purchase(
        p.PurchaseRequest(
            idempotency_key=key(),
            terminal_id=world.terminal_id,
            member=member,
            receipt=receipt,
            redeem_points=redeem,
        )
    )
    recorded = bought.operation.purchase.calculation
    assert comparable(recorded) == comparable(calculated.calculation), "\n".join(
        difflib.unified_diff(comparable(calculated.calculation).splitlines(), comparable(recorded).splitlines())
    )
    after = await wallet_total(world, shopper.member_id)
    assert after - before == recorded.accrual.amount_minor - recorded.redemption.amount_minor
    assert sum(line.accrual.amount_minor for line in recorded.lines) == recorded.accrual.amount_minor
