"""Crash tests of the purchase saga (DESIGN §2; row 4 of the fault matrix in
reference/reliability-and-conventions.md).

Processing kills itself with SIGKILL at a step boundary of the saga (flow.CRASH_POINTS) while it
serves one write, and is started again without the crash point. Then either

* `retry`: the register retries with the same key, with the recovery worker off, so that the
  retry alone must finish the operation; a second retry must answer the same bytes; or
* `worker`: nobody retries, and the recovery worker alone must finish the operation.

Either way the member's wallet shows exactly one effect (its balances, and every transfer on its
account, each once and in the expected state), the whole ledger sums to zero, no operation is
left PROCESSING, and an authorization leaves no hold behind: voided (`retry`) or expired by the
worker (`worker`), its held points are available again.

Wallet and cards run for the whole module; only processing restarts, on one database (every case
has its own member, receipts and keys).
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest
from google.protobuf import duration_pb2
from google.protobuf.message import Message
from grpc import aio
from loyalty.cards.v1 import cards_pb2_grpc
from loyalty.common.v1 import types_pb2
from loyalty.processing.v1 import processing_pb2 as p
from loyalty.processing.v1 import processing_pb2_grpc, program_admin_pb2_grpc
from loyalty.wallet.v1 import wallet_pb2 as w
from loyalty.wallet.v1 import wallet_pb2_grpc

from services.processing.flow import CRASH_POINTS
from tests.harness import Infra, ServiceProcess
from tests.integration.processing.world import (
    Restartable,
    account_transfers,
    configure_program,
    fresh_database,
    key,
    ledger_sums,
    member_balances,
    new_receipt_id,
    processing_env,
    purchase_request,
    receipt,
    register_member,
    start_cards,
    start_wallet,
)

LEASE_S = "0.5"
# The worker's interval is also the outbox relay's; 3600 s means "never" within a test.
WORKER_OFF = {"LOYALTY_PROCESSING_OPERATION_LEASE_S": LEASE_S, "LOYALTY_PROCESSING_WORK_INTERVAL_S": "3600"}
WORKER_ON = {"LOYALTY_PROCESSING_OPERATION_LEASE_S": LEASE_S, "LOYALTY_PROCESSING_WORK_INTERVAL_S": "0.1"}
WRITES = ("purchase_accrual", "purchase_redemption", "authorize", "capture", "void")
SEED_POINTS = 5000  # 5% of a 1000.00 RUB receipt at 1 point = 1.00 RUB, two-digit points
REDEEM_POINTS = 1000
AUTHORIZE_TTL_S = 4  # the `worker` authorize case waits for this expiry
WAIT_S = 15.0
PENDING, POSTED, VOIDED, EXPIRED, REJECTED = (
    w.TRANSFER_STATE_PENDING,
    w.TRANSFER_STATE_POSTED,
    w.TRANSFER_STATE_VOIDED,
    w.TRANSFER_STATE_EXPIRED,
    w.TRANSFER_STATE_REJECTED,
)


@dataclass
class Services:
    wallet: ServiceProcess
    cards: ServiceProcess
    wallet_database_url: str


@pytest.fixture(scope="module")
def services(infra: Infra) -> Iterator[Services]:
    wallet_database_url = fresh_database(infra, "wallet")
    wallet = start_wallet(infra, wallet_database_url, LOYALTY_WALLET_WORK_INTERVAL_S="0.2")
    cards = start_cards(infra, wallet)
    yield Services(wallet, cards, wallet_database_url)
    cards.stop()
    wallet.stop()


@dataclass
class Rig:
    """The module's processing (restarted by every case) and its neighbours."""

    processing: Restartable
    processing_database_url: str
    wallet_database_url: str
    wallet: wallet_pb2_grpc.WalletServiceStub
    cards: cards_pb2_grpc.CardsServiceStub
    program_id: str = ""
    terminal_id: str = ""
    channel: aio.Channel | None = None
    stub: Any = None  # a ProcessingServiceStub once started

    async def start(self, **env: str) -> None:
        await self.close()
        await self.processing.start(**env)
        self.channel = aio.insecure_channel(self.processing.address)
        self.stub = processing_pb2_grpc.ProcessingServiceStub(self.channel)

    async def close(self) -> None:
        if self.channel is not None:
            await self.channel.close()
            self.channel = None

    def log_tail(self, lines: int = 20) -> str:
        """The running processing's last log lines (for failure messages)."""
        process = self.processing.process
        return "".join(process.log_lines[-lines:]) if process is not None else ""

    @property
    def admin(self) -> program_admin_pb2_grpc.ProgramAdminServiceStub:
        return program_admin_pb2_grpc.ProgramAdminServiceStub(self.channel)


