"""All SQL of the cards service. Functions take a connection; the caller owns the transaction.

Lock order, the same for every writer: cards (by card id), then members. Member operations lock
only their member; card operations lock their card(s) first and read the member after, so two
writers never wait on each other in a cycle.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from services.cards.domain.model import (
    AccountMode,
    Actor,
    ActorType,
    Batch,
    BirthDate,
    Block,
    Card,
    CardBlockReason,
    CardEvent,
    CardEventType,
    CardState,
    CardType,
    ChannelConsent,
    CheckDigitScheme,
    Consents,
    ConsentStatus,
    Member,
    MemberBlockReason,
    MemberState,
    Profile,
    ReplacementReason,
    Symbology,
    Template,
    WalletAccount,
)
from shared.db import Connection


def is_uuid(text: str) -> bool:
    """Ids are UUIDs today (opaque to clients); anything else names nothing here."""
    try:
        uuid.UUID(text)
    except ValueError:
        return False
    return len(text) == 36


async def database_now(connection: Connection) -> datetime:
    now: datetime = await connection.fetchval("SELECT now()")
    return now


# ------------------------------------------------------------------------------------------------
# Members

_MEMBER_COLUMNS = (
    "member_id, program_id, partner_id, phone, first_name, last_name, middle_name, email, birth_year,"
    " birth_month, birth_day, language_code, segments, consents, state, block_reason, state_comment,"
    " state_actor_type, state_actor_id, state_time, master_account_id, registration_channel,"
    " registration_outlet_id, registration_key, create_time, update_time, wallet_accounts"
)


def _consents_json(consents: Consents) -> str:
    document: dict[str, Any] = {}
    for channel in ("sms", "email", "push"):
        consent: ChannelConsent = getattr(consents, channel)
        if consent.status is ConsentStatus.UNSPECIFIED and consent.update_time is None:
            continue
        document[channel] = {
            "status": int(consent.status),
            "time": consent.update_time.isoformat() if consent.update_time else None,
            "actor_type": int(consent.actor.type) if consent.actor else 0,
            "actor_id": consent.actor.id if consent.actor else "",
        }
    return json.dumps(document, sort_keys=True)


def _consents(text: str) -> Consents:
    document = json.loads(text)

    def channel(name: str) -> ChannelConsent:
        entry = document.get(name)
        if not entry:
            return ChannelConsent()
        return ChannelConsent(
            status=ConsentStatus(entry["status"]),
            update_time=datetime.fromisoformat(entry["time"]) if entry["time"] else None,
            actor=Actor(ActorType(entry["actor_type"]), entry["actor_id"]) if entry["actor_type"] else None,
        )

    return Consents(sms=channel("sms"), email=channel("email"), push=channel("push"))


def member_from_row(row: Any, prefix: str = "") -> Member:
    def col(name: str) -> Any:
        return row[prefix + name]

    birth = None
    if col("birth_month") is not None:
        birth = BirthDate(col("birth_year"), col("birth_month"), col("birth_day"))
    profile = Profile(
        phone=col("phone"),
        first_name=col("first_name"),
        last_name=col("last_name"),
        middle_name=col("middle_name"),
        email=col("email"),
        birth_date=birth,
        language_code=col("language_code"),
        segments=tuple(col("segments")),
    )
    return Member(
        member_id=str(col("member_id")),
        program_id=col("program_id"),
        partner_id=col("partner_id"),
        profile=profile,
        consents=_consents(col("consents")),
        state=MemberState(col("state")),
        block_reason=MemberBlockReason(col("block_reason")),
        state_comment=col("state_comment"),
        state_actor=Actor(ActorType(col("state_actor_type")), col("state_actor_id")),
        state_time=col("state_time"),
        master_account_id=col("master_account_id") or "",
        registration_channel=col("registration_channel"),
        registration_outlet_id=col("registration_outlet_id"),
        registration_key=col("registration_key"),
        create_time=col("create_time"),
        update_time=col("update_time"),
        wallet_accounts=_wallet_accounts(col("wallet_accounts")),
    )


def _wallet_accounts(text: str | None) -> tuple[WalletAccount, ...]:
    return tuple(WalletAccount(account_id, kind) for account_id, kind in json.loads(text)) if text else ()


def _wallet_accounts_json(accounts: Sequence[WalletAccount]) -> str | None:
    return json.dumps([[account.account_id, account.kind] for account in accounts]) if accounts else None


def _member_values(member: Member) -> list[Any]:
    profile, birth = member.profile, member.profile.birth_date
    return [
        member.member_id,
        member.program_id,
        member.partner_id,
        profile.phone,
        profile.first_name,
        profile.last_name,
        profile.middle_name,
        profile.email,
        birth.year if birth else None,
        birth.month if birth else None,
        birth.day if birth else None,
        profile.language_code,
        list(profile.segments),
        _consents_json(member.consents),
        int(member.state),
        int(member.block_reason),
        member.state_comment,
        int(member.state_actor.type),
        member.state_actor.id,
        member.state_time,
        member.master_account_id or None,
        member.registration_channel,
        member.registration_outlet_id,
        member.registration_key,
        member.create_time,
        member.update_time,
        _wallet_accounts_json(member.wallet_accounts),
    ]


async def insert_member(connection: Connection, member: Member) -> bool:
    """Insert unless a live member of the program has the phone; True when inserted."""
    inserted = await connection.fetchval(
        f"""
        INSERT INTO members ({_MEMBER_COLUMNS})
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14::jsonb, $15, $16, $17, $18, $19,
                $20, $21, $22, $23, $24, $25, $26, $27::jsonb)
        ON CONFLICT (program_id, phone) WHERE state <> 3 DO NOTHING
        RETURNING true
        """,
        *_member_values(member),
    )
    return bool(inserted)


async def get_member(connection: Connection, member_id: str, *, lock: bool = False) -> Member | None:
    if not is_uuid(member_id):
        return None
    row = await connection.fetchrow(
        f"SELECT {_MEMBER_COLUMNS} FROM members WHERE member_id = $1" + (" FOR UPDATE" if lock else ""), member_id
    )
    return member_from_row(row) if row else None


async def find_live_member(connection: Connection, program_id: str, phone: str) -> Member | None:
    row = await connection.fetchrow(
        f"SELECT {_MEMBER_COLUMNS} FROM members WHERE program_id = $1 AND phone = $2 AND state <> 3",
        program_id,
        phone,
    )
    return member_from_row(row) if row else None


async def complete_registration(
    connection: Connection, member_id: str, master_account_id: str, accounts: Sequence[WalletAccount]
) -> Member | None:
    """Record the master account (and its sub-accounts) of a pending registration; None if it
    was already recorded."""
    row = await connection.fetchrow(
        f"""
        UPDATE members SET master_account_id = $2, wallet_accounts = $3::jsonb
        WHERE member_id = $1 AND master_account_id IS NULL
        RETURNING {_MEMBER_COLUMNS}
        """,
        member_id,
        master_account_id,
        _wallet_accounts_json(accounts),
    )
    return member_from_row(row) if row else None


async def save_member(connection: Connection, member: Member) -> None:
    """Write every mutable column (raises UniqueViolationError when the phone is taken)."""
    profile, birth = member.profile, member.profile.birth_date
    await connection.execute(
        """
        UPDATE members SET phone = $2, first_name = $3, last_name = $4, middle_name = $5, email = $6,
            birth_year = $7, birth_month = $8, birth_day = $9, language_code = $10, segments = $11,
            consents = $12::jsonb, state = $13, block_reason = $14, state_comment = $15, state_actor_type = $16,
            state_actor_id = $17, state_time = $18, update_time = $19
        WHERE member_id = $1
        """,
        member.member_id,
        profile.phone,
        profile.first_name,
        profile.last_name,
        profile.middle_name,
        profile.email,
        birth.year if birth else None,
        birth.month if birth else None,
        birth.day if birth else None,
        profile.language_code,
        list(profile.segments),
        _consents_json(member.consents),
        int(member.state),
        int(member.block_reason),
        member.state_comment,
        int(member.state_actor.type),
        member.state_actor.id,
        member.state_time,
        member.update_time,
    )


async def pending_registrations(connection: Connection, *, older_than_s: float, limit: int) -> list[tuple[str, str]]:
    """(member_id, program_id) of registrations whose wallet accounts are still not open."""
    rows = await connection.fetch(
        """
        SELECT member_id, program_id FROM members
        WHERE master_account_id IS NULL AND create_time < now() - make_interval(secs => $1)
        ORDER BY create_time LIMIT $2
        """,
        older_than_s,
        limit,
    )
    return [(str(r["member_id"]), r["program_id"]) for r in rows]


# ------------------------------------------------------------------------------------------------
# The outbox


async def add_outbox_event(
    connection: Connection, *, event_id: str, event_type: str, partition_key: str, payload: bytes
) -> None:
    await connection.execute(
        "INSERT INTO outbox (event_id, event_type, partition_key, payload) VALUES ($1, $2, $3, $4)",
        event_id,
        event_type,
        partition_key,
        payload,
    )


# ------------------------------------------------------------------------------------------------
# Templates

_TEMPLATE_COLUMNS = (
    "template_id, program_id, display_name, prefix, length, check_digit_scheme, barcode_symbology,"
    " qr_payload_format, capacity, allocated_count, create_time, creator_type, creator_id"
)


def _template(row: Any) -> Template:
    return Template(
        template_id=str(row["template_id"]),
        program_id=row["program_id"],
        display_name=row["display_name"],
        prefix=row["prefix"],
        length=row["length"],
        check_digit_scheme=CheckDigitScheme(row["check_digit_scheme"]),
        symbology=Symbology(row["barcode_symbology"]),
        qr_payload_format=row["qr_payload_format"],
        capacity=row["capacity"],
        allocated_count=row["allocated_count"],
        create_time=row["create_time"],
        creator=Actor(ActorType(row["creator_type"]), row["creator_id"]),
    )


async def insert_template(connection: Connection, template: Template) -> Template | None:
    """The stored template, or None when the program already has one with this display name."""
    row = await connection.fetchrow(
        f"""
        INSERT INTO card_number_templates (template_id, program_id, display_name, prefix, length,
            check_digit_scheme, barcode_symbology, qr_payload_format, capacity, creator_type, creator_id)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
        ON CONFLICT (program_id, display_name) DO NOTHING
        RETURNING {_TEMPLATE_COLUMNS}
        """,
        template.template_id,
        template.program_id,
        template.display_name,
        template.prefix,
        template.length,
        int(template.check_digit_scheme),
        int(template.symbology),
        template.qr_payload_format,
        template.capacity,
        int(template.creator.type),
        template.creator.id,
    )
    return _template(row) if row else None


async def get_template(connection: Connection, template_id: str) -> Template | None:
    if not is_uuid(template_id):
        return None
    row = await connection.fetchrow(
        f"SELECT {_TEMPLATE_COLUMNS} FROM card_number_templates WHERE template_id = $1", template_id
    )
    return _template(row) if row else None


async def list_templates(
    connection: Connection, program_id: str, *, after: tuple[datetime, str] | None, limit: int
) -> list[Template]:
    rows = await connection.fetch(
        f"""
        SELECT {_TEMPLATE_COLUMNS} FROM card_number_templates
        WHERE program_id = $1 AND ($2::timestamptz IS NULL OR (create_time, template_id) > ($2, $3::uuid))
        ORDER BY create_time, template_id LIMIT $4
        """,
        program_id,
        after[0] if after else None,
        after[1] if after else None,
        limit,
    )
    return [_template(row) for row in rows]


async def count_allocated(connection: Connection, template_id: str, count: int) -> None:
    await connection.execute(
        "UPDATE card_number_templates SET allocated_count = allocated_count + $2 WHERE template_id = $1",
        template_id,
        count,
    )


# ------------------------------------------------------------------------------------------------
# Batches

_BATCH_COLUMNS = (
    "batch_id, program_id, template_id, card_type, card_count, display_name, expire_time, create_time,"
    " creator_type, creator_id"
)


def _batch(row: Any) -> Batch:
    return Batch(
        batch_id=str(row["batch_id"]),
        program_id=row["program_id"],
        template_id=str(row["template_id"]),
        card_type=CardType(row["card_type"]),
        card_count=row["card_count"],
        display_name=row["display_name"],
        expire_time=row["expire_time"],
        create_time=row["create_time"],
        creator=Actor(ActorType(row["creator_type"]), row["creator_id"]),
    )


async def insert_batch(connection: Connection, batch: Batch) -> Batch:
    row = await connection.fetchrow(
        f"""
        INSERT INTO card_batches (batch_id, program_id, template_id, card_type, card_count, display_name,
            expire_time, creator_type, creator_id)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
        RETURNING {_BATCH_COLUMNS}
        """,
        batch.batch_id,
        batch.program_id,
        batch.template_id,
        int(batch.card_type),
        batch.card_count,
        batch.display_name,
        batch.expire_time,
        int(batch.creator.type),
        batch.creator.id,
    )
    return _batch(row)


async def insert_batch_cards(connection: Connection, batch: Batch, numbers: Sequence[str]) -> int:
    """Insert GENERATED cards for `numbers` (sorted), skipping numbers that exist; returns how
    many were inserted. One set-based statement: the unique index decides collisions."""
    status = await connection.execute(
        """
        INSERT INTO cards (card_number, program_id, template_id, batch_id, type, state, expire_time,
            create_time, state_time)
        SELECT number, $2, $3, $4, $5, 1, $6, now(), now()
        FROM unnest($1::text[]) WITH ORDINALITY AS drawn (number, position)
        ORDER BY position
        ON CONFLICT (card_number) DO NOTHING
        """,
        numbers,
        batch.program_id,
        batch.template_id,
        batch.batch_id,
        int(batch.card_type),
        batch.expire_time,
    )
    return int(status.split()[-1])


async def get_batch(connection: Connection, batch_id: str) -> Batch | None:
    if not is_uuid(batch_id):
        return None
    row = await connection.fetchrow(f"SELECT {_BATCH_COLUMNS} FROM card_batches WHERE batch_id = $1", batch_id)
    return _batch(row) if row else None


async def list_batches(
    connection: Connection,
    program_id: str,
    *,
    template_id: str,
    card_type: int,
    before: tuple[datetime, str] | None,
    limit: int,
) -> list[Batch]:
    rows = await connection.fetch(
        f"""
        SELECT {_BATCH_COLUMNS} FROM card_batches
        WHERE program_id = $1 AND ($2 = '' OR template_id::text = $2) AND ($3 = 0 OR card_type = $3)
          AND ($4::timestamptz IS NULL OR (create_time, batch_id) < ($4, $5::uuid))
        ORDER BY create_time DESC, batch_id DESC LIMIT $6
        """,
        program_id,
        template_id,
        card_type,
        before[0] if before else None,
        before[1] if before else None,
        limit,
    )
    return [_batch(row) for row in rows]


async def batch_numbers(connection: Connection, batch_id: str, *, after: str, limit: int) -> list[str]:
    """The batch's card numbers in number order, after `after` ("" = from the start)."""
    rows = await connection.fetch(
        "SELECT card_number FROM cards WHERE batch_id = $1 AND card_number > $2 ORDER BY card_number LIMIT $3",
        batch_id,
        after,
        limit,
    )
    return [row["card_number"] for row in rows]


