"""Proto <-> records for the program's configuration, field masks, input validation, and the
freezing of the draft into a RuleSetSnapshot.

No I/O here. Validation returns FieldViolations named by proto paths from the request
("earning_rule.condition", "program.redemption_policy.point_value"), so one INVALID_ARGUMENT
lists every bad field. Rule bodies and policies are kept as their proto messages in canonical
JSON (`to_json` / `from_json`): the contract is the schema, and the snapshot is made of them.
"""

from __future__ import annotations

import re
import zoneinfo
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.duration_pb2 import Duration
from google.protobuf.field_mask_pb2 import FieldMask
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp
from loyalty.common.v1 import types_pb2
from loyalty.processing.v1 import program_admin_pb2 as pa

from services.processing.domain.conditions import ConditionError, compile_condition
from services.processing.domain.program import (
    Address,
    CampaignRecord,
    CampaignState,
    GeoPoint,
    OutletRecord,
    OutletState,
    PartnerRecord,
    PartnerState,
    PointsScope,
    ProgramRecord,
    ProgramSettings,
    ProgramStatus,
    ProgramType,
    RiskFallback,
    RuleRecord,
    RuleState,
    SalesChannel,
    TerminalRecord,
    TerminalState,
    VersionRecord,
    campaign_phase,
    etag_of,
)
from shared.errors import FieldViolation, invalid_argument

MessageT = TypeVar("MessageT", bound=Message)

CODE = re.compile(r"[A-Za-z0-9_.\-]{1,64}")
TERMINAL_ID = re.compile(r"[A-Za-z0-9_.:/\-]{1,64}")
ACCOUNT_KIND = re.compile(r"[a-z0-9_]{1,32}")
CURRENCY_CODE = re.compile(r"[A-Z]{3}")
COUNTRY_CODE = re.compile(r"[A-Z]{2}")

NAME_MAX, DESCRIPTION_MAX, SLIP_TEXT_MAX, CONDITION_MAX = 128, 2000, 64, 4096
VALUE_MAX = 64  # skus, categories, regions, segments, group names
LIST_MAX = 1000  # values per list (RuleTarget, RedemptionPolicy, Campaign.partner_ids)
SPEND_ORDER_MAX = 16
TIERS_MAX = 20
RATE_BP_MAX = 100_000
PRIORITY_MAX = 1_000_000
SCALE_MAX = 4
AMOUNT_MAX = 10**15  # minor units; far above any receipt, far below int64
USES_MAX = 1_000_000
PENDING_PERIOD_MAX = timedelta(days=365)
EXPIRE_AFTER_MAX = timedelta(days=36_500)
RESTORED_LIFETIME_MAX = timedelta(days=3650)
AUTHORIZATION_TTL_MAX = timedelta(days=7)
OFFLINE_MAX_AGE_MAX = timedelta(days=90)
ADDRESS_LINES_MAX, POSTAL_CODE_MAX = 3, 32

# ------------------------------------------------------------------------------------------------
# Times, durations, JSON


def to_time(timestamp: Timestamp) -> datetime:
    return timestamp.ToDatetime(tzinfo=UTC)


def optional_time(message: Message, name: str) -> datetime | None:
    return to_time(getattr(message, name)) if message.HasField(name) else None


def set_time(timestamp: Timestamp, value: datetime | None) -> None:
    if value is not None:
        timestamp.FromDatetime(value)


def to_duration(value: timedelta) -> Duration:
    duration = Duration()
    duration.FromTimedelta(value)
    return duration


def to_json(message: Message) -> str:
    """The canonical JSON of a message: proto field names, enum names, sorted keys."""
    return json_format.MessageToJson(message, preserving_proto_field_name=True, sort_keys=True, indent=None)


def from_json(text: str, message_type: type[MessageT]) -> MessageT:
    message = message_type()
    json_format.Parse(text, message)
    return message


# ------------------------------------------------------------------------------------------------
# Field masks


@dataclass(frozen=True)
class MaskSpec:
    """Which top-level fields of a resource an update may name ("*" names them all)."""

    descriptor: Descriptor
    mutable: tuple[str, ...]


PROGRAM_MASK = MaskSpec(
    pa.Program.DESCRIPTOR,
    (
        "name",
        "type",
        "currency_code",
        "currency_scale",
        "point_scale",
        "time_zone",
        "authorization_ttl",
        "authorization_ttl_max",
        "offline_max_age",
        "risk_fallback",
        "accrual_policy",
        "redemption_policy",
        "refund_policy",
    ),
)
PARTNER_MASK = MaskSpec(
    pa.Partner.DESCRIPTOR,
    ("name", "state", "points_scope", "accrual_enabled", "redemption_enabled", "account_kind"),
)
OUTLET_MASK = MaskSpec(pa.Outlet.DESCRIPTOR, ("name", "state", "region_code", "address", "location", "time_zone"))
TERMINAL_MASK = MaskSpec(
    pa.Terminal.DESCRIPTOR, ("outlet_id", "name", "serial_number", "state", "default_channel", "offline_allowed")
)
EARNING_RULE_MASK = MaskSpec(
    pa.EarningRule.DESCRIPTOR,
    (
        "name",
        "description",
        "slip_text",
        "state",
        "campaign_id",
        "partner_id",
        "validity",
        "percent",
        "fixed",
        "per_item",
        "progressive",
        "target",
        "condition",
        "priority",
        "stacking",
        "exclusivity_group",
        "min_eligible_amount",
        "max_points_per_receipt",
        "max_uses_per_member",
        "account_kind",
        "lifetime",
    ),
)
CAMPAIGN_MASK = MaskSpec(pa.Campaign.DESCRIPTOR, ("name", "description", "state", "period", "partner_ids"))


