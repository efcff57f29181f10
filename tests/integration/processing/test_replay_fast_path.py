"""Idempotency with and without the Redis fast path (DESIGN §2: PostgreSQL is the truth, Redis
only saves work). With Redis up, replays are served from it; with Redis down (a second
processing process whose Redis address answers nothing), every guarantee still holds: same key
same body -> the same bytes, different body -> IDEMPOTENCY_KEY_REUSED, concurrent sends -> one
effect."""

from __future__ import annotations

import asyncio
import socket
import urllib.request
from collections.abc import AsyncIterator, Iterator

import grpc
import pytest
from grpc import aio
from loyalty.processing.v1 import processing_pb2 as p
from loyalty.processing.v1 import processing_pb2_grpc

from tests.harness import ServiceProcess
from tests.integration.cards.support import details
from tests.integration.processing.world import World, new_receipt_id, purchase, register, wallet_total


def unused_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="module")
def redis_down_process(stack: dict[str, ServiceProcess]) -> Iterator[ServiceProcess]:
    """Processing on the world's database, with a Redis address where nothing listens."""
    env = dict(stack["processing"].env)
    env["LOYALTY_REDIS_URL"] = f"redis://127.0.0.1:{unused_port()}/0"
    process = ServiceProcess("processing", env).start()
    yield process
    process.stop()


@pytest.fixture(scope="module")
async def redis_down(redis_down_process: ServiceProcess) -> AsyncIterator[processing_pb2_grpc.ProcessingServiceStub]:
    channel = aio.insecure_channel(redis_down_process.grpc_address)
    yield processing_pb2_grpc.ProcessingServiceStub(channel)
    await channel.close()


def replay_cache_count(process: ServiceProcess, outcome: str) -> float:
    with urllib.request.urlopen(f"http://{process.metrics_address}/metrics", timeout=5) as response:
        text = response.read().decode()
    for line in text.splitlines():
        if line.startswith(f'loyalty_replay_cache_total{{outcome="{outcome}"}}'):
            return float(line.split()[-1])
    raise AssertionError(f"no loyalty_replay_cache_total for {outcome}")


async def same_key_at_once(
    processing: processing_pb2_grpc.ProcessingServiceStub, request: p.PurchaseRequest, times: int
) -> list[bytes | str]:
    """Send one request `times` times at once: each answer's bytes, or its error reason."""

    async def send() -> bytes | str:
        try:
            response = await processing.Purchase(request)
        except aio.AioRpcError as error:
            return details(error).reason
        return bytes(response.SerializeToString())

    return list(await asyncio.gather(*(send() for _ in range(times))))


async def test_with_redis_up_replays_come_from_redis(world: World, stack: dict[str, ServiceProcess]) -> None:
    member_id, phone = await register(world)
    request = purchase(world, phone, new_receipt_id())
    first = await world.processing.Purchase(request)
    hits = replay_cache_count(stack["processing"], "hit")
    again = await world.processing.Purchase(request)
    assert again.SerializeToString() == first.SerializeToString()
    assert replay_cache_count(stack["processing"], "hit") == hits + 1
    changed = purchase(world, phone, request.receipt.receipt_id, idempotency_key=request.idempotency_key)
    changed.receipt.lines[0].sku = "OTHER"
    with pytest.raises(aio.AioRpcError) as refused:
        await world.processing.Purchase(changed)
    assert details(refused.value).reason == "IDEMPOTENCY_KEY_REUSED"
    assert await wallet_total(world, member_id) == 5000


async def test_with_redis_up_concurrent_sends_have_one_effect(world: World) -> None:
    member_id, phone = await register(world)
    answers = await same_key_at_once(world.processing, purchase(world, phone, new_receipt_id()), 10)
    assert len({a for a in answers if isinstance(a, bytes)}) == 1
    assert {a for a in answers if isinstance(a, str)} <= {"REQUEST_IN_PROGRESS"}
    assert await wallet_total(world, member_id) == 5000


async def test_with_redis_down_the_database_keeps_every_guarantee(
    world: World, redis_down: processing_pb2_grpc.ProcessingServiceStub, redis_down_process: ServiceProcess
) -> None:
    member_id, phone = await register(world)
    request = purchase(world, phone, new_receipt_id())
    first = await redis_down.Purchase(request)
    assert first.operation.state == p.OPERATION_STATE_CAPTURED
    again = await redis_down.Purchase(request)
    assert again.SerializeToString() == first.SerializeToString()
    changed = purchase(world, phone, request.receipt.receipt_id, idempotency_key=request.idempotency_key)
    changed.receipt.lines[0].sku = "OTHER"
    with pytest.raises(aio.AioRpcError) as refused:
        await redis_down.Purchase(changed)
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert details(refused.value).reason == "IDEMPOTENCY_KEY_REUSED"
    answers = await same_key_at_once(redis_down, purchase(world, phone, new_receipt_id()), 10)
    assert len({a for a in answers if isinstance(a, bytes)}) == 1
    assert {a for a in answers if isinstance(a, str)} <= {"REQUEST_IN_PROGRESS"}
    assert await wallet_total(world, member_id) == 10_000
    assert replay_cache_count(redis_down_process, "unavailable") >= 3
    assert replay_cache_count(redis_down_process, "hit") == 0
