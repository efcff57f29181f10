"""The cards service's values: members, cards, templates, batches, history entries.

Pure data, no I/O. Enum numbers mirror protos/loyalty/cards/v1/cards.proto and
common/v1/types.proto (a unit test keeps them equal), so the edge maps them without tables.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import IntEnum


class CardState(IntEnum):
    UNSPECIFIED = 0
    GENERATED = 1
    ISSUED = 2
    ACTIVE = 3
    BLOCKED = 4
    REPLACED = 5
    EXPIRED = 6


class CardType(IntEnum):
    UNSPECIFIED = 0
    DISCOUNT = 1
    BONUS = 2
    MULTI = 3
    GIFT = 4
    VIRTUAL = 5


class AccountMode(IntEnum):
    UNSPECIFIED = 0
    MASTER = 1
    OWN_SUB_ACCOUNT = 2
    EXISTING_ACCOUNT = 3


class CardBlockReason(IntEnum):
    UNSPECIFIED = 0
    LOST = 1
    STOLEN = 2
    DAMAGED = 3
    FRAUD_SUSPECTED = 4
    CUSTOMER_REQUEST = 5
    OTHER = 6


class ReplacementReason(IntEnum):
    UNSPECIFIED = 0
    LOST = 1
    STOLEN = 2
    DAMAGED = 3
    EXPIRED = 4
    UPGRADE = 5
    OTHER = 6


class CardEventType(IntEnum):
    UNSPECIFIED = 0
    GENERATED = 1
    ISSUED = 2
    ACTIVATED = 3
    BOUND = 4
    BLOCKED = 5
    UNBLOCKED = 6
    REPLACED = 7
    REPLACEMENT = 8
    EXPIRED = 9


class MemberState(IntEnum):
    UNSPECIFIED = 0
    ACTIVE = 1
    BLOCKED = 2
    CLOSED = 3


class MemberBlockReason(IntEnum):
    UNSPECIFIED = 0
    FRAUD_SUSPECTED = 1
    CUSTOMER_REQUEST = 2
    TERMS_VIOLATION = 3
    OTHER = 4


class ConsentStatus(IntEnum):
    UNSPECIFIED = 0
    GRANTED = 1
    REVOKED = 2


class CheckDigitScheme(IntEnum):
    UNSPECIFIED = 0
    LUHN = 1
    GS1_MOD10 = 2


class Symbology(IntEnum):
    UNSPECIFIED = 0
    EAN_13 = 1
    CODE_128 = 2


class ActorType(IntEnum):
    UNSPECIFIED = 0
    TERMINAL = 1
    OPERATOR = 2
    MEMBER = 3
    SYSTEM = 4


class IdentifierType(IntEnum):
    UNSPECIFIED = 0
    CARD_NUMBER = 1
    PHONE = 2
    QR_TOKEN = 3
    MEMBER_ID = 4


@dataclass(frozen=True)
class Actor:
    type: ActorType
    id: str


# The actor of background work (expiry, completing a registration).
SYSTEM_ACTOR = Actor(ActorType.SYSTEM, "cards")


@dataclass(frozen=True)
class BirthDate:
    """A calendar date whose year may be unknown (0)."""

    year: int
    month: int
    day: int


@dataclass(frozen=True)
class ChannelConsent:
    status: ConsentStatus = ConsentStatus.UNSPECIFIED
    update_time: datetime | None = None
    actor: Actor | None = None


@dataclass(frozen=True)
class Consents:
    sms: ChannelConsent = ChannelConsent()
    email: ChannelConsent = ChannelConsent()
    push: ChannelConsent = ChannelConsent()


CHANNELS = ("sms", "email", "push")


@dataclass(frozen=True)
class Profile:
    """The member's fields a person may change (UpdateMember)."""

    phone: str
    first_name: str = ""
    last_name: str = ""
    middle_name: str = ""
    email: str = ""
    birth_date: BirthDate | None = None
    language_code: str = ""
    segments: tuple[str, ...] = ()


@dataclass(frozen=True)
class WalletAccount:
    """One of a member's wallet sub-accounts (ids never change)."""

    account_id: str
    kind: str


@dataclass(frozen=True, kw_only=True)
class Member:
    member_id: str
    program_id: str
    partner_id: str
    profile: Profile
    consents: Consents
    state: MemberState
    block_reason: MemberBlockReason
    state_comment: str
    state_actor: Actor
    state_time: datetime
    # Empty while the wallet accounts are still being opened (a pending registration).
    master_account_id: str
    registration_channel: int
    registration_outlet_id: str
    create_time: datetime
    update_time: datetime
    # "<actor type>:<actor id>/<idempotency key>" of the registration that created the row.
    registration_key: str = ""
    # The wallet sub-accounts opened with the master account, in the wallet's order (empty for
    # members registered before they were recorded, and while pending).
    wallet_accounts: tuple[WalletAccount, ...] = ()

    @property
    def accounts_open(self) -> bool:
        return bool(self.master_account_id)


@dataclass(frozen=True, kw_only=True)
class Template:
    template_id: str
    program_id: str
    display_name: str
    prefix: str
    length: int
    check_digit_scheme: CheckDigitScheme
    symbology: Symbology
    qr_payload_format: str
    capacity: int
    allocated_count: int
    create_time: datetime
    creator: Actor


@dataclass(frozen=True, kw_only=True)
class Batch:
    batch_id: str
    program_id: str
    template_id: str
    card_type: CardType
    card_count: int
    display_name: str
    expire_time: datetime | None
    create_time: datetime
    creator: Actor


@dataclass(frozen=True, kw_only=True)
class Block:
    reason: CardBlockReason
    comment: str
    actor: Actor
    block_time: datetime
    previous_state: CardState


@dataclass(frozen=True, kw_only=True)
class Card:
    card_id: str
    card_number: str
    program_id: str
    type: CardType
    state: CardState
    template_id: str
    batch_id: str = ""
    member_id: str = ""
    account_mode: AccountMode = AccountMode.UNSPECIFIED
    account_id: str = ""
    gift_account_id: str = ""
    label: str = ""
    block: Block | None = None
    replaced_by_card_id: str = ""
    replaces_card_id: str = ""
    expire_time: datetime | None = None
    create_time: datetime
    issue_time: datetime | None = None
    bind_time: datetime | None = None
    state_time: datetime
    # From the template: how the number is printed.
    symbology: Symbology = Symbology.UNSPECIFIED
    qr_payload_format: str = ""

    def expired_at(self, now: datetime) -> bool:
        return self.expire_time is not None and self.expire_time <= now


@dataclass(frozen=True, kw_only=True)
class Binding:
    """How a card is bound: to whom and to which account."""

    member_id: str
    account_mode: AccountMode
    account_id: str = ""
    label: str = ""


@dataclass(frozen=True, kw_only=True)
class CardEvent:
    event_id: str
    card_id: str
    type: CardEventType
    from_state: CardState
    to_state: CardState
    actor: Actor
    block_reason: CardBlockReason = CardBlockReason.UNSPECIFIED
    replacement_reason: ReplacementReason = ReplacementReason.UNSPECIFIED
    comment: str = ""
    member_id: str = ""
    related_card_id: str = ""
    event_time: datetime | None = None
    # Position in the card's history (0 for the GENERATED entry derived from the batch).
    sequence: int = 0


@dataclass(frozen=True)
class Change:
    """What a card operation decided: the card afterwards and the history entries it adds."""

    card: Card
    events: tuple[CardEvent, ...] = ()
