"""The register flow end to end: real wallet, cards and processing processes on real PostgreSQL.

A program with a 5% rule, a member registered through cards (which opens the wallet accounts),
then Purchase: the points land in the wallet, the operation is recorded, a replay returns the
same bytes, a different request under the same key is refused, and Authorize/Capture/Void move
holds exactly once."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import grpc
import pytest
from grpc import aio
from loyalty.cards.v1 import cards_pb2
from loyalty.common.v1 import types_pb2
from loyalty.processing.v1 import processing_pb2 as p
from redis.asyncio import Redis

from shared import outbox
from tests.harness import ServiceProcess, metric_value
from tests.integration.processing.world import (
    World,
    key,
    member_balances,
    new_receipt_id,
    purchase,
    receipt,
    register,
    wallet_total,
)


def get_balances_served(wallet: ServiceProcess) -> float:
    labels = {
        "grpc_type": "unary",
        "grpc_service": "loyalty.wallet.v1.WalletService",
        "grpc_method": "GetBalances",
        "grpc_code": "OK",
    }
    return metric_value(wallet.metrics_text(), "grpc_server_handled_total", labels) or 0.0


async def test_a_member_processing_never_saw_earns_without_asking_the_wallet_for_accounts(
    world: World, stack: dict[str, ServiceProcess]
) -> None:
    """Cards' resolution carries the sub-accounts the wallet opened at registration, so the
    first purchase of a member costs no GetBalances (a redeeming one still reads the balances)."""
    member_id, phone = await register(world)
    resolved = await world.cards.Resolve(
        cards_pb2.ResolveRequest(
            program_id=world.program_id,
            identifier=types_pb2.MemberIdentifier(phone=phone),
            actor=types_pb2.Actor(type=types_pb2.ACTOR_TYPE_TERMINAL, id=world.terminal_id),
        )
    )
    wallet_accounts = [
        balance.account_id for balance in await member_balances(world.wallet, world.program_id, member_id)
    ]
    assert [a.account_id for a in resolved.resolution.member_accounts] == wallet_accounts
    served = get_balances_served(stack["wallet"])
    response = await world.processing.Purchase(purchase(world, phone, new_receipt_id()))
    assert response.operation.state == p.OPERATION_STATE_CAPTURED
    assert get_balances_served(stack["wallet"]) == served
    assert [balance.account_id for balance in response.balances] == wallet_accounts[:1]
    assert await wallet_total(world, member_id) == 5000


async def test_a_purchase_earns_once_and_replays_byte_for_byte(world: World) -> None:
    member_id, phone = await register(world)
    request = purchase(world, phone, f"r-{uuid.uuid4().hex[:8]}")
    first: p.PurchaseResponse = await world.processing.Purchase(request)
    assert first.operation.state == p.OPERATION_STATE_CAPTURED
    assert first.operation.member_id == member_id
    # 5% of 1000.00 RUB at 1 point = 1.00 RUB: 50.00 points.
    assert first.operation.purchase.calculation.accrual.amount_minor == 5000
    assert await wallet_total(world, member_id) == 5000
    again: p.PurchaseResponse = await world.processing.Purchase(request)
    assert again.SerializeToString() == first.SerializeToString()
    assert await wallet_total(world, member_id) == 5000
    changed = p.PurchaseRequest()
    changed.CopyFrom(request)
    changed.receipt.lines[0].amount.amount_minor = 50_000
    changed.receipt.lines[0].unit_price.amount_minor = 50_000
    changed.receipt.total.amount_minor = 50_000
    with pytest.raises(aio.AioRpcError) as refused:
        await world.processing.Purchase(changed)
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    read = await world.processing.GetOperation(
        p.GetOperationRequest(
            terminal_id=world.terminal_id, reference=p.OperationReference(operation_id=first.operation.operation_id)
        )
    )
    assert read.operation.state == p.OPERATION_STATE_CAPTURED
    assert read.operation.purchase.receipt.total.amount_minor == 100_000
    event = await accrued_event(world, first.operation.operation_id)
    assert (event["member_id"], event["points"]) == (member_id, 5000)


async def accrued_event(world: World, operation_id: str) -> dict[str, Any]:
    """The points.accrued event of an operation, once the outbox relay has published it."""
    redis = Redis.from_url(world.redis_url)
    try:
        for _ in range(100):  # bounded: the relay runs every second
            entries: list[Any] = await redis.xrange(outbox.STREAM) or []
            for _, fields in entries:
                data = json.loads(fields[b"payload"])
                if fields[b"event_type"] == b"points.accrued" and data["operation_id"] == operation_id:
                    return dict(data)
            await asyncio.sleep(0.1)
    finally:
        await redis.aclose()
    raise AssertionError(f"no points.accrued event for {operation_id}")


async def test_a_second_live_purchase_of_a_receipt_is_already_exists(world: World) -> None:
    _, phone = await register(world)
    receipt_id = f"r-{uuid.uuid4().hex[:8]}"
    await world.processing.Purchase(purchase(world, phone, receipt_id))
    with pytest.raises(aio.AioRpcError) as refused:
        await world.processing.Purchase(purchase(world, phone, receipt_id))
    assert refused.value.code() == grpc.StatusCode.ALREADY_EXISTS


async def test_authorize_then_capture_and_authorize_then_void(world: World) -> None:
    member_id, phone = await register(world)
    authorized = await world.processing.Authorize(
        p.AuthorizeRequest(
            idempotency_key=key(),
            terminal_id=world.terminal_id,
            member=types_pb2.MemberIdentifier(phone=phone),
            receipt=receipt(f"r-{uuid.uuid4().hex[:8]}"),
        )
    )
    assert authorized.operation.state == p.OPERATION_STATE_AUTHORIZED
    reference = p.OperationReference(operation_id=authorized.operation.operation_id)
    capture = p.CaptureRequest(idempotency_key=key(), terminal_id=world.terminal_id, reference=reference)
    captured = await world.processing.Capture(capture)
    assert captured.operation.state == p.OPERATION_STATE_CAPTURED
    assert await wallet_total(world, member_id) == 5000
    assert (await world.processing.Capture(capture)).SerializeToString() == captured.SerializeToString()
    with pytest.raises(aio.AioRpcError) as refused:
        await world.processing.Void(
            p.VoidRequest(idempotency_key=key(), terminal_id=world.terminal_id, reference=reference)
        )
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION

    second = await world.processing.Authorize(
        p.AuthorizeRequest(
            idempotency_key=key(),
            terminal_id=world.terminal_id,
            member=types_pb2.MemberIdentifier(phone=phone),
            receipt=receipt(f"r-{uuid.uuid4().hex[:8]}"),
        )
    )
    voided = await world.processing.Void(
        p.VoidRequest(
            idempotency_key=key(),
            terminal_id=world.terminal_id,
            reference=p.OperationReference(operation_id=second.operation.operation_id),
        )
    )
    assert voided.operation.state == p.OPERATION_STATE_VOIDED
    assert await wallet_total(world, member_id) == 5000


async def test_bad_input_names_the_fields_and_records_nothing(world: World) -> None:
    with pytest.raises(aio.AioRpcError) as refused:
        await world.processing.Purchase(p.PurchaseRequest(terminal_id=world.terminal_id))
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    listed = await world.processing.ListOperations(p.ListOperationsRequest(terminal_id=world.terminal_id))
    assert all(op.idempotency_key for op in listed.operations)
    with pytest.raises(aio.AioRpcError) as unknown:
        await world.processing.Identify(
            p.IdentifyRequest(terminal_id="no-such-till", member=types_pb2.MemberIdentifier(phone="+79160000000"))
        )
    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
