"""ProgramAdminService as a real processing process on real PostgreSQL: CRUD of every resource,
pagination and filters, update masks and etags, idempotent replays, named bad fields, archive
semantics, publication and the states of versions as time passes, and the read API the register
flow uses (store functions called directly on the same database).

The module runs processing on a database of its own: the program is one row and rule set
versions are global, so the publications, scheduled versions and program changes made here
must not leak into the register-flow tests that share `loyalty_test_processing` (nor theirs
into these).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import grpc
import pytest
from google.protobuf import duration_pb2, field_mask_pb2, timestamp_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc import aio
from loyalty.common.v1 import types_pb2
from loyalty.processing.v1 import program_admin_pb2 as pa
from loyalty.processing.v1 import program_admin_pb2_grpc

from services.processing.admin import ProgramAdminServicer
from services.processing.domain.program import (
    OutletState,
    PartnerState,
    PointsScope,
    RiskFallback,
    SalesChannel,
    TerminalState,
)
from services.processing.store import program as store
from shared.config import with_database
from shared.db import migrate
from tests.harness import Infra, ServiceProcess

ACTOR = types_pb2.Actor(type=types_pb2.ACTOR_TYPE_OPERATOR, id="admin-tests")
SERVICE = "/loyalty.processing.v1.ProgramAdminService/"
Code = grpc.StatusCode


def key() -> types_pb2.IdempotencyKey:
    return types_pb2.IdempotencyKey(key=str(uuid.uuid4()))


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def mask(*paths: str) -> field_mask_pb2.FieldMask:
    return field_mask_pb2.FieldMask(paths=list(paths))


def timestamp(value: datetime) -> timestamp_pb2.Timestamp:
    result = timestamp_pb2.Timestamp()
    result.FromDatetime(value)
    return result


def rub(amount: int) -> types_pb2.Money:
    return types_pb2.Money(currency_code="RUB", amount_minor=amount, scale=2)


def points(amount: int) -> types_pb2.Points:
    return types_pb2.Points(amount_minor=amount, scale=2)


# ------------------------------------------------------------------------------------------------
# Fixtures


@pytest.fixture(scope="module")
def database_url(infra: Infra) -> str:
    url = with_database(infra.database_server_url, f"loyalty_test_processing_admin_{uuid.uuid4().hex[:8]}")
    migrate(service="processing", database_url=url)
    return url


@pytest.fixture(scope="module")
def processing(infra: Infra, database_url: str) -> Iterator[ServiceProcess]:
    env = infra.service_env(
        "processing",
        LOYALTY_PROCESSING_DATABASE_URL=database_url,
        # Nothing here calls cards or wallet; the register flow's clients only need an address.
        LOYALTY_CARDS_GRPC_TARGET="127.0.0.1:9",
        LOYALTY_WALLET_GRPC_TARGET="127.0.0.1:9",
    )
    process = ServiceProcess("processing", env).start()
    yield process
    process.stop()


@pytest.fixture
async def channel(processing: ServiceProcess) -> AsyncIterator[aio.Channel]:
    async with aio.insecure_channel(processing.grpc_address) as channel:
        yield channel


@pytest.fixture
def stub(channel: aio.Channel) -> program_admin_pb2_grpc.ProgramAdminServiceStub:
    return program_admin_pb2_grpc.ProgramAdminServiceStub(channel)


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(database_url)
    yield connection
    await connection.close()


@pytest.fixture
def admin(stub: program_admin_pb2_grpc.ProgramAdminServiceStub) -> Admin:
    return Admin(stub)


@dataclass(frozen=True)
class Failure:
    code: grpc.StatusCode
    reason: str
    metadata: dict[str, str]
    # field -> description, from BadRequest
    fields: dict[str, str]


async def failure(call: Awaitable[Any]) -> Failure:
    """The rich status of a call that must fail."""
    with pytest.raises(aio.AioRpcError) as raised:
        await call
    error = raised.value
    raw = next(v for k, v in (error.trailing_metadata() or ()) if k == "grpc-status-details-bin")
    status = status_pb2.Status.FromString(raw)
    info, bad_request = error_details_pb2.ErrorInfo(), error_details_pb2.BadRequest()
    for detail in status.details:
        if detail.Is(info.DESCRIPTOR):
            detail.Unpack(info)
        elif detail.Is(bad_request.DESCRIPTOR):
            detail.Unpack(bad_request)
    fields = {v.field: v.description for v in bad_request.field_violations}
    return Failure(error.code(), info.reason, dict(info.metadata), fields)


def mask_problems(refused: Failure) -> str:
    """What the refusal says about the update mask's paths (each named in its description)."""
    return " ".join(d for f, d in refused.fields.items() if f.startswith("update_mask"))


class Admin:
    """Shortcuts that build valid resources; tests override what they look at."""

    def __init__(self, stub: program_admin_pb2_grpc.ProgramAdminServiceStub) -> None:
        self.stub = stub

    async def partner(self, **fields: Any) -> pa.Partner:
        defaults = {"code": unique("P"), "name": "Partner", "accrual_enabled": True, "redemption_enabled": True}
        partner = pa.Partner(**{**defaults, **fields})
        response: pa.CreatePartnerResponse = await self.stub.CreatePartner(
            pa.CreatePartnerRequest(idempotency_key=key(), actor=ACTOR, partner=partner)
        )
        return response.partner

    async def outlet(self, partner_id: str, **fields: Any) -> pa.Outlet:
        defaults = {"partner_id": partner_id, "code": unique("O"), "name": "Outlet", "region_code": "RU-MOW"}
        outlet = pa.Outlet(**{**defaults, **fields})
        response: pa.CreateOutletResponse = await self.stub.CreateOutlet(
            pa.CreateOutletRequest(idempotency_key=key(), actor=ACTOR, outlet=outlet)
        )
        return response.outlet

    async def terminal(self, outlet_id: str, **fields: Any) -> pa.Terminal:
        terminal = pa.Terminal(**{"terminal_id": unique("T"), "outlet_id": outlet_id, "name": "Till 1", **fields})
        response: pa.CreateTerminalResponse = await self.stub.CreateTerminal(
            pa.CreateTerminalRequest(idempotency_key=key(), actor=ACTOR, terminal=terminal)
        )
        return response.terminal

    async def network(self) -> tuple[pa.Partner, pa.Outlet, pa.Terminal]:
        partner = await self.partner()
        outlet = await self.outlet(partner.partner_id)
        return partner, outlet, await self.terminal(outlet.outlet_id)

    def rule_message(self, **fields: Any) -> pa.EarningRule:
        defaults: dict[str, Any] = {"code": unique("R"), "name": "Base 5%"}
        if not {"percent", "fixed", "per_item", "progressive"} & set(fields):
            defaults["percent"] = pa.PercentReward(rate_bp=500)
        return pa.EarningRule(**{**defaults, **fields})

    async def rule(self, **fields: Any) -> pa.EarningRule:
        response: pa.CreateEarningRuleResponse = await self.stub.CreateEarningRule(
            pa.CreateEarningRuleRequest(idempotency_key=key(), actor=ACTOR, earning_rule=self.rule_message(**fields))
        )
        return response.earning_rule

    async def campaign(self, start: datetime, end: datetime | None = None, **fields: Any) -> pa.Campaign:
        period = types_pb2.TimeRange(start_time=timestamp(start))
        if end is not None:
            period.end_time.CopyFrom(timestamp(end))
        campaign = pa.Campaign(**{"code": unique("C"), "name": "Promo", "period": period, **fields})
        response: pa.CreateCampaignResponse = await self.stub.CreateCampaign(
            pa.CreateCampaignRequest(idempotency_key=key(), actor=ACTOR, campaign=campaign)
        )
        return response.campaign

    async def publish(self, *, at: datetime | None = None, validate_only: bool = False) -> pa.PublishRuleSetResponse:
        request = pa.PublishRuleSetRequest(
            idempotency_key=key(), actor=ACTOR, comment="tests", validate_only=validate_only
        )
        if at is not None:
            request.effective_time.CopyFrom(timestamp(at))
        response: pa.PublishRuleSetResponse = await self.stub.PublishRuleSet(request)
        return response

    async def version(self, number: int) -> pa.RuleSetVersion:
        response: pa.GetRuleSetVersionResponse = await self.stub.GetRuleSetVersion(
            pa.GetRuleSetVersionRequest(version=number)
        )
        return response.version

    async def clear_draft(self) -> None:
        """Archive every rule and campaign other tests left, so a publication holds only ours."""
        await self.archive_rules()
        for _ in range(50):
            page = await self.stub.ListCampaigns(pa.ListCampaignsRequest(page_size=1000))
            if not page.campaigns:
                return
            for campaign in page.campaigns:
                await self.stub.ArchiveCampaign(
                    pa.ArchiveCampaignRequest(idempotency_key=key(), actor=ACTOR, campaign_id=campaign.campaign_id)
                )

    async def archive_rules(self) -> None:
        """Leave no active rules behind for the next test's publications."""
        for _ in range(50):
            page = await self.stub.ListEarningRules(pa.ListEarningRulesRequest(page_size=1000))
            if not page.earning_rules:
                return
            for rule in page.earning_rules:
                await self.stub.ArchiveEarningRule(
                    pa.ArchiveEarningRuleRequest(idempotency_key=key(), actor=ACTOR, rule_id=rule.rule_id)
                )


