"""Use cases of the program's configuration (ProgramAdminService): each owns its connection and
transaction; SQL is in store/program.py, shapes and validation in program_mapping.py.

The program. A deployment runs one program, and it always exists: the migration creates it
with the defaults program_admin.proto calls "out of the box" (15-minute authorizations, at most
24 hours, 7-day offline window, ALLOW_ACCRUAL_ONLY risk fallback, rounding DOWN, refunds
WITHIN_BALANCE, redemption of every product at 1 point = 1.00) in RUB with two-digit points and
an opaque generated program_id. GetProgram works at once; the operator adjusts the program with
UpdateProgram, where currency and scales can change only until the first operation.

Every write runs in one transaction that first bumps the configuration generation (locking it:
admin writes are serialized, so quotas, uniqueness and version numbers need no retries), then
changes the resource, then records who did what (config_changes). The register flow re-reads
its cached configuration when the generation moves.

Etags are the resource's revision (bumped by every change of it). An update that sends an etag
that is no longer current is VERSION_MISMATCH with metadata `currentVersion`.

Rule set versions: a publication freezes the draft (the program's policies, its ACTIVE
campaigns, its ACTIVE rules whose campaign is among them) into the next version number, with an
effective time now or later. A version's state is not stored but follows from the clock:
CANCELLED once cancelled; SCHEDULED before its effective time; then CURRENT while it is the
latest non-cancelled version in effect; SUPERSEDED after a later one took effect.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

import asyncpg

from services.processing import program_mapping as mapping
from services.processing.domain.program import (
    Actor,
    CampaignRecord,
    CampaignState,
    OutletRecord,
    OutletState,
    PartnerRecord,
    PartnerState,
    ProgramRecord,
    ProgramSettings,
    ProgramStatus,
    RuleRecord,
    RuleState,
    TerminalRecord,
    TerminalState,
    VersionRecord,
    VersionState,
    etag_of,
)
from services.processing.store import program as store
from shared.db import Connection
from shared.errors import DomainError, FieldViolation, Reason, invalid_argument

# "at most 1000 non-archived rules per program" (program_admin.proto); campaigns alike.
RULES_MAX = 1000
CAMPAIGNS_MAX = 1000
# How far ahead a version may be scheduled (a limit on everything; a year covers any promo plan).
SCHEDULE_AHEAD_MAX = timedelta(days=366)


def new_id() -> str:
    return str(uuid.uuid4())


class _AdminWrite:
    """The transaction of one admin write: the generation bumped first (so it stays locked until
    commit), and who did what to which resource (recorded at once when the resource is known up
    front, else by `record`).

    A class rather than @asynccontextmanager: contextlib re-raises an exception from the body by
    assigning its __traceback__, which the frozen DomainError refuses."""

    def __init__(
        self, pool: asyncpg.Pool, *, actor: Actor, action: str, resource_type: str, resource_id: str = ""
    ) -> None:
        self.pool = pool
        self.actor = actor
        self.action = action
        self.resource_type = resource_type
        self.resource_id = resource_id
        self.generation = 0

    async def __aenter__(self) -> Connection:
        self._acquired = self.pool.acquire()
        self.connection: Connection = await self._acquired.__aenter__()
        self._transaction = self.connection.transaction()
        self._started = False
        try:
            await self._transaction.start()
            self._started = True
            self.generation = await store.bump_generation(self.connection)
            if self.resource_id:
                await self.record(self.resource_id)
        except BaseException as error:
            await self.__aexit__(type(error), error, error.__traceback__)
            raise
        return self.connection

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: Any) -> None:
        try:
            if self._started and exc is None:
                await self._transaction.commit()
            elif self._started:
                await self._transaction.rollback()
        finally:
            await self._acquired.__aexit__(exc_type, exc, tb)

    async def record(self, resource_id: str) -> None:
        await store.record_change(
            self.connection,
            generation=self.generation,
            actor=self.actor,
            action=self.action,
            resource_type=self.resource_type,
            resource_id=resource_id,
        )


def not_found(resource_type: str, resource_id: str) -> DomainError:
    reason = Reason.TERMINAL_NOT_FOUND if resource_type == "Terminal" else Reason.RESOURCE_NOT_FOUND
    return DomainError(
        reason,
        f"no {resource_type} {resource_id!r}",
        metadata={"resourceType": resource_type, "resourceId": resource_id},
    )


def _already_exists(resource_type: str, code: str) -> DomainError:
    return DomainError(
        Reason.ALREADY_EXISTS,
        f"a {resource_type} with code {code!r} already exists (codes of archived ones stay taken)",
        metadata={"resourceType": resource_type, "resourceId": code},
    )


def _check_etag(resource_type: str, revision: int, expected_etag: str) -> None:
    if expected_etag and expected_etag != etag_of(revision):
        raise DomainError(
            Reason.VERSION_MISMATCH,
            f"the {resource_type} changed since it was read (etag {expected_etag!r}, now {etag_of(revision)!r});"
            " read it again, re-apply the change and send it with a new idempotency key",
            metadata={"currentVersion": etag_of(revision)},
        )


def _transition_refused(
    resource_type: str, resource_id: str, *, from_state: str, to_state: str, why: str
) -> DomainError:
    return DomainError(
        Reason.INVALID_STATE_TRANSITION,
        f"{resource_type} {resource_id!r}: {why}",
        metadata={
            "resourceType": resource_type,
            "resourceId": resource_id,
            "fromState": from_state,
            "toState": to_state,
        },
    )


def _archived(resource_type: str, resource_id: str) -> DomainError:
    return _transition_refused(
        resource_type, resource_id, from_state="ARCHIVED", to_state="", why="archived for good; it cannot change"
    )


# ------------------------------------------------------------------------------------------------
# Program


async def load_settings(pool: asyncpg.Pool) -> ProgramSettings:
    async with pool.acquire() as connection:
        settings = await store.load_program_settings(connection)
    if settings is None:
        raise DomainError(Reason.INTERNAL, "the program row is missing: are the migrations applied?")
    return settings


async def get_program(pool: asyncpg.Pool) -> tuple[ProgramRecord, ProgramStatus]:
    async with pool.acquire() as connection, connection.transaction(isolation="repeatable_read", readonly=True):
        program = await _program(connection)
        return program, await store.program_status(connection)


async def _program(connection: Connection, *, lock: bool = False) -> ProgramRecord:
    program = await store.load_program(connection, lock=lock)
    if program is None:
        raise DomainError(Reason.INTERNAL, "the program row is missing: are the migrations applied?")
    return program


async def update_program(
    pool: asyncpg.Pool, *, actor: Actor, expected_etag: str, change: Callable[[ProgramRecord], ProgramRecord]
) -> tuple[ProgramRecord, ProgramStatus]:
    """Apply `change` (it validates, raising INVALID_ARGUMENT) to the current program."""
    write = _AdminWrite(pool, actor=actor, action="UpdateProgram", resource_type="Program")
    async with write as connection:
        current = await _program(connection, lock=True)
        await write.record(current.settings.program_id)
        _check_etag("Program", current.revision, expected_etag)
        updated = change(current)
        await _check_money_settings(connection, current.settings, updated.settings)
        saved = await store.save_program(connection, updated, draft_changed=_policies_changed(current, updated))
        return saved, await store.program_status(connection)


async def _check_money_settings(connection: Connection, before: ProgramSettings, after: ProgramSettings) -> None:
    """Currency and scales are fixed once an operation exists: its amounts are in them."""
    changed = [
        name
        for name in ("currency_code", "currency_scale", "point_scale")
        if getattr(before, name) != getattr(after, name)
    ]
    if changed and await store.operations_exist(connection):
        raise invalid_argument(
            [FieldViolation(f"program.{name}", "cannot change once an operation exists") for name in changed]
        )


def _policies_changed(before: ProgramRecord, after: ProgramRecord) -> bool:
    return any(
        json.loads(getattr(before, name)) != json.loads(getattr(after, name))
        for name in ("accrual_policy", "redemption_policy", "refund_policy")
    )


# ------------------------------------------------------------------------------------------------
# Partners


async def create_partner(pool: asyncpg.Pool, *, actor: Actor, partner: PartnerRecord) -> PartnerRecord:
    async with _AdminWrite(
        pool, actor=actor, action="CreatePartner", resource_type="Partner", resource_id=partner.partner_id
    ) as connection:
        created = await store.insert_partner(connection, partner)
        if created is None:
            raise _already_exists("Partner", partner.code)
        return created


async def get_partner(pool: asyncpg.Pool, partner_id: str) -> PartnerRecord:
    async with pool.acquire() as connection:
        partner = await store.load_partner(connection, partner_id)
    if partner is None:
        raise not_found("Partner", partner_id)
    return partner


async def list_partners(
    pool: asyncpg.Pool, *, states: Sequence[int], after_code: str | None, limit: int
) -> list[PartnerRecord]:
    async with pool.acquire() as connection:
        return await store.list_partners(connection, states=states, after_code=after_code, limit=limit)


async def _locked_partner(connection: Connection, partner_id: str) -> PartnerRecord:
    partner = await store.load_partner(connection, partner_id, lock=True)
    if partner is None:
        raise not_found("Partner", partner_id)
    return partner


async def update_partner(
    pool: asyncpg.Pool,
    *,
    actor: Actor,
    partner_id: str,
    expected_etag: str,
    change: Callable[[PartnerRecord], PartnerRecord],
) -> PartnerRecord:
    async with _AdminWrite(
        pool, actor=actor, action="UpdatePartner", resource_type="Partner", resource_id=partner_id
    ) as connection:
        current = await _locked_partner(connection, partner_id)
        _check_etag("Partner", current.revision, expected_etag)
        if current.state is PartnerState.ARCHIVED:
            raise _archived("Partner", partner_id)
        updated = change(current)
        scope_changed = (updated.points_scope, updated.account_kind) != (current.points_scope, current.account_kind)
        if scope_changed and await store.partner_has_operations(connection, partner_id):
            raise invalid_argument(
                [
                    FieldViolation(
                        "partner.points_scope", "points_scope and account_kind are fixed once it has operations"
                    )
                ]
            )
        return await store.save_partner(connection, updated)


async def archive_partner(pool: asyncpg.Pool, *, actor: Actor, partner_id: str) -> PartnerRecord:
    async with _AdminWrite(
        pool, actor=actor, action="ArchivePartner", resource_type="Partner", resource_id=partner_id
    ) as connection:
        current = await _locked_partner(connection, partner_id)
        if current.state is PartnerState.ARCHIVED:
            return current
        live_outlets = await store.count_live_outlets(connection, partner_id)
        if live_outlets:
            raise _transition_refused(
                "Partner",
                partner_id,
                from_state=current.state.name,
                to_state="ARCHIVED",
                why=f"it still has {live_outlets} outlet(s) that are not archived; archive them first",
            )
        return await store.save_partner(connection, replace(current, state=PartnerState.ARCHIVED))


# ------------------------------------------------------------------------------------------------
# Outlets


async def create_outlet(pool: asyncpg.Pool, *, actor: Actor, outlet: OutletRecord) -> OutletRecord:
    async with _AdminWrite(
        pool, actor=actor, action="CreateOutlet", resource_type="Outlet", resource_id=outlet.outlet_id
    ) as connection:
        partner = await store.load_partner(connection, outlet.partner_id, lock=True)
        if partner is None:
            raise not_found("Partner", outlet.partner_id)
        if partner.state is PartnerState.ARCHIVED:
            raise _transition_refused(
                "Partner",
                partner.partner_id,
                from_state="ARCHIVED",
                to_state="",
                why="archived: it gets no new outlets",
            )
        created = await store.insert_outlet(connection, outlet)
        if created is None:
            raise _already_exists("Outlet", outlet.code)
        return created


async def get_outlet(pool: asyncpg.Pool, outlet_id: str) -> OutletRecord:
    async with pool.acquire() as connection:
        outlet = await store.load_outlet(connection, outlet_id)
    if outlet is None:
        raise not_found("Outlet", outlet_id)
    return outlet


async def list_outlets(
    pool: asyncpg.Pool,
    *,
    partner_id: str,
    region_code: str,
    states: Sequence[int],
    after: tuple[str, str] | None,
    limit: int,
) -> list[OutletRecord]:
    async with pool.acquire() as connection:
        return await store.list_outlets(
            connection, partner_id=partner_id, region_code=region_code, states=states, after=after, limit=limit
        )


async def _locked_outlet(connection: Connection, outlet_id: str) -> OutletRecord:
    outlet = await store.load_outlet(connection, outlet_id, lock=True)
    if outlet is None:
        raise not_found("Outlet", outlet_id)
    return outlet


async def update_outlet(
    pool: asyncpg.Pool,
    *,
    actor: Actor,
    outlet_id: str,
    expected_etag: str,
    change: Callable[[OutletRecord], OutletRecord],
) -> OutletRecord:
    async with _AdminWrite(
        pool, actor=actor, action="UpdateOutlet", resource_type="Outlet", resource_id=outlet_id
    ) as connection:
        current = await _locked_outlet(connection, outlet_id)
        _check_etag("Outlet", current.revision, expected_etag)
        if current.state is OutletState.ARCHIVED:
            raise _archived("Outlet", outlet_id)
        return await store.save_outlet(connection, change(current))


async def archive_outlet(pool: asyncpg.Pool, *, actor: Actor, outlet_id: str) -> OutletRecord:
    async with _AdminWrite(
        pool, actor=actor, action="ArchiveOutlet", resource_type="Outlet", resource_id=outlet_id
    ) as connection:
        current = await _locked_outlet(connection, outlet_id)
        if current.state is OutletState.ARCHIVED:
            return current
        live_terminals = await store.count_live_terminals(connection, outlet_id)
        if live_terminals:
            raise _transition_refused(
                "Outlet",
                outlet_id,
                from_state=current.state.name,
                to_state="ARCHIVED",
                why=f"it still has {live_terminals} terminal(s) that are not archived; archive them first",
            )
        return await store.save_outlet(connection, replace(current, state=OutletState.ARCHIVED))


# ------------------------------------------------------------------------------------------------
# Terminals


async def _usable_outlet(connection: Connection, outlet_id: str) -> OutletRecord:
    outlet = await store.load_outlet(connection, outlet_id, lock=True)
    if outlet is None:
        raise not_found("Outlet", outlet_id)
    if outlet.state is OutletState.ARCHIVED:
        raise _transition_refused(
            "Outlet", outlet_id, from_state="ARCHIVED", to_state="", why="archived: it gets no terminals"
        )
    return outlet


async def create_terminal(pool: asyncpg.Pool, *, actor: Actor, terminal: TerminalRecord) -> TerminalRecord:
    async with _AdminWrite(
        pool, actor=actor, action="CreateTerminal", resource_type="Terminal", resource_id=terminal.terminal_id
    ) as connection:
        await _usable_outlet(connection, terminal.outlet_id)
        if not await store.insert_terminal(connection, terminal):
            raise _already_exists("Terminal", terminal.terminal_id)
        created = await store.load_terminal(connection, terminal.terminal_id)
    if created is None:  # an explicit check, kept under `python -O`
        raise DomainError(Reason.INTERNAL, f"terminal {terminal.terminal_id!r} vanished after its creation")
    return created


async def get_terminal(pool: asyncpg.Pool, terminal_id: str) -> TerminalRecord:
    async with pool.acquire() as connection:
        terminal = await store.load_terminal(connection, terminal_id)
    if terminal is None:
        raise not_found("Terminal", terminal_id)
    return terminal


async def list_terminals(
    pool: asyncpg.Pool,
    *,
    partner_id: str,
    outlet_id: str,
    states: Sequence[int],
    after_terminal_id: str | None,
    limit: int,
) -> list[TerminalRecord]:
    async with pool.acquire() as connection:
        return await store.list_terminals(
            connection,
            partner_id=partner_id,
            outlet_id=outlet_id,
            states=states,
            after_terminal_id=after_terminal_id,
            limit=limit,
        )


async def _locked_terminal(connection: Connection, terminal_id: str) -> TerminalRecord:
    terminal = await store.load_terminal(connection, terminal_id, lock=True)
    if terminal is None:
        raise not_found("Terminal", terminal_id)
    return terminal


async def update_terminal(
    pool: asyncpg.Pool,
    *,
    actor: Actor,
    terminal_id: str,
    expected_etag: str,
    change: Callable[[TerminalRecord], TerminalRecord],
) -> TerminalRecord:
    async with _AdminWrite(
        pool, actor=actor, action="UpdateTerminal", resource_type="Terminal", resource_id=terminal_id
    ) as connection:
        current = await _locked_terminal(connection, terminal_id)
        _check_etag("Terminal", current.revision, expected_etag)
        if current.state is TerminalState.ARCHIVED:
            raise _archived("Terminal", terminal_id)
        updated = change(current)
        if updated.outlet_id != current.outlet_id:
            outlet = await _usable_outlet(connection, updated.outlet_id)
            if outlet.partner_id != current.partner_id:
                raise DomainError(
                    Reason.PERMISSION_DENIED,
                    f"terminal {terminal_id!r} may move only to another outlet of its own partner",
                    metadata={"terminalId": terminal_id, "outletId": outlet.outlet_id},
                )
        await store.save_terminal(connection, updated)
        return await _locked_terminal(connection, terminal_id)


async def archive_terminal(pool: asyncpg.Pool, *, actor: Actor, terminal_id: str) -> TerminalRecord:
    async with _AdminWrite(
        pool, actor=actor, action="ArchiveTerminal", resource_type="Terminal", resource_id=terminal_id
    ) as connection:
        current = await _locked_terminal(connection, terminal_id)
        if current.state is not TerminalState.ARCHIVED:
            await store.save_terminal(connection, replace(current, state=TerminalState.ARCHIVED))
        return await _locked_terminal(connection, terminal_id)


# ------------------------------------------------------------------------------------------------
# Campaigns


async def _check_partners_exist(connection: Connection, partner_ids: Sequence[str]) -> None:
    found = await store.load_partners(connection, partner_ids)
    missing = next((p for p in partner_ids if p not in found), None)
    if missing is not None:
        raise not_found("Partner", missing)


async def create_campaign(
    pool: asyncpg.Pool, *, actor: Actor, campaign: CampaignRecord
) -> tuple[CampaignRecord, datetime]:
    """The campaign as created, and the database's time (its phase is relative to it)."""
    async with _AdminWrite(
        pool, actor=actor, action="CreateCampaign", resource_type="Campaign", resource_id=campaign.campaign_id
    ) as connection:
        await _check_quota(connection, "campaigns", await store.count_live_campaigns(connection), CAMPAIGNS_MAX)
        await _check_partners_exist(connection, campaign.partner_ids)
        if not await store.insert_campaign(connection, campaign):
            raise _already_exists("Campaign", campaign.code)
        await store.bump_draft(connection)
        return await _locked_campaign(connection, campaign.campaign_id), await store.database_now(connection)