@pytest.fixture(scope="module")
async def rig(services: Services, infra: Infra) -> AsyncIterator[Rig]:
    database_url = fresh_database(infra, "processing")
    processing = Restartable(
        "processing",
        processing_env(infra, database_url=database_url, wallet=services.wallet, cards=services.cards),
    )
    wallet_channel = aio.insecure_channel(services.wallet.grpc_address)
    cards_channel = aio.insecure_channel(services.cards.grpc_address)
    rig = Rig(
        processing=processing,
        processing_database_url=database_url,
        wallet_database_url=services.wallet_database_url,
        wallet=wallet_pb2_grpc.WalletServiceStub(wallet_channel),
        cards=cards_pb2_grpc.CardsServiceStub(cards_channel),
    )
    await rig.start(**WORKER_OFF)
    rig.program_id, rig.terminal_id = await configure_program(rig.admin, rig.wallet)
    yield rig
    await rig.close()
    await processing.stop()
    await wallet_channel.close()
    await cards_channel.close()


# -- the cases -------------------------------------------------------------------------------------


@dataclass
class Case:
    """One write about to crash processing, and what the member had before it."""

    write: str
    member_id: str
    account_id: str
    request: Message
    # The operations the member had before the write: operation id -> its wallet transfers' states.
    before: dict[str, dict[str, int]]
    available_before: int
    authorization_id: str = ""  # capture, void: the authorization they resolve

    @property
    def method(self) -> str:
        return {"purchase_accrual": "Purchase", "purchase_redemption": "Purchase"}.get(
            self.write, self.write.capitalize()
        )

    def send(self, rig: Rig) -> Awaitable[Any]:
        call: Callable[..., Awaitable[Any]] = getattr(rig.stub, self.method)
        return call(self.request, timeout=10)


def points(amount: int) -> types_pb2.Points:
    return types_pb2.Points(amount_minor=amount, scale=2)


def authorize_request(rig: Rig, phone: str, *, ttl_s: int | None = None) -> p.AuthorizeRequest:
    request = p.AuthorizeRequest(
        idempotency_key=key(),
        terminal_id=rig.terminal_id,
        member=types_pb2.MemberIdentifier(phone=phone),
        receipt=receipt(new_receipt_id()),
        redeem_points=points(REDEEM_POINTS),
    )
    if ttl_s is not None:
        request.authorization_ttl.CopyFrom(duration_pb2.Duration(seconds=ttl_s))
    return request


async def prepare(rig: Rig, write: str, *, authorize_ttl_s: int) -> Case:
    """A new member with what the write needs (points to redeem, an authorization to resolve),
    made on the running processing, and the write itself (not sent)."""
    member_id, phone = await register_member(rig.cards, rig.program_id)
    (balance,) = await member_balances(rig.wallet, rig.program_id, member_id)
    before: dict[str, dict[str, int]] = {}
    if write != "purchase_accrual":
        seeded = await rig.stub.Purchase(purchase_request(rig.terminal_id, phone, new_receipt_id()))
        seed_id = seeded.operation.operation_id
        assert seeded.operation.purchase.calculation.accrual.amount_minor == SEED_POINTS
        before[seed_id] = {f"{seed_id}:accrue:0": POSTED}
    authorization_id = ""
    request: Message
    if write in ("capture", "void"):
        authorized = await rig.stub.Authorize(authorize_request(rig, phone))
        authorization_id = authorized.operation.operation_id
        assert authorized.operation.state == p.OPERATION_STATE_AUTHORIZED
        before[authorization_id] = {f"{authorization_id}:redeem:0": PENDING, f"{authorization_id}:accrue:0": PENDING}
        reference = p.OperationReference(operation_id=authorization_id)
        request_type = p.CaptureRequest if write == "capture" else p.VoidRequest
        request = request_type(idempotency_key=key(), terminal_id=rig.terminal_id, reference=reference)
    elif write == "authorize":
        request = authorize_request(rig, phone, ttl_s=authorize_ttl_s)
    else:
        redeem = {"redeem_points": points(REDEEM_POINTS)} if write == "purchase_redemption" else {}
        request = purchase_request(rig.terminal_id, phone, new_receipt_id(), **redeem)
    (now,) = await member_balances(rig.wallet, rig.program_id, member_id)
    return Case(
        write=write,
        member_id=member_id,
        account_id=balance.account_id,
        request=request,
        before=before,
        available_before=now.available.amount_minor,
        authorization_id=authorization_id,
    )


