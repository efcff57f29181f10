"""Use cases of templates, batches and cards: each owns its connection and transaction.

A card change is decided by the pure state machine (domain/lifecycle.py) on the card locked
FOR UPDATE, persisted with its history entries and outbox events in the same transaction, and
after the commit the card's cache generation is replaced before the call returns (cache.py),
changed or not: a retry after a failed invalidation repeats it.

Wallet accounts a card needs (a gift card's balance, a card's own sub-account) are opened
before that transaction, after a dry run of the same decision on the unlocked card, so a
refused request opens nothing; the wallet opens them idempotently by card, so a retry finds
them again.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime

import asyncpg

from services.cards import events, store
from services.cards.cache import Generations, card_key
from services.cards.domain import lifecycle, numbers
from services.cards.domain.errors import RefusalError
from services.cards.domain.model import (
    AccountMode,
    Actor,
    Batch,
    Binding,
    Card,
    CardBlockReason,
    CardEvent,
    CardEventType,
    CardState,
    CardType,
    Change,
    Member,
    ReplacementReason,
    Template,
)
from services.cards.transactions import refusal_to_error, run_transaction
from services.cards.wallet import Wallet
from shared.db import Connection
from shared.errors import DomainError, FieldViolation, Reason, invalid_argument

BATCH_SIZE_MAX = 100_000
# Card states before a card is handed out for good (a new card is UNSPECIFIED until created).
_BEFORE_ACTIVE = (CardState.UNSPECIFIED, CardState.GENERATED, CardState.ISSUED)
# A card change decided on the locked card: (card, now) -> the change.
CardDecision = Callable[[Card, datetime], Change]
DRAW_ROUNDS_MAX = 16
NEW_CARD_DRAWS_MAX = 8
HISTORY_GENERATED_NAMESPACE = uuid.UUID("6f1f3c1e-4a49-4d8e-9a51-2f0f6d1c0a01")


@dataclass(frozen=True)
class CardRef:
    card_id: str = ""
    card_number: str = ""

    def describe(self) -> str:
        return self.card_id or self.card_number


@dataclass(frozen=True, kw_only=True)
class NewCard:
    template_id: str
    card_type: CardType
    expire_time: datetime | None
    # Derived from the request's idempotency key, so a retry makes the same card (and finds
    # the wallet accounts opened for it).
    card_id: str


def card_not_found(ref: CardRef, field: str = "card") -> DomainError:
    return DomainError(Reason.CARD_NOT_FOUND, f"no card {ref.describe()!r}", metadata={"field": field})


def template_not_found(template_id: str) -> DomainError:
    return DomainError(
        Reason.RESOURCE_NOT_FOUND,
        f"no card number template {template_id!r}",
        metadata={"resourceType": "CardNumberTemplate", "resourceId": template_id},
    )


# ------------------------------------------------------------------------------------------------
# Templates


async def create_template(pool: asyncpg.Pool, template: Template) -> Template:
    async with pool.acquire() as connection:
        stored = await store.insert_template(connection, template)
    if stored is None:
        raise DomainError(
            Reason.ALREADY_EXISTS,
            f"program {template.program_id!r} already has a template named {template.display_name!r}",
            metadata={"resourceType": "CardNumberTemplate", "resourceId": template.display_name},
        )
    return stored


async def get_template(pool: asyncpg.Pool, template_id: str) -> Template:
    async with pool.acquire() as connection:
        template = await store.get_template(connection, template_id)
    if template is None:
        raise template_not_found(template_id)
    return template


async def list_templates(
    pool: asyncpg.Pool, program_id: str, *, after: tuple[datetime, str] | None, limit: int
) -> list[Template]:
    async with pool.acquire() as connection:
        return await store.list_templates(connection, program_id, after=after, limit=limit)


# ------------------------------------------------------------------------------------------------
# Batches


async def generate_batch(
    pool: asyncpg.Pool,
    *,
    template_id: str,
    card_type: CardType,
    count: int,
    display_name: str,
    expire_time: datetime | None,
    actor: Actor,
) -> Batch:
    """`count` GENERATED cards with new random numbers, all or none (one transaction)."""
    if not 1 <= count <= BATCH_SIZE_MAX:
        raise RuntimeError("invariant violated: batch size is checked at the edge")

    async def work(connection: Connection) -> Batch:
        template = await store.get_template(connection, template_id)
        if template is None:
            raise template_not_found(template_id)
        remaining = template.capacity - template.allocated_count
        if count > remaining // 2:
            raise invalid_argument(
                [FieldViolation("count", f"at most half of the template's remaining numbers ({remaining // 2})")]
            )
        now = await store.database_now(connection)
        batch = await store.insert_batch(
            connection,
            Batch(
                batch_id=str(uuid.uuid4()),
                program_id=template.program_id,
                template_id=template.template_id,
                card_type=card_type,
                card_count=count,
                display_name=display_name,
                expire_time=expire_time,
                create_time=now,
                creator=actor,
            ),
        )
        await _insert_numbers(connection, template, batch, count)
        await store.count_allocated(connection, template.template_id, count)
        return batch

    return await run_transaction(pool, work)


async def _insert_numbers(connection: Connection, template: Template, batch: Batch, count: int) -> None:
    """Draw and insert until `count` cards exist: numbers taken by any card (of any batch,
    committed or concurrent) are skipped by the unique index and drawn again."""
    attempted: set[str] = set()
    inserted = 0
    for _ in range(DRAW_ROUNDS_MAX):
        missing = count - inserted
        if missing == 0:
            return
        # Drawing 100,000 numbers is a quarter second of CPU: off the event loop's own turn.
        drawn = await asyncio.to_thread(numbers.draw_numbers, template, missing, exclude=attempted)
        attempted.update(drawn)
        inserted += await store.insert_batch_cards(connection, batch, drawn)
    raise DomainError(Reason.INTERNAL, f"could not draw {count} free numbers in {DRAW_ROUNDS_MAX} rounds")


async def get_batch(pool: asyncpg.Pool, batch_id: str) -> Batch:
    async with pool.acquire() as connection:
        batch = await store.get_batch(connection, batch_id)
    if batch is None:
        raise DomainError(
            Reason.RESOURCE_NOT_FOUND,
            f"no card batch {batch_id!r}",
            metadata={"resourceType": "CardBatch", "resourceId": batch_id},
        )
    return batch


async def list_batches(
    pool: asyncpg.Pool,
    program_id: str,
    *,
    template_id: str,
    card_type: int,
    before: tuple[datetime, str] | None,
    limit: int,
) -> list[Batch]:
    async with pool.acquire() as connection:
        return await store.list_batches(
            connection, program_id, template_id=template_id, card_type=card_type, before=before, limit=limit
        )


async def batch_numbers(pool: asyncpg.Pool, batch_id: str, *, after: str, limit: int) -> list[str]:
    async with pool.acquire() as connection:
        return await store.batch_numbers(connection, batch_id, after=after, limit=limit)


# ------------------------------------------------------------------------------------------------
# Reading cards


async def _card(connection: Connection, ref: CardRef, *, lock: bool = False, field: str = "card") -> Card:
    card = await store.get_card(connection, card_id=ref.card_id, card_number=ref.card_number, lock=lock)
    if card is None:
        raise card_not_found(ref, field)
    return card


async def get_card(pool: asyncpg.Pool, ref: CardRef) -> Card:
    async with pool.acquire() as connection:
        return await _card(connection, ref)


async def member_cards(
    pool: asyncpg.Pool,
    member_id: str,
    *,
    states: list[int],
    after: tuple[datetime, str] | None,
    limit: int,
) -> list[Card]:
    async with pool.acquire() as connection:
        if await store.get_member(connection, member_id) is None:
            raise DomainError(Reason.MEMBER_NOT_FOUND, f"no member {member_id!r}")
        return await store.member_cards(connection, member_id, states=states, after=after, limit=limit)


async def card_history(
    pool: asyncpg.Pool,
    ref: CardRef,
    *,
    start: datetime | None,
    end: datetime | None,
    after_sequence: int,
    limit: int,
) -> list[CardEvent]:
    """The card's history, oldest first; a batch card's GENERATED entry (sequence 0) is derived
    from its batch."""
    async with pool.acquire() as connection:
        card = await _card(connection, ref)
        history: list[CardEvent] = []
        if after_sequence < 0 and card.batch_id:
            batch = await store.get_batch(connection, card.batch_id)
            if batch is not None and _in_range(card.create_time, start, end):
                history.append(_generated_event(card, batch))
        stored = await store.card_events(
            connection, card.card_id, start=start, end=end, after_sequence=max(0, after_sequence), limit=limit
        )
    return (history + stored)[:limit]


def _in_range(when: datetime, start: datetime | None, end: datetime | None) -> bool:
    return (start is None or when >= start) and (end is None or when < end)


def _generated_event(card: Card, batch: Batch) -> CardEvent:
    return CardEvent(
        event_id=str(uuid.uuid5(HISTORY_GENERATED_NAMESPACE, card.card_id)),
        card_id=card.card_id,
        type=CardEventType.GENERATED,
        from_state=CardState.UNSPECIFIED,
        to_state=CardState.GENERATED,
        actor=batch.creator,
        event_time=card.create_time,
        sequence=0,
    )


# ------------------------------------------------------------------------------------------------
# Changing cards


async def _persist(
    connection: Connection,
    before: Card | None,
    change: Change,
    *,
    member: Member | None,
    new_card: Card | None = None,
) -> None:
    """Save the card if it changed, with its history entries and their outbox events."""
    if before is not None and change.card == before and not change.events:
        return
    await store.save_card(connection, change.card)
    await store.add_card_events(connection, change.events)
    for event in change.events:
        await events.emit_card_event(connection, event, change.card, member=member, new_card=new_card)


async def _binding_member(connection: Connection, binding: Binding | None) -> Member | None:
    if binding is None:
        return None
    member = await store.get_member(connection, binding.member_id)
    if member is None or not member.accounts_open:
        raise DomainError(
            Reason.MEMBER_NOT_FOUND, f"no member {binding.member_id!r}", metadata={"memberId": binding.member_id}
        )
    return member


@dataclass(frozen=True, kw_only=True)
class Handout:
    """What IssueCard or BindCard asks for a card."""

    issuing: bool
    binding: Binding | None
    bearer: bool
    actor: Actor
    comment: str


def _decide_handout(
    card: Card, member: Member | None, handout: Handout, *, gift_account_id: str, now: datetime
) -> Change:
    """Issue (when issuing), give a gift card its account, then activate as bearer or bind."""
    actor, comment = handout.actor, handout.comment
    events: tuple[CardEvent, ...] = ()
    wants_activation = handout.bearer or handout.binding is not None
    if handout.issuing and not (card.state is CardState.ACTIVE and wants_activation):
        if card.state is CardState.ACTIVE:
            raise lifecycle.transition_refused("issue", card.state, CardState.ISSUED)
        issued = lifecycle.issue(card, actor=actor, comment=comment, now=now)
        card, events = issued.card, issued.events
    if card.type is CardType.GIFT and not card.gift_account_id and card.state in _BEFORE_ACTIVE:
        card = replace(card, gift_account_id=gift_account_id)
    step = Change(card)
    if handout.bearer:
        step = lifecycle.activate_bearer(card, actor=actor, comment=comment, now=now)
    elif handout.binding is not None and member is not None:
        step = lifecycle.bind(card, binding=handout.binding, member=member, actor=actor, comment=comment, now=now)
    return Change(step.card, (*events, *step.events))


async def _accounts_for(
    wallet: Wallet, card: Card, member: Member | None, handout: Handout
) -> tuple[str, Binding | None]:
    """(gift account id, binding with its account id): the wallet accounts the card needs."""
    gift_account_id = card.gift_account_id
    if card.type is CardType.GIFT and not gift_account_id and card.state in _BEFORE_ACTIVE:
        gift_account_id = await wallet.open_gift_account(program_id=card.program_id, card_id=card.card_id)
    binding = handout.binding
    if binding is None or member is None or card.type is CardType.GIFT:
        return gift_account_id, binding
    mode = binding.account_mode or AccountMode.MASTER
    if mode is AccountMode.OWN_SUB_ACCOUNT:
        account_id = card.account_id if card.member_id == member.member_id and card.account_mode is mode else ""
        if not account_id:
            account_id = await wallet.open_card_account(
                program_id=card.program_id,
                master_account_id=member.master_account_id,
                card_id=card.card_id,
                label=binding.label,
            )
        return gift_account_id, replace(binding, account_id=account_id)
    if mode is AccountMode.EXISTING_ACCOUNT and not await wallet.is_member_account(
        account_id=binding.account_id, member_id=member.member_id, program_id=member.program_id
    ):
        raise DomainError(
            Reason.ACCOUNT_NOT_FOUND,
            f"account {binding.account_id!r} is not a sub-account of member {member.member_id!r}",
            metadata={"accountId": binding.account_id},
        )
    return gift_account_id, binding


async def hand_out(
    pool: asyncpg.Pool,
    wallet: Wallet,
    generations: Generations,
    *,
    ref: CardRef | None,
    new_card: NewCard | None,
    handout: Handout,
) -> Card:
    """IssueCard and BindCard: an existing card (by ref) or a new one made from a template."""
    async with pool.acquire() as connection:
        now = await store.database_now(connection)
        if new_card is not None and await store.get_card(connection, card_id=new_card.card_id) is not None:
            # An earlier attempt of this request created the card: from here on it is that card.
            ref, new_card = CardRef(card_id=new_card.card_id), None
        preview = (
            await _card(connection, ref) if ref is not None else await _preview_new_card(connection, new_card, now)
        )
        member = await _binding_member(connection, handout.binding)
    try:  # a dry run: a refused request opens no wallet account
        placeholder = (
            replace(handout.binding, account_id=handout.binding.account_id or "-") if handout.binding else None
        )
        _decide_handout(preview, member, replace(handout, binding=placeholder), gift_account_id="-", now=now)
    except RefusalError as refusal:
        raise refusal_to_error(refusal) from None
    gift_account_id, binding = await _accounts_for(wallet, preview, member, handout)
    handout = replace(handout, binding=binding)

    async def work(connection: Connection) -> Card:
        now = await store.database_now(connection)
        if ref is not None:
            card = await _card(connection, ref, lock=True)
            before: Card | None = card
        else:
            card = await _create_new_card(connection, preview)
            before = None
        current_member = await _binding_member(connection, handout.binding)
        try:
            change = _decide_handout(card, current_member, handout, gift_account_id=gift_account_id, now=now)
        except RefusalError as refusal:
            raise refusal_to_error(refusal) from None
        await _persist(connection, before, change, member=current_member)
        return change.card

    card = await run_transaction(pool, work)
    await generations.bump([card_key(card.card_id)])
    return card


async def _preview_new_card(connection: Connection, new_card: NewCard | None, now: datetime) -> Card:
    """The card IssueCard will create: ISSUED, its number not drawn yet."""
    if new_card is None:
        raise RuntimeError("invariant violated: neither a card nor a new card")
    template = await store.get_template(connection, new_card.template_id)
    if template is None:
        raise template_not_found(new_card.template_id)
    if new_card.expire_time is not None and new_card.expire_time <= now:
        raise invalid_argument([FieldViolation("new_card.expire_time", "must be in the future")])
    return Card(
        card_id=new_card.card_id,
        card_number="",
        program_id=template.program_id,
        type=new_card.card_type,
        state=CardState.UNSPECIFIED,
        template_id=template.template_id,
        expire_time=new_card.expire_time,
        create_time=now,
        state_time=now,
        symbology=template.symbology,
        qr_payload_format=template.qr_payload_format,
    )


async def _create_new_card(connection: Connection, preview: Card) -> Card:
    """Insert the previewed card with a new random number (redrawn on the rare collision); it
    is created in state UNSPECIFIED in memory so that its first history entry is its issue."""
    template = await store.get_template(connection, preview.template_id)
    if template is None:
        raise template_not_found(preview.template_id)
    for _ in range(NEW_CARD_DRAWS_MAX):
        (number,) = numbers.draw_numbers(template, 1, exclude=set())
        card = replace(preview, card_number=number)
        if await store.insert_card(connection, replace(card, state=CardState.ISSUED)):
            await store.count_allocated(connection, template.template_id, 1)
            return card
    raise DomainError(Reason.INTERNAL, "could not draw a free card number")


async def _change_one(pool: asyncpg.Pool, generations: Generations, ref: CardRef, decide: CardDecision) -> Card:
    async def work(connection: Connection) -> Card:
        card = await _card(connection, ref, lock=True)
        now = await store.database_now(connection)
        try:
            change = decide(card, now)
        except RefusalError as refusal:
            raise refusal_to_error(refusal) from None
        member = await store.get_member(connection, card.member_id) if card.member_id else None
        await _persist(connection, card, change, member=member)
        return change.card

    card = await run_transaction(pool, work)
    await generations.bump([card_key(card.card_id)])
    return card


async def block_card(
    pool: asyncpg.Pool,
    generations: Generations,
    ref: CardRef,
    *,
    reason: CardBlockReason,
    actor: Actor,
    comment: str,
) -> Card:
    def decide(card: Card, now: datetime) -> Change:
        return lifecycle.block(card, reason=reason, actor=actor, comment=comment, now=now)

    return await _change_one(pool, generations, ref, decide)


async def unblock_card(
    pool: asyncpg.Pool, generations: Generations, ref: CardRef, *, actor: Actor, comment: str
) -> Card:
    def decide(card: Card, now: datetime) -> Change:
        return lifecycle.unblock(card, actor=actor, comment=comment, now=now)

    return await _change_one(pool, generations, ref, decide)


async def replace_card(
    pool: asyncpg.Pool,
    generations: Generations,
    ref: CardRef,
    *,
    new_ref: CardRef | None,
    new_card: NewCard | None,
    reason: ReplacementReason,
    actor: Actor,
    comment: str,
) -> tuple[Card, Card]:
    """The old card REPLACED, its successor ACTIVE on the same member and accounts."""
    async with pool.acquire() as connection:
        now = await store.database_now(connection)
        preview = None if new_ref is not None else await _preview_replacement(connection, new_card, now)

    async def work(connection: Connection) -> tuple[Card, Card]:
        now = await store.database_now(connection)
        old_id = (await _card(connection, ref)).card_id
        if new_ref is not None:
            new_id = (await _card(connection, new_ref, field="new_card_number")).card_id
            locked = await _lock_in_order(connection, [old_id, new_id])
            old, new, created = locked[old_id], locked[new_id], False
        elif preview is not None:
            old = (await _lock_in_order(connection, [old_id]))[old_id]
            new, created = await _existing_or_created(connection, preview, old)
        else:
            raise RuntimeError("invariant violated: neither a new card nor a new card number")
        member = await store.get_member(connection, old.member_id) if old.member_id else None
        issued = lifecycle.issue(new, actor=actor, comment=comment, now=now) if created else Change(new)
        try:
            retired, successor = lifecycle.replace_card(
                old, issued.card, member=member, reason=reason, actor=actor, comment=comment, now=now
            )
        except RefusalError as refusal:
            raise refusal_to_error(refusal) from None
        successor = Change(successor.card, (*issued.events, *successor.events))
        await _persist(connection, None if created else new, successor, member=member)
        await _persist(connection, old, retired, member=member, new_card=successor.card)
        return retired.card, successor.card

    old, new = await run_transaction(pool, work)
    await generations.bump([card_key(old.card_id), card_key(new.card_id)])
    return old, new


async def _preview_replacement(connection: Connection, new_card: NewCard | None, now: datetime) -> Card:
    if new_card is None:
        raise RuntimeError("invariant violated: neither a new card nor a new card number")
    existing = await store.get_card(connection, card_id=new_card.card_id)
    if existing is not None:
        return existing
    return await _preview_new_card(connection, new_card, now)


async def _existing_or_created(connection: Connection, preview: Card, old: Card) -> tuple[Card, bool]:
    """The replacement made from a template: created now, or found (a repeated call)."""
    if preview.card_number:
        found = (await _lock_in_order(connection, [preview.card_id])).get(preview.card_id)
        if found is None:
            raise RuntimeError("invariant violated: a created card vanished")
        return found, False
    return await _create_new_card(connection, preview), True


async def _lock_in_order(connection: Connection, card_ids: list[str]) -> dict[str, Card]:
    """Lock cards in id order (every writer does), so two replacements never deadlock."""
    locked = {}
    for card_id in sorted(set(card_ids)):
        card = await store.get_card(connection, card_id=card_id, lock=True)
        if card is None:
            raise card_not_found(CardRef(card_id=card_id))
        locked[card_id] = card
    return locked


async def expire_due_cards(pool: asyncpg.Pool, generations: Generations, *, limit: int) -> int:
    """Background: move cards past their expire_time to EXPIRED (SKIP LOCKED: several processes
    share the work). Returns how many."""

    async def work(connection: Connection) -> list[str]:
        now = await store.database_now(connection)
        expired = []
        for card in await store.cards_to_expire(connection, limit=limit):
            change = lifecycle.expire(card, now=now)
            member = await store.get_member(connection, card.member_id) if card.member_id else None
            await _persist(connection, card, change, member=member)
            expired.append(card.card_id)
        return expired

    card_ids = await run_transaction(pool, work)
    await generations.bump([card_key(card_id) for card_id in card_ids])
    return len(card_ids)
