"""What an identification may be used for: the rule behind Resolution.usable.

Usable = the card (if any) is ACTIVE and before its expire_time, the member (if any) is ACTIVE,
and a card that is not GIFT has a member. The first reason that fails is reported, card
reasons before member reasons (the register can then offer another way to identify).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from services.cards.domain.lifecycle import effective_state
from services.cards.domain.model import Card, CardState, CardType, IdentifierType, Member, MemberState


@dataclass(frozen=True)
class Subject:
    """What an identifier points to, as read from the database (and cached)."""

    program_id: str
    card: Card | None
    member: Member | None


@dataclass(frozen=True)
class Verdict:
    usable: bool
    # A loyalty.common.v1.ErrorReason name, "" when usable.
    refusal: str
    card_state: CardState


_CARD_REFUSALS = {
    CardState.BLOCKED: "CARD_BLOCKED",
    CardState.EXPIRED: "CARD_EXPIRED",
    CardState.GENERATED: "CARD_NOT_ACTIVE",
    CardState.ISSUED: "CARD_NOT_ACTIVE",
    CardState.REPLACED: "CARD_NOT_ACTIVE",
}
_MEMBER_REFUSALS = {MemberState.BLOCKED: "MEMBER_BLOCKED", MemberState.CLOSED: "MEMBER_CLOSED"}


def judge(subject: Subject, now: datetime) -> Verdict:
    card, member = subject.card, subject.member
    card_state = effective_state(card, now) if card is not None else CardState.UNSPECIFIED
    refusal = ""
    if card is not None:
        refusal = _CARD_REFUSALS.get(card_state, "")
        if not refusal and member is None and card.type is not CardType.GIFT:
            refusal = "CARD_NOT_ACTIVE"
    if not refusal and member is not None:
        refusal = _MEMBER_REFUSALS.get(member.state, "")
    return Verdict(usable=not refusal, refusal=refusal, card_state=card_state)


def card_account_id(card: Card | None) -> str:
    """The single sub-account a card earns on and spends from; "" for MASTER, GIFT, unbound."""
    if card is None or card.type is CardType.GIFT or not card.member_id:
        return ""
    return card.account_id


class Lookup(StrEnum):
    """How an identifier is looked up (a QR token is looked up as the card or member inside)."""

    CARD_NUMBER = "card_number"
    CARD_ID = "card_id"
    PHONE = "phone"
    MEMBER_ID = "member_id"
    QR_TOKEN = "qr_token"


# What the customer presented, as Resolution.identified_by reports it.
IDENTIFIED_BY = {
    Lookup.CARD_NUMBER: IdentifierType.CARD_NUMBER,
    Lookup.PHONE: IdentifierType.PHONE,
    Lookup.MEMBER_ID: IdentifierType.MEMBER_ID,
    Lookup.QR_TOKEN: IdentifierType.QR_TOKEN,
}


@dataclass(frozen=True)
class Identifier:
    """A normalised identifier: what the cache and the store look up."""

    program_id: str
    kind: Lookup
    value: str
