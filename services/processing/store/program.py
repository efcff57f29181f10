"""All SQL of the program's configuration. Functions take a connection; the caller owns the
transaction (see services/processing/program.py).

Two audiences:
* the register flow, on the hot path: `load_terminal_context`, `load_program_settings`,
  `load_rule_set_at`, `load_rule_set_version`, `next_rule_set_change`, `config_generation`,
  `touch_terminal`; each is one indexed query, meant to be cached by the caller and the cache
  dropped when `config_generation` moves (every admin write bumps it in its own transaction);
* the admin use cases: everything else.

Every admin write transaction starts with `bump_generation`, which locks the generation row:
admin writes are serialized (they are rare), so quotas, uniqueness and version numbers need no
retry loops, and writers never deadlock.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from services.processing.domain.program import (
    Actor,
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
    TerminalContext,
    TerminalRecord,
    TerminalState,
    VersionRecord,
    VersionState,
)
from shared.db import Connection

Row = Any  # asyncpg.Record

# ------------------------------------------------------------------------------------------------
# Read API of the register flow (hot path)


async def load_terminal_context(conn: Connection, terminal_id: str) -> TerminalContext | None:
    """The terminal with its outlet and partner (and the outlet's effective time zone); None for
    an unknown terminal. Archived ones are returned too: the caller refuses them by state."""
    row = await conn.fetchrow(
        """
        SELECT t.terminal_id, t.state AS terminal_state, t.default_channel, t.offline_allowed,
               o.outlet_id, o.code AS outlet_code, o.state AS outlet_state, o.region_code,
               COALESCE(NULLIF(o.time_zone, ''), (SELECT time_zone FROM program)) AS time_zone,
               p.partner_id, p.code AS partner_code, p.state AS partner_state, p.points_scope,
               p.account_kind, p.accrual_enabled, p.redemption_enabled
        FROM terminals t
        JOIN outlets o ON o.outlet_id = t.outlet_id
        JOIN partners p ON p.partner_id = o.partner_id
        WHERE t.terminal_id = $1
        """,
        terminal_id,
    )
    if row is None:
        return None
    return TerminalContext(
        terminal_id=row["terminal_id"],
        terminal_state=TerminalState(row["terminal_state"]),
        default_channel=SalesChannel(row["default_channel"]),
        offline_allowed=row["offline_allowed"],
        outlet_id=row["outlet_id"],
        outlet_code=row["outlet_code"],
        outlet_state=OutletState(row["outlet_state"]),
        region_code=row["region_code"],
        time_zone=row["time_zone"],
        partner_id=row["partner_id"],
        partner_code=row["partner_code"],
        partner_state=PartnerState(row["partner_state"]),
        points_scope=PointsScope(row["points_scope"]),
        partner_account_kind=row["account_kind"],
        accrual_enabled=row["accrual_enabled"],
        redemption_enabled=row["redemption_enabled"],
    )


async def load_program_settings(conn: Connection) -> ProgramSettings | None:
    """The program's non-versioned settings; None only on a database without the program row."""
    row = await conn.fetchrow(f"SELECT {_SETTINGS_COLUMNS} FROM program")
    return None if row is None else _settings(row)


async def load_rule_set_at(conn: Connection, at: datetime) -> tuple[int, bytes] | None:
    """The version in force at `at` (the latest non-cancelled one with effective_time <= at) and
    its serialized RuleSetSnapshot; None before the first publication took effect."""
    row = await conn.fetchrow(
        """
        SELECT version, snapshot FROM rule_set_versions
        WHERE cancel_time IS NULL AND effective_time <= $1
        ORDER BY effective_time DESC, version DESC LIMIT 1
        """,
        at,
    )
    return None if row is None else (int(row["version"]), bytes(row["snapshot"]))


async def load_rule_set_version(conn: Connection, version: int) -> bytes | None:
    """The serialized RuleSetSnapshot of `version` (whatever its state); None if unknown."""
    snapshot = await conn.fetchval("SELECT snapshot FROM rule_set_versions WHERE version = $1", version)
    return None if snapshot is None else bytes(snapshot)


async def next_rule_set_change(conn: Connection, after: datetime) -> datetime | None:
    """When the next scheduled version takes effect after `after` (None: none is scheduled).
    A cache of `load_rule_set_at` stays valid until then, or until the generation moves."""
    value: datetime | None = await conn.fetchval(
        "SELECT min(effective_time) FROM rule_set_versions WHERE cancel_time IS NULL AND effective_time > $1",
        after,
    )
    return value


async def config_generation(conn: Connection) -> int:
    """A counter bumped in the transaction of every admin write (any resource, any RPC)."""
    return int(await conn.fetchval("SELECT generation FROM config_generation"))


async def touch_terminal(conn: Connection, terminal_id: str) -> None:
    """Record that the terminal called (Terminal.last_seen_time), at most once a minute: the
    condition makes calls within the minute write nothing. Not an admin change (no generation)."""
    await conn.execute(
        """
        UPDATE terminals SET last_seen_time = now()
        WHERE terminal_id = $1 AND (last_seen_time IS NULL OR last_seen_time < now() - interval '1 minute')
        """,
        terminal_id,
    )


# ------------------------------------------------------------------------------------------------
# Generation, audit, clock


async def bump_generation(conn: Connection) -> int:
    """First statement of every admin write: locks the generation row until commit."""
    return int(await conn.fetchval("UPDATE config_generation SET generation = generation + 1 RETURNING generation"))


async def record_change(
    conn: Connection, *, generation: int, actor: Actor, action: str, resource_type: str, resource_id: str
) -> None:
    await conn.execute(
        """
        INSERT INTO config_changes (generation, actor_type, actor_id, action, resource_type, resource_id)
        VALUES ($1, $2, $3, $4, $5, $6)
        """,
        generation,
        actor.type,
        actor.id,
        action,
        resource_type,
        resource_id,
    )


async def database_now(conn: Connection) -> datetime:
    """The transaction's time (now()): the one clock of states, phases and effective times."""
    value: datetime = await conn.fetchval("SELECT now()")
    return value


async def operations_exist(conn: Connection) -> bool:
    """Whether any operation was recorded (the register flow's `operations` table)."""
    return bool(await conn.fetchval("SELECT EXISTS (SELECT 1 FROM operations)"))


async def partner_has_operations(conn: Connection, partner_id: str) -> bool:
    """Whether any operation was made at one of the partner's terminals. A terminal only ever moves
    between outlets of one partner, so its operations are the partner's. Terminal by terminal, one
    probe each of an index led by terminal_id, stopping at the first operation found: written as
    `op.terminal_id IN (the partner's terminals)`, the planner made it a merge semi join that read
    the whole operations_key index, every operation of every partner."""
    return bool(
        await conn.fetchval(
            """
            SELECT EXISTS (
                SELECT 1 FROM terminals t JOIN outlets o ON o.outlet_id = t.outlet_id
                CROSS JOIN LATERAL (SELECT 1 FROM operations op WHERE op.terminal_id = t.terminal_id LIMIT 1) u
                WHERE o.partner_id = $1)
            """,
            partner_id,
        )
    )


# ------------------------------------------------------------------------------------------------
# Program

_SETTINGS_COLUMNS = """
    program_id, type, currency_code, currency_scale, point_scale, time_zone, authorization_ttl,
    authorization_ttl_max, offline_max_age, risk_fallback
"""


def _settings(row: Row) -> ProgramSettings:
    return ProgramSettings(
        program_id=row["program_id"],
        type=ProgramType(row["type"]),
        currency_code=row["currency_code"],
        currency_scale=row["currency_scale"],
        point_scale=row["point_scale"],
        time_zone=row["time_zone"],
        authorization_ttl=row["authorization_ttl"],
        authorization_ttl_max=row["authorization_ttl_max"],
        offline_max_age=row["offline_max_age"],
        risk_fallback=RiskFallback(row["risk_fallback"]),
    )


def _program(row: Row) -> ProgramRecord:
    return ProgramRecord(
        settings=_settings(row),
        name=row["name"],
        accrual_policy=row["accrual_policy"],
        redemption_policy=row["redemption_policy"],
        refund_policy=row["refund_policy"],
        revision=row["revision"],
        draft_revision=row["draft_revision"],
        update_time=row["update_time"],
    )


async def load_program(conn: Connection, *, lock: bool = False) -> ProgramRecord | None:
    row = await conn.fetchrow("SELECT * FROM program" + (" FOR UPDATE" if lock else ""))
    return None if row is None else _program(row)


async def program_status(conn: Connection) -> ProgramStatus:
    row = await conn.fetchrow(
        """
        SELECT
            (SELECT version FROM rule_set_versions WHERE cancel_time IS NULL AND effective_time <= now()
             ORDER BY effective_time DESC, version DESC LIMIT 1) AS current_version,
            (SELECT draft_revision FROM rule_set_versions WHERE cancel_time IS NULL
             ORDER BY version DESC LIMIT 1) AS published_draft_revision,
            (SELECT draft_revision FROM program) AS draft_revision
        """
    )
    if row is None:  # the query has no FROM: it always returns its one row
        raise RuntimeError("program_status returned no row")
    return ProgramStatus(
        current_version=row["current_version"] or 0,
        has_unpublished_changes=row["published_draft_revision"] != row["draft_revision"],
    )


async def save_program(conn: Connection, program: ProgramRecord, *, draft_changed: bool) -> ProgramRecord:
    """Replace the program's settings and draft policies; a new revision (etag)."""
    settings = program.settings
    row = await conn.fetchrow(
        """
        UPDATE program SET name = $1, type = $2, currency_code = $3, currency_scale = $4, point_scale = $5,
            time_zone = $6, authorization_ttl = $7, authorization_ttl_max = $8, offline_max_age = $9,
            risk_fallback = $10, accrual_policy = $11::jsonb, redemption_policy = $12::jsonb,
            refund_policy = $13::jsonb, revision = revision + 1,
            draft_revision = draft_revision + CASE WHEN $14 THEN 1 ELSE 0 END, update_time = now()
        RETURNING *
        """,
        program.name,
        int(settings.type),
        settings.currency_code,
        settings.currency_scale,
        settings.point_scale,
        settings.time_zone,
        settings.authorization_ttl,
        settings.authorization_ttl_max,
        settings.offline_max_age,
        int(settings.risk_fallback),
        program.accrual_policy,
        program.redemption_policy,
        program.refund_policy,
        draft_changed,
    )
    return _program(row)


async def bump_draft(conn: Connection) -> None:
    """The draft changed (a rule or campaign): has_unpublished_changes until the next publication."""
    await conn.execute("UPDATE program SET draft_revision = draft_revision + 1")


# ------------------------------------------------------------------------------------------------
# Partners


def _partner(row: Row) -> PartnerRecord:
    return PartnerRecord(
        partner_id=row["partner_id"],
        code=row["code"],
        name=row["name"],
        state=PartnerState(row["state"]),
        points_scope=PointsScope(row["points_scope"]),
        accrual_enabled=row["accrual_enabled"],
        redemption_enabled=row["redemption_enabled"],
        account_kind=row["account_kind"],
        revision=row["revision"],
        create_time=row["create_time"],
        update_time=row["update_time"],
    )


async def insert_partner(conn: Connection, partner: PartnerRecord) -> PartnerRecord | None:
    """None when the code is taken (also by an archived partner)."""
    row = await conn.fetchrow(
        """
        INSERT INTO partners (partner_id, code, name, state, points_scope, accrual_enabled, redemption_enabled,
            account_kind)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
        ON CONFLICT (code) DO NOTHING RETURNING *
        """,
        partner.partner_id,
        partner.code,
        partner.name,
        int(partner.state),
        int(partner.points_scope),
        partner.accrual_enabled,
        partner.redemption_enabled,
        partner.account_kind,
    )
    return None if row is None else _partner(row)


async def load_partner(conn: Connection, partner_id: str, *, lock: bool = False) -> PartnerRecord | None:
    row = await conn.fetchrow(
        "SELECT * FROM partners WHERE partner_id = $1" + (" FOR UPDATE" if lock else ""), partner_id
    )
    return None if row is None else _partner(row)


async def load_partners(conn: Connection, partner_ids: Sequence[str]) -> dict[str, PartnerRecord]:
    rows = await conn.fetch("SELECT * FROM partners WHERE partner_id = ANY($1::text[])", list(partner_ids))
    return {row["partner_id"]: _partner(row) for row in rows}


async def list_partners(
    conn: Connection, *, states: Sequence[int], after_code: str | None, limit: int
) -> list[PartnerRecord]:
    rows = await conn.fetch(
        """
        SELECT * FROM partners WHERE state = ANY($1::smallint[]) AND ($2::text IS NULL OR code > $2)
        ORDER BY code LIMIT $3
        """,
        list(states),
        after_code,
        limit,
    )
    return [_partner(row) for row in rows]


async def save_partner(conn: Connection, partner: PartnerRecord) -> PartnerRecord:
    row = await conn.fetchrow(
        """
        UPDATE partners SET name = $2, state = $3, points_scope = $4, accrual_enabled = $5,
            redemption_enabled = $6, account_kind = $7, revision = revision + 1, update_time = now()
        WHERE partner_id = $1 RETURNING *
        """,
        partner.partner_id,
        partner.name,
        int(partner.state),
        int(partner.points_scope),
        partner.accrual_enabled,
        partner.redemption_enabled,
        partner.account_kind,
    )
    return _partner(row)


async def count_live_outlets(conn: Connection, partner_id: str) -> int:
    return int(await conn.fetchval("SELECT count(*) FROM outlets WHERE partner_id = $1 AND state <> 3", partner_id))


# ------------------------------------------------------------------------------------------------
# Outlets


def _outlet(row: Row) -> OutletRecord:
    address = Address(
        country_code=row["address_country_code"],
        region=row["address_region"],
        city=row["address_city"],
        postal_code=row["address_postal_code"],
        lines=tuple(row["address_lines"]),
    )
    location = None
    if row["latitude_e7"] is not None:
        location = GeoPoint(latitude_e7=row["latitude_e7"], longitude_e7=row["longitude_e7"])
    return OutletRecord(
        outlet_id=row["outlet_id"],
        partner_id=row["partner_id"],
        code=row["code"],
        name=row["name"],
        state=OutletState(row["state"]),
        region_code=row["region_code"],
        address=None if address == Address() else address,
        location=location,
        time_zone=row["time_zone"],
        revision=row["revision"],
        create_time=row["create_time"],
        update_time=row["update_time"],
    )


def _outlet_values(outlet: OutletRecord) -> list[Any]:
    """The mutable columns, in the order of the INSERT and UPDATE below ($4..$14)."""
    address = outlet.address or Address()
    location = outlet.location
    return [
        outlet.name,
        int(outlet.state),
        outlet.region_code,
        address.country_code,
        address.region,
        address.city,
        address.postal_code,
        list(address.lines),
        None if location is None else location.latitude_e7,
        None if location is None else location.longitude_e7,
        outlet.time_zone,
    ]


async def insert_outlet(conn: Connection, outlet: OutletRecord) -> OutletRecord | None:
    """None when the partner already has an outlet with this code."""
    row = await conn.fetchrow(
        """
        INSERT INTO outlets (outlet_id, partner_id, code, name, state, region_code, address_country_code,
            address_region, address_city, address_postal_code, address_lines, latitude_e7, longitude_e7, time_zone)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)
        ON CONFLICT (partner_id, code) DO NOTHING RETURNING *
        """,
        outlet.outlet_id,
        outlet.partner_id,
        outlet.code,
        *_outlet_values(outlet),
    )
    return None if row is None else _outlet(row)


async def load_outlet(conn: Connection, outlet_id: str, *, lock: bool = False) -> OutletRecord | None:
    row = await conn.fetchrow("SELECT * FROM outlets WHERE outlet_id = $1" + (" FOR UPDATE" if lock else ""), outlet_id)
    return None if row is None else _outlet(row)


async def load_outlets(conn: Connection, outlet_ids: Sequence[str]) -> dict[str, OutletRecord]:
    rows = await conn.fetch("SELECT * FROM outlets WHERE outlet_id = ANY($1::text[])", list(outlet_ids))
    return {row["outlet_id"]: _outlet(row) for row in rows}


async def list_outlets(
    conn: Connection,
    *,
    partner_id: str,
    region_code: str,
    states: Sequence[int],
    after: tuple[str, str] | None,
    limit: int,
) -> list[OutletRecord]:
    after_partner, after_code = after or (None, None)
    rows = await conn.fetch(
        """
        SELECT * FROM outlets
        WHERE state = ANY($1::smallint[])
          AND ($2 = '' OR partner_id = $2) AND ($3 = '' OR region_code = $3)
          AND ($4::text IS NULL OR (partner_id, code) > ($4, $5::text))
        ORDER BY partner_id, code LIMIT $6
        """,
        list(states),
        partner_id,
        region_code,
        after_partner,
        after_code,
        limit,
    )
    return [_outlet(row) for row in rows]


async def save_outlet(conn: Connection, outlet: OutletRecord) -> OutletRecord:
    row = await conn.fetchrow(
        """
        UPDATE outlets SET name = $4, state = $5, region_code = $6, address_country_code = $7,
            address_region = $8, address_city = $9, address_postal_code = $10, address_lines = $11,
            latitude_e7 = $12, longitude_e7 = $13, time_zone = $14, revision = revision + 1, update_time = now()
        WHERE outlet_id = $1 AND partner_id = $2 AND code = $3 RETURNING *
        """,
        outlet.outlet_id,
        outlet.partner_id,
        outlet.code,
        *_outlet_values(outlet),
    )
    return _outlet(row)


async def count_live_terminals(conn: Connection, outlet_id: str) -> int:
    return int(await conn.fetchval("SELECT count(*) FROM terminals WHERE outlet_id = $1 AND state <> 3", outlet_id))


# ------------------------------------------------------------------------------------------------
# Terminals

_TERMINAL_SELECT = "SELECT t.*, o.partner_id FROM terminals t JOIN outlets o ON o.outlet_id = t.outlet_id"


def _terminal(row: Row) -> TerminalRecord:
    return TerminalRecord(
        terminal_id=row["terminal_id"],
        outlet_id=row["outlet_id"],
        partner_id=row["partner_id"],
        name=row["name"],
        serial_number=row["serial_number"],
        state=TerminalState(row["state"]),
        default_channel=SalesChannel(row["default_channel"]),
        offline_allowed=row["offline_allowed"],
        last_seen_time=row["last_seen_time"],
        revision=row["revision"],
        create_time=row["create_time"],
        update_time=row["update_time"],
    )


async def insert_terminal(conn: Connection, terminal: TerminalRecord) -> bool:
    """False when the terminal_id is taken (also by an archived terminal: ids are never reused)."""
    inserted = await conn.fetchval(
        """
        INSERT INTO terminals (terminal_id, outlet_id, name, serial_number, state, default_channel, offline_allowed)
        VALUES ($1, $2, $3, $4, $5, $6, $7)
        ON CONFLICT (terminal_id) DO NOTHING RETURNING true
        """,
        terminal.terminal_id,
        terminal.outlet_id,
        terminal.name,
        terminal.serial_number,
        int(terminal.state),
        int(terminal.default_channel),
        terminal.offline_allowed,
    )
    return bool(inserted)


async def load_terminal(conn: Connection, terminal_id: str, *, lock: bool = False) -> TerminalRecord | None:
    row = await conn.fetchrow(
        _TERMINAL_SELECT + " WHERE t.terminal_id = $1" + (" FOR UPDATE OF t" if lock else ""), terminal_id
    )
    return None if row is None else _terminal(row)


async def list_terminals(
    conn: Connection,
    *,
    partner_id: str,
    outlet_id: str,
    states: Sequence[int],
    after_terminal_id: str | None,
    limit: int,
) -> list[TerminalRecord]:
    rows = await conn.fetch(
        _TERMINAL_SELECT
        + """
        WHERE t.state = ANY($1::smallint[])
          AND ($2 = '' OR o.partner_id = $2) AND ($3 = '' OR t.outlet_id = $3)
          AND ($4::text IS NULL OR t.terminal_id > $4)
        ORDER BY t.terminal_id LIMIT $5
        """,
        list(states),
        partner_id,
        outlet_id,
        after_terminal_id,
        limit,
    )
    return [_terminal(row) for row in rows]


async def save_terminal(conn: Connection, terminal: TerminalRecord) -> None:
    await conn.execute(
        """
        UPDATE terminals SET outlet_id = $2, name = $3, serial_number = $4, state = $5, default_channel = $6,
            offline_allowed = $7, revision = revision + 1, update_time = now()
        WHERE terminal_id = $1
        """,
        terminal.terminal_id,
        terminal.outlet_id,
        terminal.name,
        terminal.serial_number,
        int(terminal.state),
        int(terminal.default_channel),
        terminal.offline_allowed,
    )


# ------------------------------------------------------------------------------------------------
# Campaigns

# Its non-archived rules, in rule order (output only Campaign.earning_rule_ids).
_CAMPAIGN_SELECT = """
    SELECT c.*, ARRAY(SELECT r.rule_id FROM earning_rules r WHERE r.campaign_id = c.campaign_id AND r.state <> 3
                      ORDER BY r.priority DESC, r.code) AS earning_rule_ids
    FROM campaigns c
"""


def _campaign(row: Row) -> CampaignRecord:
    return CampaignRecord(
        campaign_id=row["campaign_id"],
        code=row["code"],
        name=row["name"],
        description=row["description"],
        state=CampaignState(row["state"]),
        start_time=row["start_time"],
        end_time=row["end_time"],
        partner_ids=tuple(row["partner_ids"]),
        earning_rule_ids=tuple(row["earning_rule_ids"]),
        revision=row["revision"],
        create_time=row["create_time"],
        update_time=row["update_time"],
    )


async def insert_campaign(conn: Connection, campaign: CampaignRecord) -> bool:
    """False when the code is taken."""
    inserted = await conn.fetchval(
        """
        INSERT INTO campaigns (campaign_id, code, name, description, state, start_time, end_time, partner_ids)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
        ON CONFLICT (code) DO NOTHING RETURNING true
        """,
        campaign.campaign_id,
        campaign.code,
        campaign.name,
        campaign.description,
        int(campaign.state),
        campaign.start_time,
        campaign.end_time,
        list(campaign.partner_ids),
    )
    return bool(inserted)


async def load_campaign(conn: Connection, campaign_id: str, *, lock: bool = False) -> CampaignRecord | None:
    row = await conn.fetchrow(
        _CAMPAIGN_SELECT + " WHERE c.campaign_id = $1" + (" FOR UPDATE OF c" if lock else ""), campaign_id
    )
    return None if row is None else _campaign(row)


async def load_live_campaigns(conn: Connection) -> list[CampaignRecord]:
    """Every non-archived campaign, by start time, then code (the draft, for publication)."""
    rows = await conn.fetch(_CAMPAIGN_SELECT + " WHERE c.state <> 3 ORDER BY c.start_time, c.code")
    return [_campaign(row) for row in rows]


async def load_campaigns(conn: Connection, campaign_ids: Sequence[str]) -> dict[str, CampaignRecord]:
    rows = await conn.fetch(_CAMPAIGN_SELECT + " WHERE c.campaign_id = ANY($1::text[])", list(campaign_ids))
    return {row["campaign_id"]: _campaign(row) for row in rows}


async def list_campaigns(
    conn: Connection,
    *,
    overlapping_from: datetime | None,
    overlapping_to: datetime | None,
    partner_id: str,
    states: Sequence[int],
    after: tuple[datetime, str] | None,
    limit: int,
) -> list[CampaignRecord]:
    after_time, after_code = after or (None, None)
    rows = await conn.fetch(
        _CAMPAIGN_SELECT
        + """
        WHERE c.state = ANY($1::smallint[])
          -- [start, end) overlaps [from, to): unset bounds are open on both sides.
          AND ($2::timestamptz IS NULL OR c.end_time IS NULL OR c.end_time > $2)
          AND ($3::timestamptz IS NULL OR c.start_time < $3)
          AND ($4 = '' OR cardinality(c.partner_ids) = 0 OR $4 = ANY(c.partner_ids))
          AND ($5::timestamptz IS NULL OR (c.start_time, c.code) > ($5, $6::text))
        ORDER BY c.start_time, c.code LIMIT $7
        """,
        list(states),
        overlapping_from,
        overlapping_to,
        partner_id,
        after_time,
        after_code,
        limit,
    )
    return [_campaign(row) for row in rows]


async def save_campaign(conn: Connection, campaign: CampaignRecord) -> None:
    await conn.execute(
        """
        UPDATE campaigns SET name = $2, description = $3, state = $4, start_time = $5, end_time = $6,
            partner_ids = $7, revision = revision + 1, update_time = now()
        WHERE campaign_id = $1
        """,
        campaign.campaign_id,
        campaign.name,
        campaign.description,
        int(campaign.state),
        campaign.start_time,
        campaign.end_time,
        list(campaign.partner_ids),
    )


async def count_live_campaigns(conn: Connection) -> int:
    return int(await conn.fetchval("SELECT count(*) FROM campaigns WHERE state <> 3"))


# ------------------------------------------------------------------------------------------------
# Earning rules


def _rule(row: Row) -> RuleRecord:
    return RuleRecord(
        rule_id=row["rule_id"],
        code=row["code"],
        state=RuleState(row["state"]),
        campaign_id=row["campaign_id"] or "",
        partner_id=row["partner_id"] or "",
        priority=row["priority"],
        body=row["body"],
        revision=row["revision"],
        create_time=row["create_time"],
        update_time=row["update_time"],
    )


async def insert_rule(conn: Connection, rule: RuleRecord) -> RuleRecord | None:
    """None when the code is taken (also by an archived rule)."""
    row = await conn.fetchrow(
        """
        INSERT INTO earning_rules (rule_id, code, state, campaign_id, partner_id, priority, body)
        VALUES ($1, $2, $3, NULLIF($4, ''), NULLIF($5, ''), $6, $7::jsonb)
        ON CONFLICT (code) DO NOTHING RETURNING *
        """,
        rule.rule_id,
        rule.code,
        int(rule.state),
        rule.campaign_id,
        rule.partner_id,
        rule.priority,
        rule.body,
    )
    return None if row is None else _rule(row)


async def load_rule(conn: Connection, rule_id: str, *, lock: bool = False) -> RuleRecord | None:
    row = await conn.fetchrow(
        "SELECT * FROM earning_rules WHERE rule_id = $1" + (" FOR UPDATE" if lock else ""), rule_id
    )
    return None if row is None else _rule(row)


async def load_live_rules(conn: Connection) -> list[RuleRecord]:
    """Every non-archived rule, by descending priority, then code (the draft, for publication)."""
    rows = await conn.fetch("SELECT * FROM earning_rules WHERE state <> 3 ORDER BY priority DESC, code")
    return [_rule(row) for row in rows]


async def list_rules(
    conn: Connection,
    *,
    campaign_id: str,
    partner_id: str,
    states: Sequence[int],
    after: tuple[int, str] | None,
    limit: int,
) -> list[RuleRecord]:
    after_priority, after_code = after or (None, None)
    rows = await conn.fetch(
        """
        SELECT * FROM earning_rules
        WHERE state = ANY($1::smallint[])
          AND ($2 = '' OR campaign_id = $2) AND ($3 = '' OR partner_id = $3)
          AND ($4::integer IS NULL OR priority < $4 OR (priority = $4 AND code > $5::text))
        ORDER BY priority DESC, code LIMIT $6
        """,
        list(states),
        campaign_id,
        partner_id,
        after_priority,
        after_code,
        limit,
    )
    return [_rule(row) for row in rows]


async def save_rule(conn: Connection, rule: RuleRecord) -> RuleRecord:
    row = await conn.fetchrow(
        """
        UPDATE earning_rules SET state = $2, campaign_id = NULLIF($3, ''), partner_id = NULLIF($4, ''),
            priority = $5, body = $6::jsonb, revision = revision + 1, update_time = now()
        WHERE rule_id = $1 RETURNING *
        """,
        rule.rule_id,
        int(rule.state),
        rule.campaign_id,
        rule.partner_id,
        rule.priority,
        rule.body,
    )
    return _rule(row)


async def count_live_rules(conn: Connection) -> int:
    return int(await conn.fetchval("SELECT count(*) FROM earning_rules WHERE state <> 3"))


# ------------------------------------------------------------------------------------------------
# Rule set versions

# The state follows from the clock: CANCELLED if cancelled; SCHEDULED before effective_time; the
# latest non-cancelled version already in effect is CURRENT; any other one in effect SUPERSEDED.
_VERSION_SELECT = """
    SELECT * FROM (
        SELECT v.version, v.effective_time, v.publish_time, v.published_by_type, v.published_by_id, v.comment,
               v.earning_rule_count, v.campaign_count,
               CASE WHEN v.cancel_time IS NOT NULL THEN 4
                    WHEN v.effective_time > now() THEN 1
                    WHEN v.version = (SELECT c.version FROM rule_set_versions c
                                      WHERE c.cancel_time IS NULL AND c.effective_time <= now()
                                      ORDER BY c.effective_time DESC, c.version DESC LIMIT 1) THEN 2
                    ELSE 3 END AS state
        FROM rule_set_versions v) AS versions
"""


def _version(row: Row) -> VersionRecord:
    return VersionRecord(
        version=row["version"],
        state=VersionState(row["state"]),
        effective_time=row["effective_time"],
        publish_time=row["publish_time"],
        published_by_type=row["published_by_type"],
        published_by_id=row["published_by_id"],
        comment=row["comment"],
        earning_rule_count=row["earning_rule_count"],
        campaign_count=row["campaign_count"],
    )


async def load_version(conn: Connection, version: int) -> VersionRecord | None:
    row = await conn.fetchrow(_VERSION_SELECT + " WHERE version = $1", version)
    return None if row is None else _version(row)


async def current_version_number(conn: Connection) -> int | None:
    """The version in force now, by the database's clock."""
    value = await conn.fetchval(
        """
        SELECT version FROM rule_set_versions WHERE cancel_time IS NULL AND effective_time <= now()
        ORDER BY effective_time DESC, version DESC LIMIT 1
        """
    )
    return None if value is None else int(value)


async def list_versions(
    conn: Connection, *, states: Sequence[int], before_version: int | None, limit: int
) -> list[VersionRecord]:
    rows = await conn.fetch(
        _VERSION_SELECT
        + " WHERE state = ANY($1::integer[]) AND ($2::bigint IS NULL OR version < $2) ORDER BY version DESC LIMIT $3",
        list(states),
        before_version,
        limit,
    )
    return [_version(row) for row in rows]


async def last_scheduled_effective_time(conn: Connection) -> datetime | None:
    """The latest effective_time among versions still waiting to take effect."""
    value: datetime | None = await conn.fetchval(
        "SELECT max(effective_time) FROM rule_set_versions WHERE cancel_time IS NULL AND effective_time > now()"
    )
    return value


async def insert_version(
    conn: Connection,
    *,
    effective_time: datetime,
    published_by: Actor,
    comment: str,
    earning_rule_count: int,
    campaign_count: int,
    snapshot: bytes,
) -> int:
    """Freeze `snapshot` as the next version number (callers hold the generation lock, so the
    numbers follow publication order without gaps) with the draft revision it froze."""
    version: int = await conn.fetchval(
        """
        INSERT INTO rule_set_versions (version, effective_time, published_by_type, published_by_id, comment,
            earning_rule_count, campaign_count, draft_revision, snapshot)
        SELECT COALESCE((SELECT max(version) FROM rule_set_versions), 0) + 1, $1, $2, $3, $4, $5, $6,
            (SELECT draft_revision FROM program), $7
        RETURNING version
        """,
        effective_time,
        published_by.type,
        published_by.id,
        comment,
        earning_rule_count,
        campaign_count,
        snapshot,
    )
    return version


async def cancel_version(conn: Connection, version: int) -> bool:
    """Cancel a version that has not taken effect yet. The wall clock (not the transaction's
    start) decides, so a version that took effect a moment ago is never cancelled after use."""
    cancelled = await conn.fetchval(
        """
        UPDATE rule_set_versions SET cancel_time = clock_timestamp()
        WHERE version = $1 AND cancel_time IS NULL AND effective_time > clock_timestamp() RETURNING true
        """,
        version,
    )
    return bool(cancelled)
