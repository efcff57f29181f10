"""Cards benchmark: batch generation and Resolve through gRPC.

Setup (not timed): embedded PostgreSQL (durable commits) + Redis in a temp dir, the wallet and
cards databases migrated, ONE wallet and ONE cards service process. Program "bench" with its
wallet account kinds, a Luhn number template (16 digits), and `--members` members registered
through RegisterMember (which opens their wallet accounts), each with a card bound by IssueCard.

Measured, `--runs` runs each:
  * generate - GenerateCardBatch of `--batch-size` cards (100,000): seconds per call, from the
               client's send to the answer; then the batch is checked in the database (count,
               distinct, every number with a valid check digit and the template's prefix);
  * echo     - `DiagnosticsService/Echo` on the cards process, `--in-flight` calls in flight,
               `--seconds` s: the calibration ceiling of one grpc.aio server and one client here;
  * resolve  - Resolve of a random bound card number, `--in-flight` calls in flight;
  * batch50  - BatchResolve of 50 random card numbers per call, 8 calls in flight (the way the
               processing service batches its resolutions): resolutions per second.
The client runs in its own process. Every answer is checked (usable, the card asked for);
anything else is an error. Each run also reports the CPU the cards process, PostgreSQL and the
client spent per call and the Resolve cache's hit ratio (from the service's /metrics).
Exit status 1 on any error.

    python -m loadtests.bench_cards [--runs 3] [--seconds 5] [--batch-size 100000] [--members 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import asyncpg
import psutil
import uvloop
from grpc import aio
from loyalty.cards.v1 import cards_pb2, cards_pb2_grpc
from loyalty.common.v1 import types_pb2
from loyalty.diagnostics.v1 import diagnostics_pb2, diagnostics_pb2_grpc
from loyalty.wallet.v1 import wallet_pb2, wallet_pb2_grpc

from loadtests.bench_calibration import PAYLOAD
from loadtests.bench_stack import PRODUCTION_CHECKS, analyze
from loadtests.driver import RunResult, closed_loop
from services.cards.domain.model import CheckDigitScheme
from services.cards.domain.numbers import has_valid_check_digit
from shared.embedded import EmbeddedPostgres, EmbeddedRedis, free_port
from tests.harness import Infra, ServiceProcess, metric_value

PROGRAM = "bench"
PREFIX = "77"
OPERATOR = types_pb2.Actor(type=types_pb2.ACTOR_TYPE_OPERATOR, id="bench")
TERMINAL = types_pb2.Actor(type=types_pb2.ACTOR_TYPE_TERMINAL, id="bench-till")
SETUP_IN_FLIGHT = 32
SETUP_TIME_MAX_S = 600.0
CALLS_MAX_PER_RUN = 2_000_000
BATCH_RESOLVE_SIZE = 50
BATCH_RESOLVE_IN_FLIGHT = 8
GENERATE_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class Report:
    """What one client process measured: the run, the CPU each side spent during it, the
    cache lookups the cards process made, and the first error seen."""

    result: RunResult
    per_call: int  # resolutions per call
    cpu: dict[str, float]
    cache: dict[str, float]
    first_error: str

    @property
    def rate(self) -> float:
        return self.result.rate * self.per_call

    def cpu_us(self, side: str) -> float:
        return self.cpu[side] / max(1, self.result.calls * self.per_call) * 1e6

    @property
    def hit_ratio(self) -> float:
        looked_up = sum(self.cache.get(kind, 0.0) for kind in ("hit", "miss", "bypass"))
        return self.cache.get("hit", 0.0) / looked_up if looked_up else 0.0

    @property
    def lookups_per_read(self) -> float:
        """How many Resolve lookups shared one Redis round trip (the coalescing)."""
        return self.cache.get("read_requests", 0.0) / max(1.0, self.cache.get("reads", 0.0))


@dataclass(frozen=True)
class Watch:
    """CPU seconds used so far by the cards process, PostgreSQL and this process; the cards
    process's cache counters."""

    cards_pid: int
    postgres_pid: int
    metrics_address: str

    def cpu(self) -> dict[str, float]:
        postmaster = psutil.Process(self.postgres_pid)
        postgres = _cpu(postmaster)
        for child in postmaster.children(recursive=True):
            with contextlib.suppress(psutil.Error):
                postgres += _cpu(child)
        return {"cards": _cpu(psutil.Process(self.cards_pid)), "postgres": postgres, "client": time.process_time()}

    def cache(self) -> dict[str, float]:
        import urllib.request

        with urllib.request.urlopen(f"http://{self.metrics_address}/metrics", timeout=5) as response:
            text = response.read().decode()
        counts = {
            result: metric_value(text, "loyalty_cards_resolve_cache_total", {"result": result}) or 0.0
            for result in ("hit", "miss", "bypass")
        }
        for name in ("reads", "read_requests"):
            counts[name] = _unlabelled(text, f"loyalty_cards_generation_{name}_total")
        return counts


