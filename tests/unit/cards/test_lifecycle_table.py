"""Table-driven tests of the card and member state machines (services/cards/domain/lifecycle.py).

Every row: an operation applied to a card in a given state, and what must come of it: the state
after and the history entries it adds, a no-op (natural idempotency), or the refusal with its
reason and the states it names.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from services.cards.domain import lifecycle
from services.cards.domain.errors import RefusalError
from services.cards.domain.model import (
    AccountMode,
    Actor,
    ActorType,
    Binding,
    Block,
    Card,
    CardBlockReason,
    CardEventType,
    CardState,
    CardType,
    Member,
    MemberBlockReason,
    MemberState,
    Profile,
    ReplacementReason,
)
from services.cards.domain.model import Consents as ConsentsValue

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
OPERATOR = Actor(ActorType.OPERATOR, "olga")
S = CardState
MEMBER_ID = "11111111-1111-1111-1111-111111111111"
OTHER_MEMBER_ID = "22222222-2222-2222-2222-222222222222"


def member(member_id: str = MEMBER_ID, state: MemberState = MemberState.ACTIVE, program_id: str = "p1") -> Member:
    return Member(
        member_id=member_id,
        program_id=program_id,
        partner_id="",
        profile=Profile(phone="+79123456789", first_name="Anna", last_name="Petrova"),
        consents=ConsentsValue(),
        state=state,
        block_reason=MemberBlockReason.FRAUD_SUSPECTED if state is MemberState.BLOCKED else MemberBlockReason(0),
        state_comment="",
        state_actor=OPERATOR,
        state_time=T0,
        master_account_id="master-1",
        registration_channel=1,
        registration_outlet_id="",
        create_time=T0,
        update_time=T0,
    )


def card(state: CardState, *, card_type: CardType = CardType.BONUS, bound_to: str = "", **extra: object) -> Card:
    block = None
    if state is S.BLOCKED:
        block = Block(reason=CardBlockReason.LOST, comment="", actor=OPERATOR, block_time=T0, previous_state=S.ACTIVE)
    values: dict[str, object] = {
        "card_id": f"card-{state.name.lower()}",
        "card_number": "7788000000000006",
        "program_id": "p1",
        "type": card_type,
        "state": state,
        "template_id": "t1",
        "member_id": bound_to,
        "account_mode": AccountMode.MASTER if bound_to else AccountMode.UNSPECIFIED,
        "gift_account_id": "gift-1" if card_type is CardType.GIFT and state is not S.GENERATED else "",
        "block": block,
        "replaced_by_card_id": "card-next" if state is S.REPLACED else "",
        "create_time": T0,
        "state_time": T0,
    }
    values.update(extra)
    return Card(**values)  # type: ignore[arg-type]


def master_binding(member_id: str = MEMBER_ID) -> Binding:
    return Binding(member_id=member_id, account_mode=AccountMode.MASTER)


NOW = T0 + timedelta(hours=1)


def apply(operation: str, subject: Card):  # type: ignore[no-untyped-def]
    if operation == "issue":
        return lifecycle.issue(subject, actor=OPERATOR, comment="", now=NOW)
    if operation == "bind":
        return lifecycle.bind(subject, binding=master_binding(), member=member(), actor=OPERATOR, comment="", now=NOW)
    if operation == "block":
        return lifecycle.block(subject, reason=CardBlockReason.STOLEN, actor=OPERATOR, comment="x", now=NOW)
    if operation == "unblock":
        return lifecycle.unblock(subject, actor=OPERATOR, comment="", now=NOW)
    raise AssertionError(operation)


# (operation, state before, expected): a CardState = the state after with one or more entries;
# "noop" = unchanged and nothing recorded; a string = the refusal's reason.
CARD_TABLE = [
    ("issue", S.GENERATED, S.ISSUED),
    ("issue", S.ISSUED, "noop"),
    ("issue", S.ACTIVE, "INVALID_STATE_TRANSITION"),
    ("issue", S.BLOCKED, "INVALID_STATE_TRANSITION"),
    ("issue", S.REPLACED, "INVALID_STATE_TRANSITION"),
    ("issue", S.EXPIRED, "INVALID_STATE_TRANSITION"),
    ("bind", S.GENERATED, S.ACTIVE),
    ("bind", S.ISSUED, S.ACTIVE),
    ("bind", S.BLOCKED, "INVALID_STATE_TRANSITION"),
    ("bind", S.REPLACED, "INVALID_STATE_TRANSITION"),
    ("bind", S.EXPIRED, "INVALID_STATE_TRANSITION"),
    ("block", S.GENERATED, S.BLOCKED),
    ("block", S.ISSUED, S.BLOCKED),
    ("block", S.ACTIVE, S.BLOCKED),
    ("block", S.BLOCKED, "noop"),
    ("block", S.REPLACED, "INVALID_STATE_TRANSITION"),
    ("block", S.EXPIRED, "INVALID_STATE_TRANSITION"),
    ("unblock", S.BLOCKED, S.ACTIVE),
    ("unblock", S.GENERATED, "noop"),
    ("unblock", S.ISSUED, "noop"),
    ("unblock", S.ACTIVE, "noop"),
    ("unblock", S.REPLACED, "INVALID_STATE_TRANSITION"),
    ("unblock", S.EXPIRED, "INVALID_STATE_TRANSITION"),
]


@pytest.mark.parametrize(("operation", "before", "expected"), CARD_TABLE, ids=lambda v: getattr(v, "name", str(v)))
def test_card_transition_table(operation: str, before: CardState, expected: object) -> None:
    subject = card(before, bound_to=MEMBER_ID if before is S.ACTIVE else "")
    if isinstance(expected, str) and expected != "noop":
        with pytest.raises(RefusalError) as refused:
            apply(operation, subject)
        assert refused.value.reason == expected
        assert refused.value.metadata["fromState"] == before.name
        return
    change = apply(operation, subject)
    if expected == "noop":
        assert change.card == subject and change.events == ()
        return
    assert change.card.state is expected
    assert change.events, "a change records history"
    assert change.events[0].from_state is before
    assert change.events[-1].to_state is expected
    assert all(e.actor == OPERATOR for e in change.events)
    assert change.card.state_time == NOW


def test_binding_a_generated_card_issues_it_on_the_way_two_entries() -> None:
    change = apply("bind", card(S.GENERATED))
    assert [e.type for e in change.events] == [CardEventType.ISSUED, CardEventType.BOUND]
    assert [(e.from_state, e.to_state) for e in change.events] == [(S.GENERATED, S.ISSUED), (S.ISSUED, S.ACTIVE)]
    assert change.card.member_id == MEMBER_ID and change.card.bind_time == NOW and change.card.issue_time == NOW


def test_block_remembers_the_state_and_unblock_returns_to_it() -> None:
    for before in (S.GENERATED, S.ISSUED, S.ACTIVE):
        blocked = lifecycle.block(
            card(before), reason=CardBlockReason.LOST, actor=OPERATOR, comment="lost it", now=NOW
        ).card
        assert blocked.block is not None and blocked.block.previous_state is before
        assert blocked.block.reason is CardBlockReason.LOST and blocked.block.comment == "lost it"
        unblocked = lifecycle.unblock(blocked, actor=OPERATOR, comment="", now=NOW).card
        assert unblocked.state is before and unblocked.block is None


def test_blocking_twice_keeps_the_first_reason() -> None:
    first = lifecycle.block(card(S.ACTIVE), reason=CardBlockReason.LOST, actor=OPERATOR, comment="a", now=NOW)
    second = lifecycle.block(first.card, reason=CardBlockReason.STOLEN, actor=OPERATOR, comment="b", now=NOW)
    assert second.events == () and second.card.block == first.card.block


BIND_REFUSALS = [
    ("bound to another member", card(S.ACTIVE, bound_to=OTHER_MEMBER_ID), member(), "CARD_ALREADY_BOUND"),
    ("issued but bound elsewhere", card(S.BLOCKED, bound_to=OTHER_MEMBER_ID), member(), "CARD_ALREADY_BOUND"),
    ("member blocked", card(S.ISSUED), member(state=MemberState.BLOCKED), "MEMBER_BLOCKED"),
    ("member closed", card(S.ISSUED), member(state=MemberState.CLOSED), "MEMBER_CLOSED"),
    ("another program", card(S.ISSUED), member(program_id="p2"), "INVALID_STATE_TRANSITION"),
    ("expired", card(S.ISSUED, expire_time=T0), member(), "CARD_EXPIRED"),
]


@pytest.mark.parametrize(
    ("subject", "owner", "reason"), [r[1:] for r in BIND_REFUSALS], ids=[r[0] for r in BIND_REFUSALS]
)
def test_bind_refusals(subject: Card, owner: Member, reason: str) -> None:
    with pytest.raises(RefusalError) as refused:
        lifecycle.bind(subject, binding=master_binding(), member=owner, actor=OPERATOR, comment="", now=NOW)
    assert refused.value.reason == reason


def test_binding_again_the_same_way_is_a_no_op_and_another_way_is_refused() -> None:
    bound = card(S.ACTIVE, bound_to=MEMBER_ID)
    again = lifecycle.bind(bound, binding=master_binding(), member=member(), actor=OPERATOR, comment="", now=NOW)
    assert again.events == () and again.card == bound
    other_mode = Binding(member_id=MEMBER_ID, account_mode=AccountMode.EXISTING_ACCOUNT, account_id="acc-9")
    with pytest.raises(RefusalError) as refused:
        lifecycle.bind(bound, binding=other_mode, member=member(), actor=OPERATOR, comment="", now=NOW)
    assert refused.value.reason == "INVALID_STATE_TRANSITION"


def test_a_bearer_gift_card_may_be_bound_later_and_stays_on_its_gift_account() -> None:
    bearer = lifecycle.activate_bearer(card(S.ISSUED, card_type=CardType.GIFT), actor=OPERATOR, comment="", now=NOW)
    assert bearer.card.state is S.ACTIVE and not bearer.card.member_id
    assert [e.type for e in bearer.events] == [CardEventType.ACTIVATED]
    bound = lifecycle.bind(bearer.card, binding=master_binding(), member=member(), actor=OPERATOR, comment="", now=NOW)
    assert bound.card.state is S.ACTIVE and bound.card.member_id == MEMBER_ID
    assert bound.card.gift_account_id == "gift-1" and bound.card.account_mode is AccountMode.UNSPECIFIED
    assert [(e.type, e.from_state, e.to_state) for e in bound.events] == [(CardEventType.BOUND, S.ACTIVE, S.ACTIVE)]


def test_only_gift_cards_can_be_bearer_cards() -> None:
    with pytest.raises(RefusalError) as refused:
        lifecycle.activate_bearer(card(S.ISSUED), actor=OPERATOR, comment="", now=NOW)
    assert refused.value.reason == "INVALID_ARGUMENT"


# (old state, old bound, new state, expected)
REPLACE_TABLE = [
    (S.ACTIVE, True, S.GENERATED, "ok"),
    (S.BLOCKED, True, S.ISSUED, "ok"),
    (S.EXPIRED, True, S.GENERATED, "ok"),
    (S.GENERATED, False, S.GENERATED, "INVALID_STATE_TRANSITION"),
    (S.ISSUED, False, S.GENERATED, "INVALID_STATE_TRANSITION"),
    (S.ACTIVE, False, S.GENERATED, "INVALID_STATE_TRANSITION"),  # an unbound non-gift card
    (S.ACTIVE, True, S.ACTIVE, "INVALID_STATE_TRANSITION"),
    (S.ACTIVE, True, S.BLOCKED, "INVALID_STATE_TRANSITION"),
]


@pytest.mark.parametrize(("old_state", "bound", "new_state", "expected"), REPLACE_TABLE)
def test_replace_table(old_state: CardState, bound: bool, new_state: CardState, expected: str) -> None:
    old = replace(card(old_state, bound_to=MEMBER_ID if bound else ""), card_id="old", account_id="")
    new = replace(card(new_state), card_id="new", card_number="7788000000000014")
    if expected != "ok":
        with pytest.raises(RefusalError) as refused:
            lifecycle.replace_card(
                old, new, member=member(), reason=ReplacementReason.LOST, actor=OPERATOR, comment="", now=NOW
            )
        assert refused.value.reason == expected
        return
    retired, successor = lifecycle.replace_card(
        old, new, member=member(), reason=ReplacementReason.LOST, actor=OPERATOR, comment="", now=NOW
    )
    assert retired.card.state is S.REPLACED and retired.card.replaced_by_card_id == "new" and retired.card.block is None
    assert successor.card.state is S.ACTIVE and successor.card.replaces_card_id == "old"
    assert (successor.card.member_id, successor.card.account_mode) == (old.member_id, old.account_mode)
    assert [e.type for e in retired.events] == [CardEventType.REPLACED]
    assert [e.type for e in successor.events] == [CardEventType.REPLACEMENT]
    assert retired.events[0].related_card_id == "new" and successor.events[0].related_card_id == "old"
    again = lifecycle.replace_card(
        retired.card,
        successor.card,
        member=member(),
        reason=ReplacementReason.LOST,
        actor=OPERATOR,
        comment="",
        now=NOW,
    )
    assert again[0].events == () and again[1].events == ()


def test_replacement_keeps_type_families_apart_and_refuses_bound_successors() -> None:
    old = replace(card(S.ACTIVE, bound_to=MEMBER_ID), card_id="old")
    gift = replace(card(S.GENERATED, card_type=CardType.GIFT), card_id="new")
    with pytest.raises(RefusalError) as refused:
        lifecycle.replace_card(
            old, gift, member=member(), reason=ReplacementReason.UPGRADE, actor=OPERATOR, comment="", now=NOW
        )
    assert refused.value.reason == "INVALID_ARGUMENT"
    bound = replace(card(S.ISSUED, bound_to=OTHER_MEMBER_ID), card_id="new")
    with pytest.raises(RefusalError) as refused:
        lifecycle.replace_card(
            old, bound, member=member(), reason=ReplacementReason.LOST, actor=OPERATOR, comment="", now=NOW
        )
    assert refused.value.reason == "CARD_ALREADY_BOUND"
    new = replace(card(S.GENERATED), card_id="new")
    with pytest.raises(RefusalError) as refused:
        lifecycle.replace_card(
            old,
            new,
            member=member(state=MemberState.CLOSED),
            reason=ReplacementReason.LOST,
            actor=OPERATOR,
            comment="",
            now=NOW,
        )
    assert refused.value.reason == "MEMBER_CLOSED"


@pytest.mark.parametrize("state", [S.GENERATED, S.ISSUED, S.ACTIVE, S.BLOCKED])
def test_every_live_state_expires_after_its_time(state: CardState) -> None:
    due = card(state, bound_to=MEMBER_ID if state is S.ACTIVE else "", expire_time=NOW - timedelta(seconds=1))
    change = lifecycle.expire(due, now=NOW)
    assert change.card.state is S.EXPIRED and change.events[0].type is CardEventType.EXPIRED
    assert change.events[0].actor.type is ActorType.SYSTEM
    assert lifecycle.expire(replace(due, expire_time=NOW + timedelta(seconds=1)), now=NOW).events == ()


@pytest.mark.parametrize("state", [S.REPLACED, S.EXPIRED])
def test_final_states_never_expire_again(state: CardState) -> None:
    assert lifecycle.expire(card(state, expire_time=T0), now=NOW).events == ()


def test_a_card_past_its_time_is_effectively_expired_before_the_job_runs() -> None:
    assert lifecycle.effective_state(card(S.ACTIVE, expire_time=T0), NOW) is S.EXPIRED
    assert lifecycle.effective_state(card(S.REPLACED, expire_time=T0), NOW) is S.REPLACED
    assert lifecycle.effective_state(card(S.ACTIVE, expire_time=NOW + timedelta(days=1)), NOW) is S.ACTIVE


M = MemberState
# (operation, state before, expected state after or the refusal reason, changed)
MEMBER_TABLE = [
    ("block", M.ACTIVE, M.BLOCKED, True),
    ("block", M.BLOCKED, M.BLOCKED, False),
    ("block", M.CLOSED, "MEMBER_CLOSED", False),
    ("unblock", M.BLOCKED, M.ACTIVE, True),
    ("unblock", M.ACTIVE, M.ACTIVE, False),
    ("unblock", M.CLOSED, "MEMBER_CLOSED", False),
    ("close", M.ACTIVE, M.CLOSED, True),
    ("close", M.BLOCKED, M.CLOSED, True),
    ("close", M.CLOSED, M.CLOSED, False),
]


@pytest.mark.parametrize(("operation", "before", "expected", "changed"), MEMBER_TABLE)
def test_member_transition_table(operation: str, before: MemberState, expected: object, changed: bool) -> None:
    subject = member(state=before)
    reason = MemberBlockReason.TERMS_VIOLATION
    if isinstance(expected, str):
        with pytest.raises(RefusalError) as refused:
            lifecycle.member_transition(subject, operation, actor=OPERATOR, comment="c", now=NOW, reason=reason)
        assert refused.value.reason == expected
        return
    after, did_change = lifecycle.member_transition(
        subject, operation, actor=OPERATOR, comment="c", now=NOW, reason=reason
    )
    assert (after.state, did_change) == (expected, changed)
    if changed:
        assert (after.state_actor, after.state_comment, after.state_time) == (OPERATOR, "c", NOW)
        assert (after.block_reason is reason) == (expected is M.BLOCKED)
    else:
        assert after == subject