async def _check_quota(connection: Connection, what: str, count: int, limit: int) -> None:
    if count >= limit:
        raise DomainError(
            Reason.QUOTA_EXCEEDED,
            f"the program already has {count} {what} that are not archived (at most {limit}); archive some first",
            metadata={"limit": what, "max": str(limit)},
        )


async def get_campaign(pool: asyncpg.Pool, campaign_id: str) -> tuple[CampaignRecord, datetime]:
    """The campaign, and the database's time (its phase is relative to it)."""
    async with pool.acquire() as connection:
        campaign = await store.load_campaign(connection, campaign_id)
        now = await store.database_now(connection)
    if campaign is None:
        raise not_found("Campaign", campaign_id)
    return campaign, now


async def list_campaigns(
    pool: asyncpg.Pool,
    *,
    overlapping_from: datetime | None,
    overlapping_to: datetime | None,
    partner_id: str,
    states: Sequence[int],
    after: tuple[datetime, str] | None,
    limit: int,
) -> tuple[list[CampaignRecord], datetime]:
    async with pool.acquire() as connection:
        campaigns = await store.list_campaigns(
            connection,
            overlapping_from=overlapping_from,
            overlapping_to=overlapping_to,
            partner_id=partner_id,
            states=states,
            after=after,
            limit=limit,
        )
        return campaigns, await store.database_now(connection)


