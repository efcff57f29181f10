"""A cards process whose Redis is unreachable: Resolve answers from PostgreSQL (the truth) and
caches nothing; a block commits but answers UNAVAILABLE (its invalidation could not be made),
and a retry with the same key is safe."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import grpc
import pytest
from grpc import aio
from loyalty.cards.v1 import cards_pb2 as c
from loyalty.cards.v1 import cards_pb2_grpc

from shared.embedded import free_port
from tests.harness import Infra, ServiceProcess, metric_value
from tests.integration.cards.conftest import cards_env
from tests.integration.cards.support import OPERATOR, Program, details, key


@pytest.fixture(scope="module")
def without_redis(infra: Infra, cards_wallet_process: ServiceProcess) -> Iterator[ServiceProcess]:
    env = cards_env(infra, cards_wallet_process.grpc_address, LOYALTY_REDIS_URL=f"redis://127.0.0.1:{free_port()}/0")
    process = ServiceProcess("cards", env).start()
    yield process
    process.stop()


@pytest.fixture
async def lonely(without_redis: ServiceProcess) -> AsyncIterator[cards_pb2_grpc.CardsServiceStub]:
    async with aio.insecure_channel(without_redis.grpc_address) as channel:
        yield cards_pb2_grpc.CardsServiceStub(channel)


async def test_resolve_reads_postgresql_and_a_block_reports_its_failed_invalidation(
    program: Program, lonely: cards_pb2_grpc.CardsServiceStub, without_redis: ServiceProcess
) -> None:
    card, _ = await program.bound_card()
    for _ in range(3):
        assert (await program.resolve_number(card.card_number, stub=lonely)).usable
    metrics = without_redis.metrics_text()
    counts = {r: metric_value(metrics, "loyalty_cards_resolve_cache_total", {"result": r}) for r in ("hit", "bypass")}
    # The first lookup needs no token (it only learns the keys); the others could not read any.
    assert counts["bypass"] == 2 and not counts["hit"]
    request = c.BlockCardRequest(
        idempotency_key=key(), actor=OPERATOR, card=c.CardRef(card_id=card.card_id), reason=c.CARD_BLOCK_REASON_LOST
    )
    with pytest.raises(aio.AioRpcError) as unavailable:
        await lonely.BlockCard(request, timeout=10)
    assert unavailable.value.code() == grpc.StatusCode.UNAVAILABLE
    assert details(unavailable.value).reason == "DEPENDENCY_UNAVAILABLE"
    # The block is committed: nothing reports the card usable, here or in a process with Redis.
    assert not (await program.resolve_number(card.card_number, stub=lonely)).usable
    assert not (await program.resolve_number(card.card_number)).usable
    # The retry with the same key through a healthy process completes (and invalidates).
    retried = await program.cards.BlockCard(request, timeout=10)
    assert retried.card.state == c.Card.STATE_BLOCKED
