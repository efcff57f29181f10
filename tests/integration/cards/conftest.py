"""Cards processes for the integration tests: one wallet, two cards processes on the same
databases and Redis (a block made through one must win in the other)."""

from __future__ import annotations

import sys
import uuid
from collections.abc import AsyncIterator, Iterator

import asyncpg
import pytest
from grpc import aio
from loyalty.cards.v1 import cards_pb2_grpc
from loyalty.wallet.v1 import wallet_pb2_grpc

from tests.harness import Infra, ServiceProcess
from tests.integration.cards.support import Program

QR_TOKEN_TTL_S = 3


def cards_env(infra: Infra, wallet_address: str, **overrides: str) -> dict[str, str]:
    settings = {
        "LOYALTY_WALLET_GRPC_TARGET": wallet_address,
        "LOYALTY_CARDS_WORK_INTERVAL_S": "0.2",
        "LOYALTY_CARDS_PENDING_GRACE_S": "1",
        "LOYALTY_CARDS_QR_TOKEN_TTL_S": str(QR_TOKEN_TTL_S),
        "LOYALTY_CARDS_QR_SECRET": "integration-tests-qr-secret",
    }
    return infra.service_env("cards", **{**settings, **overrides})


@pytest.fixture(scope="session")
def cards_wallet_process(infra: Infra) -> Iterator[ServiceProcess]:
    process = ServiceProcess("wallet", infra.service_env("wallet")).start()
    yield process
    process.stop()


@pytest.fixture(scope="session")
def cards_processes(infra: Infra, cards_wallet_process: ServiceProcess) -> Iterator[list[ServiceProcess]]:
    processes = [
        ServiceProcess("cards", cards_env(infra, cards_wallet_process.grpc_address)).start(wait=False) for _ in range(2)
    ]
    try:
        for process in processes:
            process.wait_serving_line(30)
        yield processes
    finally:
        for process in processes:
            process.stop()
            _print_errors(process)


def _print_errors(process: ServiceProcess) -> None:
    """Unexpected errors a cards process logged (shown with -s; a test that hit one failed too)."""
    for record in process.log_records():
        if record.get("level") == "ERROR":
            print(f"cards process logged: {record}", file=sys.stderr)


@pytest.fixture(scope="session")
async def cards(cards_processes: list[ServiceProcess]) -> AsyncIterator[cards_pb2_grpc.CardsServiceStub]:
    async with aio.insecure_channel(cards_processes[0].grpc_address) as channel:
        yield cards_pb2_grpc.CardsServiceStub(channel)


@pytest.fixture(scope="session")
async def second_cards(cards_processes: list[ServiceProcess]) -> AsyncIterator[cards_pb2_grpc.CardsServiceStub]:
    """The other cards process: what one changes, the other must see."""
    async with aio.insecure_channel(cards_processes[1].grpc_address) as channel:
        yield cards_pb2_grpc.CardsServiceStub(channel)


@pytest.fixture(scope="session")
async def wallet(cards_wallet_process: ServiceProcess) -> AsyncIterator[wallet_pb2_grpc.WalletServiceStub]:
    async with aio.insecure_channel(cards_wallet_process.grpc_address) as channel:
        yield wallet_pb2_grpc.WalletServiceStub(channel)


@pytest.fixture
async def program(cards: cards_pb2_grpc.CardsServiceStub, wallet: wallet_pb2_grpc.WalletServiceStub) -> Program:
    return await Program(cards, wallet, f"program-{uuid.uuid4().hex[:12]}").setup()


@pytest.fixture
async def cards_db(infra: Infra) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(infra.database_url("cards"))
    try:
        yield connection
    finally:
        await connection.close()