async def _locked_campaign(connection: Connection, campaign_id: str) -> CampaignRecord:
    campaign = await store.load_campaign(connection, campaign_id, lock=True)
    if campaign is None:
        raise not_found("Campaign", campaign_id)
    return campaign


async def update_campaign(
    pool: asyncpg.Pool,
    *,
    actor: Actor,
    campaign_id: str,
    expected_etag: str,
    change: Callable[[CampaignRecord], CampaignRecord],
) -> tuple[CampaignRecord, datetime]:
    async with _AdminWrite(
        pool, actor=actor, action="UpdateCampaign", resource_type="Campaign", resource_id=campaign_id
    ) as connection:
        current = await _locked_campaign(connection, campaign_id)
        _check_etag("Campaign", current.revision, expected_etag)
        if current.state is CampaignState.ARCHIVED:
            raise _archived("Campaign", campaign_id)
        updated = change(current)
        await _check_partners_exist(connection, [p for p in updated.partner_ids if p not in current.partner_ids])
        await store.save_campaign(connection, updated)
        await store.bump_draft(connection)
        return await _locked_campaign(connection, campaign_id), await store.database_now(connection)


async def archive_campaign(pool: asyncpg.Pool, *, actor: Actor, campaign_id: str) -> tuple[CampaignRecord, datetime]:
    async with _AdminWrite(
        pool, actor=actor, action="ArchiveCampaign", resource_type="Campaign", resource_id=campaign_id
    ) as connection:
        current = await _locked_campaign(connection, campaign_id)
        if current.state is not CampaignState.ARCHIVED:
            await store.save_campaign(connection, replace(current, state=CampaignState.ARCHIVED))
            await store.bump_draft(connection)
        return await _locked_campaign(connection, campaign_id), await store.database_now(connection)


