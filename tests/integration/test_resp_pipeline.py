"""The multiplexed Redis connection (shared/resp.py RespPipeline) against a real Redis of its own:
replies reach the caller that sent the commands whatever the interleaving, an error reply stays
with its command, a caller that gives up does not shift the replies of the others, commands sent
without waiting run before the process's later ones, and a dropped or hung connection fails
its callers and is replaced by the next call."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from redis.asyncio import Redis

from shared.embedded import EmbeddedRedis, free_port
from shared.resp import Endpoint, RespError, RespPipeline


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedis]:
    server = EmbeddedRedis(Path(tmp_path_factory.mktemp("resp-redis")), free_port()).start()
    yield server
    server.stop()


@pytest.fixture
async def redis(redis_server: EmbeddedRedis) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_server.url)
    await client.flushall()
    yield client
    await client.aclose()


@pytest.fixture
async def pipeline(redis_server: EmbeddedRedis) -> AsyncIterator[RespPipeline]:
    connection = RespPipeline(Endpoint(port=redis_server.port, timeout_s=2))
    yield connection
    await connection.close()


async def test_each_caller_gets_its_own_replies(pipeline: RespPipeline, redis: Redis) -> None:
    async def caller(index: int) -> None:
        for round_ in range(5):
            await asyncio.sleep(random.random() / 1000)
            value = f"{index}:{round_}"
            replies = await pipeline.execute(("SET", f"k{index}", value), ("GET", f"k{index}"), ("INCR", f"n{index}"))
            assert replies == [b"OK", value.encode(), round_ + 1]

    await asyncio.gather(*(caller(i) for i in range(200)))
    assert await redis.get("n199") == b"5"


async def test_an_error_reply_belongs_to_its_command(pipeline: RespPipeline) -> None:
    first, error, last = await pipeline.execute(("SET", "k", "v"), ("NOSUCHCOMMAND",), ("GET", "k"))
    assert (first, last) == (b"OK", b"v")
    assert isinstance(error, RespError) and "unknown command" in str(error).lower()
    assert await pipeline.execute(("GET", "k")) == [b"v"]  # the connection stays usable


async def test_a_caller_that_gives_up_does_not_shift_the_others(pipeline: RespPipeline, redis: Redis) -> None:
    await redis.set("slow", "1")
    abandoned = asyncio.ensure_future(pipeline.execute(("GET", "slow"), ("GET", "slow")))
    await asyncio.sleep(0)  # queued, then cancelled before its replies arrive
    abandoned.cancel()
    assert await pipeline.execute(("SET", "mine", "2"), ("GET", "mine")) == [b"OK", b"2"]
    with pytest.raises(asyncio.CancelledError):
        await abandoned


async def test_commands_sent_without_waiting_run_before_later_ones(pipeline: RespPipeline) -> None:
    for i in range(100):
        await pipeline.send(("SET", f"fire:{i}", str(i)), ("DEL", f"gone:{i}"))
        assert await pipeline.execute(("GET", f"fire:{i}")) == [str(i).encode()]


async def test_a_dropped_connection_fails_its_callers_and_the_next_call_reconnects(
    pipeline: RespPipeline, redis: Redis
) -> None:
    await pipeline.execute(("SET", "k", "v"))
    blocked = asyncio.ensure_future(pipeline.execute(("BLPOP", "nothing", "1.5")))  # waits in Redis
    await asyncio.sleep(0.1)
    await redis.client_kill_filter(_type="normal", skipme=True)
    with pytest.raises(RespError):
        await blocked
    assert await pipeline.execute(("GET", "k")) == [b"v"]


async def test_a_hung_redis_times_out_every_caller_and_is_replaced(redis_server: EmbeddedRedis, redis: Redis) -> None:
    pipeline = RespPipeline(Endpoint(port=redis_server.port, timeout_s=0.2))
    try:
        await pipeline.execute(("SET", "k", "v"))
        await redis.execute_command("CLIENT", "PAUSE", "700", "ALL")
        results = await asyncio.gather(*(pipeline.execute(("GET", "k")) for _ in range(20)), return_exceptions=True)
        assert results and all(isinstance(r, (TimeoutError, RespError)) for r in results), results
        await asyncio.sleep(0.6)
        assert await pipeline.execute(("GET", "k")) == [b"v"]
    finally:
        await redis.execute_command("CLIENT", "UNPAUSE")
        await pipeline.close()


async def test_nothing_listening_is_an_os_error() -> None:
    closed = RespPipeline(Endpoint(port=free_port(), timeout_s=1))
    with pytest.raises(ConnectionRefusedError):
        await closed.execute(("GET", "k"))
    with pytest.raises(ConnectionRefusedError):
        await closed.send(("SET", "k", "v"))
    await closed.close()
