"""Process bootstrap shared by all five services.

    config (env) -> logging, tracing -> PostgreSQL pool, Redis -> grpc.aio server on uvloop
    (service servicers + diagnostics + health + reflection, edge interceptor) -> /metrics ->
    dependency-driven health -> wait for SIGTERM/SIGINT -> NOT_SERVING -> stop(grace) -> close.

A service module only supplies `register(server, runtime)`, which adds its servicers and
returns their descriptors.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import asyncpg
import uvloop
from google.protobuf.descriptor import ServiceDescriptor
from grpc import aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from loyalty.diagnostics.v1 import diagnostics_pb2, diagnostics_pb2_grpc
from redis.asyncio import Redis

from shared import tracing
from shared.clients import SERVER_KEEPALIVE_OPTIONS
from shared.config import ConfigError, ServiceConfig, load_config
from shared.db import create_pool, expected_migrations
from shared.health import DependencyHealth
from shared.interceptors import ServerEdgeInterceptor
from shared.logs import configure_logging
from shared.metrics import preinitialize_server_methods, rpc_type, serve_metrics, time_gc_pauses
from shared.redis_client import create_redis
from shared.servicers import DiagnosticsServicer

log = logging.getLogger(__name__)

EXIT_CONFIG_ERROR = 2
EXIT_STARTUP_ERROR = 3
# How long start-up waits for PostgreSQL before giving up (the supervisor then reports it).
POSTGRES_WAIT_S = 30.0


class StartupError(Exception):
    """The process cannot start (port taken, database unreachable); the message says why."""


@dataclass(frozen=True, kw_only=True)
class Runtime:
    """What a service's servicers get: its configuration and its connections."""

    config: ServiceConfig
    pool: asyncpg.Pool
    redis: Redis
    traced: bool
    # Run after in-flight calls finished and before the pools close (stop writers, workers).
    shutdown_hooks: list[Callable[[], Awaitable[None]]] = field(default_factory=list)


Register = Callable[[aio.Server, Runtime], Sequence[ServiceDescriptor]]


def main(service: str, register: Register) -> None:
    """Entry point of `python -m services.<service>`."""
    try:
        config = load_config(service)
    except ConfigError as error:
        print(f"loyalty-{service}: configuration error: {error}", file=sys.stderr)
        sys.exit(EXIT_CONFIG_ERROR)
    configure_logging(service=service, level=config.log_level)
    provider = tracing.configure_tracing(service=service, otlp_endpoint=config.otlp_endpoint)
    try:
        uvloop.run(serve(config, register, traced=provider is not None))
    except StartupError as error:
        log.error("cannot start: %s", error)
        print(f"loyalty-{service}: cannot start: {error}", file=sys.stderr)
        sys.exit(EXIT_STARTUP_ERROR)
    finally:
        if provider is not None:
            provider.shutdown()


async def serve(config: ServiceConfig, register: Register, *, traced: bool) -> None:
    pool = await _connect_postgres(config)
    redis = create_redis(config)
    try:
        await _serve_with(config, register, traced=traced, pool=pool, redis=redis)
    finally:
        await pool.close()
        await redis.aclose()


# Cyclic garbage collection, tuned for request paths: every call makes dozens of short-lived
# objects (protos, requests, rows), so with the default threshold (700) the collector ran every
# few calls, and its full collections walked the whole heap (grpc, protobuf, the pool): about a
# third of the wallet's CPU per transfer in a batch benchmark, 2-14% of processing's in the
# purchase benchmark. Objects made at start-up are frozen (never scanned again).
# The young generation's threshold bounds each pause (loyalty_gc_pause_seconds): grpc.aio's
# server leaves a reference cycle of 5 objects per incoming call (its _find_method_handler scope
# and the query_handlers closure), which only a collection frees. At 50,000 a collection freed
# about 10,000 calls' worth and stopped cards, processing or the wallet for 13-84 ms, a latency
# tail for every call in flight; at 5,000 the pauses stay under 7 ms, with no change in CPU per
# purchase or per transfer beyond the benchmarks' noise.
GC_THRESHOLDS = (5_000, 20, 100)


