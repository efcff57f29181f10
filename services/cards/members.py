"""Member use cases: registration (with the wallet accounts), profile, consents, state.

Each use case owns its connection and transaction, writes its outbox event in that transaction,
and after the commit replaces the member's cache generation (cache.py) before it returns, so no
Resolve anywhere reports a blocked or closed member usable once the call has returned.

Registration when the wallet is down. The member row is committed first, without a master
account (a pending registration); the wallet is then asked to open the accounts; only when they
are open is the master account recorded and member.registered emitted, in one transaction.
If the wallet cannot be reached the call fails with DEPENDENCY_UNAVAILABLE and the member stays
pending: a retry (same key, or any key with the same phone) finds the pending member and
completes it, and so does the background worker (worker.py) on its own. The phone's unique
index makes a second member for the phone impossible; a pending member is never resolvable.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime

import asyncpg

from services.cards import events, store
from services.cards.cache import Generations, member_key
from services.cards.domain.errors import RefusalError
from services.cards.domain.lifecycle import member_transition
from services.cards.domain.model import (
    CHANNELS,
    SYSTEM_ACTOR,
    Actor,
    ChannelConsent,
    Consents,
    ConsentStatus,
    Member,
    MemberBlockReason,
    MemberState,
    Profile,
)
from services.cards.transactions import refusal_to_error, run_transaction
from services.cards.wallet import Wallet
from shared.db import Connection
from shared.errors import DomainError, Reason

REGISTRATION_ATTEMPTS_MAX = 3
# A member change: (member, now) -> (member after, event type or "" for no change, actor).
ChangeDecision = Callable[[Member, datetime], tuple[Member, str, Actor]]


@dataclass(frozen=True, kw_only=True)
class Registration:
    program_id: str
    partner_id: str
    profile: Profile
    consent_statuses: tuple[ConsentStatus, ConsentStatus, ConsentStatus]  # sms, email, push
    channel: int
    outlet_id: str
    actor: Actor
    # Identifies the registration request: "<actor type>:<actor id>/<idempotency key>".
    key: str


@dataclass(frozen=True)
class Registered:
    member: Member
    created: bool


def member_not_found(member_id: str) -> DomainError:
    return DomainError(Reason.MEMBER_NOT_FOUND, f"no member {member_id!r}", metadata={"memberId": member_id})


async def register(pool: asyncpg.Pool, wallet: Wallet, registration: Registration) -> Registered:
    """The member with this phone in the program, registered now or before; its wallet accounts
    are open when this returns (DEPENDENCY_UNAVAILABLE otherwise, the member stays pending)."""
    member = await _recorded_member(pool, registration)
    if not member.accounts_open:
        member = await complete_registration(pool, wallet, member, actor=registration.actor)
    return Registered(member, created=member.registration_key == registration.key)


async def _recorded_member(pool: asyncpg.Pool, registration: Registration) -> Member:
    """The live member with the phone: inserted now, or the one that exists (pending or not)."""
    for _ in range(REGISTRATION_ATTEMPTS_MAX):
        async with pool.acquire() as connection, connection.transaction():
            now = await store.database_now(connection)
            candidate = _new_member(registration, now)
            if await store.insert_member(connection, candidate):
                return candidate
            existing = await store.find_live_member(connection, registration.program_id, registration.profile.phone)
        if existing is not None:
            return existing
        # The conflicting member was closed in between: the phone is free again; try once more.
    raise DomainError(Reason.CONCURRENT_MODIFICATION, "the phone's member changed during registration; retry")


def _new_member(registration: Registration, now: datetime) -> Member:
    consents = Consents(
        *(
            ChannelConsent(status, now, registration.actor) if status else ChannelConsent()
            for status in registration.consent_statuses
        )
    )
    return Member(
        member_id=str(uuid.uuid4()),
        program_id=registration.program_id,
        partner_id=registration.partner_id,
        profile=registration.profile,
        consents=consents,
        state=MemberState.ACTIVE,
        block_reason=MemberBlockReason.UNSPECIFIED,
        state_comment="",
        state_actor=registration.actor,
        state_time=now,
        master_account_id="",
        registration_channel=registration.channel,
        registration_outlet_id=registration.outlet_id,
        registration_key=registration.key,
        create_time=now,
        update_time=now,
    )


async def complete_registration(pool: asyncpg.Pool, wallet: Wallet, member: Member, *, actor: Actor) -> Member:
    """Open the wallet accounts of a pending member and record them with member.registered.
    Safe to run concurrently (a request and the worker): the first to record wins, once."""
    master_account_id, accounts = await wallet.open_member_accounts(
        program_id=member.program_id, member_id=member.member_id
    )
    async with pool.acquire() as connection, connection.transaction():
        completed = await store.complete_registration(connection, member.member_id, master_account_id, accounts)
        if completed is not None:
            now = await store.database_now(connection)
            await events.emit_member_event(connection, "member.registered", completed, actor=actor, now=now)
            return completed
        current = await store.get_member(connection, member.member_id)
    if current is None:
        raise RuntimeError(f"invariant violated: member {member.member_id} vanished")
    return current


async def complete_pending(pool: asyncpg.Pool, wallet: Wallet, *, older_than_s: float, limit: int) -> int:
    """Background: complete registrations left pending (the wallet was down). Returns how many."""
    async with pool.acquire() as connection:
        pending = await store.pending_registrations(connection, older_than_s=older_than_s, limit=limit)
    completed = 0
    for member_id, _ in pending:
        async with pool.acquire() as connection:
            member = await store.get_member(connection, member_id)
        if member is not None and not member.accounts_open:
            await complete_registration(pool, wallet, member, actor=SYSTEM_ACTOR)
            completed += 1
    return completed


async def get(pool: asyncpg.Pool, member_id: str) -> Member:
    async with pool.acquire() as connection:
        member = await store.get_member(connection, member_id)
    if member is None:
        raise member_not_found(member_id)
    return member


async def find(pool: asyncpg.Pool, program_id: str, phone: str) -> Member:
    async with pool.acquire() as connection:
        member = await store.find_live_member(connection, program_id, phone)
    if member is None:
        raise DomainError(Reason.MEMBER_NOT_FOUND, "no member with this phone in the program")
    return member


async def _change(
    pool: asyncpg.Pool,
    generations: Generations,
    member_id: str,
    decide: ChangeDecision,
) -> Member:
    """Lock the member, let `decide` return (member after, event type or ""), save and emit it
    in one transaction; then replace the member's cache generation, changed or not (a retry
    after a failed invalidation must repeat it)."""

    async def work(connection: Connection) -> Member:
        member = await store.get_member(connection, member_id, lock=True)
        if member is None:
            raise member_not_found(member_id)
        now = await store.database_now(connection)
        try:
            after, event_type, actor = decide(member, now)
        except RefusalError as refusal:
            raise refusal_to_error(refusal) from None
        if event_type:
            try:
                await store.save_member(connection, after)
            except asyncpg.UniqueViolationError:
                raise DomainError(
                    Reason.ALREADY_EXISTS,
                    "another member of the program has this phone",
                    metadata={"resourceType": "Member", "field": "member.phone"},
                ) from None
            await events.emit_member_event(connection, event_type, after, actor=actor, now=now)
        return after

    member = await run_transaction(pool, work)
    await generations.bump([member_key(member_id)])
    return member


@dataclass(frozen=True)
class _ProfileUpdate:
    fields: dict[str, object]
    actor: Actor

    def __call__(self, member: Member, now: datetime) -> tuple[Member, str, Actor]:
        _refuse_closed(member)
        profile = replace(member.profile, **self.fields)  # type: ignore[arg-type]
        if profile == member.profile:
            return member, "", self.actor
        return replace(member, profile=profile, update_time=now), "member.updated", self.actor


@dataclass(frozen=True)
class _ConsentUpdate:
    statuses: dict[str, ConsentStatus]
    actor: Actor

    def __call__(self, member: Member, now: datetime) -> tuple[Member, str, Actor]:
        _refuse_closed(member)
        changes = {
            channel: ChannelConsent(status, now, self.actor)
            for channel, status in self.statuses.items()
            if status is not ConsentStatus.UNSPECIFIED and getattr(member.consents, channel).status is not status
        }
        if not changes:
            return member, "", self.actor
        consents = replace(member.consents, **changes)  # type: ignore[arg-type]
        return replace(member, consents=consents, update_time=now), "member.consents_updated", self.actor


@dataclass(frozen=True)
class _StateChange:
    operation: str
    actor: Actor
    comment: str
    reason: MemberBlockReason = MemberBlockReason.UNSPECIFIED

    def __call__(self, member: Member, now: datetime) -> tuple[Member, str, Actor]:
        after, changed = member_transition(
            member, self.operation, actor=self.actor, comment=self.comment, now=now, reason=self.reason
        )
        event_type = {"block": "member.blocked", "unblock": "member.unblocked", "close": "member.closed"}
        return after, event_type[self.operation] if changed else "", self.actor


def _refuse_closed(member: Member) -> None:
    if member.state is MemberState.CLOSED:
        raise RefusalError("MEMBER_CLOSED", f"member {member.member_id} is closed")


async def update_profile(
    pool: asyncpg.Pool, generations: Generations, member_id: str, *, fields: dict[str, object], actor: Actor
) -> Member:
    return await _change(pool, generations, member_id, _ProfileUpdate(fields, actor))


async def update_consents(
    pool: asyncpg.Pool,
    generations: Generations,
    member_id: str,
    *,
    statuses: dict[str, ConsentStatus],
    actor: Actor,
) -> Member:
    unknown = set(statuses) - set(CHANNELS)
    if unknown:
        raise RuntimeError(f"invariant violated: unknown channels {unknown}")
    return await _change(pool, generations, member_id, _ConsentUpdate(statuses, actor))


async def change_state(
    pool: asyncpg.Pool,
    generations: Generations,
    member_id: str,
    *,
    operation: str,
    actor: Actor,
    comment: str,
    reason: MemberBlockReason = MemberBlockReason.UNSPECIFIED,
) -> Member:
    return await _change(pool, generations, member_id, _StateChange(operation, actor, comment, reason))
