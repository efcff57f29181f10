"""gRPC edge of the wallet service (the double-entry points ledger).

Proto in, domain values to the use cases, proto out; refusals as DomainError (mapped to rich
statuses by the shared edge). RPCs not built yet answer UNIMPLEMENTED naming issue #3.
"""

from __future__ import annotations

import asyncio
import functools
import re
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import Any, TypeVar

from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.message import Message
from grpc import aio
from loyalty.common.v1 import types_pb2
from loyalty.wallet.v1 import wallet_pb2, wallet_pb2_grpc

from services.wallet import mapping, members, usecases, worker
from services.wallet.domain.accounts import kind_violations
from services.wallet.domain.ledger import BATCH_SIZE_MAX
from services.wallet.domain.model import AMOUNT_MAX, AccountType, FreezeMode, SystemRole, Unit
from services.wallet.domain.pools import Period, valid_time_zone
from services.wallet.writer import TransferWriter
from shared import idempotency
from shared.config import float_between, int_between, read_setting
from shared.errors import DomainError, FieldViolation, Reason, invalid_argument
from shared.server import Runtime
from shared.servicers import add_service

ResponseT = TypeVar("ResponseT", bound=Message)
EXTERNAL_REF = re.compile(r"[A-Za-z0-9._:\-]{1,128}")
IDEMPOTENCY_KEY = re.compile(r"[A-Za-z0-9._:\-]{8,128}")
ACCOUNT_IDS_MAX = 100
PAGE_SIZE_DEFAULT, PAGE_SIZE_MAX = 50, 1000


def _require_key_and_actor(request: object) -> list[FieldViolation]:
    violations = []
    if not IDEMPOTENCY_KEY.fullmatch(request.idempotency_key.key):  # type: ignore[attr-defined]
        violations.append(FieldViolation("idempotency_key.key", "8..128 characters from [A-Za-z0-9._:-]"))
    actor = request.actor  # type: ignore[attr-defined]
    if actor.type == types_pb2.ACTOR_TYPE_UNSPECIFIED or not actor.id:
        violations.append(FieldViolation("actor", "required: type and id of who asks"))
    return violations


def _raise_if(violations: Sequence[FieldViolation]) -> None:
    if violations:
        raise invalid_argument(violations)


def _account_cursor(token: str) -> tuple[datetime, str] | None:
    if not token:
        return None
    time_text, _, account_id = token.partition("|")
    try:
        return datetime.fromisoformat(time_text), account_id
    except ValueError:
        raise invalid_argument([FieldViolation("page_token", "not a token from this list")]) from None


def _entry_cursor(token: str) -> tuple[datetime, str, int] | None:
    if not token:
        return None
    try:
        time_text, account_id, sequence = token.split("|")
        return datetime.fromisoformat(time_text), account_id, int(sequence)
    except ValueError:
        raise invalid_argument([FieldViolation("page_token", "not a token from this list")]) from None


def _page_size(requested: int) -> int:
    if requested < 0:
        raise invalid_argument([FieldViolation("page_size", "must not be negative")])
    return min(requested or PAGE_SIZE_DEFAULT, PAGE_SIZE_MAX)


def _scope(request: object) -> str:
    """Idempotency keys of admin calls are scoped per actor (common/v1 IdempotencyKey)."""
    actor = request.actor  # type: ignore[attr-defined]
    return f"{actor.type}:{actor.id}"


