"""Between members, through a real wallet process: gifts (TransferPoints) and household pools."""

from __future__ import annotations

import uuid
from typing import Any

import grpc
import pytest
from grpc import aio
from loyalty.common.v1 import types_pb2
from loyalty.wallet.v1 import wallet_pb2 as w

from tests.integration.wallet.test_wallet_api import (  # noqa: F401 (fixtures)
    ACTOR,
    CREATED,
    Program,
    key,
    program,
    wallet,
    wallet_process,
)

TRANSFERABLE = w.AccountPolicy(
    spendable=True,
    transferable=True,
    overdraft_mode=w.OVERDRAFT_MODE_NO_OVERDRAFT,
    expiry_rule=w.ExpiryRule(mode=w.EXPIRY_MODE_NEVER),
)


@pytest.fixture
async def sharing(wallet) -> Program:  # noqa: F811
    return await Program(wallet, f"sharing-{uuid.uuid4().hex[:12]}").setup(TRANSFERABLE)


async def open_member(p: Program, member_id: str, funded: int = 0) -> str:
    response = await p.stub.OpenMemberAccounts(
        w.OpenMemberAccountsRequest(program_id=p.program_id, member_id=member_id, actor=ACTOR, idempotency_key=key())
    )
    account_id = str(response.master_account.accounts[0].account_id)
    if funded:
        (result,) = await p.transfers(p.accrual(account_id, funded))
        assert result.code == CREATED
    return account_id


async def test_a_gift_moves_points_once_per_key(sharing: Program) -> None:
    anna, boris = await open_member(sharing, "anna", 1000), await open_member(sharing, "boris")
    as_anna = types_pb2.Actor(type=types_pb2.ACTOR_TYPE_MEMBER, id="anna")
    request = w.TransferPointsRequest(
        from_account_id=anna,
        to_account_id=boris,
        amount_minor=300,
        memo="for you",
        actor=as_anna,
        idempotency_key=key(),
    )
    first = await sharing.stub.TransferPoints(request)
    again = await sharing.stub.TransferPoints(request)
    assert first.transfer.transfer.transfer_id == again.transfer.transfer.transfer_id
    assert first.from_account_balance.available.amount_minor == 700
    assert (await sharing.available(anna), await sharing.available(boris)) == (700, 300)
    request.amount_minor = 301
    with pytest.raises(aio.AioRpcError) as reused:
        await sharing.stub.TransferPoints(request)
    assert "IDEMPOTENCY_KEY_REUSED" in str(reused.value.trailing_metadata())
    # Boris cannot give Anna's points away.
    stolen = w.TransferPointsRequest(
        from_account_id=anna,
        to_account_id=boris,
        amount_minor=1,
        actor=types_pb2.Actor(type=types_pb2.ACTOR_TYPE_MEMBER, id="boris"),
        idempotency_key=key(),
    )
    with pytest.raises(aio.AioRpcError) as denied:
        await sharing.stub.TransferPoints(stolen)
    assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_points_that_are_not_transferable_cannot_be_given(program: Program) -> None:  # noqa: F811
    anna, boris = await open_member(program, "anna", 100), await open_member(program, "boris")
    with pytest.raises(aio.AioRpcError) as raised:
        await program.stub.TransferPoints(
            w.TransferPointsRequest(
                from_account_id=anna, to_account_id=boris, amount_minor=10, actor=ACTOR, idempotency_key=key()
            )
        )
    assert raised.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert await program.available(anna) == 100