# ------------------------------------------------------------------------------------------------
# Earning rules


async def _check_rule_references(connection: Connection, rule: RuleRecord, outlet_ids: Sequence[str]) -> None:
    """The campaign, partner and outlets a rule names must exist (archived ones only warn at
    publication: they may be archived after the rule is saved anyway)."""
    if rule.campaign_id and await store.load_campaign(connection, rule.campaign_id) is None:
        raise not_found("Campaign", rule.campaign_id)
    if rule.partner_id:
        await _check_partners_exist(connection, [rule.partner_id])
    found = await store.load_outlets(connection, outlet_ids)
    missing = next((o for o in outlet_ids if o not in found), None)
    if missing is not None:
        raise not_found("Outlet", missing)


async def create_rule(pool: asyncpg.Pool, *, actor: Actor, rule: RuleRecord, outlet_ids: Sequence[str]) -> RuleRecord:
    async with _AdminWrite(
        pool, actor=actor, action="CreateEarningRule", resource_type="EarningRule", resource_id=rule.rule_id
    ) as connection:
        await _check_quota(connection, "earning rules", await store.count_live_rules(connection), RULES_MAX)
        await _check_rule_references(connection, rule, outlet_ids)
        created = await store.insert_rule(connection, rule)
        if created is None:
            raise _already_exists("EarningRule", rule.code)
        await store.bump_draft(connection)
        return created