class WalletServicer(wallet_pb2_grpc.WalletServiceServicer):
    def __init__(self, runtime: Runtime, writer: TransferWriter) -> None:
        self.pool = runtime.pool
        self.writer = writer

    async def _once(
        self, method: str, request: Message, response_type: type[ResponseT], work: Callable[[], Awaitable[ResponseT]]
    ) -> ResponseT:
        return await idempotency.run_once(
            self.pool,
            scope=_scope(request),
            key=request.idempotency_key.key,  # type: ignore[attr-defined]
            method=method,
            request=request,
            response_type=response_type,
            work=work,
        )

    # -- kinds and accounts --------------------------------------------------------------------

    async def CreateAccountKind(
        self, request: wallet_pb2.CreateAccountKindRequest, context: aio.ServicerContext
    ) -> wallet_pb2.CreateAccountKindResponse:
        kind = mapping.account_kind(request.account_kind)
        violations = _require_key_and_actor(request) + [FieldViolation(f, d) for f, d in kind_violations(kind)]
        _raise_if(violations)

        async def work() -> wallet_pb2.CreateAccountKindResponse:
            stored = await usecases.create_kind(self.pool, kind)
            return wallet_pb2.CreateAccountKindResponse(account_kind=mapping.account_kind_message(stored))

        return await self._once("CreateAccountKind", request, wallet_pb2.CreateAccountKindResponse, work)

    async def UpdateAccountKind(
        self, request: wallet_pb2.UpdateAccountKindRequest, context: aio.ServicerContext
    ) -> wallet_pb2.UpdateAccountKindResponse:
        kind = mapping.account_kind(request.account_kind)
        violations = _require_key_and_actor(request) + [FieldViolation(f, d) for f, d in kind_violations(kind)]
        _raise_if(violations)

        async def work() -> wallet_pb2.UpdateAccountKindResponse:
            stored = await usecases.update_kind(self.pool, kind)
            return wallet_pb2.UpdateAccountKindResponse(account_kind=mapping.account_kind_message(stored))

        return await self._once("UpdateAccountKind", request, wallet_pb2.UpdateAccountKindResponse, work)

    async def ListAccountKinds(
        self, request: wallet_pb2.ListAccountKindsRequest, context: aio.ServicerContext
    ) -> wallet_pb2.ListAccountKindsResponse:
        _raise_if([FieldViolation("program_id", "required")] if not request.program_id else [])
        kinds = await usecases.list_kinds(self.pool, request.program_id)
        # A program has a handful of kinds: one page always holds them all.
        return wallet_pb2.ListAccountKindsResponse(account_kinds=[mapping.account_kind_message(k) for k in kinds])

    async def OpenMemberAccounts(
        self, request: wallet_pb2.OpenMemberAccountsRequest, context: aio.ServicerContext
    ) -> wallet_pb2.OpenMemberAccountsResponse:
        violations = _require_key_and_actor(request)
        if not request.program_id:
            violations.append(FieldViolation("program_id", "required"))
        if not 1 <= len(request.member_id) <= 64:
            violations.append(FieldViolation("member_id", "required, at most 64 characters"))
        _raise_if(violations)

        async def work() -> wallet_pb2.OpenMemberAccountsResponse:
            opened = await usecases.open_member_accounts(
                self.pool, program_id=request.program_id, member_id=request.member_id, kinds=list(request.kinds)
            )
            master = await self._master_account(opened.master_account_id, request.program_id, request.member_id)
            return wallet_pb2.OpenMemberAccountsResponse(
                master_account=master,
                master_account_created=opened.master_created,
                opened_account_ids=opened.opened_account_ids,
            )

        return await self._once("OpenMemberAccounts", request, wallet_pb2.OpenMemberAccountsResponse, work)

    async def OpenSystemAccount(
        self, request: wallet_pb2.OpenSystemAccountRequest, context: aio.ServicerContext
    ) -> wallet_pb2.OpenSystemAccountResponse:
        violations = _require_key_and_actor(request)
        if not request.program_id:
            violations.append(FieldViolation("program_id", "required"))
        if request.role == wallet_pb2.SYSTEM_ACCOUNT_ROLE_UNSPECIFIED:
            violations.append(FieldViolation("role", "required"))
        per_partner = request.role in (
            wallet_pb2.SYSTEM_ACCOUNT_ROLE_ISSUANCE,
            wallet_pb2.SYSTEM_ACCOUNT_ROLE_REDEMPTION,
        )
        if request.role == wallet_pb2.SYSTEM_ACCOUNT_ROLE_PARTNER_LIABILITY and not request.partner_id:
            violations.append(FieldViolation("partner_id", "required for PARTNER_LIABILITY"))
        elif request.partner_id and not (
            per_partner or request.role == wallet_pb2.SYSTEM_ACCOUNT_ROLE_PARTNER_LIABILITY
        ):
            violations.append(FieldViolation("partner_id", "must be empty for EXPIRY and ADJUSTMENT"))
        _raise_if(violations)
        unit = Unit(request.unit.type, request.unit.currency_code, request.unit.scale)

        async def work() -> wallet_pb2.OpenSystemAccountResponse:
            account_id, created = await usecases.open_system_account(
                self.pool,
                program_id=request.program_id,
                role=SystemRole(request.role),
                unit=unit,
                partner_id=request.partner_id,
            )
            (view,), _ = await usecases.read_accounts(self.pool, [account_id])
            return wallet_pb2.OpenSystemAccountResponse(
                account=mapping.account_message(view.account, view.balance), created=created
            )

        return await self._once("OpenSystemAccount", request, wallet_pb2.OpenSystemAccountResponse, work)

    async def OpenSubAccount(
        self, request: wallet_pb2.OpenSubAccountRequest, context: aio.ServicerContext
    ) -> wallet_pb2.OpenSubAccountResponse:
        violations = _require_key_and_actor(request)
        if not request.program_id:
            violations.append(FieldViolation("program_id", "required"))
        if not request.kind:
            violations.append(FieldViolation("kind", "required"))
        if not EXTERNAL_REF.fullmatch(request.external_ref):
            violations.append(FieldViolation("external_ref", "1..128 characters from [A-Za-z0-9._:-]"))
        if len(request.display_name) > 64:
            violations.append(FieldViolation("display_name", "at most 64 characters"))
        _raise_if(violations)

        async def work() -> wallet_pb2.OpenSubAccountResponse:
            account_id, created = await usecases.open_sub_account(
                self.pool,
                program_id=request.program_id,
                kind=request.kind,
                master_account_id=request.master_account_id,
                external_ref=request.external_ref,
                display_name=request.display_name,
            )
            (view,), _ = await usecases.read_accounts(self.pool, [account_id])
            return wallet_pb2.OpenSubAccountResponse(
                account=mapping.account_message(view.account, view.balance), created=created
            )

        return await self._once("OpenSubAccount", request, wallet_pb2.OpenSubAccountResponse, work)

    async def ListAccounts(
        self, request: wallet_pb2.ListAccountsRequest, context: aio.ServicerContext
    ) -> wallet_pb2.ListAccountsResponse:
        if not (request.program_id or request.member_id or request.master_account_id):
            raise invalid_argument(
                [FieldViolation("program_id", "at least one of program_id, member_id, master_account_id")]
            )
        size = _page_size(request.page_size)
        after = _account_cursor(request.page_token)
        found = await usecases.find_accounts(
            self.pool,
            program_id=request.program_id,
            member_id=request.member_id,
            master_account_id=request.master_account_id,
            account_type=request.type,
            system_role=request.system_role,
            partner_id=request.partner_id,
            kind=request.kind,
            states=list(request.states),
            external_ref=request.external_ref,
            after=after,
            limit=size + 1,
        )
        views, _ = await usecases.read_accounts(self.pool, [account_id for account_id, _ in found[:size]])
        token = ""
        if len(found) > size:
            last_id, last_time = found[size - 1]
            token = f"{last_time.isoformat()}|{last_id}"
        return wallet_pb2.ListAccountsResponse(
            accounts=[mapping.account_message(v.account, v.balance) for v in views], next_page_token=token
        )

    async def GetAccount(
        self, request: wallet_pb2.GetAccountRequest, context: aio.ServicerContext
    ) -> wallet_pb2.GetAccountResponse:
        views, _ = await usecases.read_accounts(self.pool, [request.account_id])
        if not views:
            raise DomainError(
                Reason.ACCOUNT_NOT_FOUND,
                f"no account {request.account_id!r}",
                metadata={"accountId": request.account_id},
            )
        return wallet_pb2.GetAccountResponse(account=mapping.account_message(views[0].account, views[0].balance))

    async def GetMasterAccount(
        self, request: wallet_pb2.GetMasterAccountRequest, context: aio.ServicerContext
    ) -> wallet_pb2.GetMasterAccountResponse:
        if request.master_account_id:
            ids = await usecases.master_account_ids(self.pool, request.master_account_id)
        elif request.program_id and request.member_id:
            ids = await usecases.member_account_ids(
                self.pool, program_id=request.program_id, member_id=request.member_id
            )
        else:
            raise invalid_argument([FieldViolation("master_account_id", "or program_id and member_id, required")])
        if not ids:
            raise DomainError(Reason.ACCOUNT_NOT_FOUND, "no such master account")
        views, _ = await usecases.read_accounts(self.pool, ids)
        first = views[0].account
        return wallet_pb2.GetMasterAccountResponse(
            master_account=self._master_message(first.master_account_id, first.program_id, first.member_id, views)
        )

    async def _master_account(self, master_id: str, program_id: str, member_id: str) -> wallet_pb2.MasterAccount:
        views, _ = await usecases.read_accounts(self.pool, await usecases.master_account_ids(self.pool, master_id))
        return self._master_message(master_id, program_id, member_id, views)

    @staticmethod
    def _master_message(
        master_id: str, program_id: str, member_id: str, views: Sequence[usecases.AccountView]
    ) -> wallet_pb2.MasterAccount:
        return wallet_pb2.MasterAccount(
            master_account_id=master_id,
            program_id=program_id,
            member_id=member_id,
            # The master's state is mirrored onto every sub-account (see the ledger migration).
            state=int(views[0].account.master_state) if views else wallet_pb2.ACCOUNT_STATE_ACTIVE,  # type: ignore[arg-type]
            accounts=[mapping.account_message(v.account, v.balance) for v in views],
        )

    async def FreezeAccount(
        self, request: wallet_pb2.FreezeAccountRequest, context: aio.ServicerContext
    ) -> wallet_pb2.FreezeAccountResponse:
        response: wallet_pb2.FreezeAccountResponse = await self._change_freeze(request, frozen=True)
        return response

    async def UnfreezeAccount(
        self, request: wallet_pb2.UnfreezeAccountRequest, context: aio.ServicerContext
    ) -> wallet_pb2.UnfreezeAccountResponse:
        response: wallet_pb2.UnfreezeAccountResponse = await self._change_freeze(request, frozen=False)
        return response

    async def _change_freeze(self, request: Any, *, frozen: bool) -> Any:
        violations = _require_key_and_actor(request)
        if not request.WhichOneof("target"):
            violations.append(FieldViolation("target", "set master_account_id or account_id"))
        if len(request.reason) > 256:
            violations.append(FieldViolation("reason", "at most 256 characters"))
        _raise_if(violations)
        response_type = wallet_pb2.FreezeAccountResponse if frozen else wallet_pb2.UnfreezeAccountResponse
        mode = FreezeMode(request.mode) if frozen else FreezeMode.NONE

        async def work() -> Any:
            await usecases.set_frozen(
                self.pool,
                account_id=request.account_id,
                master_account_id=request.master_account_id,
                frozen=frozen,
                mode=mode,
                reason=request.reason,
            )
            if request.master_account_id:
                ids = await usecases.master_account_ids(self.pool, request.master_account_id)
                views, _ = await usecases.read_accounts(self.pool, ids)
                first = views[0].account if views else None
                master = self._master_message(
                    request.master_account_id,
                    first.program_id if first else "",
                    first.member_id if first else "",
                    views,
                )
                return response_type(master_account=master)
            (view,), _ = await usecases.read_accounts(self.pool, [request.account_id])
            return response_type(account=mapping.account_message(view.account, view.balance))

        return await self._once("FreezeAccount" if frozen else "UnfreezeAccount", request, response_type, work)

    async def CloseAccount(
        self, request: wallet_pb2.CloseAccountRequest, context: aio.ServicerContext
    ) -> wallet_pb2.CloseAccountResponse:
        violations = _require_key_and_actor(request)
        if not request.WhichOneof("target"):
            violations.append(FieldViolation("target", "set master_account_id or account_id"))
        if request.disposition == wallet_pb2.CLOSURE_DISPOSITION_UNSPECIFIED:
            violations.append(FieldViolation("disposition", "REQUIRE_ZERO or FORFEIT"))
        _raise_if(violations)
        forfeit = request.disposition == wallet_pb2.CLOSURE_DISPOSITION_FORFEIT

        async def work() -> wallet_pb2.CloseAccountResponse:
            if request.master_account_id:
                ids = await usecases.master_account_ids(self.pool, request.master_account_id)
                if not ids:
                    raise DomainError(Reason.ACCOUNT_NOT_FOUND, f"no master account {request.master_account_id!r}")
            else:
                ids = [request.account_id]
                views, _ = await usecases.read_accounts(self.pool, ids)
                if not views:
                    raise DomainError(Reason.ACCOUNT_NOT_FOUND, f"no account {request.account_id!r}")
                if views[0].account.type is not AccountType.MEMBER and forfeit:
                    raise invalid_argument([FieldViolation("disposition", "only REQUIRE_ZERO for system accounts")])
            forfeits = await usecases.close_accounts(
                self.pool, self.writer, account_ids=ids, forfeit=forfeit, reason=request.reason
            )
            response = wallet_pb2.CloseAccountResponse(forfeit_transfer_ids=forfeits)
            views, _ = await usecases.read_accounts(self.pool, ids)
            if request.master_account_id:
                await usecases.close_master(self.pool, request.master_account_id, reason=request.reason)
                views, _ = await usecases.read_accounts(self.pool, ids)
                first = views[0].account
                response.master_account.CopyFrom(
                    self._master_message(request.master_account_id, first.program_id, first.member_id, views)
                )
            else:
                response.account.CopyFrom(mapping.account_message(views[0].account, views[0].balance))
            return response

        return await self._once("CloseAccount", request, wallet_pb2.CloseAccountResponse, work)

    # -- between members -------------------------------------------------------------------------

    async def TransferPoints(
        self, request: wallet_pb2.TransferPointsRequest, context: aio.ServicerContext
    ) -> wallet_pb2.TransferPointsResponse:
        violations = _require_key_and_actor(request)
        for name in ("from_account_id", "to_account_id"):
            if not getattr(request, name):
                violations.append(FieldViolation(name, "required"))
        if not 1 <= request.amount_minor <= AMOUNT_MAX:
            violations.append(FieldViolation("amount_minor", f"1..{AMOUNT_MAX}"))
        if len(request.memo) > 256:
            violations.append(FieldViolation("memo", "at most 256 characters"))
        _raise_if(violations)
        outcome = await members.give_points(
            self.pool,
            self.writer,
            from_account_id=request.from_account_id,
            to_account_id=request.to_account_id,
            amount=request.amount_minor,
            memo=request.memo,
            metadata=tuple(sorted(request.metadata.items())),
            actor=members.Actor(request.actor.type, request.actor.id),
            key=request.idempotency_key.key,
            body=request.SerializeToString(deterministic=True),
        )
        records = await usecases.lookup(self.pool, [outcome.transfer_id])
        response = wallet_pb2.TransferPointsResponse(transfer=mapping.transfer_record(records[outcome.transfer_id]))
        balance = mapping.account_balance(outcome.debit_balance)
        if balance is not None:
            response.from_account_balance.CopyFrom(balance)
        return response

    async def CreatePool(
        self, request: wallet_pb2.CreatePoolRequest, context: aio.ServicerContext
    ) -> wallet_pb2.CreatePoolResponse:
        violations = _require_key_and_actor(request)
        for name in ("program_id", "owner_member_id", "kind"):
            if not getattr(request, name):
                violations.append(FieldViolation(name, "required"))
        if not 1 <= len(request.display_name) <= 64:
            violations.append(FieldViolation("display_name", "1..64 characters"))
        time_zone = request.time_zone or "UTC"
        if not valid_time_zone(time_zone):
            violations.append(FieldViolation("time_zone", "an IANA time zone, e.g. Europe/Moscow"))
        _raise_if(violations)

        async def work() -> wallet_pb2.CreatePoolResponse:
            pool_id = await members.create_pool(
                self.pool,
                program_id=request.program_id,
                owner_member_id=request.owner_member_id,
                kind=request.kind,
                display_name=request.display_name,
                time_zone=time_zone,
                actor=members.Actor(request.actor.type, request.actor.id),
            )
            return wallet_pb2.CreatePoolResponse(pool=await self._pool_message(pool_id))

        return await self._once("CreatePool", request, wallet_pb2.CreatePoolResponse, work)

    async def GetPool(
        self, request: wallet_pb2.GetPoolRequest, context: aio.ServicerContext
    ) -> wallet_pb2.GetPoolResponse:
        return wallet_pb2.GetPoolResponse(pool=await self._pool_message(request.pool_id))

    async def ListPools(
        self, request: wallet_pb2.ListPoolsRequest, context: aio.ServicerContext
    ) -> wallet_pb2.ListPoolsResponse:
        _raise_if([FieldViolation("program_id", "required")] if not request.program_id else [])
        size = _page_size(request.page_size)
        offset = int(request.page_token) if request.page_token.isdigit() else 0
        ids = await members.find_pools(
            self.pool,
            program_id=request.program_id,
            member_id=request.member_id,
            states=list(request.states),
            offset=offset,
            limit=size + 1,
        )
        pools = [await self._pool_message(pool_id) for pool_id in ids[:size]]
        return wallet_pb2.ListPoolsResponse(pools=pools, next_page_token=str(offset + size) if len(ids) > size else "")

    async def AddPoolMember(
        self, request: wallet_pb2.AddPoolMemberRequest, context: aio.ServicerContext
    ) -> wallet_pb2.AddPoolMemberResponse:
        period = self._limit(request)
        change = functools.partial(
            members.add_member,
            member_id=request.member_id,
            period=period,
            limit_minor=request.spending_limit.amount_minor,
        )
        response: wallet_pb2.AddPoolMemberResponse = await self._change_pool(
            "AddPoolMember", request, wallet_pb2.AddPoolMemberResponse, change
        )
        return response

    async def UpdatePoolMember(
        self, request: wallet_pb2.UpdatePoolMemberRequest, context: aio.ServicerContext
    ) -> wallet_pb2.UpdatePoolMemberResponse:
        period = self._limit(request)
        change = functools.partial(
            members.update_member,
            member_id=request.member_id,
            period=period,
            limit_minor=request.spending_limit.amount_minor,
        )
        response: wallet_pb2.UpdatePoolMemberResponse = await self._change_pool(
            "UpdatePoolMember", request, wallet_pb2.UpdatePoolMemberResponse, change
        )
        return response

    async def RemovePoolMember(
        self, request: wallet_pb2.RemovePoolMemberRequest, context: aio.ServicerContext
    ) -> wallet_pb2.RemovePoolMemberResponse:
        _raise_if(_require_key_and_actor(request))
        change = functools.partial(members.remove_member, member_id=request.member_id)
        response: wallet_pb2.RemovePoolMemberResponse = await self._change_pool(
            "RemovePoolMember", request, wallet_pb2.RemovePoolMemberResponse, change
        )
        return response

    async def ClosePool(
        self, request: wallet_pb2.ClosePoolRequest, context: aio.ServicerContext
    ) -> wallet_pb2.ClosePoolResponse:
        _raise_if(_require_key_and_actor(request))

        async def close(pool: Any, *, pool_id: str, actor: members.Actor) -> None:
            await members.close_pool(pool, self.writer, pool_id=pool_id, actor=actor)

        response: wallet_pb2.ClosePoolResponse = await self._change_pool(
            "ClosePool", request, wallet_pb2.ClosePoolResponse, close
        )
        return response

    async def _change_pool(
        self, method: str, request: Any, response_type: type[ResponseT], change: Callable[..., Awaitable[None]]
    ) -> ResponseT:
        """Apply `change(pool, pool_id=, actor=)` once per idempotency key; answer with the pool."""

        async def work() -> ResponseT:
            actor = members.Actor(request.actor.type, request.actor.id)
            await change(self.pool, pool_id=request.pool_id, actor=actor)
            return response_type(pool=await self._pool_message(request.pool_id))

        return await self._once(method, request, response_type, work)

    @staticmethod
    def _limit(request: Any) -> Period:
        violations = _require_key_and_actor(request)
        if not request.pool_id or not request.member_id:
            violations.append(FieldViolation("pool_id", "pool_id and member_id are required"))
        limit = request.spending_limit
        if limit.period == wallet_pb2.SPENDING_LIMIT_PERIOD_UNSPECIFIED:
            violations.append(FieldViolation("spending_limit.period", "required"))
        if not 0 <= limit.amount_minor <= AMOUNT_MAX:
            violations.append(FieldViolation("spending_limit.amount_minor", f"0..{AMOUNT_MAX}"))
        _raise_if(violations)
        return Period(limit.period)

    async def _pool_message(self, pool_id: str) -> wallet_pb2.Pool:
        view = await members.read_pool(self.pool, pool_id)
        return mapping.pool_message(view)

    # -- the ledger ------------------------------------------------------------------------------

    async def CreateTransfers(
        self, request: wallet_pb2.CreateTransfersRequest, context: aio.ServicerContext
    ) -> wallet_pb2.CreateTransfersResponse:
        if not 1 <= len(request.transfers) <= BATCH_SIZE_MAX:
            raise invalid_argument([FieldViolation("transfers", f"1..{BATCH_SIZE_MAX} transfers")])
        requests = [mapping.transfer_request(transfer) for transfer in request.transfers]
        # The work is shielded: a caller that gives up (deadline) must not cancel a transaction
        # that carries other callers' transfers too. It completes; a retry finds the outcome.
        outcomes = await asyncio.shield(self.writer.enqueue(requests))
        return wallet_pb2.CreateTransfersResponse(
            results=[mapping.transfer_result_fields(i, outcome) for i, outcome in enumerate(outcomes)]  # type: ignore[misc]
        )

    async def LookupTransfers(
        self, request: wallet_pb2.LookupTransfersRequest, context: aio.ServicerContext
    ) -> wallet_pb2.LookupTransfersResponse:
        if not 1 <= len(request.transfer_ids) <= BATCH_SIZE_MAX:
            raise invalid_argument([FieldViolation("transfer_ids", f"1..{BATCH_SIZE_MAX} ids")])
        records = await usecases.lookup(self.pool, list(request.transfer_ids))
        return wallet_pb2.LookupTransfersResponse(
            transfers=[mapping.transfer_record(records[i]) for i in request.transfer_ids if i in records],
            not_found_transfer_ids=[i for i in request.transfer_ids if i not in records],
        )

    async def ListTransfers(
        self, request: wallet_pb2.ListTransfersRequest, context: aio.ServicerContext
    ) -> wallet_pb2.ListTransfersResponse:
        if not (request.account_id or request.operation_id or request.receipt_id):
            raise invalid_argument([FieldViolation("operation_id", "set operation_id, receipt_id or account_id")])
        if request.receipt_id and not request.terminal_id:
            raise invalid_argument([FieldViolation("terminal_id", "required with receipt_id")])
        size = _page_size(request.page_size)
        before = _account_cursor(request.page_token)
        records = await usecases.transfers(
            self.pool,
            account_id=request.account_id,
            operation_id=request.operation_id,
            terminal_id=request.terminal_id,
            receipt_id=request.receipt_id,
            states=list(request.states),
            before=before,
            limit=size + 1,
        )
        token = ""
        if len(records) > size:
            last = records[size - 1]
            token = f"{last.recorded_time.isoformat()}|{last.transfer_id}"
        return wallet_pb2.ListTransfersResponse(
            transfers=[mapping.transfer_record(r) for r in records[:size]], next_page_token=token
        )

    async def GetBalances(
        self, request: wallet_pb2.GetBalancesRequest, context: aio.ServicerContext
    ) -> wallet_pb2.GetBalancesResponse:
        ids = await self._named_accounts(request)
        views, now = await usecases.read_accounts(self.pool, ids)
        found = {v.account.account_id for v in views}
        missing = next((i for i in ids if i not in found), None)
        if missing is not None:
            raise DomainError(Reason.ACCOUNT_NOT_FOUND, f"no account {missing!r}", metadata={"accountId": missing})
        response = wallet_pb2.GetBalancesResponse(balances=[mapping.balance_view(v.account, v.balance) for v in views])
        if request.include_pools:
            await self._add_pools(request, response)
        mapping.set_time(response.read_time, now)
        return response

    async def _add_pools(
        self, request: wallet_pb2.GetBalancesRequest, response: wallet_pb2.GetBalancesResponse
    ) -> None:
        if request.master_account_id:
            owner = await usecases.master_owner(self.pool, request.master_account_id)
        elif request.program_id:
            owner = (request.program_id, request.member_id)
        else:
            raise invalid_argument([FieldViolation("include_pools", "needs master_account_id or program_id+member_id")])
        if owner is None:
            return
        for view, spendable in await usecases.member_pools(self.pool, program_id=owner[0], member_id=owner[1]):
            pool_view = mapping.balance_view(view.account, view.balance)
            pool_view.member_spendable_minor = spendable
            response.balances.append(pool_view)

    async def _named_accounts(self, request: wallet_pb2.GetBalancesRequest) -> list[str]:
        ways = sum((bool(request.account_ids), bool(request.master_account_id), bool(request.program_id)))
        if ways != 1 or (request.program_id and not request.member_id):
            raise invalid_argument(
                [
                    FieldViolation(
                        "account_ids", "set exactly one of account_ids, master_account_id, program_id+member_id"
                    )
                ]
            )
        if request.account_ids:
            if len(request.account_ids) > ACCOUNT_IDS_MAX:
                raise invalid_argument([FieldViolation("account_ids", f"at most {ACCOUNT_IDS_MAX}")])
            return list(request.account_ids)
        if request.master_account_id:
            ids = await usecases.master_account_ids(self.pool, request.master_account_id)
        else:
            ids = await usecases.member_account_ids(
                self.pool, program_id=request.program_id, member_id=request.member_id
            )
        if not ids:
            raise DomainError(Reason.ACCOUNT_NOT_FOUND, "the member has no accounts")
        return ids

    async def ListEntries(
        self, request: wallet_pb2.ListEntriesRequest, context: aio.ServicerContext
    ) -> wallet_pb2.ListEntriesResponse:
        if bool(request.account_id) == bool(request.master_account_id):
            raise invalid_argument([FieldViolation("account_id", "set exactly one of account_id, master_account_id")])
        size = _page_size(request.page_size)
        ids = (
            [request.account_id]
            if request.account_id
            else await usecases.master_account_ids(self.pool, request.master_account_id)
        )
        views, _ = await usecases.read_accounts(self.pool, ids)
        if not views:
            raise DomainError(
                Reason.ACCOUNT_NOT_FOUND, f"no account {request.account_id or request.master_account_id!r}"
            )
        time_range = request.recorded_time_range
        rows = await usecases.entries(
            self.pool,
            [v.account.account_id for v in views],
            recorded_from=mapping.optional_time(time_range, "start_time"),
            recorded_to=mapping.optional_time(time_range, "end_time"),
            reasons=list(request.reasons),
            operation_id=request.operation_id,
            after=_entry_cursor(request.page_token),
            oldest_first=request.oldest_first,
            limit=size + 1,
        )
        accounts = {v.account.account_id: v.account for v in views}
        entries = [
            mapping.entry_message(
                row, request, accounts[str(row["account_id"])].unit, accounts[str(row["account_id"])].kind
            )
            for row, request in rows[:size]
        ]
        token = ""
        if len(rows) > size:
            last, _ = rows[size - 1]
            token = f"{last['recorded_time'].isoformat()}|{last['account_id']}|{last['sequence']}"
        return wallet_pb2.ListEntriesResponse(entries=entries, next_page_token=token)

    async def ListLots(
        self, request: wallet_pb2.ListLotsRequest, context: aio.ServicerContext
    ) -> wallet_pb2.ListLotsResponse:
        size = _page_size(request.page_size)
        offset = int(request.page_token) if request.page_token.isdigit() else 0
        wanted = set(request.states)
        lots, now = await usecases.lots(
            self.pool,
            request.account_id,
            offset=offset,
            limit=size + 1,
            include_spent=not wanted.isdisjoint(mapping.SPENT_LOT_STATES),
        )
        messages = [mapping.lot_message(lot, now) for lot in lots[:size]]
        if wanted:
            messages = [m for m in messages if m.state in wanted]
        token = str(offset + size) if len(lots) > size else ""
        return wallet_pb2.ListLotsResponse(lots=messages, next_page_token=token)


