"""Purchase when cards or the wallet is down or slow (DESIGN §2; rows 9-10 of the fault matrix in
reference/reliability-and-conventions.md, for our own dependencies).

What is decided, and tested here:

* cards down (stopped) or slow (frozen with SIGSTOP): Purchase answers UNAVAILABLE with reason
  DEPENDENCY_UNAVAILABLE within the cards deadline (LOYALTY_PROCESSING_CARDS_DEADLINE_S), and
  records nothing: a retry with the same key is not blocked, and once cards is back it succeeds.
* the wallet down after the operation is recorded: UNAVAILABLE (DEPENDENCY_UNAVAILABLE); the
  operation stays PROCESSING (the recovery worker keeps trying, never rejects it); once the wallet
  is back, a retry with the same key, or else the worker, finishes it with exactly one effect.
* the wallet slower than LOYALTY_PROCESSING_WALLET_DEADLINE_S: UNAVAILABLE within the wallet
  deadline, and still exactly one effect. Frozen (SIGSTOP, then SIGCONT): the plan reaches the
  wallet after processing gave up, and the wallet drops it (the call was cancelled); the
  retry or the worker applies it. Stalled inside (its writer waits on a row lock): the wallet
  applies the plan after processing's deadline; the retry finds it applied (EXISTS) and records it.

* a burst of purchases while cards or the wallet is frozen: each answers within the deadline,
  also those queued behind the calls already in flight (downstream.py bounds the whole wait).

Wallet and cards listen on fixed ports so that processing finds them again after a restart.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import Any

import asyncpg
import grpc
import pytest
from google.rpc import error_details_pb2
from grpc import aio
from grpc_status import rpc_status
from loyalty.cards.v1 import cards_pb2_grpc
from loyalty.processing.v1 import processing_pb2 as p
from loyalty.processing.v1 import processing_pb2_grpc, program_admin_pb2_grpc
from loyalty.wallet.v1 import wallet_pb2 as w
from loyalty.wallet.v1 import wallet_pb2_grpc

from shared.embedded import free_port
from tests.harness import Infra
from tests.integration.processing.world import (
    Restartable,
    account_transfers,
    configure_program,
    fresh_database,
    ledger_sums,
    member_balances,
    new_receipt_id,
    processing_env,
    purchase_request,
    register_member,
)

CARDS_DEADLINE_S = 1.0
WALLET_DEADLINE_S = 1.0
LEASE_S = 3.0  # longer than a frozen wallet call: nobody re-sends the plan before the test looks
WORK_INTERVAL_S = 0.2
# What a loaded 2-core machine adds to a deadline before the answer is back at the register.
SLACK_S = 1.0
WAIT_S = 20.0
ACCRUAL = 5000  # 5% of a 1000.00 RUB receipt


@dataclass
class Rig:
    wallet: Restartable
    cards: Restartable
    processing: Restartable
    wallet_database_url: str
    channels: list[aio.Channel]
    program_id: str = ""
    terminal_id: str = ""

    @property
    def stub(self) -> processing_pb2_grpc.ProcessingServiceStub:
        return processing_pb2_grpc.ProcessingServiceStub(self.channels[0])

    @property
    def wallet_stub(self) -> wallet_pb2_grpc.WalletServiceStub:
        return wallet_pb2_grpc.WalletServiceStub(self.channels[1])

    @property
    def cards_stub(self) -> cards_pb2_grpc.CardsServiceStub:
        return cards_pb2_grpc.CardsServiceStub(self.channels[2])

    def log_tail(self, lines: int = 20) -> str:
        process = self.processing.process
        return "".join(process.log_lines[-lines:]) if process is not None else ""


@pytest.fixture(scope="module")
async def rig(infra: Infra) -> AsyncIterator[Rig]:
    wallet_database_url = fresh_database(infra, "wallet")
    wallet = Restartable(
        "wallet",
        infra.service_env(
            "wallet",
            LOYALTY_WALLET_DATABASE_URL=wallet_database_url,
            LOYALTY_GRPC_PORT=str(free_port()),
            LOYALTY_WALLET_WORK_INTERVAL_S="0.2",
        ),
    )
    await wallet.start()
    cards = Restartable(
        "cards",
        infra.service_env(
            "cards",
            LOYALTY_CARDS_DATABASE_URL=fresh_database(infra, "cards"),
            LOYALTY_WALLET_GRPC_TARGET=wallet.address,
            LOYALTY_GRPC_PORT=str(free_port()),
        ),
    )
    await cards.start()
    assert wallet.process is not None and cards.process is not None
    processing = Restartable(
        "processing",
        processing_env(
            infra,
            database_url=fresh_database(infra, "processing"),
            wallet=wallet.process,
            cards=cards.process,
            LOYALTY_PROCESSING_CARDS_DEADLINE_S=str(CARDS_DEADLINE_S),
            LOYALTY_PROCESSING_WALLET_DEADLINE_S=str(WALLET_DEADLINE_S),
            LOYALTY_PROCESSING_OPERATION_LEASE_S=str(LEASE_S),
            LOYALTY_PROCESSING_WORK_INTERVAL_S=str(WORK_INTERVAL_S),
        ),
    )
    await processing.start()
    channels = [aio.insecure_channel(service.address) for service in (processing, wallet, cards)]
    rig = Rig(wallet, cards, processing, wallet_database_url, channels)
    admin = program_admin_pb2_grpc.ProgramAdminServiceStub(channels[0])
    rig.program_id, rig.terminal_id = await configure_program(admin, rig.wallet_stub)
    yield rig
    for channel in channels:
        await channel.close()
    for service in (processing, cards, wallet):
        if service.process is not None:
            service.thaw()  # a failed test may have left it frozen
        await service.stop()


def reason_of(error: aio.AioRpcError) -> tuple[str, dict[str, str]]:
    """ErrorInfo's reason and metadata from the status details."""
    status = rpc_status.from_call(error)
    assert status is not None, error
    for packed in status.details:
        if packed.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            packed.Unpack(info)
            return info.reason, dict(info.metadata)
    raise AssertionError(f"no ErrorInfo in {error}")


