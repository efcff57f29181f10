"""The program's configuration as plain values: what the register flow reads on the hot path
(`ProgramSettings`, `TerminalContext`) and the records the admin API stores.

Pure: no protobuf, gRPC or database imports. Enum numbers are the proto's (program_admin.proto,
common/v1/types.proto), so mapping is `int()` both ways.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import IntEnum


class ProgramType(IntEnum):
    SINGLE_BRAND = 1
    COALITION = 2


class RiskFallback(IntEnum):
    ALLOW = 1
    ALLOW_ACCRUAL_ONLY = 2
    REFUSE = 3


class SalesChannel(IntEnum):
    POS = 1
    ONLINE = 2
    APP = 3


class PartnerState(IntEnum):
    ACTIVE = 1
    SUSPENDED = 2
    ARCHIVED = 3


class PointsScope(IntEnum):
    COALITION = 1
    ISOLATED = 2


class OutletState(IntEnum):
    ACTIVE = 1
    SUSPENDED = 2
    ARCHIVED = 3


class TerminalState(IntEnum):
    ACTIVE = 1
    SUSPENDED = 2
    ARCHIVED = 3


class RuleState(IntEnum):
    ACTIVE = 1
    PAUSED = 2
    ARCHIVED = 3


class CampaignState(IntEnum):
    ACTIVE = 1
    PAUSED = 2
    ARCHIVED = 3


class CampaignPhase(IntEnum):
    UPCOMING = 1
    RUNNING = 2
    ENDED = 3


class VersionState(IntEnum):
    SCHEDULED = 1
    CURRENT = 2
    SUPERSEDED = 3
    CANCELLED = 4


# -- what the register flow reads -------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class ProgramSettings:
    """The program's non-versioned settings: a change takes effect at once."""

    program_id: str
    type: ProgramType
    currency_code: str
    currency_scale: int
    point_scale: int
    # IANA zone for outlets without their own and for calendar periods.
    time_zone: str
    # Authorize without authorization_ttl gets this; a register may ask for at most the max.
    authorization_ttl: timedelta
    authorization_ttl_max: timedelta
    # Offline operations older than this (by their original time) are OFFLINE_OPERATION_TOO_OLD.
    offline_max_age: timedelta
    risk_fallback: RiskFallback


@dataclass(frozen=True, kw_only=True)
class TerminalContext:
    """A terminal with its outlet and partner: everything the flow needs to accept a call."""

    terminal_id: str
    terminal_state: TerminalState
    # Assumed for receipts that do not set a channel.
    default_channel: SalesChannel
    # Whether UploadOfflineBatch is accepted from this terminal.
    offline_allowed: bool
    outlet_id: str
    outlet_code: str
    outlet_state: OutletState
    region_code: str
    # The outlet's own IANA zone, or the program's when the outlet has none.
    time_zone: str
    partner_id: str
    partner_code: str
    partner_state: PartnerState
    points_scope: PointsScope
    # PointsScope.ISOLATED only: the wallet account kind of the partner's own points.
    partner_account_kind: str
    accrual_enabled: bool
    redemption_enabled: bool

    def inactive_part(self) -> str | None:
        """ "terminal", "outlet" or "partner" when that one is not ACTIVE (every register call is
        then PERMISSION_DENIED); None when all three are."""
        if self.terminal_state is not TerminalState.ACTIVE:
            return "terminal"
        if self.outlet_state is not OutletState.ACTIVE:
            return "outlet"
        if self.partner_state is not PartnerState.ACTIVE:
            return "partner"
        return None


# -- what the admin API stores ----------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class ProgramRecord:
    settings: ProgramSettings
    name: str
    # The draft policies as canonical proto JSON (AccrualPolicy, RedemptionPolicy, RefundPolicy).
    accrual_policy: str
    redemption_policy: str
    refund_policy: str
    revision: int = 0
    draft_revision: int = 0
    update_time: datetime | None = None


@dataclass(frozen=True, kw_only=True)
class ProgramStatus:
    """What the program's own row cannot say: where publication stands."""

    # The version in force now; 0 before the first publication.
    current_version: int
    # True when the draft changed since the latest non-cancelled version froze it.
    has_unpublished_changes: bool


@dataclass(frozen=True, kw_only=True)
class PartnerRecord:
    partner_id: str
    code: str
    name: str
    state: PartnerState
    points_scope: PointsScope
    accrual_enabled: bool
    redemption_enabled: bool
    account_kind: str
    revision: int = 0
    create_time: datetime | None = None
    update_time: datetime | None = None


@dataclass(frozen=True, kw_only=True)
class Address:
    country_code: str = ""
    region: str = ""
    city: str = ""
    postal_code: str = ""
    lines: tuple[str, ...] = ()


@dataclass(frozen=True, kw_only=True)
class GeoPoint:
    latitude_e7: int
    longitude_e7: int


@dataclass(frozen=True, kw_only=True)
class OutletRecord:
    outlet_id: str
    partner_id: str
    code: str
    name: str
    state: OutletState
    region_code: str
    address: Address | None
    location: GeoPoint | None
    time_zone: str
    revision: int = 0
    create_time: datetime | None = None
    update_time: datetime | None = None


@dataclass(frozen=True, kw_only=True)
class TerminalRecord:
    terminal_id: str
    outlet_id: str
    name: str
    serial_number: str
    state: TerminalState
    default_channel: SalesChannel
    offline_allowed: bool
    # Output only: derived from the outlet.
    partner_id: str = ""
    last_seen_time: datetime | None = None
    revision: int = 0
    create_time: datetime | None = None
    update_time: datetime | None = None


@dataclass(frozen=True, kw_only=True)
class CampaignRecord:
    campaign_id: str
    code: str
    name: str
    description: str
    state: CampaignState
    start_time: datetime
    end_time: datetime | None
    partner_ids: tuple[str, ...]
    # Output only: its non-archived rules, in rule order.
    earning_rule_ids: tuple[str, ...] = ()
    revision: int = 0
    create_time: datetime | None = None
    update_time: datetime | None = None


@dataclass(frozen=True, kw_only=True)
class RuleRecord:
    rule_id: str
    code: str
    state: RuleState
    campaign_id: str
    partner_id: str
    priority: int
    # The rest of the EarningRule as canonical proto JSON (name, reward, target, condition...).
    body: str
    revision: int = 0
    create_time: datetime | None = None
    update_time: datetime | None = None


@dataclass(frozen=True, kw_only=True)
class VersionRecord:
    version: int
    state: VersionState
    effective_time: datetime
    publish_time: datetime
    published_by_type: int
    published_by_id: str
    comment: str
    earning_rule_count: int
    campaign_count: int


@dataclass(frozen=True)
class Actor:
    """Who makes a change (loyalty.common.v1.Actor): recorded for audit, scopes idempotency keys."""

    type: int
    id: str


def etag_of(revision: int) -> str:
    """The etag of a resource at `revision` (bumped by every change of it): the revision in
    decimal, the `expected_version` of errors.proto. Clients compare it, never compute it."""
    return str(revision)


def campaign_phase(start_time: datetime, end_time: datetime | None, now: datetime) -> CampaignPhase:
    """Where a campaign's period [start, end) stands relative to `now`."""
    if now < start_time:
        return CampaignPhase.UPCOMING
    if end_time is not None and now >= end_time:
        return CampaignPhase.ENDED
    return CampaignPhase.RUNNING
