"""Proto <-> domain for the cards service. No rules here: only shapes, enums and times."""

from __future__ import annotations

from datetime import UTC, datetime

from google.protobuf.timestamp_pb2 import Timestamp
from loyalty.cards.v1 import cards_pb2
from loyalty.common.v1 import errors_pb2, types_pb2

from services.cards.domain import numbers
from services.cards.domain.model import (
    Actor,
    ActorType,
    Batch,
    BirthDate,
    Card,
    CardEvent,
    ChannelConsent,
    Member,
    Template,
)
from services.cards.domain.profile import display_name, mask_phone
from services.cards.domain.resolution import Subject, Verdict, card_account_id


def to_time(timestamp: Timestamp) -> datetime:
    return timestamp.ToDatetime(tzinfo=UTC)


def optional_time(message: object, field: str) -> datetime | None:
    return to_time(getattr(message, field)) if message.HasField(field) else None  # type: ignore[attr-defined]


def set_time(timestamp: Timestamp, value: datetime | None) -> None:
    if value is not None:
        timestamp.FromDatetime(value)


def actor(message: types_pb2.Actor) -> Actor:
    return Actor(ActorType(message.type), message.id)


def actor_message(value: Actor | None) -> types_pb2.Actor | None:
    if value is None:
        return None
    return types_pb2.Actor(type=int(value.type), id=value.id)  # type: ignore[arg-type]


def birth_date(message: cards_pb2.Date) -> BirthDate:
    return BirthDate(message.year, message.month, message.day)


def date_message(value: BirthDate | None) -> cards_pb2.Date | None:
    return cards_pb2.Date(year=value.year, month=value.month, day=value.day) if value else None


def _consent_message(consent: ChannelConsent) -> cards_pb2.ChannelConsent:
    message = cards_pb2.ChannelConsent(status=int(consent.status))  # type: ignore[arg-type]
    set_time(message.update_time, consent.update_time)
    actor_value = actor_message(consent.actor)
    if actor_value is not None:
        message.actor.CopyFrom(actor_value)
    return message


def member_message(member: Member) -> cards_pb2.Member:
    profile = member.profile
    message = cards_pb2.Member(
        member_id=member.member_id,
        program_id=member.program_id,
        partner_id=member.partner_id,
        phone=profile.phone,
        first_name=profile.first_name,
        last_name=profile.last_name,
        middle_name=profile.middle_name,
        email=profile.email,
        language_code=profile.language_code,
        consents=cards_pb2.Consents(
            sms=_consent_message(member.consents.sms),
            email=_consent_message(member.consents.email),
            push=_consent_message(member.consents.push),
        ),
        state=int(member.state),  # type: ignore[arg-type]
        block_reason=int(member.block_reason),  # type: ignore[arg-type]
        state_comment=member.state_comment,
        state_actor=actor_message(member.state_actor),
        master_account_id=member.master_account_id,
        registration_channel=member.registration_channel,  # type: ignore[arg-type]
        registration_outlet_id=member.registration_outlet_id,
        segments=profile.segments,
    )
    birth = date_message(profile.birth_date)
    if birth is not None:
        message.birth_date.CopyFrom(birth)
    set_time(message.state_time, member.state_time)
    set_time(message.create_time, member.create_time)
    set_time(message.update_time, member.update_time)
    return message


def template_message(template: Template) -> cards_pb2.CardNumberTemplate:
    message = cards_pb2.CardNumberTemplate(
        template_id=template.template_id,
        program_id=template.program_id,
        display_name=template.display_name,
        prefix=template.prefix,
        length=template.length,
        check_digit_scheme=int(template.check_digit_scheme),  # type: ignore[arg-type]
        barcode_symbology=int(template.symbology),  # type: ignore[arg-type]
        qr_payload_format=template.qr_payload_format,
        capacity=template.capacity,
        allocated_count=template.allocated_count,
        creator=actor_message(template.creator),
    )
    set_time(message.create_time, template.create_time)
    return message


def batch_message(batch: Batch) -> cards_pb2.CardBatch:
    message = cards_pb2.CardBatch(
        batch_id=batch.batch_id,
        program_id=batch.program_id,
        template_id=batch.template_id,
        card_type=int(batch.card_type),  # type: ignore[arg-type]
        card_count=batch.card_count,
        display_name=batch.display_name,
        creator=actor_message(batch.creator),
    )
    set_time(message.expire_time, batch.expire_time)
    set_time(message.create_time, batch.create_time)
    return message