def register(server: aio.Server, runtime: Runtime) -> Sequence[ServiceDescriptor]:
    writers = read_setting("wallet", "WRITERS", int_between(1, 16), 2)
    transfers_max = read_setting("wallet", "TRANSFERS_PER_TRANSACTION_MAX", int_between(1, 10_000), 2000)
    # Below this many waiting transfers, a writer waits for the running transaction instead of
    # starting a second one beside it. At 100: single-transfer calls share more commits (less
    # PostgreSQL CPU per transfer when 64 calls are in flight) but a call that arrives during a
    # transaction waits for it, which at 100 purchases/s doubled the wallet step and piled the
    # purchases up (p50 30-50 ms against 11-12 ms at 1; the wallet benchmark's rates did not
    # move beyond their noise). Latency first: 1.
    parallel_min = read_setting("wallet", "PARALLEL_TRANSFERS_MIN", int_between(1, 10_000), 1)
    work_interval_s = read_setting("wallet", "WORK_INTERVAL_S", float_between(0.05, 3600), 5.0)
    writer = TransferWriter(
        runtime.pool, writers=writers, transfers_per_transaction_max=transfers_max, parallel_transfers_min=parallel_min
    )
    writer.start()
    background = asyncio.create_task(worker.run(runtime.pool, interval_s=work_interval_s), name="ledger-worker")

    async def stop() -> None:
        background.cancel()
        await asyncio.gather(background, return_exceptions=True)
        await writer.stop()

    runtime.shutdown_hooks.append(stop)
    return [
        add_service(
            server,
            WalletServicer,
            runtime,
            writer,
            pb2=wallet_pb2,
            pb2_grpc=wallet_pb2_grpc,
            service_name="WalletService",
            issue="issue #3",
        )
    ]