async def test_a_pool_limits_each_members_spending_and_holds_count_as_spent(sharing: Program) -> None:
    owner, child = await open_member(sharing, "parent", 1000), await open_member(sharing, "child")
    created = await sharing.stub.CreatePool(
        w.CreatePoolRequest(
            program_id=sharing.program_id,
            owner_member_id="parent",
            kind="base",
            display_name="Family",
            time_zone="Europe/Moscow",
            actor=ACTOR,
            idempotency_key=key(),
        )
    )
    pool = created.pool
    await sharing.stub.AddPoolMember(
        w.AddPoolMemberRequest(
            pool_id=pool.pool_id,
            member_id="child",
            spending_limit=w.SpendingLimit(period=w.SPENDING_LIMIT_PERIOD_DAY, amount_minor=100),
            actor=ACTOR,
            idempotency_key=key(),
        )
    )
    contribution = w.Transfer(
        transfer_id=str(uuid.uuid4()),
        debit_account_id=owner,
        credit_account_id=pool.account_id,
        amount_minor=600,
        reason=w.TRANSFER_REASON_POOL_CONTRIBUTION,
    )
    (contributed,) = await sharing.transfers(contribution)
    assert contributed.code == CREATED

    def spend(member: str, amount: int, **extra: Any) -> w.Transfer:
        return sharing.redemption_of(pool.account_id, amount, on_behalf_of_member_id=member, **extra)

    hold = str(uuid.uuid4())
    results = await sharing.transfers(
        spend("child", 60, transfer_id=hold, timeout_s=60, flags=w.TransferFlags(pending=True)),
        spend("child", 50),  # 60 held + 50 > 100 a day
        spend("child", 40),
        spend("stranger", 1),
        spend("parent", 400),  # the owner has no limit
    )
    assert [r.code for r in results] == [
        CREATED,
        w.TRANSFER_RESULT_CODE_POOL_SPENDING_LIMIT_EXCEEDED,
        CREATED,
        w.TRANSFER_RESULT_CODE_POOL_MEMBER_NOT_FOUND,
        CREATED,
    ]
    # Voiding the hold gives the child's allowance back.
    (voided,) = await sharing.transfers(
        w.Transfer(transfer_id=str(uuid.uuid4()), pending_transfer_id=hold, flags=w.TransferFlags(void_pending=True))
    )
    assert voided.code == CREATED
    state = await sharing.stub.GetPool(w.GetPoolRequest(pool_id=pool.pool_id))
    child_usage = next(m for m in state.pool.members if m.member_id == "child")
    assert (child_usage.spent_in_period_minor, child_usage.remaining_in_period_minor) == (40, 60)
    assert state.pool.balance.available.amount_minor == 600 - 40 - 400
    balances = await sharing.stub.GetBalances(
        w.GetBalancesRequest(program_id=sharing.program_id, member_id="child", include_pools=True)
    )
    own, shared = balances.balances
    assert (own.balance.account_id, shared.pool_id) == (child, pool.pool_id)
    assert shared.member_spendable_minor == 60  # the rest of today's limit (the pool has 160)

    # Closing returns what is left to the owner.
    closed = await sharing.stub.ClosePool(w.ClosePoolRequest(pool_id=pool.pool_id, actor=ACTOR, idempotency_key=key()))
    assert closed.pool.state == w.POOL_STATE_CLOSED
    assert await sharing.available(owner) == 1000 - 600 + 160
    assert child  # the child's own account was never touched
    assert await sharing.available(child) == 0


async def test_pool_membership_rules(sharing: Program) -> None:
    await open_member(sharing, "owner-2")
    await open_member(sharing, "guest")
    created = await sharing.stub.CreatePool(
        w.CreatePoolRequest(
            program_id=sharing.program_id,
            owner_member_id="owner-2",
            kind="base",
            display_name="Flat",
            actor=ACTOR,
            idempotency_key=key(),
        )
    )
    with pytest.raises(aio.AioRpcError) as twice:
        await sharing.stub.CreatePool(
            w.CreatePoolRequest(
                program_id=sharing.program_id,
                owner_member_id="owner-2",
                kind="base",
                display_name="Second",
                actor=ACTOR,
                idempotency_key=key(),
            )
        )
    assert twice.value.code() == grpc.StatusCode.ALREADY_EXISTS
    as_guest = types_pb2.Actor(type=types_pb2.ACTOR_TYPE_MEMBER, id="guest")
    with pytest.raises(aio.AioRpcError) as not_owner:
        await sharing.stub.AddPoolMember(
            w.AddPoolMemberRequest(
                pool_id=created.pool.pool_id,
                member_id="guest",
                spending_limit=w.SpendingLimit(period=w.SPENDING_LIMIT_PERIOD_NO_LIMIT),
                actor=as_guest,
                idempotency_key=key(),
            )
        )
    assert not_owner.value.code() == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(aio.AioRpcError) as bad_zone:
        await sharing.stub.CreatePool(
            w.CreatePoolRequest(
                program_id=sharing.program_id,
                owner_member_id="guest",
                kind="base",
                display_name="X",
                time_zone="Mars/Olympus",
                actor=ACTOR,
                idempotency_key=key(),
            )
        )
    assert bad_zone.value.code() == grpc.StatusCode.INVALID_ARGUMENT
