"""Registration while the wallet is down: the call fails with DEPENDENCY_UNAVAILABLE, the member
is recorded once (pending), and after the wallet is back a retry - or the background worker on
its own - opens the accounts and emits member.registered exactly once. Never two members for
one phone, never a member whose accounts are never opened.

The wallet runs on a fixed port here, so that the same cards process reaches it again after
the restart; the cards process's worker waits a generous grace before completing pending
registrations, so that the retry path is tested first and the worker path separately."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Iterator

import asyncpg
import grpc
import pytest
from grpc import aio
from loyalty.cards.v1 import cards_pb2 as c
from loyalty.cards.v1 import cards_pb2_grpc
from loyalty.common.v1 import types_pb2
from loyalty.wallet.v1 import wallet_pb2 as w
from loyalty.wallet.v1 import wallet_pb2_grpc

from shared.embedded import free_port
from tests.harness import Infra, ServiceProcess
from tests.integration.cards.conftest import cards_env
from tests.integration.cards.support import TERMINAL, create_wallet_kinds, details, key, new_phone, outbox_events

WAIT_S = 20.0
PENDING_GRACE_S = 3.0


class Stack:
    def __init__(self, infra: Infra) -> None:
        self.port = free_port()
        self.wallet = ServiceProcess("wallet", infra.service_env("wallet", LOYALTY_WALLET_GRPC_PORT=str(self.port)))
        self.cards = ServiceProcess(
            "cards",
            cards_env(infra, f"127.0.0.1:{self.port}", LOYALTY_CARDS_PENDING_GRACE_S=str(PENDING_GRACE_S)),
        )

    def restart_wallet(self) -> None:
        self.wallet = ServiceProcess("wallet", dict(self.wallet.env)).start()


@pytest.fixture(scope="module")
def stack(infra: Infra) -> Iterator[Stack]:
    stack = Stack(infra)
    stack.wallet.start()
    stack.cards.start()
    yield stack
    stack.cards.stop()
    stack.wallet.stop()


@pytest.fixture
async def stubs(stack: Stack) -> AsyncIterator[cards_pb2_grpc.CardsServiceStub]:
    async with aio.insecure_channel(stack.cards.grpc_address) as channel:
        yield cards_pb2_grpc.CardsServiceStub(channel)


async def register_until_done(
    cards: cards_pb2_grpc.CardsServiceStub, request: c.RegisterMemberRequest
) -> c.RegisterMemberResponse:
    """Retry with the same key while the wallet is still coming back (bounded in time)."""
    deadline = time.monotonic() + WAIT_S
    while True:
        try:
            response: c.RegisterMemberResponse = await cards.RegisterMember(request, timeout=5)
            return response
        except aio.AioRpcError as error:
            if error.code() != grpc.StatusCode.UNAVAILABLE or time.monotonic() > deadline:
                raise
        await asyncio.sleep(0.2)


async def members_with_phone(database: asyncpg.Connection, program_id: str, phone: str) -> list[asyncpg.Record]:
    return await database.fetch(
        "SELECT member_id, master_account_id FROM members WHERE program_id = $1 AND phone = $2", program_id, phone
    )


async def test_wallet_down_then_back(
    stack: Stack, stubs: cards_pb2_grpc.CardsServiceStub, cards_db: asyncpg.Connection
) -> None:
    program_id = f"program-{uuid.uuid4().hex[:12]}"
    async with aio.insecure_channel(stack.wallet.grpc_address) as channel:
        await create_wallet_kinds(wallet_pb2_grpc.WalletServiceStub(channel), program_id)
    stack.wallet.stop()

    # 1. The wallet is down: UNAVAILABLE, the member recorded once, pending, no event.
    phone = new_phone()
    request = c.RegisterMemberRequest(idempotency_key=key(), actor=TERMINAL, program_id=program_id, phone=phone)
    with pytest.raises(aio.AioRpcError) as down:
        await stubs.RegisterMember(request, timeout=10)
    assert down.value.code() == grpc.StatusCode.UNAVAILABLE
    assert details(down.value).reason == "DEPENDENCY_UNAVAILABLE"
    other_key = c.RegisterMemberRequest(idempotency_key=key(), actor=TERMINAL, program_id=program_id, phone=phone)
    with pytest.raises(aio.AioRpcError):
        await stubs.RegisterMember(other_key, timeout=10)
    (pending,) = await members_with_phone(cards_db, program_id, phone)
    assert pending["master_account_id"] is None
    assert await outbox_events(cards_db, str(pending["member_id"])) == []
    # Nothing a till does finds a member whose registration is not complete.
    with pytest.raises(aio.AioRpcError) as not_yet:
        await stubs.Resolve(
            c.ResolveRequest(program_id=program_id, identifier=types_pb2.MemberIdentifier(phone=phone), actor=TERMINAL),
            timeout=5,
        )
    assert details(not_yet.value).reason == "MEMBER_NOT_FOUND"

    # A second registration (another phone) stays pending for the worker to complete.
    phone_for_worker = new_phone()
    with pytest.raises(aio.AioRpcError):
        await stubs.RegisterMember(
            c.RegisterMemberRequest(
                idempotency_key=key(), actor=TERMINAL, program_id=program_id, phone=phone_for_worker
            ),
            timeout=10,
        )

    # 2. The wallet is back: the retry with the same key completes the same member.
    stack.restart_wallet()
    response = await register_until_done(stubs, request)
    assert response.created and response.member.member_id == str(pending["member_id"])
    assert response.member.master_account_id
    async with aio.insecure_channel(stack.wallet.grpc_address) as channel:
        master = await wallet_pb2_grpc.WalletServiceStub(channel).GetMasterAccount(
            w.GetMasterAccountRequest(master_account_id=response.member.master_account_id), timeout=5
        )
    assert master.master_account.member_id == response.member.member_id
    # The other key now gets the same member, not created by it.
    other = await register_until_done(stubs, other_key)
    assert (other.member.member_id, other.created) == (response.member.member_id, False)

    # 3. The worker completes the registration nobody retried.
    deadline = time.monotonic() + WAIT_S
    while True:
        (row,) = await members_with_phone(cards_db, program_id, phone_for_worker)
        if row["master_account_id"] is not None or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.2)
    assert row["master_account_id"] is not None, "the worker did not complete the pending registration"

    # Exactly one member and one member.registered per phone.
    for each in (phone, phone_for_worker):
        (member,) = await members_with_phone(cards_db, program_id, each)
        events = [t for t, _ in await outbox_events(cards_db, str(member["member_id"]))]
        assert events == ["member.registered"]