def mask_paths(mask: FieldMask, spec: MaskSpec) -> tuple[str, ...]:
    """The paths of `mask`, checked against `spec`; "*" expands to every mutable field.
    Raises INVALID_ARGUMENT naming every unknown, immutable or output-only path."""
    paths = list(mask.paths)
    if paths == ["*"]:
        return spec.mutable
    violations = []
    if not paths:
        violations.append(FieldViolation("update_mask", 'required: the fields to change, or "*"'))
    for index, path in enumerate(paths):
        problem = _path_problem(path, spec)
        if problem:
            violations.append(FieldViolation(f"update_mask.paths[{index}]", f"{path!r}: {problem}"))
    if violations:
        raise invalid_argument(violations)
    return tuple(dict.fromkeys(paths))


def _path_problem(path: str, spec: MaskSpec) -> str | None:
    if path == "*":
        return '"*" cannot be combined with other paths'
    head, *rest = path.split(".")
    descriptor: Descriptor | None = spec.descriptor
    for position, name in enumerate([head, *rest]):
        field_descriptor = None if descriptor is None else descriptor.fields_by_name.get(name)
        if field_descriptor is None:
            return "unknown field" if position or name not in _oneof_names(spec) else "name the oneof member instead"
        if position == 0 and name not in spec.mutable:
            return "output only or immutable; it cannot be changed"
        descriptor = _singular_message(field_descriptor)
    return None


def _oneof_names(spec: MaskSpec) -> set[str]:
    return set(spec.descriptor.oneofs_by_name)


def _singular_message(field_descriptor: FieldDescriptor) -> Descriptor | None:
    """The message type a path may descend into (singular message fields only)."""
    if _is_repeated(field_descriptor) or field_descriptor.message_type is None:
        return None
    return field_descriptor.message_type


def _is_repeated(field_descriptor: Any) -> bool:
    """(Any: the stubs type descriptors of the C implementation apart from the Python ones.)"""
    return bool(field_descriptor.is_repeated)


def apply_mask(source: Message, destination: Message, paths: Iterable[str]) -> None:
    """Copy the fields named by `paths` from `source` into `destination`, replacing them: a
    field unset in `source` becomes unset; a repeated field is replaced, not appended to."""
    for path in paths:
        *parents, leaf = path.split(".")
        origin: Message | None = source
        target = destination
        for name in parents:
            origin = getattr(origin, name) if origin is not None and origin.HasField(name) else None
            target = getattr(target, name)
        _copy_field(origin, target, leaf)


def _copy_field(origin: Message | None, target: Message, name: str) -> None:
    field_descriptor = target.DESCRIPTOR.fields_by_name[name]
    if _is_repeated(field_descriptor):
        target.ClearField(name)
        if origin is not None:
            getattr(target, name).extend(getattr(origin, name))
    elif field_descriptor.message_type is not None:
        if origin is not None and origin.HasField(name):
            getattr(target, name).CopyFrom(getattr(origin, name))
        else:
            target.ClearField(name)
    elif origin is None:
        target.ClearField(name)
    else:
        setattr(target, name, getattr(origin, name))


# ------------------------------------------------------------------------------------------------
# Validation helpers


class Violations:
    """Collects FieldViolations under a prefix ("earning_rule", "program.redemption_policy")."""

    def __init__(self, prefix: str, items: list[FieldViolation] | None = None) -> None:
        self.prefix = prefix
        self.items = [] if items is None else items

    def under(self, path: str) -> Violations:
        return Violations(f"{self.prefix}.{path}", self.items)

    def add(self, path: str, description: str) -> None:
        self.items.append(FieldViolation(f"{self.prefix}.{path}" if path else self.prefix, description))

    def check(self, ok: bool, path: str, description: str) -> None:
        if not ok:
            self.add(path, description)


def _text(v: Violations, path: str, value: str, *, low: int, high: int) -> None:
    if not low <= len(value) <= high:
        v.add(path, f"{low}..{high} characters" if low else f"at most {high} characters")


def _enum(v: Violations, path: str, value: int, enum_descriptor: Any) -> None:
    """A known, specified value of the enum."""
    if value == 0 or value not in enum_descriptor.values_by_number:
        names = [n for n, d in enum_descriptor.values_by_name.items() if d.number != 0]
        v.add(path, f"one of {', '.join(names)}")


def _values(v: Violations, path: str, values: Sequence[str], *, pattern: re.Pattern[str] | None = None) -> None:
    """A list of codes: at most LIST_MAX, each 1..VALUE_MAX characters (or matching `pattern`)."""
    if len(values) > LIST_MAX:
        v.add(path, f"at most {LIST_MAX} values")
        return
    for index, value in enumerate(values):
        ok = pattern.fullmatch(value) if pattern else 1 <= len(value) <= VALUE_MAX
        if not ok:
            v.add(f"{path}[{index}]", f"1..{VALUE_MAX} characters" if pattern is None else "not a valid value")


def _money(v: Violations, path: str, money: types_pb2.Money, settings: ProgramSettings, *, positive: bool) -> None:
    if money.currency_code != settings.currency_code or money.scale != settings.currency_scale:
        v.add(
            path, f"in the program's currency: currency_code {settings.currency_code}, scale {settings.currency_scale}"
        )
    low = 1 if positive else 0
    if not low <= money.amount_minor <= AMOUNT_MAX:
        v.add(f"{path}.amount_minor", f"{low}..{AMOUNT_MAX}")


