"""Resolve through real cards processes: by card number, phone, member id and dynamic QR token;
a block made through one process wins in the other at once (whose cache held the card); QR
tokens expire and are single use; BatchResolve; bad identifiers get clear errors."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime

import grpc
import pytest
from google.protobuf import field_mask_pb2
from grpc import aio
from loyalty.cards.v1 import cards_pb2 as c
from loyalty.cards.v1 import cards_pb2_grpc
from loyalty.common.v1 import errors_pb2, types_pb2

from services.cards.domain.model import CheckDigitScheme
from services.cards.domain.numbers import check_digit
from tests.harness import ServiceProcess, metric_value
from tests.integration.cards.conftest import QR_TOKEN_TTL_S
from tests.integration.cards.support import (
    OPERATOR,
    OTHER_TERMINAL,
    TERMINAL,
    Program,
    details,
    key,
    member_actor,
)

E = errors_pb2
RACE_ROUNDS = 5
RACE_RESOLVES = 200


def cache_count(process: ServiceProcess, result: str) -> float:
    value = metric_value(process.metrics_text(), "loyalty_cards_resolve_cache_total", {"result": result})
    return value or 0.0


async def resolve(
    stub: cards_pb2_grpc.CardsServiceStub,
    program: Program,
    actor: types_pb2.Actor = TERMINAL,
    include_member_cards: bool = False,
    identifier: types_pb2.MemberIdentifier | None = None,
    **kind: str,
) -> c.Resolution:
    """Resolve `identifier`, or the one identifier given as a keyword (card_number=..., phone=...)."""
    request = c.ResolveRequest(
        program_id=program.program_id,
        identifier=identifier or types_pb2.MemberIdentifier(**kind),
        actor=actor,
        include_member_cards=include_member_cards,
    )
    response: c.ResolveResponse = await stub.Resolve(request, timeout=10)
    return response.resolution


async def test_resolution_by_every_identifier(program: Program) -> None:
    member = await program.register(first_name="Anna", last_name="Petrova", birth_date=c.Date(year=0, month=2, day=29))
    card, _ = await program.bound_card(member.member_id)
    await program.cards.UpdateMember(
        c.UpdateMemberRequest(
            idempotency_key=key(),
            actor=OPERATOR,
            member=c.Member(member_id=member.member_id, segments=["GOLD"]),
            update_mask=field_mask_pb2.FieldMask(paths=["segments"]),
        )
    )
    by_card = await resolve(program.cards, program, card_number=card.card_number)
    assert by_card.usable and by_card.refusal_reason == E.ERROR_REASON_UNSPECIFIED
    assert (by_card.identified_by, by_card.card_id, by_card.card_type, by_card.card_state) == (
        c.IDENTIFIER_TYPE_CARD_NUMBER,
        card.card_id,
        c.CARD_TYPE_BONUS,
        c.Card.STATE_ACTIVE,
    )
    assert (by_card.member_id, by_card.member_state, by_card.master_account_id) == (
        member.member_id,
        c.Member.STATE_ACTIVE,
        member.master_account_id,
    )
    assert by_card.member_display_name == "Anna P." and by_card.member_masked_phone.endswith(member.phone[-2:])
    assert "*" in by_card.member_masked_phone and by_card.account_id == ""  # MASTER mode
    assert list(by_card.member_segments) == ["GOLD"] and by_card.member_birth_date == c.Date(month=2, day=29)
    assert by_card.member_create_time == member.create_time
    by_phone = await resolve(program.cards, program, phone=f"8{member.phone[2:]}")
    assert (by_phone.identified_by, by_phone.member_id, by_phone.card_id) == (
        c.IDENTIFIER_TYPE_PHONE,
        member.member_id,
        "",
    )
    by_id = await resolve(program.cards, program, member_id=member.member_id, include_member_cards=True)
    assert by_id.usable and [x.card_id for x in by_id.member_cards] == [card.card_id]


async def test_bad_and_unknown_identifiers(program: Program) -> None:
    card, _ = await program.bound_card()
    number = card.card_number
    cases = [
        (
            {"card_number": number[:-1] + str((int(number[-1]) + 1) % 10)},
            "INVALID_ARGUMENT",
            ["identifier.card_number"],
        ),
        ({"card_number": "12ab"}, "INVALID_ARGUMENT", ["identifier.card_number"]),
        ({"phone": "12345"}, "INVALID_ARGUMENT", ["identifier.phone"]),
        ({"phone": "+79160000000"}, "MEMBER_NOT_FOUND", []),
        ({"member_id": "5d1c7a43-3b0e-4a1f-9f55-0a6c8f2b1e77"}, "MEMBER_NOT_FOUND", []),
        ({"qr_token": "LQ1.forged.token"}, "QR_TOKEN_INVALID", []),
        ({}, "INVALID_ARGUMENT", ["identifier"]),
    ]
    for identifier, reason, fields in cases:
        with pytest.raises(aio.AioRpcError) as refused:
            await resolve(program.cards, program, identifier=types_pb2.MemberIdentifier(**identifier))
        assert (details(refused.value).reason, details(refused.value).fields) == (reason, fields), identifier
    # A well-formed number no card has: CARD_NOT_FOUND. A card of another program: not found either.
    payload = number[:-2] + str((int(number[-2]) + 1) % 10)
    unknown = payload + str(check_digit(payload, CheckDigitScheme.LUHN))
    with pytest.raises(aio.AioRpcError) as missing:
        await resolve(program.cards, program, card_number=unknown)
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND and details(missing.value).reason == "CARD_NOT_FOUND"
    elsewhere = Program(program.cards, program.wallet, "another-program", program.luhn_template_id)
    with pytest.raises(aio.AioRpcError) as foreign:
        await resolve(program.cards, elsewhere, card_number=number)
    assert details(foreign.value).reason in ("CARD_NOT_FOUND", "INVALID_ARGUMENT")


async def test_a_block_through_one_process_wins_in_the_other_at_once(
    program: Program, second_cards: cards_pb2_grpc.CardsServiceStub, cards_processes: list[ServiceProcess]
) -> None:
    other = cards_processes[1]
    card, member_id = await program.bound_card()
    hits_before = cache_count(other, "hit")
    for _ in range(5):  # the other process caches the card: the first reads fill, the rest hit
        assert (await resolve(second_cards, program, card_number=card.card_number)).usable
    assert cache_count(other, "hit") - hits_before >= 3, "the other process did not serve from its cache"
    await program.cards.BlockCard(
        c.BlockCardRequest(
            idempotency_key=key(),
            actor=OPERATOR,
            card=c.CardRef(card_id=card.card_id),
            reason=c.CARD_BLOCK_REASON_STOLEN,
        )
    )
    blocked = await resolve(second_cards, program, card_number=card.card_number)
    assert (blocked.usable, blocked.refusal_reason, blocked.card_state, blocked.card_block_reason) == (
        False,
        E.ERROR_REASON_CARD_BLOCKED,
        c.Card.STATE_BLOCKED,
        c.CARD_BLOCK_REASON_STOLEN,
    )
    # A member block wins the same way, for the member's phone and id as well.
    await program.cards.UnblockCard(
        c.UnblockCardRequest(idempotency_key=key(), actor=OPERATOR, card=c.CardRef(card_id=card.card_id))
    )
    member = (await program.cards.GetMember(c.GetMemberRequest(member_id=member_id))).member
    for _ in range(3):
        assert (await resolve(second_cards, program, card_number=card.card_number)).usable
        assert (await resolve(second_cards, program, phone=member.phone)).usable
    await program.cards.BlockMember(
        c.BlockMemberRequest(
            idempotency_key=key(), actor=OPERATOR, member_id=member_id, reason=c.MEMBER_BLOCK_REASON_FRAUD_SUSPECTED
        )
    )
    for identifier in ({"card_number": card.card_number}, {"phone": member.phone}, {"member_id": member_id}):
        refused = await resolve(second_cards, program, identifier=types_pb2.MemberIdentifier(**identifier))
        assert (refused.usable, refused.refusal_reason) == (False, E.ERROR_REASON_MEMBER_BLOCKED), identifier


async def race_block_against_resolves(
    program: Program, second_cards: cards_pb2_grpc.CardsServiceStub, card: c.Card
) -> list[float]:
    """Block the card through the first process while 8 loops resolve it through the second;
    returns how long after BlockCard returned each late 'usable' answer's call had started."""
    returned_at: list[float] = []
    late_usable: list[float] = []

    async def hammer() -> None:
        for _ in range(RACE_RESOLVES // 8):
            started = time.monotonic()
            answer = await resolve(second_cards, program, card_number=card.card_number)
            if answer.usable and returned_at and started > returned_at[0]:
                late_usable.append(started - returned_at[0])

    async def block_now() -> None:
        await asyncio.sleep(0.01)
        await program.cards.BlockCard(
            c.BlockCardRequest(
                idempotency_key=key(),
                actor=OPERATOR,
                card=c.CardRef(card_id=card.card_id),
                reason=c.CARD_BLOCK_REASON_FRAUD_SUSPECTED,
            )
        )
        returned_at.append(time.monotonic())

    await asyncio.gather(block_now(), *(hammer() for _ in range(8)))
    if not returned_at:
        raise AssertionError("the block did not return")
    return late_usable


async def test_no_resolve_that_starts_after_the_block_returned_sees_the_card_usable(
    program: Program, second_cards: cards_pb2_grpc.CardsServiceStub
) -> None:
    """Resolves hammer the other process while the block commits: answers to calls that started
    before BlockCard returned may say usable; none that started after it may."""
    for _ in range(RACE_ROUNDS):
        card, _ = await program.bound_card()
        for _ in range(3):  # cached and validated in the other process
            await resolve(second_cards, program, card_number=card.card_number)
        assert await race_block_against_resolves(program, second_cards, card) == []


async def test_a_qr_token_is_single_use_per_terminal_and_expires(
    program: Program, second_cards: cards_pb2_grpc.CardsServiceStub
) -> None:
    member = await program.register()
    app = member_actor(member.member_id)
    issued = await program.cards.IssueQrToken(
        c.IssueQrTokenRequest(idempotency_key=key(), actor=app, member_id=member.member_id)
    )
    assert issued.token.startswith("LQ1.") and not issued.token.isdigit() and issued.ttl.seconds == QR_TOKEN_TTL_S
    assert issued.refresh_time.ToDatetime() <= issued.expire_time.ToDatetime()
    first = await resolve(program.cards, program, qr_token=issued.token)
    assert (first.identified_by, first.member_id, first.usable) == (c.IDENTIFIER_TYPE_QR_TOKEN, member.member_id, True)
    assert first.qr_token_expire_time == issued.expire_time and first.card_id == ""
    again = await resolve(second_cards, program, qr_token=issued.token)  # the same till retries (any process)
    assert again.member_id == member.member_id
    with pytest.raises(aio.AioRpcError) as used:
        await resolve(program.cards, program, actor=OTHER_TERMINAL, qr_token=issued.token)
    assert details(used.value).reason == "QR_TOKEN_ALREADY_USED"
    altered = issued.token[:-3] + ("AAA" if not issued.token.endswith("AAA") else "BBB")
    with pytest.raises(aio.AioRpcError) as forged:
        await resolve(program.cards, program, qr_token=altered)
    assert (
        forged.value.code() == grpc.StatusCode.INVALID_ARGUMENT and details(forged.value).reason == "QR_TOKEN_INVALID"
    )
    screenshot = await program.cards.IssueQrToken(
        c.IssueQrTokenRequest(idempotency_key=key(), actor=app, member_id=member.member_id)
    )
    expire_at = screenshot.expire_time.ToDatetime(tzinfo=UTC)
    await asyncio.sleep((expire_at - datetime.now(UTC)).total_seconds() + 0.2)
    for actor in (TERMINAL, OTHER_TERMINAL):
        with pytest.raises(aio.AioRpcError) as expired:
            await resolve(program.cards, program, actor=actor, qr_token=screenshot.token)
        assert details(expired.value).reason == "QR_TOKEN_EXPIRED"
    with pytest.raises(aio.AioRpcError) as late:
        await resolve(program.cards, program, qr_token=issued.token)
    assert details(late.value).reason == "QR_TOKEN_EXPIRED"


async def test_qr_tokens_for_a_card_and_their_refusals(program: Program) -> None:
    card, member_id = await program.bound_card()
    app = member_actor(member_id)
    request = c.IssueQrTokenRequest(idempotency_key=key(), actor=app, member_id=member_id, card_number=card.card_number)
    issued = await program.cards.IssueQrToken(request)
    assert (await program.cards.IssueQrToken(request)).token == issued.token  # a retry: the same token
    resolved = await resolve(program.cards, program, qr_token=issued.token)
    assert (resolved.card_id, resolved.card_number, resolved.identified_by) == (
        card.card_id,
        card.card_number,
        c.IDENTIFIER_TYPE_QR_TOKEN,
    )
    elsewhere = Program(program.cards, program.wallet, "another-program")
    with pytest.raises(aio.AioRpcError) as other_program:
        await resolve(program.cards, elsewhere, qr_token=issued.token)
    assert details(other_program.value).reason == "QR_TOKEN_INVALID"
    with pytest.raises(aio.AioRpcError) as not_self:
        await program.cards.IssueQrToken(
            c.IssueQrTokenRequest(idempotency_key=key(), actor=TERMINAL, member_id=member_id)
        )
    assert not_self.value.code() == grpc.StatusCode.PERMISSION_DENIED
    before_block = await program.cards.IssueQrToken(
        c.IssueQrTokenRequest(idempotency_key=key(), actor=app, member_id=member_id)
    )
    await program.cards.BlockMember(
        c.BlockMemberRequest(
            idempotency_key=key(), actor=OPERATOR, member_id=member_id, reason=c.MEMBER_BLOCK_REASON_CUSTOMER_REQUEST
        )
    )
    with pytest.raises(aio.AioRpcError) as blocked:
        await program.cards.IssueQrToken(c.IssueQrTokenRequest(idempotency_key=key(), actor=app, member_id=member_id))
    assert details(blocked.value).reason == "MEMBER_BLOCKED"
    # A token issued before the block still resolves, but not usable.
    late = await resolve(program.cards, program, qr_token=before_block.token)
    assert (late.member_id, late.usable, late.refusal_reason) == (member_id, False, E.ERROR_REASON_MEMBER_BLOCKED)


async def test_batch_resolve(program: Program) -> None:
    card, member_id = await program.bound_card()

    def request(**identifier: str) -> c.ResolveRequest:
        return c.ResolveRequest(
            program_id=program.program_id, identifier=types_pb2.MemberIdentifier(**identifier), actor=TERMINAL
        )

    response = await program.cards.BatchResolve(
        c.BatchResolveRequest(
            requests=[
                request(card_number=card.card_number),
                request(phone="not a phone"),
                request(member_id=member_id),
                request(card_number="12345678"),
            ]
        )
    )
    kinds = [r.WhichOneof("result") for r in response.results]
    assert kinds == ["resolution", "error", "resolution", "error"]
    assert response.results[0].resolution.card_id == card.card_id
    assert (response.results[1].error.reason, response.results[1].error.field) == (
        E.ERROR_REASON_INVALID_ARGUMENT,
        "identifier.phone",
    )
    assert response.results[3].error.reason == E.ERROR_REASON_INVALID_ARGUMENT  # fits no template
    with pytest.raises(aio.AioRpcError) as empty:
        await program.cards.BatchResolve(c.BatchResolveRequest())
    assert details(empty.value).fields == ["requests"]
    with pytest.raises(aio.AioRpcError) as oversized:
        await program.cards.BatchResolve(c.BatchResolveRequest(requests=[request(member_id=member_id)] * 101))
    assert details(oversized.value).fields == ["requests"]