async def get_rule(pool: asyncpg.Pool, rule_id: str) -> RuleRecord:
    async with pool.acquire() as connection:
        rule = await store.load_rule(connection, rule_id)
    if rule is None:
        raise not_found("EarningRule", rule_id)
    return rule


async def list_rules(
    pool: asyncpg.Pool,
    *,
    campaign_id: str,
    partner_id: str,
    states: Sequence[int],
    after: tuple[int, str] | None,
    limit: int,
) -> list[RuleRecord]:
    async with pool.acquire() as connection:
        return await store.list_rules(
            connection, campaign_id=campaign_id, partner_id=partner_id, states=states, after=after, limit=limit
        )


async def _locked_rule(connection: Connection, rule_id: str) -> RuleRecord:
    rule = await store.load_rule(connection, rule_id, lock=True)
    if rule is None:
        raise not_found("EarningRule", rule_id)
    return rule


async def update_rule(
    pool: asyncpg.Pool,
    *,
    actor: Actor,
    rule_id: str,
    expected_etag: str,
    change: Callable[[RuleRecord], tuple[RuleRecord, Sequence[str]]],
) -> RuleRecord:
    """`change` returns the new rule and the outlet ids its target names."""
    async with _AdminWrite(
        pool, actor=actor, action="UpdateEarningRule", resource_type="EarningRule", resource_id=rule_id
    ) as connection:
        current = await _locked_rule(connection, rule_id)
        _check_etag("EarningRule", current.revision, expected_etag)
        if current.state is RuleState.ARCHIVED:
            raise _archived("EarningRule", rule_id)
        updated, outlet_ids = change(current)
        await _check_rule_references(connection, updated, outlet_ids)
        saved = await store.save_rule(connection, updated)
        await store.bump_draft(connection)
        return saved