def _points(v: Violations, path: str, points: types_pb2.Points, settings: ProgramSettings, *, positive: bool) -> None:
    if points.scale != settings.point_scale:
        v.add(f"{path}.scale", f"the program's point scale, {settings.point_scale}")
    low = 1 if positive else 0
    if not low <= points.amount_minor <= AMOUNT_MAX:
        v.add(f"{path}.amount_minor", f"{low}..{AMOUNT_MAX}")


def _duration(v: Violations, path: str, duration: Duration, *, high: timedelta, positive: bool = False) -> None:
    value = duration.ToTimedelta()
    if duration.seconds < 0 or duration.nanos < 0 or (positive and value <= timedelta(0)):
        v.add(path, "must be positive" if positive else "must not be negative")
    elif value > high:
        v.add(path, f"at most {high.days} days")


def _whole_seconds(v: Violations, path: str, duration: Duration) -> None:
    if duration.nanos:
        v.add(path, "a whole number of seconds")


def valid_time_zone(name: str) -> bool:
    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        return False
    return True


def _time_range(v: Violations, path: str, time_range: types_pb2.TimeRange) -> None:
    if time_range.HasField("start_time") and time_range.HasField("end_time"):
        v.check(to_time(time_range.end_time) > to_time(time_range.start_time), f"{path}.end_time", "after start_time")


# ------------------------------------------------------------------------------------------------
# Program and policies


def program_message(program: ProgramRecord, status: ProgramStatus) -> pa.Program:
    settings = program.settings
    message = pa.Program(
        program_id=settings.program_id,
        name=program.name,
        type=int(settings.type),  # type: ignore[arg-type]
        currency_code=settings.currency_code,
        currency_scale=settings.currency_scale,
        point_scale=settings.point_scale,
        time_zone=settings.time_zone,
        authorization_ttl=to_duration(settings.authorization_ttl),
        authorization_ttl_max=to_duration(settings.authorization_ttl_max),
        offline_max_age=to_duration(settings.offline_max_age),
        risk_fallback=int(settings.risk_fallback),  # type: ignore[arg-type]
        accrual_policy=from_json(program.accrual_policy, pa.AccrualPolicy),
        redemption_policy=from_json(program.redemption_policy, pa.RedemptionPolicy),
        refund_policy=from_json(program.refund_policy, pa.RefundPolicy),
        current_rule_set_version=status.current_version,
        has_unpublished_changes=status.has_unpublished_changes,
        etag=etag_of(program.revision),
    )
    set_time(message.update_time, program.update_time)
    return message


def program_record(message: pa.Program, base: ProgramRecord) -> ProgramRecord:
    """The program as `message` says (validated), keeping what only the server sets."""
    return replace(
        base,
        name=message.name,
        settings=replace(
            base.settings,
            type=ProgramType(message.type),
            currency_code=message.currency_code,
            currency_scale=message.currency_scale,
            point_scale=message.point_scale,
            time_zone=message.time_zone,
            authorization_ttl=message.authorization_ttl.ToTimedelta(),
            authorization_ttl_max=message.authorization_ttl_max.ToTimedelta(),
            offline_max_age=message.offline_max_age.ToTimedelta(),
            risk_fallback=RiskFallback(message.risk_fallback),
        ),
        accrual_policy=to_json(message.accrual_policy),
        redemption_policy=to_json(message.redemption_policy),
        refund_policy=to_json(message.refund_policy),
    )


def program_settings_of(message: pa.Program, program_id: str) -> ProgramSettings:
    """The settings a (not yet validated) Program message would have, to check its policies
    against its own currency and scales."""
    return ProgramSettings(
        program_id=program_id,
        type=ProgramType.SINGLE_BRAND,
        currency_code=message.currency_code,
        currency_scale=message.currency_scale,
        point_scale=message.point_scale,
        time_zone=message.time_zone,
        authorization_ttl=timedelta(0),
        authorization_ttl_max=timedelta(0),
        offline_max_age=timedelta(0),
        risk_fallback=RiskFallback.ALLOW,
    )


def program_violations(message: pa.Program) -> list[FieldViolation]:
    v = Violations("program")
    _text(v, "name", message.name, low=1, high=NAME_MAX)
    _enum(v, "type", message.type, pa.ProgramType.DESCRIPTOR)
    v.check(bool(CURRENCY_CODE.fullmatch(message.currency_code)), "currency_code", "ISO 4217, e.g. RUB")
    v.check(0 <= message.currency_scale <= SCALE_MAX, "currency_scale", f"0..{SCALE_MAX}")
    v.check(0 <= message.point_scale <= SCALE_MAX, "point_scale", f"0..{SCALE_MAX}")
    v.check(valid_time_zone(message.time_zone), "time_zone", "an IANA time zone, e.g. Europe/Moscow")
    for name in ("authorization_ttl", "authorization_ttl_max", "offline_max_age"):
        _whole_seconds(v, name, getattr(message, name))
    _duration(v, "authorization_ttl_max", message.authorization_ttl_max, high=AUTHORIZATION_TTL_MAX, positive=True)
    _duration(v, "authorization_ttl", message.authorization_ttl, high=AUTHORIZATION_TTL_MAX, positive=True)
    if message.authorization_ttl.ToTimedelta() > message.authorization_ttl_max.ToTimedelta():
        v.add("authorization_ttl", "at most authorization_ttl_max")
    _duration(v, "offline_max_age", message.offline_max_age, high=OFFLINE_MAX_AGE_MAX, positive=True)
    _enum(v, "risk_fallback", message.risk_fallback, pa.RiskFallback.DESCRIPTOR)
    policy_violations(v, message, program_settings_of(message, ""))
    return v.items


