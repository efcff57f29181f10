"""Locust users for the register flows, over gRPC, on a seeded data set (see dataset.py).

Each user is one cash register (a terminal of the data set) running one flow again and again:

    IdentifyUser      Identify by card or phone
    AccrualUser       Purchase that only earns
    RedemptionUser    Calculate (how much may be paid with points), then Purchase paying part of it
    RefundUser        Purchase, then Refund of the whole receipt or of some lines and quantities
    OfflineUser       UploadOfflineBatch: sales made offline earlier (and sometimes a cancel)

Every answer is checked, not only its status: states, the arithmetic of accruals, redemptions
and refunds, non-negative balances, and each member's balance against what this run knows it
must be. A member is leased to one user at a time, so these expectations are exact. A wrong
answer is reported to locust as a failure with a message that names the broken expectation.

gRPC under locust: locust runs users as gevent greenlets, and grpc.aio's event loop does not mix
with gevent, so users call the synchronous grpc API after `grpc.experimental.gevent.init_gevent()`
(locust's documented gRPC pattern: a client that fires the `request` event per call, with the
response time, the name and the exception;
https://docs.locust.io/en/stable/testing-other-systems.html).

Configuration: --host is the processing service (127.0.0.1:<port>; other hosts are refused:
load is only ever aimed at this machine), LOYALTY_LOAD_DATASET the data set's JSON file.
"""

from __future__ import annotations

# isort: off
# locust first: importing it monkey-patches the standard library for gevent; then grpc is told
# to use gevent, before any channel exists.
import locust
import grpc
import grpc.experimental.gevent as grpc_gevent

# isort: on

grpc_gevent.init_gevent()

import dataclasses  # noqa: E402
import itertools  # noqa: E402
import os  # noqa: E402
import random  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402
from collections import deque  # noqa: E402
from collections.abc import Callable, Iterator, Sequence  # noqa: E402
from contextlib import contextmanager  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from datetime import UTC, datetime, timedelta  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import gevent  # noqa: E402
from locust import User, between, events  # noqa: E402
from locust.env import Environment  # noqa: E402
from loyalty.common.v1 import errors_pb2, types_pb2  # noqa: E402
from loyalty.processing.v1 import processing_pb2 as p  # noqa: E402
from loyalty.processing.v1 import processing_pb2_grpc, program_admin_pb2_grpc  # noqa: E402
from loyalty.processing.v1 import program_admin_pb2 as pa  # noqa: E402

from loadtests.locust.dataset import Dataset, Line, Member, ReceiptMaker, load  # noqa: E402

DATASET_ENV = "LOYALTY_LOAD_DATASET"
DEADLINE_S = 5.0  # the contract's recommended deadline for writes
OFFLINE_DEADLINE_S = 30.0
CURRENCY = "RUB"
CURRENCY_SCALE = 2
LOOPBACK = "127.0.0.1"

_ = locust  # imported for its side effect above


class WrongAnswerError(Exception):
    """The service answered, but not what the contract promises."""


def expect(condition: bool, message: str) -> None:
    if not condition:
        raise WrongAnswerError(message)


# -- shared state of this locust process ---------------------------------------------------------


@dataclass
class MemberState:
    member: Member
    # Points (available + pending, minor units) after the last answer this run saw; None until
    # then. Exact because a member is leased to one user at a time.
    total_minor: int | None = None


@dataclass
class World:
    dataset: Dataset
    # Offline sales must not predate the program's first rule set: they are processed with the
    # rules in force at their original time.
    offline_since: datetime
    free: deque[MemberState] = field(default_factory=deque)
    terminals: Iterator[str] = field(default_factory=lambda: iter(()))

    @staticmethod
    def of(dataset: Dataset, offline_since: datetime) -> World:
        members = [MemberState(m) for m in dataset.members]
        random.Random(7).shuffle(members)
        return World(
            dataset=dataset,
            offline_since=offline_since,
            free=deque(members),
            terminals=itertools.cycle(dataset.terminal_ids),
        )

    @contextmanager
    def lease(self) -> Iterator[MemberState]:
        """A member no other user is serving right now (registers never share a customer)."""
        while not self.free:
            gevent.sleep(0.005)
        state = self.free.popleft()
        try:
            yield state
        finally:
            self.free.append(state)


