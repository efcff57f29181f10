"""`make load`: the whole platform, the seeded data set, a bounded headless locust run, reports.

    python -m loadtests.locust [--users 10] [--run-time 60s] [--members 10000] ...

1. `loyalty run --no-demo` (the supervisor of `make run`) on its own data folder (.data/load) and
   its own ports (--port-base, default 25000: gRPC 25051-25055), all on 127.0.0.1.
2. The data set (5 partners x 10 outlets x 4 terminals, 10,000 members with welcome points) is
   seeded through the public APIs once; its JSON is kept in the data folder and reused while the
   plan and the program are the same (the databases survive in the same folder).
3. locust runs headless for --run-time against processing, writing CSV and HTML reports under
   loadtests/reports/locust/; then the stack is stopped.

Exit status: 0 only when locust saw no failure and every scenario made requests.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loadtests.locust.dataset import LOAD_PLAN_FIELDS, Dataset, Member, load_if_matching
from shared.config import SERVICES

if TYPE_CHECKING:  # the seeder imports grpc.aio; only the stack side needs it at run time
    from services.cli.seed import Seeded

REPO_ROOT = Path(__file__).resolve().parents[2]
LOCUSTFILE = Path(__file__).resolve().parent / "locustfile.py"
DATASET_FILE = "dataset.json"
# The request names of the scenarios (locustfile.py); each must appear in every run.
SCENARIO_REQUESTS = (
    "Identify",
    "Purchase (accrual)",
    "Calculate (redemption)",
    "Purchase (redemption)",
    "Purchase (to refund)",
    "UploadOfflineBatch",
)
REFUND_REQUESTS = ("Refund (full)", "Refund (lines)")
STACK_START_TIMEOUT_S = 120.0
STACK_STOP_TIMEOUT_S = 60.0
LOCUST_GRACE_S = 120.0  # beyond --run-time: start-up, stop timeout, report writing


def say(message: str) -> None:
    print(f"[make load] {message}", flush=True)


@dataclass(frozen=True)
class Targets:
    processing: str
    cards: str
    wallet: str


# -- the stack -----------------------------------------------------------------------------------


def stack_env(data_dir: Path, port_base: int) -> dict[str, str]:
    """`loyalty run` on embedded PostgreSQL and Redis only (never a server named in the caller's
    environment), on ports of its own so it can run beside `make run`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LOYALTY_", "OTEL_"))}
    env.update(
        {
            "LOYALTY_DATA_DIR": str(data_dir),
            "LOYALTY_EMBEDDED_PG_PORT": str(port_base + 432),
            "LOYALTY_EMBEDDED_REDIS_PORT": str(port_base + 379),
            "LOYALTY_PROCESSING_CONFIG_REFRESH_S": "0.2",  # the seeded rules apply at once
            "LOYALTY_LOG_LEVEL": "WARNING",
        }
    )
    for index, service in enumerate(SERVICES):
        env[f"LOYALTY_{service.upper()}_GRPC_PORT"] = str(port_base + 51 + index)
        env[f"LOYALTY_{service.upper()}_METRICS_PORT"] = str(port_base + 101 + index)
    return env


def targets_of(env: dict[str, str]) -> Targets:
    port = {s: env[f"LOYALTY_{s.upper()}_GRPC_PORT"] for s in ("processing", "cards", "wallet")}
    return Targets(*(f"127.0.0.1:{port[s]}" for s in ("processing", "cards", "wallet")))


def start_stack(env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "services.cli", "run", "--no-demo"],
            env=env,
            cwd=REPO_ROOT,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # our Ctrl-C is handled here, which stops it in order
        )


async def wait_serving(stack: subprocess.Popen[bytes], env: dict[str, str]) -> None:
    from services.cli.health import check

    ports = {s: env[f"LOYALTY_{s.upper()}_GRPC_PORT"] for s in SERVICES}
    deadline = time.monotonic() + STACK_START_TIMEOUT_S
    pending = set(SERVICES)
    while pending:
        if stack.poll() is not None:
            raise RuntimeError(f"loyalty run exited with code {stack.returncode} during start-up")
        if time.monotonic() > deadline:
            raise RuntimeError(f"not SERVING after {STACK_START_TIMEOUT_S:.0f} s: {', '.join(sorted(pending))}")
        results = await asyncio.gather(*(check(s, f"127.0.0.1:{ports[s]}", 1.0) for s in pending))
        pending -= {r.service for r in results if r.status == "SERVING"}
        await asyncio.sleep(0.3)