async def archive_rule(pool: asyncpg.Pool, *, actor: Actor, rule_id: str) -> RuleRecord:
    async with _AdminWrite(
        pool, actor=actor, action="ArchiveEarningRule", resource_type="EarningRule", resource_id=rule_id
    ) as connection:
        current = await _locked_rule(connection, rule_id)
        if current.state is RuleState.ARCHIVED:
            return current
        await store.bump_draft(connection)
        return await store.save_rule(connection, replace(current, state=RuleState.ARCHIVED))


# ------------------------------------------------------------------------------------------------
# Rule set versions


async def publish(
    pool: asyncpg.Pool, *, actor: Actor, comment: str, effective_time: datetime | None, validate_only: bool
) -> tuple[VersionRecord, list[str]]:
    """Freeze the draft into the next version (or, with validate_only, only check it: version 0,
    nothing written). Returns the version and the warnings."""
    if validate_only:
        return await _check_draft(pool, actor=actor, comment=comment, effective_time=effective_time)
    write = _AdminWrite(pool, actor=actor, action="PublishRuleSet", resource_type="RuleSetVersion")
    async with write as connection:
        effective, now = await _effective_time(connection, effective_time)
        frozen = await _freeze(connection, now)
        number = await store.insert_version(
            connection,
            effective_time=effective,
            published_by=actor,
            comment=comment,
            earning_rule_count=len(frozen.snapshot.earning_rules),
            campaign_count=len(frozen.snapshot.campaigns),
            snapshot=frozen.snapshot.SerializeToString(deterministic=True),
        )
        await write.record(str(number))
        version = await store.load_version(connection, number)
    if version is None:  # an explicit check, kept under `python -O`
        raise DomainError(Reason.INTERNAL, f"rule set version {number} vanished after its publication")
    return version, frozen.warnings


