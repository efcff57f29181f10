"""The wallet as a real process on real PostgreSQL: accounts, transfers, concurrency races,
idempotency under load, bad input, and the ledger summing to zero."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import asyncpg
import grpc
import pytest
from grpc import aio
from loyalty.common.v1 import types_pb2
from loyalty.wallet.v1 import wallet_pb2 as w
from loyalty.wallet.v1 import wallet_pb2_grpc

from services.wallet import store
from tests.harness import Infra, ServiceProcess

ACTOR = types_pb2.Actor(type=types_pb2.ACTOR_TYPE_SYSTEM, id="tests")
POINTS = w.Unit(type=w.UNIT_TYPE_POINTS, scale=2)
CREATED, EXISTS = w.TRANSFER_RESULT_CODE_CREATED, w.TRANSFER_RESULT_CODE_EXISTS
INSUFFICIENT = w.TRANSFER_RESULT_CODE_INSUFFICIENT_FUNDS


def key() -> types_pb2.IdempotencyKey:
    return types_pb2.IdempotencyKey(key=str(uuid.uuid4()))


@pytest.fixture(scope="module")
def wallet_process(infra: Infra) -> Iterator[ServiceProcess]:
    process = ServiceProcess("wallet", infra.service_env("wallet", LOYALTY_WALLET_WORK_INTERVAL_S="0.2")).start()
    yield process
    process.stop()


@pytest.fixture
async def wallet(wallet_process: ServiceProcess) -> AsyncIterator[wallet_pb2_grpc.WalletServiceStub]:
    async with aio.insecure_channel(wallet_process.grpc_address) as channel:
        yield wallet_pb2_grpc.WalletServiceStub(channel)


@dataclass
class Program:
    """A fresh program per test: its kind, system accounts and a way to open members."""

    stub: wallet_pb2_grpc.WalletServiceStub
    program_id: str
    issuance: str = ""
    redemption: str = ""

    async def setup(self, policy: w.AccountPolicy | None = None) -> Program:
        policy = policy or w.AccountPolicy(
            spendable=True,
            overdraft_mode=w.OVERDRAFT_MODE_NO_OVERDRAFT,
            expiry_rule=w.ExpiryRule(mode=w.EXPIRY_MODE_NEVER),
        )
        kind = w.AccountKind(
            program_id=self.program_id,
            kind="base",
            display_name="Bonus points",
            unit=POINTS,
            policy=policy,
            open_by_default=True,
        )
        await self.stub.CreateAccountKind(
            w.CreateAccountKindRequest(account_kind=kind, actor=ACTOR, idempotency_key=key())
        )
        self.issuance = await self.system(w.SYSTEM_ACCOUNT_ROLE_ISSUANCE)
        self.redemption = await self.system(w.SYSTEM_ACCOUNT_ROLE_REDEMPTION)
        return self

    async def system(self, role: Any) -> str:
        response = await self.stub.OpenSystemAccount(
            w.OpenSystemAccountRequest(
                program_id=self.program_id,
                role=role,
                unit=POINTS,
                actor=ACTOR,
                idempotency_key=key(),
            )
        )
        return str(response.account.account_id)

    async def member(self, funded: int = 0) -> str:
        response = await self.stub.OpenMemberAccounts(
            w.OpenMemberAccountsRequest(
                program_id=self.program_id, member_id=str(uuid.uuid4()), actor=ACTOR, idempotency_key=key()
            )
        )
        account_id = str(response.master_account.accounts[0].account_id)
        if funded:
            (result,) = await self.transfers(self.accrual(account_id, funded))
            assert result.code == CREATED
        return account_id

    def accrual(self, account_id: str, amount: int, transfer_id: str = "") -> w.Transfer:
        return w.Transfer(
            transfer_id=transfer_id or str(uuid.uuid4()),
            debit_account_id=self.issuance,
            credit_account_id=account_id,
            amount_minor=amount,
            reason=w.TRANSFER_REASON_ACCRUAL,
        )

    def redemption_of(self, account_id: str, amount: int, transfer_id: str = "", **extra: Any) -> w.Transfer:
        return w.Transfer(
            transfer_id=transfer_id or str(uuid.uuid4()),
            debit_account_id=account_id,
            credit_account_id=self.redemption,
            amount_minor=amount,
            reason=w.TRANSFER_REASON_REDEMPTION,
            **extra,
        )

    async def transfers(self, *transfers: w.Transfer) -> list[w.TransferResult]:
        response = await self.stub.CreateTransfers(w.CreateTransfersRequest(transfers=transfers))
        return list(response.results)

    async def available(self, account_id: str) -> int:
        response = await self.stub.GetBalances(w.GetBalancesRequest(account_ids=[account_id]))
        return int(response.balances[0].balance.available.amount_minor)


@pytest.fixture
async def program(wallet: wallet_pb2_grpc.WalletServiceStub) -> Program:
    return await Program(wallet, f"program-{uuid.uuid4().hex[:12]}").setup()


async def test_opening_member_accounts_is_idempotent(program: Program) -> None:
    request = w.OpenMemberAccountsRequest(
        program_id=program.program_id, member_id="member-1", actor=ACTOR, idempotency_key=key()
    )
    first = await program.stub.OpenMemberAccounts(request)
    request.idempotency_key.key = str(uuid.uuid4())  # a new call, not a retry: the member decides
    second = await program.stub.OpenMemberAccounts(request)
    assert first.master_account_created and not second.master_account_created
    assert first.master_account.master_account_id == second.master_account.master_account_id
    assert len(first.opened_account_ids) == 1 and not second.opened_account_ids
    assert [a.kind for a in second.master_account.accounts] == ["base"]


async def test_a_kind_is_defined_once(program: Program) -> None:
    kinds = await program.stub.ListAccountKinds(w.ListAccountKindsRequest(program_id=program.program_id))
    (kind,) = kinds.account_kinds
    again = await program.stub.CreateAccountKind(
        w.CreateAccountKindRequest(account_kind=kind, actor=ACTOR, idempotency_key=key())
    )
    assert again.account_kind.kind == "base"
    kind.display_name = "Something else"
    with pytest.raises(aio.AioRpcError) as raised:
        await program.stub.CreateAccountKind(
            w.CreateAccountKindRequest(account_kind=kind, actor=ACTOR, idempotency_key=key())
        )
    assert raised.value.code() == grpc.StatusCode.ALREADY_EXISTS


async def test_an_invalid_kind_is_refused_with_every_field_named(program: Program) -> None:
    kind = w.AccountKind(program_id=program.program_id, kind="Bad Kind!", unit=w.Unit(type=w.UNIT_TYPE_MONEY, scale=2))
    with pytest.raises(aio.AioRpcError) as raised:
        await program.stub.CreateAccountKind(w.CreateAccountKindRequest(account_kind=kind))
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = raised.value.details() or ""
    for field in (
        "idempotency_key.key",
        "actor",
        "account_kind.kind",
        "account_kind.display_name",
        "account_kind.unit.currency_code",
    ):
        assert field in details


async def test_accrual_redemption_and_a_partly_posted_hold(program: Program) -> None:
    member = await program.member(funded=1000)
    hold, post, spend = (str(uuid.uuid4()) for _ in range(3))
    results = await program.transfers(
        program.redemption_of(member, 200, hold, timeout_s=60, flags=w.TransferFlags(pending=True)),
        w.Transfer(
            transfer_id=post, pending_transfer_id=hold, amount_minor=150, flags=w.TransferFlags(post_pending=True)
        ),
        program.redemption_of(member, 851, spend),
    )
    assert [r.code for r in results] == [CREATED, CREATED, INSUFFICIENT]
    assert results[0].debit_account_balance.held.amount_minor == 200
    assert results[0].debit_account_balance.available.amount_minor == 800
    assert results[1].released_amount_minor == 50
    assert results[1].debit_account_balance.available.amount_minor == 850
    assert await program.available(member) == 850
    # The hold resolves once: posting it again under another id is refused and recorded.
    (again,) = await program.transfers(
        w.Transfer(transfer_id=str(uuid.uuid4()), pending_transfer_id=hold, flags=w.TransferFlags(post_pending=True))
    )
    assert again.code == w.TRANSFER_RESULT_CODE_PENDING_TRANSFER_ALREADY_POSTED


async def test_a_replay_returns_the_original_result_and_moves_nothing(program: Program) -> None:
    member = await program.member()
    accrual = program.accrual(member, 500)
    (first,) = await program.transfers(accrual)
    (second,) = await program.transfers(accrual)
    assert (first.code, second.code, second.replayed) == (CREATED, EXISTS, True)
    assert second.credit_account_balance == first.credit_account_balance
    assert second.recorded_time == first.recorded_time
    changed = w.Transfer()
    changed.CopyFrom(accrual)
    changed.amount_minor = 501
    (third,) = await program.transfers(changed)
    assert third.code == w.TRANSFER_RESULT_CODE_EXISTS_WITH_DIFFERENT_FIELDS
    assert list(third.different_fields) == ["amount_minor"]
    assert await program.available(member) == 500


async def test_100_concurrent_redemptions_never_overspend(program: Program) -> None:
    member = await program.member(funded=1000)
    results = await asyncio.gather(*(program.transfers(program.redemption_of(member, 30)) for _ in range(100)))
    codes = Counter(r.code for (r,) in results)
    assert codes == {CREATED: 33, INSUFFICIENT: 67}
    assert await program.available(member) == 10


async def test_the_same_id_sent_50_times_at_once_has_exactly_one_effect(program: Program) -> None:
    member = await program.member()
    accrual = program.accrual(member, 700)
    results = await asyncio.gather(*(program.transfers(accrual) for _ in range(50)))
    codes = Counter(r.code for (r,) in results)
    assert codes == {CREATED: 1, EXISTS: 49}
    assert await program.available(member) == 700


async def test_two_wallet_processes_racing_on_one_account_never_overspend(infra: Infra, program: Program) -> None:
    member = await program.member(funded=1000)
    second = ServiceProcess("wallet", infra.service_env("wallet")).start()
    try:
        async with aio.insecure_channel(second.grpc_address) as channel:
            other = Program(
                wallet_pb2_grpc.WalletServiceStub(channel), program.program_id, program.issuance, program.redemption
            )
            results = await asyncio.gather(
                *(side.transfers(side.redemption_of(member, 30)) for _ in range(50) for side in (program, other))
            )
    finally:
        second.stop()
    assert Counter(r.code for (r,) in results) == {CREATED: 33, INSUFFICIENT: 67}
    assert await program.available(member) == 10


async def test_a_linked_chain_is_all_or_nothing(program: Program) -> None:
    member = await program.member(funded=100)
    accrual = program.accrual(member, 50)
    accrual.flags.linked = True
    results = await program.transfers(accrual, program.redemption_of(member, 1000))
    assert [r.code for r in results] == [w.TRANSFER_RESULT_CODE_LINKED_EVENT_FAILED, INSUFFICIENT]
    assert await program.available(member) == 100


@pytest.mark.parametrize("count", [0, 1001])
async def test_a_batch_outside_1_to_1000_is_refused_whole(program: Program, count: int) -> None:
    member = await program.member()
    with pytest.raises(aio.AioRpcError) as raised:
        await program.transfers(*(program.accrual(member, 1) for _ in range(count)))
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert await program.available(member) == 0


async def test_balances_of_an_unknown_account_name_it(program: Program) -> None:
    unknown = str(uuid.uuid4())
    with pytest.raises(aio.AioRpcError) as raised:
        await program.stub.GetBalances(w.GetBalancesRequest(account_ids=[unknown]))
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND


async def test_history_shows_every_movement_with_the_balance_after_it(program: Program) -> None:
    member = await program.member(funded=1000)
    await program.transfers(program.redemption_of(member, 250))
    history = await program.stub.ListEntries(w.ListEntriesRequest(account_id=member, oldest_first=True))
    assert [(e.sequence, e.amount_minor, e.balance_after.available.amount_minor) for e in history.entries] == [
        (1, 1000, 1000),
        (2, 250, 750),
    ]
    assert history.entries[1].reason == w.TRANSFER_REASON_REDEMPTION
    assert history.entries[1].counterparty.account_id == program.redemption


async def test_an_expired_hold_is_released_by_the_background_worker(program: Program) -> None:
    member = await program.member(funded=300)
    hold = str(uuid.uuid4())
    (result,) = await program.transfers(
        program.redemption_of(member, 200, hold, timeout_s=1, flags=w.TransferFlags(pending=True))
    )
    assert result.code == CREATED
    for _ in range(50):  # the worker runs every 0.2 s in this process
        lookup = await program.stub.LookupTransfers(w.LookupTransfersRequest(transfer_ids=[hold]))
        if lookup.transfers[0].state == w.TRANSFER_STATE_EXPIRED:
            break
        await asyncio.sleep(0.1)
    assert lookup.transfers[0].state == w.TRANSFER_STATE_EXPIRED
    assert await program.available(member) == 300


async def test_the_whole_ledger_sums_to_zero(infra: Infra, program: Program) -> None:
    member = await program.member(funded=999)
    await program.transfers(program.redemption_of(member, 333))
    connection = await asyncpg.connect(infra.database_url("wallet"))
    try:
        sums = await store.ledger_sum(connection)
    finally:
        await connection.close()
    assert sums and all(posted == 0 for _, _, posted, _ in sums)


async def test_freezing_blocks_debits_not_credits_and_open_holds_still_resolve(program: Program) -> None:
    member = await program.member(funded=1000)
    hold = str(uuid.uuid4())
    (held,) = await program.transfers(
        program.redemption_of(member, 100, hold, timeout_s=60, flags=w.TransferFlags(pending=True))
    )
    assert held.code == CREATED
    await program.stub.FreezeAccount(
        w.FreezeAccountRequest(account_id=member, reason="fraud review", actor=ACTOR, idempotency_key=key())
    )
    spent, earned, posted = await program.transfers(
        program.redemption_of(member, 10),
        program.accrual(member, 10),
        w.Transfer(transfer_id=str(uuid.uuid4()), pending_transfer_id=hold, flags=w.TransferFlags(post_pending=True)),
    )
    assert spent.code == w.TRANSFER_RESULT_CODE_DEBIT_ACCOUNT_FROZEN
    assert (earned.code, posted.code) == (CREATED, CREATED)
    await program.stub.UnfreezeAccount(w.UnfreezeAccountRequest(account_id=member, actor=ACTOR, idempotency_key=key()))
    (after,) = await program.transfers(program.redemption_of(member, 10))
    assert after.code == CREATED
    assert await program.available(member) == 1000 - 100 + 10 - 10


async def test_a_master_freeze_in_mode_all_refuses_credits_to_every_sub_account(program: Program) -> None:
    response = await program.stub.OpenMemberAccounts(
        w.OpenMemberAccountsRequest(
            program_id=program.program_id, member_id="frozen-member", actor=ACTOR, idempotency_key=key()
        )
    )
    master, member = response.master_account.master_account_id, response.master_account.accounts[0].account_id
    frozen = await program.stub.FreezeAccount(
        w.FreezeAccountRequest(master_account_id=master, mode=w.FREEZE_MODE_ALL, actor=ACTOR, idempotency_key=key())
    )
    assert frozen.master_account.accounts[0].effective_state == w.ACCOUNT_STATE_FROZEN
    (earned,) = await program.transfers(program.accrual(member, 10))
    assert earned.code == w.TRANSFER_RESULT_CODE_CREDIT_ACCOUNT_FROZEN


async def test_admin_calls_replay_by_key_and_refuse_a_reused_key(program: Program) -> None:
    request = w.OpenMemberAccountsRequest(
        program_id=program.program_id, member_id="keyed-member", actor=ACTOR, idempotency_key=key()
    )
    first = await program.stub.OpenMemberAccounts(request)
    replay = await program.stub.OpenMemberAccounts(request)
    assert replay.SerializeToString(deterministic=True) == first.SerializeToString(deterministic=True)
    assert replay.master_account_created  # the original response, not a fresh look
    request.member_id = "another-member"
    with pytest.raises(aio.AioRpcError) as raised:
        await program.stub.OpenMemberAccounts(request)
    assert raised.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "IDEMPOTENCY_KEY_REUSED" in str(raised.value.trailing_metadata())


async def test_additional_and_bearer_accounts_are_keyed_by_external_ref(program: Program) -> None:
    member = await program.stub.OpenMemberAccounts(
        w.OpenMemberAccountsRequest(
            program_id=program.program_id, member_id="family", actor=ACTOR, idempotency_key=key()
        )
    )
    master = member.master_account.master_account_id
    request = w.OpenSubAccountRequest(
        program_id=program.program_id,
        kind="base",
        master_account_id=master,
        external_ref="card:child-1",
        display_name="Masha's card",
        actor=ACTOR,
        idempotency_key=key(),
    )
    first = await program.stub.OpenSubAccount(request)
    request.idempotency_key.key = str(uuid.uuid4())
    again = await program.stub.OpenSubAccount(request)
    assert first.created and not again.created
    assert first.account.account_id == again.account.account_id
    assert (first.account.external_ref, first.account.primary) == ("card:child-1", False)
    # A points kind cannot back a bearer account (only gift money can be anonymous).
    with pytest.raises(aio.AioRpcError) as raised:
        await program.stub.OpenSubAccount(
            w.OpenSubAccountRequest(
                program_id=program.program_id, kind="base", external_ref="gift:1", actor=ACTOR, idempotency_key=key()
            )
        )
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    listed = await program.stub.ListAccounts(w.ListAccountsRequest(master_account_id=master, page_size=1))
    assert len(listed.accounts) == 1 and listed.next_page_token
    rest = await program.stub.ListAccounts(
        w.ListAccountsRequest(master_account_id=master, page_size=1, page_token=listed.next_page_token)
    )
    assert {listed.accounts[0].account_id, rest.accounts[0].account_id} == {
        member.master_account.accounts[0].account_id,
        first.account.account_id,
    }


async def test_closing_requires_zero_or_forfeits_to_expiry_and_is_final(infra: Infra, program: Program) -> None:
    member = await program.member(funded=400)
    with pytest.raises(aio.AioRpcError) as not_empty:
        await program.stub.CloseAccount(
            w.CloseAccountRequest(
                account_id=member, disposition=w.CLOSURE_DISPOSITION_REQUIRE_ZERO, actor=ACTOR, idempotency_key=key()
            )
        )
    assert "ACCOUNT_NOT_EMPTY" in str(not_empty.value.trailing_metadata())
    closed = await program.stub.CloseAccount(
        w.CloseAccountRequest(
            account_id=member,
            disposition=w.CLOSURE_DISPOSITION_FORFEIT,
            reason="left the program",
            actor=ACTOR,
            idempotency_key=key(),
        )
    )
    assert closed.account.state == w.ACCOUNT_STATE_CLOSED
    assert closed.account.balance.available.amount_minor == 0
    (forfeit,) = closed.forfeit_transfer_ids
    lookup = await program.stub.LookupTransfers(w.LookupTransfersRequest(transfer_ids=[forfeit]))
    assert lookup.transfers[0].transfer.reason == w.TRANSFER_REASON_ACCOUNT_CLOSURE
    assert lookup.transfers[0].amount_minor == 400
    (late,) = await program.transfers(program.accrual(member, 10))
    assert late.code == w.TRANSFER_RESULT_CODE_CREDIT_ACCOUNT_CLOSED
    with pytest.raises(aio.AioRpcError) as final:
        await program.stub.UnfreezeAccount(
            w.UnfreezeAccountRequest(account_id=member, actor=ACTOR, idempotency_key=key())
        )
    assert final.value.code() == grpc.StatusCode.FAILED_PRECONDITION


async def test_transfers_are_found_by_operation_receipt_and_account(program: Program) -> None:
    member = await program.member(funded=100)
    operation = str(uuid.uuid4())
    reference = w.TransferReference(operation_id=operation, terminal_id="T-7", receipt_id=f"R-{operation[:8]}")
    accrual, spend = program.accrual(member, 50), program.redemption_of(member, 20)
    accrual.reference.CopyFrom(reference)
    spend.reference.CopyFrom(reference)
    await program.transfers(accrual, spend)
    by_operation = await program.stub.ListTransfers(w.ListTransfersRequest(operation_id=operation))
    by_receipt = await program.stub.ListTransfers(
        w.ListTransfersRequest(terminal_id="T-7", receipt_id=reference.receipt_id, page_size=1)
    )
    by_account = await program.stub.ListTransfers(w.ListTransfersRequest(account_id=member))
    assert {t.transfer.transfer_id for t in by_operation.transfers} == {accrual.transfer_id, spend.transfer_id}
    assert len(by_receipt.transfers) == 1 and by_receipt.next_page_token
    assert len(by_account.transfers) == 3  # the funding accrual too


async def test_a_kind_policy_can_change_but_not_its_unit(program: Program) -> None:
    (kind,) = (
        await program.stub.ListAccountKinds(w.ListAccountKindsRequest(program_id=program.program_id))
    ).account_kinds
    kind.policy.overdraft_mode = w.OVERDRAFT_MODE_DEBT_ALLOWED
    kind.policy.debt_limit_minor = 500
    updated = await program.stub.UpdateAccountKind(
        w.UpdateAccountKindRequest(account_kind=kind, actor=ACTOR, idempotency_key=key())
    )
    assert updated.account_kind.policy.debt_limit_minor == 500
    kind.unit.scale = 0
    with pytest.raises(aio.AioRpcError) as raised:
        await program.stub.UpdateAccountKind(
            w.UpdateAccountKindRequest(account_kind=kind, actor=ACTOR, idempotency_key=key())
        )
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_history_of_a_master_account_filters_and_pages(program: Program) -> None:
    response = await program.stub.OpenMemberAccounts(
        w.OpenMemberAccountsRequest(
            program_id=program.program_id, member_id="historian", actor=ACTOR, idempotency_key=key()
        )
    )
    master = response.master_account.master_account_id
    member = response.master_account.accounts[0].account_id
    operation = str(uuid.uuid4())
    spend = program.redemption_of(member, 5)
    spend.reference.operation_id = operation
    await program.transfers(program.accrual(member, 100), program.accrual(member, 10), spend)
    everything = await program.stub.ListEntries(w.ListEntriesRequest(master_account_id=master, page_size=2))
    assert len(everything.entries) == 2 and everything.next_page_token
    rest = await program.stub.ListEntries(
        w.ListEntriesRequest(master_account_id=master, page_size=2, page_token=everything.next_page_token)
    )
    assert [e.sequence for e in [*everything.entries, *rest.entries]] == [3, 2, 1]
    spending = await program.stub.ListEntries(
        w.ListEntriesRequest(account_id=member, reasons=[w.TRANSFER_REASON_REDEMPTION])
    )
    by_operation = await program.stub.ListEntries(w.ListEntriesRequest(account_id=member, operation_id=operation))
    assert (
        [e.transfer_id for e in spending.entries]
        == [e.transfer_id for e in by_operation.entries]
        == [spend.transfer_id]
    )


async def test_a_captured_redemption_can_be_refunded_in_parts_never_beyond_it(program: Program) -> None:
    member = await program.member(funded=1000)
    hold, post = str(uuid.uuid4()), str(uuid.uuid4())
    await program.transfers(
        program.redemption_of(member, 400, hold, timeout_s=60, flags=w.TransferFlags(pending=True)),
        w.Transfer(
            transfer_id=post, pending_transfer_id=hold, amount_minor=300, flags=w.TransferFlags(post_pending=True)
        ),
    )

    def refund(amount: int) -> w.Transfer:
        return w.Transfer(
            transfer_id=str(uuid.uuid4()),
            debit_account_id=program.redemption,
            credit_account_id=member,
            amount_minor=amount,
            reverses_transfer_id=post,
            reason=w.TRANSFER_REASON_REDEMPTION_REVERSAL,
        )

    first, second, too_much = await program.transfers(refund(100), refund(150), refund(51))
    assert (first.code, second.code) == (CREATED, CREATED)
    assert too_much.code == w.TRANSFER_RESULT_CODE_REVERSAL_EXCEEDS_ORIGINAL
    assert await program.available(member) == 1000 - 300 + 250