def stop_stack(stack: subprocess.Popen[bytes]) -> None:
    if stack.poll() is not None:
        return
    stack.send_signal(signal.SIGTERM)  # the supervisor stops services, Redis and PostgreSQL
    try:
        stack.wait(STACK_STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(stack.pid, signal.SIGKILL)
        stack.wait()


# -- the data set --------------------------------------------------------------------------------


async def ensure_dataset(targets: Targets, plan_fields: dict[str, Any], path: Path) -> Dataset:
    """The cached data set when it matches the plan and the running program, else a fresh seed
    (idempotent: members seeded before are found again, not duplicated)."""
    from loyalty.processing.v1 import program_admin_pb2 as pa
    from loyalty.processing.v1 import program_admin_pb2_grpc

    from services.cli import seed
    from shared.clients import create_channel

    cached = load_if_matching(path, plan_fields)
    if cached is not None:
        async with create_channel(targets.processing, default_timeout_s=5.0) as channel:
            program = (
                await program_admin_pb2_grpc.ProgramAdminServiceStub(channel).GetProgram(pa.GetProgramRequest())
            ).program
        if program.program_id == cached.program_id and program.current_rule_set_version:
            say(f"data set reused: {path} ({len(cached.members)} members)")
            return cached
    say(f"seeding the data set: {plan_fields}")
    seeded = await seed.seed_and_time(
        processing_target=targets.processing,
        cards_target=targets.cards,
        wallet_target=targets.wallet,
        plan=seed.SeedPlan(**plan_fields),
        say=say,
    )
    dataset = dataset_of(seeded, plan_fields)
    dataset.save(path)
    return dataset


def dataset_of(seeded: Seeded, plan_fields: dict[str, Any]) -> Dataset:
    """The locust data set of a services.cli.seed.Seeded."""
    return Dataset(
        plan=dict(plan_fields),
        program_id=seeded.program_id,
        point_scale=seeded.point_scale,
        terminal_ids=list(seeded.terminal_ids),
        members=[Member(m.member_id, m.phone, m.card_number, m.master_account_id) for m in seeded.members],
    )


# -- locust --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LocustOptions:
    users: int
    spawn_rate: float
    run_time: str
    reports_dir: Path


def run_locust(processing_target: str, dataset_path: Path, options: LocustOptions) -> int:
    """locust, headless and bounded; its exit code (non-zero when any request failed)."""
    options.reports_dir.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable,
        "-m",
        "locust",
        "-f",
        str(LOCUSTFILE),
        "--headless",
        "--host",
        processing_target,
        "--users",
        str(options.users),
        "--spawn-rate",
        str(options.spawn_rate),
        "--run-time",
        options.run_time,
        "--stop-timeout",
        "10",
        "--csv",
        str(options.reports_dir / "locust"),
        "--html",
        str(options.reports_dir / "locust.html"),
        "--only-summary",
        "--loglevel",
        "WARNING",
    ]
    env = {**os.environ, "LOYALTY_LOAD_DATASET": str(dataset_path)}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH", "")]))
    timeout_s = parse_seconds(options.run_time) + LOCUST_GRACE_S
    return subprocess.run(command, env=env, cwd=REPO_ROOT, timeout=timeout_s, check=False).returncode


def parse_seconds(run_time: str) -> float:
    """locust's --run-time format: 90, 90s, 2m, 1h30m."""
    total, number = 0.0, ""
    for char in run_time.strip():
        if char.isdigit():
            number += char
            continue
        unit = {"s": 1, "m": 60, "h": 3600}.get(char)
        if unit is None or not number:
            raise ValueError(f"run time {run_time!r}: expected e.g. 60s, 2m, 1h30m")
        total, number = total + int(number) * unit, ""
    return total + (int(number) if number else 0)


@dataclass(frozen=True)
class RequestStats:
    name: str
    requests: int
    failures: int
    rps: float
    median_ms: str
    p99_ms: str


