"""Cards through a real cards process and wallet: issue, bind (to the master account, an own
sub-account, an existing one), block, unblock, replace, expire; gift cards; the history and
the outbox; invalid transitions and bad input that change nothing."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta

import asyncpg
import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from grpc import aio
from loyalty.cards.v1 import cards_pb2 as c
from loyalty.wallet.v1 import wallet_pb2 as w

from tests.integration.cards.support import OPERATOR, TERMINAL, Program, details, key, outbox_events

S = c.Card


async def first_number(database: asyncpg.Connection, batch_id: str, offset: int = 0) -> str:
    return str(
        await database.fetchval(
            "SELECT card_number FROM cards WHERE batch_id = $1 ORDER BY card_number OFFSET $2 LIMIT 1", batch_id, offset
        )
    )


def by_number(number: str) -> c.CardRef:
    return c.CardRef(card_number=number)


async def history(program: Program, number: str) -> list[c.CardEvent]:
    response = await program.cards.ListCardEvents(c.ListCardEventsRequest(card=by_number(number)))
    return list(response.events)


async def block(
    program: Program, number: str, reason: c.CardBlockReason.ValueType = c.CARD_BLOCK_REASON_LOST, comment: str = ""
) -> c.Card:
    response: c.BlockCardResponse = await program.cards.BlockCard(
        c.BlockCardRequest(
            idempotency_key=key(), actor=TERMINAL, card=by_number(number), reason=reason, comment=comment
        )  # type: ignore[arg-type]
    )
    return response.card


async def test_from_the_stack_to_a_member(program: Program, cards_db: asyncpg.Connection) -> None:
    batch = await program.batch(10)
    number = await first_number(cards_db, batch.batch_id)
    member = await program.register()
    issued = (
        await program.cards.IssueCard(
            c.IssueCardRequest(idempotency_key=key(), actor=TERMINAL, card_number=number, comment="handed out")
        )
    ).card
    assert issued.state == S.STATE_ISSUED and issued.issue_time.seconds and not issued.member_id
    bound = (
        await program.cards.BindCard(
            c.BindCardRequest(
                idempotency_key=key(),
                actor=TERMINAL,
                card=by_number(number),
                binding=c.CardBinding(member_id=member.member_id, label="Keychain"),
            )
        )
    ).card
    assert (bound.state, bound.member_id, bound.account_mode, bound.label) == (
        S.STATE_ACTIVE,
        member.member_id,
        c.CARD_ACCOUNT_MODE_MASTER,
        "Keychain",
    )
    assert bound.barcode_payload == number and bound.qr_payload.endswith(number)
    events = await history(program, number)
    assert [(e.type, e.from_state, e.to_state) for e in events] == [
        (c.CARD_EVENT_TYPE_GENERATED, S.STATE_UNSPECIFIED, S.STATE_GENERATED),
        (c.CARD_EVENT_TYPE_ISSUED, S.STATE_GENERATED, S.STATE_ISSUED),
        (c.CARD_EVENT_TYPE_BOUND, S.STATE_ISSUED, S.STATE_ACTIVE),
    ]
    assert events[0].actor == OPERATOR and events[1].actor == TERMINAL and events[1].comment == "handed out"
    published = [t for t, _ in await outbox_events(cards_db, member.member_id)]
    assert published == ["member.registered", "card.bound"]  # card.issued went out keyed by the card
    assert [t for t, _ in await outbox_events(cards_db, bound.card_id)] == ["card.issued"]


async def test_a_generated_card_is_issued_and_bound_in_one_call(program: Program, cards_db: asyncpg.Connection) -> None:
    batch = await program.batch(3)
    number = await first_number(cards_db, batch.batch_id)
    member = await program.register()
    request = c.BindCardRequest(
        idempotency_key=key(), actor=TERMINAL, card=by_number(number), binding=c.CardBinding(member_id=member.member_id)
    )
    await program.cards.BindCard(request)
    request.idempotency_key.key = key().key  # binding again the same way: unchanged, nothing recorded
    again = (await program.cards.BindCard(request)).card
    assert again.state == S.STATE_ACTIVE
    types = [e.type for e in await history(program, number)]
    assert types == [c.CARD_EVENT_TYPE_GENERATED, c.CARD_EVENT_TYPE_ISSUED, c.CARD_EVENT_TYPE_BOUND]


async def test_a_card_cannot_be_bound_to_two_members(program: Program, cards_db: asyncpg.Connection) -> None:
    card, _ = await program.bound_card()
    other = await program.register()
    with pytest.raises(aio.AioRpcError) as refused:
        await program.cards.BindCard(
            c.BindCardRequest(
                idempotency_key=key(),
                actor=TERMINAL,
                card=by_number(card.card_number),
                binding=c.CardBinding(member_id=other.member_id),
            )
        )
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert details(refused.value).reason == "CARD_ALREADY_BOUND"
    member_id = await cards_db.fetchval("SELECT member_id FROM cards WHERE card_number = $1", card.card_number)
    assert str(member_id) == card.member_id


async def test_block_unblock_with_reason_and_actor_recorded(program: Program, cards_db: asyncpg.Connection) -> None:
    card, member_id = await program.bound_card()
    blocked = await block(program, card.card_number, c.CARD_BLOCK_REASON_OTHER, comment="left at the till")
    assert blocked.state == S.STATE_BLOCKED
    assert (blocked.block.reason, blocked.block.comment, blocked.block.actor, blocked.block.previous_state) == (
        c.CARD_BLOCK_REASON_OTHER,
        "left at the till",
        TERMINAL,
        S.STATE_ACTIVE,
    )
    again = await block(program, card.card_number, c.CARD_BLOCK_REASON_STOLEN)
    assert again.block.reason == c.CARD_BLOCK_REASON_OTHER  # the first block's reason stays
    with pytest.raises(aio.AioRpcError) as denied:  # a terminal may block but not unblock
        await program.cards.UnblockCard(
            c.UnblockCardRequest(idempotency_key=key(), actor=TERMINAL, card=by_number(card.card_number))
        )
    assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
    unblocked = (
        await program.cards.UnblockCard(
            c.UnblockCardRequest(idempotency_key=key(), actor=OPERATOR, card=c.CardRef(card_id=card.card_id))
        )
    ).card
    assert unblocked.state == S.STATE_ACTIVE and not unblocked.HasField("block")
    events = await history(program, card.card_number)
    assert [e.type for e in events][-2:] == [c.CARD_EVENT_TYPE_BLOCKED, c.CARD_EVENT_TYPE_UNBLOCKED]
    assert events[-2].block_reason == c.CARD_BLOCK_REASON_OTHER and events[-2].comment == "left at the till"
    published = await outbox_events(cards_db, member_id)
    assert [t for t, _ in published][-2:] == ["card.blocked", "card.unblocked"]
    blocked_event = published[-2][1]
    assert (blocked_event["reason"], blocked_event["actor_type"], blocked_event["card_id"]) == (
        "OTHER",
        "TERMINAL",
        card.card_id,
    )
    assert blocked_event["masked_card_number"].endswith(card.card_number[-4:]) and blocked_event["block_time"]
    assert card.card_number not in json.dumps(blocked_event)  # card numbers travel masked
    with pytest.raises(aio.AioRpcError) as no_comment:
        await block(program, card.card_number, c.CARD_BLOCK_REASON_OTHER)
    assert details(no_comment.value).fields == ["comment"]


async def test_replacing_a_lost_card_keeps_the_member_and_accounts(
    program: Program, cards_db: asyncpg.Connection
) -> None:
    member = await program.register()
    own = (
        await program.cards.IssueCard(
            c.IssueCardRequest(
                idempotency_key=key(),
                actor=TERMINAL,
                new_card=c.NewCard(template_id=program.luhn_template_id, type=c.CARD_TYPE_BONUS),
                binding=c.CardBinding(
                    member_id=member.member_id, account_mode=c.CARD_ACCOUNT_MODE_OWN_SUB_ACCOUNT, label="Masha"
                ),
            )
        )
    ).card
    assert own.account_mode == c.CARD_ACCOUNT_MODE_OWN_SUB_ACCOUNT and own.account_id
    account = (await program.wallet.GetAccount(w.GetAccountRequest(account_id=own.account_id))).account
    assert (account.member_id, account.external_ref) == (member.member_id, f"card:{own.card_id}")
    await block(program, own.card_number, c.CARD_BLOCK_REASON_LOST)
    batch = await program.batch(2)
    spare = await first_number(cards_db, batch.batch_id)
    request = c.ReplaceCardRequest(
        idempotency_key=key(),
        actor=OPERATOR,
        card=by_number(own.card_number),
        reason=c.CARD_REPLACEMENT_REASON_LOST,
        new_card_number=spare,
    )
    replaced = await program.cards.ReplaceCard(request)
    old, new = replaced.old_card, replaced.new_card
    assert old.state == S.STATE_REPLACED and old.replaced_by_card_id == new.card_id
    assert new.state == S.STATE_ACTIVE and new.replaces_card_id == old.card_id
    assert (new.member_id, new.account_mode, new.account_id, new.label) == (
        member.member_id,
        c.CARD_ACCOUNT_MODE_OWN_SUB_ACCOUNT,
        own.account_id,
        "Masha",
    )
    request.idempotency_key.key = key().key  # the same replacement again: nothing changes
    again = await program.cards.ReplaceCard(request)
    assert again.new_card.card_id == new.card_id
    old_resolution = await program.resolve_number(own.card_number)
    new_resolution = await program.resolve_number(spare)
    assert (old_resolution.usable, old_resolution.refusal_reason) == (False, 16)  # CARD_NOT_ACTIVE
    assert new_resolution.usable and new_resolution.account_id == own.account_id
    published = [(t, e) for t, e in await outbox_events(cards_db, member.member_id) if t == "card.replaced"]
    assert len(published) == 1
    replaced_event = published[0][1]
    assert (replaced_event["card_id"], replaced_event["new_card_id"], replaced_event["reason"]) == (
        old.card_id,
        new.card_id,
        "LOST",
    )
    assert replaced_event["masked_card_number"] == "*" * 12 + own.card_number[-4:]
    with pytest.raises(aio.AioRpcError) as final:  # REPLACED is final
        await program.cards.UnblockCard(
            c.UnblockCardRequest(idempotency_key=key(), actor=OPERATOR, card=by_number(own.card_number))
        )
    info = details(final.value)
    assert (info.reason, info.metadata["fromState"]) == ("INVALID_STATE_TRANSITION", "REPLACED")


async def test_replacement_from_a_template_is_one_card_per_key(program: Program, cards_db: asyncpg.Connection) -> None:
    card, member_id = await program.bound_card(card_type=c.CARD_TYPE_BONUS)
    request = c.ReplaceCardRequest(
        idempotency_key=key(),
        actor=OPERATOR,
        card=by_number(card.card_number),
        reason=c.CARD_REPLACEMENT_REASON_UPGRADE,
        new_card=c.NewCard(template_id=program.luhn_template_id, type=c.CARD_TYPE_VIRTUAL),
    )
    first = await program.cards.ReplaceCard(request)
    retry = await program.cards.ReplaceCard(request)
    assert retry.new_card.card_id == first.new_card.card_id and first.new_card.type == c.CARD_TYPE_VIRTUAL
    cards = await cards_db.fetchval("SELECT count(*) FROM cards WHERE member_id = $1", member_id)
    assert cards == 2
    gift = c.NewCard(template_id=program.luhn_template_id, type=c.CARD_TYPE_GIFT)
    with pytest.raises(aio.AioRpcError) as incompatible:
        await program.cards.ReplaceCard(
            c.ReplaceCardRequest(
                idempotency_key=key(),
                actor=OPERATOR,
                card=by_number(first.new_card.card_number),
                reason=c.CARD_REPLACEMENT_REASON_UPGRADE,
                new_card=gift,
            )
        )
    assert incompatible.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_several_cards_per_member_on_master_and_existing_accounts(program: Program) -> None:
    first, member_id = await program.bound_card()
    own = (
        await program.cards.IssueCard(
            c.IssueCardRequest(
                idempotency_key=key(),
                actor=TERMINAL,
                new_card=c.NewCard(template_id=program.luhn_template_id, type=c.CARD_TYPE_BONUS),
                binding=c.CardBinding(member_id=member_id, account_mode=c.CARD_ACCOUNT_MODE_OWN_SUB_ACCOUNT),
            )
        )
    ).card
    keychain = (
        await program.cards.IssueCard(
            c.IssueCardRequest(
                idempotency_key=key(),
                actor=TERMINAL,
                new_card=c.NewCard(template_id=program.luhn_template_id, type=c.CARD_TYPE_DISCOUNT),
                binding=c.CardBinding(
                    member_id=member_id, account_mode=c.CARD_ACCOUNT_MODE_EXISTING_ACCOUNT, account_id=own.account_id
                ),
            )
        )
    ).card
    assert keychain.account_id == own.account_id
    listed = await program.cards.ListMemberCards(c.ListMemberCardsRequest(member_id=member_id, page_size=2))
    rest = await program.cards.ListMemberCards(
        c.ListMemberCardsRequest(member_id=member_id, page_token=listed.next_page_token)
    )
    assert [x.card_id for x in [*listed.cards, *rest.cards]] == [first.card_id, own.card_id, keychain.card_id]
    stranger = await program.register()
    stranger_card, _ = await program.bound_card(stranger.member_id)
    with pytest.raises(aio.AioRpcError) as not_theirs:
        await program.cards.IssueCard(
            c.IssueCardRequest(
                idempotency_key=key(),
                actor=TERMINAL,
                new_card=c.NewCard(template_id=program.luhn_template_id, type=c.CARD_TYPE_BONUS),
                binding=c.CardBinding(
                    member_id=stranger.member_id,
                    account_mode=c.CARD_ACCOUNT_MODE_EXISTING_ACCOUNT,
                    account_id=own.account_id,
                ),
            )
        )
    assert details(not_theirs.value).reason == "ACCOUNT_NOT_FOUND"
    assert stranger_card.member_id == stranger.member_id


async def test_a_bearer_gift_card_has_its_own_gift_account(program: Program, cards_db: asyncpg.Connection) -> None:
    batch = await program.batch(2, card_type=c.CARD_TYPE_GIFT)
    number = await first_number(cards_db, batch.batch_id)
    gift = (
        await program.cards.IssueCard(
            c.IssueCardRequest(idempotency_key=key(), actor=TERMINAL, card_number=number, bearer=True)
        )
    ).card
    assert gift.state == S.STATE_ACTIVE and not gift.member_id and gift.gift_account_id
    account = (await program.wallet.GetAccount(w.GetAccountRequest(account_id=gift.gift_account_id))).account
    assert account.kind == "gift" and account.unit.currency_code == "RUB" and not account.member_id
    resolution = await program.resolve_number(number)
    assert resolution.usable and resolution.gift_account_id == gift.gift_account_id and not resolution.member_id
    member = await program.register()
    bound = (
        await program.cards.BindCard(
            c.BindCardRequest(
                idempotency_key=key(),
                actor=TERMINAL,
                card=by_number(number),
                binding=c.CardBinding(member_id=member.member_id),
            )
        )
    ).card
    assert bound.member_id == member.member_id and bound.gift_account_id == gift.gift_account_id
    other = await first_number(cards_db, batch.batch_id, offset=1)
    with pytest.raises(aio.AioRpcError) as not_gift:
        await program.cards.IssueCard(
            c.IssueCardRequest(
                idempotency_key=key(),
                actor=TERMINAL,
                new_card=c.NewCard(template_id=program.luhn_template_id, type=c.CARD_TYPE_BONUS),
                bearer=True,
            )
        )
    assert details(not_gift.value).fields == ["bearer"]
    assert other  # the second gift card stays GENERATED


async def program_rows(database: asyncpg.Connection, program_id: str) -> tuple[int, int]:
    """(history entries, outbox events) of the program's cards and members."""
    entries = await database.fetchval(
        "SELECT count(*) FROM card_events JOIN cards USING (card_id) WHERE program_id = $1", program_id
    )
    events = await database.fetchval(
        """
        SELECT count(*) FROM outbox WHERE partition_key IN (
            SELECT member_id::text FROM members WHERE program_id = $1
            UNION SELECT card_id::text FROM cards WHERE program_id = $1)
        """,
        program_id,
    )
    return int(entries), int(events)