def tune_gc() -> None:
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
    time_gc_pauses()


async def _serve_with(
    config: ServiceConfig, register: Register, *, traced: bool, pool: asyncpg.Pool, redis: Redis
) -> None:
    server = aio.server(
        interceptors=[*tracing.server_interceptors(traced), ServerEdgeInterceptor()],
        # A second process on the same port must fail, not silently share it (grpc/grpc#16005).
        options=[("grpc.so_reuseport", 0), *SERVER_KEEPALIVE_OPTIONS],
        maximum_concurrent_rpcs=config.grpc_concurrent_rpcs_max,
    )
    runtime = Runtime(config=config, pool=pool, redis=redis, traced=traced)
    descriptors = [*register(server, runtime), _add_diagnostics(server, config.service)]
    tune_gc()
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    health_descriptor = health_pb2.DESCRIPTOR.services_by_name["Health"]
    reflection.enable_server_reflection(
        [*(d.full_name for d in descriptors), health.SERVICE_NAME, reflection.SERVICE_NAME], server
    )
    preinitialize_server_methods(_methods([*descriptors, health_descriptor]))

    grpc_port = _bind(server, config)
    try:
        metrics_port = serve_metrics(host=config.metrics_host, port=config.metrics_port)
    except OSError as error:
        raise StartupError(f"metrics port {config.metrics_host}:{config.metrics_port} unavailable: {error}") from None

    await server.start()
    monitor = DependencyHealth(
        servicer=health_servicer,
        service_names=[d.full_name for d in descriptors],
        pool=pool,
        redis=redis,
        expected_migrations=expected_migrations(config.service),
        interval_s=config.health_check_interval_s,
        timeout_s=config.dependency_timeout_s,
    )
    await monitor.check_once()
    monitor_task = asyncio.create_task(monitor.run(), name="health-monitor")
    log.info(
        "serving",
        extra={
            "grpc_address": f"{config.grpc_host}:{grpc_port}",
            "metrics_address": f"{config.metrics_host}:{metrics_port}",
            "grpc_services": [d.full_name for d in descriptors],
        },
    )
    await _wait_for_stop_signal()
    log.info("stopping: NOT_SERVING, then up to %.1f s for in-flight calls", config.shutdown_grace_s)
    await monitor.enter_graceful_shutdown()
    started = time.monotonic()
    await server.stop(config.shutdown_grace_s)
    for hook in runtime.shutdown_hooks:
        await hook()
    monitor_task.cancel()
    log.info("stopped", extra={"drain_s": round(time.monotonic() - started, 3)})


def _add_diagnostics(server: aio.Server, service: str) -> ServiceDescriptor:
    diagnostics_pb2_grpc.add_DiagnosticsServiceServicer_to_server(DiagnosticsServicer(service), server)
    return diagnostics_pb2.DESCRIPTOR.services_by_name["DiagnosticsService"]


def _methods(descriptors: Sequence[ServiceDescriptor]) -> list[tuple[str, str]]:
    return [
        (
            f"/{d.full_name}/{m.name}",
            rpc_type(request_streaming=m.client_streaming, response_streaming=m.server_streaming),
        )
        for d in descriptors
        for m in d.methods
    ]


def _bind(server: aio.Server, config: ServiceConfig) -> int:
    address = f"{config.grpc_host}:{config.grpc_port}"
    try:
        port = server.add_insecure_port(address)
    except RuntimeError:
        raise StartupError(f"gRPC port {address} is already in use (or the address is invalid)") from None
    if port == 0:
        raise StartupError(f"gRPC port {address} could not be bound")
    return int(port)


async def _connect_postgres(config: ServiceConfig) -> asyncpg.Pool:
    deadline = time.monotonic() + POSTGRES_WAIT_S
    while True:
        try:
            return await create_pool(config)
        except (TimeoutError, OSError, asyncpg.PostgresError) as error:
            if time.monotonic() > deadline:
                raise StartupError(f"PostgreSQL unreachable for {POSTGRES_WAIT_S:.0f} s: {error}") from None
            log.warning("waiting for PostgreSQL: %s", error)
            await asyncio.sleep(1.0)


async def _wait_for_stop_signal() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