# ------------------------------------------------------------------------------------------------
# Cards

_CARD_COLUMNS = (
    "c.card_id, c.card_number, c.program_id, c.template_id, c.batch_id, c.type, c.state, c.member_id,"
    " c.account_mode, c.account_id, c.gift_account_id, c.label, c.block_reason, c.block_comment,"
    " c.block_actor_type, c.block_actor_id, c.block_time, c.block_previous_state, c.replaced_by_card_id,"
    " c.replaces_card_id, c.expire_time, c.create_time, c.issue_time, c.bind_time, c.state_time,"
    " t.barcode_symbology, t.qr_payload_format"
)
_CARD_FROM = "cards c JOIN card_number_templates t ON t.template_id = c.template_id"


def _optional_id(value: Any) -> str:
    return str(value) if value is not None else ""


def card_from_row(row: Any) -> Card:
    block = None
    if row["state"] == CardState.BLOCKED:
        block = Block(
            reason=CardBlockReason(row["block_reason"]),
            comment=row["block_comment"],
            actor=Actor(ActorType(row["block_actor_type"]), row["block_actor_id"]),
            block_time=row["block_time"],
            previous_state=CardState(row["block_previous_state"]),
        )
    return Card(
        card_id=str(row["card_id"]),
        card_number=row["card_number"],
        program_id=row["program_id"],
        type=CardType(row["type"]),
        state=CardState(row["state"]),
        template_id=str(row["template_id"]),
        batch_id=_optional_id(row["batch_id"]),
        member_id=_optional_id(row["member_id"]),
        account_mode=AccountMode(row["account_mode"]),
        account_id=row["account_id"],
        gift_account_id=row["gift_account_id"],
        label=row["label"],
        block=block,
        replaced_by_card_id=_optional_id(row["replaced_by_card_id"]),
        replaces_card_id=_optional_id(row["replaces_card_id"]),
        expire_time=row["expire_time"],
        create_time=row["create_time"],
        issue_time=row["issue_time"],
        bind_time=row["bind_time"],
        state_time=row["state_time"],
        symbology=Symbology(row["barcode_symbology"]),
        qr_payload_format=row["qr_payload_format"],
    )