def policy_violations(v: Violations, message: pa.Program, settings: ProgramSettings) -> None:
    """The three policies of `message`, against `settings` (currency and scales)."""
    _accrual_policy(v.under("accrual_policy"), message.accrual_policy)
    _redemption_policy(v.under("redemption_policy"), message.redemption_policy, settings)
    refund = message.refund_policy
    _enum(v, "refund_policy.shortfall_policy", refund.shortfall_policy, pa.RefundShortfallPolicy.DESCRIPTOR)
    _duration(
        v, "refund_policy.restored_points_min_lifetime", refund.restored_points_min_lifetime, high=RESTORED_LIFETIME_MAX
    )


def _accrual_policy(v: Violations, policy: pa.AccrualPolicy) -> None:
    _enum(v, "base", policy.base, pa.AccrualBase.DESCRIPTOR)
    _enum(v, "rounding", policy.rounding, pa.RoundingMode.DESCRIPTOR)
    _lifetime(v.under("lifetime"), policy.lifetime)
    v.check(bool(ACCOUNT_KIND.fullmatch(policy.account_kind)), "account_kind", "[a-z0-9_]{1,32}, e.g. base")


def _lifetime(v: Violations, lifetime: pa.PointsLifetime) -> None:
    _duration(v, "pending_period", lifetime.pending_period, high=PENDING_PERIOD_MAX)
    _duration(v, "expire_after", lifetime.expire_after, high=EXPIRE_AFTER_MAX)
    if lifetime.expiry_rounding:
        _enum(v, "expiry_rounding", lifetime.expiry_rounding, pa.ExpiryRounding.DESCRIPTOR)


def _redemption_policy(v: Violations, policy: pa.RedemptionPolicy, settings: ProgramSettings) -> None:
    # The point value converts money to points for percent rules too: required even when
    # redemption is off.
    _points(v, "point_value.points", policy.point_value.points, settings, positive=True)
    _money(v, "point_value.money", policy.point_value.money, settings, positive=True)
    _enum(v, "products", policy.products, pa.RedeemableProducts.DESCRIPTOR)
    for name in (
        "included_skus",
        "included_category_ids",
        "excluded_skus",
        "excluded_category_ids",
        "members_only_skus",
        "members_only_category_ids",
    ):
        _values(v, name, getattr(policy, name))
    v.check(0 <= policy.max_share_bp <= 10_000, "max_share_bp", "0..10000 (0 or 10000: no limit)")
    fields: Message = policy  # HasField by a name from the loop
    for name in ("min_receipt_amount", "min_line_remainder"):
        if fields.HasField(name):
            _money(v, name, getattr(policy, name), settings, positive=False)
    for name in ("min_points_per_receipt", "max_points_per_receipt"):
        if fields.HasField(name):
            _points(v, name, getattr(policy, name), settings, positive=False)
    most = policy.max_points_per_receipt.amount_minor
    if most and policy.min_points_per_receipt.amount_minor > most:
        v.add("min_points_per_receipt", "at most max_points_per_receipt")
    spend_order = list(policy.spend_order)
    if len(spend_order) > SPEND_ORDER_MAX or len(set(spend_order)) != len(spend_order):
        v.add("spend_order", f"at most {SPEND_ORDER_MAX} distinct account kinds")
    _values(v, "spend_order", spend_order, pattern=ACCOUNT_KIND)


# ------------------------------------------------------------------------------------------------
# Partners


def new_partner(message: pa.Partner, partner_id: str) -> PartnerRecord:
    """A partner as CreatePartner makes it: ACTIVE, coalition points unless it says otherwise."""
    return PartnerRecord(
        partner_id=partner_id,
        code=message.code,
        name=message.name,
        state=PartnerState.ACTIVE,
        points_scope=PointsScope(message.points_scope or PointsScope.COALITION),
        accrual_enabled=message.accrual_enabled,
        redemption_enabled=message.redemption_enabled,
        account_kind=message.account_kind,
    )


def partner_message(partner: PartnerRecord) -> pa.Partner:
    message = pa.Partner(
        partner_id=partner.partner_id,
        code=partner.code,
        name=partner.name,
        state=int(partner.state),  # type: ignore[arg-type]
        points_scope=int(partner.points_scope),  # type: ignore[arg-type]
        accrual_enabled=partner.accrual_enabled,
        redemption_enabled=partner.redemption_enabled,
        account_kind=partner.account_kind,
        etag=etag_of(partner.revision),
    )
    set_time(message.create_time, partner.create_time)
    set_time(message.update_time, partner.update_time)
    return message


def partner_record(message: pa.Partner, base: PartnerRecord) -> PartnerRecord:
    return replace(
        base,
        name=message.name,
        state=PartnerState(message.state),
        points_scope=PointsScope(message.points_scope),
        accrual_enabled=message.accrual_enabled,
        redemption_enabled=message.redemption_enabled,
        account_kind=message.account_kind,
    )