async def crash(rig: Rig, case: Case, crash_at: str) -> None:
    """Send the write to a processing that dies at `crash_at`; it must die by SIGKILL there."""
    await rig.start(LOYALTY_PROCESSING_CRASH_AT=crash_at, **WORKER_OFF)
    with pytest.raises(aio.AioRpcError) as failed:
        await case.send(rig)
    assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
    assert await rig.processing.exit_code() == -signal.SIGKILL


async def operation(rig: Rig, operation_id: str) -> p.Operation:
    response = await rig.stub.GetOperation(
        p.GetOperationRequest(terminal_id=rig.terminal_id, reference=p.OperationReference(operation_id=operation_id))
    )
    result: p.Operation = response.operation
    return result


async def member_operations(rig: Rig, member_id: str) -> dict[str, p.Operation]:
    listed = await rig.stub.ListOperations(p.ListOperationsRequest(member_id=member_id, page_size=100))
    return {op.operation_id: op for op in listed.operations}


async def written_operation_id(rig: Rig, case: Case) -> str:
    """The operation the write made or moved (found without any answer from the write)."""
    if case.authorization_id:
        return case.authorization_id
    operations = await member_operations(rig, case.member_id)
    (new,) = set(operations) - set(case.before)
    return new


async def wait_state(rig: Rig, operation_id: str, done: Callable[[int], bool]) -> p.Operation:
    deadline = time.monotonic() + WAIT_S
    while True:
        current = await operation(rig, operation_id)
        if done(current.state):
            return current
        if time.monotonic() > deadline:
            state = p.OperationState.Name(current.state)
            raise AssertionError(f"operation {operation_id} is still {state} after {WAIT_S} s")
        await asyncio.sleep(0.05)


async def retry(rig: Rig, case: Case) -> Any:
    """The register's retry with the same key until it gets an answer (ABORTED = retry later)."""
    deadline = time.monotonic() + WAIT_S
    while True:
        try:
            return await case.send(rig)
        except aio.AioRpcError as error:
            if error.code() != grpc.StatusCode.ABORTED or time.monotonic() > deadline:
                raise AssertionError(f"{error.code()}: {error.details()}\n{rig.log_tail()}") from error
        await asyncio.sleep(0.05)


# -- what the wallet must show -----------------------------------------------------------------


def expected_transfers(case: Case, operation_id: str, state: int, recorded: Mapping[str, int]) -> dict[str, int]:
    """Every transfer on the member's account, by id, with the state it must be in."""
    expected = {transfer: s for transfers in case.before.values() for transfer, s in transfers.items()}
    holds = [f"{operation_id}:redeem:0", f"{operation_id}:accrue:0"]
    if case.write == "purchase_accrual":
        expected[f"{operation_id}:accrue:0"] = POSTED
    elif case.write == "purchase_redemption":
        expected.update({holds[0]: POSTED, holds[1]: POSTED})
    elif state == p.OPERATION_STATE_AUTHORIZED:
        expected.update({holds[0]: PENDING, holds[1]: PENDING})
    elif state == p.OPERATION_STATE_CAPTURED:
        expected.update({hold: POSTED for hold in holds})
        expected.update({f"{operation_id}:capture:{hold.split(':', 1)[1]}": POSTED for hold in holds})
    elif state in (p.OPERATION_STATE_VOIDED, p.OPERATION_STATE_EXPIRED):
        for hold in holds:
            void = f"{operation_id}:void:{hold.split(':', 1)[1]}"
            if state == p.OPERATION_STATE_EXPIRED and recorded.get(hold) == EXPIRED:
                expected[hold] = EXPIRED  # the wallet released it at its deadline: the void found it gone
                if void in recorded:
                    expected[void] = REJECTED
            else:
                expected.update({hold: VOIDED, void: VOIDED})
    return expected