async def get_card(
    connection: Connection, *, card_id: str = "", card_number: str = "", lock: bool = False
) -> Card | None:
    if card_id:
        if not is_uuid(card_id):
            return None
        where, value = "c.card_id = $1", card_id
    else:
        where, value = "c.card_number = $1", card_number
    row = await connection.fetchrow(
        f"SELECT {_CARD_COLUMNS} FROM {_CARD_FROM} WHERE {where}" + (" FOR UPDATE OF c" if lock else ""), value
    )
    return card_from_row(row) if row else None


async def insert_card(connection: Connection, card: Card) -> bool:
    """Insert a card created outside a batch; False when the number is taken."""
    inserted = await connection.fetchval(
        """
        INSERT INTO cards (card_id, card_number, program_id, template_id, type, state, expire_time, create_time,
            state_time)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8)
        ON CONFLICT (card_number) DO NOTHING RETURNING true
        """,
        card.card_id,
        card.card_number,
        card.program_id,
        card.template_id,
        int(card.type),
        int(card.state),
        card.expire_time,
        card.create_time,
    )
    return bool(inserted)


async def save_card(connection: Connection, card: Card) -> None:
    block = card.block
    await connection.execute(
        """
        UPDATE cards SET state = $2, member_id = $3, account_mode = $4, account_id = $5, gift_account_id = $6,
            label = $7, block_reason = $8, block_comment = $9, block_actor_type = $10, block_actor_id = $11,
            block_time = $12, block_previous_state = $13, replaced_by_card_id = $14, replaces_card_id = $15,
            issue_time = $16, bind_time = $17, state_time = $18
        WHERE card_id = $1
        """,
        card.card_id,
        int(card.state),
        card.member_id or None,
        int(card.account_mode),
        card.account_id,
        card.gift_account_id,
        card.label,
        int(block.reason) if block else 0,
        block.comment if block else "",
        int(block.actor.type) if block else 0,
        block.actor.id if block else "",
        block.block_time if block else None,
        int(block.previous_state) if block else 0,
        card.replaced_by_card_id or None,
        card.replaces_card_id or None,
        card.issue_time,
        card.bind_time,
        card.state_time,
    )