async def _check_draft(
    pool: asyncpg.Pool, *, actor: Actor, comment: str, effective_time: datetime | None
) -> tuple[VersionRecord, list[str]]:
    """What a publication would make, from one consistent read of the draft; nothing written."""
    async with pool.acquire() as connection, connection.transaction(isolation="repeatable_read", readonly=True):
        effective, now = await _effective_time(connection, effective_time)
        frozen = await _freeze(connection, now)
    return _version_of(0, frozen, actor=actor, comment=comment, effective=effective, now=now), frozen.warnings


async def _effective_time(connection: Connection, requested: datetime | None) -> tuple[datetime, datetime]:
    """When the new version takes effect (unset: now), checked; and now."""
    now = await store.database_now(connection)
    effective = requested or now
    if effective < now:
        raise invalid_argument([FieldViolation("effective_time", "in the past; leave it unset for now")])
    if effective > now + SCHEDULE_AHEAD_MAX:
        raise invalid_argument([FieldViolation("effective_time", f"at most {SCHEDULE_AHEAD_MAX.days} days ahead")])
    scheduled = await store.last_scheduled_effective_time(connection)
    if scheduled is not None and effective < scheduled:
        raise invalid_argument(
            [
                FieldViolation(
                    "effective_time",
                    f"before the version already scheduled for {scheduled.isoformat()}; cancel that one first",
                )
            ]
        )
    return effective, now


