"""The Redis client of a process: idempotency fast path, counters and event streams.

Redis is never the source of truth (DESIGN §2): losing it must cost speed, not correctness.
"""

from __future__ import annotations

from redis.asyncio import BlockingConnectionPool, Redis

from shared.config import ServiceConfig


def create_redis(config: ServiceConfig) -> Redis:
    pool = BlockingConnectionPool.from_url(
        config.redis_url,
        # Bounded: callers wait (up to `timeout`) for a free connection instead of opening more.
        max_connections=config.db_pool_size_max * 4,
        timeout=config.dependency_timeout_s,
        socket_timeout=config.dependency_timeout_s,
        socket_connect_timeout=config.dependency_timeout_s,
    )
    return Redis(connection_pool=pool)