async def add_card_events(connection: Connection, events: Sequence[CardEvent]) -> None:
    await connection.executemany(
        """
        INSERT INTO card_events (event_id, card_id, type, from_state, to_state, block_reason, replacement_reason,
            comment, actor_type, actor_id, member_id, related_card_id, event_time)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)
        """,
        [
            (
                e.event_id,
                e.card_id,
                int(e.type),
                int(e.from_state),
                int(e.to_state),
                int(e.block_reason),
                int(e.replacement_reason),
                e.comment,
                int(e.actor.type),
                e.actor.id,
                e.member_id or None,
                e.related_card_id or None,
                e.event_time,
            )
            for e in events
        ],
    )


async def member_cards(
    connection: Connection,
    member_id: str,
    *,
    states: Sequence[int],
    after: tuple[datetime, str] | None,
    limit: int,
) -> list[Card]:
    """The member's cards in the order they were bound."""
    rows = await connection.fetch(
        f"""
        SELECT {_CARD_COLUMNS} FROM {_CARD_FROM}
        WHERE c.member_id = $1 AND (cardinality($2::smallint[]) = 0 OR c.state = ANY($2))
          AND ($3::timestamptz IS NULL OR (c.bind_time, c.card_id) > ($3, $4::uuid))
        ORDER BY c.bind_time, c.card_id LIMIT $5
        """,
        member_id,
        list(states),
        after[0] if after else None,
        after[1] if after else None,
        limit,
    )
    return [card_from_row(row) for row in rows]


