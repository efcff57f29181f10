"""Request validation at the edge: every bad field becomes a FieldViolation (proto field paths),
all of them reported at once; text is trimmed; phones are normalised here."""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from loyalty.cards.v1 import cards_pb2
from loyalty.common.v1 import types_pb2

from services.cards import mapping
from services.cards.domain import profile
from services.cards.domain.model import AccountMode, ActorType, Binding, BirthDate
from services.cards.usecases import CardRef
from shared.errors import DomainError, FieldViolation, Reason, invalid_argument

IDEMPOTENCY_KEY = re.compile(r"[A-Za-z0-9._:\-]{8,128}")
CARD_NUMBER = re.compile(r"[0-9]{8,19}")
ID_LENGTH_MAX = 64
COMMENT_LENGTH_MAX = 500
LABEL_LENGTH_MAX = 64
DISPLAY_NAME_LENGTH_MAX = 100
PAGE_SIZE_DEFAULT, PAGE_SIZE_MAX = 50, 1000


class Violations:
    """Collects violations; `raise_if_any` reports them all in one INVALID_ARGUMENT."""

    def __init__(self) -> None:
        self.items: list[FieldViolation] = []

    def add(self, field: str, description: str) -> None:
        if description:
            self.items.append(FieldViolation(field, description))

    def require(self, field: str, value: str, *, length_max: int = ID_LENGTH_MAX) -> None:
        if not value or len(value) > length_max:
            self.add(field, f"required, at most {length_max} characters")

    def at_most(self, field: str, value: str, length_max: int) -> None:
        if len(value) > length_max:
            self.add(field, f"at most {length_max} characters")

    def raise_if_any(self) -> None:
        if self.items:
            raise invalid_argument(self.items)


def key_and_actor(request: Any) -> Violations:
    """The idempotency key and actor every mutating request carries."""
    violations = Violations()
    if not IDEMPOTENCY_KEY.fullmatch(request.idempotency_key.key):
        violations.add("idempotency_key.key", "8..128 characters from [A-Za-z0-9._:-]")
    actor_violation(violations, request.actor)
    return violations


def actor_violation(violations: Violations, actor: types_pb2.Actor) -> None:
    if actor.type not in (1, 2, 3, 4) or not actor.id or len(actor.id) > ID_LENGTH_MAX:
        violations.add("actor", "required: type and id (1..64 characters) of who asks")


def scope(actor: types_pb2.Actor) -> str:
    """Idempotency keys are scoped per actor (common/v1 IdempotencyKey)."""
    return f"{actor.type}:{actor.id}"


def allow_actors(actor: types_pb2.Actor, *types: ActorType, member_id: str = "") -> None:
    """PERMISSION_DENIED unless the actor is of one of `types` (a MEMBER only for itself)."""
    allowed = ActorType(actor.type) in types
    if allowed and int(actor.type) == int(ActorType.MEMBER) and member_id:
        allowed = actor.id == member_id
    if not allowed:
        names = ", ".join(t.name for t in types)
        raise DomainError(
            Reason.PERMISSION_DENIED, f"only {names} may do this", metadata={"actorType": str(actor.type)}
        )


def page_size(requested: int) -> int:
    if requested < 0:
        raise invalid_argument([FieldViolation("page_size", "must not be negative")])
    return min(requested or PAGE_SIZE_DEFAULT, PAGE_SIZE_MAX)


def time_cursor(token: str) -> tuple[datetime, str] | None:
    """A keyset page token "<ISO time>|<id>"."""
    if not token:
        return None
    time_text, _, item_id = token.partition("|")
    try:
        return datetime.fromisoformat(time_text), item_id
    except ValueError:
        raise invalid_argument([FieldViolation("page_token", "not a token from this list")]) from None


def time_token(when: datetime | None, item_id: str) -> str:
    return f"{when.isoformat()}|{item_id}" if when is not None else ""


