"""The register flow: Identify, Calculate, Purchase, Authorize, Capture, Void, Refund, and the
saga that makes every write exactly-once across processing's and the wallet's databases.

THE SAGA (DESIGN §2). A write is decided in memory (resolution, rules, transfer plan), then:

  1. the operation is INSERTED in state PROCESSING with its plan: the wallet transfers it will
     make, with ids derived from the operation id, and a lease (the recovery point);
  2. the plan is sent to the wallet as one linked chain (shared with concurrent purchases in one
     CreateTransfers call);
  3. the outcome is recorded in ONE transaction: the final state, the response bytes (for
     byte-identical replays), the member's statistics and the outbox events.

A process that dies after 1 leaves a PROCESSING operation with a plan; whoever comes next — the
register retrying with the same key once the lease has run out, or the recovery worker — sends
the same plan again (the wallet answers EXISTS with the original results, or applies it now) and
records the outcome. A transient failure (wallet down) leaves the operation PROCESSING and the
caller gets UNAVAILABLE; it never ends REJECTED for that. The unique (terminal, key) constraint
written in step 1 is what makes a key have one operation; the unique live-receipt index makes a
receipt have one live purchase.

Anti-fraud (its own issue) plugs in at `_assess`: today every operation is recorded
RISK_OUTCOME_NOT_ASSESSED, which is what the contract says for "anti-fraud did not answer".
"""

from __future__ import annotations

import json
import os
import re
import signal
import uuid
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any, NoReturn, TypeVar
from zoneinfo import ZoneInfo

import asyncpg
from google.protobuf.message import Message
from loyalty.cards.v1 import cards_pb2
from loyalty.common.v1 import types_pb2
from loyalty.processing.v1 import processing_pb2 as p
from loyalty.wallet.v1 import wallet_pb2
from prometheus_client import Histogram

from services.processing import refunding, rulesets
from services.processing.context import ProgramContext
from services.processing.domain import operations as ops
from services.processing.domain import rules
from services.processing.domain.operations import OperationState, OperationType, PlannedTransfer, Posting
from services.processing.downstream import Downstream, reason_of, reason_value
from services.processing.store import operations as store
from services.processing.writes import SaleWrites
from shared import outbox
from shared.errors import DomainError, FieldViolation, Reason, invalid_argument
from shared.idempotency import fingerprint, run_once
from shared.metrics import LATENCY_BUCKETS_S
from shared.replay_cache import ReplayCache

# Where a write's time goes, step by step (an SRE's first question when Purchase slows down, and
# the benchmark's latency breakdown): replay_cache (the Redis fast path), resolve (cards),
# accounts (the member's sub-accounts and, when needed, balances), calculate (rules and plan),
# record_plan (the operation row, the saga's recovery point), wallet (the transfers),
# record_outcome. Children resolved once: observing costs a few microseconds.
STEP_SECONDS = Histogram(
    "loyalty_processing_step_seconds",
    "Time processing's writes spend in each step of the saga (see services/processing/flow.py).",
    ["step"],
    buckets=LATENCY_BUCKETS_S,
)
STEPS = {
    name: STEP_SECONDS.labels(name)
    for name in ("replay_cache", "resolve", "accounts", "calculate", "record_plan", "wallet", "record_outcome")
}
ResponseT = TypeVar("ResponseT", bound=Message)

# TransferResultCode name -> the ErrorReason a register gets (wallet.proto, TransferResultCode).
WALLET_REFUSALS: dict[str, Reason] = {
    "INSUFFICIENT_FUNDS": Reason.INSUFFICIENT_POINTS,
    "DEBIT_ACCOUNT_FROZEN": Reason.ACCOUNT_FROZEN,
    "CREDIT_ACCOUNT_FROZEN": Reason.ACCOUNT_FROZEN,
    "DEBIT_ACCOUNT_CLOSED": Reason.ACCOUNT_CLOSED,
    "CREDIT_ACCOUNT_CLOSED": Reason.ACCOUNT_CLOSED,
    "DEBIT_ACCOUNT_NOT_FOUND": Reason.ACCOUNT_NOT_FOUND,
    "CREDIT_ACCOUNT_NOT_FOUND": Reason.ACCOUNT_NOT_FOUND,
    "PENDING_TRANSFER_ALREADY_POSTED": Reason.HOLD_ALREADY_RESOLVED,
    "PENDING_TRANSFER_ALREADY_VOIDED": Reason.HOLD_ALREADY_RESOLVED,
    "PENDING_TRANSFER_EXPIRED": Reason.HOLD_EXPIRED,
    "IMPORTED_TIME_TOO_OLD": Reason.OFFLINE_OPERATION_TOO_OLD,
    "POOL_SPENDING_LIMIT_EXCEEDED": Reason.LIMIT_EXCEEDED,
    "BALANCE_LIMIT_EXCEEDED": Reason.LIMIT_EXCEEDED,
}
SUCCESS = (wallet_pb2.TRANSFER_RESULT_CODE_CREATED, wallet_pb2.TRANSFER_RESULT_CODE_EXISTS)
# A void of a hold the wallet already released (at its deadline, or an earlier void) has reached
# its goal: the points are free again.
HOLD_GONE = frozenset(
    {
        wallet_pb2.TRANSFER_RESULT_CODE_PENDING_TRANSFER_EXPIRED,
        wallet_pb2.TRANSFER_RESULT_CODE_PENDING_TRANSFER_ALREADY_VOIDED,
    }
)
# Refusals answered without recording an operation under the key: bad input, an unknown till, and
# transient conditions the register retries with the same key.
NOT_RECORDED = frozenset(
    {Reason.INVALID_ARGUMENT, Reason.DEPENDENCY_UNAVAILABLE, Reason.TERMINAL_NOT_FOUND, Reason.REQUEST_IN_PROGRESS}
)
# Offline operations refused for these are sent again later (OFFLINE_OPERATION_OUTCOME_RETRY).
OFFLINE_RETRY = frozenset(
    {Reason.DEPENDENCY_UNAVAILABLE, Reason.REQUEST_IN_PROGRESS, Reason.CONCURRENT_MODIFICATION, Reason.OVERLOADED}
)
# Every idempotency key (processing.proto, IdempotencyKey).
IDEMPOTENCY_KEY = re.compile(r"[A-Za-z0-9._:\-]{8,128}")
# How far ahead of the platform's clock a register's clock may be.
OFFLINE_CLOCK_SKEW = timedelta(minutes=5)
# A refund is planned from the purchase as it stands; if another refund changed it meanwhile,
# it is planned again, at most this many times.
REFUND_PLAN_ATTEMPTS = 3
# The response a PROCESSING operation's creating request gets, by the method that created it
# (the recovery worker records it for byte-identical replays).
RESPONSE_TYPES: dict[str, type[Message]] = {
    "Purchase": p.PurchaseResponse,
    "Authorize": p.AuthorizeResponse,
    "Refund": p.RefundResponse,
    "OfflineAccrual": p.OfflineOperationResult,
    "OfflineCancel": p.OfflineOperationResult,
}
IDENTIFIED_BY = {
    cards_pb2.IDENTIFIER_TYPE_CARD_NUMBER: p.IDENTIFICATION_METHOD_CARD,
    cards_pb2.IDENTIFIER_TYPE_PHONE: p.IDENTIFICATION_METHOD_PHONE,
    cards_pb2.IDENTIFIER_TYPE_QR_TOKEN: p.IDENTIFICATION_METHOD_QR_TOKEN,
    cards_pb2.IDENTIFIER_TYPE_MEMBER_ID: p.IDENTIFICATION_METHOD_MEMBER_ID,
}


@dataclass(frozen=True)
class FlowSettings:
    lease_s: float
    points_kind: str = "base"
    # Fault injection for the crash tests (LOYALTY_PROCESSING_CRASH_AT): the saga's step
    # boundaries at which this process kills itself with SIGKILL. Empty in production.
    crash_at: frozenset[str] = frozenset()


# The saga's step boundaries, in order; see the module docstring.
CRASH_POINTS = (
    "after_insert",  # the operation is PROCESSING with its plan; the wallet has not seen it
    "after_wallet",  # the wallet applied the plan; the outcome is not recorded
    "after_record",  # the outcome is recorded; the caller has no answer yet
)


@dataclass(frozen=True)
class Member:
    """Who the customer is, for one operation."""

    resolution: cards_pb2.Resolution
    sub_accounts: tuple[Any, ...]  # downstream.SubAccount, redemption-priority order
    # The balances, when the caller asked for them (one GetBalances, which also tells the
    # sub-accounts of a member not cached yet: never a second call for those).
    views: list[wallet_pb2.AccountBalanceView] | None = None

    @property
    def member_id(self) -> str:
        return str(self.resolution.member_id)


def new_operation_id() -> str:
    return f"op_{uuid.uuid4().hex}"


def masked_card(number: str) -> str:
    return f"**** **** {number[-4:]}" if number else ""


def wallet_failure(results: Sequence[wallet_pb2.TransferResult]) -> DomainError | None:
    """None when the chain applied; else the refusal of its failing transfer."""
    if all(result.code in SUCCESS for result in results):
        return None
    for result in results:
        if result.code in SUCCESS or result.code == wallet_pb2.TRANSFER_RESULT_CODE_LINKED_EVENT_FAILED:
            continue
        name = wallet_pb2.TransferResultCode.Name(result.code).removeprefix("TRANSFER_RESULT_CODE_")
        reason = WALLET_REFUSALS.get(name)
        if reason is None:
            # A validation code means our plan was wrong: a bug, not the customer's problem.
            raise RuntimeError(f"the wallet refused transfer {result.transfer_id}: {name}")
        return DomainError(reason, f"the wallet refused the operation: {name}", metadata={"cause": name})
    raise RuntimeError("a linked chain failed without a failing transfer")


