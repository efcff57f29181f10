"""The card and member state machines, as explicit tables and small pure functions.

Every card operation returns a `Change`: the card afterwards and the history entries it adds
(none when the operation is a no-op, which is how natural idempotency shows). An operation
that the table does not allow raises `RefusalError("INVALID_STATE_TRANSITION")` naming both states.

    GENERATED --issue--> ISSUED --bind / activate (bearer GIFT)--> ACTIVE
    GENERATED, ISSUED, ACTIVE --block--> BLOCKED --unblock--> the state before the block
    ACTIVE, BLOCKED, EXPIRED --replace--> REPLACED (final); the successor becomes ACTIVE
    every state but REPLACED, EXPIRED --expire (expire_time passed)--> EXPIRED
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import replace
from datetime import datetime

from services.cards.domain.errors import RefusalError, invalid
from services.cards.domain.model import (
    SYSTEM_ACTOR,
    AccountMode,
    Actor,
    Binding,
    Block,
    Card,
    CardBlockReason,
    CardEvent,
    CardEventType,
    CardState,
    CardType,
    Change,
    Member,
    MemberBlockReason,
    MemberState,
    ReplacementReason,
)

S = CardState
# operation -> {state it may start from: state it leads to}. Unblock's target is the state
# remembered by the block, so its table says only where it may start.
CARD_TRANSITIONS: Mapping[str, Mapping[CardState, CardState]] = {
    # UNSPECIFIED: a card created by IssueCard or ReplaceCard starts its history here.
    "issue": {S.UNSPECIFIED: S.ISSUED, S.GENERATED: S.ISSUED},
    "activate": {S.ISSUED: S.ACTIVE},
    "bind": {S.UNSPECIFIED: S.ACTIVE, S.GENERATED: S.ACTIVE, S.ISSUED: S.ACTIVE, S.ACTIVE: S.ACTIVE},
    "block": {S.GENERATED: S.BLOCKED, S.ISSUED: S.BLOCKED, S.ACTIVE: S.BLOCKED},
    "unblock": {S.BLOCKED: S.UNSPECIFIED},
    "replace": {S.ACTIVE: S.REPLACED, S.BLOCKED: S.REPLACED, S.EXPIRED: S.REPLACED},
    "become_replacement": {S.GENERATED: S.ACTIVE, S.ISSUED: S.ACTIVE},
    "expire": {S.GENERATED: S.EXPIRED, S.ISSUED: S.EXPIRED, S.ACTIVE: S.EXPIRED, S.BLOCKED: S.EXPIRED},
}
# operation -> states in which it changes nothing (natural idempotency).
CARD_NO_OPS: Mapping[str, frozenset[CardState]] = {
    "issue": frozenset({S.ISSUED}),
    "block": frozenset({S.BLOCKED}),
    "unblock": frozenset({S.GENERATED, S.ISSUED, S.ACTIVE}),
    "expire": frozenset({S.EXPIRED, S.REPLACED}),
}
# Operation -> the state named as `toState` when it is refused.
_TARGETS = {"unblock": S.UNSPECIFIED, "issue": S.ISSUED, "bind": S.ACTIVE, "block": S.BLOCKED}


def transition_refused(operation: str, from_state: CardState, to_state: CardState, why: str = "") -> RefusalError:
    target = to_state.name if to_state is not S.UNSPECIFIED else "PREVIOUS_STATE"
    message = f"cannot {operation} a card in state {from_state.name}" + (f": {why}" if why else "")
    return RefusalError("INVALID_STATE_TRANSITION", message, metadata={"fromState": from_state.name, "toState": target})


def _allowed(operation: str, card: Card) -> CardState:
    """The state `operation` leads to from the card's state, or the refusal."""
    target = CARD_TRANSITIONS[operation].get(card.state)
    if target is None:
        fallback = next(iter(CARD_TRANSITIONS[operation].values()))
        raise transition_refused(operation, card.state, _TARGETS.get(operation, fallback))
    return target