def phone(violations: Violations, field: str, raw: str, *, region: str) -> str:
    try:
        return profile.normalize_phone(raw, default_region=region)
    except profile.InvalidPhoneError:
        violations.add(field, "not a valid phone number (any common notation, e.g. +7 912 345-67-89)")
        return ""


def birth_date(violations: Violations, field: str, message: cards_pb2.Date) -> BirthDate:
    value = mapping.birth_date(message)
    violations.add(field, profile.birth_date_violation(value, today=datetime.now(UTC).date()))
    return value


def profile_fields(
    violations: Violations, source: Any, *, prefix: str, paths: Sequence[str], region: str
) -> dict[str, Any]:
    """Validated, normalised values of the profile `paths` of `source` (a request or Member)."""
    fields: dict[str, Any] = {}
    for path in paths:
        name = f"{prefix}{path}"
        if path == "phone":
            fields["phone"] = phone(violations, name, source.phone, region=region)
        elif path in ("first_name", "last_name", "middle_name"):
            value = getattr(source, path).strip()
            violations.add(name, profile.name_violation(value))
            fields[path] = value
        elif path == "email":
            value = source.email.strip()
            violations.add(name, profile.email_violation(value))
            fields["email"] = profile.normalize_email(value)
        elif path == "birth_date":
            has_date = source.HasField("birth_date")
            fields["birth_date"] = birth_date(violations, name, source.birth_date) if has_date else None
        elif path == "language_code":
            value = source.language_code.strip()
            violations.add(name, profile.language_violation(value))
            fields["language_code"] = value
        elif path == "segments":
            value = profile.normalize_segments(list(source.segments))
            violations.add(name, profile.segments_violation(value))
            fields["segments"] = value
    return fields


def comment(violations: Violations, text: str, *, required: bool) -> str:
    value = text.strip()
    violations.at_most("comment", value, COMMENT_LENGTH_MAX)
    if required and not value:
        violations.add("comment", "required when the reason is OTHER")
    return value


def card_ref(violations: Violations, message: cards_pb2.CardRef, *, field: str = "card") -> CardRef:
    kind = message.WhichOneof("kind")
    if kind == "card_id":
        violations.require(f"{field}.card_id", message.card_id)
        return CardRef(card_id=message.card_id)
    if kind == "card_number":
        if not CARD_NUMBER.fullmatch(message.card_number):
            violations.add(f"{field}.card_number", "8..19 digits")
        return CardRef(card_number=message.card_number)
    violations.add(field, "required: card_id or card_number")
    return CardRef()


def card_number(violations: Violations, field: str, value: str) -> str:
    if not CARD_NUMBER.fullmatch(value):
        violations.add(field, "8..19 digits")
    return value


def binding(violations: Violations, message: cards_pb2.CardBinding, *, field: str) -> Binding:
    violations.require(f"{field}.member_id", message.member_id)
    mode = int(message.account_mode)
    if mode not in (0, 1, 2, 3):
        violations.add(f"{field}.account_mode", "MASTER, OWN_SUB_ACCOUNT or EXISTING_ACCOUNT")
        mode = 0
    if mode == AccountMode.EXISTING_ACCOUNT:
        violations.require(f"{field}.account_id", message.account_id, length_max=128)
    elif message.account_id:
        violations.add(f"{field}.account_id", "only with EXISTING_ACCOUNT")
    label = message.label.strip()
    violations.at_most(f"{field}.label", label, LABEL_LENGTH_MAX)
    return Binding(
        member_id=message.member_id,
        account_mode=AccountMode(mode) or AccountMode.MASTER,
        account_id=message.account_id,
        label=label,
    )


def future_time(violations: Violations, field: str, message: Any, name: str) -> datetime | None:
    value = mapping.optional_time(message, name)
    if value is not None and value <= datetime.now(UTC):
        violations.add(field, "must be in the future")
    return value


def enum_value(violations: Violations, field: str, value: int, allowed: range) -> int:
    if value not in allowed:
        violations.add(field, "required" if value == 0 else "not a known value")
    return value