def _unlabelled(metrics_text: str, name: str) -> float:
    """The value of a metric without labels in a Prometheus exposition text (0 when absent)."""
    for line in metrics_text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return 0.0


def _cpu(process: psutil.Process) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)


def _key() -> types_pb2.IdempotencyKey:
    return types_pb2.IdempotencyKey(key=str(uuid.uuid4()))


# ------------------------------------------------------------------------------------------------
# Setup (in the main process, not timed)


async def create_kinds(target: str) -> None:
    async with aio.insecure_channel(target) as channel:
        wallet = wallet_pb2_grpc.WalletServiceStub(channel)
        await wallet.CreateAccountKind(
            wallet_pb2.CreateAccountKindRequest(
                account_kind=wallet_pb2.AccountKind(
                    program_id=PROGRAM,
                    kind="base",
                    display_name="Base points",
                    unit=wallet_pb2.Unit(type=wallet_pb2.UNIT_TYPE_POINTS, scale=2),
                    policy=wallet_pb2.AccountPolicy(
                        spendable=True,
                        overdraft_mode=wallet_pb2.OVERDRAFT_MODE_NO_OVERDRAFT,
                        expiry_rule=wallet_pb2.ExpiryRule(mode=wallet_pb2.EXPIRY_MODE_NEVER),
                    ),
                    open_by_default=True,
                ),
                actor=OPERATOR,
                idempotency_key=_key(),
            ),
            timeout=30,
        )


async def create_template(cards: cards_pb2_grpc.CardsServiceStub) -> str:
    response = await cards.CreateCardNumberTemplate(
        cards_pb2.CreateCardNumberTemplateRequest(
            idempotency_key=_key(),
            actor=OPERATOR,
            template=cards_pb2.CardNumberTemplate(
                program_id=PROGRAM,
                display_name="Bench plastic",
                prefix=PREFIX,
                length=16,
                check_digit_scheme=cards_pb2.CHECK_DIGIT_SCHEME_LUHN,
                barcode_symbology=cards_pb2.BARCODE_SYMBOLOGY_CODE_128,
            ),
        ),
        timeout=30,
    )
    return str(response.template.template_id)


async def bound_cards(cards: cards_pb2_grpc.CardsServiceStub, template_id: str, members: int) -> list[str]:
    """`members` members, each registered and given a bound card; their card numbers."""
    deadline = time.monotonic() + SETUP_TIME_MAX_S
    numbers: list[str] = []
    indexes = iter(range(members))

    async def work() -> None:
        for index in indexes:
            if time.monotonic() > deadline:
                raise TimeoutError(f"setup took longer than {SETUP_TIME_MAX_S:.0f} s")
            registered = await cards.RegisterMember(
                cards_pb2.RegisterMemberRequest(
                    idempotency_key=_key(),
                    actor=TERMINAL,
                    program_id=PROGRAM,
                    phone=f"+7916{index:07d}",
                    first_name="Bench",
                ),
                timeout=30,
            )
            issued = await cards.IssueCard(
                cards_pb2.IssueCardRequest(
                    idempotency_key=_key(),
                    actor=TERMINAL,
                    new_card=cards_pb2.NewCard(template_id=template_id, type=cards_pb2.CARD_TYPE_MULTI),
                    binding=cards_pb2.CardBinding(member_id=registered.member.member_id),
                ),
                timeout=30,
            )
            numbers.append(issued.card.card_number)

    await asyncio.gather(*(work() for _ in range(SETUP_IN_FLIGHT)))
    if len(set(numbers)) != members:
        raise AssertionError("cards are not distinct")
    return numbers


# ------------------------------------------------------------------------------------------------
# Batch generation (main process: one call at a time, nothing else running)


@dataclass(frozen=True)
class Generated:
    seconds: float
    checked: bool
    detail: str