WORLD: World | None = None


def load_world(environment: Environment, **_kwargs: Any) -> None:
    global WORLD
    host = environment.host or ""
    if not host.startswith(f"{LOOPBACK}:"):
        raise SystemExit(f"--host must be {LOOPBACK}:<port> (the processing service on this machine), not {host!r}")
    path = os.environ.get(DATASET_ENV)
    if not path:
        raise SystemExit(f"{DATASET_ENV} must name the data set (python -m loadtests.locust writes it)")
    WORLD = World.of(load(Path(path)), first_rules_time(host))


def first_rules_time(host: str) -> datetime:
    """When the program's first rule set took effect (the admin API of processing)."""
    with grpc.insecure_channel(host) as channel:
        admin = program_admin_pb2_grpc.ProgramAdminServiceStub(channel)
        first = admin.GetRuleSetVersion(pa.GetRuleSetVersionRequest(version=1), timeout=DEADLINE_S).version
    return datetime.fromtimestamp(first.effective_time.seconds + 1, UTC)


events.init.add_listener(load_world)


def world() -> World:
    if WORLD is None:
        raise RuntimeError("the data set was not loaded (init event)")
    return WORLD


# -- messages ------------------------------------------------------------------------------------


def money(amount_minor: int) -> types_pb2.Money:
    return types_pb2.Money(currency_code=CURRENCY, amount_minor=amount_minor, scale=CURRENCY_SCALE)


def receipt_message(receipt_id: str, lines: Sequence[Line]) -> types_pb2.Receipt:
    return types_pb2.Receipt(
        receipt_id=receipt_id,
        lines=[
            types_pb2.ReceiptLine(
                position=line.position,
                sku=line.product.sku,
                name=line.product.name,
                category_id=line.product.category_id,
                quantity_milli=line.quantity_milli,
                unit_price=money(line.product.price_minor),
                amount=money(line.amount_minor),
                accrual_excluded=line.product.accrual_excluded,
                redemption_excluded=line.product.redemption_excluded,
            )
            for line in lines
        ],
        total=money(sum(line.amount_minor for line in lines)),
        channel=types_pb2.SALES_CHANNEL_POS,
    )


def new_key() -> types_pb2.IdempotencyKey:
    return types_pb2.IdempotencyKey(key=str(uuid.uuid4()))


def points_total(balances: Sequence[Any]) -> int:
    return sum(b.available.amount_minor + b.pending.amount_minor for b in balances if not b.currency_code)


def check_balances(balances: Sequence[Any]) -> None:
    expect(len(balances) > 0, "no balances in the answer")
    for balance in balances:
        expect(balance.available.amount_minor >= 0, "negative available balance")
        expect(balance.pending.amount_minor >= 0, "negative pending balance")
        expect(balance.held.amount_minor >= 0, "negative held balance")


def check_total(state: MemberState, balances: Sequence[Any], change_minor: int, what: str) -> None:
    """The member's points moved by exactly `change_minor` since the last answer we saw."""
    total = points_total(balances)
    if state.total_minor is not None:
        expect(total == state.total_minor + change_minor, f"balance after {what} is not the one before plus its effect")
    state.total_minor = total