def partner_violations(message: pa.Partner, *, creating: bool) -> list[FieldViolation]:
    v = Violations("partner")
    if creating:
        v.check(bool(CODE.fullmatch(message.code)), "code", "1..64 characters from [A-Za-z0-9_.-]")
    else:
        _live_state(v, message.state, "ACTIVE or SUSPENDED (archive with ArchivePartner)")
    _text(v, "name", message.name, low=1, high=NAME_MAX)
    scope = message.points_scope or (PointsScope.COALITION if creating else 0)
    _enum(v, "points_scope", scope, pa.PartnerPointsScope.DESCRIPTOR)
    if scope == PointsScope.ISOLATED:
        v.check(bool(ACCOUNT_KIND.fullmatch(message.account_kind)), "account_kind", "required: [a-z0-9_]{1,32}")
    else:
        v.check(not message.account_kind, "account_kind", "only with PARTNER_POINTS_SCOPE_ISOLATED")
    return v.items


# ACTIVE and SUSPENDED (PAUSED for rules and campaigns) share their numbers in every state enum.
_SETTABLE_STATES = (PartnerState.ACTIVE, PartnerState.SUSPENDED)


def _live_state(v: Violations, value: int, description: str) -> None:
    """A state an update (or a create that names one) may set: never ARCHIVED, which only the
    Archive RPCs reach, for good."""
    v.check(value in _SETTABLE_STATES, "state", description)


# ------------------------------------------------------------------------------------------------
# Outlets


def new_outlet(message: pa.Outlet, outlet_id: str) -> OutletRecord:
    """An outlet as CreateOutlet makes it: ACTIVE."""
    base = OutletRecord(
        outlet_id=outlet_id,
        partner_id=message.partner_id,
        code=message.code,
        name="",
        state=OutletState.ACTIVE,
        region_code="",
        address=None,
        location=None,
        time_zone="",
    )
    source = pa.Outlet()
    source.CopyFrom(message)
    source.state = pa.OUTLET_STATE_ACTIVE  # ignored on create
    return outlet_record(source, base)


def outlet_message(outlet: OutletRecord) -> pa.Outlet:
    message = pa.Outlet(
        outlet_id=outlet.outlet_id,
        partner_id=outlet.partner_id,
        code=outlet.code,
        name=outlet.name,
        state=int(outlet.state),  # type: ignore[arg-type]
        region_code=outlet.region_code,
        time_zone=outlet.time_zone,
        etag=etag_of(outlet.revision),
    )
    if outlet.address is not None:
        address = outlet.address
        message.address.CopyFrom(
            pa.Address(
                country_code=address.country_code,
                region=address.region,
                city=address.city,
                postal_code=address.postal_code,
                address_lines=address.lines,
            )
        )
    if outlet.location is not None:
        message.location.CopyFrom(
            pa.GeoPoint(latitude_e7=outlet.location.latitude_e7, longitude_e7=outlet.location.longitude_e7)
        )
    set_time(message.create_time, outlet.create_time)
    set_time(message.update_time, outlet.update_time)
    return message


def outlet_record(message: pa.Outlet, base: OutletRecord) -> OutletRecord:
    address = None
    if message.HasField("address"):
        source = message.address
        address = Address(
            country_code=source.country_code,
            region=source.region,
            city=source.city,
            postal_code=source.postal_code,
            lines=tuple(source.address_lines),
        )
    location = None
    if message.HasField("location"):
        location = GeoPoint(latitude_e7=message.location.latitude_e7, longitude_e7=message.location.longitude_e7)
    return replace(
        base,
        name=message.name,
        state=OutletState(message.state),
        region_code=message.region_code,
        address=address,
        location=location,
        time_zone=message.time_zone,
    )


def outlet_violations(message: pa.Outlet, *, creating: bool) -> list[FieldViolation]:
    v = Violations("outlet")
    if creating:
        v.check(bool(message.partner_id), "partner_id", "required")
        v.check(1 <= len(message.code) <= VALUE_MAX and message.code.isprintable(), "code", "1..64 characters")
    else:
        _live_state(v, message.state, "ACTIVE or SUSPENDED (archive with ArchiveOutlet)")
    _text(v, "name", message.name, low=1, high=NAME_MAX)
    _text(v, "region_code", message.region_code, low=0, high=VALUE_MAX)
    address = message.address
    v.check(
        not address.country_code or bool(COUNTRY_CODE.fullmatch(address.country_code)),
        "address.country_code",
        "ISO 3166-1 alpha-2, e.g. RU",
    )
    _text(v, "address.region", address.region, low=0, high=NAME_MAX)
    _text(v, "address.city", address.city, low=0, high=NAME_MAX)
    _text(v, "address.postal_code", address.postal_code, low=0, high=POSTAL_CODE_MAX)
    if len(address.address_lines) > ADDRESS_LINES_MAX:
        v.add("address.address_lines", f"at most {ADDRESS_LINES_MAX} lines")
    for index, line in enumerate(address.address_lines):
        _text(v, f"address.address_lines[{index}]", line, low=1, high=NAME_MAX)
    location = message.location
    v.check(abs(location.latitude_e7) <= 900_000_000, "location.latitude_e7", "-900000000..900000000")
    v.check(abs(location.longitude_e7) <= 1_800_000_000, "location.longitude_e7", "-1800000000..1800000000")
    v.check(not message.time_zone or valid_time_zone(message.time_zone), "time_zone", "an IANA time zone, or empty")
    return v.items


# ------------------------------------------------------------------------------------------------
# Terminals