async def all_pages(list_call: Any, request: Any, items: str) -> tuple[list[Any], int]:
    """Every item of a list, page by page (bounded); and how many pages it took."""
    found: list[Any] = []
    for pages in range(1, 200):
        response = await list_call(request)
        found.extend(getattr(response, items))
        if not response.next_page_token:
            return found, pages
        request.page_token = response.next_page_token
    raise AssertionError("too many pages")


# ------------------------------------------------------------------------------------------------
# The contract is complete


def test_every_rpc_of_the_service_is_implemented() -> None:
    descriptor = pa.DESCRIPTOR.services_by_name["ProgramAdminService"]
    base = program_admin_pb2_grpc.ProgramAdminServiceServicer
    missing = [m.name for m in descriptor.methods if getattr(ProgramAdminServicer, m.name) is getattr(base, m.name)]
    assert missing == []
    assert len(descriptor.methods) == 31  # 2 program + 5 per resource x 5 + 4 versions


# ------------------------------------------------------------------------------------------------
# Program


async def test_the_program_exists_from_the_start_with_the_documented_defaults(admin: Admin) -> None:
    program = (await admin.stub.GetProgram(pa.GetProgramRequest())).program
    uuid.UUID(program.program_id)  # opaque, generated once
    assert (program.currency_code, program.currency_scale, program.point_scale) == ("RUB", 2, 2)
    assert program.authorization_ttl.ToTimedelta() == timedelta(minutes=15)
    assert program.authorization_ttl_max.ToTimedelta() == timedelta(hours=24)
    assert program.offline_max_age.ToTimedelta() == timedelta(days=7)
    assert program.risk_fallback == pa.RISK_FALLBACK_ALLOW_ACCRUAL_ONLY
    assert program.accrual_policy.rounding == pa.ROUNDING_MODE_DOWN
    assert program.refund_policy.shortfall_policy == pa.REFUND_SHORTFALL_POLICY_WITHIN_BALANCE
    assert program.etag and program.HasField("update_time")


async def test_update_program_changes_only_the_masked_fields_and_checks_the_etag(admin: Admin) -> None:
    before = (await admin.stub.GetProgram(pa.GetProgramRequest())).program
    change = pa.Program(name="Coffee club", etag=before.etag, offline_max_age=duration_pb2.Duration(seconds=3 * 86400))
    change.redemption_policy.max_share_bp = 3000
    change.accrual_policy.rounding = pa.ROUNDING_MODE_UP  # not in the mask: ignored
    response = await admin.stub.UpdateProgram(
        pa.UpdateProgramRequest(
            idempotency_key=key(),
            actor=ACTOR,
            program=change,
            update_mask=mask("name", "redemption_policy.max_share_bp", "offline_max_age"),
        )
    )
    after = response.program
    assert after.name == "Coffee club" and after.offline_max_age.seconds == 3 * 86400
    assert after.redemption_policy.max_share_bp == 3000
    assert after.redemption_policy.point_value == before.redemption_policy.point_value  # kept
    assert after.accrual_policy.rounding == before.accrual_policy.rounding
    assert after.etag != before.etag and after.has_unpublished_changes
    assert after.program_id == before.program_id

    stale = await failure(
        admin.stub.UpdateProgram(
            pa.UpdateProgramRequest(
                idempotency_key=key(),
                actor=ACTOR,
                program=pa.Program(name="X", etag=before.etag),
                update_mask=mask("name"),
            )
        )
    )
    assert (stale.code, stale.reason) == (Code.FAILED_PRECONDITION, "VERSION_MISMATCH")
    assert stale.metadata["currentVersion"] == after.etag


async def test_update_program_refuses_bad_paths_and_bad_values_naming_them(admin: Admin) -> None:
    bad_paths = await failure(
        admin.stub.UpdateProgram(
            pa.UpdateProgramRequest(
                idempotency_key=key(),
                actor=ACTOR,
                program=pa.Program(name="X"),
                update_mask=mask("name", "nonsense", "etag", "program_id", "redemption_policy.nope"),
            )
        )
    )
    assert bad_paths.code == Code.INVALID_ARGUMENT
    described = mask_problems(bad_paths)
    for path in ("nonsense", "etag", "program_id", "redemption_policy.nope"):
        assert repr(path) in described
    assert "'name'" not in described

    # "*" replaces every mutable field: an almost empty program is refused field by field.
    everything = await failure(
        admin.stub.UpdateProgram(
            pa.UpdateProgramRequest(
                idempotency_key=key(),
                actor=ACTOR,
                program=pa.Program(name="Y", currency_code="rub", time_zone="Mars/Olympus"),
                update_mask=mask("*"),
            )
        )
    )
    assert everything.code == Code.INVALID_ARGUMENT
    for name in (
        "program.type",
        "program.currency_code",
        "program.time_zone",
        "program.authorization_ttl_max",
        "program.risk_fallback",
        "program.accrual_policy.base",
        "program.redemption_policy.point_value.money",
        "program.refund_policy.shortfall_policy",
    ):
        assert name in everything.fields, name
    too_long = await failure(
        admin.stub.UpdateProgram(
            pa.UpdateProgramRequest(
                idempotency_key=key(),
                actor=ACTOR,
                program=pa.Program(authorization_ttl=duration_pb2.Duration(seconds=2 * 86400)),
                update_mask=mask("authorization_ttl"),
            )
        )
    )
    assert set(too_long.fields) == {"program.authorization_ttl"}
    no_mask = await failure(
        admin.stub.UpdateProgram(pa.UpdateProgramRequest(idempotency_key=key(), actor=ACTOR, program=pa.Program()))
    )
    assert "update_mask" in no_mask.fields


