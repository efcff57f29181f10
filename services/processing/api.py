"""gRPC edge of the processing service: the register flow (ProcessingService) and the program's
configuration (ProgramAdminService, in admin.py).

Requests are checked here (INVALID_ARGUMENT with a violation per bad field, before anything is
read or written); the flow (flow.py) does the rest. Background work — the recovery worker that
finishes operations left half-way, the expiry of authorizations, the outbox relay — starts with
the servicer and stops with the process.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Sequence
from datetime import UTC, datetime, timedelta

from google.protobuf.descriptor import ServiceDescriptor
from grpc import aio
from loyalty.processing.v1 import processing_pb2 as p
from loyalty.processing.v1 import processing_pb2_grpc, program_admin_pb2, program_admin_pb2_grpc

from services.processing.admin import ProgramAdminServicer
from services.processing.context import ProgramContext
from services.processing.downstream import Deadlines, Downstream
from services.processing.flow import CRASH_POINTS, IDEMPOTENCY_KEY, Flow, FlowSettings
from services.processing.program_mapping import OFFLINE_MAX_AGE_MAX
from services.processing.store import operations as store
from shared import idempotency, outbox
from shared.config import float_between, grpc_target, read_setting
from shared.errors import DomainError, FieldViolation, invalid_argument
from shared.replay_cache import ReplayCache
from shared.resp import RespPipeline, endpoint_of
from shared.server import Runtime
from shared.servicers import add_service

log = logging.getLogger(__name__)
TERMINAL_ID = re.compile(r".{1,64}", re.DOTALL)
PAGE_SIZE_DEFAULT, PAGE_SIZE_MAX = 50, 1000
SHORT_TEXT_MAX = 64
OFFLINE_BATCH_MAX = 500
# Completed responses stay in the Redis fast path for the contract's 24 hours (PostgreSQL keeps them longer).
REPLAY_TTL_S = 24 * 3600
# Housekeeping (a bounded batch of each, this often): the admin RPCs' idempotency keys past their
# retention, and offline cancels whose purchase never came. Such a cancel is remembered while its
# purchase could still be accepted: no program takes offline operations older than
# OFFLINE_MAX_AGE_MAX, and a day more covers a register whose clock runs ahead.
HOUSEKEEPING_INTERVAL_S = 60.0
EARLY_CANCEL_RETENTION = OFFLINE_MAX_AGE_MAX + timedelta(days=1)
EARLY_CANCELS_PURGED_MAX = 10_000


def _check(violations: Sequence[FieldViolation]) -> None:
    if violations:
        raise invalid_argument(violations)


def _terminal(request: object) -> list[FieldViolation]:
    if not TERMINAL_ID.fullmatch(request.terminal_id):  # type: ignore[attr-defined]
        return [FieldViolation("terminal_id", "required, 1..64 characters")]
    return []


def _key(request: object) -> list[FieldViolation]:
    if not IDEMPOTENCY_KEY.fullmatch(request.idempotency_key.key):  # type: ignore[attr-defined]
        return [FieldViolation("idempotency_key.key", "required: 8..128 characters from [A-Za-z0-9._:-]")]
    return []


def _member(request: object, *, required: bool) -> list[FieldViolation]:
    member = request.member  # type: ignore[attr-defined]
    if required and not member.WhichOneof("kind"):
        return [FieldViolation("member", "required: card_number, phone, qr_token or member_id")]
    return []


def _short(request: object, *names: str) -> list[FieldViolation]:
    return [
        FieldViolation(name, f"at most {SHORT_TEXT_MAX} characters")
        for name in names
        if len(getattr(request, name)) > SHORT_TEXT_MAX
    ]


def _sale(request: p.PurchaseRequest | p.AuthorizeRequest) -> list[FieldViolation]:
    violations = [*_key(request), *_terminal(request), *_member(request, required=True)]
    violations += _short(request, "cashier_id")
    if not request.HasField("receipt") or not request.receipt.receipt_id:
        violations.append(FieldViolation("receipt.receipt_id", "required"))
    if request.redeem_maximum and request.redeem_points.amount_minor:
        violations.append(FieldViolation("redeem_points", "mutually exclusive with redeem_maximum"))
    if request.redeem_points.amount_minor < 0:
        violations.append(FieldViolation("redeem_points.amount_minor", "must not be negative"))
    return violations


def _reference(reference: p.OperationReference, field: str) -> list[FieldViolation]:
    kind = reference.WhichOneof("kind")
    if kind is None:
        return [FieldViolation(field, "required: operation_id, receipt or idempotency_key")]
    if kind == "receipt" and not reference.receipt.receipt_id:
        return [FieldViolation(f"{field}.receipt.receipt_id", "required")]
    if not getattr(reference, kind):
        return [FieldViolation(f"{field}.{kind}", "must not be empty")]
    return []


def _time(value: object, *, present: bool) -> datetime | None:
    return value.ToDatetime(tzinfo=UTC) if present else None  # type: ignore[attr-defined]


def _cursor(token: str) -> tuple[datetime, str] | None:
    if not token:
        return None
    time_text, _, operation_id = token.partition("|")
    try:
        return datetime.fromisoformat(time_text), operation_id
    except ValueError:
        raise invalid_argument([FieldViolation("page_token", "not a token from this list")]) from None


def crash_points(text: str) -> frozenset[str]:
    """LOYALTY_PROCESSING_CRASH_AT: comma-separated names from flow.CRASH_POINTS (crash tests only)."""
    names = frozenset(name.strip() for name in text.split(",") if name.strip())
    unknown = names - set(CRASH_POINTS)
    if unknown:
        raise ValueError(f"unknown crash points {sorted(unknown)}; known: {', '.join(CRASH_POINTS)}")
    return names


class ProcessingServicer(processing_pb2_grpc.ProcessingServiceServicer):
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        read = runtime.config.service
        self.downstream = Downstream(
            cards_target=grpc_target("cards"),
            wallet_target=grpc_target("wallet"),
            deadlines=Deadlines(
                cards_s=read_setting(read, "CARDS_DEADLINE_S", float_between(0.05, 30), 1.0),
                wallet_s=read_setting(read, "WALLET_DEADLINE_S", float_between(0.05, 30), 2.0),
            ),
            traced=runtime.traced,
        )
        self.context = ProgramContext(
            runtime.pool, refresh_s=read_setting(read, "CONFIG_REFRESH_S", float_between(0.05, 60), 1.0)
        )
        lease_s = read_setting(read, "OPERATION_LEASE_S", float_between(0.5, 300), 10.0)
        redis_deadline_s = read_setting(read, "REDIS_DEADLINE_S", float_between(0.01, 5), 0.25)
        endpoint = endpoint_of(runtime.redis, timeout_s=redis_deadline_s)
        self._replay_redis = RespPipeline(endpoint) if endpoint is not None else None
        self.flow = Flow(
            pool=runtime.pool,
            context=self.context,
            downstream=self.downstream,
            replays=ReplayCache(
                self._replay_redis,
                prefix="processing:replay",
                ttl_s=REPLAY_TTL_S,
                lease_s=lease_s,
                timeout_s=redis_deadline_s,
            ),
            settings=FlowSettings(
                lease_s=lease_s,
                crash_at=read_setting(read, "CRASH_AT", crash_points, frozenset()),
            ),
        )
        interval_s = read_setting(read, "WORK_INTERVAL_S", float_between(0.05, 3600), 1.0)
        self.tasks = [
            asyncio.get_running_loop().create_task(self._work(interval_s)),
            asyncio.get_running_loop().create_task(
                outbox.run_relay(runtime.pool, runtime.redis, source="processing", interval_s=interval_s)
            ),
        ]
        runtime.shutdown_hooks.append(self.stop)

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.downstream.close()
        if self._replay_redis is not None:
            await self._replay_redis.close()

    async def _work(self, interval_s: float) -> None:
        """Recover operations nobody drives, expire authorizations past their time, and now and
        then keep the tables that only grow in check (HOUSEKEEPING_INTERVAL_S)."""
        housekept_at = time.monotonic()
        while True:
            await asyncio.sleep(interval_s)
            try:
                await self._work_once()
                if time.monotonic() - housekept_at >= HOUSEKEEPING_INTERVAL_S:
                    housekept_at = time.monotonic()
                    await self._housekeeping()
            except asyncio.CancelledError:
                raise
            except Exception as error:  # the next round tries again
                log.warning("processing background work failed: %s", error)

    async def _housekeeping(self) -> None:
        await idempotency.purge_expired(self.runtime.pool)
        async with self.runtime.pool.acquire() as connection:
            await store.purge_early_cancels(
                connection, older_than=EARLY_CANCEL_RETENTION, limit=EARLY_CANCELS_PURGED_MAX
            )

    async def _work_once(self) -> None:
        async with self.runtime.pool.acquire() as connection:
            stuck = await store.unfinished(connection, limit=100)
            expired = await store.expired_authorizations(connection, limit=100)
        for operation_id in stuck:
            await self._quietly(self.flow.recover(operation_id), operation_id)
        for operation_id in expired:
            await self._quietly(self.flow.expire(operation_id), operation_id)

    @staticmethod
    async def _quietly(work: Awaitable[object], operation_id: str) -> None:
        try:
            await work
        except DomainError as error:
            log.info("background work on %s: %s", operation_id, error)

    async def Identify(self, request: p.IdentifyRequest, context: aio.ServicerContext) -> p.IdentifyResponse:
        _check([*_terminal(request), *_member(request, required=True)])
        return await self.flow.identify(request)

    async def Calculate(self, request: p.CalculateRequest, context: aio.ServicerContext) -> p.CalculateResponse:
        violations = [*_terminal(request), *_short(request, "cashier_id")]
        if request.redeem_maximum and request.redeem_points.amount_minor:
            violations.append(FieldViolation("redeem_points", "mutually exclusive with redeem_maximum"))
        _check(violations)
        return await self.flow.calculate(request)

    async def Purchase(self, request: p.PurchaseRequest, context: aio.ServicerContext) -> p.PurchaseResponse:
        _check([*_sale(request), *_short(request, "fiscal_document_number")])
        return await self.flow.purchase(request)

    async def Authorize(self, request: p.AuthorizeRequest, context: aio.ServicerContext) -> p.AuthorizeResponse:
        violations = _sale(request)
        if request.HasField("authorization_ttl") and request.authorization_ttl.ToTimedelta().total_seconds() < 1:
            violations.append(FieldViolation("authorization_ttl", "at least 1 second"))
        _check(violations)
        return await self.flow.authorize(request)

    async def Capture(self, request: p.CaptureRequest, context: aio.ServicerContext) -> p.CaptureResponse:
        violations = [*_key(request), *_terminal(request), *_reference(request.reference, "reference")]
        violations += _short(request, "fiscal_document_number")
        if request.final_redeem_points.amount_minor < 0:
            violations.append(FieldViolation("final_redeem_points.amount_minor", "must not be negative"))
        _check(violations)
        return await self.flow.capture(request)

    async def Void(self, request: p.VoidRequest, context: aio.ServicerContext) -> p.VoidResponse:
        violations = [*_key(request), *_terminal(request), *_reference(request.reference, "reference")]
        if len(request.reason) > 256:
            violations.append(FieldViolation("reason", "at most 256 characters"))
        _check(violations)
        return await self.flow.void(request)

    async def Refund(self, request: p.RefundRequest, context: aio.ServicerContext) -> p.RefundResponse:
        violations = [*_terminal(request), *_reference(request.original, "original")]
        if not request.dry_run:
            violations += _key(request)
        violations += _short(request, "refund_receipt_id", "fiscal_document_number", "cashier_id")
        if request.mode == p.REFUND_MODE_FULL and request.lines:
            violations.append(FieldViolation("lines", "must be empty with REFUND_MODE_FULL"))
        elif request.mode == p.REFUND_MODE_LINES and not request.lines:
            violations.append(FieldViolation("lines", "required with REFUND_MODE_LINES"))
        elif request.mode not in (p.REFUND_MODE_FULL, p.REFUND_MODE_LINES):
            violations.append(FieldViolation("mode", "required: REFUND_MODE_FULL or REFUND_MODE_LINES"))
        for index, line in enumerate(request.lines):
            if line.quantity_milli <= 0:
                violations.append(FieldViolation(f"lines[{index}].quantity_milli", "must be positive"))
        _check(violations)
        return await self.flow.refund(request)

    async def UploadOfflineBatch(
        self, request: p.UploadOfflineBatchRequest, context: aio.ServicerContext
    ) -> p.UploadOfflineBatchResponse:
        """Batch-level checks only: a bad operation is REJECTED on its own, with INVALID_ARGUMENT."""
        violations = [*_key(request), *_terminal(request)]
        if not 1 <= len(request.operations) <= OFFLINE_BATCH_MAX:
            violations.append(FieldViolation("operations", f"1..{OFFLINE_BATCH_MAX} operations"))
        _check(violations)
        return await self.flow.upload_offline_batch(request)

    async def GetOperation(
        self, request: p.GetOperationRequest, context: aio.ServicerContext
    ) -> p.GetOperationResponse:
        _check([*_terminal(request), *_reference(request.reference, "reference")])
        return await self.flow.get_operation(request)

    async def ListOperations(
        self, request: p.ListOperationsRequest, context: aio.ServicerContext
    ) -> p.ListOperationsResponse:
        if request.page_size < 0:
            raise invalid_argument([FieldViolation("page_size", "must not be negative")])
        page_size = min(request.page_size or PAGE_SIZE_DEFAULT, PAGE_SIZE_MAX)
        effective, created = request.effective_time_range, request.create_time_range
        where = store.OperationFilter(
            terminal_id=request.terminal_id,
            outlet_id=request.outlet_id,
            partner_id=request.partner_id,
            member_id=request.member_id,
            receipt_id=request.receipt_id,
            types=list(request.types),
            states=list(request.states),
            offline_only=request.offline_only,
            effective_from=_time(effective.start_time, present=effective.HasField("start_time")),
            effective_to=_time(effective.end_time, present=effective.HasField("end_time")),
            created_from=_time(created.start_time, present=created.HasField("start_time")),
            created_to=_time(created.end_time, present=created.HasField("end_time")),
        )
        operations, cursor = await self.flow.list_operations(
            where, after=_cursor(request.page_token), page_size=page_size, with_receipts=request.include_receipts
        )
        token = f"{cursor[0].isoformat()}|{cursor[1]}" if cursor else ""
        return p.ListOperationsResponse(operations=operations, next_page_token=token)


def register(server: aio.Server, runtime: Runtime) -> Sequence[ServiceDescriptor]:
    return [
        add_service(
            server,
            ProcessingServicer,
            runtime,
            pb2=p,
            pb2_grpc=processing_pb2_grpc,
            service_name="ProcessingService",
            issue="issue #5",
        ),
        add_service(
            server,
            ProgramAdminServicer,
            runtime,
            pb2=program_admin_pb2,
            pb2_grpc=program_admin_pb2_grpc,
            service_name="ProgramAdminService",
            issue="issue #5",
        ),
    ]
