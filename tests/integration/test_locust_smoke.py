"""The locust scenarios, briefly, against a real stack: wallet, cards, anti-fraud and processing on
fresh databases, a small seeded data set, a headless run of a few seconds with a few users. Every
scenario must make requests and none may fail (the users check every answer, so a wrong balance
or a wrong refund share is a failure, not only an error status)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from loadtests.locust.__main__ import (
    REFUND_REQUESTS,
    SCENARIO_REQUESTS,
    LocustOptions,
    dataset_of,
    load_run,
    read_stats,
)
from services.cli.seed import SeedPlan, seed
from shared.config import with_database
from shared.db import migrate
from tests.harness import Infra, ServiceProcess

PLAN = SeedPlan(
    partners=1, outlets_per_partner=1, terminals_per_outlet=6, members=40, welcome_points=500_000, rules="demo"
)


def fresh_database(infra: Infra, service: str) -> str:
    url = with_database(infra.database_server_url, f"loyalty_test_{service}_locust_{uuid.uuid4().hex[:8]}")
    migrate(service=service, database_url=url)
    return url


@pytest.fixture(scope="module")
def stack(infra: Infra) -> Iterator[dict[str, ServiceProcess]]:
    def start(service: str, **env: str) -> ServiceProcess:
        database = {f"LOYALTY_{service.upper()}_DATABASE_URL": fresh_database(infra, service)}
        return ServiceProcess(service, infra.service_env(service, **database, **env)).start()

    wallet = start("wallet")
    antifraud = start("antifraud")  # without it processing refuses paying with points (risk fallback)
    cards = start("cards", LOYALTY_WALLET_GRPC_TARGET=wallet.grpc_address)
    processing = start(
        "processing",
        LOYALTY_WALLET_GRPC_TARGET=wallet.grpc_address,
        LOYALTY_CARDS_GRPC_TARGET=cards.grpc_address,
        LOYALTY_ANTIFRAUD_GRPC_TARGET=antifraud.grpc_address,
        LOYALTY_PROCESSING_CONFIG_REFRESH_S="0.1",
    )
    yield {"wallet": wallet, "cards": cards, "antifraud": antifraud, "processing": processing}
    for process in (processing, cards, antifraud, wallet):
        process.stop()


async def test_every_scenario_runs_without_a_failure(stack: dict[str, ServiceProcess], tmp_path: Path) -> None:
    seeded = await seed(
        processing_target=stack["processing"].grpc_address,
        cards_target=stack["cards"].grpc_address,
        wallet_target=stack["wallet"].grpc_address,
        plan=PLAN,
    )
    dataset_path = tmp_path / "dataset.json"
    dataset_of(seeded, {"members": PLAN.members}).save(dataset_path)
    options = LocustOptions(users=6, spawn_rate=6, run_time="8s", reports_dir=tmp_path / "reports")

    exit_code = load_run(stack["processing"].grpc_address, dataset_path, options)

    stats = {s.name: s for s in read_stats(options.reports_dir)}
    failures = {name: s.failures for name, s in stats.items() if s.failures}
    assert failures == {}, f"{failures}; service errors: {service_errors(stack)}"
    for name in SCENARIO_REQUESTS:
        assert name in stats and stats[name].requests > 0, f"{name} made no requests"
    assert sum(stats[name].requests for name in REFUND_REQUESTS if name in stats) > 0
    assert exit_code == 0
    assert (options.reports_dir / "locust.html").stat().st_size > 0


def service_errors(stack: dict[str, ServiceProcess]) -> list[str]:
    """The error log lines of the services, to say why a request failed."""
    return [
        f"{name}: {record}"[:3000]
        for name, process in stack.items()
        for record in process.log_records()
        if record.get("level") in ("ERROR", "CRITICAL")
    ][:5]