def check_calculation(calculation: Any, request_receipt: Any) -> None:
    lines = calculation.lines
    expect(len(lines) == len(request_receipt.lines), "one line result per receipt line")
    expect(calculation.accrual.amount_minor >= 0, "negative accrual")
    expect(sum(x.accrual.amount_minor for x in lines) == calculation.accrual.amount_minor, "line accruals != accrual")
    parts = sum(x.points.amount_minor for x in calculation.accrual_parts)
    expect(parts == calculation.accrual.amount_minor, "accrual parts != accrual")
    for line, sent in zip(lines, request_receipt.lines, strict=True):
        if sent.accrual_excluded:
            expect(line.accrual.amount_minor == 0, "an accrual-excluded line earned points")
    value = calculation.redemption_value.amount_minor
    expect(
        calculation.amount_due.amount_minor == request_receipt.total.amount_minor - value, "amount due != total - paid"
    )


# -- the gRPC client: one locust request event per call ------------------------------------------


class Register:
    """A cash register's calls to processing. Each call fires locust's `request` event with its
    name, response time and either nothing, the gRPC error, or the WrongAnswerError of its check."""

    def __init__(self, environment: Environment, channel: grpc.Channel, terminal_id: str) -> None:
        self.environment = environment
        self.stub = processing_pb2_grpc.ProcessingServiceStub(channel)
        self.terminal_id = terminal_id

    def call(
        self,
        name: str,
        method: str,
        request: Any,
        check: Callable[[Any], None],
        *,
        members: Sequence[MemberState],
        timeout_s: float = DEADLINE_S,
    ) -> Any:
        """The response when the call succeeded and `check` accepted it, else None. After a
        failure the balances of `members` are unknown until their next answer."""
        started = time.perf_counter()
        response = None
        exception: Exception | None = None
        try:
            response = getattr(self.stub, method)(request, timeout=timeout_s)
        except grpc.RpcError as error:
            exception = FailedCallError(error)
        elapsed_ms = (time.perf_counter() - started) * 1000
        if exception is None:
            try:
                check(response)
            except WrongAnswerError as error:
                exception = error
        self.environment.events.request.fire(
            request_type="grpc",
            name=name,
            response_time=elapsed_ms,
            response_length=response.ByteSize() if response is not None else 0,
            response=response,
            context={"terminal_id": self.terminal_id},
            exception=exception,
        )
        if exception is not None:
            for state in members:
                state.total_minor = None
            return None
        return response


class FailedCallError(Exception):
    def __init__(self, error: Any) -> None:
        # Code and message only: locust groups failures by their text.
        super().__init__(f"{error.code().name}: {error.details()}")


# -- users ---------------------------------------------------------------------------------------


class RegisterUser(User):
    """One cash register: a terminal of the data set and a channel to processing."""

    abstract = True
    wait_time = between(0.0, 0.2)

    def __init__(self, environment: Environment) -> None:
        super().__init__(environment)
        self.terminal_id = next(world().terminals)
        self.channel = grpc.insecure_channel(self.host or "")
        self.register = Register(environment, self.channel, self.terminal_id)
        self.rng = random.Random()
        self.receipts = ReceiptMaker(self.rng)
        self.tag = uuid.uuid4().hex[:10]  # receipt ids stay unique across runs on kept data
        self.sequence = itertools.count(1)

    def on_stop(self) -> None:
        self.channel.close()

    def receipt_id(self) -> str:
        return f"L{self.tag}-{next(self.sequence)}"

    def identifier(self, member: Member) -> types_pb2.MemberIdentifier:
        """Mostly cards; some customers give their phone number."""
        if self.rng.random() < 0.2:
            return types_pb2.MemberIdentifier(phone=member.phone)
        return types_pb2.MemberIdentifier(card_number=member.card_number)

    def purchase(self, state: MemberState, name: str, lines: list[Line], redeem_minor: int = 0) -> Any:
        """A Purchase checked against the receipt and the member's balance; the response or None."""
        request = p.PurchaseRequest(
            idempotency_key=new_key(),
            terminal_id=self.terminal_id,
            member=self.identifier(state.member),
            receipt=receipt_message(self.receipt_id(), lines),
        )
        if redeem_minor:
            request.redeem_points.CopyFrom(
                types_pb2.Points(amount_minor=redeem_minor, scale=world().dataset.point_scale)
            )

        def check(response: Any) -> None:
            operation = response.operation
            expect(operation.state == p.OPERATION_STATE_CAPTURED, "purchase not CAPTURED")
            expect(operation.member_id == state.member.member_id, "purchase of another member")
            calculation = operation.purchase.calculation
            check_calculation(calculation, request.receipt)
            expect(calculation.redemption.amount_minor == redeem_minor, "redeemed points != requested")
            expect((calculation.redemption_value.amount_minor > 0) == (redeem_minor > 0), "redemption value")
            check_balances(response.balances)
            change = calculation.accrual.amount_minor - calculation.redemption.amount_minor
            check_total(state, response.balances, change, "a purchase")

        return self.register.call(name, "Purchase", request, check, members=[state])