async def test_currency_and_scales_are_fixed_once_an_operation_exists(admin: Admin, db: asyncpg.Connection) -> None:
    current = (await admin.stub.GetProgram(pa.GetProgramRequest())).program
    partner = await admin.partner()
    change = pa.Program(point_scale=0)
    change.redemption_policy.CopyFrom(current.redemption_policy)
    change.redemption_policy.point_value.points.scale = 0
    operation_id = str(uuid.uuid4())
    await db.execute(
        """
        INSERT INTO operations (operation_id, type, state, terminal_id, outlet_id, partner_id, idempotency_key,
            request_hash, method, effective_time, operation)
        VALUES ($1, 1, 3, 'T-any', 'O-any', $2, $1, '\\x00', 'Purchase', now(), '\\x')
        """,
        operation_id,
        partner.partner_id,
    )
    try:
        refused = await failure(
            admin.stub.UpdateProgram(
                pa.UpdateProgramRequest(
                    idempotency_key=key(),
                    actor=ACTOR,
                    program=change,
                    update_mask=mask("point_scale", "redemption_policy"),
                )
            )
        )
        assert refused.code == Code.INVALID_ARGUMENT and "program.point_scale" in refused.fields
    finally:
        await db.execute("DELETE FROM operations WHERE operation_id = $1", operation_id)
    again = (await admin.stub.GetProgram(pa.GetProgramRequest())).program
    assert again.point_scale == current.point_scale and again.etag == current.etag


# ------------------------------------------------------------------------------------------------
# Partners, outlets, terminals


async def test_partner_lifecycle_and_archive_rules(admin: Admin) -> None:
    partner = await admin.partner(name="Acme")
    assert partner.state == pa.PARTNER_STATE_ACTIVE and partner.points_scope == pa.PARTNER_POINTS_SCOPE_COALITION
    fetched = (await admin.stub.GetPartner(pa.GetPartnerRequest(partner_id=partner.partner_id))).partner
    assert fetched == partner

    taken = await failure(admin.partner(code=partner.code))
    assert (taken.code, taken.reason) == (Code.ALREADY_EXISTS, "ALREADY_EXISTS")
    assert taken.metadata == {"resourceType": "Partner", "resourceId": partner.code}

    suspended = (
        await admin.stub.UpdatePartner(
            pa.UpdatePartnerRequest(
                idempotency_key=key(),
                actor=ACTOR,
                partner=pa.Partner(
                    partner_id=partner.partner_id, etag=partner.etag, name="Acme Ltd", state=pa.PARTNER_STATE_SUSPENDED
                ),
                update_mask=mask("name", "state"),
            )
        )
    ).partner
    assert (suspended.name, suspended.state, suspended.code) == ("Acme Ltd", pa.PARTNER_STATE_SUSPENDED, partner.code)

    for change, paths, field in (
        (pa.Partner(state=pa.PARTNER_STATE_ARCHIVED), ["state"], "partner.state"),
        (pa.Partner(points_scope=pa.PARTNER_POINTS_SCOPE_ISOLATED), ["points_scope"], "partner.account_kind"),
        (pa.Partner(code="renamed"), ["code"], "update_mask.paths[0]"),
    ):
        change.partner_id = partner.partner_id
        refused = await failure(
            admin.stub.UpdatePartner(
                pa.UpdatePartnerRequest(idempotency_key=key(), actor=ACTOR, partner=change, update_mask=mask(*paths))
            )
        )
        assert refused.code == Code.INVALID_ARGUMENT and field in refused.fields, (paths, refused)

    outlet = await admin.outlet(partner.partner_id)
    archive = pa.ArchivePartnerRequest(idempotency_key=key(), actor=ACTOR, partner_id=partner.partner_id)
    refused = await failure(admin.stub.ArchivePartner(archive))
    assert (refused.code, refused.reason) == (Code.FAILED_PRECONDITION, "INVALID_STATE_TRANSITION")
    await admin.stub.ArchiveOutlet(
        pa.ArchiveOutletRequest(idempotency_key=key(), actor=ACTOR, outlet_id=outlet.outlet_id)
    )
    archived = (
        await admin.stub.ArchivePartner(
            pa.ArchivePartnerRequest(idempotency_key=key(), actor=ACTOR, partner_id=partner.partner_id)
        )
    ).partner
    assert archived.state == pa.PARTNER_STATE_ARCHIVED
    again = (
        await admin.stub.ArchivePartner(
            pa.ArchivePartnerRequest(idempotency_key=key(), actor=ACTOR, partner_id=partner.partner_id)
        )
    ).partner
    assert again == archived  # archiving again succeeds and changes nothing

    final = await failure(
        admin.stub.UpdatePartner(
            pa.UpdatePartnerRequest(
                idempotency_key=key(),
                actor=ACTOR,
                partner=pa.Partner(partner_id=partner.partner_id, name="Back"),
                update_mask=mask("name"),
            )
        )
    )
    assert (final.code, final.reason) == (Code.FAILED_PRECONDITION, "INVALID_STATE_TRANSITION")
    no_outlet = await failure(admin.outlet(partner.partner_id))
    assert no_outlet.reason == "INVALID_STATE_TRANSITION"
    taken_for_good = await failure(admin.partner(code=partner.code))
    assert taken_for_good.reason == "ALREADY_EXISTS"

    missing = await failure(admin.stub.GetPartner(pa.GetPartnerRequest(partner_id="no-such-partner")))
    assert (missing.code, missing.reason) == (Code.NOT_FOUND, "RESOURCE_NOT_FOUND")
    assert missing.metadata == {"resourceType": "Partner", "resourceId": "no-such-partner"}


async def test_an_isolated_partner_needs_its_account_kind(admin: Admin) -> None:
    refused = await failure(admin.partner(points_scope=pa.PARTNER_POINTS_SCOPE_ISOLATED))
    assert set(refused.fields) == {"partner.account_kind"}
    isolated = await admin.partner(points_scope=pa.PARTNER_POINTS_SCOPE_ISOLATED, account_kind="acme")
    assert isolated.account_kind == "acme"
    refused = await failure(admin.partner(account_kind="acme"))
    assert set(refused.fields) == {"partner.account_kind"}


async def test_outlets_update_with_mask_and_etag(admin: Admin) -> None:
    partner = await admin.partner()
    outlet = await admin.outlet(
        partner.partner_id,
        address=pa.Address(country_code="RU", city="Moscow", address_lines=["Tverskaya 1"]),
        location=pa.GeoPoint(latitude_e7=557558000, longitude_e7=376173000),
        time_zone="Europe/Moscow",
    )
    assert outlet.state == pa.OUTLET_STATE_ACTIVE and outlet.address.city == "Moscow"
    change = pa.Outlet(outlet_id=outlet.outlet_id, etag=outlet.etag, region_code="RU-SPE", time_zone="")
    change.address.city = "Saint Petersburg"
    updated = (
        await admin.stub.UpdateOutlet(
            pa.UpdateOutletRequest(
                idempotency_key=key(),
                actor=ACTOR,
                outlet=change,
                update_mask=mask("region_code", "address.city", "time_zone"),
            )
        )
    ).outlet
    assert (updated.region_code, updated.address.city, updated.time_zone) == ("RU-SPE", "Saint Petersburg", "")
    assert list(updated.address.address_lines) == ["Tverskaya 1"] and updated.location == outlet.location
    stale = await failure(
        admin.stub.UpdateOutlet(
            pa.UpdateOutletRequest(idempotency_key=key(), actor=ACTOR, outlet=change, update_mask=mask("region_code"))
        )
    )
    assert stale.reason == "VERSION_MISMATCH" and stale.metadata["currentVersion"] == updated.etag
    bad = await failure(
        admin.stub.UpdateOutlet(
            pa.UpdateOutletRequest(
                idempotency_key=key(),
                actor=ACTOR,
                outlet=pa.Outlet(outlet_id=outlet.outlet_id, time_zone="Nowhere/City", partner_id="other"),
                update_mask=mask("time_zone", "partner_id"),
            )
        )
    )
    assert "'partner_id'" in mask_problems(bad) and "outlet.time_zone" not in bad.fields  # mask first
    duplicate = await failure(admin.outlet(partner.partner_id, code=outlet.code))
    assert duplicate.reason == "ALREADY_EXISTS"
    other_partner = await admin.partner()
    await admin.outlet(other_partner.partner_id, code=outlet.code)  # codes are unique per partner
    unknown = await failure(admin.outlet("no-such-partner"))
    assert unknown.metadata == {"resourceType": "Partner", "resourceId": "no-such-partner"}


