"""Wallet benchmark: CreateTransfers through gRPC on a ledger of `--members` member accounts.

Setup (not timed): embedded PostgreSQL (durable commits) + Redis in a temp dir, the wallet
migrated, ONE wallet service process. A kind "base" in program "bench", the program's ISSUANCE
and REDEMPTION accounts, 16 partner ISSUANCE and 16 partner REDEMPTION accounts, and the member
accounts (OpenMemberAccounts, 64 in flight), each funded by one accrual (1000 per request).

Scenarios, each `--runs` runs of `--seconds`, the client (load generator) in its own process:
  * echo     - `DiagnosticsService/Echo` on the same wallet process: the calibration ceiling;
  * single   - one transfer per CreateTransfers, `--in-flight` requests in flight; accruals
               (partner issuance -> member) alternate with redemptions (member -> partner
               redemption), random members and partners: the spread case;
  * batch100 - `--batch-size` transfers per request, `--batch-in-flight` requests in flight;
  * hot      - as single, but every transfer is an accrual debiting the one program ISSUANCE
               account: the hot-row case (target: within 2x of single).
Every response is checked (one result per transfer, each CREATED; anything else is an error).
Each run also reports the CPU that the wallet, PostgreSQL and the client spent per transfer
during it, and how busy the machine was with other processes (a shared machine shows here).
At the end the ledger is checked through SQL: posted balances sum to zero per unit, and the
member accounts hold exactly what was funded + accrued - redeemed; and the transfers each
database transaction carried are counted (rows of one transaction share its xmin).
Exit status 1 on any error or imbalance.

With `--py-spy DIR`, each scenario gets one more run (not reported) while py-spy records the
wallet process (DIR/wallet-<scenario>.speedscope.json), and the report ends with where the
wallet's CPU went in each.

    python -m loadtests.bench_wallet [--runs 3] [--seconds 5] [--members 100000] [--py-spy DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
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
import uvloop
from grpc import aio
from loyalty.common.v1 import types_pb2
from loyalty.diagnostics.v1 import diagnostics_pb2, diagnostics_pb2_grpc
from loyalty.wallet.v1 import wallet_pb2, wallet_pb2_grpc

from loadtests import pyspy
from loadtests.bench_calibration import PAYLOAD
from loadtests.bench_stack import PRODUCTION_CHECKS, CpuMeter, analyze, cpu_spent
from loadtests.driver import RunResult, closed_loop
from services.wallet import store
from shared.embedded import EmbeddedPostgres, EmbeddedRedis, free_port
from tests.harness import Infra, ServiceProcess

PROGRAM = "bench"
KIND = "base"
UNIT = wallet_pb2.Unit(type=wallet_pb2.UNIT_TYPE_POINTS, scale=2)
PARTNERS = 16
FUND_MINOR = 1_000_000  # per member; redemptions take 1..10, so they are always affordable
AMOUNT_MAX = 10
SETUP_IN_FLIGHT = 64
FUND_BATCH = 1000
FUND_IN_FLIGHT = 4
SETUP_TIME_MAX_S = 900.0
TRANSFERS_MAX_PER_RUN = 2_000_000
CREATED = wallet_pb2.TRANSFER_RESULT_CODE_CREATED
ACTOR = types_pb2.Actor(type=types_pb2.ACTOR_TYPE_SYSTEM, id="bench")


@dataclass(frozen=True)
class Scenario:
    name: str
    batch: int
    in_flight: int
    hot: bool = False


@dataclass(frozen=True)
class Accounts:
    members: list[str]
    issuance: list[str]  # per partner
    redemption: list[str]  # per partner
    hot_issuance: str  # the program's ISSUANCE account
    hot_redemption: str


@dataclass(frozen=True)
class Report:
    """What one client process measured: the run, the amounts its CREATED transfers moved, and
    the CPU seconds spent during the measured run (not the warm-up) by each side."""

    result: RunResult
    transfers_per_call: int
    accrued: int
    redeemed: int
    first_error: str
    cpu: dict[str, float]
    run_id: str  # the transfer ids of the run are "<scenario>-<run_id>-<n>"

    @property
    def transfers_rate(self) -> float:
        return self.result.rate * self.transfers_per_call

    def cpu_us_per_transfer(self, side: str) -> float:
        return self.cpu[side] / max(1, self.result.calls * self.transfers_per_call) * 1e6

    def other_share(self) -> float:
        """The share of the whole machine busy with processes outside this benchmark."""
        ours = self.cpu["wallet"] + self.cpu["postgres"] + self.cpu["client"]
        return max(0.0, self.cpu["box_busy"] - ours) / self.cpu["box_capacity"]


@dataclass(frozen=True)
class CpuWatch:
    """Where the CPU goes during a run: the wallet process, PostgreSQL's process tree, this
    client process and the machine (bench_stack's meter)."""

    wallet_pid: int
    postgres_pid: int

    def meter(self) -> CpuMeter:
        return CpuMeter({"wallet": self.wallet_pid, "postgres": self.postgres_pid}, own="client")


async def measured(
    call: Callable[[], Awaitable[None]], *, in_flight: int, seconds: float, calls_max: int, watch: CpuWatch
) -> tuple[RunResult, dict[str, float]]:
    """A warm-up, then the measured closed loop with the CPU each side spent during it. Warm-up
    errors count too: every response is checked."""
    warm_up = await closed_loop(call, in_flight=in_flight, duration_s=min(0.5, seconds), calls_max=calls_max)
    meter = watch.meter()
    before = meter.snapshot()
    result = await closed_loop(call, in_flight=in_flight, duration_s=seconds, calls_max=calls_max)
    cpu = cpu_spent(before, meter.snapshot())
    result = RunResult(**{**asdict(result), "errors": result.errors + warm_up.errors})
    return result, cpu


# ------------------------------------------------------------------------------------------------
# Setup (in the main process, not timed)


def _key() -> types_pb2.IdempotencyKey:
    return types_pb2.IdempotencyKey(key=str(uuid.uuid4()))


def _check_deadline(deadline: float, what: str) -> None:
    if time.monotonic() > deadline:
        raise TimeoutError(f"setup took longer than {SETUP_TIME_MAX_S:.0f} s ({what})")


async def setup(target: str, members: int) -> Accounts:
    deadline = time.monotonic() + SETUP_TIME_MAX_S
    async with aio.insecure_channel(target) as channel:
        wallet = wallet_pb2_grpc.WalletServiceStub(channel)
        await wallet.CreateAccountKind(
            wallet_pb2.CreateAccountKindRequest(
                account_kind=wallet_pb2.AccountKind(
                    program_id=PROGRAM,
                    kind=KIND,
                    display_name="Base points",
                    unit=UNIT,
                    policy=wallet_pb2.AccountPolicy(
                        spendable=True,
                        overdraft_mode=wallet_pb2.OVERDRAFT_MODE_NO_OVERDRAFT,
                        expiry_rule=wallet_pb2.ExpiryRule(mode=wallet_pb2.EXPIRY_MODE_NEVER),
                    ),
                    open_by_default=True,
                ),
                actor=ACTOR,
                idempotency_key=_key(),
            ),
            timeout=30,
        )

        async def system_account(role: wallet_pb2.SystemAccountRole.ValueType, partner_id: str) -> str:
            response = await wallet.OpenSystemAccount(
                wallet_pb2.OpenSystemAccountRequest(
                    program_id=PROGRAM,
                    role=role,
                    partner_id=partner_id,
                    unit=UNIT,
                    actor=ACTOR,
                    idempotency_key=_key(),
                ),
                timeout=30,
            )
            return str(response.account.account_id)

        hot_issuance = await system_account(wallet_pb2.SYSTEM_ACCOUNT_ROLE_ISSUANCE, "")
        hot_redemption = await system_account(wallet_pb2.SYSTEM_ACCOUNT_ROLE_REDEMPTION, "")
        issuance = [await system_account(wallet_pb2.SYSTEM_ACCOUNT_ROLE_ISSUANCE, f"p{p}") for p in range(PARTNERS)]
        redemption = [await system_account(wallet_pb2.SYSTEM_ACCOUNT_ROLE_REDEMPTION, f"p{p}") for p in range(PARTNERS)]
        if len({hot_issuance, hot_redemption, *issuance, *redemption}) != 2 + 2 * PARTNERS:
            raise AssertionError("system accounts are not distinct")

        started = time.monotonic()
        member_accounts = [""] * members
        indexes = iter(range(members))  # shared by the workers: each index is taken once
        step = max(1, members // 10)
        opened = [0]

        async def open_members() -> None:
            for index in indexes:
                _check_deadline(deadline, "opening member accounts")
                response = await wallet.OpenMemberAccounts(
                    wallet_pb2.OpenMemberAccountsRequest(
                        program_id=PROGRAM, member_id=f"m{index:07d}", actor=ACTOR, idempotency_key=_key()
                    ),
                    timeout=30,
                )
                (account,) = [a for a in response.master_account.accounts if a.kind == KIND]
                member_accounts[index] = account.account_id
                opened[0] += 1
                if opened[0] % step == 0:
                    print(f"  opened {opened[0]} member accounts ({time.monotonic() - started:.0f} s)", flush=True)

        await asyncio.gather(*(open_members() for _ in range(SETUP_IN_FLIGHT)))
        opened_s = time.monotonic() - started
        if len(set(member_accounts)) != members or "" in member_accounts:
            raise AssertionError("member accounts are not distinct")

        started = time.monotonic()
        batches = iter(range(0, members, FUND_BATCH))

        async def fund() -> None:
            for start in batches:
                _check_deadline(deadline, "funding member accounts")
                chunk = member_accounts[start : start + FUND_BATCH]
                response = await wallet.CreateTransfers(
                    wallet_pb2.CreateTransfersRequest(
                        transfers=[
                            wallet_pb2.Transfer(
                                transfer_id=f"fund-{start + i}",
                                debit_account_id=hot_issuance,
                                credit_account_id=account,
                                amount_minor=FUND_MINOR,
                                reason=wallet_pb2.TRANSFER_REASON_ACCRUAL,
                            )
                            for i, account in enumerate(chunk)
                        ]
                    ),
                    timeout=120,
                )
                _check_results(response, len(chunk))

        await asyncio.gather(*(fund() for _ in range(FUND_IN_FLIGHT)))
        print(
            f"  setup: {members} member accounts opened in {opened_s:.1f} s "
            f"({members / opened_s:.0f}/s), funded in {time.monotonic() - started:.1f} s",
            flush=True,
        )
    return Accounts(member_accounts, issuance, redemption, hot_issuance, hot_redemption)


def _check_results(response: wallet_pb2.CreateTransfersResponse, expected: int) -> None:
    if len(response.results) != expected:
        raise AssertionError(f"{len(response.results)} results for {expected} transfers")
    for result in response.results:
        if result.code != CREATED:
            name = wallet_pb2.TransferResultCode.Name(result.code)
            raise AssertionError(f"transfer {result.transfer_id}: {name}")


# ------------------------------------------------------------------------------------------------
# The client (its own process)


async def drive_echo(target: str, *, seconds: float, in_flight: int, watch: CpuWatch) -> Report:
    """The calibration ceiling: `DiagnosticsService/Echo` on the same wallet process."""
    async with aio.insecure_channel(target) as channel:
        echo = diagnostics_pb2_grpc.DiagnosticsServiceStub(channel).Echo
        request = diagnostics_pb2.EchoRequest(payload=PAYLOAD)

        async def call() -> None:
            response = await echo(request, timeout=5)
            if response.payload != PAYLOAD:
                raise AssertionError("wrong echo payload")

        result, cpu = await measured(
            call, in_flight=in_flight, seconds=seconds, calls_max=TRANSFERS_MAX_PER_RUN, watch=watch
        )
    return Report(result, 1, 0, 0, "", cpu, "")


async def drive(target: str, scenario: Scenario, accounts: Accounts, *, seconds: float, watch: CpuWatch) -> Report:
    members = accounts.members
    run_id = uuid.uuid4().hex[:16]
    prefix = f"{scenario.name}-{run_id}-"
    counter = itertools.count()
    moved = {"accrued": 0, "redeemed": 0}
    errors: list[str] = []

    def transfer() -> tuple[wallet_pb2.Transfer, int, int]:
        number = next(counter)
        amount = random.randint(1, AMOUNT_MAX)
        transfer_id = f"{prefix}{number}"
        if scenario.hot:
            debit, credit, reason = accounts.hot_issuance, random.choice(members), wallet_pb2.TRANSFER_REASON_ACCRUAL
        elif number % 2 == 0:
            debit, credit = random.choice(accounts.issuance), random.choice(members)
            reason = wallet_pb2.TRANSFER_REASON_ACCRUAL
        else:
            debit, credit = random.choice(members), random.choice(accounts.redemption)
            reason = wallet_pb2.TRANSFER_REASON_REDEMPTION
        message = wallet_pb2.Transfer(
            transfer_id=transfer_id,
            debit_account_id=debit,
            credit_account_id=credit,
            amount_minor=amount,
            reason=reason,
        )
        accrued = amount if reason == wallet_pb2.TRANSFER_REASON_ACCRUAL else 0
        return message, accrued, amount - accrued

    async with aio.insecure_channel(target) as channel:
        create_transfers = wallet_pb2_grpc.WalletServiceStub(channel).CreateTransfers

        async def call() -> None:
            built = [transfer() for _ in range(scenario.batch)]
            request = wallet_pb2.CreateTransfersRequest(transfers=[message for message, _, _ in built])
            try:
                response = await create_transfers(request, timeout=10)
                _check_results(response, scenario.batch)
            except Exception as error:
                if not errors:
                    errors.append(f"{type(error).__name__}: {error}"[:500])
                raise
            moved["accrued"] += sum(accrued for _, accrued, _ in built)
            moved["redeemed"] += sum(redeemed for _, _, redeemed in built)

        calls_max = max(1, TRANSFERS_MAX_PER_RUN // scenario.batch)
        result, cpu = await measured(
            call, in_flight=scenario.in_flight, seconds=seconds, calls_max=calls_max, watch=watch
        )
    first_error = errors[0] if errors else ""
    return Report(result, scenario.batch, moved["accrued"], moved["redeemed"], first_error, cpu, run_id)


def client_main(args: argparse.Namespace) -> int:
    watch = CpuWatch(args.wallet_pid, args.postgres_pid)
    if args.scenario == "echo":
        report = uvloop.run(drive_echo(args.client, seconds=args.seconds, in_flight=args.in_flight, watch=watch))
    else:
        scenario = next(s for s in scenarios(args) if s.name == args.scenario)
        accounts = Accounts(**json.loads(Path(args.accounts).read_text()))
        report = uvloop.run(drive(args.client, scenario, accounts, seconds=args.seconds, watch=watch))
    print(json.dumps({**asdict(report), "result": asdict(report.result)}))
    return 0


def run_client(target: str, scenario: str, accounts_file: Path, watch: CpuWatch, args: argparse.Namespace) -> Report:
    command = [
        sys.executable,
        "-m",
        "loadtests.bench_wallet",
        "--client",
        target,
        "--scenario",
        scenario,
        "--accounts",
        str(accounts_file),
        "--seconds",
        str(args.seconds),
        "--in-flight",
        str(args.in_flight),
        "--batch-in-flight",
        str(args.batch_in_flight),
        "--batch-size",
        str(args.batch_size),
        "--wallet-pid",
        str(watch.wallet_pid),
        "--postgres-pid",
        str(watch.postgres_pid),
    ]
    output = subprocess.run(command, capture_output=True, text=True, check=True, timeout=args.seconds + 120).stdout
    fields: dict[str, Any] = json.loads(output.strip().splitlines()[-1])
    return Report(**{**fields, "result": RunResult(**fields["result"])})


# ------------------------------------------------------------------------------------------------
# The report


def scenarios(args: argparse.Namespace) -> list[Scenario]:
    return [
        Scenario("single", 1, args.in_flight),
        Scenario(f"batch{args.batch_size}", args.batch_size, args.batch_in_flight),
        Scenario("hot", 1, args.in_flight, hot=True),
    ]


def measure(name: str, target: str, accounts_file: Path, watch: CpuWatch, args: argparse.Namespace) -> list[Report]:
    reports = []
    unit = "calls/s" if name == "echo" else "transfers/s"
    for index in range(args.runs):
        report = run_client(target, name, accounts_file, watch, args)
        print(
            f"  {name:<9} run {index + 1}: {report.transfers_rate:8.0f} {unit:<11}  p50 {report.result.p50_ms:6.2f} ms"
            f"  p99 {report.result.p99_ms:6.2f} ms  errors {report.result.errors}",
            flush=True,
        )
        print(f"    {cpu_line(name, [report])}", flush=True)
        if report.first_error:
            print(f"    first error: {report.first_error}", flush=True)
        reports.append(report)
    return reports


def profile(
    name: str, target: str, accounts_file: Path, watch: CpuWatch, args: argparse.Namespace
) -> tuple[Report, Path]:
    """One more run of the scenario while py-spy records the wallet (native stacks pause the
    process for each sample, so this run's rate is not reported; its transfers and errors
    count in the checks)."""
    output = Path(args.py_spy).resolve() / f"wallet-{name}.speedscope.json"

    async def recorded() -> Report:
        recorder = await pyspy.start_recording(watch.wallet_pid, args.seconds, output)
        report = await asyncio.to_thread(run_client, target, name, accounts_file, watch, args)
        await pyspy.finish_recording(recorder, output, timeout_s=args.seconds + 60)
        return report

    return asyncio.run(recorded()), output


def cpu_line(name: str, reports: Sequence[Report]) -> str:
    """CPU per transfer (per call for echo) of each side, medians over `reports`."""
    per = "call" if name == "echo" else "transfer"
    wallet, postgres, client = (
        statistics.median(r.cpu_us_per_transfer(side) for r in reports) for side in ("wallet", "postgres", "client")
    )
    busy = statistics.median(r.cpu["box_busy"] / r.cpu["box_capacity"] for r in reports)
    other = statistics.median(r.other_share() for r in reports)
    return (
        f"cpu per {per}: wallet {wallet:5.0f} us, postgres {postgres:5.0f} us, client {client:5.0f} us;"
        f" machine busy {busy:4.0%}, other processes {other:4.0%}"
    )


def medians(reports: Sequence[Report]) -> tuple[float, float, float]:
    return (
        statistics.median(r.transfers_rate for r in reports),
        statistics.median(r.result.p50_ms for r in reports),
        statistics.median(r.result.p99_ms for r in reports),
    )


@dataclass(frozen=True)
class LedgerCheck:
    sums: list[tuple[int, str, int, int]]  # per unit: type, currency, sum of posted, of pending
    members_total: int
    synchronous_commit: str
    transactions: dict[str, tuple[int, int]]  # run id -> (transfers, database transactions)


async def check_ledger(database_url: str) -> LedgerCheck:
    connection = await asyncpg.connect(database_url)
    try:
        sums = await store.ledger_sum(connection)
        members_total = await connection.fetchval(
            "SELECT coalesce(sum(credits_posted - debits_posted), 0)::bigint FROM accounts"
            " WHERE type = 1 AND program_id = $1",
            PROGRAM,
        )
        synchronous_commit = await connection.fetchval("SHOW synchronous_commit")
        # Rows inserted by one transaction share its xmin: how many transfers each one carried.
        rows = await connection.fetch(
            "SELECT split_part(transfer_id, '-', 2) AS run_id, count(*) AS transfers,"
            " count(DISTINCT xmin::text) AS transactions FROM transfers GROUP BY 1"
        )
    finally:
        await connection.close()
    transactions = {r["run_id"]: (int(r["transfers"]), int(r["transactions"])) for r in rows}
    return LedgerCheck(sums, int(members_total), str(synchronous_commit), transactions)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--members", type=int, default=100_000)
    parser.add_argument("--in-flight", type=int, default=64, help="single-transfer requests in flight (and Echo)")
    parser.add_argument("--batch-in-flight", type=int, default=8, help="batch requests in flight")
    parser.add_argument("--batch-size", type=int, default=100, help="transfers per batch request")
    parser.add_argument(
        "--writers", type=int, default=2, help="the wallet's LOYALTY_WALLET_WRITERS (default: the service's, 2)"
    )
    parser.add_argument(
        "--parallel-transfers-min",
        type=int,
        default=1,
        help="the wallet's LOYALTY_WALLET_PARALLEL_TRANSFERS_MIN (default: the service's, 1; 100 favours single)",
    )
    parser.add_argument(
        "--scenarios",
        default="single,batch,hot",
        help="which of single, batch, hot to run (comma-separated; echo always runs: the calibration)",
    )
    parser.add_argument(
        "--py-spy", help="record the wallet with py-spy in one extra run per scenario, into this folder"
    )
    parser.add_argument("--client", help=argparse.SUPPRESS)
    parser.add_argument("--scenario", help=argparse.SUPPRESS)
    parser.add_argument("--accounts", help=argparse.SUPPRESS)
    parser.add_argument("--wallet-pid", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--postgres-pid", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if not (
        1 <= args.runs <= 10
        and 0.5 <= args.seconds <= 60
        and 10 <= args.members <= 1_000_000
        and 1 <= args.in_flight <= 1000
        and 1 <= args.batch_in_flight <= 100
        and 2 <= args.batch_size <= 1000
        and 1 <= args.parallel_transfers_min <= 10_000
        and set(args.scenarios.split(",")) <= {"single", "batch", "hot"}
    ):
        parser.error(
            "bounds: runs 1..10, seconds 0.5..60, members 10..1000000, in-flight 1..1000, "
            "batch-in-flight 1..100, batch-size 2..1000, parallel-transfers-min 1..10000, "
            "scenarios among single,batch,hot"
        )
    return args


def main() -> int:
    args = parse_args()
    if args.client:
        return client_main(args)

    wanted = set(args.scenarios.split(","))
    chosen = [s for s in scenarios(args) if s.name.rstrip("0123456789") in wanted]
    with tempfile.TemporaryDirectory(prefix="loyalty-bench-wallet-") as data:
        postgres = EmbeddedPostgres(Path(data) / "postgres", free_port()).start()
        redis = EmbeddedRedis(Path(data) / "redis", free_port()).start()
        try:
            infra = Infra(database_server_url=postgres.url, redis_url=redis.url)
            infra.migrate("wallet")
            env = infra.service_env(
                "wallet",
                LOYALTY_WALLET_WRITERS=str(args.writers),
                LOYALTY_WALLET_PARALLEL_TRANSFERS_MIN=str(args.parallel_transfers_min),
                **PRODUCTION_CHECKS,
            )
            service = ServiceProcess("wallet", env).start()
            try:
                assert service.process is not None
                print(
                    f"wallet: {args.members} members, {args.runs} x {args.seconds:g} s per scenario, one wallet "
                    f"process (pid {service.process.pid}, a second transaction at "
                    f"{args.parallel_transfers_min} transfers waiting), client in its own process, "
                    f"{os.cpu_count()} cores",
                    flush=True,
                )
                accounts = uvloop.run(setup(service.grpc_address, args.members))
                analyze([infra.database_url("wallet")])
                accounts_file = Path(data) / "accounts.json"
                accounts_file.write_text(json.dumps(asdict(accounts)))
                postmaster_pid = int((postgres.pgdata / "postmaster.pid").read_text().split()[0])
                watch = CpuWatch(service.process.pid, postmaster_pid)
                results = {"echo": measure("echo", service.grpc_address, accounts_file, watch, args)}
                profiles: dict[str, Path] = {}
                profiled_reports: list[Report] = []
                for scenario in chosen:
                    results[scenario.name] = measure(scenario.name, service.grpc_address, accounts_file, watch, args)
                    if args.py_spy:
                        report, profiles[scenario.name] = profile(
                            scenario.name, service.grpc_address, accounts_file, watch, args
                        )
                        profiled_reports.append(report)
                ledger = uvloop.run(check_ledger(infra.database_url("wallet")))
            finally:
                service.stop()
        finally:
            redis.stop()
            postgres.stop(mode="immediate")

    print(f"medians (synchronous_commit={ledger.synchronous_commit}):")
    rates = {}
    for name, reports in results.items():
        rate, p50, p99 = medians(reports)
        rates[name] = rate
        unit = "calls/s" if name == "echo" else "transfers/s"
        errors = sum(r.result.errors for r in reports)
        print(f"  {name:<9} {rate:8.0f} {unit:<11}  p50 {p50:6.2f} ms  p99 {p99:6.2f} ms  errors {errors}")
        print(f"    {cpu_line(name, reports)}")
        if name != "echo":
            per_transaction = statistics.median(
                transfers / transactions
                for transfers, transactions in (ledger.transactions.get(r.run_id, (0, 1)) for r in reports)
            )
            print(f"    database: {per_transaction:.1f} transfers per transaction")
    for name in rates:
        if name != "echo":
            print(f"  {name} / echo = {rates[name] / rates['echo']:.2f}", end="")
    print(f"  (calibration ceiling: {rates['echo']:.0f} Echo calls/s on the wallet process)")
    if "hot" in rates and "single" in rates:
        print(f"  hot / single  = {rates['hot'] / rates['single']:.2f}  (target >= 0.5)")

    for name, speedscope in profiles.items():
        for line in pyspy.report_lines(f"wallet, {name}", speedscope, top=25):
            print(line)

    errors = sum(r.result.errors for reports in results.values() for r in reports)
    errors += sum(r.result.errors for r in profiled_reports)
    sums, members_total = ledger.sums, ledger.members_total
    balanced = all(posted == 0 for _, _, posted, _ in sums)
    for unit_type, currency, posted, pending in sums:
        print(f"ledger: unit {unit_type}{currency and ' ' + currency}: sum of posted {posted}, of pending {pending}")
    transfer_reports = [r for name, reports in results.items() if name != "echo" for r in reports]
    transfer_reports += profiled_reports
    expected = (
        args.members * FUND_MINOR + sum(r.accrued for r in transfer_reports) - sum(r.redeemed for r in transfer_reports)
    )
    members_ok = members_total == expected
    print(
        f"ledger: member accounts hold {members_total}, funded + accrued - redeemed = {expected}"
        f" ({'equal' if members_ok else 'DIFFERENT'})"
    )
    if errors or not balanced or not sums or not members_ok:
        print(f"FAILED: {errors} errors, ledger balanced: {balanced and bool(sums)}, members match: {members_ok}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
