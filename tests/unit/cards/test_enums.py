"""The domain's enums mirror the protos number for number (the edge maps them without tables)."""

from __future__ import annotations

from enum import IntEnum

import pytest
from google.protobuf.internal.enum_type_wrapper import EnumTypeWrapper
from loyalty.cards.v1 import cards_pb2
from loyalty.common.v1 import errors_pb2, types_pb2

from services.cards.domain import model
from services.cards.domain.resolution import IDENTIFIED_BY, Lookup
from shared.errors import Reason

PAIRS = [
    (model.CardState, cards_pb2.Card.State, "STATE_"),
    (model.CardType, cards_pb2.CardType, "CARD_TYPE_"),
    (model.AccountMode, cards_pb2.CardAccountMode, "CARD_ACCOUNT_MODE_"),
    (model.CardBlockReason, cards_pb2.CardBlockReason, "CARD_BLOCK_REASON_"),
    (model.ReplacementReason, cards_pb2.CardReplacementReason, "CARD_REPLACEMENT_REASON_"),
    (model.CardEventType, cards_pb2.CardEventType, "CARD_EVENT_TYPE_"),
    (model.MemberState, cards_pb2.Member.State, "STATE_"),
    (model.MemberBlockReason, cards_pb2.MemberBlockReason, "MEMBER_BLOCK_REASON_"),
    (model.ConsentStatus, cards_pb2.ConsentStatus, "CONSENT_STATUS_"),
    (model.CheckDigitScheme, cards_pb2.CheckDigitScheme, "CHECK_DIGIT_SCHEME_"),
    (model.Symbology, cards_pb2.BarcodeSymbology, "BARCODE_SYMBOLOGY_"),
    (model.ActorType, types_pb2.ActorType, "ACTOR_TYPE_"),
    (model.IdentifierType, cards_pb2.IdentifierType, "IDENTIFIER_TYPE_"),
]


@pytest.mark.parametrize(("ours", "theirs", "prefix"), PAIRS, ids=[p[0].__name__ for p in PAIRS])
def test_enum_mirrors_proto(ours: type[IntEnum], theirs: EnumTypeWrapper, prefix: str) -> None:
    proto = {name.removeprefix(prefix): number for name, number in theirs.items()}
    assert {member.name: member.value for member in ours} == proto


def test_every_lookup_but_card_id_reports_how_the_customer_identified() -> None:
    assert set(IDENTIFIED_BY) == set(Lookup) - {Lookup.CARD_ID}


def test_refusal_reasons_used_by_the_domain_exist() -> None:
    names = {name.removeprefix("ERROR_REASON_") for name in errors_pb2.ErrorReason.keys()}  # noqa: SIM118 (an EnumTypeWrapper, not a dict)
    for reason in ("CARD_BLOCKED", "CARD_NOT_ACTIVE", "CARD_EXPIRED", "MEMBER_BLOCKED", "MEMBER_CLOSED"):
        assert reason in names and Reason(reason)