async def test_terminal_lifecycle(admin: Admin) -> None:
    partner, outlet, terminal = await admin.network()
    assert terminal.partner_id == partner.partner_id
    assert terminal.default_channel == types_pb2.SALES_CHANNEL_POS and terminal.state == pa.TERMINAL_STATE_ACTIVE
    taken = await failure(admin.terminal(outlet.outlet_id, terminal_id=terminal.terminal_id))
    assert taken.reason == "ALREADY_EXISTS"

    second_outlet = await admin.outlet(partner.partner_id)
    moved = (
        await admin.stub.UpdateTerminal(
            pa.UpdateTerminalRequest(
                idempotency_key=key(),
                actor=ACTOR,
                terminal=pa.Terminal(
                    terminal_id=terminal.terminal_id,
                    outlet_id=second_outlet.outlet_id,
                    offline_allowed=True,
                    default_channel=types_pb2.SALES_CHANNEL_ONLINE,
                ),
                update_mask=mask("outlet_id", "offline_allowed", "default_channel"),
            )
        )
    ).terminal
    assert (moved.outlet_id, moved.offline_allowed, moved.default_channel) == (
        second_outlet.outlet_id,
        True,
        types_pb2.SALES_CHANNEL_ONLINE,
    )
    assert moved.name == terminal.name and moved.etag != terminal.etag

    foreign_outlet = await admin.outlet((await admin.partner()).partner_id)
    for outlet_id, code, reason in (
        (foreign_outlet.outlet_id, Code.PERMISSION_DENIED, "PERMISSION_DENIED"),
        ("no-such-outlet", Code.NOT_FOUND, "RESOURCE_NOT_FOUND"),
    ):
        refused = await failure(
            admin.stub.UpdateTerminal(
                pa.UpdateTerminalRequest(
                    idempotency_key=key(),
                    actor=ACTOR,
                    terminal=pa.Terminal(terminal_id=terminal.terminal_id, outlet_id=outlet_id),
                    update_mask=mask("outlet_id"),
                )
            )
        )
        assert (refused.code, refused.reason) == (code, reason)

    missing = await failure(admin.stub.GetTerminal(pa.GetTerminalRequest(terminal_id="no-such-terminal")))
    assert (missing.code, missing.reason) == (Code.NOT_FOUND, "TERMINAL_NOT_FOUND")
    archived = (
        await admin.stub.ArchiveTerminal(
            pa.ArchiveTerminalRequest(idempotency_key=key(), actor=ACTOR, terminal_id=terminal.terminal_id)
        )
    ).terminal
    assert archived.state == pa.TERMINAL_STATE_ARCHIVED
    reused = await failure(admin.terminal(outlet.outlet_id, terminal_id=terminal.terminal_id))
    assert reused.reason == "ALREADY_EXISTS"  # a terminal_id is never reused
    changed = await failure(
        admin.stub.UpdateTerminal(
            pa.UpdateTerminalRequest(
                idempotency_key=key(),
                actor=ACTOR,
                terminal=pa.Terminal(terminal_id=terminal.terminal_id, state=pa.TERMINAL_STATE_ACTIVE),
                update_mask=mask("state"),
            )
        )
    )
    assert changed.reason == "INVALID_STATE_TRANSITION"
    bad = await failure(admin.terminal(outlet.outlet_id, terminal_id="has space"))
    assert set(bad.fields) == {"terminal.terminal_id"}


async def test_lists_paginate_in_order_and_filter(admin: Admin) -> None:
    partner = await admin.partner()
    other = await admin.partner()
    outlets = [await admin.outlet(partner.partner_id, region_code="RU-KDA") for _ in range(5)]
    await admin.outlet(other.partner_id, region_code="RU-KDA")
    terminals = [await admin.terminal(outlets[0].outlet_id) for _ in range(3)]
    await admin.stub.ArchiveTerminal(
        pa.ArchiveTerminalRequest(idempotency_key=key(), actor=ACTOR, terminal_id=terminals[2].terminal_id)
    )

    found, pages = await all_pages(
        admin.stub.ListOutlets, pa.ListOutletsRequest(partner_id=partner.partner_id, page_size=2), "outlets"
    )
    assert [o.code for o in found] == sorted(o.code for o in outlets) and pages == 3
    in_region, _ = await all_pages(admin.stub.ListOutlets, pa.ListOutletsRequest(region_code="RU-KDA"), "outlets")
    assert len(in_region) == 6

    listed, _ = await all_pages(
        admin.stub.ListTerminals, pa.ListTerminalsRequest(outlet_id=outlets[0].outlet_id, page_size=1), "terminals"
    )
    assert [t.terminal_id for t in listed] == sorted(t.terminal_id for t in terminals[:2])
    with_archived, _ = await all_pages(
        admin.stub.ListTerminals,
        pa.ListTerminalsRequest(
            partner_id=partner.partner_id,
            states=[pa.TERMINAL_STATE_ACTIVE, pa.TERMINAL_STATE_SUSPENDED, pa.TERMINAL_STATE_ARCHIVED],
            page_size=1,
        ),
        "terminals",
    )
    assert len(with_archived) == 3
    archived_only, _ = await all_pages(
        admin.stub.ListTerminals,
        pa.ListTerminalsRequest(partner_id=partner.partner_id, states=[pa.TERMINAL_STATE_ARCHIVED]),
        "terminals",
    )
    assert [t.terminal_id for t in archived_only] == [terminals[2].terminal_id]

    everyone, _ = await all_pages(admin.stub.ListPartners, pa.ListPartnersRequest(page_size=3), "partners")
    codes = [p.code for p in everyone]
    assert codes == sorted(codes) and len(codes) == len(set(codes)) and {partner.code, other.code} <= set(codes)

    first = await admin.stub.ListOutlets(pa.ListOutletsRequest(partner_id=partner.partner_id, page_size=2))
    switched = await failure(
        admin.stub.ListOutlets(
            pa.ListOutletsRequest(partner_id=other.partner_id, page_size=2, page_token=first.next_page_token)
        )
    )
    assert "page_token" in switched.fields
    garbage = await failure(admin.stub.ListOutlets(pa.ListOutletsRequest(page_token="not-a-token")))
    assert "page_token" in garbage.fields
    bad_state = await failure(admin.stub.ListPartners(pa.ListPartnersRequest(states=[pa.PARTNER_STATE_UNSPECIFIED])))
    assert "states" in bad_state.fields
    coerced = await admin.stub.ListPartners(pa.ListPartnersRequest(page_size=5000))
    assert len(coerced.partners) <= 1000


# ------------------------------------------------------------------------------------------------
# Idempotency