def new_terminal(message: pa.Terminal) -> TerminalRecord:
    return TerminalRecord(
        terminal_id=message.terminal_id,
        outlet_id=message.outlet_id,
        name=message.name,
        serial_number=message.serial_number,
        state=TerminalState.ACTIVE,
        default_channel=SalesChannel(message.default_channel or SalesChannel.POS),
        offline_allowed=message.offline_allowed,
    )


def terminal_message(terminal: TerminalRecord) -> pa.Terminal:
    message = pa.Terminal(
        terminal_id=terminal.terminal_id,
        outlet_id=terminal.outlet_id,
        partner_id=terminal.partner_id,
        name=terminal.name,
        serial_number=terminal.serial_number,
        state=int(terminal.state),  # type: ignore[arg-type]
        default_channel=int(terminal.default_channel),  # type: ignore[arg-type]
        offline_allowed=terminal.offline_allowed,
        etag=etag_of(terminal.revision),
    )
    set_time(message.last_seen_time, terminal.last_seen_time)
    set_time(message.create_time, terminal.create_time)
    set_time(message.update_time, terminal.update_time)
    return message


def terminal_record(message: pa.Terminal, base: TerminalRecord) -> TerminalRecord:
    return replace(
        base,
        outlet_id=message.outlet_id,
        name=message.name,
        serial_number=message.serial_number,
        state=TerminalState(message.state),
        default_channel=SalesChannel(message.default_channel),
        offline_allowed=message.offline_allowed,
    )


def terminal_violations(message: pa.Terminal, *, creating: bool) -> list[FieldViolation]:
    v = Violations("terminal")
    if creating:
        v.check(
            bool(TERMINAL_ID.fullmatch(message.terminal_id)), "terminal_id", "1..64 characters from [A-Za-z0-9_.:/-]"
        )
    else:
        _live_state(v, message.state, "ACTIVE or SUSPENDED (archive with ArchiveTerminal)")
    v.check(bool(message.outlet_id), "outlet_id", "required")
    _text(v, "name", message.name, low=0, high=NAME_MAX)
    _text(v, "serial_number", message.serial_number, low=0, high=NAME_MAX)
    channel = message.default_channel or (SalesChannel.POS if creating else 0)
    _enum(v, "default_channel", channel, types_pb2.SalesChannel.DESCRIPTOR)
    return v.items


# ------------------------------------------------------------------------------------------------
# Campaigns


def new_campaign(message: pa.Campaign, campaign_id: str) -> CampaignRecord:
    return CampaignRecord(
        campaign_id=campaign_id,
        code=message.code,
        name=message.name,
        description=message.description,
        state=CampaignState(message.state or CampaignState.ACTIVE),
        start_time=to_time(message.period.start_time),
        end_time=optional_time(message.period, "end_time"),
        partner_ids=tuple(message.partner_ids),
    )


def campaign_message(campaign: CampaignRecord, now: datetime | None) -> pa.Campaign:
    """The campaign; its phase relative to `now` (unset when None, as in a frozen snapshot)."""
    message = pa.Campaign(
        campaign_id=campaign.campaign_id,
        code=campaign.code,
        name=campaign.name,
        description=campaign.description,
        state=int(campaign.state),  # type: ignore[arg-type]
        partner_ids=campaign.partner_ids,
        earning_rule_ids=campaign.earning_rule_ids,
        etag=etag_of(campaign.revision),
    )
    set_time(message.period.start_time, campaign.start_time)
    set_time(message.period.end_time, campaign.end_time)
    if now is not None:
        message.phase = int(campaign_phase(campaign.start_time, campaign.end_time, now))  # type: ignore[assignment]
    set_time(message.create_time, campaign.create_time)
    set_time(message.update_time, campaign.update_time)
    return message


def campaign_record(message: pa.Campaign, base: CampaignRecord) -> CampaignRecord:
    return replace(
        base,
        name=message.name,
        description=message.description,
        state=CampaignState(message.state),
        start_time=to_time(message.period.start_time),
        end_time=optional_time(message.period, "end_time"),
        partner_ids=tuple(message.partner_ids),
    )


def campaign_violations(message: pa.Campaign, *, creating: bool) -> list[FieldViolation]:
    v = Violations("campaign")
    if creating:
        v.check(bool(CODE.fullmatch(message.code)), "code", "1..64 characters from [A-Za-z0-9_.-]")
    if message.state or not creating:
        _live_state(v, message.state, "ACTIVE or PAUSED (archive with ArchiveCampaign)")
    _text(v, "name", message.name, low=1, high=NAME_MAX)
    _text(v, "description", message.description, low=0, high=DESCRIPTION_MAX)
    v.check(message.period.HasField("start_time"), "period.start_time", "required")
    _time_range(v, "period", message.period)
    _values(v, "partner_ids", message.partner_ids)
    return v.items


# ------------------------------------------------------------------------------------------------
# Earning rules

# Kept in columns (filters, order, foreign keys) or set by the server: not in the JSON body.
_RULE_COLUMNS = (
    "rule_id",
    "code",
    "state",
    "campaign_id",
    "partner_id",
    "priority",
    "etag",
    "create_time",
    "update_time",
)


def rule_with_defaults(message: pa.EarningRule) -> pa.EarningRule:
    """A rule as CreateEarningRule takes it: ACTIVE and STACKABLE unless it says otherwise."""
    rule = pa.EarningRule()
    rule.CopyFrom(message)
    rule.state = rule.state or pa.EARNING_RULE_STATE_ACTIVE
    rule.stacking = rule.stacking or pa.STACKING_MODE_STACKABLE
    return rule