async def generate(target: str, template_id: str, count: int, database_url: str) -> Generated:
    async with aio.insecure_channel(target) as channel:
        cards = cards_pb2_grpc.CardsServiceStub(channel)
        started = time.perf_counter()
        response = await cards.GenerateCardBatch(
            cards_pb2.GenerateCardBatchRequest(
                idempotency_key=_key(),
                actor=OPERATOR,
                template_id=template_id,
                card_type=cards_pb2.CARD_TYPE_BONUS,
                count=count,
            ),
            timeout=GENERATE_TIMEOUT_S,
        )
        seconds = time.perf_counter() - started
    connection = await asyncpg.connect(database_url)
    try:
        rows = await connection.fetch(
            "SELECT card_number, state FROM cards WHERE batch_id = $1", response.batch.batch_id
        )
    finally:
        await connection.close()
    numbers = [row["card_number"] for row in rows]
    problems = []
    if response.batch.card_count != count or len(numbers) != count or len(set(numbers)) != count:
        problems.append(f"{len(numbers)} cards ({len(set(numbers))} distinct), expected {count}")
    if not all(n.startswith(PREFIX) and has_valid_check_digit(n, CheckDigitScheme.LUHN) for n in numbers):
        problems.append("a number without the prefix or a valid check digit")
    if any(row["state"] != cards_pb2.Card.STATE_GENERATED for row in rows):
        problems.append("a card not GENERATED")
    return Generated(seconds, not problems, "; ".join(problems))


# ------------------------------------------------------------------------------------------------
# The client (its own process)


async def measured(
    call: Callable[[], Awaitable[None]], *, in_flight: int, seconds: float, watch: Watch
) -> tuple[RunResult, dict[str, float], dict[str, float]]:
    """A warm-up (which also fills the cache), then the measured closed loop with the CPU each
    side spent and the cache lookups made during it. Warm-up errors count too."""
    warm_up = await closed_loop(call, in_flight=in_flight, duration_s=min(1.0, seconds), calls_max=CALLS_MAX_PER_RUN)
    cpu_before, cache_before = watch.cpu(), watch.cache()
    result = await closed_loop(call, in_flight=in_flight, duration_s=seconds, calls_max=CALLS_MAX_PER_RUN)
    cpu_after, cache_after = watch.cpu(), watch.cache()
    result = RunResult(**{**asdict(result), "errors": result.errors + warm_up.errors})
    cpu = {side: cpu_after[side] - cpu_before[side] for side in cpu_before}
    cache = {kind: cache_after[kind] - cache_before[kind] for kind in cache_before}
    return result, cpu, cache


async def drive(args: argparse.Namespace, numbers: Sequence[str], watch: Watch) -> Report:
    errors: list[str] = []

    def remember(error: Exception) -> None:
        if not errors:
            errors.append(f"{type(error).__name__}: {error}"[:500])

    async with aio.insecure_channel(args.client) as channel:
        cards = cards_pb2_grpc.CardsServiceStub(channel)
        echo = diagnostics_pb2_grpc.DiagnosticsServiceStub(channel).Echo

        def resolve_request(number: str) -> cards_pb2.ResolveRequest:
            return cards_pb2.ResolveRequest(
                program_id=PROGRAM, identifier=types_pb2.MemberIdentifier(card_number=number), actor=TERMINAL
            )

        async def call_echo() -> None:
            response = await echo(diagnostics_pb2.EchoRequest(payload=PAYLOAD), timeout=5)
            if response.payload != PAYLOAD:
                raise AssertionError("wrong echo payload")

        async def call_resolve() -> None:
            number = random.choice(numbers)
            try:
                response = await cards.Resolve(resolve_request(number), timeout=5)
                _check(response.resolution, number)
            except Exception as error:
                remember(error)
                raise

        async def call_batch() -> None:
            chosen = random.choices(numbers, k=BATCH_RESOLVE_SIZE)
            try:
                response = await cards.BatchResolve(
                    cards_pb2.BatchResolveRequest(requests=[resolve_request(n) for n in chosen]), timeout=5
                )
                if len(response.results) != len(chosen):
                    raise AssertionError("a result is missing")
                for number, result in zip(chosen, response.results, strict=True):
                    _check(result.resolution, number)
            except Exception as error:
                remember(error)
                raise

        calls: dict[str, tuple[Callable[[], Awaitable[None]], int, int]] = {
            "echo": (call_echo, args.in_flight, 1),
            "resolve": (call_resolve, args.in_flight, 1),
            "batch50": (call_batch, BATCH_RESOLVE_IN_FLIGHT, BATCH_RESOLVE_SIZE),
        }
        call, in_flight, per_call = calls[args.scenario]
        result, cpu, cache = await measured(call, in_flight=in_flight, seconds=args.seconds, watch=watch)
    return Report(result, per_call, cpu, cache, errors[0] if errors else "")


def _check(resolution: cards_pb2.Resolution, number: str) -> None:
    if resolution.card_number != number or not resolution.usable or not resolution.master_account_id:
        raise AssertionError(f"unexpected resolution of {number}: {resolution}")


