"""Members through a real cards process (and a real wallet): registration by phone, idempotent
by phone and by key, profile and consents, blocking and closing, and bad input that changes
nothing."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import asyncpg
import grpc
import pytest
from google.protobuf import field_mask_pb2
from grpc import aio
from loyalty.cards.v1 import cards_pb2 as c
from loyalty.cards.v1 import cards_pb2_grpc
from loyalty.common.v1 import types_pb2
from loyalty.wallet.v1 import wallet_pb2 as w
from redis.asyncio import Redis

from shared import outbox
from tests.harness import Infra
from tests.integration.cards.support import (
    OPERATOR,
    TERMINAL,
    Program,
    details,
    key,
    member_actor,
    new_phone,
    outbox_events,
)


def registration(program: Program, phone: str, **fields: object) -> c.RegisterMemberRequest:
    return c.RegisterMemberRequest(
        idempotency_key=key(),
        actor=TERMINAL,
        program_id=program.program_id,
        phone=phone,
        **fields,  # type: ignore[arg-type]
    )


async def test_registration_normalises_the_phone_and_opens_the_wallet_accounts(
    program: Program, cards_db: asyncpg.Connection
) -> None:
    digits = new_phone()[2:]  # "916..." without the country code
    request = registration(
        program,
        f"8 ({digits[:3]}) {digits[3:6]}-{digits[6:8]}-{digits[8:]}",
        first_name=" Anna ",
        last_name="Petrova",
        email="Anna@Example.COM",
        birth_date=c.Date(year=1990, month=5, day=17),
        consents=c.Consents(sms=c.ChannelConsent(status=c.CONSENT_STATUS_GRANTED)),
        registration_channel=types_pb2.SALES_CHANNEL_POS,
    )
    response = await program.cards.RegisterMember(request)
    member = response.member
    assert response.created
    assert member.phone == f"+7{digits}"
    assert (member.first_name, member.email) == ("Anna", "Anna@example.com")
    assert member.state == c.Member.STATE_ACTIVE and member.master_account_id
    assert member.consents.sms.status == c.CONSENT_STATUS_GRANTED
    assert member.consents.sms.actor == TERMINAL and member.consents.email.status == c.CONSENT_STATUS_UNSPECIFIED
    master = await program.wallet.GetMasterAccount(
        w.GetMasterAccountRequest(master_account_id=member.master_account_id)
    )
    assert master.master_account.member_id == member.member_id
    assert [a.kind for a in master.master_account.accounts] == ["base"]
    events = await outbox_events(cards_db, member.member_id)
    assert [event_type for event_type, _ in events] == ["member.registered"]
    registered = events[0][1]
    assert (registered["member_id"], registered["master_account_id"]) == (member.member_id, member.master_account_id)
    assert (registered["phone"], registered["masked_card_number"]) == (member.phone, "")
    assert registered["consents"] == {"sms": "GRANTED", "email": "", "push": ""}
    assert registered["register_time"].endswith("Z") and registered["actor_type"] == "TERMINAL"
    # A retry with the same key: the original response, byte for byte.
    again = await program.cards.RegisterMember(request)
    assert again.SerializeToString(deterministic=True) == response.SerializeToString(deterministic=True)


async def test_the_same_phone_twice_is_the_same_member_never_a_second(
    program: Program, cards_db: asyncpg.Connection
) -> None:
    phone = new_phone()
    requests = [registration(program, phone, first_name=f"Name {i}") for i in range(8)]
    responses = await asyncio.gather(*(program.cards.RegisterMember(r) for r in requests))
    assert len({r.member.member_id for r in responses}) == 1
    assert sum(r.created for r in responses) == 1
    created = next(r for r in responses if r.created)
    assert all(r.member.first_name == created.member.first_name for r in responses)  # the others were ignored
    rows = await cards_db.fetchval("SELECT count(*) FROM members WHERE program_id = $1", program.program_id)
    assert rows == 1
    events = await outbox_events(cards_db, created.member.member_id)
    assert [event_type for event_type, _ in events] == ["member.registered"]


async def test_find_member_by_any_notation_and_get_by_id(program: Program) -> None:
    member = await program.register()
    digits = member.phone[2:]
    for notation in (member.phone, f"8{digits}", f"+7 {digits[:3]} {digits[3:]}"):
        found = await program.cards.FindMember(c.FindMemberRequest(program_id=program.program_id, phone=notation))
        assert found.member.member_id == member.member_id
    by_id = await program.cards.GetMember(c.GetMemberRequest(member_id=member.member_id))
    assert by_id.member == member
    with pytest.raises(aio.AioRpcError) as missing:
        await program.cards.FindMember(c.FindMemberRequest(program_id="another-program", phone=member.phone))
    assert details(missing.value).reason == "MEMBER_NOT_FOUND"


@pytest.mark.parametrize(
    ("fields", "bad"),
    [
        ({"phone": "12345"}, ["phone"]),
        ({"phone": "not a phone"}, ["phone"]),
        ({"phone": ""}, ["phone"]),
        ({"email": "anna@"}, ["email"]),
        ({"birth_date": c.Date(year=2999, month=1, day=1)}, ["birth_date"]),
        ({"phone": "1", "email": "x", "first_name": "A" * 101}, ["phone", "first_name", "email"]),
    ],
)
async def test_bad_registrations_name_the_fields_and_change_nothing(
    program: Program, cards_db: asyncpg.Connection, fields: dict[str, object], bad: list[str]
) -> None:
    request = registration(program, str(fields.pop("phone", new_phone())), **fields)
    with pytest.raises(aio.AioRpcError) as refused:
        await program.cards.RegisterMember(request)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    found = details(refused.value)
    assert found.reason == "INVALID_ARGUMENT" and found.fields == bad
    assert await cards_db.fetchval("SELECT count(*) FROM members WHERE program_id = $1", program.program_id) == 0


async def test_update_profile_and_segments_through_the_mask(program: Program, cards_db: asyncpg.Connection) -> None:
    member = await program.register()
    new = new_phone()
    request = c.UpdateMemberRequest(
        idempotency_key=key(),
        actor=OPERATOR,
        member=c.Member(member_id=member.member_id, phone=new, last_name="Ivanova", segments=["GOLD", "STAFF", "GOLD"]),
        update_mask=field_mask_pb2.FieldMask(paths=["phone", "last_name", "segments"]),
    )
    updated = (await program.cards.UpdateMember(request)).member
    assert (updated.phone, updated.last_name, updated.first_name) == (new, "Ivanova", "Anna")
    assert list(updated.segments) == ["GOLD", "STAFF"]
    # The same values again change nothing and emit nothing.
    request.idempotency_key.key = key().key
    await program.cards.UpdateMember(request)
    events = [t for t, _ in await outbox_events(cards_db, member.member_id)]
    assert events == ["member.registered", "member.updated"]
    # The old phone no longer finds the member; the new one does.
    with pytest.raises(aio.AioRpcError):
        await program.cards.FindMember(c.FindMemberRequest(program_id=program.program_id, phone=member.phone))
    found = await program.cards.FindMember(c.FindMemberRequest(program_id=program.program_id, phone=new))
    assert found.member.member_id == member.member_id


async def test_update_refuses_unknown_paths_and_a_phone_of_another_member(program: Program) -> None:
    anna, boris = await program.register(), await program.register()
    bad_path = c.UpdateMemberRequest(
        idempotency_key=key(),
        actor=OPERATOR,
        member=c.Member(member_id=anna.member_id, state=c.Member.STATE_CLOSED),
        update_mask=field_mask_pb2.FieldMask(paths=["state"]),
    )
    with pytest.raises(aio.AioRpcError) as refused:
        await program.cards.UpdateMember(bad_path)
    assert details(refused.value).fields == ["update_mask"]
    taken = c.UpdateMemberRequest(
        idempotency_key=key(),
        actor=OPERATOR,
        member=c.Member(member_id=anna.member_id, phone=boris.phone),
        update_mask=field_mask_pb2.FieldMask(paths=["phone"]),
    )
    with pytest.raises(aio.AioRpcError) as conflict:
        await program.cards.UpdateMember(taken)
    assert conflict.value.code() == grpc.StatusCode.ALREADY_EXISTS


async def test_consents_per_channel(program: Program, cards_db: asyncpg.Connection) -> None:
    member = await program.register()
    app = member_actor(member.member_id)
    request = c.UpdateConsentsRequest(
        idempotency_key=key(), actor=app, member_id=member.member_id, email=c.CONSENT_STATUS_GRANTED
    )
    updated = (await program.cards.UpdateConsents(request)).member
    assert updated.consents.email.status == c.CONSENT_STATUS_GRANTED and updated.consents.email.actor == app
    assert updated.consents.sms.status == c.CONSENT_STATUS_UNSPECIFIED
    request.idempotency_key.key = key().key
    await program.cards.UpdateConsents(request)  # the same status again: nothing new
    events = [t for t, _ in await outbox_events(cards_db, member.member_id)]
    assert events == ["member.registered", "member.consents_updated"]
    with pytest.raises(aio.AioRpcError) as empty:
        await program.cards.UpdateConsents(
            c.UpdateConsentsRequest(idempotency_key=key(), actor=app, member_id=member.member_id)
        )
    assert empty.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_block_unblock_close_and_the_phone_is_released(program: Program, cards_db: asyncpg.Connection) -> None:
    member = await program.register()

    async def call(method: str, **fields: object) -> c.Member:
        request = getattr(c, f"{method}Request")(
            idempotency_key=key(), actor=OPERATOR, member_id=member.member_id, **fields
        )
        return (await getattr(program.cards, method)(request)).member  # type: ignore[no-any-return]

    blocked = await call("BlockMember", reason=c.MEMBER_BLOCK_REASON_FRAUD_SUSPECTED, comment="review")
    assert (blocked.state, blocked.block_reason, blocked.state_actor) == (
        c.Member.STATE_BLOCKED,
        c.MEMBER_BLOCK_REASON_FRAUD_SUSPECTED,
        OPERATOR,
    )
    again = await call("BlockMember", reason=c.MEMBER_BLOCK_REASON_OTHER, comment="second")
    assert again.block_reason == c.MEMBER_BLOCK_REASON_FRAUD_SUSPECTED  # the first block's reason stays
    assert (await call("UnblockMember")).state == c.Member.STATE_ACTIVE
    assert (await call("CloseMember", comment="left")).state == c.Member.STATE_CLOSED
    with pytest.raises(aio.AioRpcError) as closed:
        await call("BlockMember", reason=c.MEMBER_BLOCK_REASON_FRAUD_SUSPECTED)
    assert details(closed.value).reason == "MEMBER_CLOSED"
    events = [t for t, _ in await outbox_events(cards_db, member.member_id)]
    assert events == ["member.registered", "member.blocked", "member.unblocked", "member.closed"]
    # The phone is free again: registering it makes a new member.
    again_registered = await program.cards.RegisterMember(registration(program, member.phone))
    assert again_registered.created and again_registered.member.member_id != member.member_id


async def test_a_terminal_cannot_block_members(program: Program) -> None:
    member = await program.register()
    with pytest.raises(aio.AioRpcError) as denied:
        await program.cards.BlockMember(
            c.BlockMemberRequest(
                idempotency_key=key(),
                actor=TERMINAL,
                member_id=member.member_id,
                reason=c.MEMBER_BLOCK_REASON_FRAUD_SUSPECTED,
            )
        )
    assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_the_same_key_with_another_body_is_refused(program: Program) -> None:
    request = registration(program, new_phone())
    await program.cards.RegisterMember(request)
    request.first_name = "Changed"
    with pytest.raises(aio.AioRpcError) as reused:
        await program.cards.RegisterMember(request)
    assert details(reused.value).reason == "IDEMPOTENCY_KEY_REUSED"


async def test_unknown_member_is_not_found(cards: cards_pb2_grpc.CardsServiceStub) -> None:
    for member_id in ("5d1c7a43-3b0e-4a1f-9f55-0a6c8f2b1e77", "not-a-uuid"):
        with pytest.raises(aio.AioRpcError) as missing:
            await cards.GetMember(c.GetMemberRequest(member_id=member_id))
        assert details(missing.value).reason == "MEMBER_NOT_FOUND"


async def test_events_reach_the_redis_stream(program: Program, infra: Infra) -> None:
    """The relay publishes the outbox to the platform's stream (shared/outbox.py)."""
    member = await program.register()
    redis = Redis.from_url(infra.redis_url)
    try:
        deadline = asyncio.get_running_loop().time() + 10
        found: list[dict[Any, Any]] = []
        while not found and asyncio.get_running_loop().time() < deadline:
            entries: list[Any] = await redis.xrevrange(outbox.STREAM, count=500) or []
            found = [fields for _, fields in entries if fields[b"partition_key"] == member.member_id.encode()]
            await asyncio.sleep(0.1)
    finally:
        await redis.aclose()
    assert [(f[b"event_type"], f[b"source"]) for f in found] == [(b"member.registered", b"cards")]
    assert json.loads(found[0][b"payload"])["member_id"] == member.member_id