class IdentifyUser(RegisterUser):
    weight = 3

    def identify(self) -> None:
        with world().lease() as state:
            identifier = self.identifier(state.member)
            by_card = identifier.WhichOneof("kind") == "card_number"

            def check(response: Any) -> None:
                expect(response.member_id == state.member.member_id, "identified another member")
                method = p.IDENTIFICATION_METHOD_CARD if by_card else p.IDENTIFICATION_METHOD_PHONE
                expect(response.identified_by == method, "wrong identification method")
                check_balances(response.balances)
                spendable = sum(b.available.amount_minor for b in response.balances if not b.currency_code)
                expect(response.total_available.amount_minor == spendable, "total_available != sum of available")
                check_total(state, response.balances, 0, "an identification")

            request = p.IdentifyRequest(terminal_id=self.terminal_id, member=identifier)
            self.register.call("Identify", "Identify", request, check, members=[state], timeout_s=2.0)

    tasks = [identify]


class AccrualUser(RegisterUser):
    weight = 5

    def purchase_with_accrual(self) -> None:
        with world().lease() as state:
            self.purchase(state, "Purchase (accrual)", self.receipts.lines())

    tasks = [purchase_with_accrual]


class RedemptionUser(RegisterUser):
    weight = 3

    def purchase_with_redemption(self) -> None:
        with world().lease() as state:
            lines = self.receipts.lines()
            maximum = self.max_redeemable(state, lines)
            if maximum is None:
                return
            # Customers pay between a little and all of what they may.
            self.purchase(state, "Purchase (redemption)", lines, redeem_minor=self.rng.randint(1, maximum))

    tasks = [purchase_with_redemption]

    def max_redeemable(self, state: MemberState, lines: list[Line]) -> int | None:
        request = p.CalculateRequest(
            terminal_id=self.terminal_id,
            member=types_pb2.MemberIdentifier(card_number=state.member.card_number),
            receipt=receipt_message("", lines),
            redeem_maximum=True,
        )

        def check(response: Any) -> None:
            calculation = response.calculation
            check_calculation(calculation, request.receipt)
            check_balances(response.balances)
            check_total(state, response.balances, 0, "a calculation")
            # The data set gives every member enough points that a receipt can always be paid
            # partly with points; zero here means the program refused it.
            expect(calculation.max_redeemable.amount_minor > 0, "nothing redeemable on an everyday receipt")
            expect(calculation.redemption.amount_minor == calculation.max_redeemable.amount_minor, "redeem_maximum")

        response = self.register.call(
            "Calculate (redemption)", "Calculate", request, check, members=[state], timeout_s=2.0
        )
        return None if response is None else int(response.calculation.max_redeemable.amount_minor)


@dataclass(frozen=True)
class LineShare:
    """What refunding `quantity_milli` of a line must give back, on the first refund of it."""

    position: int
    quantity_milli: int
    original_quantity_milli: int
    accrual_minor: int
    redemption_minor: int
    amount_minor: int

    def share(self, value: int) -> int:
        return value * self.quantity_milli // self.original_quantity_milli