def client_main(args: argparse.Namespace) -> int:
    watch = Watch(args.cards_pid, args.postgres_pid, args.metrics)
    numbers = json.loads(Path(args.numbers).read_text())
    report = uvloop.run(drive(args, numbers, watch))
    print(json.dumps({**asdict(report), "result": asdict(report.result)}))
    return 0


def run_client(
    scenario: str, service: ServiceProcess, numbers_file: Path, watch: Watch, args: argparse.Namespace
) -> Report:
    command = [
        sys.executable,
        "-m",
        "loadtests.bench_cards",
        "--client",
        service.grpc_address,
        "--scenario",
        scenario,
        "--numbers",
        str(numbers_file),
        "--seconds",
        str(args.seconds),
        "--in-flight",
        str(args.in_flight),
        "--cards-pid",
        str(watch.cards_pid),
        "--postgres-pid",
        str(watch.postgres_pid),
        "--metrics",
        watch.metrics_address,
    ]
    output = subprocess.run(command, capture_output=True, text=True, check=True, timeout=args.seconds + 120).stdout
    fields: dict[str, Any] = json.loads(output.strip().splitlines()[-1])
    return Report(**{**fields, "result": RunResult(**fields["result"])})


# ------------------------------------------------------------------------------------------------
# The report


def measure(
    scenario: str, service: ServiceProcess, numbers_file: Path, watch: Watch, args: argparse.Namespace
) -> list[Report]:
    reports = []
    unit = "calls/s" if scenario == "echo" else "resolutions/s"
    for index in range(args.runs):
        report = run_client(scenario, service, numbers_file, watch, args)
        print(
            f"  {scenario:<8} run {index + 1}: {report.rate:8.0f} {unit:<13}  p50 {report.result.p50_ms:6.2f} ms"
            f"  p99 {report.result.p99_ms:6.2f} ms  errors {report.result.errors}",
            flush=True,
        )
        print(f"    {cpu_line(scenario, [report])}", flush=True)
        if report.first_error:
            print(f"    first error: {report.first_error}", flush=True)
        reports.append(report)
    return reports