async def unavailable_within(call: Awaitable[Any], *, dependency: str, at_least_s: float, at_most_s: float) -> float:
    """The call fails UNAVAILABLE / DEPENDENCY_UNAVAILABLE naming `dependency`, in time."""
    started = time.monotonic()
    with pytest.raises(aio.AioRpcError) as failed:
        await call
    elapsed = time.monotonic() - started
    assert failed.value.code() == grpc.StatusCode.UNAVAILABLE, failed.value
    assert reason_of(failed.value) == ("DEPENDENCY_UNAVAILABLE", {"dependency": dependency})
    assert at_least_s <= elapsed <= at_most_s, elapsed
    return elapsed


async def until_answered(rig: Rig, send: Callable[[], Awaitable[Any]]) -> Any:
    """Retry (same request, same key) while the answer says "later": UNAVAILABLE (a channel
    reconnecting to a restarted service) or ABORTED (someone else drives the operation)."""
    deadline = time.monotonic() + WAIT_S
    while True:
        try:
            return await send()
        except aio.AioRpcError as error:
            later = error.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.ABORTED)
            if not later or time.monotonic() > deadline:
                raise AssertionError(f"{error.code()}: {error.details()}\n{rig.log_tail()}") from error
        await asyncio.sleep(0.1)


async def operations_of(rig: Rig, member_id: str) -> list[p.Operation]:
    listed = await rig.stub.ListOperations(p.ListOperationsRequest(member_id=member_id, page_size=100))
    return list(listed.operations)


async def member(rig: Rig, *, warmed: bool) -> tuple[str, str, str]:
    """A new member: (member_id, phone, account_id). `warmed`: after one purchase, so that
    processing knows the member's accounts and the next purchase's first wallet call is the
    saga's CreateTransfers, made after the operation is recorded."""
    member_id, phone = await register_member(rig.cards_stub, rig.program_id)
    (balance,) = await member_balances(rig.wallet_stub, rig.program_id, member_id)
    if warmed:
        answer = await rig.stub.Purchase(purchase_request(rig.terminal_id, phone, new_receipt_id()), timeout=10)
        assert answer.operation.state == p.OPERATION_STATE_CAPTURED
    return member_id, phone, balance.account_id


async def check_exactly_once(rig: Rig, member_id: str, account_id: str, operations: int) -> None:
    """`operations` captured purchases of 50.00 points each, every transfer once, nothing stuck,
    and the whole ledger sums to zero."""
    listed = await operations_of(rig, member_id)
    assert [op.state for op in listed] == [p.OPERATION_STATE_CAPTURED] * operations
    recorded = await account_transfers(rig.wallet_stub, account_id)
    assert sorted(r.transfer.transfer_id for r in recorded) == sorted(f"{op.operation_id}:accrue:0" for op in listed)
    assert all(r.state == w.TRANSFER_STATE_POSTED and r.amount_minor == ACCRUAL for r in recorded)
    (balance,) = await member_balances(rig.wallet_stub, rig.program_id, member_id)
    assert balance.available.amount_minor + balance.pending.amount_minor == ACCRUAL * operations
    sums = await ledger_sums(rig.wallet_database_url)
    assert sums and all((posted, pending) == (0, 0) for _, _, posted, pending in sums), sums
    stuck = await rig.stub.ListOperations(p.ListOperationsRequest(states=[p.OPERATION_STATE_PROCESSING]))
    assert list(stuck.operations) == []