async def test_a_replay_returns_the_same_bytes_and_a_changed_request_is_refused(
    admin: Admin, channel: aio.Channel
) -> None:
    create = channel.unary_unary(
        SERVICE + "CreatePartner",
        request_serializer=pa.CreatePartnerRequest.SerializeToString,
        response_deserializer=None,
    )
    request = pa.CreatePartnerRequest(
        idempotency_key=key(), actor=ACTOR, partner=pa.Partner(code=unique("P"), name="A")
    )
    first = await create(request)
    second = await create(request)
    assert isinstance(first, bytes) and first == second
    created = pa.CreatePartnerResponse.FromString(first).partner
    listed, _ = await all_pages(admin.stub.ListPartners, pa.ListPartnersRequest(), "partners")
    assert [p.partner_id for p in listed if p.code == created.code] == [created.partner_id]

    changed = pa.CreatePartnerRequest()
    changed.CopyFrom(request)
    changed.partner.name = "B"
    reused = await failure(admin.stub.CreatePartner(changed))
    assert (reused.code, reused.reason) == (Code.FAILED_PRECONDITION, "IDEMPOTENCY_KEY_REUSED")
    # The same key in the same method of another actor is another scope.
    elsewhere = pa.CreatePartnerRequest()
    elsewhere.CopyFrom(request)
    elsewhere.actor.id = "someone-else"
    elsewhere.partner.code = unique("P")
    assert (await admin.stub.CreatePartner(elsewhere)).partner.code == elsewhere.partner.code

    # A refusal is not stored: once the cause is gone, the same key succeeds.
    taken = pa.CreatePartnerRequest(idempotency_key=key(), actor=ACTOR, partner=pa.Partner(code=created.code, name="C"))
    assert (await failure(admin.stub.CreatePartner(taken))).reason == "ALREADY_EXISTS"
    taken.partner.code = unique("P")  # a different body under the same key: the key was released
    assert (await admin.stub.CreatePartner(taken)).partner.name == "C"


async def test_writes_need_a_key_and_an_actor(admin: Admin) -> None:
    refused = await failure(admin.stub.CreatePartner(pa.CreatePartnerRequest(partner=pa.Partner(code="x", name="y"))))
    assert {"idempotency_key.key", "actor.type", "actor.id"} <= set(refused.fields)


# ------------------------------------------------------------------------------------------------
# Earning rules and campaigns


async def test_an_earning_rule_is_checked_field_by_field(admin: Admin) -> None:
    condition = await failure(admin.rule(condition="receipt.total >"))
    assert condition.code == Code.INVALID_ARGUMENT
    assert set(condition.fields) == {"earning_rule.condition"}
    assert "compile" in condition.fields["earning_rule.condition"]
    unknown_variable = await failure(admin.rule(condition="customer.vip == true"))
    assert set(unknown_variable.fields) == {"earning_rule.condition"}

    rule = admin.rule_message(name="", priority=2_000_000, slip_text="x" * 65)
    rule.ClearField("percent")
    rule.progressive.CopyFrom(
        pa.ProgressiveReward(
            basis=pa.PROGRESSIVE_BASIS_PER_RECEIPT,
            method=pa.PROGRESSIVE_METHOD_WHOLE_AMOUNT,
            tiers=[
                pa.ProgressiveTier(threshold=rub(100000), rate_bp=500),
                pa.ProgressiveTier(threshold=rub(50000), rate_bp=700),
                pa.ProgressiveTier(threshold=types_pb2.Money(currency_code="USD", amount_minor=900000, scale=2)),
            ],
        )
    )
    rule.target.times_of_day.append(pa.TimeOfDayRange(start_minute=1500, end_minute=60))
    many = await failure(
        admin.stub.CreateEarningRule(pa.CreateEarningRuleRequest(idempotency_key=key(), actor=ACTOR, earning_rule=rule))
    )
    assert set(many.fields) == {
        "earning_rule.name",
        "earning_rule.priority",
        "earning_rule.slip_text",
        "earning_rule.progressive.tiers[1].threshold",
        "earning_rule.progressive.tiers[2].threshold",
        "earning_rule.target.times_of_day[0].start_minute",
    }
    no_reward = admin.rule_message()
    no_reward.ClearField("percent")
    refused = await failure(
        admin.stub.CreateEarningRule(
            pa.CreateEarningRuleRequest(idempotency_key=key(), actor=ACTOR, earning_rule=no_reward)
        )
    )
    assert set(refused.fields) == {"earning_rule.reward"}
    wrong_scale = await failure(admin.rule(fixed=pa.FixedReward(points=types_pb2.Points(amount_minor=5, scale=0))))
    assert set(wrong_scale.fields) == {"earning_rule.fixed.points.scale"}
    missing_campaign = await failure(admin.rule(campaign_id="no-such-campaign"))
    assert missing_campaign.metadata == {"resourceType": "Campaign", "resourceId": "no-such-campaign"}
    missing_outlet = await failure(admin.rule(target=pa.RuleTarget(outlet_ids=["no-such-outlet"])))
    assert missing_outlet.metadata == {"resourceType": "Outlet", "resourceId": "no-such-outlet"}


async def test_earning_rules_update_list_and_archive(admin: Admin) -> None:
    campaign = await admin.campaign(datetime.now(UTC) - timedelta(days=1))
    first = await admin.rule(
        priority=10,
        campaign_id=campaign.campaign_id,
        condition='receipt.channel == "APP"',
        target=pa.RuleTarget(skus=["a", "b"], channels=[types_pb2.SALES_CHANNEL_APP]),
    )
    assert first.state == pa.EARNING_RULE_STATE_ACTIVE and first.stacking == pa.STACKING_MODE_STACKABLE
    assert (await admin.stub.GetEarningRule(pa.GetEarningRuleRequest(rule_id=first.rule_id))).earning_rule == first
    second = await admin.rule(priority=10, campaign_id=campaign.campaign_id)
    third = await admin.rule(priority=20, campaign_id=campaign.campaign_id)
    taken = await failure(admin.rule(code=first.code))
    assert taken.reason == "ALREADY_EXISTS"

    change = pa.EarningRule(
        rule_id=first.rule_id,
        etag=first.etag,
        target=pa.RuleTarget(skus=["c"]),
        progressive=pa.ProgressiveReward(
            basis=pa.PROGRESSIVE_BASIS_CUMULATIVE,
            period=pa.CUMULATIVE_PERIOD_ROLLING_DAYS,
            rolling_days=30,
            method=pa.PROGRESSIVE_METHOD_MARGINAL,
            tiers=[
                pa.ProgressiveTier(threshold=rub(0), rate_bp=100),
                pa.ProgressiveTier(threshold=rub(10000), rate_bp=300),
            ],
        ),
    )
    updated = (
        await admin.stub.UpdateEarningRule(
            pa.UpdateEarningRuleRequest(
                idempotency_key=key(), actor=ACTOR, earning_rule=change, update_mask=mask("target.skus", "progressive")
            )
        )
    ).earning_rule
    assert updated.WhichOneof("reward") == "progressive" and list(updated.target.skus) == ["c"]
    assert list(updated.target.channels) == [types_pb2.SALES_CHANNEL_APP]  # not in the mask: kept
    assert updated.condition == first.condition and updated.code == first.code
    stale = await failure(
        admin.stub.UpdateEarningRule(
            pa.UpdateEarningRuleRequest(
                idempotency_key=key(), actor=ACTOR, earning_rule=change, update_mask=mask("name")
            )
        )
    )
    assert stale.reason == "VERSION_MISMATCH" and stale.metadata["currentVersion"] == updated.etag
    oneof = await failure(
        admin.stub.UpdateEarningRule(
            pa.UpdateEarningRuleRequest(
                idempotency_key=key(),
                actor=ACTOR,
                earning_rule=pa.EarningRule(rule_id=first.rule_id),
                update_mask=mask("reward", "code", "rule_id"),
            )
        )
    )
    assert all(repr(p) in mask_problems(oneof) for p in ("reward", "code", "rule_id"))
    bad_condition = await failure(
        admin.stub.UpdateEarningRule(
            pa.UpdateEarningRuleRequest(
                idempotency_key=key(),
                actor=ACTOR,
                earning_rule=pa.EarningRule(rule_id=first.rule_id, condition="1 +"),
                update_mask=mask("condition"),
            )
        )
    )
    assert set(bad_condition.fields) == {"earning_rule.condition"}

    paused = (
        await admin.stub.UpdateEarningRule(
            pa.UpdateEarningRuleRequest(
                idempotency_key=key(),
                actor=ACTOR,
                earning_rule=pa.EarningRule(rule_id=second.rule_id, state=pa.EARNING_RULE_STATE_PAUSED),
                update_mask=mask("state"),
            )
        )
    ).earning_rule
    assert paused.state == pa.EARNING_RULE_STATE_PAUSED
    in_campaign, _ = await all_pages(
        admin.stub.ListEarningRules,
        pa.ListEarningRulesRequest(campaign_id=campaign.campaign_id, page_size=1),
        "earning_rules",
    )
    expected = [third.code, *sorted([first.code, second.code])]  # priority descending, then code
    assert [r.code for r in in_campaign] == expected
    only_paused = await admin.stub.ListEarningRules(
        pa.ListEarningRulesRequest(campaign_id=campaign.campaign_id, states=[pa.EARNING_RULE_STATE_PAUSED])
    )
    assert [r.rule_id for r in only_paused.earning_rules] == [second.rule_id]
    listed_campaign = (await admin.stub.GetCampaign(pa.GetCampaignRequest(campaign_id=campaign.campaign_id))).campaign
    assert list(listed_campaign.earning_rule_ids) == [r.rule_id for r in in_campaign]

    archived = (
        await admin.stub.ArchiveEarningRule(
            pa.ArchiveEarningRuleRequest(idempotency_key=key(), actor=ACTOR, rule_id=third.rule_id)
        )
    ).earning_rule
    assert archived.state == pa.EARNING_RULE_STATE_ARCHIVED
    remaining = await admin.stub.ListEarningRules(pa.ListEarningRulesRequest(campaign_id=campaign.campaign_id))
    assert third.rule_id not in [r.rule_id for r in remaining.earning_rules]
    resumed = await failure(
        admin.stub.UpdateEarningRule(
            pa.UpdateEarningRuleRequest(
                idempotency_key=key(),
                actor=ACTOR,
                earning_rule=pa.EarningRule(rule_id=third.rule_id, state=pa.EARNING_RULE_STATE_ACTIVE),
                update_mask=mask("state"),
            )
        )
    )
    assert resumed.reason == "INVALID_STATE_TRANSITION"
    await admin.archive_rules()


