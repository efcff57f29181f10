"""gRPC edge of ProgramAdminService: the program's configuration (policies, partners, outlets,
terminals, earning rules, campaigns, rule set versions).

Proto in, checked (every bad field in one INVALID_ARGUMENT), records to the use cases
(services/processing/program.py), proto out. Every mutating RPC runs once per (actor, key)
through shared.idempotency; a refusal releases the key. Lists paginate by keyset: the page
token carries the last item's sort key and a digest of the request's filters, so a token used
with other filters is INVALID_ARGUMENT rather than a silently wrong page.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import Any, TypeVar

from google.protobuf.message import Message
from grpc import aio
from loyalty.common.v1 import types_pb2
from loyalty.processing.v1 import program_admin_pb2 as pa
from loyalty.processing.v1 import program_admin_pb2_grpc

from services.processing import program
from services.processing import program_mapping as mapping
from services.processing.domain.program import (
    Actor,
    CampaignRecord,
    OutletRecord,
    PartnerRecord,
    ProgramRecord,
    ProgramStatus,
    RuleRecord,
    TerminalRecord,
    campaign_phase,
)
from shared import idempotency
from shared.errors import FieldViolation, invalid_argument
from shared.server import Runtime

ResponseT = TypeVar("ResponseT", bound=Message)
KeyT = TypeVar("KeyT")

IDEMPOTENCY_KEY = re.compile(r"[A-Za-z0-9._:\-]{8,128}")
ACTOR_ID_MAX = 128
COMMENT_MAX = 500
PAGE_SIZE_DEFAULT, PAGE_SIZE_MAX = 50, 1000
LIVE = (1, 2)  # ACTIVE and SUSPENDED / PAUSED: what lists show unless asked for archived ones


# ------------------------------------------------------------------------------------------------
# Request checks


def _write_violations(request: Any) -> list[FieldViolation]:
    """The idempotency key and the actor every mutating request carries."""
    violations = []
    if not IDEMPOTENCY_KEY.fullmatch(request.idempotency_key.key):
        violations.append(FieldViolation("idempotency_key.key", "8..128 characters from [A-Za-z0-9._:-]"))
    actor = request.actor
    if actor.type == types_pb2.ACTOR_TYPE_UNSPECIFIED or actor.type not in types_pb2.ActorType.values():
        violations.append(FieldViolation("actor.type", "required: who makes the change"))
    if not 1 <= len(actor.id) <= ACTOR_ID_MAX:
        violations.append(FieldViolation("actor.id", f"required, at most {ACTOR_ID_MAX} characters"))
    return violations


def _required(value: str, name: str) -> list[FieldViolation]:
    return [] if value else [FieldViolation(name, "required")]


def _raise_if(violations: Sequence[FieldViolation]) -> None:
    if violations:
        raise invalid_argument(violations)


def _actor(request: Any) -> Actor:
    return Actor(int(request.actor.type), request.actor.id)


def _page_size(requested: int) -> int:
    if requested < 0:
        raise invalid_argument([FieldViolation("page_size", "must not be negative")])
    return min(requested or PAGE_SIZE_DEFAULT, PAGE_SIZE_MAX)


def _states(values: Sequence[int], enum_type: Any, *, default: Sequence[int]) -> list[int]:
    """A list's state filter: known, specified values; empty means `default`."""
    if any(v == 0 or v not in enum_type.values() for v in values):
        raise invalid_argument([FieldViolation("states", "known, specified states only")])
    return sorted(set(values)) if values else list(default)


def _filter_digest(request: Message) -> str:
    """What must stay the same between pages: every field but the page token and size."""
    filters = type(request)()
    filters.CopyFrom(request)
    filters.ClearField("page_token")
    filters.ClearField("page_size")
    return hashlib.sha256(filters.SerializeToString(deterministic=True)).hexdigest()[:16]


def _next_token(request: Message, key: Sequence[Any]) -> str:
    payload = json.dumps({"after": list(key), "filters": _filter_digest(request)}, separators=(",", ":"))
    return base64.urlsafe_b64encode(payload.encode()).decode().rstrip("=")


