"""Outbox events of the cards service: written in the transaction of the change they describe.

The payload of every event is a serialized `loyalty.cards.v1.CardsEvent`. Events about a member
(and about a bound card) are partitioned by member id so that a consumer sees one member's
events in order; events of unbound cards by card id.
"""

from __future__ import annotations

import uuid
from datetime import datetime

from loyalty.cards.v1 import cards_pb2

from services.cards import mapping, store
from services.cards.domain.model import Actor, Card, CardEvent, CardEventType, Member
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


async def emit_member_event(
    connection: Connection, event_type: str, member: Member, *, actor: Actor, now: datetime
) -> None:
    event_id = str(uuid.uuid4())
    message = cards_pb2.CardsEvent(
        event_id=event_id,
        event_type=event_type,
        actor=mapping.actor_message(actor),
        member=mapping.member_message(member),
    )
    mapping.set_time(message.event_time, now)
    await store.add_outbox_event(
        connection,
        event_id=event_id,
        event_type=event_type,
        partition_key=member.member_id,
        payload=message.SerializeToString(deterministic=True),
    )


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
    message = cards_pb2.CardsEvent(
        event_id=event.event_id,
        event_type=event_type,
        actor=mapping.actor_message(event.actor),
        card=mapping.card_message(card),
        card_event=mapping.card_event_message(event),
    )
    if member is not None:
        message.member.CopyFrom(mapping.member_message(member))
    if new_card is not None:
        message.new_card.CopyFrom(mapping.card_message(new_card))
    mapping.set_time(message.event_time, event.event_time)
    await store.add_outbox_event(
        connection,
        event_id=event.event_id,
        event_type=event_type,
        partition_key=card.member_id or card.card_id,
        payload=message.SerializeToString(deterministic=True),
    )