async def test_the_promo_calendar(admin: Admin) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    partner = await admin.partner()
    past = await admin.campaign(now - timedelta(days=30), now - timedelta(days=20), name="Past")
    running = await admin.campaign(now - timedelta(days=1), now + timedelta(days=1), partner_ids=[partner.partner_id])
    open_ended = await admin.campaign(now - timedelta(days=2))
    upcoming = await admin.campaign(now + timedelta(days=10), now + timedelta(days=12))
    elsewhere = await admin.campaign(now - timedelta(days=1), partner_ids=[(await admin.partner()).partner_id])
    mine = {c.campaign_id for c in (past, running, open_ended, upcoming, elsewhere)}
    phases = {c.campaign_id: c.phase for c in (past, running, open_ended, upcoming)}
    assert phases == {
        past.campaign_id: pa.CAMPAIGN_PHASE_ENDED,
        running.campaign_id: pa.CAMPAIGN_PHASE_RUNNING,
        open_ended.campaign_id: pa.CAMPAIGN_PHASE_RUNNING,
        upcoming.campaign_id: pa.CAMPAIGN_PHASE_UPCOMING,
    }

    window = types_pb2.TimeRange(
        start_time=timestamp(now - timedelta(days=3)), end_time=timestamp(now + timedelta(days=11))
    )
    found, _ = await all_pages(
        admin.stub.ListCampaigns, pa.ListCampaignsRequest(overlapping=window, page_size=2), "campaigns"
    )
    ids = [c.campaign_id for c in found if c.campaign_id in mine]
    assert ids == [open_ended.campaign_id, running.campaign_id, elsewhere.campaign_id, upcoming.campaign_id] or ids == [
        open_ended.campaign_id,
        elsewhere.campaign_id,
        running.campaign_id,
        upcoming.campaign_id,
    ]
    starts = [(c.period.start_time.ToDatetime(), c.code) for c in found]
    assert starts == sorted(starts)
    for_partner, _ = await all_pages(
        admin.stub.ListCampaigns,
        pa.ListCampaignsRequest(overlapping=window, partner_id=partner.partner_id),
        "campaigns",
    )
    partner_ids = {c.campaign_id for c in for_partner if c.campaign_id in mine}
    assert partner_ids == {running.campaign_id, open_ended.campaign_id, upcoming.campaign_id}  # open to all, or his

    backwards = await failure(admin.campaign(now, now - timedelta(hours=1)))
    assert set(backwards.fields) == {"campaign.period.end_time"}
    no_start = await failure(
        admin.stub.CreateCampaign(
            pa.CreateCampaignRequest(
                idempotency_key=key(), actor=ACTOR, campaign=pa.Campaign(code=unique("C"), name="x")
            )
        )
    )
    assert set(no_start.fields) == {"campaign.period.start_time"}
    unknown_partner = await failure(admin.campaign(now, partner_ids=["no-such-partner"]))
    assert unknown_partner.metadata == {"resourceType": "Partner", "resourceId": "no-such-partner"}

    moved = (
        await admin.stub.UpdateCampaign(
            pa.UpdateCampaignRequest(
                idempotency_key=key(),
                actor=ACTOR,
                campaign=pa.Campaign(
                    campaign_id=upcoming.campaign_id,
                    etag=upcoming.etag,
                    period=types_pb2.TimeRange(start_time=timestamp(now - timedelta(hours=1))),
                    state=pa.CAMPAIGN_STATE_PAUSED,
                ),
                update_mask=mask("period", "state"),
            )
        )
    ).campaign
    assert moved.phase == pa.CAMPAIGN_PHASE_RUNNING and not moved.period.HasField("end_time")
    assert moved.state == pa.CAMPAIGN_STATE_PAUSED
    archived = (
        await admin.stub.ArchiveCampaign(
            pa.ArchiveCampaignRequest(idempotency_key=key(), actor=ACTOR, campaign_id=past.campaign_id)
        )
    ).campaign
    assert archived.state == pa.CAMPAIGN_STATE_ARCHIVED
    listed, _ = await all_pages(admin.stub.ListCampaigns, pa.ListCampaignsRequest(), "campaigns")
    assert past.campaign_id not in {c.campaign_id for c in listed}
    for campaign in (running, open_ended, upcoming, elsewhere):
        await admin.stub.ArchiveCampaign(
            pa.ArchiveCampaignRequest(idempotency_key=key(), actor=ACTOR, campaign_id=campaign.campaign_id)
        )