def _card_event(row: Any) -> CardEvent:
    return CardEvent(
        event_id=str(row["event_id"]),
        card_id=str(row["card_id"]),
        type=CardEventType(row["type"]),
        from_state=CardState(row["from_state"]),
        to_state=CardState(row["to_state"]),
        actor=Actor(ActorType(row["actor_type"]), row["actor_id"]),
        block_reason=CardBlockReason(row["block_reason"]),
        replacement_reason=ReplacementReason(row["replacement_reason"]),
        comment=row["comment"],
        member_id=_optional_id(row["member_id"]),
        related_card_id=_optional_id(row["related_card_id"]),
        event_time=row["event_time"],
        sequence=row["sequence"],
    )


async def card_events(
    connection: Connection,
    card_id: str,
    *,
    start: datetime | None,
    end: datetime | None,
    after_sequence: int,
    limit: int,
) -> list[CardEvent]:
    rows = await connection.fetch(
        """
        SELECT * FROM card_events
        WHERE card_id = $1 AND sequence > $2
          AND ($3::timestamptz IS NULL OR event_time >= $3) AND ($4::timestamptz IS NULL OR event_time < $4)
        ORDER BY sequence LIMIT $5
        """,
        card_id,
        after_sequence,
        start,
        end,
        limit,
    )
    return [_card_event(row) for row in rows]