def balances_after(
    results: Sequence[wallet_pb2.TransferResult], member_accounts: Iterable[str]
) -> list[types_pb2.AccountBalance]:
    """The member's balances after the chain: the last balance seen for each of its accounts."""
    wanted = set(member_accounts)
    latest: dict[str, types_pb2.AccountBalance] = {}
    for result in results:
        for balance in (result.debit_account_balance, result.credit_account_balance):
            if balance.account_id in wanted:
                latest[balance.account_id] = balance
    return list(latest.values())


def crash_point(settings: FlowSettings, name: str) -> None:
    """Die here, as a power cut would, when the crash tests ask for it (never otherwise)."""
    if name in settings.crash_at:
        os.kill(os.getpid(), signal.SIGKILL)


@dataclass(frozen=True)
class SaleSpec:
    """How a sale is made: online (now, maybe as a hold) or offline (at the register's time)."""

    method: str
    key: str
    digest: bytes
    # The business time: now online; the register's time offline (rules, pending periods and
    # expiry count from it).
    at: datetime
    offline: bool
    # Authorize: the hold's lifetime; 0 captures at once.
    hold_ttl_s: int
    cashier_id: str
    # The Redis fast path knows nothing of the key and marked it ours: skip the database lookup
    # (the insert's unique key still catches a key the database knows, see _record_sale).
    skip_lookup: bool = False


@dataclass(frozen=True)
class PlannedRefund:
    """A refund or cancel as planned from the purchase's current state, before it is recorded."""

    operation: p.Operation
    draft: refunding.RefundDraft
    # The purchase's lots still pending (transfer id -> remaining), for dry-run projections.
    pending_lots: dict[str, int]


