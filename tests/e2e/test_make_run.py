"""`loyalty run` (what `make run` runs): the whole platform under one supervisor."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from shared.config import SERVICES
from shared.embedded import free_port
from tests.harness import REPO_ROOT


class Supervisor:
    def __init__(self, data_dir: Path, ports: dict[str, int]) -> None:
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("LOYALTY_", "OTEL_"))}
        self.env["LOYALTY_DATA_DIR"] = str(data_dir)
        self.env.update({k: str(v) for k, v in ports.items()})
        self.output: list[str] = []
        self.process: subprocess.Popen[str] | None = None

    def start(self) -> Supervisor:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "services.cli", "run"],
            env=self.env,
            cwd=REPO_ROOT,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        threading.Thread(target=self._read, daemon=True).start()
        return self

    def _read(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        for line in self.process.stdout:
            self.output.append(line)

    def wait_for(self, text: str, timeout_s: float = 90.0, after: int = 0) -> int:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for index, line in enumerate(self.output[after:], start=after):
                if text in line:
                    return index
            assert self.process is not None
            if self.process.poll() is not None:
                break
            time.sleep(0.1)
        raise AssertionError(f"{text!r} never printed:\n{''.join(self.output)}")

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "services.cli", *args],
            env=self.env,
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )

    def service_pid(self, service: str) -> int:
        assert self.process is not None
        for child in psutil.Process(self.process.pid).children(recursive=True):
            if child.cmdline()[-2:] == ["-m", f"services.{service}"]:
                return child.pid
        raise AssertionError(f"no {service} process")

    def interrupt(self) -> int:
        assert self.process is not None
        self.process.send_signal(signal.SIGINT)
        return self.process.wait(60)


@pytest.fixture
def ports() -> dict[str, int]:
    chosen = {"LOYALTY_EMBEDDED_PG_PORT": free_port(), "LOYALTY_EMBEDDED_REDIS_PORT": free_port()}
    for service in SERVICES:
        chosen[f"LOYALTY_{service.upper()}_GRPC_PORT"] = free_port()
        chosen[f"LOYALTY_{service.upper()}_METRICS_PORT"] = free_port()
    return chosen


def test_run_supervises_the_whole_platform(tmp_path: Path, ports: dict[str, int]) -> None:
    supervisor = Supervisor(tmp_path / "data", ports).start()
    try:
        supervisor.wait_for("all services SERVING")
        health = supervisor.cli("health")
        assert health.returncode == 0, health.stdout + health.stderr
        assert health.stdout.count("SERVING") == 5

        # A service that dies is reported and brought back, not silently lost.
        os.kill(supervisor.service_pid("cards"), signal.SIGKILL)
        died = supervisor.wait_for("SERVICE DIED: cards exited with code -9")
        supervisor.wait_for("cards restarted", after=died)
        deadline = time.monotonic() + 30
        while supervisor.cli("health").returncode != 0:
            assert time.monotonic() < deadline, "cards did not come back"
            time.sleep(0.3)
    finally:
        exit_code = supervisor.interrupt()
    assert exit_code == 0, "".join(supervisor.output)
    for service in SERVICES:
        supervisor.wait_for(f"{service} stopped (exit code 0)")
    supervisor.wait_for("embedded PostgreSQL stopped")
    # Everything is down now: health says so, with a non-zero exit status.
    down = supervisor.cli("health", "--timeout", "0.5")
    assert down.returncode == 1
    assert down.stdout.count("UNREACHABLE") == 5


def test_data_survives_a_restart_of_run(tmp_path: Path, ports: dict[str, int]) -> None:
    import asyncio

    import asyncpg

    database = f"postgresql://postgres@127.0.0.1:{ports['LOYALTY_EMBEDDED_PG_PORT']}/loyalty_wallet"

    async def execute(*statements: str) -> object:
        connection = await asyncpg.connect(database)
        try:
            return [await connection.fetchval(sql) for sql in statements][-1]
        finally:
            await connection.close()

    first = Supervisor(tmp_path / "data", ports).start()
    try:
        first.wait_for("all services SERVING")
        asyncio.run(execute("CREATE TABLE survivor (note text)", "INSERT INTO survivor VALUES ('kept')"))
    finally:
        assert first.interrupt() == 0
    second = Supervisor(tmp_path / "data", ports).start()
    try:
        second.wait_for("all services SERVING")
        assert asyncio.run(execute("SELECT note FROM survivor")) == "kept"
    finally:
        assert second.interrupt() == 0