def _event(
    card: Card,
    kind: CardEventType,
    *,
    to_state: CardState,
    actor: Actor,
    now: datetime,
    comment: str = "",
    member_id: str | None = None,
    block_reason: CardBlockReason = CardBlockReason.UNSPECIFIED,
    replacement_reason: ReplacementReason = ReplacementReason.UNSPECIFIED,
    related_card_id: str = "",
) -> CardEvent:
    """A history entry of `card` leaving its current state; the member is the card's unless given."""
    return CardEvent(
        event_id=str(uuid.uuid4()),
        card_id=card.card_id,
        type=kind,
        from_state=card.state,
        to_state=to_state,
        actor=actor,
        comment=comment,
        member_id=card.member_id if member_id is None else member_id,
        block_reason=block_reason,
        replacement_reason=replacement_reason,
        related_card_id=related_card_id,
        event_time=now,
    )


def issue(card: Card, *, actor: Actor, comment: str, now: datetime) -> Change:
    """GENERATED -> ISSUED; an ISSUED card stays as it is."""
    if card.state in CARD_NO_OPS["issue"]:
        return Change(card)
    target = _allowed("issue", card)
    event = _event(card, CardEventType.ISSUED, to_state=target, actor=actor, now=now, comment=comment)
    return Change(replace(card, state=target, issue_time=now, state_time=now), (event,))


def activate_bearer(card: Card, *, actor: Actor, comment: str, now: datetime) -> Change:
    """A GIFT card becomes ACTIVE without a member (GENERATED cards are issued first)."""
    if card.type is not CardType.GIFT:
        raise invalid("bearer", "only GIFT cards can be bearer cards")
    if card.state is S.ACTIVE and not card.member_id:
        return Change(card)
    issued = issue(card, actor=actor, comment=comment, now=now)
    target = _allowed("activate", issued.card)
    event = _event(issued.card, CardEventType.ACTIVATED, to_state=target, actor=actor, now=now, comment=comment)
    return Change(replace(issued.card, state=target, state_time=now), (*issued.events, event))


def same_binding(card: Card, binding: Binding) -> bool:
    """Whether the card is already bound as `binding` asks (the label does not count)."""
    if card.member_id != binding.member_id:
        return False
    if card.type is CardType.GIFT:
        return True
    mode = binding.account_mode or AccountMode.MASTER
    if mode is not card.account_mode:
        return False
    return mode is not AccountMode.EXISTING_ACCOUNT or binding.account_id == card.account_id


def check_member_usable_for_binding(member: Member) -> None:
    if member.state is MemberState.CLOSED:
        raise RefusalError("MEMBER_CLOSED", f"member {member.member_id} is closed")
    if member.state is MemberState.BLOCKED:
        raise RefusalError("MEMBER_BLOCKED", f"member {member.member_id} is blocked")


def bind(card: Card, *, binding: Binding, member: Member, actor: Actor, comment: str, now: datetime) -> Change:
    """Bind to a member and an account (GENERATED cards are issued on the way). `binding`
    carries the account id already resolved (a new sub-account is opened by the caller)."""
    if member.program_id != card.program_id:
        raise transition_refused("bind", card.state, S.ACTIVE, "the card belongs to another program")
    check_member_usable_for_binding(member)
    if card.member_id and card.member_id != member.member_id:
        raise RefusalError("CARD_ALREADY_BOUND", f"card {card.card_id} is bound to another member")
    if card.member_id:
        if same_binding(card, binding) and card.state is S.ACTIVE:
            return Change(card)
        if card.state is S.ACTIVE:
            raise transition_refused("bind", card.state, S.ACTIVE, "already bound to this member differently")
    if card.state is S.ACTIVE and card.type is not CardType.GIFT:
        raise transition_refused("bind", card.state, S.ACTIVE)
    target = _allowed("bind", card)
    if card.expired_at(now):
        raise RefusalError(
            "CARD_EXPIRED", f"card {card.card_id} expired", metadata={"expireTime": str(card.expire_time)}
        )
    before_issue = (S.UNSPECIFIED, S.GENERATED)
    issued = issue(card, actor=actor, comment=comment, now=now) if card.state in before_issue else Change(card)
    bound = _bound_card(issued.card, binding, state=target, now=now)
    event = _event(
        issued.card,
        CardEventType.BOUND,
        to_state=target,
        actor=actor,
        now=now,
        comment=comment,
        member_id=member.member_id,
    )
    return Change(bound, (*issued.events, event))