class Flow:
    def __init__(
        self,
        *,
        pool: asyncpg.Pool,
        context: ProgramContext,
        downstream: Downstream,
        settings: FlowSettings,
        replays: ReplayCache,
    ) -> None:
        self.pool = pool
        self.writes = SaleWrites(pool)
        self.context = context
        self.downstream = downstream
        self.settings = settings
        self.replays = replays

    async def _once(
        self,
        request: Any,
        *,
        method: str,
        response_type: type[ResponseT],
        work: Callable[[bool], Awaitable[ResponseT]],
    ) -> ResponseT:
        """The Redis fast path around a write (shared/replay_cache.py): a completed request is
        replayed from Redis and a running one answered ABORTED without touching PostgreSQL;
        `work(skip_lookup)` runs otherwise. Redis down: work(False), the database path."""
        scope = f"terminal:{request.terminal_id}"
        key = request.idempotency_key.key
        digest = fingerprint(method, request)
        with STEPS["replay_cache"].time():
            lookup = await self.replays.begin(scope, key)
        if lookup.response is not None:
            if lookup.digest != digest:
                raise _key_reused(key)
            cached = response_type()
            cached.ParseFromString(lookup.response)
            return cached
        if lookup.in_flight:
            raise DomainError(
                Reason.REQUEST_IN_PROGRESS,
                f"the request with key {key!r} is still running; retry with the same key",
                metadata={"idempotencyKey": key},
            )
        try:
            response = await work(lookup.marked)
        except BaseException:
            if lookup.marked:
                await self.replays.release(scope, key)
            raise
        if lookup.marked:
            await self.replays.complete(scope, key, digest, response.SerializeToString())
        return response

    # -- identification ------------------------------------------------------------------------

    async def _member(
        self,
        *,
        program_id: str,
        identifier: types_pb2.MemberIdentifier,
        terminal_id: str,
        with_cards: bool = False,
        with_balances: bool = False,
    ) -> Member:
        with STEPS["resolve"].time():
            resolution = await self.downstream.resolve(
                program_id=program_id, identifier=identifier, terminal_id=terminal_id, with_cards=with_cards
            )
        if not resolution.usable:
            reason = reason_of(resolution.refusal_reason) if resolution.refusal_reason else Reason.CARD_NOT_ACTIVE
            raise DomainError(reason, f"the customer cannot be served: {reason.value}")
        if not resolution.master_account_id:
            raise DomainError(Reason.MEMBER_NOT_FOUND, "the card is not bound to a member")
        with STEPS["accounts"].time():
            views = await self.downstream.balances(resolution.master_account_id) if with_balances else None
            sub_accounts = await self.downstream.sub_accounts(resolution)
        return Member(resolution, sub_accounts, views)

    async def identify(self, request: p.IdentifyRequest) -> p.IdentifyResponse:
        terminal = await self.context.terminal(request.terminal_id)
        settings = await self.context.settings()
        member = await self._member(
            program_id=settings.program_id,
            identifier=request.member,
            terminal_id=terminal.terminal_id,
            with_cards=True,
            with_balances=True,
        )
        views = member.views or []
        response = p.IdentifyResponse(
            member_id=member.member_id,
            display_name=member.resolution.member_display_name,
            masked_phone=member.resolution.member_masked_phone,
            identified_by=IDENTIFIED_BY.get(member.resolution.identified_by, p.IDENTIFICATION_METHOD_UNSPECIFIED),
            balances=[view.balance for view in views],
        )
        total = sum(
            view.balance.available.amount_minor
            for view in views
            if view.spendable
            and not view.balance.currency_code
            and view.effective_state == wallet_pb2.ACCOUNT_STATE_ACTIVE
        )
        response.total_available.CopyFrom(types_pb2.Points(amount_minor=total, scale=settings.point_scale))
        blocked = self._redemption_blocked(member, views)
        if blocked is not None:
            response.redemption_blocked_reason = reason_value(blocked)
        for card in member.resolution.member_cards:
            response.cards.append(
                p.MemberCard(
                    masked_number=masked_card(card.card_number),
                    status=_card_status(card.state),
                    presented=card.card_id == member.resolution.card_id,
                    app_only=card.type == cards_pb2.CARD_TYPE_VIRTUAL,
                )
            )
        return response

    def _redemption_blocked(self, member: Member, views: Sequence[wallet_pb2.AccountBalanceView]) -> Reason | None:
        if any(view.effective_state == wallet_pb2.ACCOUNT_STATE_FROZEN for view in views):
            return Reason.ACCOUNT_FROZEN
        return None

    # -- calculation ---------------------------------------------------------------------------

    async def _calculate(
        self,
        *,
        rule_set: Any,
        receipt: Any,
        terminal: Any,
        member: Member | None,
        at: datetime,
        redemption: rules.RedemptionRequest,
        views: Sequence[wallet_pb2.AccountBalanceView] | None,
    ) -> Any:
        outlet = rulesets.outlet_facts(terminal)
        facts = None
        if member is not None:
            windows = sorted(
                rules.spend_windows(rule_set, outlet=outlet, at=at), key=lambda w: (w.first_day, w.last_day)
            )
            history = store.NO_HISTORY
            if rule_set.reads_member_history:
                async with self.pool.acquire() as connection:
                    history = await store.member_history(
                        connection, member.member_id, [(w.first_day, w.last_day) for w in windows]
                    )
            facts = rulesets.member_facts(
                member.resolution,
                purchase_count=history.purchase_count,
                app_purchase_count=history.app_purchase_count,
                rule_uses=history.rule_uses,
                spend_by_window={w: history.spend_by_window[(w.first_day, w.last_day)] for w in windows},
            )
        spendable = None
        blocked = None
        if member is not None and views is not None:
            spendable = sum(
                max(view.balance.available.amount_minor, 0)
                for view in views
                if view.spendable
                and not view.balance.currency_code
                and view.effective_state == wallet_pb2.ACCOUNT_STATE_ACTIVE
            )
            blocked = self._redemption_blocked(member, views)
        return rules.calculate(
            rule_set,
            receipt=receipt,
            outlet=outlet,
            member=facts,
            at=at,
            redemption=redemption,
            spendable_points=spendable,
            redemption_blocked=blocked,
            identified_by_card_or_qr=member is not None
            and member.resolution.identified_by
            in (
                cards_pb2.IDENTIFIER_TYPE_CARD_NUMBER,
                cards_pb2.IDENTIFIER_TYPE_QR_TOKEN,
                cards_pb2.IDENTIFIER_TYPE_MEMBER_ID,
            ),
        )

    async def calculate(self, request: p.CalculateRequest) -> p.CalculateResponse:
        terminal = await self.context.terminal(request.terminal_id)
        settings = await self.context.settings()
        receipt = rulesets.receipt_from_request(request.receipt, settings=settings, terminal=terminal, field="receipt")
        member = None
        views = None
        if request.HasField("member") and request.member.WhichOneof("kind"):
            member = await self._member(
                program_id=settings.program_id,
                identifier=request.member,
                terminal_id=terminal.terminal_id,
                with_balances=True,
            )
            views = member.views
        cached = await self.context.rule_set_now()
        calculation = await self._calculate(
            rule_set=cached.rule_set,
            receipt=receipt,
            terminal=terminal,
            member=member,
            at=datetime.now().astimezone(),
            redemption=_redemption_request(request, settings),
            views=views,
        )
        return p.CalculateResponse(
            calculation=rulesets.calculation_to_proto(calculation, settings=settings),
            balances=[view.balance for view in views or ()],
        )

    # -- purchase and authorization --------------------------------------------------------------

    async def purchase(self, request: p.PurchaseRequest) -> p.PurchaseResponse:
        return await self._once(
            request,
            method="Purchase",
            response_type=p.PurchaseResponse,
            work=lambda skip_lookup: self._sale(
                request, method="Purchase", response_type=p.PurchaseResponse, authorize=False, skip_lookup=skip_lookup
            ),
        )

    async def authorize(self, request: p.AuthorizeRequest) -> p.AuthorizeResponse:
        return await self._once(
            request,
            method="Authorize",
            response_type=p.AuthorizeResponse,
            work=lambda skip_lookup: self._sale(
                request, method="Authorize", response_type=p.AuthorizeResponse, authorize=True, skip_lookup=skip_lookup
            ),
        )

    async def _sale(
        self, request: Any, *, method: str, response_type: type[ResponseT], authorize: bool, skip_lookup: bool
    ) -> ResponseT:
        terminal = await self.context.terminal(request.terminal_id)
        settings = await self.context.settings()
        spec = SaleSpec(
            method=method,
            key=request.idempotency_key.key,
            digest=fingerprint(method, request),
            at=datetime.now().astimezone(),
            offline=False,
            hold_ttl_s=_authorization_ttl_s(request, settings) if authorize else 0,
            cashier_id=request.cashier_id,
            skip_lookup=skip_lookup,
        )
        return await self._record_sale(request, spec, terminal, response_type)

    async def _record_sale(self, sale: Any, spec: SaleSpec, terminal: Any, response_type: type[ResponseT]) -> ResponseT:
        """A sale (Purchase, Authorize, an offline accrual): decide it, record it with its plan,
        then drive the plan (see the module docstring)."""
        settings = await self.context.settings()
        receipt = rulesets.receipt_from_request(
            sale.receipt, settings=settings, terminal=terminal, field="receipt", receipt_id_required=True
        )
        if not spec.skip_lookup:
            async with self.pool.acquire() as connection:
                existing = await store.find_by_key(connection, terminal_id=terminal.terminal_id, key=spec.key)
            if existing is not None:
                return await self._replay(existing, spec.digest, response_type)
        operation_id = new_operation_id()
        base = _operation_base(
            operation_id=operation_id,
            terminal=terminal,
            request=sale,
            receipt_id=sale.receipt.receipt_id,
            now=spec.at,
            type_=OperationType.PURCHASE,
        )
        base.idempotency_key = spec.key
        base.cashier_id = spec.cashier_id
        base.offline = spec.offline
        if spec.offline:
            base.create_time.GetCurrentTime()
        try:
            redemption = _redemption_request(sale, settings)
            member = await self._member(
                program_id=settings.program_id,
                identifier=sale.member,
                terminal_id=terminal.terminal_id,
                with_balances=bool(redemption.points or redemption.maximum),
            )
            base.member_id = member.member_id
            base.identified_by = IDENTIFIED_BY.get(member.resolution.identified_by, p.IDENTIFICATION_METHOD_UNSPECIFIED)
            base.masked_card_number = masked_card(member.resolution.card_number)
            views = member.views
            cached = await (self.context.rule_set_at(spec.at) if spec.offline else self.context.rule_set_now())
            with STEPS["calculate"].time():
                calculation = await self._calculate(
                    rule_set=cached.rule_set,
                    receipt=receipt,
                    terminal=terminal,
                    member=member,
                    at=spec.at,
                    redemption=redemption,
                    views=views,
                )
            if calculation.redemption_refusal is not None:
                raise DomainError(
                    calculation.redemption_refusal,
                    f"the points cannot be spent: {calculation.redemption_refusal.value}",
                )
            base.rule_set_version = cached.version
            base.risk_outcome = await self._assess(base)
            accounts = await self._accounts(settings, member)
        except DomainError as refusal:
            if refusal.reason in (Reason.INVALID_ARGUMENT, Reason.DEPENDENCY_UNAVAILABLE, Reason.TERMINAL_NOT_FOUND):
                raise
            return await self._reject(
                base, refusal, key=spec.key, digest=spec.digest, method=spec.method, response_type=response_type
            )
        transfers, postings = ops.sale_transfers(
            operation_id=operation_id,
            accounts=accounts,
            redemption=calculation.redemption,
            accrual_parts=rulesets.accrual_part_plans(calculation),
            hold_timeout_s=spec.hold_ttl_s,
            imported_time=spec.at if spec.offline else None,
        )
        base.purchase.calculation.CopyFrom(rulesets.calculation_to_proto(calculation, settings=settings))
        target = OperationState.AUTHORIZED if spec.hold_ttl_s else OperationState.CAPTURED
        expire_time = spec.at + timedelta(seconds=spec.hold_ttl_s) if spec.hold_ttl_s else None
        if expire_time is not None:
            base.purchase.authorization_expire_time.FromDatetime(expire_time)
        base.state = p.OPERATION_STATE_PROCESSING
        new = store.NewOperation(
            operation_id=operation_id,
            type=OperationType.PURCHASE,
            state=OperationState.PROCESSING,
            terminal_id=terminal.terminal_id,
            outlet_id=terminal.outlet_id,
            partner_id=terminal.partner_id,
            member_id=member.member_id,
            receipt_id=sale.receipt.receipt_id,
            idempotency_key=spec.key,
            request_hash=spec.digest,
            method=spec.method,
            offline=spec.offline,
            original_operation_id=None,
            effective_time=spec.at,
            lease_s=self.settings.lease_s,
            expire_time=expire_time,
            operation=base.SerializeToString(),
            receipt=sale.receipt.SerializeToString(),
            plan=store.Plan(target=target, transfers=tuple(transfers)),
            postings=postings,
        )
        cancelled_by = None
        recorded = None
        if spec.offline:
            async with self.pool.acquire() as connection:
                inserted, cancelled_by = await store.insert_offline_sale(connection, new)
        else:
            with STEPS["record_plan"].time():
                recorded = await self.writes.insert(new)
            inserted = recorded is not None
        existing = None
        if not inserted and cancelled_by is None:
            async with self.pool.acquire() as connection:
                existing = await store.find_by_key(connection, terminal_id=terminal.terminal_id, key=spec.key)
        if cancelled_by is not None:
            return await self._record_cancelled_sale(new, base, cancelled_by, response_type)
        if not inserted:
            if existing is not None:
                return await self._replay(existing, spec.digest, response_type)
            live = await self._live_purchase(terminal.terminal_id, sale.receipt.receipt_id)
            taken = DomainError(
                Reason.ALREADY_EXISTS,
                f"receipt {sale.receipt.receipt_id!r} already has a live purchase",
                metadata={"resourceType": "Operation", "resourceId": live},
            )
            return await self._reject(
                base, taken, key=spec.key, digest=spec.digest, method=spec.method, response_type=response_type
            )
        if recorded is not None:
            return await self._drive(recorded, response_type)
        return await self._drive_new(operation_id, response_type)

    async def _record_cancelled_sale(
        self, new: store.NewOperation, base: p.Operation, cancelled_by: str, response_type: type[ResponseT]
    ) -> ResponseT:
        """An offline sale whose cancel arrived first: recorded VOIDED, without points."""
        base.state = p.OPERATION_STATE_VOIDED
        base.purchase.void_time.GetCurrentTime()
        base.purchase.refund_operation_ids.append(cancelled_by)
        response = response_type(operation=base)
        voided = replace(
            new,
            state=OperationState.VOIDED,
            lease_s=0,
            operation=base.SerializeToString(),
            plan=store.NO_PLAN,
            postings=[],
            response=response.SerializeToString(),
        )
        earlier = await self._record_finished(voided, response_type)
        return earlier if earlier is not None else response

    async def _live_purchase(self, terminal_id: str, receipt_id: str) -> str:
        async with self.pool.acquire() as connection:
            row = await store.find_purchase_by_receipt(connection, terminal_id=terminal_id, receipt_id=receipt_id)
        return row.operation_id if row is not None else ""

    async def _assess(self, operation: p.Operation) -> p.RiskOutcome.ValueType:
        """The anti-fraud call site (antifraud.v1 Assess); not wired yet, see the module docstring."""
        return p.RISK_OUTCOME_NOT_ASSESSED

    async def _accounts(self, settings: Any, member: Member) -> ops.Accounts:
        system = await self._system_accounts(settings)
        earning = {account.kind: account.account_id for account in member.sub_accounts}
        if member.resolution.account_id:  # a card bound to its own sub-account earns and spends there
            earning[self.settings.points_kind] = member.resolution.account_id
        spending = tuple(
            (account.account_id, account.kind, 0)
            for account in member.sub_accounts
            if account.spendable and account.unit.type == wallet_pb2.UNIT_TYPE_POINTS
        )
        return replace(system, earning=earning, spending=spending)

    # -- replays, refusals and the saga's end ------------------------------------------------------

    async def _replay(self, row: store.OperationRow, digest: bytes, response_type: type[ResponseT]) -> ResponseT:
        if row.request_hash != digest:
            raise _key_reused(row.idempotency_key)
        if row.state is OperationState.REJECTED:
            raise _stored_refusal(row)
        if row.response is not None:
            response = response_type()
            response.ParseFromString(row.response)
            return response
        if row.state is OperationState.PROCESSING:
            async with self.pool.acquire() as connection:
                claimed = await store.claim(connection, row.operation_id, lease_s=self.settings.lease_s)
            if claimed is None:
                raise DomainError(
                    Reason.REQUEST_IN_PROGRESS,
                    f"the request with key {row.idempotency_key!r} is still running; retry with the same key",
                    metadata={"idempotencyKey": row.idempotency_key},
                )
            return await self._drive(claimed, response_type)
        raise RuntimeError(f"operation {row.operation_id} has no response in state {row.state.name}")

    async def _reject(
        self,
        base: p.Operation,
        refusal: DomainError,
        *,
        key: str,
        digest: bytes,
        method: str,
        response_type: type[ResponseT],
    ) -> ResponseT:
        """Record a definite refusal under the key (replayed for the same key) and raise it."""
        base.state = p.OPERATION_STATE_REJECTED
        base.rejection_reason = reason_value(refusal.reason)
        base.rejection_message = refusal.message
        base.ClearField("purchase")
        rejected = _row_of(
            base,
            state=OperationState.REJECTED,
            key=key,
            digest=digest,
            method=method,
            response=json.dumps({"metadata": dict(refusal.metadata)}).encode(),
        )
        earlier = await self._record_finished(rejected, response_type)
        if earlier is not None:
            return earlier
        raise refusal

    async def _drive(self, row: store.OperationRow, response_type: type[ResponseT]) -> ResponseT:
        """Send the operation's plan to the wallet and record the outcome (the saga's steps 2-3)."""
        target, transfers = row.plan.target, row.plan.transfers
        # Releasing holds (void, expiry) is not a chain: each release reaches the goal on its own,
        # also when the wallet already released the hold at its deadline.
        releasing = target in (OperationState.VOIDED, OperationState.EXPIRED)
        chain = [_to_wallet(t, row, linked=not releasing and i < len(transfers) - 1) for i, t in enumerate(transfers)]
        crash_point(self.settings, "after_insert")
        with STEPS["wallet"].time():
            results = await self.downstream.transfer(chain)
        crash_point(self.settings, "after_wallet")
        operation = p.Operation()
        operation.ParseFromString(row.operation)
        refusal = wallet_failure([r for r in results if not (releasing and r.code in HOLD_GONE)])
        now = datetime.now().astimezone()
        operation.update_time.FromDatetime(now)
        if refusal is not None:
            return await self._finish_refused(row, operation, refusal)
        member_accounts = {posting.account_id for posting in row.postings}
        balances = balances_after(results, member_accounts)
        if not balances and operation.member_id:
            views = await self._member_balances(operation)
            balances = [view.balance for view in views]
        operation.state = _state_value(target)
        if target is OperationState.CAPTURED:
            operation.purchase.capture_time.FromDatetime(now)
        if target in (OperationState.VOIDED, OperationState.EXPIRED):
            operation.purchase.void_time.FromDatetime(now)
        settings = await self.context.settings()
        zone = ZoneInfo(settings.time_zone)
        if row.type is OperationType.PURCHASE:
            response = response_type(operation=operation, balances=balances)
            outcome = store.Outcome(
                operation_id=row.operation_id,
                state=target,
                operation=operation.SerializeToString(),
                response=response.SerializeToString(),
                expire_time=row.expire_time if target is OperationState.AUTHORIZED else None,
                stats=_stats_change(operation, row, zone) if target is OperationState.CAPTURED else None,
                events=_events(operation, balances, target),
            )
            with STEPS["record_outcome"].time():
                await self.writes.record(outcome)
            crash_point(self.settings, "after_record")
            return response
        # A refund or cancel settles its purchase in the same transaction as its own outcome.
        async with self.pool.acquire() as connection, connection.transaction():
            purchase, purchase_receipt = await self._settle_purchase(connection, row, operation, now)
            response = _refund_response(response_type, operation, purchase, balances)
            await store.record_stats(connection, _refund_stats(operation, purchase, purchase_receipt, zone))
            await store.update(
                connection,
                row.operation_id,
                state=target,
                operation=operation.SerializeToString(),
                response=response.SerializeToString(),
            )
            await store.add_events(connection, _refund_events(operation, purchase, balances))
        crash_point(self.settings, "after_record")
        return response

    # -- capture, void, expiry -------------------------------------------------------------------

    async def find_reference(self, terminal: Any, reference: p.OperationReference) -> store.OperationRow:
        """The operation a request refers to; other partners' operations are refused."""
        kind = reference.WhichOneof("kind")
        async with self.pool.acquire() as connection:
            if kind == "operation_id":
                row = await store.find(connection, reference.operation_id)
            elif kind == "receipt":
                row = await store.find_purchase_by_receipt(
                    connection,
                    terminal_id=reference.receipt.terminal_id or terminal.terminal_id,
                    receipt_id=reference.receipt.receipt_id,
                )
            else:
                row = await store.find_by_key(
                    connection, terminal_id=terminal.terminal_id, key=reference.idempotency_key
                )
        if row is None:
            raise DomainError(Reason.OPERATION_NOT_FOUND, "no such operation")
        if row.partner_id != terminal.partner_id:
            raise DomainError(Reason.PERMISSION_DENIED, "the operation belongs to another partner")
        return row

    async def capture(self, request: p.CaptureRequest) -> p.CaptureResponse:
        terminal = await self.context.terminal(request.terminal_id)
        return await run_once(
            self.pool,
            scope=f"terminal:{terminal.terminal_id}",
            key=request.idempotency_key.key,
            method="Capture",
            request=request,
            response_type=p.CaptureResponse,
            claim_timeout=timedelta(seconds=self.settings.lease_s),
            work=lambda: self._capture(request, terminal),
        )

    async def _capture(self, request: p.CaptureRequest, terminal: Any) -> p.CaptureResponse:
        row = await self.find_reference(terminal, request.reference)
        key = request.idempotency_key.key
        if row.resolution_key == key:  # this very request got further before (a crash, a retry)
            return await self._resume(row, p.CaptureResponse)
        self._check_resolvable(row, capture=True)
        settings = await self.context.settings()
        authorized = p.Operation()
        authorized.ParseFromString(row.operation)
        held_redemption = authorized.purchase.calculation.redemption.amount_minor
        final_redemption = (
            request.final_redeem_points.amount_minor if request.HasField("final_redeem_points") else held_redemption
        )
        if final_redemption > held_redemption:
            raise invalid_argument([FieldViolation("final_redeem_points", f"more than the {held_redemption} held")])
        calculation_proto = authorized.purchase.calculation
        receipt_bytes = row.receipt
        if request.HasField("final_receipt") or final_redemption != held_redemption:
            original = types_pb2.Receipt()
            original.ParseFromString(row.receipt or b"")
            final = request.final_receipt if request.HasField("final_receipt") else original
            _check_subset(final, original)
            receipt = rulesets.receipt_from_request(final, settings=settings, terminal=terminal, field="final_receipt")
            member = await self._member(
                program_id=settings.program_id,
                identifier=types_pb2.MemberIdentifier(member_id=row.member_id),
                terminal_id=terminal.terminal_id,
            )
            cached = await self.context.rule_set_version(authorized.rule_set_version)
            calculation = await self._calculate(
                rule_set=cached.rule_set,
                receipt=receipt,
                terminal=terminal,
                member=member,
                at=authorized.effective_time.ToDatetime(tzinfo=UTC),
                redemption=rules.RedemptionRequest(points=final_redemption),
                views=None,
            )
            calculation_proto = rulesets.calculation_to_proto(calculation, settings=settings)
            parts = rulesets.accrual_part_plans(calculation)
            receipt_bytes = final.SerializeToString()
            accounts = await self._accounts(settings, member)
        else:
            parts = rulesets.accrual_part_plans_from_proto(calculation_proto)
            accounts = ops.Accounts(issuance="", redemption="", earning={}, spending=())
        transfers, postings = ops.capture_transfers(
            operation_id=row.operation_id,
            holds=row.postings,
            redemption=final_redemption,
            accrual_parts=parts,
            accounts=accounts,
        )
        authorized.purchase.calculation.CopyFrom(calculation_proto)
        authorized.purchase.released_redemption.CopyFrom(
            types_pb2.Points(amount_minor=held_redemption - final_redemption, scale=settings.point_scale)
        )
        if request.fiscal_document_number:
            authorized.fiscal_document_number = request.fiscal_document_number
        return await self._move_on(
            row,
            authorized,
            plan=store.Plan(OperationState.CAPTURED, tuple(transfers)),
            postings=postings,
            receipt=receipt_bytes,
            resolution_key=key,
            response_type=p.CaptureResponse,
        )

    async def void(self, request: p.VoidRequest) -> p.VoidResponse:
        terminal = await self.context.terminal(request.terminal_id)
        return await run_once(
            self.pool,
            scope=f"terminal:{terminal.terminal_id}",
            key=request.idempotency_key.key,
            method="Void",
            request=request,
            response_type=p.VoidResponse,
            claim_timeout=timedelta(seconds=self.settings.lease_s),
            work=lambda: self._void(request, terminal),
        )

    async def _void(self, request: p.VoidRequest, terminal: Any) -> p.VoidResponse:
        row = await self.find_reference(terminal, request.reference)
        if row.resolution_key == request.idempotency_key.key:
            return await self._resume(row, p.VoidResponse)
        if row.state in (OperationState.VOIDED, OperationState.EXPIRED):  # the goal is reached already
            return await self._resume(row, p.VoidResponse)
        self._check_resolvable(row, capture=False)
        operation = p.Operation()
        operation.ParseFromString(row.operation)
        return await self._move_on(
            row,
            operation,
            plan=store.Plan(
                OperationState.VOIDED, tuple(ops.void_transfers(operation_id=row.operation_id, holds=row.postings))
            ),
            postings=[],
            receipt=None,
            resolution_key=request.idempotency_key.key,
            response_type=p.VoidResponse,
        )

    async def expire(self, operation_id: str) -> bool:
        """Void an authorization past its expiry (the expiry worker). False if someone else moved it."""
        async with self.pool.acquire() as connection:
            row = await store.find(connection, operation_id)
        if row is None or row.state is not OperationState.AUTHORIZED or row.expire_time is None:
            return False
        if row.expire_time > row.now:
            return False
        operation = p.Operation()
        operation.ParseFromString(row.operation)
        await self._move_on(
            row,
            operation,
            plan=store.Plan(
                OperationState.EXPIRED, tuple(ops.void_transfers(operation_id=row.operation_id, holds=row.postings))
            ),
            postings=[],
            receipt=None,
            resolution_key=None,
            response_type=p.VoidResponse,
        )
        return True

    def _check_resolvable(self, row: store.OperationRow, *, capture: bool) -> None:
        if row.type is not OperationType.PURCHASE or row.state is OperationState.REJECTED:
            raise DomainError(Reason.INVALID_STATE_TRANSITION, "not an authorized purchase")
        if row.state is OperationState.PROCESSING:
            raise DomainError(Reason.REQUEST_IN_PROGRESS, "the operation is being processed; retry with the same key")
        if row.state in (OperationState.VOIDED, OperationState.EXPIRED):
            reason = Reason.HOLD_EXPIRED if row.state is OperationState.EXPIRED else Reason.HOLD_ALREADY_RESOLVED
            raise DomainError(reason, f"the authorization is {row.state.name.lower()}")
        if row.state is not OperationState.AUTHORIZED:
            raise DomainError(Reason.HOLD_ALREADY_RESOLVED, "the authorization was already captured; use Refund")
        if capture and row.expire_time is not None and row.expire_time <= row.now:
            raise DomainError(Reason.HOLD_EXPIRED, "the authorization expired; authorize again with a new key")

    async def _move_on(
        self,
        row: store.OperationRow,
        operation: p.Operation,
        *,
        plan: store.Plan,
        postings: Sequence[Posting],
        receipt: bytes | None,
        resolution_key: str | None,
        response_type: type[ResponseT],
    ) -> ResponseT:
        """AUTHORIZED -> PROCESSING with the plan (the recovery point), then drive it."""
        operation.state = p.OPERATION_STATE_PROCESSING  # what GetOperation shows meanwhile
        async with self.pool.acquire() as connection, connection.transaction():
            current = await store.find(connection, row.operation_id, for_update=True)
            if current is None or current.state is not OperationState.AUTHORIZED:
                raise DomainError(
                    Reason.CONCURRENT_MODIFICATION, "the operation changed meanwhile; retry with the same key"
                )
            await store.update(
                connection,
                row.operation_id,
                state=OperationState.PROCESSING,
                operation=operation.SerializeToString(),
                plan=plan,
                postings=list(postings) if postings else None,
                receipt=receipt,
                lease_s=self.settings.lease_s,
                resolution_key=resolution_key,
                expire_time=row.expire_time,
            )
            moved = await store.find(connection, row.operation_id)
        if moved is None:
            raise RuntimeError(f"operation {row.operation_id} vanished")
        return await self._drive(moved, response_type)

    async def _resume(self, row: store.OperationRow, response_type: type[ResponseT]) -> ResponseT:
        """The answer for an operation this request (or the worker) already moved on."""
        if row.state is OperationState.PROCESSING:
            async with self.pool.acquire() as connection:
                claimed = await store.claim(connection, row.operation_id, lease_s=self.settings.lease_s)
            if claimed is None:
                raise DomainError(
                    Reason.REQUEST_IN_PROGRESS, "the operation is being processed; retry with the same key"
                )
            return await self._drive(claimed, response_type)
        operation = p.Operation()
        operation.ParseFromString(row.operation)
        views = await self._member_balances(operation)
        return response_type(operation=operation, balances=[view.balance for view in views])

    async def recover(self, operation_id: str) -> None:
        """Drive a PROCESSING operation nobody drives any more to its end (the recovery worker)."""
        async with self.pool.acquire() as connection:
            claimed = await store.claim(connection, operation_id, lease_s=self.settings.lease_s)
        if claimed is None:
            return
        response_type = RESPONSE_TYPES.get(claimed.method, p.PurchaseResponse)
        try:
            await self._drive(claimed, response_type)
        except DomainError as refusal:
            if refusal.reason is Reason.DEPENDENCY_UNAVAILABLE:
                raise
            # A definite refusal is recorded by _drive; nothing more to do.

    # -- refunds -----------------------------------------------------------------------------------

    async def refund(self, request: p.RefundRequest) -> p.RefundResponse:
        if request.dry_run:
            terminal = await self.context.terminal(request.terminal_id)
            returned = None if request.mode == p.REFUND_MODE_FULL else rulesets.returned_quantities(request.lines)
            return await self._preview_refund(terminal, request, returned)
        return await self._once(
            request, method="Refund", response_type=p.RefundResponse, work=lambda _: self._refund(request)
        )

    async def _refund(self, request: p.RefundRequest) -> p.RefundResponse:
        terminal = await self.context.terminal(request.terminal_id)
        returned = None if request.mode == p.REFUND_MODE_FULL else rulesets.returned_quantities(request.lines)
        digest = fingerprint("Refund", request)
        key = request.idempotency_key.key
        async with self.pool.acquire() as connection:
            existing = await store.find_by_key(connection, terminal_id=terminal.terminal_id, key=key)
        if existing is not None:
            return await self._replay(existing, digest, p.RefundResponse)
        now = datetime.now().astimezone()
        base = _operation_base(
            operation_id=new_operation_id(),
            terminal=terminal,
            request=request,
            receipt_id=request.refund_receipt_id,
            now=now,
            type_=OperationType.REFUND,
        )
        return await self._refund_saga(
            base,
            lambda: self.find_reference(terminal, request.original),
            returned=returned,
            key=key,
            digest=digest,
            method="Refund",
            response_type=p.RefundResponse,
        )

    async def _refund_saga(
        self,
        base: p.Operation,
        locate: Callable[[], Awaitable[store.OperationRow]],
        *,
        returned: dict[int, int] | None,
        key: str,
        digest: bytes,
        method: str,
        response_type: type[ResponseT],
    ) -> ResponseT:
        """Plan a refund (or cancel) from the purchase as it stands, record it, and drive it;
        planned again if another refund changed the purchase in between."""
        for _ in range(REFUND_PLAN_ATTEMPTS):
            try:
                original = await locate()
                base.member_id = original.member_id
                refund = await self._refund_operation(base, original, returned=returned, full=returned is None)
            except DomainError as refusal:
                if refusal.reason in NOT_RECORDED:
                    raise
                return await self._reject(
                    base, refusal, key=key, digest=digest, method=method, response_type=response_type
                )
            new = _new_refund(refund.operation, original, refund.draft, key=key, digest=digest, method=method)
            new = replace(new, lease_s=self.settings.lease_s)
            async with self.pool.acquire() as connection:
                outcome = await store.insert_refund(connection, new, planned_from=original.update_time)
                existing = None
                if outcome is store.RefundInsert.KEY_TAKEN:
                    existing = await store.find_by_key(connection, terminal_id=new.terminal_id, key=key)
            if outcome is store.RefundInsert.INSERTED:
                return await self._drive_new(new.operation_id, response_type)
            if existing is not None:
                return await self._replay(existing, digest, response_type)
            if outcome is store.RefundInsert.IN_FLIGHT:
                raise DomainError(
                    Reason.REQUEST_IN_PROGRESS, "another refund of this purchase is being processed; retry shortly"
                )
        raise DomainError(Reason.CONCURRENT_MODIFICATION, "the purchase kept changing; retry with the same key")

    async def _refund_operation(
        self, base: p.Operation, original: store.OperationRow, *, returned: dict[int, int] | None, full: bool
    ) -> PlannedRefund:
        """The refund (or cancel) of `original` as it stands now: its plan and its Operation."""
        refunding.check_refundable(original)
        settings = await self.context.settings()
        purchase = p.Operation()
        purchase.ParseFromString(original.operation)
        current = await self.context.rule_set_now()
        at_purchase = await self.context.rule_set_version(purchase.rule_set_version)
        facts, pending = await self._refund_facts(original, settings)
        draft = refunding.draft_refund(
            original,
            purchase,
            returned=returned,
            refund_operation_id=base.operation_id,
            rule_set=current.rule_set,
            facts=facts,
            accounts=await self._system_accounts(settings),
        )
        operation = p.Operation()
        operation.CopyFrom(base)
        operation.rule_set_version = current.version
        operation.identified_by = purchase.identified_by
        operation.masked_card_number = purchase.masked_card_number
        details = rulesets.refund_details_to_proto(
            draft.plan,
            original_operation_id=original.operation_id,
            full=full,
            rule_set=at_purchase.rule_set,  # money values at the purchase's point value
            settings=settings,
        )
        details.shortfall_policy = rulesets.shortfall_to_proto(draft.policy)
        if operation.type == p.OPERATION_TYPE_CANCEL:
            operation.cancel.cancelled_operation_id = original.operation_id
            operation.cancel.totals.CopyFrom(details.totals)
        else:
            operation.refund.CopyFrom(details)
        return PlannedRefund(operation, draft, pending)

    async def _refund_facts(
        self, original: store.OperationRow, settings: Any
    ) -> tuple[refunding.WalletFacts | None, dict[str, int]]:
        """What the wallet says about the accounts the purchase earned on (None: it earned nothing)."""
        accrual_accounts = {p_.account_id: p_.account_kind for p_ in original.postings if p_.leg is ops.Leg.ACCRUAL}
        if not accrual_accounts:
            return None, {}
        pending: dict[str, int] = {}
        for account_id in accrual_accounts:
            pending.update(await self.downstream.pending_lots(account_id))
        views = await self.downstream.member_balances(program_id=settings.program_id, member_id=original.member_id)
        available = {view.balance.account_id: view.balance.available.amount_minor for view in views}
        kind = next(iter(accrual_accounts.values()))
        debt_limit = await self.downstream.debt_limit(program_id=settings.program_id, kind=kind)
        return refunding.WalletFacts(pending_lots=pending, available=available, debt_limit=debt_limit), pending

    async def _system_accounts(self, settings: Any) -> ops.Accounts:
        """The program's issuance and redemption accounts (no member accounts)."""
        points_unit = wallet_pb2.Unit(type=wallet_pb2.UNIT_TYPE_POINTS, scale=settings.point_scale)
        issuance = await self.downstream.system_account(
            program_id=settings.program_id, role=wallet_pb2.SYSTEM_ACCOUNT_ROLE_ISSUANCE, unit=points_unit
        )
        redemption = await self.downstream.system_account(
            program_id=settings.program_id, role=wallet_pb2.SYSTEM_ACCOUNT_ROLE_REDEMPTION, unit=points_unit
        )
        return ops.Accounts(issuance=issuance, redemption=redemption, earning={}, spending=())

    async def _preview_refund(
        self, terminal: Any, request: p.RefundRequest, returned: dict[int, int] | None
    ) -> p.RefundResponse:
        """dry_run: the refund as it would be now; nothing is recorded or moved."""
        original = await self.find_reference(terminal, request.original)
        base = _operation_base(
            operation_id="",
            terminal=terminal,
            request=request,
            receipt_id=request.refund_receipt_id,
            now=datetime.now().astimezone(),
            type_=OperationType.REFUND,
        )
        base.member_id = original.member_id
        base.state = p.OPERATION_STATE_UNSPECIFIED
        refund = await self._refund_operation(base, original, returned=returned, full=returned is None)
        settings = await self.context.settings()
        views = await self.downstream.member_balances(program_id=settings.program_id, member_id=original.member_id)
        member_accounts = {posting.account_id for posting in original.postings}
        balances = refunding.projected_balances(
            [view for view in views if view.balance.account_id in member_accounts] or views,
            refund.draft.transfers,
            refund.pending_lots,
        )
        purchase = p.Operation()
        purchase.ParseFromString(original.operation)
        _settle(purchase, refund.operation, refund.draft.refunded_after, original.receipt)
        return p.RefundResponse(refund=refund.operation, original=purchase, balances=balances, dry_run=True)

    async def _drive_new(self, operation_id: str, response_type: type[ResponseT]) -> ResponseT:
        async with self.pool.acquire() as connection:
            row = await store.find(connection, operation_id)
        if row is None:
            raise RuntimeError(f"operation {operation_id} vanished")
        return await self._drive(row, response_type)

    async def _settle_purchase(
        self, connection: Any, row: store.OperationRow, refund: p.Operation, now: datetime
    ) -> tuple[p.Operation, bytes | None]:
        """Record on the purchase what a completed refund or cancel took (the refund's row carries
        the purchase's postings and refunded lines as they are after it)."""
        if row.original_operation_id is None:
            raise RuntimeError(f"refund {row.operation_id} has no purchase")
        purchase_row = await store.find(connection, row.original_operation_id, for_update=True)
        if purchase_row is None:
            raise RuntimeError(f"purchase {row.original_operation_id} vanished")
        purchase = p.Operation()
        purchase.ParseFromString(purchase_row.operation)
        _settle(purchase, refund, row.refunded, purchase_row.receipt)
        purchase.update_time.FromDatetime(now)
        await store.update(
            connection,
            purchase_row.operation_id,
            state=OperationState(purchase.state),
            operation=purchase.SerializeToString(),
            postings=row.postings,
            refunded=row.refunded,
        )
        return purchase, purchase_row.receipt

    # -- offline -----------------------------------------------------------------------------------

    async def upload_offline_batch(self, request: p.UploadOfflineBatchRequest) -> p.UploadOfflineBatchResponse:
        terminal = await self.context.terminal(request.terminal_id)
        if not terminal.offline_allowed:
            raise DomainError(Reason.PERMISSION_DENIED, f"terminal {terminal.terminal_id} may not work offline")
        return await run_once(
            self.pool,
            scope=f"terminal:{terminal.terminal_id}",
            key=request.idempotency_key.key,
            method="UploadOfflineBatch",
            request=request,
            response_type=p.UploadOfflineBatchResponse,
            work=lambda: self._upload(request, terminal),
        )

    async def _upload(self, request: p.UploadOfflineBatchRequest, terminal: Any) -> p.UploadOfflineBatchResponse:
        """The operations one after another, oldest first (a cancel may follow its sale)."""
        response = p.UploadOfflineBatchResponse()
        for index, operation in enumerate(request.operations):
            result = await self._offline_operation(operation, terminal)
            result.index = index
            result.idempotency_key = operation.idempotency_key.key
            response.results.append(result)
        outcomes = [result.outcome for result in response.results]
        response.accepted_count = outcomes.count(p.OFFLINE_OPERATION_OUTCOME_ACCEPTED)
        response.rejected_count = outcomes.count(p.OFFLINE_OPERATION_OUTCOME_REJECTED)
        response.retry_count = outcomes.count(p.OFFLINE_OPERATION_OUTCOME_RETRY)
        return response

    async def _offline_operation(self, operation: p.OfflineOperation, terminal: Any) -> p.OfflineOperationResult:
        kind = operation.WhichOneof("kind")
        method = "OfflineCancel" if kind == "cancel" else "OfflineAccrual"
        key = operation.idempotency_key.key
        spec = SaleSpec(
            method=method,
            key=key,
            digest=fingerprint(method, operation),
            at=operation.occurred_time.ToDatetime(tzinfo=UTC),
            offline=True,
            hold_ttl_s=0,
            cashier_id=operation.cashier_id,
        )
        try:
            violations = offline_violations(operation)
            if violations:
                raise invalid_argument(violations)
            async with self.pool.acquire() as connection:
                existing = await store.find_by_key(connection, terminal_id=terminal.terminal_id, key=key)
            if existing is not None:  # a resend: the first answer, whatever the clock says now
                result = await self._replay(existing, spec.digest, p.OfflineOperationResult)
            else:
                await self._check_offline_age(spec.at)
                if kind == "cancel":
                    result = await self._offline_cancel(operation, spec, terminal)
                else:
                    if operation.accrual.member.WhichOneof("kind") == "qr_token":
                        raise DomainError(
                            Reason.QR_TOKEN_EXPIRED, "QR tokens cannot be checked after the fact; send the card number"
                        )
                    result = await self._record_sale(operation.accrual, spec, terminal, p.OfflineOperationResult)
        except DomainError as refusal:
            return await self._offline_refusal(refusal, terminal.terminal_id, key)
        result.outcome = p.OFFLINE_OPERATION_OUTCOME_ACCEPTED
        return result

    async def _check_offline_age(self, at: datetime) -> None:
        settings = await self.context.settings()
        if at < datetime.now(UTC) - settings.offline_max_age:
            raise DomainError(
                Reason.OFFLINE_OPERATION_TOO_OLD,
                f"made {at.isoformat()}, older than the program's offline limit of {settings.offline_max_age}",
            )

    async def _offline_refusal(self, refusal: DomainError, terminal_id: str, key: str) -> p.OfflineOperationResult:
        transient = refusal.reason in OFFLINE_RETRY
        result = p.OfflineOperationResult(
            outcome=p.OFFLINE_OPERATION_OUTCOME_RETRY if transient else p.OFFLINE_OPERATION_OUTCOME_REJECTED,
            error_reason=reason_value(refusal.reason),
            error_message=refusal.message,
        )
        if not transient:
            async with self.pool.acquire() as connection:
                recorded = await store.find_by_key(connection, terminal_id=terminal_id, key=key)
            if recorded is not None:
                result.operation.ParseFromString(recorded.operation)
        return result

    async def _offline_cancel(
        self, operation: p.OfflineOperation, spec: SaleSpec, terminal: Any
    ) -> p.OfflineOperationResult:
        """Cancel a receipt of this terminal: a refund of what is left if it was captured, a void
        if only authorized, remembered for later if its sale has not arrived (processing.proto)."""
        base = _operation_base(
            operation_id=new_operation_id(),
            terminal=terminal,
            request=operation,
            receipt_id=operation.cancel.receipt_id,
            now=spec.at,
            type_=OperationType.CANCEL,
        )
        base.idempotency_key = spec.key
        base.offline = True
        base.create_time.GetCurrentTime()
        base.cancel.reason = operation.cancel.reason
        async with self.pool.acquire() as connection:
            purchase = await store.purchase_to_cancel(
                connection,
                terminal_id=terminal.terminal_id,
                receipt_id=operation.cancel.receipt_id,
                cancel_operation_id=base.operation_id,
            )
        if purchase is None:
            return await self._record_cancel(base, spec, purchase_id="")
        base.member_id = purchase.member_id
        if purchase.state is OperationState.PROCESSING:
            raise DomainError(
                Reason.REQUEST_IN_PROGRESS, "the receipt's sale is being processed; send the cancel again"
            )
        if purchase.state is OperationState.AUTHORIZED:
            await self._void_authorization(purchase, resolution_key=spec.key)
        elif purchase.state in ops.REFUNDABLE:
            return await self._refund_saga(
                base,
                lambda: self._operation(purchase.operation_id),
                returned=None,
                key=spec.key,
                digest=spec.digest,
                method=spec.method,
                response_type=p.OfflineOperationResult,
            )
        # Voided, expired, refunded or rejected: nothing is left to cancel.
        return await self._record_cancel(base, spec, purchase_id=purchase.operation_id)

    async def _void_authorization(self, row: store.OperationRow, *, resolution_key: str) -> None:
        operation = p.Operation()
        operation.ParseFromString(row.operation)
        holds = tuple(ops.void_transfers(operation_id=row.operation_id, holds=row.postings))
        await self._move_on(
            row,
            operation,
            plan=store.Plan(OperationState.VOIDED, holds),
            postings=[],
            receipt=None,
            resolution_key=resolution_key,
            response_type=p.VoidResponse,
        )

    async def _operation(self, operation_id: str) -> store.OperationRow:
        async with self.pool.acquire() as connection:
            row = await store.find(connection, operation_id)
        if row is None:
            raise DomainError(Reason.OPERATION_NOT_FOUND, f"operation {operation_id} not found")
        return row

    async def _record_cancel(self, base: p.Operation, spec: SaleSpec, *, purchase_id: str) -> p.OfflineOperationResult:
        """A cancel that moves nothing: its sale has not arrived, or nothing is left of it."""
        base.state = p.OPERATION_STATE_COMPLETED
        base.cancel.cancelled_operation_id = purchase_id
        result = p.OfflineOperationResult(operation=base)
        cancel = _row_of(
            base,
            state=OperationState.COMPLETED,
            key=spec.key,
            digest=spec.digest,
            method=spec.method,
            original_operation_id=purchase_id or None,
            response=result.SerializeToString(),
        )
        earlier = await self._record_finished(cancel, p.OfflineOperationResult)
        return earlier if earlier is not None else result

    async def _record_finished(self, new: store.NewOperation, response_type: type[ResponseT]) -> ResponseT | None:
        """Record an operation that needs no saga (rejected, or moving nothing): None when it is
        recorded, else the earlier answer of its key (a retry raced this one)."""
        async with self.pool.acquire() as connection:
            inserted = await store.insert(connection, new)
            existing = (
                None
                if inserted
                else await store.find_by_key(connection, terminal_id=new.terminal_id, key=new.idempotency_key)
            )
        if existing is None:
            return None
        return await self._replay(existing, new.request_hash, response_type)

    # -- reads -----------------------------------------------------------------------------------

    async def get_operation(self, request: p.GetOperationRequest) -> p.GetOperationResponse:
        terminal = await self.context.terminal(request.terminal_id)
        row = await self.find_reference(terminal, request.reference)
        operation = p.Operation()
        operation.ParseFromString(row.operation)
        if row.receipt and operation.WhichOneof("details") == "purchase":
            operation.purchase.receipt.ParseFromString(row.receipt)
        return p.GetOperationResponse(operation=operation)

    async def list_operations(
        self, where: store.OperationFilter, *, after: tuple[datetime, str] | None, page_size: int, with_receipts: bool
    ) -> tuple[list[p.Operation], tuple[datetime, str] | None]:
        async with self.pool.acquire() as connection:
            rows = await store.list_operations(connection, where, after=after, limit=page_size + 1)
        operations = []
        for operation_bytes, receipt_bytes, _ in rows[:page_size]:
            operation = p.Operation()
            operation.ParseFromString(operation_bytes)
            if with_receipts and receipt_bytes and operation.WhichOneof("details") == "purchase":
                operation.purchase.receipt.ParseFromString(receipt_bytes)
            operations.append(operation)
        cursor = None
        if len(rows) > page_size:
            last = operations[-1]
            cursor = (rows[page_size - 1][2], last.operation_id)
        return operations, cursor

    async def _member_balances(self, operation: p.Operation) -> list[wallet_pb2.AccountBalanceView]:
        """The member's balances when the operation moved nothing (e.g. a receipt that earns 0)."""
        settings = await self.context.settings()
        return await self.downstream.member_balances(program_id=settings.program_id, member_id=operation.member_id)

    async def _finish_refused(self, row: store.OperationRow, operation: p.Operation, refusal: DomainError) -> NoReturn:
        operation.state = p.OPERATION_STATE_REJECTED
        operation.rejection_reason = reason_value(refusal.reason)
        operation.rejection_message = refusal.message
        async with self.pool.acquire() as connection:
            await store.update(
                connection,
                row.operation_id,
                state=OperationState.REJECTED,
                operation=operation.SerializeToString(),
                response=json.dumps({"metadata": dict(refusal.metadata)}).encode(),
            )
        raise refusal