def rule_record(message: pa.EarningRule, *, rule_id: str, base: RuleRecord | None = None) -> RuleRecord:
    body: Message = pa.EarningRule()
    body.CopyFrom(message)
    for name in _RULE_COLUMNS:
        body.ClearField(name)
    record = RuleRecord(
        rule_id=rule_id,
        code=message.code,
        state=RuleState(message.state),
        campaign_id=message.campaign_id,
        partner_id=message.partner_id,
        priority=message.priority,
        body=to_json(body),
    )
    if base is not None:
        record = replace(record, code=base.code, revision=base.revision, create_time=base.create_time)
    return record


def rule_message(rule: RuleRecord) -> pa.EarningRule:
    message = from_json(rule.body, pa.EarningRule)
    message.rule_id = rule.rule_id
    message.code = rule.code
    message.state = int(rule.state)  # type: ignore[assignment]
    message.campaign_id = rule.campaign_id
    message.partner_id = rule.partner_id
    message.priority = rule.priority
    message.etag = etag_of(rule.revision)
    set_time(message.create_time, rule.create_time)
    set_time(message.update_time, rule.update_time)
    return message


def rule_violations(
    message: pa.EarningRule, settings: ProgramSettings, *, creating: bool, prefix: str = "earning_rule"
) -> list[FieldViolation]:
    """Every field of an earning rule (the reward in the program's currency and scales; the
    condition compiled)."""
    v = Violations(prefix)
    if creating:
        v.check(bool(CODE.fullmatch(message.code)), "code", "1..64 characters from [A-Za-z0-9_.-]")
    _live_state(v, message.state, "ACTIVE or PAUSED (archive with ArchiveEarningRule)")
    _text(v, "name", message.name, low=1, high=NAME_MAX)
    _text(v, "description", message.description, low=0, high=DESCRIPTION_MAX)
    _text(v, "slip_text", message.slip_text, low=0, high=SLIP_TEXT_MAX)
    _time_range(v, "validity", message.validity)
    _reward(v, message, settings)
    _target(v.under("target"), message.target)
    _condition(v, message.condition)
    v.check(abs(message.priority) <= PRIORITY_MAX, "priority", f"-{PRIORITY_MAX}..{PRIORITY_MAX}")
    _enum(v, "stacking", message.stacking, pa.StackingMode.DESCRIPTOR)
    _text(v, "exclusivity_group", message.exclusivity_group, low=0, high=VALUE_MAX)
    if message.HasField("min_eligible_amount"):
        _money(v, "min_eligible_amount", message.min_eligible_amount, settings, positive=False)
    if message.HasField("max_points_per_receipt"):
        _points(v, "max_points_per_receipt", message.max_points_per_receipt, settings, positive=False)
    v.check(0 <= message.max_uses_per_member <= USES_MAX, "max_uses_per_member", f"0..{USES_MAX}")
    v.check(
        not message.account_kind or bool(ACCOUNT_KIND.fullmatch(message.account_kind)),
        "account_kind",
        "[a-z0-9_]{1,32}, or empty",
    )
    if message.HasField("lifetime"):
        _lifetime(v.under("lifetime"), message.lifetime)
    return v.items


def _reward(v: Violations, message: pa.EarningRule, settings: ProgramSettings) -> None:
    kind = message.WhichOneof("reward")
    if kind is None:
        v.add("reward", "required: one of percent, fixed, per_item, progressive")
    elif kind == "percent":
        v.check(1 <= message.percent.rate_bp <= RATE_BP_MAX, "percent.rate_bp", f"1..{RATE_BP_MAX}")
    elif kind == "fixed":
        _points(v, "fixed.points", message.fixed.points, settings, positive=True)
    elif kind == "per_item":
        _points(v, "per_item.points_per_unit", message.per_item.points_per_unit, settings, positive=True)
    else:
        _progressive(v.under("progressive"), message.progressive, settings)


def _progressive(v: Violations, reward: pa.ProgressiveReward, settings: ProgramSettings) -> None:
    _enum(v, "basis", reward.basis, pa.ProgressiveBasis.DESCRIPTOR)
    if reward.basis == pa.PROGRESSIVE_BASIS_CUMULATIVE:
        _enum(v, "period", reward.period, pa.CumulativePeriod.DESCRIPTOR)
        if reward.period == pa.CUMULATIVE_PERIOD_ROLLING_DAYS:
            v.check(1 <= reward.rolling_days <= 366, "rolling_days", "1..366")
    _enum(v, "method", reward.method, pa.ProgressiveMethod.DESCRIPTOR)
    if not 1 <= len(reward.tiers) <= TIERS_MAX:
        v.add("tiers", f"1..{TIERS_MAX} tiers")
    previous = -1
    for index, tier in enumerate(reward.tiers):
        _money(v, f"tiers[{index}].threshold", tier.threshold, settings, positive=False)
        v.check(0 <= tier.rate_bp <= RATE_BP_MAX, f"tiers[{index}].rate_bp", f"0..{RATE_BP_MAX}")
        v.check(tier.threshold.amount_minor > previous, f"tiers[{index}].threshold", "strictly increasing")
        previous = tier.threshold.amount_minor