async def test_the_rule_quota(admin: Admin, db: asyncpg.Connection) -> None:
    live = await db.fetchval("SELECT count(*) FROM earning_rules WHERE state <> 3")
    filler = 1000 - live
    await db.execute(
        """
        INSERT INTO earning_rules (rule_id, code, state, priority, body)
        SELECT 'filler-' || i, 'filler-' || i, 2, 0, '{"name": "filler", "percent": {"rate_bp": 1}}'
        FROM generate_series(1, $1) AS i
        """,
        filler,
    )
    try:
        refused = await failure(admin.rule())
        assert (refused.code, refused.reason) == (Code.RESOURCE_EXHAUSTED, "QUOTA_EXCEEDED")
    finally:
        await db.execute("UPDATE earning_rules SET state = 3 WHERE rule_id LIKE 'filler-%'")
    assert (await admin.rule()).state == pa.EARNING_RULE_STATE_ACTIVE
    await admin.archive_rules()


# ------------------------------------------------------------------------------------------------
# Publication and versions


async def test_publication_freezes_the_draft(admin: Admin) -> None:
    await admin.clear_draft()
    now = datetime.now(UTC)
    campaign = await admin.campaign(now - timedelta(days=1), now + timedelta(days=30))
    paused_campaign = await admin.campaign(now - timedelta(days=1), state=pa.CAMPAIGN_STATE_PAUSED)
    high = await admin.rule(priority=100, campaign_id=campaign.campaign_id, slip_text="Promo x2")
    low = await admin.rule(priority=-5)
    paused = await admin.rule(priority=50, state=pa.EARNING_RULE_STATE_PAUSED)
    left_out = await admin.rule(priority=60, campaign_id=paused_campaign.campaign_id)

    checked = await admin.publish(validate_only=True)
    assert checked.version.version == 0 and checked.version.state == pa.RULE_SET_VERSION_STATE_CURRENT
    assert (checked.version.earning_rule_count, checked.version.campaign_count) == (2, 1)
    assert any(left_out.code in w for w in checked.warnings)
    before = await admin.stub.ListRuleSetVersions(pa.ListRuleSetVersionsRequest())

    published = await admin.publish()
    version = published.version
    assert version.version == (before.versions[0].version if before.versions else 0) + 1
    assert version.state == pa.RULE_SET_VERSION_STATE_CURRENT
    assert version.published_by == ACTOR and version.comment == "tests"
    program = (await admin.stub.GetProgram(pa.GetProgramRequest())).program
    assert program.current_rule_set_version == version.version and not program.has_unpublished_changes

    content = await admin.stub.GetRuleSetVersion(pa.GetRuleSetVersionRequest(version=0))
    assert content.version.version == version.version
    snapshot = content.snapshot
    assert [r.rule_id for r in snapshot.earning_rules] == [high.rule_id, low.rule_id]
    assert paused.rule_id not in [r.rule_id for r in snapshot.earning_rules]
    assert [c.campaign_id for c in snapshot.campaigns] == [campaign.campaign_id]
    assert list(snapshot.campaigns[0].earning_rule_ids) == [high.rule_id]
    assert snapshot.campaigns[0].phase == pa.CAMPAIGN_PHASE_RUNNING
    assert snapshot.redemption_policy == program.redemption_policy
    assert snapshot.earning_rules[0] == high

    # The draft moves on; the published version does not.
    await admin.stub.UpdateEarningRule(
        pa.UpdateEarningRuleRequest(
            idempotency_key=key(),
            actor=ACTOR,
            earning_rule=pa.EarningRule(rule_id=high.rule_id, percent=pa.PercentReward(rate_bp=900)),
            update_mask=mask("percent"),
        )
    )
    await admin.stub.ArchiveEarningRule(
        pa.ArchiveEarningRuleRequest(idempotency_key=key(), actor=ACTOR, rule_id=low.rule_id)
    )
    assert (await admin.stub.GetProgram(pa.GetProgramRequest())).program.has_unpublished_changes
    frozen = await admin.stub.GetRuleSetVersion(pa.GetRuleSetVersionRequest(version=version.version))
    assert frozen.snapshot.earning_rules[0].percent.rate_bp == 500
    assert [r.rule_id for r in frozen.snapshot.earning_rules] == [high.rule_id, low.rule_id]

    newer = (await admin.publish()).version
    assert newer.version == version.version + 1
    assert (await admin.version(version.version)).state == pa.RULE_SET_VERSION_STATE_SUPERSEDED
    assert (await admin.version(newer.version)).earning_rule_count == 1
    await admin.archive_rules()


async def test_an_inconsistent_draft_is_not_published(admin: Admin, db: asyncpg.Connection) -> None:
    rule = await admin.rule()
    # A rule saved when it was valid (e.g. before a currency change); here: its body edited in place.
    await db.execute(
        """UPDATE earning_rules SET body = jsonb_set(body, '{condition}', '"receipt.total >"') WHERE rule_id = $1""",
        rule.rule_id,
    )
    try:
        refused = await failure(admin.publish(validate_only=True))
        assert set(refused.fields) == {f"earning_rules[{rule.code}].condition"}
    finally:
        await admin.archive_rules()
    missing = await failure(admin.stub.GetRuleSetVersion(pa.GetRuleSetVersionRequest(version=999_999)))
    assert missing.metadata == {"resourceType": "RuleSetVersion", "resourceId": "999999"}


