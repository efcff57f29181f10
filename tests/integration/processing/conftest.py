"""The processing integration tests' shared stack: wallet, cards and processing processes, each
on a fresh database, and a configured program (a `World`), once per test module."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
from grpc import aio
from loyalty.cards.v1 import cards_pb2_grpc
from loyalty.processing.v1 import processing_pb2_grpc, program_admin_pb2_grpc
from loyalty.wallet.v1 import wallet_pb2_grpc

from tests.harness import Infra, ServiceProcess
from tests.integration.processing.world import (
    World,
    configure_program,
    fresh_database,
    processing_env,
    start_cards,
    start_wallet,
)


@pytest.fixture(scope="module")
def stack(infra: Infra) -> Iterator[dict[str, ServiceProcess]]:
    """Wallet, cards and processing, each on a database of its own (the program is global)."""
    wallet = start_wallet(infra, fresh_database(infra, "wallet"))
    cards = start_cards(infra, wallet)
    processing = ServiceProcess(
        "processing",
        processing_env(infra, database_url=fresh_database(infra, "processing"), wallet=wallet, cards=cards),
    ).start()
    yield {"wallet": wallet, "cards": cards, "processing": processing}
    for process in (processing, cards, wallet):
        process.stop()


@pytest.fixture(scope="module")
async def world(stack: dict[str, ServiceProcess], infra: Infra) -> AsyncIterator[World]:
    channels = {name: aio.insecure_channel(process.grpc_address) for name, process in stack.items()}
    admin = program_admin_pb2_grpc.ProgramAdminServiceStub(channels["processing"])
    wallet = wallet_pb2_grpc.WalletServiceStub(channels["wallet"])
    program_id, terminal_id = await configure_program(admin, wallet)
    yield World(
        processing=processing_pb2_grpc.ProcessingServiceStub(channels["processing"]),
        admin=admin,
        wallet=wallet,
        cards=cards_pb2_grpc.CardsServiceStub(channels["cards"]),
        program_id=program_id,
        terminal_id=terminal_id,
        redis_url=infra.redis_url,
    )
    for channel in channels.values():
        await channel.close()
