"""gRPC edge of the cards service (members, loyalty cards, identification at the till).

Proto in, validated and normalised domain values to the use cases, proto out; refusals as
DomainError (mapped to rich statuses by the shared edge). Mutating RPCs run once per
(actor, idempotency key) through shared.idempotency.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.message import Message
from grpc import aio
from loyalty.cards.v1 import cards_pb2, cards_pb2_grpc

from services.cards import export, mapping, members, usecases, worker
from services.cards import validation as check
from services.cards.cache import Generations, LocalEntries
from services.cards.domain import numbers, qr
from services.cards.domain.model import (
    CHANNELS,
    ActorType,
    CardBlockReason,
    CardType,
    CheckDigitScheme,
    ConsentStatus,
    MemberBlockReason,
    Profile,
    ReplacementReason,
    Symbology,
    Template,
)
from services.cards.domain.resolution import Identifier, Lookup
from services.cards.resolver import QrSettings, Resolved, Resolver
from services.cards.settings import CardsSettings, load_settings
from services.cards.wallet import Wallet, WalletSettings
from shared import idempotency, outbox
from shared.clients import create_channel
from shared.config import grpc_target
from shared.errors import DomainError, FieldViolation, invalid_argument
from shared.resp import RespConnection, endpoint_of
from shared.server import Runtime
from shared.servicers import add_service

log = logging.getLogger(__name__)
ResponseT = TypeVar("ResponseT", bound=Message)
UPDATABLE_PATHS = (
    "phone",
    "first_name",
    "last_name",
    "middle_name",
    "email",
    "birth_date",
    "language_code",
    "segments",
)
BATCH_RESOLVE_MAX = 100
CARD_TYPES = range(1, 6)
BACK_OFFICE = (ActorType.OPERATOR, ActorType.SYSTEM)
NEW_CARD_NAMESPACE = uuid.UUID("0d8a4f52-9c3e-4c61-8f0e-5a7b2e4c9d13")


@dataclass(frozen=True)
class Dependencies:
    settings: CardsSettings
    wallet: Wallet
    generations: Generations
    resolver: Resolver


class CardsServicer(cards_pb2_grpc.CardsServiceServicer):
    def __init__(self, runtime: Runtime, dependencies: Dependencies) -> None:
        self.pool = runtime.pool
        self.settings = dependencies.settings
        self.wallet = dependencies.wallet
        self.generations = dependencies.generations
        self.resolver = dependencies.resolver

    async def _once(
        self, method: str, request: Any, response_type: type[ResponseT], work: Callable[[], Awaitable[ResponseT]]
    ) -> ResponseT:
        return await idempotency.run_once(
            self.pool,
            scope=check.scope(request.actor),
            key=request.idempotency_key.key,
            method=method,
            request=request,
            response_type=response_type,
            work=work,
        )

    # -- members ---------------------------------------------------------------------------------

    async def RegisterMember(
        self, request: cards_pb2.RegisterMemberRequest, context: aio.ServicerContext
    ) -> cards_pb2.RegisterMemberResponse:
        registration = self._registration(request)

        async def work() -> cards_pb2.RegisterMemberResponse:
            registered = await members.register(self.pool, self.wallet, registration)
            return cards_pb2.RegisterMemberResponse(
                member=mapping.member_message(registered.member), created=registered.created
            )

        return await self._once("RegisterMember", request, cards_pb2.RegisterMemberResponse, work)

    def _registration(self, request: cards_pb2.RegisterMemberRequest) -> members.Registration:
        violations = check.key_and_actor(request)
        violations.require("program_id", request.program_id)
        violations.at_most("partner_id", request.partner_id, check.ID_LENGTH_MAX)
        violations.at_most("registration_outlet_id", request.registration_outlet_id, check.ID_LENGTH_MAX)
        check.enum_value(violations, "registration_channel", request.registration_channel, range(0, 4))
        paths = ("phone", "first_name", "last_name", "middle_name", "email", "birth_date", "language_code")
        fields = check.profile_fields(violations, request, prefix="", paths=paths, region=self.settings.phone_region)
        statuses = []
        for channel in CHANNELS:
            status = getattr(request.consents, channel).status
            check.enum_value(violations, f"consents.{channel}.status", status, range(0, 3))
            statuses.append(ConsentStatus(status) if status in (0, 1, 2) else ConsentStatus.UNSPECIFIED)
        violations.raise_if_any()
        return members.Registration(
            program_id=request.program_id,
            partner_id=request.partner_id,
            profile=Profile(**fields),
            consent_statuses=(statuses[0], statuses[1], statuses[2]),
            channel=request.registration_channel,
            outlet_id=request.registration_outlet_id,
            actor=mapping.actor(request.actor),
            key=f"{check.scope(request.actor)}/{request.idempotency_key.key}",
        )

    async def GetMember(
        self, request: cards_pb2.GetMemberRequest, context: aio.ServicerContext
    ) -> cards_pb2.GetMemberResponse:
        member = await members.get(self.pool, request.member_id)
        return cards_pb2.GetMemberResponse(member=mapping.member_message(member))

    async def FindMember(
        self, request: cards_pb2.FindMemberRequest, context: aio.ServicerContext
    ) -> cards_pb2.FindMemberResponse:
        violations = check.Violations()
        violations.require("program_id", request.program_id)
        phone = check.phone(violations, "phone", request.phone, region=self.settings.phone_region)
        violations.raise_if_any()
        member = await members.find(self.pool, request.program_id, phone)
        return cards_pb2.FindMemberResponse(member=mapping.member_message(member))

    async def UpdateMember(
        self, request: cards_pb2.UpdateMemberRequest, context: aio.ServicerContext
    ) -> cards_pb2.UpdateMemberResponse:
        violations = check.key_and_actor(request)
        violations.require("member.member_id", request.member.member_id)
        paths = list(request.update_mask.paths)
        if not paths:
            violations.add("update_mask", "required: the paths to update")
        unknown = [p for p in paths if p not in UPDATABLE_PATHS]
        if unknown:
            violations.add(
                "update_mask", f"not updatable: {', '.join(unknown)}; updatable: {', '.join(UPDATABLE_PATHS)}"
            )
        known = [p for p in dict.fromkeys(paths) if p in UPDATABLE_PATHS]
        region = self.settings.phone_region
        fields = check.profile_fields(violations, request.member, prefix="member.", paths=known, region=region)
        violations.raise_if_any()

        async def work() -> cards_pb2.UpdateMemberResponse:
            member = await members.update_profile(
                self.pool,
                self.generations,
                request.member.member_id,
                fields=fields,
                actor=mapping.actor(request.actor),
            )
            return cards_pb2.UpdateMemberResponse(member=mapping.member_message(member))

        return await self._once("UpdateMember", request, cards_pb2.UpdateMemberResponse, work)

    async def UpdateConsents(
        self, request: cards_pb2.UpdateConsentsRequest, context: aio.ServicerContext
    ) -> cards_pb2.UpdateConsentsResponse:
        violations = check.key_and_actor(request)
        violations.require("member_id", request.member_id)
        statuses = {}
        for channel in CHANNELS:
            value = check.enum_value(violations, channel, getattr(request, channel), range(0, 3))
            if value in (1, 2):
                statuses[channel] = ConsentStatus(value)
        if not statuses and not violations.items:
            violations.add("sms", "set at least one channel (sms, email, push)")
        violations.raise_if_any()

        async def work() -> cards_pb2.UpdateConsentsResponse:
            member = await members.update_consents(
                self.pool, self.generations, request.member_id, statuses=statuses, actor=mapping.actor(request.actor)
            )
            return cards_pb2.UpdateConsentsResponse(member=mapping.member_message(member))

        return await self._once("UpdateConsents", request, cards_pb2.UpdateConsentsResponse, work)

    async def BlockMember(
        self, request: cards_pb2.BlockMemberRequest, context: aio.ServicerContext
    ) -> cards_pb2.BlockMemberResponse:
        violations = check.key_and_actor(request)
        violations.require("member_id", request.member_id)
        reason = check.enum_value(violations, "reason", request.reason, range(1, 5))
        comment = check.comment(violations, request.comment, required=reason == MemberBlockReason.OTHER)
        violations.raise_if_any()
        check.allow_actors(request.actor, *BACK_OFFICE)
        member = await self._member_state("BlockMember", request, "block", comment, MemberBlockReason(reason))
        return cards_pb2.BlockMemberResponse(member=member)

    async def UnblockMember(
        self, request: cards_pb2.UnblockMemberRequest, context: aio.ServicerContext
    ) -> cards_pb2.UnblockMemberResponse:
        violations = check.key_and_actor(request)
        violations.require("member_id", request.member_id)
        comment = check.comment(violations, request.comment, required=False)
        violations.raise_if_any()
        check.allow_actors(request.actor, *BACK_OFFICE)
        member = await self._member_state("UnblockMember", request, "unblock", comment)
        return cards_pb2.UnblockMemberResponse(member=member)

    async def CloseMember(
        self, request: cards_pb2.CloseMemberRequest, context: aio.ServicerContext
    ) -> cards_pb2.CloseMemberResponse:
        violations = check.key_and_actor(request)
        violations.require("member_id", request.member_id)
        comment = check.comment(violations, request.comment, required=False)
        violations.raise_if_any()
        check.allow_actors(request.actor, *BACK_OFFICE, ActorType.MEMBER, member_id=request.member_id)
        member = await self._member_state("CloseMember", request, "close", comment)
        return cards_pb2.CloseMemberResponse(member=member)

    async def _member_state(
        self,
        method: str,
        request: Any,
        operation: str,
        comment: str,
        reason: MemberBlockReason = MemberBlockReason.UNSPECIFIED,
    ) -> cards_pb2.Member:
        response_type = getattr(cards_pb2, f"{method}Response")

        async def work() -> Any:
            member = await members.change_state(
                self.pool,
                self.generations,
                request.member_id,
                operation=operation,
                actor=mapping.actor(request.actor),
                comment=comment,
                reason=reason,
            )
            return response_type(member=mapping.member_message(member))

        response = await self._once(method, request, response_type, work)
        return response.member  # type: ignore[no-any-return]

    # -- number templates ------------------------------------------------------------------------

    async def CreateCardNumberTemplate(
        self, request: cards_pb2.CreateCardNumberTemplateRequest, context: aio.ServicerContext
    ) -> cards_pb2.CreateCardNumberTemplateResponse:
        given = request.template
        violations = check.key_and_actor(request)
        violations.require("template.program_id", given.program_id)
        display_name = given.display_name.strip()
        for field, description in numbers.template_violations(
            display_name=display_name,
            prefix=given.prefix,
            length=given.length,
            scheme=CheckDigitScheme(given.check_digit_scheme)
            if given.check_digit_scheme in (1, 2)
            else CheckDigitScheme(0),
            symbology=Symbology(given.barcode_symbology) if given.barcode_symbology in (1, 2) else Symbology(0),
            qr_payload_format=given.qr_payload_format,
        ):
            violations.add(field, description)
        violations.raise_if_any()
        check.allow_actors(request.actor, *BACK_OFFICE)

        async def work() -> cards_pb2.CreateCardNumberTemplateResponse:
            template = Template(
                template_id=str(uuid.uuid4()),
                program_id=given.program_id,
                display_name=display_name,
                prefix=given.prefix,
                length=given.length,
                check_digit_scheme=CheckDigitScheme(given.check_digit_scheme),
                symbology=Symbology(given.barcode_symbology),
                qr_payload_format=given.qr_payload_format,
                capacity=numbers.capacity(given.prefix, given.length),
                allocated_count=0,
                create_time=datetime.now(UTC),  # the database sets it
                creator=mapping.actor(request.actor),
            )
            stored = await usecases.create_template(self.pool, template)
            return cards_pb2.CreateCardNumberTemplateResponse(template=mapping.template_message(stored))

        return await self._once("CreateCardNumberTemplate", request, cards_pb2.CreateCardNumberTemplateResponse, work)

    async def GetCardNumberTemplate(
        self, request: cards_pb2.GetCardNumberTemplateRequest, context: aio.ServicerContext
    ) -> cards_pb2.GetCardNumberTemplateResponse:
        template = await usecases.get_template(self.pool, request.template_id)
        return cards_pb2.GetCardNumberTemplateResponse(template=mapping.template_message(template))

    async def ListCardNumberTemplates(
        self, request: cards_pb2.ListCardNumberTemplatesRequest, context: aio.ServicerContext
    ) -> cards_pb2.ListCardNumberTemplatesResponse:
        if not request.program_id:
            raise invalid_argument([FieldViolation("program_id", "required")])
        size = check.page_size(request.page_size)
        found = await usecases.list_templates(
            self.pool, request.program_id, after=check.time_cursor(request.page_token), limit=size + 1
        )
        token = check.time_token(found[size - 1].create_time, found[size - 1].template_id) if len(found) > size else ""
        return cards_pb2.ListCardNumberTemplatesResponse(
            templates=[mapping.template_message(t) for t in found[:size]], next_page_token=token
        )

    # -- batches ---------------------------------------------------------------------------------

    async def GenerateCardBatch(
        self, request: cards_pb2.GenerateCardBatchRequest, context: aio.ServicerContext
    ) -> cards_pb2.GenerateCardBatchResponse:
        violations = check.key_and_actor(request)
        violations.require("template_id", request.template_id)
        check.enum_value(violations, "card_type", request.card_type, CARD_TYPES)
        if not 1 <= request.count <= usecases.BATCH_SIZE_MAX:
            violations.add("count", f"1..{usecases.BATCH_SIZE_MAX:,}")
        display_name = request.display_name.strip()
        violations.at_most("display_name", display_name, check.DISPLAY_NAME_LENGTH_MAX)
        expire_time = check.future_time(violations, "expire_time", request, "expire_time")
        violations.raise_if_any()
        check.allow_actors(request.actor, *BACK_OFFICE)

        async def work() -> cards_pb2.GenerateCardBatchResponse:
            batch = await usecases.generate_batch(
                self.pool,
                template_id=request.template_id,
                card_type=CardType(request.card_type),
                count=request.count,
                display_name=display_name,
                expire_time=expire_time,
                actor=mapping.actor(request.actor),
            )
            return cards_pb2.GenerateCardBatchResponse(batch=mapping.batch_message(batch))

        return await self._once("GenerateCardBatch", request, cards_pb2.GenerateCardBatchResponse, work)

    async def GetCardBatch(
        self, request: cards_pb2.GetCardBatchRequest, context: aio.ServicerContext
    ) -> cards_pb2.GetCardBatchResponse:
        batch = await usecases.get_batch(self.pool, request.batch_id)
        return cards_pb2.GetCardBatchResponse(batch=mapping.batch_message(batch))

    async def ListCardBatches(
        self, request: cards_pb2.ListCardBatchesRequest, context: aio.ServicerContext
    ) -> cards_pb2.ListCardBatchesResponse:
        if not request.program_id:
            raise invalid_argument([FieldViolation("program_id", "required")])
        size = check.page_size(request.page_size)
        found = await usecases.list_batches(
            self.pool,
            request.program_id,
            template_id=request.template_id,
            card_type=request.card_type,
            before=check.time_cursor(request.page_token),
            limit=size + 1,
        )
        token = check.time_token(found[size - 1].create_time, found[size - 1].batch_id) if len(found) > size else ""
        return cards_pb2.ListCardBatchesResponse(
            batches=[mapping.batch_message(b) for b in found[:size]], next_page_token=token
        )

    async def ExportCardBatch(
        self, request: cards_pb2.ExportCardBatchRequest, context: aio.ServicerContext
    ) -> AsyncIterator[cards_pb2.ExportCardBatchResponse]:
        violations = check.Violations()
        check.actor_violation(violations, request.actor)
        violations.require("batch_id", request.batch_id)
        if any(f not in (export.SVG, export.PNG) for f in request.image_formats):
            violations.add("image_formats", "SVG or PNG")
        violations.raise_if_any()
        check.allow_actors(request.actor, *BACK_OFFICE)
        formats = tuple(sorted(set(request.image_formats)))
        batch = await usecases.get_batch(self.pool, request.batch_id)
        template = await usecases.get_template(self.pool, batch.template_id)
        resume = (
            export.decode_resume(request.resume_token, batch_id=batch.batch_id, formats=formats)
            if request.resume_token
            else None
        )
        log.info(
            "batch export",
            extra={"batch_id": batch.batch_id, "actor_type": request.actor.type, "actor_id": request.actor.id},
        )
        async for chunk in export.export_batch(self.pool, batch, template, formats=formats, resume=resume):
            yield cards_pb2.ExportCardBatchResponse(
                sequence=chunk.sequence,
                csv_data=chunk.csv_data,
                images=[
                    cards_pb2.CardImage(card_number=i.card_number, kind=i.kind, format=i.format, data=i.data)  # type: ignore[arg-type]
                    for i in chunk.images
                ],
                row_count=chunk.row_count,
                rows_exported=chunk.rows_exported,
                rows_total=chunk.rows_total,
                resume_token=chunk.resume_token,
                last=chunk.last,
            )

    # -- cards -----------------------------------------------------------------------------------

    def _new_card(
        self, violations: check.Violations, message: cards_pb2.NewCard, request: Any, field: str
    ) -> usecases.NewCard:
        violations.require(f"{field}.template_id", message.template_id)
        check.enum_value(violations, f"{field}.type", message.type, CARD_TYPES)
        expire_time = check.future_time(violations, f"{field}.expire_time", message, "expire_time")
        # Derived from the idempotency key: a retry makes (or finds) the same card.
        identity = f"{check.scope(request.actor)}/{request.idempotency_key.key}"
        return usecases.NewCard(
            template_id=message.template_id,
            card_type=CardType(message.type) if message.type in CARD_TYPES else CardType.UNSPECIFIED,
            expire_time=expire_time,
            card_id=str(uuid.uuid5(NEW_CARD_NAMESPACE, identity)),
        )

    async def IssueCard(
        self, request: cards_pb2.IssueCardRequest, context: aio.ServicerContext
    ) -> cards_pb2.IssueCardResponse:
        violations = check.key_and_actor(request)
        ref, new_card = None, None
        which = request.WhichOneof("card")
        if which == "card_number":
            ref = usecases.CardRef(card_number=check.card_number(violations, "card_number", request.card_number))
        elif which == "new_card":
            new_card = self._new_card(violations, request.new_card, request, "new_card")
        else:
            violations.add("card", "required: card_number or new_card")
        binding = check.binding(violations, request.binding, field="binding") if request.HasField("binding") else None
        if request.bearer and binding is not None:
            violations.add("bearer", "not with binding")
        comment = check.comment(violations, request.comment, required=False)
        violations.raise_if_any()
        handout = usecases.Handout(
            issuing=True, binding=binding, bearer=request.bearer, actor=mapping.actor(request.actor), comment=comment
        )

        async def work() -> cards_pb2.IssueCardResponse:
            card = await usecases.hand_out(
                self.pool, self.wallet, self.generations, ref=ref, new_card=new_card, handout=handout
            )
            return cards_pb2.IssueCardResponse(card=mapping.card_message(card))

        return await self._once("IssueCard", request, cards_pb2.IssueCardResponse, work)

    async def BindCard(
        self, request: cards_pb2.BindCardRequest, context: aio.ServicerContext
    ) -> cards_pb2.BindCardResponse:
        violations = check.key_and_actor(request)
        ref = check.card_ref(violations, request.card)
        binding = check.binding(violations, request.binding, field="binding") if request.HasField("binding") else None
        if binding is None:
            violations.add("binding", "required")
        comment = check.comment(violations, request.comment, required=False)
        violations.raise_if_any()
        handout = usecases.Handout(
            issuing=False, binding=binding, bearer=False, actor=mapping.actor(request.actor), comment=comment
        )

        async def work() -> cards_pb2.BindCardResponse:
            card = await usecases.hand_out(
                self.pool, self.wallet, self.generations, ref=ref, new_card=None, handout=handout
            )
            return cards_pb2.BindCardResponse(card=mapping.card_message(card))

        return await self._once("BindCard", request, cards_pb2.BindCardResponse, work)

    async def BlockCard(
        self, request: cards_pb2.BlockCardRequest, context: aio.ServicerContext
    ) -> cards_pb2.BlockCardResponse:
        violations = check.key_and_actor(request)
        ref = check.card_ref(violations, request.card)
        reason = check.enum_value(violations, "reason", request.reason, range(1, 7))
        comment = check.comment(violations, request.comment, required=reason == CardBlockReason.OTHER)
        violations.raise_if_any()

        async def work() -> cards_pb2.BlockCardResponse:
            card = await usecases.block_card(
                self.pool,
                self.generations,
                ref,
                reason=CardBlockReason(reason),
                actor=mapping.actor(request.actor),
                comment=comment,
            )
            return cards_pb2.BlockCardResponse(card=mapping.card_message(card))

        return await self._once("BlockCard", request, cards_pb2.BlockCardResponse, work)

    async def UnblockCard(
        self, request: cards_pb2.UnblockCardRequest, context: aio.ServicerContext
    ) -> cards_pb2.UnblockCardResponse:
        violations = check.key_and_actor(request)
        ref = check.card_ref(violations, request.card)
        comment = check.comment(violations, request.comment, required=False)
        violations.raise_if_any()
        check.allow_actors(request.actor, *BACK_OFFICE)

        async def work() -> cards_pb2.UnblockCardResponse:
            card = await usecases.unblock_card(
                self.pool, self.generations, ref, actor=mapping.actor(request.actor), comment=comment
            )
            return cards_pb2.UnblockCardResponse(card=mapping.card_message(card))

        return await self._once("UnblockCard", request, cards_pb2.UnblockCardResponse, work)

    async def ReplaceCard(
        self, request: cards_pb2.ReplaceCardRequest, context: aio.ServicerContext
    ) -> cards_pb2.ReplaceCardResponse:
        violations = check.key_and_actor(request)
        ref = check.card_ref(violations, request.card)
        reason = check.enum_value(violations, "reason", request.reason, range(1, 7))
        comment = check.comment(violations, request.comment, required=reason == ReplacementReason.OTHER)
        new_ref, new_card = None, None
        which = request.WhichOneof("replacement")
        if which == "new_card_number":
            new_ref = usecases.CardRef(
                card_number=check.card_number(violations, "new_card_number", request.new_card_number)
            )
        elif which == "new_card":
            new_card = self._new_card(violations, request.new_card, request, "new_card")
        else:
            violations.add("replacement", "required: new_card_number or new_card")
        violations.raise_if_any()

        async def work() -> cards_pb2.ReplaceCardResponse:
            old, new = await usecases.replace_card(
                self.pool,
                self.generations,
                ref,
                new_ref=new_ref,
                new_card=new_card,
                reason=ReplacementReason(reason),
                actor=mapping.actor(request.actor),
                comment=comment,
            )
            return cards_pb2.ReplaceCardResponse(old_card=mapping.card_message(old), new_card=mapping.card_message(new))

        return await self._once("ReplaceCard", request, cards_pb2.ReplaceCardResponse, work)

    async def GetCard(
        self, request: cards_pb2.GetCardRequest, context: aio.ServicerContext
    ) -> cards_pb2.GetCardResponse:
        violations = check.Violations()
        ref = check.card_ref(violations, request.card)
        violations.raise_if_any()
        card = await usecases.get_card(self.pool, ref)
        return cards_pb2.GetCardResponse(card=mapping.card_message(card))

    async def ListMemberCards(
        self, request: cards_pb2.ListMemberCardsRequest, context: aio.ServicerContext
    ) -> cards_pb2.ListMemberCardsResponse:
        if not request.member_id:
            raise invalid_argument([FieldViolation("member_id", "required")])
        size = check.page_size(request.page_size)
        cards = await usecases.member_cards(
            self.pool,
            request.member_id,
            states=list(request.states),
            after=check.time_cursor(request.page_token),
            limit=size + 1,
        )
        token = check.time_token(cards[size - 1].bind_time, cards[size - 1].card_id) if len(cards) > size else ""
        return cards_pb2.ListMemberCardsResponse(
            cards=[mapping.card_message(c) for c in cards[:size]], next_page_token=token
        )

    async def ListCardEvents(
        self, request: cards_pb2.ListCardEventsRequest, context: aio.ServicerContext
    ) -> cards_pb2.ListCardEventsResponse:
        violations = check.Violations()
        ref = check.card_ref(violations, request.card)
        token = request.page_token
        if token and not token.isdigit():
            violations.add("page_token", "not a token from this list")
        violations.raise_if_any()
        size = check.page_size(request.page_size)
        time_range = request.time_range
        history = await usecases.card_history(
            self.pool,
            ref,
            start=mapping.optional_time(time_range, "start_time"),
            end=mapping.optional_time(time_range, "end_time"),
            after_sequence=int(token) if token else -1,
            limit=size + 1,
        )
        next_token = str(history[size - 1].sequence) if len(history) > size else ""
        return cards_pb2.ListCardEventsResponse(
            events=[mapping.card_event_message(e) for e in history[:size]], next_page_token=next_token
        )

    # -- identification --------------------------------------------------------------------------

    def _identifier(self, request: cards_pb2.ResolveRequest) -> Identifier:
        violations = check.Violations()
        violations.require("program_id", request.program_id)
        check.actor_violation(violations, request.actor)
        identifier = request.identifier
        which = identifier.WhichOneof("kind")
        value = ""
        if which == "card_number":
            value = identifier.card_number.strip()
            if not value.isdigit() or not value.isascii():
                violations.add("identifier.card_number", "digits only")
        elif which == "phone":
            value = check.phone(violations, "identifier.phone", identifier.phone, region=self.settings.phone_region)
        elif which == "qr_token":
            value = identifier.qr_token.strip()
            if not value:
                violations.add("identifier.qr_token", "required")
        elif which == "member_id":
            value = identifier.member_id
            violations.require("identifier.member_id", value)
        else:
            violations.add("identifier", "required: card_number, phone, qr_token or member_id")
        violations.raise_if_any()
        return Identifier(request.program_id, Lookup(str(which)), value)

    async def _resolve(self, request: cards_pb2.ResolveRequest) -> cards_pb2.Resolution:
        identifier = self._identifier(request)
        resolved = await self.resolver.resolve(
            identifier, actor=mapping.actor(request.actor), include_member_cards=request.include_member_cards
        )
        return _resolution(resolved)

    async def Resolve(
        self, request: cards_pb2.ResolveRequest, context: aio.ServicerContext
    ) -> cards_pb2.ResolveResponse:
        return cards_pb2.ResolveResponse(resolution=await self._resolve(request))

    async def BatchResolve(
        self, request: cards_pb2.BatchResolveRequest, context: aio.ServicerContext
    ) -> cards_pb2.BatchResolveResponse:
        if not 1 <= len(request.requests) <= BATCH_RESOLVE_MAX:
            raise invalid_argument([FieldViolation("requests", f"1..{BATCH_RESOLVE_MAX} resolutions")])
        results = await asyncio.gather(*(self._batch_result(r) for r in request.requests))
        return cards_pb2.BatchResolveResponse(results=results)

    async def _batch_result(self, request: cards_pb2.ResolveRequest) -> cards_pb2.BatchResolveResult:
        try:
            return cards_pb2.BatchResolveResult(resolution=await self._resolve(request))
        except DomainError as error:
            return cards_pb2.BatchResolveResult(error=_resolve_error(error))

    async def IssueQrToken(
        self, request: cards_pb2.IssueQrTokenRequest, context: aio.ServicerContext
    ) -> cards_pb2.IssueQrTokenResponse:
        violations = check.key_and_actor(request)
        violations.require("member_id", request.member_id)
        if request.card_number:
            check.card_number(violations, "card_number", request.card_number)
        violations.raise_if_any()
        check.allow_actors(request.actor, ActorType.MEMBER, ActorType.SYSTEM, member_id=request.member_id)

        async def work() -> cards_pb2.IssueQrTokenResponse:
            issued = await self.resolver.issue_qr_token(member_id=request.member_id, card_number=request.card_number)
            response = cards_pb2.IssueQrTokenResponse(token=issued.token)
            mapping.set_time(response.expire_time, issued.expire_time)
            mapping.set_time(response.refresh_time, issued.refresh_time)
            response.ttl.FromSeconds(issued.ttl_s)
            return response

        return await self._once("IssueQrToken", request, cards_pb2.IssueQrTokenResponse, work)


def _resolution(resolved: Resolved) -> cards_pb2.Resolution:
    message = mapping.resolution_message(resolved.subject, resolved.verdict, int(resolved.identified_by))
    mapping.set_time(message.qr_token_expire_time, resolved.qr_expire_time)
    message.member_cards.extend(mapping.card_message(card) for card in resolved.member_cards)
    return message


def _resolve_error(error: DomainError) -> cards_pb2.ResolveError:
    return cards_pb2.ResolveError(
        reason=mapping.reason_number(error.reason.value),  # type: ignore[arg-type]
        message=error.message,
        field=error.violations[0].field if error.violations else "",
    )


def _dependencies(runtime: Runtime) -> Dependencies:
    """Settings, the wallet channel, the cache and the background worker of this process."""
    settings = load_settings()
    channel = create_channel(
        grpc_target("wallet"),
        default_timeout_s=settings.wallet_timeout_s,
        traced=runtime.traced,
        # Reconnect soon after the wallet comes back (gRPC's default backoff grows to 2 minutes).
        extra_options=[("grpc.initial_reconnect_backoff_ms", 200), ("grpc.max_reconnect_backoff_ms", 2000)],
    )
    wallet = Wallet(
        channel,
        WalletSettings(
            timeout_s=settings.wallet_timeout_s,
            gift_kind=settings.gift_account_kind,
            card_account_kind=settings.card_account_kind,
        ),
    )
    generations = Generations(runtime.redis, _fast_redis(runtime))
    resolver = Resolver(
        pool=runtime.pool,
        generations=generations,
        entries=LocalEntries(entries_max=settings.cache_entries_max, entry_ttl_s=settings.cache_entry_ttl_s),
        qr_settings=QrSettings(
            keys=tuple(qr.derive_key(secret) for secret in settings.qr_secrets),
            ttl_s=settings.qr_token_ttl_s,
            refresh_margin_s=settings.qr_refresh_margin_s,
        ),
    )
    background = [
        asyncio.create_task(
            worker.run(
                runtime.pool,
                wallet,
                generations,
                worker.WorkerSettings(interval_s=settings.work_interval_s, pending_grace_s=settings.pending_grace_s),
            ),
            name="cards-worker",
        ),
        asyncio.create_task(
            outbox.run_relay(runtime.pool, runtime.redis, source="cards", interval_s=settings.outbox_interval_s),
            name="cards-outbox-relay",
        ),
    ]

    async def stop() -> None:
        for task in background:
            task.cancel()
        await asyncio.gather(*background, return_exceptions=True)
        await generations.close()
        await channel.close()

    runtime.shutdown_hooks.append(stop)
    return Dependencies(settings, wallet, generations, resolver)


def _fast_redis(runtime: Runtime) -> RespConnection | None:
    """A plain connection for Resolve's token reads, on the same Redis as the runtime's client
    (None with TLS, which it does not speak: redis-py then serves those reads too)."""
    endpoint = endpoint_of(runtime.redis, timeout_s=runtime.config.dependency_timeout_s)
    return RespConnection(endpoint) if endpoint is not None else None


def register(server: aio.Server, runtime: Runtime) -> Sequence[ServiceDescriptor]:
    dependencies = _dependencies(runtime)
    return [
        add_service(
            server,
            CardsServicer,
            runtime,
            dependencies,
            pb2=cards_pb2,
            pb2_grpc=cards_pb2_grpc,
            service_name="CardsService",
            issue="issue #4",
        )
    ]