def read_stats(reports_dir: Path) -> list[RequestStats]:
    with (reports_dir / "locust_stats.csv").open(newline="") as file:
        return [
            RequestStats(
                name=row["Name"],
                requests=int(row["Request Count"]),
                failures=int(row["Failure Count"]),
                rps=float(row["Requests/s"]),
                median_ms=row["Median Response Time"],
                p99_ms=row["99%"],
            )
            for row in csv.DictReader(file)
        ]


def judge(stats: list[RequestStats]) -> list[str]:
    """What is wrong with a run: failures, and scenarios that made no requests."""
    by_name = {s.name: s for s in stats}
    problems = [f"{s.name}: {s.failures} failures" for s in stats if s.failures and s.name != "Aggregated"]
    problems += [
        f"{name}: no requests" for name in SCENARIO_REQUESTS if name not in by_name or not by_name[name].requests
    ]
    if sum(by_name[n].requests for n in REFUND_REQUESTS if n in by_name) == 0:
        problems.append("Refund: no requests")
    return problems


def print_stats(stats: list[RequestStats]) -> None:
    say(f"{'request':<26} {'count':>8} {'failures':>9} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8}")
    for s in stats:
        say(f"{s.name:<26} {s.requests:>8} {s.failures:>9} {s.rps:>8.1f} {s.median_ms:>8} {s.p99_ms:>8}")


def load_run(processing_target: str, dataset_path: Path, options: LocustOptions) -> int:
    """Run locust and judge the result; the exit status of `make load`."""
    code = run_locust(processing_target, dataset_path, options)
    stats = read_stats(options.reports_dir)
    print_stats(stats)
    problems = judge(stats)
    for problem in problems:
        say(f"FAILED: {problem}")
    say(f"reports: {options.reports_dir}/locust.html, {options.reports_dir}/locust_stats.csv")
    return 1 if problems or code != 0 else 0


# -- entry point ---------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m loadtests.locust", description=__doc__.split("\n", 1)[0])
    parser.add_argument("--users", type=int, default=10)
    parser.add_argument("--spawn-rate", type=float, default=10.0)
    parser.add_argument("--run-time", default="60s", help="locust --run-time (60s, 2m, ...)")
    parser.add_argument("--partners", type=int, default=LOAD_PLAN_FIELDS["partners"])
    parser.add_argument("--outlets-per-partner", type=int, default=LOAD_PLAN_FIELDS["outlets_per_partner"])
    parser.add_argument("--terminals-per-outlet", type=int, default=LOAD_PLAN_FIELDS["terminals_per_outlet"])
    parser.add_argument("--members", type=int, default=LOAD_PLAN_FIELDS["members"])
    parser.add_argument("--data-dir", type=Path, default=REPO_ROOT / ".data" / "load")
    parser.add_argument("--reports-dir", type=Path, default=REPO_ROOT / "loadtests" / "reports" / "locust")
    parser.add_argument("--port-base", type=int, default=25_000, help="ports base+51.. (gRPC), base+432 (PostgreSQL)")
    return parser.parse_args(argv)


def plan_fields(args: argparse.Namespace) -> dict[str, Any]:
    return {
        **LOAD_PLAN_FIELDS,
        "partners": args.partners,
        "outlets_per_partner": args.outlets_per_partner,
        "terminals_per_outlet": args.terminals_per_outlet,
        "members": args.members,
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    options = LocustOptions(args.users, args.spawn_rate, args.run_time, args.reports_dir.resolve())
    parse_seconds(options.run_time)  # a bad --run-time stops us before anything starts
    data_dir = args.data_dir.resolve()
    env = stack_env(data_dir, args.port_base)
    targets = targets_of(env)
    stack = start_stack(env, options.reports_dir / "stack.log")
    say(f"stack starting on {targets.processing} (data in {data_dir}, log in {options.reports_dir / 'stack.log'})")
    try:
        asyncio.run(wait_serving(stack, env))
        dataset_path = data_dir / DATASET_FILE
        asyncio.run(ensure_dataset(targets, plan_fields(args), dataset_path))
        say(f"locust: {options.users} users for {options.run_time}")
        return load_run(targets.processing, dataset_path, options)
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as error:
        say(f"FAILED: {error}")
        return 1
    finally:
        say("stopping the stack")
        stop_stack(stack)


if __name__ == "__main__":
    sys.exit(main())
