"""Refunds end to end: real wallet, cards and processing processes on real PostgreSQL.

A 5% program (points spendable at once). What a refund takes back and gives back is checked
against the wallet's own balances; partial refunds add up exactly to the full one, concurrent
refunds of one purchase never exceed it, a dry run changes nothing, and replays are
byte-identical."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest
from grpc import aio
from loyalty.common.v1 import types_pb2
from loyalty.processing.v1 import processing_pb2 as p

from tests.integration.cards.support import details
from tests.integration.processing.world import (
    World,
    key,
    new_receipt_id,
    purchase,
    register,
    rub,
    wallet_total,
)

FULL = p.REFUND_MODE_FULL
LINES = p.REFUND_MODE_LINES


def three_items(receipt_id: str) -> types_pb2.Receipt:
    """3 x 333.33 RUB: 5% is 49.99 points, which thirds cannot split evenly."""
    line = types_pb2.ReceiptLine(
        position=1, sku="SKU-3", name="Tea", quantity_milli=3000, unit_price=rub(33_333), amount=rub(99_999)
    )
    return types_pb2.Receipt(receipt_id=receipt_id, lines=[line], total=rub(99_999))


def refund_request(world: World, operation_id: str, *, mode: int = FULL, **fields: Any) -> p.RefundRequest:
    return p.RefundRequest(
        idempotency_key=fields.pop("idempotency_key", key()),
        terminal_id=world.terminal_id,
        original=p.OperationReference(operation_id=operation_id),
        refund_receipt_id=f"ret-{operation_id[-8:]}",
        mode=mode,  # type: ignore[arg-type]
        **fields,
    )


def one(quantity_milli: int, position: int = 1) -> list[p.RefundLine]:
    return [p.RefundLine(position=position, quantity_milli=quantity_milli)]


async def bought(world: World, receipt: types_pb2.Receipt | None = None) -> tuple[str, str, p.PurchaseResponse]:
    member_id, phone = await register(world)
    receipt_id = receipt.receipt_id if receipt else new_receipt_id()
    fields: dict[str, Any] = {"receipt": receipt} if receipt else {}
    response: p.PurchaseResponse = await world.processing.Purchase(purchase(world, phone, receipt_id, **fields))
    assert response.operation.state == p.OPERATION_STATE_CAPTURED
    return member_id, phone, response


async def test_a_full_refund_takes_the_accrual_back_once(world: World) -> None:
    member_id, _, sale = await bought(world)
    assert await wallet_total(world, member_id) == 5000
    request = refund_request(world, sale.operation.operation_id)
    refunded: p.RefundResponse = await world.processing.Refund(request)
    assert refunded.refund.state == p.OPERATION_STATE_COMPLETED
    assert refunded.refund.type == p.OPERATION_TYPE_REFUND
    result = refunded.refund.refund
    assert result.original_operation_id == sale.operation.operation_id
    assert result.totals.accrual_reversed.amount_minor == 5000
    assert result.totals.amount.amount_minor == 100_000
    assert result.money_to_return.amount_minor == 100_000
    assert refunded.original.state == p.OPERATION_STATE_REFUNDED
    assert list(refunded.original.purchase.refund_operation_ids) == [refunded.refund.operation_id]
    assert await wallet_total(world, member_id) == 0
    assert sum(balance.available.amount_minor for balance in refunded.balances) == 0
    again = await world.processing.Refund(request)
    assert again.SerializeToString() == refunded.SerializeToString()
    assert await wallet_total(world, member_id) == 0
    with pytest.raises(aio.AioRpcError) as exceeded:
        await world.processing.Refund(refund_request(world, sale.operation.operation_id))
    assert exceeded.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert details(exceeded.value).reason == "REFUND_EXCEEDS_ORIGINAL"


async def test_partial_refunds_add_up_exactly_to_the_full_one(world: World) -> None:
    member_id, _, sale = await bought(world, three_items(new_receipt_id()))
    accrued = sale.operation.purchase.calculation.accrual.amount_minor
    assert accrued == 4999
    reversed_total = 0
    for left in (2000, 1000, 0):
        response = await world.processing.Refund(
            refund_request(world, sale.operation.operation_id, mode=LINES, lines=one(1000))
        )
        line = response.refund.refund.lines[0]
        assert line.remaining_quantity_milli == left
        reversed_total += response.refund.refund.totals.accrual_reversed.amount_minor
        assert await wallet_total(world, member_id) == accrued - reversed_total
    assert reversed_total == accrued
    assert response.original.state == p.OPERATION_STATE_REFUNDED
    assert response.original.purchase.refunded.amount.amount_minor == 99_999
    assert len(response.original.purchase.refund_operation_ids) == 3
    with pytest.raises(aio.AioRpcError) as exceeded:
        await world.processing.Refund(refund_request(world, sale.operation.operation_id, mode=LINES, lines=one(1)))
    assert exceeded.value.code() == grpc.StatusCode.FAILED_PRECONDITION


async def test_a_dry_run_previews_exactly_and_changes_nothing(world: World) -> None:
    member_id, _, sale = await bought(world, three_items(new_receipt_id()))
    lines = one(2000)
    preview: p.RefundResponse = await world.processing.Refund(
        refund_request(world, sale.operation.operation_id, mode=LINES, lines=lines, dry_run=True)
    )
    assert preview.dry_run
    assert preview.refund.operation_id == ""
    assert preview.refund.state == p.OPERATION_STATE_UNSPECIFIED
    assert preview.original.state == p.OPERATION_STATE_PARTIALLY_REFUNDED
    assert await wallet_total(world, member_id) == 4999
    read = await world.processing.GetOperation(
        p.GetOperationRequest(
            terminal_id=world.terminal_id,
            reference=p.OperationReference(operation_id=sale.operation.operation_id),
        )
    )
    assert read.operation.state == p.OPERATION_STATE_CAPTURED
    real: p.RefundResponse = await world.processing.Refund(
        refund_request(world, sale.operation.operation_id, mode=LINES, lines=lines)
    )
    assert real.refund.refund.totals == preview.refund.refund.totals
    assert [b.available.amount_minor for b in real.balances] == [b.available.amount_minor for b in preview.balances]


async def test_refunds_racing_for_one_purchase_never_exceed_it(world: World) -> None:
    member_id, _, sale = await bought(world, three_items(new_receipt_id()))

    async def refund_until_definite() -> str:
        request = refund_request(world, sale.operation.operation_id, mode=LINES, lines=one(1000))
        for _ in range(200):  # bounded: a competing refund takes milliseconds
            try:
                await world.processing.Refund(request)
                return "completed"
            except aio.AioRpcError as error:
                if error.code() == grpc.StatusCode.ABORTED:
                    await asyncio.sleep(0.02)
                    continue
                return details(error).reason
        raise AssertionError("a refund never got a definite answer")

    outcomes = await asyncio.gather(*(refund_until_definite() for _ in range(6)))
    assert sorted(outcomes) == ["REFUND_EXCEEDS_ORIGINAL"] * 3 + ["completed"] * 3
    assert await wallet_total(world, member_id) == 0


async def test_a_refund_gives_redeemed_points_back(world: World) -> None:
    member_id, phone, _ = await bought(world)  # earns 50.00 points
    paid: p.PurchaseResponse = await world.processing.Purchase(
        purchase(world, phone, new_receipt_id(), redeem_points=types_pb2.Points(amount_minor=3000, scale=2))
    )
    calculation = paid.operation.purchase.calculation
    assert calculation.redemption.amount_minor == 3000
    balance_after_sale = await wallet_total(world, member_id)
    assert balance_after_sale == 5000 - 3000 + calculation.accrual.amount_minor
    refunded: p.RefundResponse = await world.processing.Refund(refund_request(world, paid.operation.operation_id))
    totals = refunded.refund.refund.totals
    assert totals.redemption_restored.amount_minor == 3000
    assert totals.accrual_reversed.amount_minor == calculation.accrual.amount_minor
    assert refunded.refund.refund.redemption_value_restored.amount_minor == calculation.redemption_value.amount_minor
    assert await wallet_total(world, member_id) == 5000


async def test_spent_points_are_forgiven_within_balance(world: World) -> None:
    """WITHIN_BALANCE (the default): points already spent stay with the member, reported as
    forgiven; the balance never goes below zero."""
    member_id, phone, sale = await bought(world)  # 50.00 points
    await world.processing.Purchase(
        purchase(
            world,
            phone,
            new_receipt_id(),
            receipt=_small_receipt(),
            redeem_points=types_pb2.Points(amount_minor=5000, scale=2),
        )
    )
    left = await wallet_total(world, member_id)  # what the second receipt earned
    refunded: p.RefundResponse = await world.processing.Refund(refund_request(world, sale.operation.operation_id))
    totals = refunded.refund.refund.totals
    assert totals.accrual_reversed.amount_minor == left
    assert totals.accrual_forgiven.amount_minor == 5000 - left
    assert await wallet_total(world, member_id) == 0


def _small_receipt() -> types_pb2.Receipt:
    line = types_pb2.ReceiptLine(
        position=1, sku="SKU-9", name="Chocolate", quantity_milli=1000, unit_price=rub(20_000), amount=rub(20_000)
    )
    return types_pb2.Receipt(receipt_id=new_receipt_id(), lines=[line], total=rub(20_000))


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"mode": p.REFUND_MODE_UNSPECIFIED}, "mode"),
        ({"mode": FULL, "lines": one(1000)}, "lines"),
        ({"mode": LINES}, "lines"),
        ({"mode": LINES, "lines": one(0)}, "lines[0].quantity_milli"),
        ({"idempotency_key": types_pb2.IdempotencyKey(key="short")}, "idempotency_key.key"),
    ],
)
async def test_bad_refund_input_is_invalid_argument_and_changes_nothing(
    world: World, fields: dict[str, Any], field: str
) -> None:
    member_id, _, sale = await bought(world)
    with pytest.raises(aio.AioRpcError) as refused:
        await world.processing.Refund(refund_request(world, sale.operation.operation_id, **fields))
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in details(refused.value).fields
    assert await wallet_total(world, member_id) == 5000