async def check_wallet(rig: Rig, case: Case, final: p.Operation) -> None:
    """Exactly one effect: the member's transfers and balance are those of the write done once."""
    recorded = await account_transfers(rig.wallet, case.account_id)
    seen = [record.transfer.transfer_id for record in recorded]
    assert len(seen) == len(set(seen))
    states = {r.transfer.transfer_id: r.state for r in recorded}
    assert states == expected_transfers(case, final.operation_id, final.state, states)
    (balance,) = await member_balances(rig.wallet, rig.program_id, case.member_id)
    calculation = final.purchase.calculation
    available = case.available_before
    held = 0
    if final.state == p.OPERATION_STATE_CAPTURED:
        available += calculation.accrual.amount_minor - calculation.redemption.amount_minor
        if case.write == "capture":
            available += REDEEM_POINTS  # it was held by the authorization
    elif final.state == p.OPERATION_STATE_AUTHORIZED:
        available -= REDEEM_POINTS
        held = REDEEM_POINTS
    elif case.write == "void":
        available += REDEEM_POINTS
    assert (balance.available.amount_minor, balance.held.amount_minor) == (available, held)
    if case.write.startswith("purchase") or case.write == "capture":
        assert calculation.accrual.amount_minor > 0
        assert calculation.redemption.amount_minor == (0 if case.write == "purchase_accrual" else REDEEM_POINTS)


async def check_ledger_and_nothing_processing(rig: Rig, case: Case) -> None:
    sums = await ledger_sums(rig.wallet_database_url)
    assert sums and all((posted, pending) == (0, 0) for _, _, posted, pending in sums), sums
    operations = await member_operations(rig, case.member_id)
    assert all(op.state != p.OPERATION_STATE_PROCESSING for op in operations.values())
    stuck = await rig.stub.ListOperations(p.ListOperationsRequest(states=[p.OPERATION_STATE_PROCESSING]))
    assert list(stuck.operations) == []


def final_state(write: str) -> int:
    return {
        "capture": p.OPERATION_STATE_CAPTURED,
        "void": p.OPERATION_STATE_VOIDED,
        "authorize": p.OPERATION_STATE_AUTHORIZED,
    }.get(write, p.OPERATION_STATE_CAPTURED)


# -- the tests -------------------------------------------------------------------------------------


@pytest.mark.parametrize("crash_at", CRASH_POINTS)
@pytest.mark.parametrize("write", WRITES)
async def test_a_retry_with_the_same_key_finishes_a_crashed_write_once(rig: Rig, write: str, crash_at: str) -> None:
    case = await prepare(rig, write, authorize_ttl_s=60)
    await crash(rig, case, crash_at)
    await rig.start(**WORKER_OFF)  # nobody but the retry drives the operation

    answer = await retry(rig, case)
    assert answer.operation.state == final_state(write)
    operation_id = await written_operation_id(rig, case)
    assert answer.operation.operation_id == operation_id
    again = await retry(rig, case)
    assert again.SerializeToString() == answer.SerializeToString()
    stored = await operation(rig, operation_id)
    assert stored.state == answer.operation.state
    assert set(await member_operations(rig, case.member_id)) == {*case.before, operation_id}
    await check_wallet(rig, case, stored)

    if write == "authorize":  # the hold is a real one: voiding it gives the points back
        voided = await rig.stub.Void(
            p.VoidRequest(
                idempotency_key=key(),
                terminal_id=rig.terminal_id,
                reference=p.OperationReference(operation_id=operation_id),
            )
        )
        assert voided.operation.state == p.OPERATION_STATE_VOIDED
        await check_wallet(rig, case, voided.operation)
    await check_ledger_and_nothing_processing(rig, case)


@pytest.mark.parametrize("crash_at", CRASH_POINTS)
@pytest.mark.parametrize("write", WRITES)
async def test_the_recovery_worker_alone_finishes_a_crashed_write(rig: Rig, write: str, crash_at: str) -> None:
    case = await prepare(rig, write, authorize_ttl_s=AUTHORIZE_TTL_S)
    await crash(rig, case, crash_at)
    await rig.start(**WORKER_ON)

    operation_id = await written_operation_id(rig, case)
    # While a capture or void is in flight the operation still reads AUTHORIZED.
    unfinished = {p.OPERATION_STATE_PROCESSING, p.OPERATION_STATE_AUTHORIZED if case.authorization_id else 0}
    final = await wait_state(rig, operation_id, lambda state: state not in unfinished)
    assert set(await member_operations(rig, case.member_id)) == {*case.before, operation_id}
    if write == "authorize":
        await check_authorization_expires(rig, case, final)
        return
    assert final.state == final_state(write)
    await check_wallet(rig, case, final)
    await check_ledger_and_nothing_processing(rig, case)


