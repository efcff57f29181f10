"""The whole platform for a benchmark: embedded PostgreSQL (durable commits) and Redis in a
temporary folder, the five databases created fresh and migrated, and the five services each in
its own process (`python -m services.<name>`, as `loyalty run` starts them), wired to each other
through LOYALTY_<SERVICE>_GRPC_TARGET. Also the CPU meter the benchmarks read: per process, with
PostgreSQL counted over its whole process tree (every backend is a child of the postmaster)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import psutil

from shared.config import SERVICES
from shared.embedded import PG_SETTINGS, EmbeddedPostgres, EmbeddedRedis, free_port
from tests.harness import Infra, ServiceProcess

# Each service starts once the services it calls are serving: cards opens wallet accounts,
# processing calls cards, wallet and anti-fraud.
START_ORDER = (("wallet", "antifraud", "notifications"), ("cards",), ("processing",))
START_TIMEOUT_S = 60.0
# The services' own defaults for their health checks: the test harness polls five times as often,
# which a benchmark would count against the services.
PRODUCTION_CHECKS = {"LOYALTY_HEALTH_CHECK_INTERVAL_S": "1.0", "LOYALTY_DEPENDENCY_TIMEOUT_S": "1.0"}


@dataclass
class Stack:
    infra: Infra
    postgres: EmbeddedPostgres
    redis: EmbeddedRedis
    services: dict[str, ServiceProcess] = field(default_factory=dict)

    def address(self, service: str) -> str:
        return self.services[service].grpc_address

    def metrics_addresses(self) -> dict[str, str]:
        return {name: process.metrics_address for name, process in self.services.items()}

    def pids(self) -> dict[str, int]:
        """Every process of the platform by name; "postgres" is the postmaster."""
        pids = {name: _pid(process) for name, process in self.services.items()}
        pids["postgres"] = int((self.postgres.pgdata / "postmaster.pid").read_text().split()[0])
        if self.redis.process is None:
            raise RuntimeError("the embedded Redis is not running")
        pids["redis"] = self.redis.process.pid
        return pids


def _pid(process: ServiceProcess) -> int:
    if process.process is None:
        raise RuntimeError(f"{process.service} is not running")
    return process.process.pid


@contextlib.contextmanager
def running_stack(data_dir: Path, env: Mapping[str, Mapping[str, str]] | None = None) -> Iterator[Stack]:
    """Start everything under `data_dir` (which must be new: the databases are fresh), yield it,
    and stop it all. `env` adds variables per service."""
    if PG_SETTINGS.get("synchronous_commit") != "on":
        raise RuntimeError("benchmarks need durable commits (synchronous_commit=on)")
    postgres = EmbeddedPostgres(data_dir / "postgres", free_port()).start()
    redis = EmbeddedRedis(data_dir / "redis", free_port()).start()
    stack = Stack(Infra(database_server_url=postgres.url, redis_url=redis.url), postgres, redis)
    try:
        for service in SERVICES:
            stack.infra.migrate(service)
        for wave in START_ORDER:
            _start_wave(stack, wave, env or {})
        yield stack
    finally:
        for service in reversed([s for wave in START_ORDER for s in wave]):
            if service in stack.services:
                stack.services[service].stop()
        redis.stop()
        postgres.stop(mode="immediate")


def analyze(database_urls: Iterable[str]) -> None:
    """ANALYZE the databases after a benchmark's setup, as after any bulk load. The services
    prepared their statements while the tables were empty, and a plan made then stays (a generic
    one for as long as the statement is cached): the wallet's batch write scanned every lot to
    update two. PostgreSQL re-plans a prepared statement once its tables' statistics change;
    autovacuum would change them within a minute or so, in the middle of a measured step."""

    async def analyze_all() -> None:
        for url in database_urls:
            connection = await asyncpg.connect(url)
            try:
                await connection.execute("ANALYZE")
            finally:
                await connection.close()

    asyncio.run(analyze_all())


def _start_wave(stack: Stack, wave: tuple[str, ...], env: Mapping[str, Mapping[str, str]]) -> None:
    targets = {f"LOYALTY_{name.upper()}_GRPC_TARGET": p.grpc_address for name, p in stack.services.items()}
    started = [
        ServiceProcess(
            service, stack.infra.service_env(service, **targets, **PRODUCTION_CHECKS, **env.get(service, {}))
        ).start(wait=False)
        for service in wave
    ]
    for process in started:
        process.wait_serving_line(START_TIMEOUT_S)
        stack.services[process.service] = process


@dataclass(frozen=True)
class CpuMeter:
    """CPU seconds used so far by named processes (PostgreSQL with all its backends), by this
    process (the load generator, as `own`), and by the whole machine."""

    pids: Mapping[str, int]
    trees: frozenset[str] = frozenset({"postgres"})
    own: str = "driver"

    def snapshot(self) -> dict[str, float]:
        """Per process; a tree's processes as "<name>#<pid>", and "<name>#reaped" for those of
        them that ended (see cpu_spent)."""
        cpu: dict[str, float] = {}
        for name, pid in self.pids.items():
            cpu.update(_cpu_of(name, pid, tree=name in self.trees))
        box = psutil.cpu_times()
        cpu[self.own] = time.process_time()
        cpu["box_busy"] = box.user + box.nice + box.system + box.irq + box.softirq
        cpu["box_capacity"] = time.perf_counter() * (os.cpu_count() or 1)
        return cpu


def _cpu_of(name: str, pid: int, *, tree: bool) -> dict[str, float]:
    process = psutil.Process(pid)
    times = process.cpu_times()
    if not tree:
        return {name: times.user + times.system}
    # When the root reaps a child (the postmaster its backends), the kernel adds the child's whole
    # CPU time to the root's children_* times.
    cpu = {f"{name}#{pid}": times.user + times.system, f"{name}#reaped": times.children_user + times.children_system}
    for child in process.children(recursive=True):
        with contextlib.suppress(psutil.Error):
            child_times = child.cpu_times()
            cpu[f"{name}#{child.pid}"] = child_times.user + child_times.system
    return cpu


def cpu_spent(before: Mapping[str, float], after: Mapping[str, float]) -> dict[str, float]:
    """CPU seconds per name between two snapshots. A tree sums its processes: one that started in
    between counts whole; one that ended in between (a PostgreSQL backend of a closed connection,
    an autovacuum worker) counts through the root's reaped total, which holds its whole life, less
    what it had used by the first snapshot. One that psutil could not read the second time, and
    that is not reaped yet, is lost rather than subtracted."""
    used_by_ended: dict[str, float] = {}
    for key, value in before.items():
        if key not in after:
            name = key.partition("#")[0]
            used_by_ended[name] = used_by_ended.get(name, 0.0) + value
    spent: dict[str, float] = {}
    for key, value in after.items():
        name, _, member = key.partition("#")
        change = value - before.get(key, 0.0)
        if member == "reaped":
            change -= used_by_ended.get(name, 0.0)
        spent[name] = spent.get(name, 0.0) + max(0.0, change)
    return spent