def cpu_line(scenario: str, reports: Sequence[Report]) -> str:
    per = "call" if scenario == "echo" else "resolution"
    cards, postgres, client = (
        statistics.median(r.cpu_us(side) for r in reports) for side in ("cards", "postgres", "client")
    )
    line = f"cpu per {per}: cards {cards:5.0f} us, postgres {postgres:5.0f} us, client {client:5.0f} us"
    if scenario != "echo":
        hits = statistics.median(r.hit_ratio for r in reports)
        shared = statistics.median(r.lookups_per_read for r in reports)
        line += f"; cache hits {hits:.1%}, {shared:.1f} lookups per Redis round trip"
    return line


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--batch-size", type=int, default=100_000, help="cards per GenerateCardBatch")
    parser.add_argument("--members", type=int, default=2000, help="members with a bound card to resolve")
    parser.add_argument("--in-flight", type=int, default=64, help="Resolve (and Echo) calls in flight")
    parser.add_argument("--client", help=argparse.SUPPRESS)
    parser.add_argument("--scenario", help=argparse.SUPPRESS)
    parser.add_argument("--numbers", help=argparse.SUPPRESS)
    parser.add_argument("--cards-pid", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--postgres-pid", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--metrics", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if not (
        1 <= args.runs <= 10
        and 0.5 <= args.seconds <= 60
        and 1 <= args.batch_size <= 100_000
        and 10 <= args.members <= 100_000
        and 1 <= args.in_flight <= 1000
    ):
        parser.error("bounds: runs 1..10, seconds 0.5..60, batch-size 1..100000, members 10..100000, in-flight 1..1000")
    return args


def main() -> int:
    args = parse_args()
    if args.client:
        return client_main(args)
    with tempfile.TemporaryDirectory(prefix="loyalty-bench-cards-") as data:
        postgres = EmbeddedPostgres(Path(data) / "postgres", free_port()).start()
        redis = EmbeddedRedis(Path(data) / "redis", free_port()).start()
        try:
            infra = Infra(database_server_url=postgres.url, redis_url=redis.url)
            infra.migrate("wallet")
            infra.migrate("cards")
            wallet = ServiceProcess("wallet", infra.service_env("wallet", **PRODUCTION_CHECKS)).start()
            cards_env = infra.service_env("cards", LOYALTY_WALLET_GRPC_TARGET=wallet.grpc_address, **PRODUCTION_CHECKS)
            cards = ServiceProcess("cards", cards_env).start()
            try:
                return run(args, infra, postgres, wallet, cards, Path(data))
            finally:
                cards.stop()
                wallet.stop()
        finally:
            redis.stop()
            postgres.stop(mode="immediate")


def run(
    args: argparse.Namespace,
    infra: Infra,
    postgres: EmbeddedPostgres,
    wallet: ServiceProcess,
    cards: ServiceProcess,
    data: Path,
) -> int:
    if cards.process is None:
        raise RuntimeError("the cards process did not start")
    print(
        f"cards: batches of {args.batch_size}, {args.members} members with a card, {args.runs} x {args.seconds:g} s "
        f"per Resolve scenario, one cards process (pid {cards.process.pid}), client in its own process, "
        f"{os.cpu_count()} cores",
        flush=True,
    )
    template_id, numbers = uvloop.run(setup(wallet.grpc_address, cards.grpc_address, args.members))
    analyze([infra.database_url("wallet"), infra.database_url("cards")])
    generated = []
    for index in range(args.runs):
        outcome = uvloop.run(generate(cards.grpc_address, template_id, args.batch_size, infra.database_url("cards")))
        print(
            f"  generate run {index + 1}: {outcome.seconds:6.2f} s for {args.batch_size} cards"
            f"  checked: {'ok' if outcome.checked else outcome.detail}",
            flush=True,
        )
        generated.append(outcome)
    numbers_file = data / "numbers.json"
    numbers_file.write_text(json.dumps(numbers))
    postmaster_pid = int((postgres.pgdata / "postmaster.pid").read_text().split()[0])
    watch = Watch(cards.process.pid, postmaster_pid, cards.metrics_address)
    results = {
        scenario: measure(scenario, cards, numbers_file, watch, args) for scenario in ("echo", "resolve", "batch50")
    }

    print("medians:")
    seconds = statistics.median(g.seconds for g in generated)
    print(f"  generate {seconds:8.2f} s for {args.batch_size} cards (target <= 5 s)")
    for scenario, reports in results.items():
        unit = "calls/s" if scenario == "echo" else "resolutions/s"
        rate = statistics.median(r.rate for r in reports)
        p50 = statistics.median(r.result.p50_ms for r in reports)
        p99 = statistics.median(r.result.p99_ms for r in reports)
        errors = sum(r.result.errors for r in reports)
        print(f"  {scenario:<8} {rate:8.0f} {unit:<13}  p50 {p50:6.2f} ms  p99 {p99:6.2f} ms  errors {errors}")
        print(f"    {cpu_line(scenario, reports)}")
    errors = sum(r.result.errors for reports in results.values() for r in reports)
    unchecked = [g.detail for g in generated if not g.checked]
    if errors or unchecked:
        print(f"FAILED: {errors} errors, batch problems: {unchecked or 'none'}")
        return 1
    return 0


async def setup(wallet_target: str, cards_target: str, members: int) -> tuple[str, list[str]]:
    started = time.monotonic()
    await create_kinds(wallet_target)
    async with aio.insecure_channel(cards_target) as channel:
        cards = cards_pb2_grpc.CardsServiceStub(channel)
        template_id = await create_template(cards)
        numbers = await bound_cards(cards, template_id, members)
        await warm_cache(cards, numbers)
    print(f"  setup: {members} members registered with a bound card in {time.monotonic() - started:.1f} s", flush=True)
    return template_id, numbers


async def warm_cache_target(target: str, numbers: Sequence[str]) -> None:
    async with aio.insecure_channel(target) as channel:
        await warm_cache(cards_pb2_grpc.CardsServiceStub(channel), numbers)


async def warm_cache(cards: cards_pb2_grpc.CardsServiceStub, numbers: Sequence[str]) -> None:
    """Resolve every card twice: the first read teaches the cache which generations a card
    depends on, the second stores a validated entry. The runs then measure the steady state
    (their hit ratio is reported)."""
    for _ in range(2):
        for start in range(0, len(numbers), BATCH_RESOLVE_SIZE):
            chunk = numbers[start : start + BATCH_RESOLVE_SIZE]
            requests = [
                cards_pb2.ResolveRequest(
                    program_id=PROGRAM, identifier=types_pb2.MemberIdentifier(card_number=n), actor=TERMINAL
                )
                for n in chunk
            ]
            response = await cards.BatchResolve(cards_pb2.BatchResolveRequest(requests=requests), timeout=30)
            for number, result in zip(chunk, response.results, strict=True):
                _check(result.resolution, number)


if __name__ == "__main__":
    sys.exit(main())
