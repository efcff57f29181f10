"""Resolution.usable and its refusal reason, as a table over card and member states."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

import pytest

from services.cards.domain.model import CardState, CardType, MemberState
from services.cards.domain.resolution import Subject, card_account_id, judge
from tests.unit.cards.test_lifecycle_table import MEMBER_ID, NOW, card, member

S, M = CardState, MemberState

# (card state or None, card bound, member state or None, usable, refusal)
TABLE = [
    (S.ACTIVE, True, M.ACTIVE, True, ""),
    (S.ACTIVE, True, M.BLOCKED, False, "MEMBER_BLOCKED"),
    (S.ACTIVE, True, M.CLOSED, False, "MEMBER_CLOSED"),
    (S.BLOCKED, True, M.ACTIVE, False, "CARD_BLOCKED"),
    (S.BLOCKED, True, M.BLOCKED, False, "CARD_BLOCKED"),  # the card's reason comes first
    (S.GENERATED, False, None, False, "CARD_NOT_ACTIVE"),
    (S.ISSUED, False, None, False, "CARD_NOT_ACTIVE"),
    (S.REPLACED, True, M.ACTIVE, False, "CARD_NOT_ACTIVE"),
    (S.EXPIRED, True, M.ACTIVE, False, "CARD_EXPIRED"),
    (S.ACTIVE, False, None, False, "CARD_NOT_ACTIVE"),  # a non-gift card without a member
    (None, False, M.ACTIVE, True, ""),  # by phone or member id
    (None, False, M.BLOCKED, False, "MEMBER_BLOCKED"),
    (None, False, M.CLOSED, False, "MEMBER_CLOSED"),
]


@pytest.mark.parametrize(("card_state", "bound", "member_state", "usable", "refusal"), TABLE)
def test_usability_table(
    card_state: CardState | None, bound: bool, member_state: MemberState | None, usable: bool, refusal: str
) -> None:
    subject_card = card(card_state, bound_to=MEMBER_ID if bound else "") if card_state else None
    subject_member = member(state=member_state) if member_state else None
    verdict = judge(Subject("p1", subject_card, subject_member), NOW)
    assert (verdict.usable, verdict.refusal) == (usable, refusal)


def test_a_bearer_gift_card_is_usable_without_a_member() -> None:
    gift = card(S.ACTIVE, card_type=CardType.GIFT)
    assert judge(Subject("p1", gift, None), NOW).usable


def test_a_card_past_its_expire_time_is_refused_at_once() -> None:
    due = card(S.ACTIVE, bound_to=MEMBER_ID, expire_time=NOW)
    verdict = judge(Subject("p1", due, member()), NOW)
    assert (verdict.usable, verdict.refusal, verdict.card_state) == (False, "CARD_EXPIRED", S.EXPIRED)
    later = replace(due, expire_time=NOW + timedelta(seconds=1))
    assert judge(Subject("p1", later, member()), NOW).usable


def test_only_a_card_with_its_own_account_names_a_single_account() -> None:
    own = card(S.ACTIVE, bound_to=MEMBER_ID, account_id="acc-7")
    assert card_account_id(own) == "acc-7"
    assert card_account_id(card(S.ACTIVE, bound_to=MEMBER_ID)) == ""
    assert card_account_id(card(S.ACTIVE, card_type=CardType.GIFT)) == ""
    assert card_account_id(None) == ""