async def check_authorization_expires(rig: Rig, case: Case, authorized: p.Operation) -> None:
    """The worker made the authorization (one hold per leg), then expired it: nothing is held,
    the points are available again, once."""
    expire_time = authorized.purchase.authorization_expire_time.ToDatetime(tzinfo=UTC)
    if authorized.state == p.OPERATION_STATE_AUTHORIZED and expire_time - datetime.now(UTC) > timedelta(seconds=1):
        await check_wallet(rig, case, authorized)  # the wallet's own hold deadline is not near yet
    final = await wait_state(
        rig,
        authorized.operation_id,
        lambda state: state not in (p.OPERATION_STATE_AUTHORIZED, p.OPERATION_STATE_PROCESSING),
    )
    holds = [f"{final.operation_id}:redeem:0", f"{final.operation_id}:accrue:0"]
    deadline = time.monotonic() + WAIT_S
    while True:  # voided by processing, or expired by the wallet's own worker (every 0.2 s here)
        looked_up = await rig.wallet.LookupTransfers(w.LookupTransfersRequest(transfer_ids=holds))
        states = [record.state for record in looked_up.transfers]
        if len(states) == len(holds) and all(state in (VOIDED, EXPIRED) for state in states):
            break
        assert time.monotonic() < deadline, f"holds left: {looked_up}"
        await asyncio.sleep(0.05)
    (balance,) = await member_balances(rig.wallet, rig.program_id, case.member_id)
    assert (balance.available.amount_minor, balance.held.amount_minor, balance.pending.amount_minor) == (
        case.available_before,
        0,
        0,
    )
    await check_ledger_and_nothing_processing(rig, case)
    assert final.state == p.OPERATION_STATE_EXPIRED
    await check_wallet(rig, case, final)


# -- holds the wallet released first, and a crashed Capture's key -----------------------------------


async def authorization_past_its_wallet_deadline(rig: Rig) -> str:
    """A 1-second authorization whose wallet holds have expired, on a processing whose worker is
    off (so it has not expired the authorization itself yet): its operation id."""
    await rig.start(**WORKER_OFF)
    case = await prepare(rig, "authorize", authorize_ttl_s=1)
    authorized = await case.send(rig)
    operation_id: str = authorized.operation.operation_id
    hold = f"{operation_id}:redeem:0"
    deadline = time.monotonic() + WAIT_S
    while True:  # the wallet's worker releases a hold past its deadline every 0.2 s
        (record,) = (await rig.wallet.LookupTransfers(w.LookupTransfersRequest(transfer_ids=[hold]))).transfers
        if record.state == EXPIRED:
            return operation_id
        assert time.monotonic() < deadline, record
        await asyncio.sleep(0.05)


async def test_an_authorization_past_its_wallet_deadline_ends_expired(rig: Rig) -> None:
    """The expiry worker voids an authorization whose holds the wallet already expired: the
    authorization ends EXPIRED (the wallet's PENDING_TRANSFER_EXPIRED means the goal is reached),
    not REJECTED."""
    operation_id = await authorization_past_its_wallet_deadline(rig)
    await rig.start(**WORKER_ON)
    final = await wait_state(
        rig, operation_id, lambda state: state not in (p.OPERATION_STATE_AUTHORIZED, p.OPERATION_STATE_PROCESSING)
    )
    assert final.state == p.OPERATION_STATE_EXPIRED


async def test_voiding_an_authorization_past_its_wallet_deadline_succeeds(rig: Rig) -> None:
    """Void of an authorization the wallet already released reaches its goal, as for an EXPIRED
    one (not FAILED_PRECONDITION HOLD_EXPIRED)."""
    operation_id = await authorization_past_its_wallet_deadline(rig)
    reference = p.OperationReference(operation_id=operation_id)
    voided = await rig.stub.Void(p.VoidRequest(idempotency_key=key(), terminal_id=rig.terminal_id, reference=reference))
    assert voided.operation.state in (p.OPERATION_STATE_VOIDED, p.OPERATION_STATE_EXPIRED)


async def test_a_crashed_capture_is_retried_once_the_operation_lease_ran_out(rig: Rig) -> None:
    """After a crash, a Capture retried with the same key once the operation's lease (0.5 s) ran
    out finishes it, as a Purchase does (the key's claim times out with the operation's lease, not
    after run_once's default 30 s)."""
    await rig.start(**WORKER_OFF)
    case = await prepare(rig, "capture", authorize_ttl_s=60)
    await crash(rig, case, "after_insert")
    await rig.start(**WORKER_OFF)
    await asyncio.sleep(float(LEASE_S))
    captured = await case.send(rig)
    assert captured.operation.state == p.OPERATION_STATE_CAPTURED