def _after(request: Any, parse: Callable[[list[Any]], KeyT]) -> KeyT | None:
    """The sort key a page token resumes after; None for the first page."""
    token: str = request.page_token
    if not token:
        return None
    try:
        payload = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        if payload["filters"] != _filter_digest(request):
            raise invalid_argument([FieldViolation("page_token", "the other fields changed between pages")])
        return parse(payload["after"])
    except (binascii.Error, ValueError, KeyError, IndexError, TypeError):
        raise invalid_argument([FieldViolation("page_token", "not a token from this list")]) from None


def _page(
    request: Message, items: Sequence[KeyT], size: int, key: Callable[[KeyT], Sequence[Any]]
) -> tuple[Sequence[KeyT], str]:
    """The page (`items` were fetched with size + 1) and the token of the next one."""
    if len(items) <= size:
        return items, ""
    return items[:size], _next_token(request, key(items[size - 1]))


# ------------------------------------------------------------------------------------------------


class ProgramAdminServicer(program_admin_pb2_grpc.ProgramAdminServiceServicer):
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.pool = runtime.pool

    async def _once(
        self, method: str, request: Any, response_type: type[ResponseT], work: Callable[[], Awaitable[ResponseT]]
    ) -> ResponseT:
        """Run `work` once per (actor, key); a replay gets the stored response."""
        return await idempotency.run_once(
            self.pool,
            scope=f"admin:{request.actor.type}:{request.actor.id}",
            key=request.idempotency_key.key,
            method=method,
            request=request,
            response_type=response_type,
            work=work,
        )

    # -- program -----------------------------------------------------------------------------------

    async def GetProgram(self, request: pa.GetProgramRequest, context: aio.ServicerContext) -> pa.GetProgramResponse:
        record, status = await program.get_program(self.pool)
        return pa.GetProgramResponse(program=mapping.program_message(record, status))

    async def UpdateProgram(
        self, request: pa.UpdateProgramRequest, context: aio.ServicerContext
    ) -> pa.UpdateProgramResponse:
        _raise_if(_write_violations(request))
        paths = mapping.mask_paths(request.update_mask, mapping.PROGRAM_MASK)

        def change(current: ProgramRecord) -> ProgramRecord:
            message = mapping.program_message(current, ProgramStatus(current_version=0, has_unpublished_changes=False))
            mapping.apply_mask(request.program, message, paths)
            _raise_if(mapping.program_violations(message))
            return mapping.program_record(message, current)

        async def work() -> pa.UpdateProgramResponse:
            record, status = await program.update_program(
                self.pool, actor=_actor(request), expected_etag=request.program.etag, change=change
            )
            return pa.UpdateProgramResponse(program=mapping.program_message(record, status))

        return await self._once("UpdateProgram", request, pa.UpdateProgramResponse, work)

    # -- partners ----------------------------------------------------------------------------------

    async def CreatePartner(
        self, request: pa.CreatePartnerRequest, context: aio.ServicerContext
    ) -> pa.CreatePartnerResponse:
        _raise_if(_write_violations(request) + mapping.partner_violations(request.partner, creating=True))
        partner = mapping.new_partner(request.partner, program.new_id())

        async def work() -> pa.CreatePartnerResponse:
            created = await program.create_partner(self.pool, actor=_actor(request), partner=partner)
            return pa.CreatePartnerResponse(partner=mapping.partner_message(created))

        return await self._once("CreatePartner", request, pa.CreatePartnerResponse, work)

    async def GetPartner(self, request: pa.GetPartnerRequest, context: aio.ServicerContext) -> pa.GetPartnerResponse:
        _raise_if(_required(request.partner_id, "partner_id"))
        partner = await program.get_partner(self.pool, request.partner_id)
        return pa.GetPartnerResponse(partner=mapping.partner_message(partner))

    async def ListPartners(
        self, request: pa.ListPartnersRequest, context: aio.ServicerContext
    ) -> pa.ListPartnersResponse:
        size = _page_size(request.page_size)
        partners = await program.list_partners(
            self.pool,
            states=_states(request.states, pa.PartnerState, default=LIVE),
            after_code=_after(request, lambda key: str(key[0])),
            limit=size + 1,
        )
        page, token = _page(request, partners, size, lambda p: [p.code])
        return pa.ListPartnersResponse(partners=[mapping.partner_message(p) for p in page], next_page_token=token)

    async def UpdatePartner(
        self, request: pa.UpdatePartnerRequest, context: aio.ServicerContext
    ) -> pa.UpdatePartnerResponse:
        _raise_if(_write_violations(request) + _required(request.partner.partner_id, "partner.partner_id"))
        paths = mapping.mask_paths(request.update_mask, mapping.PARTNER_MASK)

        def change(current: PartnerRecord) -> PartnerRecord:
            message = mapping.partner_message(current)
            mapping.apply_mask(request.partner, message, paths)
            _raise_if(mapping.partner_violations(message, creating=False))
            return mapping.partner_record(message, current)

        async def work() -> pa.UpdatePartnerResponse:
            updated = await program.update_partner(
                self.pool,
                actor=_actor(request),
                partner_id=request.partner.partner_id,
                expected_etag=request.partner.etag,
                change=change,
            )
            return pa.UpdatePartnerResponse(partner=mapping.partner_message(updated))

        return await self._once("UpdatePartner", request, pa.UpdatePartnerResponse, work)

    async def ArchivePartner(
        self, request: pa.ArchivePartnerRequest, context: aio.ServicerContext
    ) -> pa.ArchivePartnerResponse:
        _raise_if(_write_violations(request) + _required(request.partner_id, "partner_id"))

        async def work() -> pa.ArchivePartnerResponse:
            archived = await program.archive_partner(self.pool, actor=_actor(request), partner_id=request.partner_id)
            return pa.ArchivePartnerResponse(partner=mapping.partner_message(archived))

        return await self._once("ArchivePartner", request, pa.ArchivePartnerResponse, work)

    # -- outlets -----------------------------------------------------------------------------------

    async def CreateOutlet(
        self, request: pa.CreateOutletRequest, context: aio.ServicerContext
    ) -> pa.CreateOutletResponse:
        _raise_if(_write_violations(request) + mapping.outlet_violations(request.outlet, creating=True))
        outlet = mapping.new_outlet(request.outlet, program.new_id())

        async def work() -> pa.CreateOutletResponse:
            created = await program.create_outlet(self.pool, actor=_actor(request), outlet=outlet)
            return pa.CreateOutletResponse(outlet=mapping.outlet_message(created))

        return await self._once("CreateOutlet", request, pa.CreateOutletResponse, work)

    async def GetOutlet(self, request: pa.GetOutletRequest, context: aio.ServicerContext) -> pa.GetOutletResponse:
        _raise_if(_required(request.outlet_id, "outlet_id"))
        outlet = await program.get_outlet(self.pool, request.outlet_id)
        return pa.GetOutletResponse(outlet=mapping.outlet_message(outlet))

    async def ListOutlets(self, request: pa.ListOutletsRequest, context: aio.ServicerContext) -> pa.ListOutletsResponse:
        size = _page_size(request.page_size)
        outlets = await program.list_outlets(
            self.pool,
            partner_id=request.partner_id,
            region_code=request.region_code,
            states=_states(request.states, pa.OutletState, default=LIVE),
            after=_after(request, lambda key: (str(key[0]), str(key[1]))),
            limit=size + 1,
        )
        page, token = _page(request, outlets, size, lambda o: [o.partner_id, o.code])
        return pa.ListOutletsResponse(outlets=[mapping.outlet_message(o) for o in page], next_page_token=token)

    async def UpdateOutlet(
        self, request: pa.UpdateOutletRequest, context: aio.ServicerContext
    ) -> pa.UpdateOutletResponse:
        _raise_if(_write_violations(request) + _required(request.outlet.outlet_id, "outlet.outlet_id"))
        paths = mapping.mask_paths(request.update_mask, mapping.OUTLET_MASK)

        def change(current: OutletRecord) -> OutletRecord:
            message = mapping.outlet_message(current)
            mapping.apply_mask(request.outlet, message, paths)
            _raise_if(mapping.outlet_violations(message, creating=False))
            return mapping.outlet_record(message, current)

        async def work() -> pa.UpdateOutletResponse:
            updated = await program.update_outlet(
                self.pool,
                actor=_actor(request),
                outlet_id=request.outlet.outlet_id,
                expected_etag=request.outlet.etag,
                change=change,
            )
            return pa.UpdateOutletResponse(outlet=mapping.outlet_message(updated))

        return await self._once("UpdateOutlet", request, pa.UpdateOutletResponse, work)

    async def ArchiveOutlet(
        self, request: pa.ArchiveOutletRequest, context: aio.ServicerContext
    ) -> pa.ArchiveOutletResponse:
        _raise_if(_write_violations(request) + _required(request.outlet_id, "outlet_id"))

        async def work() -> pa.ArchiveOutletResponse:
            archived = await program.archive_outlet(self.pool, actor=_actor(request), outlet_id=request.outlet_id)
            return pa.ArchiveOutletResponse(outlet=mapping.outlet_message(archived))

        return await self._once("ArchiveOutlet", request, pa.ArchiveOutletResponse, work)

    # -- terminals ---------------------------------------------------------------------------------

    async def CreateTerminal(
        self, request: pa.CreateTerminalRequest, context: aio.ServicerContext
    ) -> pa.CreateTerminalResponse:
        _raise_if(_write_violations(request) + mapping.terminal_violations(request.terminal, creating=True))
        terminal = mapping.new_terminal(request.terminal)

        async def work() -> pa.CreateTerminalResponse:
            created = await program.create_terminal(self.pool, actor=_actor(request), terminal=terminal)
            return pa.CreateTerminalResponse(terminal=mapping.terminal_message(created))

        return await self._once("CreateTerminal", request, pa.CreateTerminalResponse, work)

    async def GetTerminal(self, request: pa.GetTerminalRequest, context: aio.ServicerContext) -> pa.GetTerminalResponse:
        _raise_if(_required(request.terminal_id, "terminal_id"))
        terminal = await program.get_terminal(self.pool, request.terminal_id)
        return pa.GetTerminalResponse(terminal=mapping.terminal_message(terminal))

    async def ListTerminals(
        self, request: pa.ListTerminalsRequest, context: aio.ServicerContext
    ) -> pa.ListTerminalsResponse:
        size = _page_size(request.page_size)
        terminals = await program.list_terminals(
            self.pool,
            partner_id=request.partner_id,
            outlet_id=request.outlet_id,
            states=_states(request.states, pa.TerminalState, default=LIVE),
            after_terminal_id=_after(request, lambda key: str(key[0])),
            limit=size + 1,
        )
        page, token = _page(request, terminals, size, lambda t: [t.terminal_id])
        return pa.ListTerminalsResponse(terminals=[mapping.terminal_message(t) for t in page], next_page_token=token)

    async def UpdateTerminal(
        self, request: pa.UpdateTerminalRequest, context: aio.ServicerContext
    ) -> pa.UpdateTerminalResponse:
        _raise_if(_write_violations(request) + _required(request.terminal.terminal_id, "terminal.terminal_id"))
        paths = mapping.mask_paths(request.update_mask, mapping.TERMINAL_MASK)

        def change(current: TerminalRecord) -> TerminalRecord:
            message = mapping.terminal_message(current)
            mapping.apply_mask(request.terminal, message, paths)
            _raise_if(mapping.terminal_violations(message, creating=False))
            return mapping.terminal_record(message, current)

        async def work() -> pa.UpdateTerminalResponse:
            updated = await program.update_terminal(
                self.pool,
                actor=_actor(request),
                terminal_id=request.terminal.terminal_id,
                expected_etag=request.terminal.etag,
                change=change,
            )
            return pa.UpdateTerminalResponse(terminal=mapping.terminal_message(updated))

        return await self._once("UpdateTerminal", request, pa.UpdateTerminalResponse, work)

    async def ArchiveTerminal(
        self, request: pa.ArchiveTerminalRequest, context: aio.ServicerContext
    ) -> pa.ArchiveTerminalResponse:
        _raise_if(_write_violations(request) + _required(request.terminal_id, "terminal_id"))

        async def work() -> pa.ArchiveTerminalResponse:
            archived = await program.archive_terminal(self.pool, actor=_actor(request), terminal_id=request.terminal_id)
            return pa.ArchiveTerminalResponse(terminal=mapping.terminal_message(archived))

        return await self._once("ArchiveTerminal", request, pa.ArchiveTerminalResponse, work)

    # -- earning rules -----------------------------------------------------------------------------

    async def CreateEarningRule(
        self, request: pa.CreateEarningRuleRequest, context: aio.ServicerContext
    ) -> pa.CreateEarningRuleResponse:
        settings = await program.load_settings(self.pool)
        rule = mapping.rule_with_defaults(request.earning_rule)
        _raise_if(_write_violations(request) + mapping.rule_violations(rule, settings, creating=True))
        record = mapping.rule_record(rule, rule_id=program.new_id())

        async def work() -> pa.CreateEarningRuleResponse:
            created = await program.create_rule(
                self.pool, actor=_actor(request), rule=record, outlet_ids=list(rule.target.outlet_ids)
            )
            return pa.CreateEarningRuleResponse(earning_rule=mapping.rule_message(created))

        return await self._once("CreateEarningRule", request, pa.CreateEarningRuleResponse, work)

    async def GetEarningRule(
        self, request: pa.GetEarningRuleRequest, context: aio.ServicerContext
    ) -> pa.GetEarningRuleResponse:
        _raise_if(_required(request.rule_id, "rule_id"))
        rule = await program.get_rule(self.pool, request.rule_id)
        return pa.GetEarningRuleResponse(earning_rule=mapping.rule_message(rule))

    async def ListEarningRules(
        self, request: pa.ListEarningRulesRequest, context: aio.ServicerContext
    ) -> pa.ListEarningRulesResponse:
        size = _page_size(request.page_size)
        rules = await program.list_rules(
            self.pool,
            campaign_id=request.campaign_id,
            partner_id=request.partner_id,
            states=_states(request.states, pa.EarningRuleState, default=LIVE),
            after=_after(request, lambda key: (int(key[0]), str(key[1]))),
            limit=size + 1,
        )
        page, token = _page(request, rules, size, lambda r: [r.priority, r.code])
        return pa.ListEarningRulesResponse(earning_rules=[mapping.rule_message(r) for r in page], next_page_token=token)

    async def UpdateEarningRule(
        self, request: pa.UpdateEarningRuleRequest, context: aio.ServicerContext
    ) -> pa.UpdateEarningRuleResponse:
        _raise_if(_write_violations(request) + _required(request.earning_rule.rule_id, "earning_rule.rule_id"))
        paths = mapping.mask_paths(request.update_mask, mapping.EARNING_RULE_MASK)
        settings = await program.load_settings(self.pool)

        def change(current: RuleRecord) -> tuple[RuleRecord, Sequence[str]]:
            message = mapping.rule_message(current)
            mapping.apply_mask(request.earning_rule, message, paths)
            _raise_if(mapping.rule_violations(message, settings, creating=False))
            return mapping.rule_record(message, rule_id=current.rule_id, base=current), list(message.target.outlet_ids)

        async def work() -> pa.UpdateEarningRuleResponse:
            updated = await program.update_rule(
                self.pool,
                actor=_actor(request),
                rule_id=request.earning_rule.rule_id,
                expected_etag=request.earning_rule.etag,
                change=change,
            )
            return pa.UpdateEarningRuleResponse(earning_rule=mapping.rule_message(updated))

        return await self._once("UpdateEarningRule", request, pa.UpdateEarningRuleResponse, work)

    async def ArchiveEarningRule(
        self, request: pa.ArchiveEarningRuleRequest, context: aio.ServicerContext
    ) -> pa.ArchiveEarningRuleResponse:
        _raise_if(_write_violations(request) + _required(request.rule_id, "rule_id"))

        async def work() -> pa.ArchiveEarningRuleResponse:
            archived = await program.archive_rule(self.pool, actor=_actor(request), rule_id=request.rule_id)
            return pa.ArchiveEarningRuleResponse(earning_rule=mapping.rule_message(archived))

        return await self._once("ArchiveEarningRule", request, pa.ArchiveEarningRuleResponse, work)

    # -- campaigns ---------------------------------------------------------------------------------

    async def CreateCampaign(
        self, request: pa.CreateCampaignRequest, context: aio.ServicerContext
    ) -> pa.CreateCampaignResponse:
        _raise_if(_write_violations(request) + mapping.campaign_violations(request.campaign, creating=True))
        campaign = mapping.new_campaign(request.campaign, program.new_id())

        async def work() -> pa.CreateCampaignResponse:
            created, now = await program.create_campaign(self.pool, actor=_actor(request), campaign=campaign)
            return pa.CreateCampaignResponse(campaign=mapping.campaign_message(created, now))

        return await self._once("CreateCampaign", request, pa.CreateCampaignResponse, work)

    async def GetCampaign(self, request: pa.GetCampaignRequest, context: aio.ServicerContext) -> pa.GetCampaignResponse:
        _raise_if(_required(request.campaign_id, "campaign_id"))
        campaign, now = await program.get_campaign(self.pool, request.campaign_id)
        return pa.GetCampaignResponse(campaign=mapping.campaign_message(campaign, now))

    async def ListCampaigns(
        self, request: pa.ListCampaignsRequest, context: aio.ServicerContext
    ) -> pa.ListCampaignsResponse:
        size = _page_size(request.page_size)
        window_from = mapping.optional_time(request.overlapping, "start_time")
        window_to = mapping.optional_time(request.overlapping, "end_time")
        if window_from and window_to and window_to <= window_from:
            raise invalid_argument([FieldViolation("overlapping.end_time", "after start_time")])
        campaigns, now = await program.list_campaigns(
            self.pool,
            overlapping_from=window_from,
            overlapping_to=window_to,
            partner_id=request.partner_id,
            states=_states(request.states, pa.CampaignState, default=LIVE),
            after=_after(request, lambda key: (datetime.fromisoformat(key[0]), str(key[1]))),
            limit=size + 1,
        )
        page, token = _page(request, campaigns, size, _campaign_key)
        return pa.ListCampaignsResponse(
            campaigns=[mapping.campaign_message(c, now) for c in page], next_page_token=token
        )

    async def UpdateCampaign(
        self, request: pa.UpdateCampaignRequest, context: aio.ServicerContext
    ) -> pa.UpdateCampaignResponse:
        _raise_if(_write_violations(request) + _required(request.campaign.campaign_id, "campaign.campaign_id"))
        paths = mapping.mask_paths(request.update_mask, mapping.CAMPAIGN_MASK)

        def change(current: CampaignRecord) -> CampaignRecord:
            message = mapping.campaign_message(current, None)
            mapping.apply_mask(request.campaign, message, paths)
            _raise_if(mapping.campaign_violations(message, creating=False))
            return mapping.campaign_record(message, current)

        async def work() -> pa.UpdateCampaignResponse:
            updated, now = await program.update_campaign(
                self.pool,
                actor=_actor(request),
                campaign_id=request.campaign.campaign_id,
                expected_etag=request.campaign.etag,
                change=change,
            )
            return pa.UpdateCampaignResponse(campaign=mapping.campaign_message(updated, now))

        return await self._once("UpdateCampaign", request, pa.UpdateCampaignResponse, work)

    async def ArchiveCampaign(
        self, request: pa.ArchiveCampaignRequest, context: aio.ServicerContext
    ) -> pa.ArchiveCampaignResponse:
        _raise_if(_write_violations(request) + _required(request.campaign_id, "campaign_id"))

        async def work() -> pa.ArchiveCampaignResponse:
            archived, now = await program.archive_campaign(
                self.pool, actor=_actor(request), campaign_id=request.campaign_id
            )
            return pa.ArchiveCampaignResponse(campaign=mapping.campaign_message(archived, now))

        return await self._once("ArchiveCampaign", request, pa.ArchiveCampaignResponse, work)

    # -- rule set versions -------------------------------------------------------------------------

    async def PublishRuleSet(
        self, request: pa.PublishRuleSetRequest, context: aio.ServicerContext
    ) -> pa.PublishRuleSetResponse:
        violations = _write_violations(request)
        if len(request.comment) > COMMENT_MAX:
            violations.append(FieldViolation("comment", f"at most {COMMENT_MAX} characters"))
        _raise_if(violations)

        async def work() -> pa.PublishRuleSetResponse:
            version, warnings = await program.publish(
                self.pool,
                actor=_actor(request),
                comment=request.comment,
                effective_time=mapping.optional_time(request, "effective_time"),
                validate_only=request.validate_only,
            )
            return pa.PublishRuleSetResponse(version=mapping.version_message(version), warnings=warnings)

        return await self._once("PublishRuleSet", request, pa.PublishRuleSetResponse, work)

    async def GetRuleSetVersion(
        self, request: pa.GetRuleSetVersionRequest, context: aio.ServicerContext
    ) -> pa.GetRuleSetVersionResponse:
        if request.version < 0:
            raise invalid_argument([FieldViolation("version", "a version number, or 0 for the one in force now")])
        version, snapshot_bytes, now = await program.get_version(self.pool, request.version)
        snapshot = pa.RuleSetSnapshot.FromString(snapshot_bytes)
        for campaign in snapshot.campaigns:  # frozen without a phase: it is relative to now
            period = campaign.period
            phase = campaign_phase(mapping.to_time(period.start_time), mapping.optional_time(period, "end_time"), now)
            campaign.phase = int(phase)  # type: ignore[assignment]
        return pa.GetRuleSetVersionResponse(version=mapping.version_message(version), snapshot=snapshot)

    async def ListRuleSetVersions(
        self, request: pa.ListRuleSetVersionsRequest, context: aio.ServicerContext
    ) -> pa.ListRuleSetVersionsResponse:
        size = _page_size(request.page_size)
        versions = await program.list_versions(
            self.pool,
            states=_states(request.states, pa.RuleSetVersionState, default=(1, 2, 3, 4)),
            before_version=_after(request, lambda key: int(key[0])),
            limit=size + 1,
        )
        page, token = _page(request, versions, size, lambda v: [v.version])
        return pa.ListRuleSetVersionsResponse(
            versions=[mapping.version_message(v) for v in page], next_page_token=token
        )

    async def CancelRuleSetVersion(
        self, request: pa.CancelRuleSetVersionRequest, context: aio.ServicerContext
    ) -> pa.CancelRuleSetVersionResponse:
        violations = _write_violations(request)
        if request.version <= 0:
            violations.append(FieldViolation("version", "required: a scheduled version's number"))
        _raise_if(violations)

        async def work() -> pa.CancelRuleSetVersionResponse:
            cancelled = await program.cancel_version(self.pool, actor=_actor(request), version=request.version)
            return pa.CancelRuleSetVersionResponse(version=mapping.version_message(cancelled))

        return await self._once("CancelRuleSetVersion", request, pa.CancelRuleSetVersionResponse, work)


def _campaign_key(campaign: CampaignRecord) -> list[str]:
    return [campaign.start_time.isoformat(), campaign.code]