def card_message(card: Card) -> cards_pb2.Card:
    message = cards_pb2.Card(
        card_id=card.card_id,
        card_number=card.card_number,
        program_id=card.program_id,
        type=int(card.type),  # type: ignore[arg-type]
        state=int(card.state),  # type: ignore[arg-type]
        template_id=card.template_id,
        batch_id=card.batch_id,
        member_id=card.member_id,
        account_mode=int(card.account_mode),  # type: ignore[arg-type]
        account_id=card.account_id,
        gift_account_id=card.gift_account_id,
        label=card.label,
        barcode_symbology=int(card.symbology),  # type: ignore[arg-type]
        barcode_payload=card.card_number,
        qr_payload=numbers.qr_payload(card.qr_payload_format, card.card_number),
        replaced_by_card_id=card.replaced_by_card_id,
        replaces_card_id=card.replaces_card_id,
    )
    if card.block is not None:
        block = card.block
        message.block.CopyFrom(
            cards_pb2.CardBlock(
                reason=int(block.reason),  # type: ignore[arg-type]
                comment=block.comment,
                actor=actor_message(block.actor),
                previous_state=int(block.previous_state),  # type: ignore[arg-type]
            )
        )
        set_time(message.block.block_time, block.block_time)
    set_time(message.expire_time, card.expire_time)
    set_time(message.create_time, card.create_time)
    set_time(message.issue_time, card.issue_time)
    set_time(message.bind_time, card.bind_time)
    set_time(message.state_time, card.state_time)
    return message


def card_event_message(event: CardEvent) -> cards_pb2.CardEvent:
    message = cards_pb2.CardEvent(
        event_id=event.event_id,
        card_id=event.card_id,
        type=int(event.type),  # type: ignore[arg-type]
        from_state=int(event.from_state),  # type: ignore[arg-type]
        to_state=int(event.to_state),  # type: ignore[arg-type]
        block_reason=int(event.block_reason),  # type: ignore[arg-type]
        replacement_reason=int(event.replacement_reason),  # type: ignore[arg-type]
        comment=event.comment,
        actor=actor_message(event.actor),
        member_id=event.member_id,
        related_card_id=event.related_card_id,
    )
    set_time(message.event_time, event.event_time)
    return message


def resolution_message(subject: Subject, verdict: Verdict, identified_by: int) -> cards_pb2.Resolution:
    """The Resolution of a subject judged now (cards and members as cached or just read)."""
    card, member = subject.card, subject.member
    message = cards_pb2.Resolution(
        identified_by=identified_by,  # type: ignore[arg-type]
        program_id=subject.program_id,
        usable=verdict.usable,
        card_state=int(verdict.card_state),  # type: ignore[arg-type]
    )
    if verdict.refusal:
        message.refusal_reason = reason_number(verdict.refusal)  # type: ignore[assignment]
    if card is not None:
        message.card_id = card.card_id
        message.card_number = card.card_number
        message.card_type = int(card.type)  # type: ignore[assignment]
        message.account_id = card_account_id(card)
        message.gift_account_id = card.gift_account_id
        if card.block is not None and verdict.card_state == card.state:
            message.card_block_reason = int(card.block.reason)  # type: ignore[assignment]
    if member is not None:
        profile = member.profile
        message.member_id = member.member_id
        message.member_state = int(member.state)  # type: ignore[assignment]
        message.member_display_name = display_name(profile.first_name, profile.last_name)
        message.master_account_id = member.master_account_id
        message.member_masked_phone = mask_phone(profile.phone)
        message.member_segments.extend(profile.segments)
        message.member_accounts.extend(
            cards_pb2.MemberAccount(account_id=account.account_id, kind=account.kind)
            for account in member.wallet_accounts
        )
        set_time(message.member_create_time, member.create_time)
        birth = date_message(profile.birth_date)
        if birth is not None:
            message.member_birth_date.CopyFrom(birth)
    return message


def reason_number(name: str) -> int:
    """The loyalty.common.v1.ErrorReason number of a reason name ("CARD_BLOCKED")."""
    return int(errors_pb2.ErrorReason.Value(f"ERROR_REASON_{name}"))