def _bound_card(card: Card, binding: Binding, *, state: CardState, now: datetime) -> Card:
    if card.type is CardType.GIFT:
        mode, account_id = AccountMode.UNSPECIFIED, ""
    else:
        mode = binding.account_mode or AccountMode.MASTER
        account_id = binding.account_id if mode is not AccountMode.MASTER else ""
    return replace(
        card,
        state=state,
        member_id=binding.member_id,
        account_mode=mode,
        account_id=account_id,
        label=binding.label,
        bind_time=now,
        state_time=now,
    )


def block(card: Card, *, reason: CardBlockReason, actor: Actor, comment: str, now: datetime) -> Change:
    """GENERATED, ISSUED, ACTIVE -> BLOCKED, remembering the state for unblock."""
    if card.state in CARD_NO_OPS["block"]:
        return Change(card)
    target = _allowed("block", card)
    held = Block(reason=reason, comment=comment, actor=actor, block_time=now, previous_state=card.state)
    event = _event(
        card, CardEventType.BLOCKED, to_state=target, actor=actor, now=now, comment=comment, block_reason=reason
    )
    return Change(replace(card, state=target, block=held, state_time=now), (event,))


def unblock(card: Card, *, actor: Actor, comment: str, now: datetime) -> Change:
    """BLOCKED -> the state before the block; GENERATED, ISSUED, ACTIVE stay."""
    if card.state in CARD_NO_OPS["unblock"]:
        return Change(card)
    _allowed("unblock", card)
    if card.block is None:
        raise RuntimeError(f"invariant violated: blocked card {card.card_id} has no block")
    target = card.block.previous_state
    event = _event(card, CardEventType.UNBLOCKED, to_state=target, actor=actor, now=now, comment=comment)
    return Change(replace(card, state=target, block=None, state_time=now), (event,))


def replace_card(
    old: Card,
    new: Card,
    *,
    member: Member | None,
    reason: ReplacementReason,
    actor: Actor,
    comment: str,
    now: datetime,
) -> tuple[Change, Change]:
    """The old card becomes REPLACED for good; the new one ACTIVE on the same member and
    accounts. Repeating a replacement that happened changes nothing."""
    if old.state is S.REPLACED and old.replaced_by_card_id == new.card_id:
        return Change(old), Change(new)
    _check_replaceable(old, member)
    _check_successor(old, new, now)
    target_old = _allowed("replace", old)
    target_new = _allowed("become_replacement", new)
    successor = replace(
        new,
        state=target_new,
        member_id=old.member_id,
        account_mode=old.account_mode,
        account_id=old.account_id,
        gift_account_id=old.gift_account_id,
        label=old.label,
        replaces_card_id=old.card_id,
        issue_time=new.issue_time or now,
        bind_time=now if old.member_id else None,
        state_time=now,
    )
    retired = replace(old, state=target_old, block=None, replaced_by_card_id=new.card_id, state_time=now)
    old_event = _event(
        old,
        CardEventType.REPLACED,
        to_state=target_old,
        actor=actor,
        now=now,
        comment=comment,
        replacement_reason=reason,
        related_card_id=new.card_id,
    )
    new_event = _event(
        new,
        CardEventType.REPLACEMENT,
        to_state=target_new,
        actor=actor,
        now=now,
        comment=comment,
        member_id=old.member_id,
        replacement_reason=reason,
        related_card_id=old.card_id,
    )
    return Change(retired, (old_event,)), Change(successor, (new_event,))