async def wait_logged(rig: Rig, text: str) -> None:
    """Until processing logs a line containing `text` (bounded)."""
    deadline = time.monotonic() + WAIT_S
    process = rig.processing.process
    assert process is not None
    while not any(text in line for line in process.log_lines):
        assert time.monotonic() < deadline, f"processing never logged {text!r}\n{rig.log_tail()}"
        await asyncio.sleep(0.05)


# -- cards -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["stopped", "frozen"])
async def test_cards_down_or_slow_fails_a_purchase_within_the_deadline_and_records_nothing(rig: Rig, how: str) -> None:
    member_id, phone, account_id = await member(rig, warmed=False)
    request = purchase_request(rig.terminal_id, phone, new_receipt_id())
    # Stopped: refused at once. Frozen: connected, silent; the cards deadline ends the wait.
    at_least_s = CARDS_DEADLINE_S if how == "frozen" else 0.0
    at_most_s = CARDS_DEADLINE_S + SLACK_S if how == "frozen" else CARDS_DEADLINE_S
    if how == "stopped":
        await rig.cards.stop()
    else:
        rig.cards.freeze()
    try:
        for _ in range(2):  # the second answer shows that the first left nothing behind (no ABORTED)
            call = rig.stub.Purchase(request, timeout=10)
            await unavailable_within(call, dependency="cards", at_least_s=at_least_s, at_most_s=at_most_s)
        assert await operations_of(rig, member_id) == []
    finally:
        if how == "stopped":
            await rig.cards.start()
        else:
            rig.cards.thaw()
    answer = await until_answered(rig, lambda: rig.stub.Purchase(request, timeout=10))
    assert answer.operation.state == p.OPERATION_STATE_CAPTURED
    await check_exactly_once(rig, member_id, account_id, operations=1)


# -- wallet ------------------------------------------------------------------------------------------


async def test_wallet_down_after_the_insert_leaves_the_operation_processing_until_it_is_back(rig: Rig) -> None:
    retried_member, retried_phone, retried_account = await member(rig, warmed=True)
    left_member, left_phone, left_account = await member(rig, warmed=True)
    retried = purchase_request(rig.terminal_id, retried_phone, new_receipt_id())
    left = purchase_request(rig.terminal_id, left_phone, new_receipt_id())
    await rig.wallet.stop()
    try:
        for request in (retried, left):
            call = rig.stub.Purchase(request, timeout=10)
            await unavailable_within(call, dependency="wallet", at_least_s=0.0, at_most_s=WALLET_DEADLINE_S)
        (_, pending) = await operations_of(rig, left_member)
        # The worker took the operation over once its lease ran out, failed, and left it PROCESSING.
        await wait_logged(rig, f"background work on {pending.operation_id}: DEPENDENCY_UNAVAILABLE")
        for member_id in (retried_member, left_member):
            listed = await operations_of(rig, member_id)
            assert [op.state for op in listed] == [p.OPERATION_STATE_CAPTURED, p.OPERATION_STATE_PROCESSING]
        with pytest.raises(aio.AioRpcError) as later:  # a retry while the wallet is down: still "later"
            await rig.stub.Purchase(retried, timeout=10)
        assert later.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.ABORTED)
    finally:
        await rig.wallet.start()
    answer = await until_answered(rig, lambda: rig.stub.Purchase(retried, timeout=10))
    assert answer.operation.state == p.OPERATION_STATE_CAPTURED
    again = await rig.stub.Purchase(retried, timeout=10)
    assert again.SerializeToString() == answer.SerializeToString()
    await wait_captured(rig, pending.operation_id)  # nobody retries this one: the worker finishes it
    await check_exactly_once(rig, retried_member, retried_account, operations=2)
    await check_exactly_once(rig, left_member, left_account, operations=2)


async def wait_captured(rig: Rig, operation_id: str) -> None:
    reference = p.OperationReference(operation_id=operation_id)
    deadline = time.monotonic() + WAIT_S
    while True:
        read = await rig.stub.GetOperation(p.GetOperationRequest(terminal_id=rig.terminal_id, reference=reference))
        if read.operation.state == p.OPERATION_STATE_CAPTURED:
            return
        state = p.OperationState.Name(read.operation.state)
        assert time.monotonic() < deadline, f"{operation_id} is {state}\n{rig.log_tail()}"
        await asyncio.sleep(0.05)