async def test_bad_input_and_unknown_cards_change_nothing(program: Program, cards_db: asyncpg.Connection) -> None:
    card, _ = await program.bound_card()
    before = await program_rows(cards_db, program.program_id)
    unknown = card.card_number[:-1] + str((int(card.card_number[-1]) + 5) % 10)
    with pytest.raises(aio.AioRpcError) as missing:
        await block(program, "1234567812345670")
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND and details(missing.value).reason == "CARD_NOT_FOUND"
    with pytest.raises(aio.AioRpcError) as malformed:
        await block(program, "12ab")
    assert details(malformed.value).fields == ["card.card_number"]
    with pytest.raises(aio.AioRpcError) as bad_digit:
        await program.resolve_number(unknown)
    assert details(bad_digit.value).fields == ["identifier.card_number"]
    assert await program_rows(cards_db, program.program_id) == before
    assert before == (2, 3)  # the card's issue and binding; member.registered, card.issued, card.bound


async def test_expiry_is_refused_at_once_and_recorded_by_the_worker(
    program: Program, cards_db: asyncpg.Connection
) -> None:
    soon = Timestamp()
    soon.FromDatetime(datetime.now(UTC) + timedelta(seconds=2))
    member = await program.register()
    card = (
        await program.cards.IssueCard(
            c.IssueCardRequest(
                idempotency_key=key(),
                actor=TERMINAL,
                new_card=c.NewCard(template_id=program.luhn_template_id, type=c.CARD_TYPE_MULTI, expire_time=soon),
                binding=c.CardBinding(member_id=member.member_id),
            )
        )
    ).card
    assert (await program.resolve_number(card.card_number)).usable
    await asyncio.sleep(2.1)
    resolution = await program.resolve_number(card.card_number)
    assert (resolution.usable, resolution.card_state) == (False, S.STATE_EXPIRED)
    for _ in range(50):  # the worker runs every 0.2 s here
        state = await cards_db.fetchval("SELECT state FROM cards WHERE card_id = $1", card.card_id)
        if state == S.STATE_EXPIRED:
            break
        await asyncio.sleep(0.2)
    assert state == S.STATE_EXPIRED
    events = await history(program, card.card_number)
    assert events[-1].type == c.CARD_EVENT_TYPE_EXPIRED and events[-1].actor.id == "cards"
    assert "card.expired" in [t for t, _ in await outbox_events(cards_db, member.member_id)]
