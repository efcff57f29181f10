"""Resolve: what a customer presented -> member, accounts, card, states. The purchase hot path.

A card number is checked against the program's number templates first (a mistyped check digit
is refused before any lookup). The subject (card and member as stored) comes from this
process's cache when the generation tokens read after the request arrived say the entry is
current, else from one database read (see cache.py for why a block always wins). Whether it is
usable is decided on every call (domain/resolution.py), so a card that passes its expire_time
is refused at once. A QR token is verified (signature, expiry), consumed for the asking actor
in PostgreSQL, then resolved like the member or card it stands for.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import asyncpg
import redis.exceptions
from prometheus_client import Counter

from services.cards import store
from services.cards.cache import Generations, LocalEntries, member_key
from services.cards.domain import numbers, qr
from services.cards.domain.errors import RefusalError
from services.cards.domain.model import Actor, Card, CardState, IdentifierType, Member, MemberState, Template
from services.cards.domain.resolution import IDENTIFIED_BY, Identifier, Lookup, Subject, Verdict, judge
from services.cards.transactions import refusal_to_error
from shared.errors import DomainError, FieldViolation, Reason, invalid_argument

MEMBER_CARDS_MAX = 20
RESOLVE_CACHE = Counter(
    "loyalty_cards_resolve_cache_total",
    "Subject lookups of Resolve by outcome: hit (a validated entry), miss (read from PostgreSQL), "
    "bypass (Redis unreachable: read from PostgreSQL, nothing cached).",
    ["result"],
)
_HIT, _MISS, _BYPASS = (RESOLVE_CACHE.labels(result) for result in ("hit", "miss", "bypass"))
PROGRAMS_CACHED_MAX = 10_000
# Failing to reach Redis costs the cache, never the answer.
CACHE_ERRORS = (redis.exceptions.RedisError, OSError, TimeoutError)


@dataclass(frozen=True)
class Resolved:
    subject: Subject
    verdict: Verdict
    identified_by: IdentifierType
    qr_expire_time: datetime | None
    member_cards: Sequence[Card]


class TemplateIndex:
    """Each program's number templates. Templates are immutable and only ever added, so a
    number that fits none of the cached ones is checked again against a fresh read before it
    is refused (a template created in another process a moment ago is then found)."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool
        self._templates: dict[str, list[Template]] = {}

    async def fits(self, program_id: str, number: str) -> bool:
        cached = self._templates.get(program_id)
        if cached is not None and any(numbers.fits(number, t) for t in cached):
            return True
        fresh = await self._read(program_id)
        return any(numbers.fits(number, t) for t in fresh)

    async def _read(self, program_id: str) -> list[Template]:
        async with self._pool.acquire() as connection:
            templates = await store.list_templates(connection, program_id, after=None, limit=10_000)
        if len(self._templates) >= PROGRAMS_CACHED_MAX:
            self._templates.clear()
        self._templates[program_id] = templates
        return templates


@dataclass(frozen=True, kw_only=True)
class QrSettings:
    keys: tuple[bytes, ...]  # the first one signs; all verify
    ttl_s: int
    refresh_margin_s: int


@dataclass(frozen=True)
class IssuedToken:
    token: str
    expire_time: datetime
    refresh_time: datetime
    ttl_s: int


