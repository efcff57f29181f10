"""`loyalty run`: the whole platform on one machine, under one supervisor (what `make run` runs).

1. PostgreSQL and Redis: the ones named by LOYALTY_DATABASE_URL / LOYALTY_REDIS_URL, or embedded
   ones under the data folder (LOYALTY_DATA_DIR, default ./.data), so data survives restarts.
2. One database per service, migrated (dbmate creates it when missing).
3. The five services as child processes; each is waited for until SERVING, then the addresses
   are printed.
3a. Unless --no-demo: the demo program (services/cli/seed.py DEMO_PLAN) is loaded through the
   public APIs, idempotently (a restart on the same ./.data changes nothing), and a terminal id,
   a card number and a phone to try are printed.
4. A child that dies is reported with its exit code and restarted with backoff; one that keeps
   dying (5 times within 60 s) stops the whole stack with a non-zero exit, so it is never lost
   silently.
5. Ctrl-C (or SIGTERM): every service gets SIGTERM and its grace period, then the embedded
   Redis and PostgreSQL stop.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from services.cli import seed
from services.cli.health import check
from shared.config import DEFAULT_GRPC_PORTS, DEFAULT_METRICS_PORTS, SERVICES, database_name, with_database
from shared.db import migrate
from shared.embedded import EmbeddedPostgres, EmbeddedRedis

REPO_ROOT = Path(__file__).resolve().parents[2]
EMBEDDED_PG_PORT = 55432
EMBEDDED_REDIS_PORT = 56379
RESTARTS_MAX = 5
RESTART_WINDOW_S = 60.0
STOP_TIMEOUT_S = 20.0


def say(message: str) -> None:
    print(f"[loyalty run] {message}", flush=True)


@dataclass
class Child:
    service: str
    env: dict[str, str]
    process: asyncio.subprocess.Process | None = None
    restarts: deque[float] = field(default_factory=deque)

    async def start(self) -> None:
        self.process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            f"services.{self.service}",
            env=self.env,
            cwd=REPO_ROOT,
            start_new_session=True,  # Ctrl-C reaches only the supervisor, which stops children in order
        )

    def record_restart(self) -> bool:
        """Note a restart; False when the service has died too often to keep trying."""
        now = time.monotonic()
        self.restarts.append(now)
        while self.restarts and now - self.restarts[0] > RESTART_WINDOW_S:
            self.restarts.popleft()
        return len(self.restarts) <= RESTARTS_MAX


class Stack:
    def __init__(self, data_dir: Path, *, demo: bool = True) -> None:
        self.data_dir = data_dir
        self.demo = demo
        self.postgres: EmbeddedPostgres | None = None
        self.redis: EmbeddedRedis | None = None
        self.children: list[Child] = []
        self.stopping = asyncio.Event()

    def start_storage(self) -> tuple[str, str]:
        database_url = os.environ.get("LOYALTY_DATABASE_URL")
        if not database_url:
            port = int(os.environ.get("LOYALTY_EMBEDDED_PG_PORT", EMBEDDED_PG_PORT))
            self.postgres = EmbeddedPostgres(self.data_dir / "postgres", port).start()
            database_url = self.postgres.url
            say(f"embedded PostgreSQL on {database_url} (data in {self.postgres.data_dir})")
        redis_url = os.environ.get("LOYALTY_REDIS_URL")
        if not redis_url:
            port = int(os.environ.get("LOYALTY_EMBEDDED_REDIS_PORT", EMBEDDED_REDIS_PORT))
            self.redis = EmbeddedRedis(self.data_dir / "redis", port).start()
            redis_url = self.redis.url
            say(f"embedded Redis on {redis_url}")
        return database_url, redis_url

    def stop_storage(self) -> None:
        if self.redis is not None:
            self.redis.stop()
            say("embedded Redis stopped")
        if self.postgres is not None:
            self.postgres.stop()
            say("embedded PostgreSQL stopped")

    async def run(self) -> int:
        # Signals are handled from the first moment, so a Ctrl-C during start-up also stops
        # whatever was already started instead of orphaning it.
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, self.stopping.set)
        try:
            database_url, redis_url = self.start_storage()
            for service in SERVICES:
                migrate(service=service, database_url=with_database(database_url, database_name(service)))
            say(f"migrated {len(SERVICES)} databases: {', '.join(database_name(s) for s in SERVICES)}")
            env = {**os.environ, "LOYALTY_DATABASE_URL": database_url, "LOYALTY_REDIS_URL": redis_url}
            self.children = [Child(service, env) for service in SERVICES]
            for child in self.children:
                await child.start()
            if not await self.wait_until_serving():
                return 0 if self.stopping.is_set() else 1
            self.print_addresses()
            if self.demo:
                await self.load_demo()
            return await self.supervise()
        finally:
            await self.stop_children()
            self.stop_storage()

    async def wait_until_serving(self, timeout_s: float = 60.0) -> bool:
        deadline = time.monotonic() + timeout_s
        pending = {child.service for child in self.children}
        while pending and not self.stopping.is_set():
            for child in self.children:
                if child.process is not None and child.process.returncode is not None:
                    say(f"{child.service} exited during start-up with code {child.process.returncode}")
                    return False
            results = await asyncio.gather(*(check(s, self.target(s), 1.0) for s in pending))
            pending -= {r.service for r in results if r.status == "SERVING"}
            if pending and time.monotonic() > deadline:
                say(f"not SERVING after {timeout_s:.0f} s: {', '.join(sorted(pending))}")
                return False
            if pending:
                await asyncio.sleep(0.2)
        return not pending

    @staticmethod
    def target(service: str) -> str:
        port = os.environ.get(f"LOYALTY_{service.upper()}_GRPC_PORT", DEFAULT_GRPC_PORTS[service])
        return f"127.0.0.1:{port}"

    def print_addresses(self) -> None:
        say("all services SERVING:")
        for service in SERVICES:
            metrics = os.environ.get(f"LOYALTY_{service.upper()}_METRICS_PORT", DEFAULT_METRICS_PORTS[service])
            print(f"    {service:<14} grpc {self.target(service):<16}  metrics http://127.0.0.1:{metrics}/metrics")
        say("try: loyalty health   |   Ctrl-C stops everything")

    async def load_demo(self) -> None:
        """Seed the demo plan; a Ctrl-C meanwhile stops the seeding and the stack. A failure is
        reported and the services stay up: the operator can rerun `loyalty seed`."""
        say("loading the demo program (skip with --no-demo)")
        seeding = asyncio.create_task(
            seed.seed_and_time(
                processing_target=self.target("processing"),
                cards_target=self.target("cards"),
                wallet_target=self.target("wallet"),
                plan=seed.DEMO_PLAN,
                say=say,
            )
        )
        stop_waiter = asyncio.create_task(self.stopping.wait())
        await asyncio.wait([seeding, stop_waiter], return_when=asyncio.FIRST_COMPLETED)
        stop_waiter.cancel()
        if not seeding.done():
            seeding.cancel()  # stopping anyway: supervise() returns at once
            return
        try:
            seeded = seeding.result()
        except Exception as error:
            say(f"demo data NOT loaded: {seed.describe(error)}; rerun with `loyalty seed`")
            return
        for line in seed.summary(seeded, self.target("processing")):
            print(f"    {line}", flush=True)

    async def supervise(self) -> int:
        exit_code = 0
        waiters = {asyncio.create_task(child.process.wait()): child for child in self.children if child.process}
        stop_waiter = asyncio.create_task(self.stopping.wait())
        while not self.stopping.is_set():
            done, _ = await asyncio.wait([*waiters, stop_waiter], return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                child = waiters.pop(task, None)
                if child is None:
                    continue
                say(f"SERVICE DIED: {child.service} exited with code {task.result()}")
                if not child.record_restart():
                    say(f"{child.service} died {RESTARTS_MAX + 1} times within {RESTART_WINDOW_S:.0f} s; stopping")
                    exit_code = 1
                    self.stopping.set()
                    break
                await asyncio.sleep(min(2 ** len(child.restarts) * 0.25, 5.0))
                await child.start()
                say(f"{child.service} restarted")
                assert child.process is not None
                waiters[asyncio.create_task(child.process.wait())] = child
        for task in waiters:
            task.cancel()
        return exit_code

    async def stop_children(self) -> None:
        running = [c for c in self.children if c.process is not None and c.process.returncode is None]
        if not running:
            return
        say(f"stopping {len(running)} services")
        for child in running:
            assert child.process is not None
            child.process.send_signal(signal.SIGTERM)
        for child in running:
            assert child.process is not None
            try:
                code = await asyncio.wait_for(child.process.wait(), STOP_TIMEOUT_S)
                say(f"{child.service} stopped (exit code {code})")
            except TimeoutError:
                say(f"{child.service} did not stop within {STOP_TIMEOUT_S:.0f} s; killing it")
                child.process.kill()
                await child.process.wait()


def run(*, demo: bool = True) -> int:
    data_dir = Path(os.environ.get("LOYALTY_DATA_DIR", REPO_ROOT / ".data")).resolve()
    return asyncio.run(Stack(data_dir, demo=demo).run())