REFUND_TOTAL_FIELDS = ("amount", "accrual_reversed", "accrual_forgiven", "redemption_restored")


def _refund_totals(operation: p.Operation) -> p.RefundTotals:
    if operation.WhichOneof("details") == "cancel":
        return operation.cancel.totals
    return operation.refund.totals


def _settle(
    purchase: p.Operation, refund: p.Operation, refunded: dict[int, dict[str, int]], receipt: bytes | None
) -> None:
    """The purchase after `refund`: running totals, the refund's id, and its new state."""
    running = purchase.purchase.refunded
    for name in REFUND_TOTAL_FIELDS:
        added = getattr(_refund_totals(refund), name)
        total = getattr(running, name)
        amount = total.amount_minor + added.amount_minor
        total.CopyFrom(added)
        total.amount_minor = amount
    if refund.operation_id:
        purchase.purchase.refund_operation_ids.append(refund.operation_id)
    done = refunding.fully_refunded(receipt, refunded)
    purchase.state = p.OPERATION_STATE_REFUNDED if done else p.OPERATION_STATE_PARTIALLY_REFUNDED


def _new_refund(
    operation: p.Operation,
    purchase: store.OperationRow,
    draft: refunding.RefundDraft,
    *,
    key: str,
    digest: bytes,
    method: str,
) -> store.NewOperation:
    """The refund's row: its plan, and the purchase's postings and refunded lines after it."""
    return _row_of(
        operation,
        state=OperationState.PROCESSING,
        key=key,
        digest=digest,
        method=method,
        original_operation_id=purchase.operation_id,
        plan=store.Plan(OperationState.COMPLETED, tuple(draft.transfers)),
        postings=draft.postings_after,
        refunded=draft.refunded_after,
    )


