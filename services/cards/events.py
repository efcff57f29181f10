"""Outbox events of the cards service, written in the transaction of the change they describe
(shared/outbox.py publishes them to the Redis stream; consumers drop duplicates by event_id).

Payloads follow the platform's convention: a JSON object with the event's data, including the
template variables loyalty.notifications.v1.EventType lists for the type (`register_time` and
`masked_card_number` for member.registered; `masked_card_number`, `reason`, `block_time` for
card.blocked). Member events carry what notifications needs to reach the member (phone, e-mail,
language, consent per channel), so it never has to read this service's database. Card numbers
travel masked; events about a member (and about a bound card) are partitioned by member id so a
consumer sees one member's events in order, events of unbound cards by card id.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from services.cards.domain.model import CHANNELS, Actor, Card, CardEvent, CardEventType, ConsentStatus, Member
from shared import outbox
from shared.db import Connection

# Which card history entries leave the service as events (GENERATED stays inside: a batch of
# 100,000 cards is not 100,000 events; REPLACEMENT travels inside card.replaced).
CARD_EVENT_TYPES = {
    CardEventType.ISSUED: "card.issued",
    CardEventType.ACTIVATED: "card.issued",
    CardEventType.BOUND: "card.bound",
    CardEventType.BLOCKED: "card.blocked",
    CardEventType.UNBLOCKED: "card.unblocked",
    CardEventType.REPLACED: "card.replaced",
    CardEventType.EXPIRED: "card.expired",
}


def iso(when: datetime | None) -> str:
    return when.isoformat().replace("+00:00", "Z") if when is not None else ""


def masked_card_number(number: str) -> str:
    """All but the last four digits hidden, as in the logs."""
    return "*" * max(0, len(number) - 4) + number[-4:]


def member_data(member: Member) -> dict[str, Any]:
    profile = member.profile
    return {
        "member_id": member.member_id,
        "program_id": member.program_id,
        "partner_id": member.partner_id,
        "phone": profile.phone,
        "email": profile.email,
        "first_name": profile.first_name,
        "language_code": profile.language_code,
        "consents": {channel: _consent_name(getattr(member.consents, channel).status) for channel in CHANNELS},
        "state": member.state.name,
        "block_reason": member.block_reason.name if member.block_reason else "",
        "master_account_id": member.master_account_id,
        "register_time": iso(member.create_time),
    }


def _consent_name(status: ConsentStatus) -> str:
    return status.name if status is not ConsentStatus.UNSPECIFIED else ""


def _actor(actor: Actor) -> dict[str, str]:
    return {"actor_type": actor.type.name, "actor_id": actor.id}


async def emit_member_event(
    connection: Connection, event_type: str, member: Member, *, actor: Actor, now: datetime
) -> None:
    data = {**member_data(member), **_actor(actor), "event_time": iso(now), "masked_card_number": ""}
    await outbox.add_event(connection, event_type=event_type, partition_key=member.member_id, data=data)


def card_data(card: Card) -> dict[str, Any]:
    return {
        "card_id": card.card_id,
        "masked_card_number": masked_card_number(card.card_number),
        "program_id": card.program_id,
        "card_type": card.type.name,
        "card_state": card.state.name,
        "member_id": card.member_id,
        "account_mode": card.account_mode.name if card.account_mode else "",
        "account_id": card.account_id,
        "gift_account_id": card.gift_account_id,
    }


async def emit_card_event(
    connection: Connection,
    event: CardEvent,
    card: Card,
    *,
    member: Member | None,
    new_card: Card | None = None,
) -> None:
    """The outbox event of a card history entry, if that kind of entry is published."""
    event_type = CARD_EVENT_TYPES.get(event.type)
    if event_type is None:
        return
    data: dict[str, Any] = {
        **card_data(card),
        **_actor(event.actor),
        "event_time": iso(event.event_time),
        "from_state": event.from_state.name,
        "comment": event.comment,
    }
    if event.type is CardEventType.BLOCKED:
        data.update(reason=event.block_reason.name, block_time=iso(event.event_time))
    if new_card is not None:
        data.update(
            reason=event.replacement_reason.name,
            new_card_id=new_card.card_id,
            new_masked_card_number=masked_card_number(new_card.card_number),
        )
    if member is not None:
        data.update(phone=member.profile.phone, first_name=member.profile.first_name)
    await outbox.add_event(
        connection,
        event_type=event_type,
        partition_key=card.member_id or card.card_id,
        data=data,
        event_id=uuid.UUID(event.event_id),
    )
