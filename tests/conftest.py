from __future__ import annotations

import os

# gRPC's fork handlers run in every child this process forks while its test clients have gRPC
# threads; a child forked to exec pg_ctl once failed in them ("epoll_wait error: Bad file
# descriptor") and the stop it was to run failed with it. Our children always exec at once, so
# they need no fork support. Set before anything imports grpc.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "0")

from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.config import SERVICES
from shared.embedded import EmbeddedPostgres, EmbeddedRedis, free_port
from tests.harness import Infra, ServiceProcess


@pytest.fixture(scope="session")
def infra(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Infra]:
    """PostgreSQL + Redis for the session: embedded by default, or the servers named by
    LOYALTY_TEST_DATABASE_URL / LOYALTY_TEST_REDIS_URL."""
    base: Path = tmp_path_factory.mktemp("infra")
    postgres = redis = None
    database_url = os.environ.get("LOYALTY_TEST_DATABASE_URL")
    redis_url = os.environ.get("LOYALTY_TEST_REDIS_URL")
    if not database_url:
        postgres = EmbeddedPostgres(base / "postgres", free_port()).start()
        database_url = postgres.url
    if not redis_url:
        redis = EmbeddedRedis(base / "redis", free_port()).start()
        redis_url = redis.url
    infra = Infra(database_server_url=database_url, redis_url=redis_url)
    for service in SERVICES:
        infra.migrate(service)
    yield infra
    if redis is not None:
        redis.stop()
    if postgres is not None:
        postgres.stop(mode="immediate")


@pytest.fixture(scope="session")
def running_services(infra: Infra) -> Iterator[dict[str, ServiceProcess]]:
    """All five services, started once for the read-only tests of the session."""
    processes = {s: ServiceProcess(s, infra.service_env(s)).start(wait=False) for s in SERVICES}
    try:
        for process in processes.values():
            process.wait_serving_line(30)
        yield processes
    finally:
        for process in processes.values():
            process.stop()