def _row_of(
    operation: p.Operation, *, state: OperationState, key: str, digest: bytes, method: str, **fields: Any
) -> store.NewOperation:
    """A new row recording `operation` as it stands; `fields` are what differs from an operation
    that has no purchase, plan, lease or response."""
    values: dict[str, Any] = {
        "operation_id": operation.operation_id,
        "type": OperationType(operation.type),
        "state": state,
        "terminal_id": operation.terminal_id,
        "outlet_id": operation.outlet_id,
        "partner_id": operation.partner_id,
        "member_id": operation.member_id,
        "receipt_id": operation.receipt_id,
        "idempotency_key": key,
        "request_hash": digest,
        "method": method,
        "offline": operation.offline,
        "original_operation_id": None,
        "effective_time": operation.effective_time.ToDatetime(tzinfo=UTC),
        "lease_s": 0,
        "expire_time": None,
        "operation": operation.SerializeToString(),
        "receipt": None,
        "plan": store.NO_PLAN,
        "postings": [],
    }
    values.update(fields)
    return store.NewOperation(**values)


def _refund_response(
    response_type: type[ResponseT],
    refund: p.Operation,
    purchase: p.Operation,
    balances: Sequence[types_pb2.AccountBalance],
) -> ResponseT:
    if response_type is p.RefundResponse:
        return p.RefundResponse(refund=refund, original=purchase, balances=balances)  # type: ignore[return-value]
    return response_type(operation=refund, balances=balances)