def _target(v: Violations, target: pa.RuleTarget) -> None:
    for name in (
        "skus",
        "category_ids",
        "excluded_skus",
        "excluded_category_ids",
        "outlet_ids",
        "region_codes",
        "member_segments",
    ):
        _values(v, name, getattr(target, name))
    for name, enum_descriptor in (
        ("channels", types_pb2.SalesChannel.DESCRIPTOR),
        ("days_of_week", pa.Weekday.DESCRIPTOR),
    ):
        values = getattr(target, name)
        if len(values) > LIST_MAX:
            v.add(name, f"at most {LIST_MAX} values")
        for index, value in enumerate(values):
            _enum(v, f"{name}[{index}]", value, enum_descriptor)
    if len(target.times_of_day) > LIST_MAX:
        v.add("times_of_day", f"at most {LIST_MAX} values")
    for index, window in enumerate(target.times_of_day):
        v.check(0 <= window.start_minute <= 1439, f"times_of_day[{index}].start_minute", "0..1439")
        v.check(1 <= window.end_minute <= 1440, f"times_of_day[{index}].end_minute", "1..1440")
        v.check(window.start_minute != window.end_minute, f"times_of_day[{index}]", "an empty window")


def _condition(v: Violations, condition: str) -> None:
    if not condition:
        return
    if len(condition) > CONDITION_MAX:
        v.add("condition", f"at most {CONDITION_MAX} characters")
        return
    try:
        compile_condition(condition)
    except ConditionError as error:
        v.add("condition", f"does not compile: {error}")


# ------------------------------------------------------------------------------------------------
# Rule set versions


def version_message(version: VersionRecord) -> pa.RuleSetVersion:
    message = pa.RuleSetVersion(
        version=version.version,
        state=int(version.state),  # type: ignore[arg-type]
        published_by=types_pb2.Actor(type=version.published_by_type, id=version.published_by_id),  # type: ignore[arg-type]
        comment=version.comment,
        earning_rule_count=version.earning_rule_count,
        campaign_count=version.campaign_count,
    )
    set_time(message.effective_time, version.effective_time)
    set_time(message.publish_time, version.publish_time)
    return message


@dataclass(frozen=True, kw_only=True)
class Draft:
    """Everything a publication freezes, read in one transaction."""

    program: ProgramRecord
    # Non-archived, in rule order / calendar order.
    rules: Sequence[RuleRecord]
    campaigns: Sequence[CampaignRecord]
    # The partners and outlets the rules name (for warnings about archived ones).
    partners: dict[str, PartnerRecord]
    outlets: dict[str, OutletRecord]
    now: datetime


@dataclass(frozen=True, kw_only=True)
class Frozen:
    snapshot: pa.RuleSetSnapshot
    violations: list[FieldViolation] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def freeze_draft(draft: Draft) -> Frozen:
    """The RuleSetSnapshot of a draft: its policies, its ACTIVE campaigns, and its ACTIVE rules
    whose campaign (if any) is among them. Problems that make the draft unusable are
    violations (named by rule code); problems that only make parts of it inert are warnings."""
    settings = draft.program.settings
    program = program_message(draft.program, ProgramStatus(current_version=0, has_unpublished_changes=False))
    violations = Violations("program")
    policy_violations(violations, program, settings)
    warnings: list[str] = []
    campaigns = {c.campaign_id: c for c in draft.campaigns if c.state is CampaignState.ACTIVE}
    for campaign in campaigns.values():
        if campaign.end_time is not None and campaign.end_time <= draft.now:
            warnings.append(f"campaign {campaign.code} has ended")
    rules = []
    for rule in draft.rules:
        if rule.state is not RuleState.ACTIVE:
            continue
        message = rule_message(rule)
        violations.items.extend(
            rule_violations(message, settings, creating=False, prefix=f"earning_rules[{rule.code}]")
        )
        if rule.campaign_id and rule.campaign_id not in campaigns:
            warnings.append(f"rule {rule.code} left out: its campaign is not active")
            continue
        warnings.extend(_rule_warnings(message, draft))
        rules.append(message)
    snapshot = pa.RuleSetSnapshot(
        accrual_policy=program.accrual_policy,
        redemption_policy=program.redemption_policy,
        refund_policy=program.refund_policy,
        earning_rules=rules,
        campaigns=[_frozen_campaign(c, rules) for c in campaigns.values()],
    )
    if program.refund_policy.shortfall_policy == pa.REFUND_SHORTFALL_POLICY_ALLOW_DEBT:
        warnings.append("refund policy ALLOW_DEBT: where an account kind does not allow debt, WITHIN_BALANCE applies")
    if not rules:
        warnings.append("no active earning rules: no points will be earned")
    return Frozen(snapshot=snapshot, violations=violations.items, warnings=warnings)


def _frozen_campaign(campaign: CampaignRecord, rules: Sequence[pa.EarningRule]) -> pa.Campaign:
    message = campaign_message(campaign, None)
    del message.earning_rule_ids[:]
    message.earning_rule_ids.extend(r.rule_id for r in rules if r.campaign_id == campaign.campaign_id)
    return message


def _rule_warnings(rule: pa.EarningRule, draft: Draft) -> list[str]:
    warnings = []
    if rule.validity.HasField("end_time") and to_time(rule.validity.end_time) <= draft.now:
        warnings.append(f"rule {rule.code}: its validity has ended")
    partner = draft.partners.get(rule.partner_id)
    if partner is not None and partner.state is PartnerState.ARCHIVED:
        warnings.append(f"rule {rule.code} targets archived partner {partner.code}")
    for outlet_id in rule.target.outlet_ids:
        outlet = draft.outlets.get(outlet_id)
        if outlet is not None and outlet.state is OutletState.ARCHIVED:
            warnings.append(f"rule {rule.code} targets archived outlet {outlet.code}")
    return warnings