def _check_replaceable(old: Card, member: Member | None) -> None:
    if old.state not in CARD_TRANSITIONS["replace"]:
        raise transition_refused("replace", old.state, S.REPLACED)
    if not old.member_id and old.type is not CardType.GIFT:
        raise transition_refused("replace", old.state, S.REPLACED, "the card is not bound to a member")
    if old.type is CardType.GIFT and not old.gift_account_id:
        raise transition_refused("replace", old.state, S.REPLACED, "the gift card was never issued")
    if member is not None and member.state is MemberState.CLOSED:
        raise RefusalError("MEMBER_CLOSED", f"member {member.member_id} is closed")


def _check_successor(old: Card, new: Card, now: datetime) -> None:
    if new.card_id == old.card_id:
        raise invalid("new_card_number", "the replacement must be another card")
    if (old.type is CardType.GIFT) != (new.type is CardType.GIFT):
        raise invalid("new_card_number", "a GIFT card is replaced only by a GIFT card, others only by non-gift cards")
    if new.program_id != old.program_id:
        raise transition_refused("replace", new.state, S.ACTIVE, "the new card belongs to another program")
    if new.member_id:
        raise RefusalError(
            "CARD_ALREADY_BOUND", f"card {new.card_id} is already bound to a member", metadata={"field": "new_card"}
        )
    if new.state not in CARD_TRANSITIONS["become_replacement"]:
        raise transition_refused("replace", new.state, S.ACTIVE, "the new card must be GENERATED or ISSUED")
    if new.expired_at(now):
        raise RefusalError("CARD_EXPIRED", f"the new card {new.card_id} expired", metadata={"field": "new_card"})


def expire(card: Card, *, now: datetime) -> Change:
    """Past its expire_time every card but a REPLACED one becomes EXPIRED (by the system)."""
    if card.state in CARD_NO_OPS["expire"] or not card.expired_at(now):
        return Change(card)
    target = _allowed("expire", card)
    event = _event(card, CardEventType.EXPIRED, to_state=target, actor=SYSTEM_ACTOR, now=now)
    return Change(replace(card, state=target, block=None, state_time=now), (event,))


def effective_state(card: Card, now: datetime) -> CardState:
    """What the card is now: past its expire_time it is EXPIRED even before the job moved it."""
    if card.state not in (S.REPLACED, S.EXPIRED) and card.expired_at(now):
        return S.EXPIRED
    return card.state


# ------------------------------------------------------------------------------------------------
# Members

M = MemberState
# operation -> {state it may start from: state it leads to}; states absent are refused.
MEMBER_TRANSITIONS: Mapping[str, Mapping[MemberState, MemberState]] = {
    "block": {M.ACTIVE: M.BLOCKED, M.BLOCKED: M.BLOCKED},
    "unblock": {M.BLOCKED: M.ACTIVE, M.ACTIVE: M.ACTIVE},
    "close": {M.ACTIVE: M.CLOSED, M.BLOCKED: M.CLOSED, M.CLOSED: M.CLOSED},
}


def member_transition(
    member: Member,
    operation: str,
    *,
    actor: Actor,
    comment: str,
    now: datetime,
    reason: MemberBlockReason = MemberBlockReason.UNSPECIFIED,
) -> tuple[Member, bool]:
    """The member after `operation` and whether anything changed (a repeat changes nothing)."""
    target = MEMBER_TRANSITIONS[operation].get(member.state)
    if target is None:
        raise RefusalError("MEMBER_CLOSED", f"member {member.member_id} is closed")
    if target is member.state:
        return member, False
    changed = replace(
        member,
        state=target,
        block_reason=reason if target is M.BLOCKED else MemberBlockReason.UNSPECIFIED,
        state_comment=comment,
        state_actor=actor,
        state_time=now,
        update_time=now,
    )
    return changed, True