def _refund_events(
    refund: p.Operation, purchase: p.Operation, balances: Sequence[types_pb2.AccountBalance]
) -> list[store.EventRow]:
    """`refund` (processing.proto, EVENTS): what a completed refund or cancel moved."""
    totals = _refund_totals(refund)
    if not refund.member_id or not (totals.accrual_reversed.amount_minor or totals.redemption_restored.amount_minor):
        return []
    data = {
        "operation_id": refund.operation_id,
        "original_operation_id": purchase.operation_id,
        "member_id": refund.member_id,
        "receipt_id": purchase.receipt_id,
        "outlet_id": refund.outlet_id,
        "operation_time": refund.effective_time.ToDatetime().isoformat() + "Z",
        "points_reversed": totals.accrual_reversed.amount_minor,
        "points_restored": totals.redemption_restored.amount_minor,
        "balance": sum(b.available.amount_minor for b in balances if not b.currency_code),
    }
    return [_event("refund", refund.member_id, data)]


def _refund_stats(
    refund: p.Operation, purchase: p.Operation, receipt: bytes | None, zone: ZoneInfo
) -> store.StatsChange:
    """A refund takes its goods out of the member's spend on the purchase's day (cumulative
    progressive rules); purchase counts and rule uses stay (a return does not undo a visit)."""
    totals = _refund_totals(refund)
    restored_value = refund.refund.redemption_value_restored.amount_minor if refund.HasField("refund") else 0
    if refund.HasField("cancel"):
        calculation = purchase.purchase.calculation
        restored_value = calculation.redemption_value.amount_minor if totals.redemption_restored.amount_minor else 0
    return store.StatsChange(
        member_id=purchase.member_id,
        day=purchase.effective_time.ToDatetime(tzinfo=zone).date(),
        spend=-(totals.amount.amount_minor - restored_value),
    )