async def wait_for_state(admin: Admin, version: int, state: int, *, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while (await admin.version(version)).state != state:
        if time.monotonic() > deadline:
            raise AssertionError(f"version {version} did not reach state {state} in {timeout_s} s")
        await asyncio.sleep(0.1)


async def test_scheduled_versions_take_effect_or_are_cancelled(admin: Admin) -> None:
    current = (await admin.publish()).version
    soon = datetime.now(UTC) + timedelta(seconds=10)  # cancelled long before: no waiting
    scheduled = (await admin.publish(at=soon)).version
    assert scheduled.state == pa.RULE_SET_VERSION_STATE_SCHEDULED
    assert (await admin.version(0)).version == current.version

    before_it = await failure(admin.publish())
    assert set(before_it.fields) == {"effective_time"}
    for wrong in (datetime.now(UTC) - timedelta(minutes=1), datetime.now(UTC) + timedelta(days=400)):
        refused = await failure(admin.publish(at=wrong))
        assert set(refused.fields) == {"effective_time"}
    checked = await admin.publish(at=soon + timedelta(seconds=1), validate_only=True)
    assert checked.version.state == pa.RULE_SET_VERSION_STATE_SCHEDULED

    cancel = pa.CancelRuleSetVersionRequest(idempotency_key=key(), actor=ACTOR, version=scheduled.version)
    cancelled = (await admin.stub.CancelRuleSetVersion(cancel)).version
    assert cancelled.state == pa.RULE_SET_VERSION_STATE_CANCELLED
    assert (await admin.stub.CancelRuleSetVersion(cancel)).version == cancelled  # a replay
    again = await failure(
        admin.stub.CancelRuleSetVersion(
            pa.CancelRuleSetVersionRequest(idempotency_key=key(), actor=ACTOR, version=scheduled.version)
        )
    )
    assert (again.code, again.reason) == (Code.FAILED_PRECONDITION, "INVALID_STATE_TRANSITION")

    takes_effect = (await admin.publish(at=datetime.now(UTC) + timedelta(seconds=1.5))).version
    assert takes_effect.version == scheduled.version + 1
    await wait_for_state(admin, takes_effect.version, pa.RULE_SET_VERSION_STATE_CURRENT)
    assert (await admin.version(current.version)).state == pa.RULE_SET_VERSION_STATE_SUPERSEDED
    assert (await admin.version(scheduled.version)).state == pa.RULE_SET_VERSION_STATE_CANCELLED
    assert (await admin.version(0)).version == takes_effect.version
    in_force = await failure(
        admin.stub.CancelRuleSetVersion(
            pa.CancelRuleSetVersionRequest(idempotency_key=key(), actor=ACTOR, version=takes_effect.version)
        )
    )
    assert in_force.metadata["fromState"] == "CURRENT"

    newest_first, pages = await all_pages(
        admin.stub.ListRuleSetVersions, pa.ListRuleSetVersionsRequest(page_size=2), "versions"
    )
    numbers = [v.version for v in newest_first]
    assert numbers == sorted(numbers, reverse=True) and pages >= 2
    cancelled_only = await admin.stub.ListRuleSetVersions(
        pa.ListRuleSetVersionsRequest(states=[pa.RULE_SET_VERSION_STATE_CANCELLED])
    )
    assert scheduled.version in [v.version for v in cancelled_only.versions]
    assert all(v.state == pa.RULE_SET_VERSION_STATE_CANCELLED for v in cancelled_only.versions)
    current_only = await admin.stub.ListRuleSetVersions(
        pa.ListRuleSetVersionsRequest(states=[pa.RULE_SET_VERSION_STATE_CURRENT])
    )
    assert [v.version for v in current_only.versions] == [takes_effect.version]


# ------------------------------------------------------------------------------------------------
# The read API of the register flow


async def test_the_terminal_context_in_one_read(admin: Admin, db: asyncpg.Connection) -> None:
    partner = await admin.partner(points_scope=pa.PARTNER_POINTS_SCOPE_ISOLATED, account_kind="acme")
    own_zone = await admin.outlet(partner.partner_id, time_zone="Asia/Yekaterinburg", region_code="RU-SVE")
    no_zone = await admin.outlet(partner.partner_id)
    terminal = await admin.terminal(
        own_zone.outlet_id, offline_allowed=True, default_channel=types_pb2.SALES_CHANNEL_APP
    )
    other = await admin.terminal(no_zone.outlet_id)

    context = await store.load_terminal_context(db, terminal.terminal_id)
    assert context is not None
    assert (context.terminal_id, context.terminal_state, context.default_channel, context.offline_allowed) == (
        terminal.terminal_id,
        TerminalState.ACTIVE,
        SalesChannel.APP,
        True,
    )
    assert (context.outlet_id, context.outlet_code, context.outlet_state, context.region_code, context.time_zone) == (
        own_zone.outlet_id,
        own_zone.code,
        OutletState.ACTIVE,
        "RU-SVE",
        "Asia/Yekaterinburg",
    )
    assert (context.partner_id, context.partner_code, context.partner_state, context.points_scope) == (
        partner.partner_id,
        partner.code,
        PartnerState.ACTIVE,
        PointsScope.ISOLATED,
    )
    assert (context.partner_account_kind, context.accrual_enabled, context.redemption_enabled) == ("acme", True, True)
    assert context.inactive_part() is None
    program = (await admin.stub.GetProgram(pa.GetProgramRequest())).program
    fallback = await store.load_terminal_context(db, other.terminal_id)
    assert fallback is not None and fallback.time_zone == program.time_zone
    assert await store.load_terminal_context(db, "no-such-terminal") is None

    await admin.stub.UpdateOutlet(
        pa.UpdateOutletRequest(
            idempotency_key=key(),
            actor=ACTOR,
            outlet=pa.Outlet(outlet_id=own_zone.outlet_id, state=pa.OUTLET_STATE_SUSPENDED),
            update_mask=mask("state"),
        )
    )
    suspended = await store.load_terminal_context(db, terminal.terminal_id)
    assert suspended is not None and suspended.inactive_part() == "outlet"

    await store.touch_terminal(db, terminal.terminal_id)
    seen = (await admin.stub.GetTerminal(pa.GetTerminalRequest(terminal_id=terminal.terminal_id))).terminal
    assert seen.HasField("last_seen_time")
    await store.touch_terminal(db, terminal.terminal_id)  # within the minute: nothing written
    again = (await admin.stub.GetTerminal(pa.GetTerminalRequest(terminal_id=terminal.terminal_id))).terminal
    assert again.last_seen_time == seen.last_seen_time and again.etag == seen.etag


async def test_program_settings_and_the_generation(admin: Admin, db: asyncpg.Connection) -> None:
    settings = await store.load_program_settings(db)
    program = (await admin.stub.GetProgram(pa.GetProgramRequest())).program
    assert settings is not None
    assert (settings.program_id, settings.currency_code, settings.currency_scale, settings.point_scale) == (
        program.program_id,
        program.currency_code,
        program.currency_scale,
        program.point_scale,
    )
    assert settings.authorization_ttl == program.authorization_ttl.ToTimedelta()
    assert settings.offline_max_age == program.offline_max_age.ToTimedelta()
    assert settings.risk_fallback is RiskFallback(program.risk_fallback) and settings.time_zone == program.time_zone

    generation = await store.config_generation(db)
    await admin.stub.GetProgram(pa.GetProgramRequest())
    await failure(admin.partner(code="bad code"))  # refused at the edge: nothing written
    await failure(admin.outlet("no-such-partner"))  # refused in the transaction: rolled back
    assert await store.config_generation(db) == generation
    updated = await admin.stub.UpdateProgram(
        pa.UpdateProgramRequest(
            idempotency_key=key(),
            actor=ACTOR,
            program=pa.Program(risk_fallback=pa.RISK_FALLBACK_REFUSE),
            update_mask=mask("risk_fallback"),
        )
    )
    assert await store.config_generation(db) == generation + 1
    changed = await store.load_program_settings(db)
    assert changed is not None and changed.risk_fallback is RiskFallback.REFUSE
    assert updated.program.risk_fallback == pa.RISK_FALLBACK_REFUSE
    partner, outlet, terminal = await admin.network()
    assert await store.config_generation(db) == generation + 4
    audit = await db.fetch(
        "SELECT action, resource_id, actor_id FROM config_changes WHERE generation > $1 ORDER BY generation", generation
    )
    assert [(r["action"], r["resource_id"]) for r in audit] == [
        ("UpdateProgram", program.program_id),
        ("CreatePartner", partner.partner_id),
        ("CreateOutlet", outlet.outlet_id),
        ("CreateTerminal", terminal.terminal_id),
    ]
    assert {r["actor_id"] for r in audit} == {ACTOR.id}


async def test_rule_sets_by_time_and_number(admin: Admin, db: asyncpg.Connection) -> None:
    await admin.clear_draft()
    rule = await admin.rule()
    first = (await admin.publish()).version
    at_first = first.effective_time.ToDatetime(tzinfo=UTC)
    await admin.archive_rules()
    later = datetime.now(UTC) + timedelta(seconds=30)
    scheduled = (await admin.publish(at=later)).version
    try:
        found = await store.load_rule_set_at(db, datetime.now(UTC))
        assert found is not None and found[0] == first.version
        assert [r.rule_id for r in pa.RuleSetSnapshot.FromString(found[1]).earning_rules] == [rule.rule_id]
        assert (await store.load_rule_set_at(db, later + timedelta(seconds=1)) or (0, b""))[0] == scheduled.version
        before = await store.load_rule_set_at(db, at_first - timedelta(microseconds=1))
        assert before is None or before[0] < first.version
        assert await store.next_rule_set_change(db, datetime.now(UTC)) == later
        assert await store.next_rule_set_change(db, later) is None
        frozen = await store.load_rule_set_version(db, scheduled.version)
        assert frozen is not None and not pa.RuleSetSnapshot.FromString(frozen).earning_rules
        assert await store.load_rule_set_version(db, 999_999) is None
    finally:
        await admin.stub.CancelRuleSetVersion(
            pa.CancelRuleSetVersionRequest(idempotency_key=key(), actor=ACTOR, version=scheduled.version)
        )
    assert (await store.load_rule_set_at(db, later + timedelta(seconds=1)) or (0, b""))[0] == first.version
