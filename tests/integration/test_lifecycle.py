"""Process lifecycle of a service: dependency-driven health, graceful shutdown, refusing to
start on bad configuration or a taken port, bounded concurrency."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from loyalty.diagnostics.v1 import diagnostics_pb2, diagnostics_pb2_grpc
from loyalty.wallet.v1 import wallet_pb2, wallet_pb2_grpc

from shared.config import with_database
from shared.db import migrate
from shared.embedded import EmbeddedPostgres, EmbeddedRedis, free_port
from tests.harness import Infra, ServiceProcess


@pytest.fixture
def own_postgres(tmp_path: Path) -> Iterator[EmbeddedPostgres]:
    """A PostgreSQL this test may stop and start (never the session's shared one)."""
    postgres = EmbeddedPostgres(tmp_path / "postgres", free_port()).start()
    yield postgres
    postgres.stop(mode="immediate")


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[EmbeddedRedis]:
    redis = EmbeddedRedis(tmp_path / "redis", free_port()).start()
    yield redis
    redis.stop()


@pytest.fixture
def wallet(infra: Infra) -> Iterator[ServiceProcess]:
    process = ServiceProcess("wallet", infra.service_env("wallet")).start()
    yield process
    process.stop()


def test_health_follows_postgresql_going_away_and_coming_back(infra: Infra, own_postgres: EmbeddedPostgres) -> None:
    database_url = with_database(own_postgres.url, "loyalty_wallet")
    migrate(service="wallet", database_url=database_url)
    env = infra.service_env("wallet", LOYALTY_WALLET_DATABASE_URL=database_url)
    process = ServiceProcess("wallet", env).start()
    try:
        process.wait_health("SERVING")
        own_postgres.stop(mode="immediate")
        process.wait_health("NOT_SERVING")
        assert process.health_status("loyalty.wallet.v1.WalletService") == "NOT_SERVING"
        # A call that needs the database says so: UNAVAILABLE, retryable, never INTERNAL.
        with grpc.insecure_channel(process.grpc_address) as channel, pytest.raises(grpc.RpcError) as raised:
            wallet_pb2_grpc.WalletServiceStub(channel).GetBalances(
                wallet_pb2.GetBalancesRequest(account_ids=["00000000-0000-0000-0000-000000000001"]), timeout=10
            )
        assert raised.value.code() == grpc.StatusCode.UNAVAILABLE  # type: ignore[attr-defined]
        assert "DEPENDENCY_UNAVAILABLE" in str(raised.value.trailing_metadata())  # type: ignore[attr-defined]
        own_postgres.start()
        process.wait_health("SERVING")
    finally:
        process.stop()
    messages = [str(r["message"]) for r in process.log_records()]
    assert any(m.startswith("health: NOT_SERVING: postgresql unreachable") for m in messages)


def test_health_follows_redis_going_away_and_coming_back(infra: Infra, own_redis: EmbeddedRedis) -> None:
    process = ServiceProcess("cards", infra.service_env("cards", LOYALTY_REDIS_URL=own_redis.url)).start()
    try:
        process.wait_health("SERVING")
        own_redis.stop()
        process.wait_health("NOT_SERVING")
        own_redis.start()
        process.wait_health("SERVING")
    finally:
        process.stop()


def test_health_is_not_serving_while_the_schema_is_behind(infra: Infra, own_postgres: EmbeddedPostgres) -> None:
    # The database exists but was never migrated: the service must not claim to be ready.
    database_url = with_database(own_postgres.url, "postgres")
    env = infra.service_env("wallet", LOYALTY_WALLET_DATABASE_URL=database_url)
    process = ServiceProcess("wallet", env).start()
    try:
        process.wait_health("NOT_SERVING")
        messages = [str(r["message"]) for r in process.log_records()]
        assert any("schema is behind" in m for m in messages)
    finally:
        process.stop()


async def test_sigterm_lets_in_flight_calls_finish_and_refuses_new_ones(wallet: ServiceProcess) -> None:
    async with aio.insecure_channel(wallet.grpc_address) as channel:
        echo = diagnostics_pb2_grpc.DiagnosticsServiceStub(channel).Echo
        health_watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=""))
        assert (await health_watch.read()).status == health_pb2.HealthCheckResponse.SERVING
        in_flight = [
            asyncio.ensure_future(echo(diagnostics_pb2.EchoRequest(payload=bytes([i]), delay_ms=1500), timeout=10))
            for i in range(5)
        ]
        await asyncio.sleep(0.4)  # the calls are now inside the handler
        wallet.signal(signal.SIGTERM)
        # NOT_SERVING is announced first, to watchers (load balancers) ...
        assert (await health_watch.read()).status == health_pb2.HealthCheckResponse.NOT_SERVING
        # ... and every call that was in flight completes normally.
        responses = await asyncio.gather(*in_flight)
        assert sorted(r.payload for r in responses) == [bytes([i]) for i in range(5)]
    assert await asyncio.to_thread(wallet.wait, 15) == 0
    messages = [str(r["message"]) for r in wallet.log_records()]
    assert messages.index("stopped") > messages.index("stopping: NOT_SERVING, then up to 5.0 s for in-flight calls")