def offline_violations(operation: p.OfflineOperation) -> list[FieldViolation]:
    """What is wrong with one uploaded operation (it is REJECTED with INVALID_ARGUMENT)."""
    violations = []
    if not IDEMPOTENCY_KEY.fullmatch(operation.idempotency_key.key):
        violations.append(FieldViolation("idempotency_key.key", "required: 8..128 characters from [A-Za-z0-9._:-]"))
    if not operation.HasField("occurred_time"):
        violations.append(FieldViolation("occurred_time", "required"))
    elif operation.occurred_time.ToDatetime(tzinfo=UTC) > datetime.now(UTC) + OFFLINE_CLOCK_SKEW:
        violations.append(FieldViolation("occurred_time", "more than 5 minutes in the future"))
    if len(operation.cashier_id) > 64:
        violations.append(FieldViolation("cashier_id", "at most 64 characters"))
    kind = operation.WhichOneof("kind")
    if kind is None:
        violations.append(FieldViolation("kind", "required: accrual or cancel"))
    elif kind == "accrual":
        accrual = operation.accrual
        if accrual.member.WhichOneof("kind") not in ("card_number", "phone", "qr_token"):
            violations.append(FieldViolation("accrual.member", "required: card_number or phone"))
        if not accrual.receipt.receipt_id:
            violations.append(FieldViolation("accrual.receipt.receipt_id", "required"))
        if len(accrual.fiscal_document_number) > 64:
            violations.append(FieldViolation("accrual.fiscal_document_number", "at most 64 characters"))
    else:
        if not operation.cancel.receipt_id:
            violations.append(FieldViolation("cancel.receipt_id", "required"))
        if len(operation.cancel.reason) > 256:
            violations.append(FieldViolation("cancel.reason", "at most 256 characters"))
    return violations