@asynccontextmanager
async def account_locked(rig: Rig, account_id: str) -> AsyncIterator[None]:
    """The wallet's writer stalls on the account's row while this holds it (a slow wallet that
    has the request and is working on it)."""
    connection = await asyncpg.connect(rig.wallet_database_url)
    try:
        async with connection.transaction():
            await connection.execute("SELECT 1 FROM accounts WHERE account_id = $1::uuid FOR UPDATE", account_id)
            yield
    finally:
        await connection.close()


@pytest.mark.parametrize("how", ["frozen", "stalled"])
async def test_a_wallet_slower_than_its_deadline_still_ends_with_exactly_one_effect(rig: Rig, how: str) -> None:
    """Frozen (SIGSTOP): the plan reaches the wallet after processing gave up on it. Stalled (its
    writer waits on a row lock): the wallet is working on the plan when processing gives up, and
    applies it late; the retry must find it applied (EXISTS) and record it."""
    member_id, phone, account_id = await member(rig, warmed=True)
    request = purchase_request(rig.terminal_id, phone, new_receipt_id())
    async with AsyncExitStack() as slow:
        if how == "frozen":
            rig.wallet.freeze()
            slow.callback(rig.wallet.thaw)
        else:
            await slow.enter_async_context(account_locked(rig, account_id))
        call = rig.stub.Purchase(request, timeout=10)
        await unavailable_within(
            call, dependency="wallet", at_least_s=WALLET_DEADLINE_S, at_most_s=WALLET_DEADLINE_S + SLACK_S
        )
        gave_up = time.monotonic()
        (_, processing) = await operations_of(rig, member_id)
        assert processing.state == p.OPERATION_STATE_PROCESSING
        transfer_id = f"{processing.operation_id}:accrue:0"
        if how == "stalled":  # processing gave up, the wallet is still working on it
            looked_up = await rig.wallet_stub.LookupTransfers(w.LookupTransfersRequest(transfer_ids=[transfer_id]))
            assert list(looked_up.not_found_transfer_ids) == [transfer_id]
    if how == "stalled":
        await recorded_transfer(rig, transfer_id)
        # Applied before anyone could send the plan again: the operation's lease runs LEASE_S from
        # the insert, which came WALLET_DEADLINE_S before processing gave up.
        assert time.monotonic() < gave_up + LEASE_S - WALLET_DEADLINE_S
    answer = await until_answered(rig, lambda: rig.stub.Purchase(request, timeout=10))
    assert answer.operation.operation_id == processing.operation_id
    assert answer.operation.state == p.OPERATION_STATE_CAPTURED
    await check_exactly_once(rig, member_id, account_id, operations=2)


async def recorded_transfer(rig: Rig, transfer_id: str) -> w.TransferRecord:
    deadline = time.monotonic() + WAIT_S
    while True:
        looked_up = await rig.wallet_stub.LookupTransfers(w.LookupTransfersRequest(transfer_ids=[transfer_id]))
        if looked_up.transfers:
            record: w.TransferRecord = looked_up.transfers[0]
            return record
        assert time.monotonic() < deadline, f"the wallet never applied {transfer_id}"
        await asyncio.sleep(0.05)


@pytest.mark.parametrize("dependency", ["cards", "wallet"])
async def test_a_burst_of_purchases_while_a_dependency_is_frozen_fails_each_within_the_deadline(
    rig: Rig, dependency: str
) -> None:
    """More purchases than processing keeps calls in flight to a dependency (4): those queued
    behind the hung calls must not wait a deadline for a free call, then a deadline of their own."""
    members = [await member(rig, warmed=dependency == "wallet") for _ in range(8)]
    requests = [purchase_request(rig.terminal_id, phone, new_receipt_id()) for _, phone, _ in members]
    service = rig.cards if dependency == "cards" else rig.wallet
    deadline_s = CARDS_DEADLINE_S if dependency == "cards" else WALLET_DEADLINE_S
    service.freeze()
    try:
        # Half a deadline of slack, not SLACK_S: the defect shows as twice the deadline.
        await asyncio.gather(
            *(
                unavailable_within(
                    rig.stub.Purchase(request, timeout=10),
                    dependency=dependency,
                    at_least_s=deadline_s,
                    at_most_s=deadline_s * 1.5,
                )
                for request in requests
            )
        )
    finally:
        service.thaw()
    if dependency == "wallet":  # recorded before the wallet call: the worker finishes them all
        for member_id, _, _ in members:
            (_, pending) = await operations_of(rig, member_id)
            await wait_captured(rig, pending.operation_id)
    for member_id, _, account_id in members:
        await check_exactly_once(rig, member_id, account_id, operations=2 if dependency == "wallet" else 0)
