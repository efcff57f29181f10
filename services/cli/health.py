"""`loyalty health`: the grpc.health.v1 status of all five services."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from shared.clients import create_channel
from shared.config import SERVICES, grpc_target


@dataclass(frozen=True)
class ServiceHealth:
    service: str
    target: str
    status: str  # SERVING, NOT_SERVING, UNKNOWN, or UNREACHABLE (no answer)
    detail: str = ""


async def check(service: str, target: str, timeout_s: float) -> ServiceHealth:
    async with create_channel(target, default_timeout_s=timeout_s) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            response = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=timeout_s)
        except aio.AioRpcError as error:
            return ServiceHealth(service, target, "UNREACHABLE", f"{error.code().name}: {error.details()}")
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
    return ServiceHealth(service, target, status)


async def check_all(timeout_s: float = 2.0) -> list[ServiceHealth]:
    return list(await asyncio.gather(*(check(s, grpc_target(s), timeout_s) for s in SERVICES)))


def run(timeout_s: float) -> int:
    results = asyncio.run(check_all(timeout_s))
    width = max(len(s) for s in SERVICES)
    for result in results:
        detail = f"  {result.detail}" if result.detail else ""
        print(f"{result.service:<{width}}  {result.target:<21}  {result.status}{detail}")
    return 0 if all(r.status == "SERVING" for r in results) else 1