class RefundUser(RegisterUser):
    weight = 1

    def refund(self) -> None:
        with world().lease() as state:
            lines = self.receipts.lines(count_max=8)
            purchased = self.purchase(state, "Purchase (to refund)", lines)
            if purchased is None:
                return
            operation = purchased.operation
            if self.rng.random() < 0.5:
                returned = [
                    self._all_of(line, calc)
                    for line, calc in zip(lines, operation.purchase.calculation.lines, strict=True)
                ]
                mode, name = p.REFUND_MODE_FULL, "Refund (full)"
            else:
                returned = self._some_of(lines, operation.purchase.calculation.lines)
                mode, name = p.REFUND_MODE_LINES, "Refund (lines)"
            self._refund(state, operation, returned, mode, name)

    tasks = [refund]

    @staticmethod
    def _all_of(line: Line, calculated: Any) -> LineShare:
        return LineShare(
            position=line.position,
            quantity_milli=line.quantity_milli,
            original_quantity_milli=line.quantity_milli,
            accrual_minor=calculated.accrual.amount_minor,
            redemption_minor=calculated.redemption.amount_minor,
            amount_minor=line.amount_minor,
        )

    def _some_of(self, lines: list[Line], calculated: Sequence[Any]) -> list[LineShare]:
        chosen = self.rng.sample(range(len(lines)), k=self.rng.randint(1, len(lines)))
        shares = []
        for index in sorted(chosen):
            line, full = lines[index], self._all_of(lines[index], calculated[index])
            quantity = self.rng.randint(1, line.quantity_milli)
            shares.append(dataclasses.replace(full, quantity_milli=quantity))
        return shares

    def _refund(self, state: MemberState, original: Any, returned: list[LineShare], mode: Any, name: str) -> None:
        request = p.RefundRequest(
            idempotency_key=new_key(),
            terminal_id=self.terminal_id,
            original=p.OperationReference(operation_id=original.operation_id),
            refund_receipt_id=self.receipt_id(),
            mode=mode,
            lines=[p.RefundLine(position=s.position, quantity_milli=s.quantity_milli) for s in returned]
            if mode == p.REFUND_MODE_LINES
            else [],
        )
        whole_lines = all(s.quantity_milli == s.original_quantity_milli for s in returned)
        everything = mode == p.REFUND_MODE_FULL or (
            whole_lines and len(returned) == len(original.purchase.calculation.lines)
        )

        def check(response: Any) -> None:
            refund = response.refund
            expect(
                refund.type == p.OPERATION_TYPE_REFUND and refund.state == p.OPERATION_STATE_COMPLETED,
                "refund not COMPLETED",
            )
            expect(refund.refund.original_operation_id == original.operation_id, "refund of another operation")
            wanted_state = p.OPERATION_STATE_REFUNDED if everything else p.OPERATION_STATE_PARTIALLY_REFUNDED
            expect(response.original.state == wanted_state, "original purchase in the wrong state after the refund")
            by_position = {line.position: line for line in refund.refund.lines}
            expect(sorted(by_position) == sorted(s.position for s in returned), "refunded lines != returned lines")
            for share in returned:
                line = by_position[share.position]
                taken = line.accrual_reversed.amount_minor + line.accrual_forgiven.amount_minor
                expect(taken == share.share(share.accrual_minor), "line accrual taken back != its share")
                expect(
                    line.redemption_restored.amount_minor == share.share(share.redemption_minor),
                    "line points given back != share",
                )
                expect(line.amount.amount_minor == share.share(share.amount_minor), "line money returned != its share")
            totals = refund.refund.totals
            check_balances(response.balances)
            change = totals.redemption_restored.amount_minor - totals.accrual_reversed.amount_minor
            check_total(state, response.balances, change, "a refund")

        self.register.call(name, "Refund", request, check, members=[state])


@dataclass
class OfflineSale:
    state: MemberState
    receipt_id: str
    key: str
    cancelled: bool = False


def not_accepted(result: Any) -> str:
    outcome = p.OfflineOperationOutcome.Name(result.outcome)
    return f"offline operation {outcome}: {errors_pb2.ErrorReason.Name(result.error_reason)} {result.error_message}"


