"""UploadOfflineBatch end to end: real wallet, cards and processing processes on real PostgreSQL.

Operations a register made offline are processed like their online twins at their own time,
flagged offline, one result each; duplicates are harmless, a cancel that arrives before its sale
voids the sale when it comes, a bad or too-old operation is rejected alone, and the rules in
force when the sale was made apply."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from grpc import aio
from loyalty.common.v1 import errors_pb2, types_pb2
from loyalty.processing.v1 import processing_pb2 as p
from loyalty.processing.v1 import program_admin_pb2 as pa

from tests.integration.cards.support import details
from tests.integration.processing.world import ACTOR, World, key, new_receipt_id, receipt, register, wallet_total

ACCEPTED = p.OFFLINE_OPERATION_OUTCOME_ACCEPTED
REJECTED = p.OFFLINE_OPERATION_OUTCOME_REJECTED


# Offline operations in these tests happened after the world's rule set was published (before it,
# no rules were in force and the sale would be refused); `at` counts minutes back from now but
# never earlier than this.
SETUP: dict[str, datetime] = {}


@pytest.fixture(scope="module")
async def offline_terminal(world: World) -> str:
    """A till of the world's outlet that may work offline (the world's own may not)."""
    till = (await world.admin.GetTerminal(pa.GetTerminalRequest(terminal_id=world.terminal_id))).terminal
    created = await world.admin.CreateTerminal(
        pa.CreateTerminalRequest(
            idempotency_key=key(),
            actor=ACTOR,
            terminal=pa.Terminal(
                terminal_id="till-offline", outlet_id=till.outlet_id, name="Till offline", offline_allowed=True
            ),
        )
    )
    SETUP["ready"] = datetime.now(UTC)
    return str(created.terminal.terminal_id)


def at(minutes_ago: float) -> datetime:
    """Minutes ago, but after the set-up; a distinct time for every call."""
    SETUP["last"] = max(SETUP.get("last", SETUP["ready"]), SETUP["ready"]) + timedelta(milliseconds=1)
    return max(datetime.now(UTC) - timedelta(minutes=minutes_ago), SETUP["last"])


def accrual(phone: str, receipt_id: str, when: datetime, **fields: object) -> p.OfflineOperation:
    operation = p.OfflineOperation(
        idempotency_key=fields.pop("idempotency_key", key()),  # type: ignore[arg-type]
        accrual=p.OfflineAccrual(member=types_pb2.MemberIdentifier(phone=phone), receipt=receipt(receipt_id)),
    )
    operation.occurred_time.FromDatetime(when)
    return operation


def cancel(receipt_id: str, when: datetime) -> p.OfflineOperation:
    operation = p.OfflineOperation(idempotency_key=key(), cancel=p.OfflineCancel(receipt_id=receipt_id, reason="void"))
    operation.occurred_time.FromDatetime(when)
    return operation


async def upload(world: World, terminal_id: str, *operations: p.OfflineOperation) -> p.UploadOfflineBatchResponse:
    request = p.UploadOfflineBatchRequest(idempotency_key=key(), terminal_id=terminal_id, operations=operations)
    response: p.UploadOfflineBatchResponse = await world.processing.UploadOfflineBatch(request)
    return response


async def test_an_offline_sale_earns_at_its_own_time_and_replays(world: World, offline_terminal: str) -> None:
    member_id, phone = await register(world)
    when = at(90)
    operation = accrual(phone, new_receipt_id(), when)
    request = p.UploadOfflineBatchRequest(idempotency_key=key(), terminal_id=offline_terminal, operations=[operation])
    first: p.UploadOfflineBatchResponse = await world.processing.UploadOfflineBatch(request)
    (result,) = first.results
    assert (result.outcome, first.accepted_count) == (ACCEPTED, 1), result
    assert result.operation.offline
    assert result.operation.state == p.OPERATION_STATE_CAPTURED
    assert result.operation.effective_time.ToDatetime(tzinfo=UTC) == when.replace(microsecond=when.microsecond)
    assert result.operation.purchase.calculation.accrual.amount_minor == 5000
    assert await wallet_total(world, member_id) == 5000
    again = await world.processing.UploadOfflineBatch(request)
    assert again.SerializeToString() == first.SerializeToString()
    later = await upload(world, offline_terminal, operation)  # the same operation in a later batch
    assert later.results[0].operation == result.operation
    assert await wallet_total(world, member_id) == 5000


async def test_duplicates_in_one_batch_have_one_effect(world: World, offline_terminal: str) -> None:
    member_id, phone = await register(world)
    operation = accrual(phone, new_receipt_id(), at(10))
    response = await upload(world, offline_terminal, operation, operation)
    assert [r.outcome for r in response.results] == [ACCEPTED, ACCEPTED]
    assert response.results[0].operation.operation_id == response.results[1].operation.operation_id
    assert await wallet_total(world, member_id) == 5000


async def test_a_cancel_that_arrives_first_voids_its_sale(world: World, offline_terminal: str) -> None:
    member_id, phone = await register(world)
    receipt_id = new_receipt_id()
    cancelled = await upload(world, offline_terminal, cancel(receipt_id, at(5)))
    assert cancelled.results[0].outcome == ACCEPTED
    assert cancelled.results[0].operation.cancel.cancelled_operation_id == ""
    sale = await upload(world, offline_terminal, accrual(phone, receipt_id, at(20)))
    (result,) = sale.results
    assert result.outcome == ACCEPTED
    assert result.operation.state == p.OPERATION_STATE_VOIDED
    assert list(result.operation.purchase.refund_operation_ids) == [cancelled.results[0].operation.operation_id]
    assert await wallet_total(world, member_id) == 0


async def test_a_sale_then_its_cancel_in_one_batch_leave_nothing(world: World, offline_terminal: str) -> None:
    member_id, phone = await register(world)
    receipt_id = new_receipt_id()
    response = await upload(world, offline_terminal, accrual(phone, receipt_id, at(30)), cancel(receipt_id, at(29)))
    assert [r.outcome for r in response.results] == [ACCEPTED, ACCEPTED]
    cancel_operation = response.results[1].operation
    assert cancel_operation.type == p.OPERATION_TYPE_CANCEL
    assert cancel_operation.state == p.OPERATION_STATE_COMPLETED
    assert cancel_operation.cancel.cancelled_operation_id == response.results[0].operation.operation_id
    assert cancel_operation.cancel.totals.accrual_reversed.amount_minor == 5000
    assert await wallet_total(world, member_id) == 0
    purchase = await world.processing.GetOperation(
        p.GetOperationRequest(
            terminal_id=offline_terminal,
            reference=p.OperationReference(operation_id=response.results[0].operation.operation_id),
        )
    )
    assert purchase.operation.state == p.OPERATION_STATE_REFUNDED


async def test_bad_and_too_old_operations_are_rejected_alone(world: World, offline_terminal: str) -> None:
    member_id, phone = await register(world)
    too_old = accrual(phone, new_receipt_id(), datetime.now(UTC) - timedelta(days=8))  # 7 days are kept
    qr = accrual(phone, new_receipt_id(), at(1))
    qr.accrual.member.CopyFrom(types_pb2.MemberIdentifier(qr_token="LQ1.anything"))
    future = accrual(phone, new_receipt_id(), at(-30))
    good = accrual(phone, new_receipt_id(), at(1))
    response = await upload(world, offline_terminal, too_old, qr, future, good)
    outcomes = [(r.outcome, errors_pb2.ErrorReason.Name(r.error_reason)) for r in response.results]
    assert outcomes == [
        (REJECTED, "ERROR_REASON_OFFLINE_OPERATION_TOO_OLD"),
        (REJECTED, "ERROR_REASON_QR_TOKEN_EXPIRED"),
        (REJECTED, "ERROR_REASON_INVALID_ARGUMENT"),
        (ACCEPTED, "ERROR_REASON_UNSPECIFIED"),
    ]
    assert "occurred_time" in response.results[2].error_message
    assert (response.accepted_count, response.rejected_count) == (1, 3)
    assert await wallet_total(world, member_id) == 5000


async def test_a_key_reused_for_another_operation_is_rejected(world: World, offline_terminal: str) -> None:
    _, phone = await register(world)
    first = accrual(phone, new_receipt_id(), at(3))
    other = accrual(phone, new_receipt_id(), at(3), idempotency_key=first.idempotency_key)
    response = await upload(world, offline_terminal, first, other)
    assert [r.outcome for r in response.results] == [ACCEPTED, REJECTED]
    assert response.results[1].error_reason == errors_pb2.ERROR_REASON_IDEMPOTENCY_KEY_REUSED


async def test_a_terminal_that_may_not_work_offline_is_refused(world: World) -> None:
    _, phone = await register(world)
    with pytest.raises(aio.AioRpcError) as refused:
        await upload(world, world.terminal_id, accrual(phone, new_receipt_id(), at(1)))
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert details(refused.value).reason == "PERMISSION_DENIED"


async def test_the_rules_in_force_at_the_sale_apply(world: World, offline_terminal: str) -> None:
    """Runs last in this module: it publishes a 10% rule set."""
    member_id, phone = await register(world)
    before = at(1)
    await world.admin.CreateEarningRule(
        pa.CreateEarningRuleRequest(
            idempotency_key=key(),
            actor=ACTOR,
            earning_rule=pa.EarningRule(
                code=f"MORE{uuid.uuid4().hex[:6]}", name="Another 5%", percent=pa.PercentReward(rate_bp=500)
            ),
        )
    )
    await world.admin.PublishRuleSet(pa.PublishRuleSetRequest(idempotency_key=key(), actor=ACTOR, comment="10%"))
    response = await upload(
        world, offline_terminal, accrual(phone, new_receipt_id(), before), accrual(phone, new_receipt_id(), at(0))
    )
    earned = [r.operation.purchase.calculation.accrual.amount_minor for r in response.results]
    assert earned == [5000, 10_000]
    assert await wallet_total(world, member_id) == 15_000