async def test_calls_longer_than_the_grace_period_are_cut_at_the_grace(infra: Infra) -> None:
    process = ServiceProcess("cards", infra.service_env("cards", LOYALTY_SHUTDOWN_GRACE_S="0.5")).start()
    try:
        async with aio.insecure_channel(process.grpc_address) as channel:
            echo = diagnostics_pb2_grpc.DiagnosticsServiceStub(channel).Echo
            slow = asyncio.ensure_future(echo(diagnostics_pb2.EchoRequest(delay_ms=8000), timeout=20))
            await asyncio.sleep(0.3)
            started = time.monotonic()
            process.signal(signal.SIGTERM)
            with pytest.raises(aio.AioRpcError):
                await slow
            assert time.monotonic() - started < 5
        assert await asyncio.to_thread(process.wait, 15) == 0
    finally:
        process.stop()


def test_a_bad_environment_variable_stops_start_up_with_a_clear_message(infra: Infra) -> None:
    process = ServiceProcess("wallet", infra.service_env("wallet", LOYALTY_WALLET_GRPC_PORT="fifty")).start(wait=False)
    assert process.wait(15) == 2
    time.sleep(0.1)
    output = "".join(process.log_lines)
    assert "loyalty-wallet: configuration error: LOYALTY_WALLET_GRPC_PORT='fifty'" in output
    assert "expected an integer between 0 and 65535" in output


def test_a_second_server_on_a_taken_port_fails_loudly(wallet: ServiceProcess) -> None:
    port = wallet.grpc_address.rsplit(":", 1)[1]
    env = {**wallet.env, "LOYALTY_GRPC_PORT": port}
    second = ServiceProcess("wallet", env).start(wait=False)
    assert second.wait(15) == 3
    time.sleep(0.1)
    assert f"cannot start: gRPC port 127.0.0.1:{port} is already in use" in "".join(second.log_lines)
    wallet.wait_health("SERVING")  # the first one is unaffected


async def test_concurrency_beyond_the_limit_is_refused_not_queued(infra: Infra) -> None:
    env = infra.service_env("notifications", LOYALTY_GRPC_CONCURRENT_RPCS_MAX="2")
    process = ServiceProcess("notifications", env).start()
    try:
        async with aio.insecure_channel(process.grpc_address) as channel:
            echo = diagnostics_pb2_grpc.DiagnosticsServiceStub(channel).Echo
            results = await asyncio.gather(
                *(echo(diagnostics_pb2.EchoRequest(delay_ms=800), timeout=10) for _ in range(4)),
                return_exceptions=True,
            )
        codes = sorted(r.code().name if isinstance(r, aio.AioRpcError) else "OK" for r in results)
        assert codes == ["OK", "OK", "RESOURCE_EXHAUSTED", "RESOURCE_EXHAUSTED"]
    finally:
        process.stop()


def test_health_check_of_an_unknown_service_name_is_not_found(wallet: ServiceProcess) -> None:
    with grpc.insecure_channel(wallet.grpc_address) as channel, pytest.raises(grpc.RpcError) as raised:
        health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service="nope.v1.Nope"), timeout=5)
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND  # type: ignore[attr-defined]
