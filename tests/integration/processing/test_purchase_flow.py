"""The register flow end to end: real wallet, cards and processing processes on real PostgreSQL.

A program with a 5% rule, a member registered through cards (which opens the wallet accounts),
then Purchase: the points land in the wallet, the operation is recorded, a replay returns the
same bytes, a different request under the same key is refused, and Authorize/Capture/Void move
holds exactly once."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from grpc import aio
from loyalty.cards.v1 import cards_pb2, cards_pb2_grpc
from loyalty.common.v1 import types_pb2
from loyalty.processing.v1 import processing_pb2 as p
from loyalty.processing.v1 import processing_pb2_grpc, program_admin_pb2_grpc
from loyalty.processing.v1 import program_admin_pb2 as pa
from loyalty.wallet.v1 import wallet_pb2 as w
from loyalty.wallet.v1 import wallet_pb2_grpc
from redis.asyncio import Redis

from shared import outbox
from shared.config import with_database
from shared.db import migrate
from tests.harness import Infra, ServiceProcess

ACTOR = types_pb2.Actor(type=types_pb2.ACTOR_TYPE_OPERATOR, id="tests")


def key() -> types_pb2.IdempotencyKey:
    return types_pb2.IdempotencyKey(key=str(uuid.uuid4()))


def rub(amount: int) -> types_pb2.Money:
    return types_pb2.Money(currency_code="RUB", amount_minor=amount, scale=2)


def fresh_database(infra: Infra, service: str) -> str:
    url = with_database(infra.database_server_url, f"loyalty_test_{service}_flow_{uuid.uuid4().hex[:8]}")
    migrate(service=service, database_url=url)
    return url


@pytest.fixture(scope="module")
def stack(infra: Infra) -> Iterator[dict[str, ServiceProcess]]:
    """Wallet, cards and processing, each on a database of its own (the program is global)."""
    wallet = ServiceProcess(
        "wallet", infra.service_env("wallet", LOYALTY_WALLET_DATABASE_URL=fresh_database(infra, "wallet"))
    ).start()
    cards = ServiceProcess(
        "cards",
        infra.service_env(
            "cards",
            LOYALTY_CARDS_DATABASE_URL=fresh_database(infra, "cards"),
            LOYALTY_WALLET_GRPC_TARGET=wallet.grpc_address,
        ),
    ).start()
    processing = ServiceProcess(
        "processing",
        infra.service_env(
            "processing",
            LOYALTY_PROCESSING_DATABASE_URL=fresh_database(infra, "processing"),
            LOYALTY_WALLET_GRPC_TARGET=wallet.grpc_address,
            LOYALTY_CARDS_GRPC_TARGET=cards.grpc_address,
            LOYALTY_PROCESSING_CONFIG_REFRESH_S="0.1",
        ),
    ).start()
    yield {"wallet": wallet, "cards": cards, "processing": processing}
    for process in (processing, cards, wallet):
        process.stop()


@dataclass
class World:
    processing: processing_pb2_grpc.ProcessingServiceStub
    admin: program_admin_pb2_grpc.ProgramAdminServiceStub
    wallet: wallet_pb2_grpc.WalletServiceStub
    cards: cards_pb2_grpc.CardsServiceStub
    program_id: str
    terminal_id: str
    redis_url: str


@pytest.fixture(scope="module")
async def world(stack: dict[str, ServiceProcess], infra: Infra) -> AsyncIterator[World]:
    channels = {name: aio.insecure_channel(process.grpc_address) for name, process in stack.items()}
    admin = program_admin_pb2_grpc.ProgramAdminServiceStub(channels["processing"])
    wallet = wallet_pb2_grpc.WalletServiceStub(channels["wallet"])
    program = (await admin.GetProgram(pa.GetProgramRequest())).program
    points = w.Unit(type=w.UNIT_TYPE_POINTS, scale=program.point_scale)
    await wallet.CreateAccountKind(
        w.CreateAccountKindRequest(
            account_kind=w.AccountKind(
                program_id=program.program_id,
                kind="base",
                display_name="Bonus points",
                unit=points,
                policy=w.AccountPolicy(
                    spendable=True,
                    overdraft_mode=w.OVERDRAFT_MODE_NO_OVERDRAFT,
                    expiry_rule=w.ExpiryRule(mode=w.EXPIRY_MODE_NEVER),
                ),
                open_by_default=True,
            ),
            actor=ACTOR,
            idempotency_key=key(),
        )
    )
    partner = (
        await admin.CreatePartner(
            pa.CreatePartnerRequest(
                idempotency_key=key(),
                actor=ACTOR,
                partner=pa.Partner(code="SHOP", name="Shop", accrual_enabled=True, redemption_enabled=True),
            )
        )
    ).partner
    outlet = (
        await admin.CreateOutlet(
            pa.CreateOutletRequest(
                idempotency_key=key(),
                actor=ACTOR,
                outlet=pa.Outlet(partner_id=partner.partner_id, code="O1", name="Outlet", region_code="RU-MOW"),
            )
        )
    ).outlet
    terminal = (
        await admin.CreateTerminal(
            pa.CreateTerminalRequest(
                idempotency_key=key(),
                actor=ACTOR,
                terminal=pa.Terminal(terminal_id="till-1", outlet_id=outlet.outlet_id, name="Till 1"),
            )
        )
    ).terminal
    await admin.CreateEarningRule(
        pa.CreateEarningRuleRequest(
            idempotency_key=key(),
            actor=ACTOR,
            earning_rule=pa.EarningRule(code="BASE5", name="Base 5%", percent=pa.PercentReward(rate_bp=500)),
        )
    )
    await admin.PublishRuleSet(pa.PublishRuleSetRequest(idempotency_key=key(), actor=ACTOR, comment="tests"))
    yield World(
        processing=processing_pb2_grpc.ProcessingServiceStub(channels["processing"]),
        admin=admin,
        wallet=wallet,
        cards=cards_pb2_grpc.CardsServiceStub(channels["cards"]),
        program_id=program.program_id,
        terminal_id=terminal.terminal_id,
        redis_url=infra.redis_url,
    )
    for channel in channels.values():
        await channel.close()


async def register(world: World) -> tuple[str, str]:
    phone = f"+7916{uuid.uuid4().int % 10_000_000:07d}"
    response = await world.cards.RegisterMember(
        cards_pb2.RegisterMemberRequest(
            idempotency_key=key(),
            actor=ACTOR,
            program_id=world.program_id,
            phone=phone,
            first_name="Anna",
            last_name="Petrova",
        )
    )
    return response.member.member_id, phone


def receipt(receipt_id: str, amount: int = 100_000) -> types_pb2.Receipt:
    line = types_pb2.ReceiptLine(
        position=1, sku="SKU-1", name="Coffee beans", quantity_milli=1000, unit_price=rub(amount), amount=rub(amount)
    )
    return types_pb2.Receipt(receipt_id=receipt_id, lines=[line], total=rub(amount))


def purchase(world: World, phone: str, receipt_id: str, **fields: Any) -> p.PurchaseRequest:
    return p.PurchaseRequest(
        idempotency_key=fields.pop("idempotency_key", key()),
        terminal_id=world.terminal_id,
        member=types_pb2.MemberIdentifier(phone=phone),
        receipt=fields.pop("receipt", receipt(receipt_id)),
        **fields,
    )


async def wallet_total(world: World, member_id: str) -> int:
    response = await world.wallet.GetBalances(w.GetBalancesRequest(program_id=world.program_id, member_id=member_id))
    return sum(view.balance.available.amount_minor + view.balance.pending.amount_minor for view in response.balances)


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
