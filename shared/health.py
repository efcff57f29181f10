"""grpc.health.v1 status that follows real dependency checks.

Every `interval` the monitor checks that PostgreSQL answers and carries every migration of the
service, and that Redis answers PING, each within `timeout`. The overall status ("") and each
served service's status flip together; every flip is logged once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

import asyncpg
from grpc_health.v1 import health, health_pb2
from redis.asyncio import Redis

from shared.db import applied_migrations

log = logging.getLogger(__name__)
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class DependencyHealth:
    def __init__(
        self,
        *,
        servicer: health.aio.HealthServicer,
        service_names: Sequence[str],
        pool: asyncpg.Pool,
        redis: Redis,
        expected_migrations: Sequence[str],
        interval_s: float,
        timeout_s: float,
    ) -> None:
        self.servicer = servicer
        self.service_names = ["", *service_names]
        self.pool = pool
        self.redis = redis
        self.expected_migrations = set(expected_migrations)
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self.serving: bool | None = None
        self.stopping = False

    async def check_postgres(self) -> str | None:
        """None when healthy, else what is wrong."""
        try:
            async with asyncio.timeout(self.timeout_s):
                async with self.pool.acquire() as connection:
                    applied = set(await applied_migrations(connection))
        except Exception as error:  # any failure means "not reachable"; the reason is logged
            return f"postgresql unreachable: {type(error).__name__}: {error}"
        missing = self.expected_migrations - applied
        if missing:
            return f"postgresql schema is behind: migrations {sorted(missing)} not applied"
        return None

    async def check_redis(self) -> str | None:
        try:
            async with asyncio.timeout(self.timeout_s):
                await self.redis.ping()
        except Exception as error:
            return f"redis unreachable: {type(error).__name__}: {error}"
        return None

    async def check_once(self) -> bool:
        problems = [p for p in await asyncio.gather(self.check_postgres(), self.check_redis()) if p]
        serving = not problems
        if self.stopping:
            return serving
        if serving != self.serving:
            status = SERVING if serving else NOT_SERVING
            for name in self.service_names:
                await self.servicer.set(name, status)
            if serving:
                log.info("health: SERVING")
            else:
                log.warning("health: NOT_SERVING: %s", "; ".join(problems))
            self.serving = serving
        return serving

    async def run(self) -> None:
        while not self.stopping:
            await self.check_once()
            await asyncio.sleep(self.interval_s)

    async def enter_graceful_shutdown(self) -> None:
        self.stopping = True
        await self.servicer.enter_graceful_shutdown()