def _key_reused(key: str) -> DomainError:
    return DomainError(
        Reason.IDEMPOTENCY_KEY_REUSED,
        f"idempotency key {key!r} was already used with a different request; use a new key",
        metadata={"idempotencyKey": key},
    )


def _state_value(state: OperationState) -> p.OperationState.ValueType:
    return p.OperationState.Value(f"OPERATION_STATE_{state.name}")


def _stored_refusal(row: store.OperationRow) -> DomainError:
    operation = p.Operation()
    operation.ParseFromString(row.operation)
    metadata = json.loads(row.response).get("metadata", {}) if row.response else {}
    return DomainError(reason_of(operation.rejection_reason), operation.rejection_message, metadata=metadata)


def _operation_base(
    *, operation_id: str, terminal: Any, request: Any, receipt_id: str, now: datetime, type_: OperationType
) -> p.Operation:
    operation = p.Operation(
        operation_id=operation_id,
        type=p.OperationType.Value(f"OPERATION_TYPE_{type_.name}"),
        state=p.OPERATION_STATE_PROCESSING,
        terminal_id=terminal.terminal_id,
        outlet_id=terminal.outlet_id,
        partner_id=terminal.partner_id,
        cashier_id=getattr(request, "cashier_id", ""),
        receipt_id=receipt_id,
        fiscal_document_number=getattr(request, "fiscal_document_number", ""),
        idempotency_key=request.idempotency_key.key if hasattr(request, "idempotency_key") else "",
    )
    operation.effective_time.FromDatetime(now)
    operation.create_time.FromDatetime(now)
    operation.update_time.FromDatetime(now)
    return operation


def _redemption_request(request: Any, settings: Any) -> rules.RedemptionRequest:
    if isinstance(request, p.OfflineAccrual):  # offline sales only earn (processing.proto)
        return rules.RedemptionRequest(points=0, maximum=False)
    points = request.redeem_points.amount_minor if request.HasField("redeem_points") else 0
    return rules.RedemptionRequest(points=points, maximum=request.redeem_maximum)


def _authorization_ttl_s(request: Any, settings: Any) -> int:
    if request.HasField("authorization_ttl"):
        return max(1, int(request.authorization_ttl.ToTimedelta().total_seconds()))
    return max(1, int(settings.authorization_ttl.total_seconds()))


def _card_status(state: int) -> p.MemberCardStatus.ValueType:
    if state == cards_pb2.Card.STATE_ACTIVE:
        return p.MEMBER_CARD_STATUS_ACTIVE
    if state == cards_pb2.Card.STATE_BLOCKED:
        return p.MEMBER_CARD_STATUS_BLOCKED
    if state == cards_pb2.Card.STATE_EXPIRED:
        return p.MEMBER_CARD_STATUS_EXPIRED
    return p.MEMBER_CARD_STATUS_NOT_ACTIVE


def _to_wallet(transfer: PlannedTransfer, row: store.OperationRow, *, linked: bool) -> wallet_pb2.Transfer:
    message = wallet_pb2.Transfer(
        transfer_id=transfer.transfer_id,
        debit_account_id=transfer.debit_account_id,
        credit_account_id=transfer.credit_account_id,
        amount_minor=transfer.amount,
        pending_transfer_id=transfer.pending_transfer_id,
        timeout_s=transfer.timeout_s,
        flags=wallet_pb2.TransferFlags(
            pending=transfer.pending,
            post_pending=transfer.post_pending,
            void_pending=transfer.void_pending,
            linked=linked,
            imported=transfer.imported_time is not None,
            allow_debt=transfer.allow_debt,
        ),
        reverses_transfer_id=transfer.reverses_transfer_id,
    )
    if transfer.reason:
        message.reason = wallet_pb2.TransferReason.Value(f"TRANSFER_REASON_{transfer.reason}")
    if not (transfer.post_pending or transfer.void_pending):
        message.reference.CopyFrom(
            wallet_pb2.TransferReference(
                operation_id=row.operation_id,
                terminal_id=row.terminal_id,
                receipt_id=row.receipt_id,
                partner_id=row.partner_id,
            )
        )
    if transfer.imported_time is not None:
        message.imported_time.FromDatetime(transfer.imported_time)
    if transfer.reason in ("ACCRUAL",) and not transfer.post_pending:
        terms = wallet_pb2.LotTerms(no_expiry=transfer.no_expiry)
        if transfer.activation_time is not None:
            terms.activation_time.FromDatetime(transfer.activation_time)
        if transfer.expiry_time is not None:
            terms.expiry_time.FromDatetime(transfer.expiry_time)
        message.lot_terms.CopyFrom(terms)
    return message


def _events(
    operation: p.Operation, balances: Sequence[types_pb2.AccountBalance], target: OperationState
) -> list[store.EventRow]:
    if target is not OperationState.CAPTURED or not operation.member_id:
        return []
    calculation = operation.purchase.calculation
    available = sum(b.available.amount_minor for b in balances if not b.currency_code)
    common = {
        "operation_id": operation.operation_id,
        "member_id": operation.member_id,
        "receipt_id": operation.receipt_id,
        "outlet_id": operation.outlet_id,
        "operation_time": operation.effective_time.ToDatetime().isoformat() + "Z",
        "balance": available,
    }
    events = []
    if calculation.accrual.amount_minor > 0:
        pending_until = max((part.activation_time.ToDatetime() for part in calculation.accrual_parts), default=None)
        data = {
            **common,
            "points": calculation.accrual.amount_minor,
            "pending_until": pending_until.isoformat() + "Z" if pending_until else "",
        }
        events.append(_event("points.accrued", operation.member_id, data))
    if calculation.redemption.amount_minor > 0:
        events.append(
            _event("points.redeemed", operation.member_id, {**common, "points": calculation.redemption.amount_minor})
        )
    return events


def _event(event_type: str, member_id: str, data: dict[str, Any]) -> store.EventRow:
    return outbox.event_row(event_type=event_type, partition_key=member_id, data=data)


def _stats_change(operation: p.Operation, row: store.OperationRow, zone: ZoneInfo) -> store.StatsChange:
    calculation = operation.purchase.calculation
    receipt = types_pb2.Receipt()
    if row.receipt:
        receipt.ParseFromString(row.receipt)
    local_day = operation.effective_time.ToDatetime(tzinfo=zone).date()
    return store.StatsChange(
        member_id=operation.member_id,
        purchases=1,
        app_purchases=1 if receipt.channel == types_pb2.SALES_CHANNEL_APP else 0,
        rule_ids=[rule.rule_id for rule in calculation.applied_rules],
        day=local_day,
        spend=receipt.total.amount_minor - calculation.redemption_value.amount_minor,
    )


def _check_subset(final: types_pb2.Receipt, original: types_pb2.Receipt) -> None:
    """A final receipt may only drop lines or lower quantities and amounts (processing.proto)."""
    violations = []
    if final.receipt_id != original.receipt_id:
        violations.append(FieldViolation("final_receipt.receipt_id", "must be the authorized receipt's"))
    authorized = {line.position: line for line in original.lines}
    for index, line in enumerate(final.lines):
        was = authorized.get(line.position)
        if was is None:
            violations.append(FieldViolation(f"final_receipt.lines[{index}].position", "was not authorized"))
        elif line.quantity_milli > was.quantity_milli or line.amount.amount_minor > was.amount.amount_minor:
            violations.append(FieldViolation(f"final_receipt.lines[{index}]", "more than authorized"))
    if violations:
        raise invalid_argument(violations)