class OfflineUser(RegisterUser):
    """A register back online: uploads the sales (and a cancel now and then) it made offline."""

    weight = 1

    def upload(self) -> None:
        with world().lease() as first, world().lease() as second:
            sales = [
                OfflineSale(self.rng.choice((first, second)), self.receipt_id(), str(uuid.uuid4()))
                for _ in range(self.rng.randint(1, 4))
            ]
            operations = self._operations(sales)
            self._upload(sales, operations)

    tasks = [upload]

    def _operations(self, sales: list[OfflineSale]) -> list[p.OfflineOperation]:
        """Oldest first: each sale at its own time in the last hour, a cancel after its sale."""
        now = datetime.now(UTC)
        earliest = max(world().offline_since, now - timedelta(hours=1))
        span_s = max(0, int((now - earliest).total_seconds()))
        times = sorted(earliest + timedelta(seconds=self.rng.randint(0, span_s)) for _ in sales)
        operations = []
        for sale, occurred in zip(sales, times, strict=True):
            accrual = p.OfflineAccrual(
                member=types_pb2.MemberIdentifier(card_number=sale.state.member.card_number),
                receipt=receipt_message(sale.receipt_id, self.receipts.lines(count_max=10)),
            )
            operations.append(
                p.OfflineOperation(idempotency_key=types_pb2.IdempotencyKey(key=sale.key), accrual=accrual)
            )
            operations[-1].occurred_time.FromDatetime(occurred)
        if self.rng.random() < 0.3:
            sale = self.rng.choice(sales)
            sale.cancelled = True
            cancel = p.OfflineOperation(
                idempotency_key=new_key(),
                cancel=p.OfflineCancel(receipt_id=sale.receipt_id, reason="annulled at the till"),
            )
            cancel.occurred_time.FromDatetime(now)
            operations.append(cancel)
        return operations

    def _upload(self, sales: list[OfflineSale], operations: list[p.OfflineOperation]) -> None:
        request = p.UploadOfflineBatchRequest(
            idempotency_key=new_key(), terminal_id=self.terminal_id, operations=operations
        )
        by_receipt = {sale.receipt_id: sale for sale in sales}

        def check(response: Any) -> None:
            expect(len(response.results) == len(operations), "one result per offline operation")
            accrued: dict[str, int] = {}
            for result in response.results:
                expect(result.outcome == p.OFFLINE_OPERATION_OUTCOME_ACCEPTED, not_accepted(result))
                operation = result.operation
                expect(operation.offline, "offline operation not flagged offline")
                sale = by_receipt[operation.receipt_id]
                check_balances(result.balances)
                if operation.type == p.OPERATION_TYPE_PURCHASE:
                    expect(operation.state == p.OPERATION_STATE_CAPTURED, "offline sale not CAPTURED")
                    expect(operation.member_id == sale.state.member.member_id, "offline sale of another member")
                    accrued[sale.receipt_id] = operation.purchase.calculation.accrual.amount_minor
                    check_total(sale.state, result.balances, accrued[sale.receipt_id], "an offline sale")
                else:
                    expect(operation.type == p.OPERATION_TYPE_CANCEL, "unexpected offline operation type")
                    expect(operation.state == p.OPERATION_STATE_COMPLETED, "offline cancel not COMPLETED")
                    totals = operation.cancel.totals
                    taken = totals.accrual_reversed.amount_minor + totals.accrual_forgiven.amount_minor
                    expect(taken == accrued[sale.receipt_id], "cancel did not take back the sale's accrual")
                    check_total(sale.state, result.balances, -totals.accrual_reversed.amount_minor, "an offline cancel")

        members = list({id(sale.state): sale.state for sale in sales}.values())
        self.register.call(
            "UploadOfflineBatch", "UploadOfflineBatch", request, check, members=members, timeout_s=OFFLINE_DEADLINE_S
        )