async def cards_to_expire(connection: Connection, *, limit: int) -> list[Card]:
    """Cards past their expire_time that are not EXPIRED or REPLACED yet, locked (others skip them)."""
    rows = await connection.fetch(
        f"""
        SELECT {_CARD_COLUMNS} FROM {_CARD_FROM}
        WHERE c.expire_time <= now() AND c.state IN (1, 2, 3, 4)
        ORDER BY c.expire_time LIMIT $1
        FOR UPDATE OF c SKIP LOCKED
        """,
        limit,
    )
    return [card_from_row(row) for row in rows]


# ------------------------------------------------------------------------------------------------
# Identification (the hot path: one round trip each)

_MEMBER_PREFIXED = ", ".join(f"m.{c.strip()} AS m_{c.strip()}" for c in _MEMBER_COLUMNS.split(","))


async def card_with_member(connection: Connection, *, card_number: str = "", card_id: str = "") -> Any:
    """The card's row with its member's columns prefixed "m_" (NULL when unbound), or None."""
    if card_id and not is_uuid(card_id):
        return None
    where = "c.card_id = $1" if card_id else "c.card_number = $1"
    return await connection.fetchrow(
        f"SELECT {_CARD_COLUMNS}, {_MEMBER_PREFIXED} FROM {_CARD_FROM}"
        f" LEFT JOIN members m ON m.member_id = c.member_id WHERE {where}",
        card_id or card_number,
    )


async def live_member_by_phone(connection: Connection, program_id: str, phone: str) -> Member | None:
    """The program's member with this phone whose registration is complete."""
    member = await find_live_member(connection, program_id, phone)
    return member if member is not None and member.accounts_open else None


async def consume_qr_token(
    connection: Connection, *, token_id: bytes, actor: Actor, expire_time: datetime
) -> tuple[ActorType, str] | None:
    """Record the first use of a token; returns the actor it is bound to (this one when first)."""
    row = await connection.fetchrow(
        """
        INSERT INTO qr_token_uses (token_id, actor_type, actor_id, expire_time) VALUES ($1, $2, $3, $4)
        ON CONFLICT (token_id) DO NOTHING RETURNING actor_type, actor_id
        """,
        token_id,
        int(actor.type),
        actor.id,
        expire_time,
    )
    if row is None:
        # Used before (by this actor or another); a new statement sees the committed first use.
        row = await connection.fetchrow("SELECT actor_type, actor_id FROM qr_token_uses WHERE token_id = $1", token_id)
    return (ActorType(row["actor_type"]), row["actor_id"]) if row else None


async def purge_qr_token_uses(connection: Connection, *, limit: int) -> int:
    status = await connection.execute(
        """
        DELETE FROM qr_token_uses WHERE token_id IN (
            SELECT token_id FROM qr_token_uses WHERE expire_time < now() - interval '1 minute' LIMIT $1)
        """,
        limit,
    )
    return int(status.split()[-1])