class Resolver:
    def __init__(
        self,
        *,
        pool: asyncpg.Pool,
        generations: Generations,
        entries: LocalEntries,
        qr_settings: QrSettings,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._pool = pool
        self._generations = generations
        self._entries = entries
        self._templates = TemplateIndex(pool)
        self._qr = qr_settings
        self._clock = clock

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self._clock(), UTC)

    async def resolve(self, identifier: Identifier, *, actor: Actor, include_member_cards: bool = False) -> Resolved:
        """`identifier` comes normalised from the edge (E.164 phone, digits-only number)."""
        qr_expire_time = None
        target = identifier
        if identifier.kind is Lookup.CARD_NUMBER and not await self._templates.fits(
            identifier.program_id, identifier.value
        ):
            raise invalid_argument(
                [FieldViolation("identifier.card_number", "fits no number template of the program (check digit?)")]
            )
        if identifier.kind is Lookup.QR_TOKEN:
            target, qr_expire_time = await self._consume_qr(identifier, actor)
        subject = await self._subject(target)
        member_cards: Sequence[Card] = ()
        if include_member_cards and subject.member is not None:
            member_cards = await self._member_cards(subject.member.member_id)
        verdict = judge(subject, self._now())
        return Resolved(subject, verdict, IDENTIFIED_BY[identifier.kind], qr_expire_time, member_cards)

    async def _subject(self, identifier: Identifier) -> Subject:
        entry = self._entries.get(identifier)
        keys = entry.keys if entry is not None else _keys_known_before_reading(identifier)
        try:
            current = await self._generations.read(keys)
        except CACHE_ERRORS:
            _BYPASS.inc()
            return await self._load(identifier)  # no tokens, no cache: the database answers
        if entry is not None and entry.valid(current):
            _HIT.inc()
            return entry.subject
        _MISS.inc()
        try:
            subject = await self._load(identifier)
        except DomainError:
            self._entries.drop(identifier)
            raise
        self._entries.put(identifier, subject, current)
        return subject

    async def _load(self, identifier: Identifier) -> Subject:
        async with self._pool.acquire() as connection:
            if identifier.kind in (Lookup.CARD_NUMBER, Lookup.CARD_ID):
                by_id = identifier.kind is Lookup.CARD_ID
                row = await store.card_with_member(
                    connection, card_id=identifier.value if by_id else "", card_number="" if by_id else identifier.value
                )
                if row is None or row["program_id"] != identifier.program_id:
                    raise DomainError(Reason.CARD_NOT_FOUND, "no card with this number in the program")
                card = store.card_from_row(row)
                member = store.member_from_row(row, "m_") if row["m_member_id"] is not None else None
                return Subject(identifier.program_id, card, member)
            if identifier.kind is Lookup.PHONE:
                member = await store.live_member_by_phone(connection, identifier.program_id, identifier.value)
            else:
                member = await store.get_member(connection, identifier.value)
        if member is None or member.program_id != identifier.program_id or not member.accounts_open:
            raise DomainError(Reason.MEMBER_NOT_FOUND, "no member with this identifier in the program")
        return Subject(identifier.program_id, None, member)

    async def _member_cards(self, member_id: str) -> list[Card]:
        async with self._pool.acquire() as connection:
            cards = await store.member_cards(
                connection,
                member_id,
                states=[s for s in CardState if s not in (CardState.UNSPECIFIED, CardState.REPLACED)],
                after=None,
                limit=MEMBER_CARDS_MAX,
            )
        return cards

    # -- QR tokens ------------------------------------------------------------------------------

    async def _consume_qr(self, identifier: Identifier, actor: Actor) -> tuple[Identifier, datetime]:
        try:
            claims = qr.verify_token(identifier.value, keys=self._qr.keys, now_s=self._clock())
        except RefusalError as refusal:
            raise refusal_to_error(refusal) from None
        if claims.program_digest != qr.program_digest(identifier.program_id):
            raise DomainError(Reason.QR_TOKEN_INVALID, "the QR token belongs to another program")
        expire_time = datetime.fromtimestamp(claims.expire_s, UTC)
        async with self._pool.acquire() as connection:
            holder = await store.consume_qr_token(
                connection, token_id=claims.token_id, actor=actor, expire_time=expire_time
            )
        if holder is None or holder != (actor.type, actor.id):
            raise DomainError(Reason.QR_TOKEN_ALREADY_USED, "the QR token was already used at another till")
        if claims.card_id:
            return Identifier(identifier.program_id, Lookup.CARD_ID, claims.card_id), expire_time
        return Identifier(identifier.program_id, Lookup.MEMBER_ID, claims.member_id), expire_time

    async def issue_qr_token(self, *, member_id: str, card_number: str) -> IssuedToken:
        """A fresh token for the member (and card). Refused for a member or card that may not be
        used now, so the app shows why instead of a token that will not work."""
        async with self._pool.acquire() as connection:
            member = await store.get_member(connection, member_id)
            card = await store.get_card(connection, card_number=card_number) if card_number else None
        member = _member_for_qr(member, member_id)
        card_id = ""
        if card_number:
            if card is None or card.member_id != member.member_id:
                raise DomainError(
                    Reason.CARD_NOT_FOUND, "the member has no such card", metadata={"field": "card_number"}
                )
            verdict = judge(Subject(card.program_id, card, member), self._now())
            if not verdict.usable:
                raise DomainError(Reason(verdict.refusal), f"the card is not usable ({verdict.refusal})")
            card_id = card.card_id
        now_s = self._clock()
        expire_s = math.ceil(now_s + self._qr.ttl_s)
        token, _ = qr.issue_token(
            key=self._qr.keys[0], program_id=member.program_id, member_id=member_id, card_id=card_id, expire_s=expire_s
        )
        expire_time = datetime.fromtimestamp(expire_s, UTC)
        refresh_time = datetime.fromtimestamp(max(now_s, expire_s - self._qr.refresh_margin_s), UTC)
        return IssuedToken(token, expire_time, refresh_time, self._qr.ttl_s)


def _keys_known_before_reading(identifier: Identifier) -> list[str]:
    """The generations an identifier depends on that are known before any read: a member id's
    own. (Others are learnt from the first read and read before the next one.)"""
    return [member_key(identifier.value)] if identifier.kind is Lookup.MEMBER_ID else []


def _member_for_qr(member: Member | None, member_id: str) -> Member:
    """The member a QR token may be issued for (it exists, is registered and ACTIVE)."""
    if member is None or not member.accounts_open:
        raise DomainError(Reason.MEMBER_NOT_FOUND, f"no member {member_id!r}")
    if member.state is MemberState.BLOCKED:
        raise DomainError(Reason.MEMBER_BLOCKED, f"member {member_id} is blocked")
    if member.state is MemberState.CLOSED:
        raise DomainError(Reason.MEMBER_CLOSED, f"member {member_id} is closed")
    return member