async def _freeze(connection: Connection, now: datetime) -> mapping.Frozen:
    rules = await store.load_live_rules(connection)
    outlet_ids = sorted({o for r in rules for o in mapping.rule_message(r).target.outlet_ids})
    draft = mapping.Draft(
        program=await _program(connection),
        rules=rules,
        campaigns=await store.load_live_campaigns(connection),
        partners=await store.load_partners(connection, sorted({r.partner_id for r in rules if r.partner_id})),
        outlets=await store.load_outlets(connection, outlet_ids),
        now=now,
    )
    frozen = mapping.freeze_draft(draft)
    if frozen.violations:
        raise invalid_argument(frozen.violations)
    return frozen


def _version_of(
    number: int, frozen: mapping.Frozen, *, actor: Actor, comment: str, effective: datetime, now: datetime
) -> VersionRecord:
    return VersionRecord(
        version=number,
        state=VersionState.SCHEDULED if effective > now else VersionState.CURRENT,
        effective_time=effective,
        publish_time=now,
        published_by_type=actor.type,
        published_by_id=actor.id,
        comment=comment,
        earning_rule_count=len(frozen.snapshot.earning_rules),
        campaign_count=len(frozen.snapshot.campaigns),
    )


async def get_version(pool: asyncpg.Pool, version: int) -> tuple[VersionRecord, bytes, datetime]:
    """A version (0: the one in force now) with its snapshot, and the database's time."""
    async with pool.acquire() as connection, connection.transaction(isolation="repeatable_read", readonly=True):
        number = version or await store.current_version_number(connection)
        record = None if number is None else await store.load_version(connection, number)
        snapshot = None if number is None else await store.load_rule_set_version(connection, number)
        now = await store.database_now(connection)
    if record is None or snapshot is None:
        raise not_found("RuleSetVersion", str(version) if version else "current")
    return record, snapshot, now


async def list_versions(
    pool: asyncpg.Pool, *, states: Sequence[int], before_version: int | None, limit: int
) -> list[VersionRecord]:
    async with pool.acquire() as connection:
        return await store.list_versions(connection, states=states, before_version=before_version, limit=limit)


async def cancel_version(pool: asyncpg.Pool, *, actor: Actor, version: int) -> VersionRecord:
    async with _AdminWrite(
        pool, actor=actor, action="CancelRuleSetVersion", resource_type="RuleSetVersion", resource_id=str(version)
    ) as connection:
        current = await store.load_version(connection, version)
        if current is None:
            raise not_found("RuleSetVersion", str(version))
        if current.state is not VersionState.SCHEDULED or not await store.cancel_version(connection, version):
            state = current.state if current.state is not VersionState.SCHEDULED else VersionState.CURRENT
            raise _transition_refused(
                "RuleSetVersion",
                str(version),
                from_state=state.name,
                to_state="CANCELLED",
                why=f"only a SCHEDULED version can be cancelled; this one is {state.name}",
            )
        cancelled = await store.load_version(connection, version)
    if cancelled is None:  # an explicit check, kept under `python -O`
        raise DomainError(Reason.INTERNAL, f"rule set version {version} vanished after its cancellation")
    return cancelled
