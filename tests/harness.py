"""Real infrastructure for the tests: embedded PostgreSQL + Redis, and service processes.

By default the session starts its own PostgreSQL and Redis (nothing installed on the machine is
needed); LOYALTY_TEST_DATABASE_URL / LOYALTY_TEST_REDIS_URL point it at existing servers instead.
Test databases are named loyalty_test_<service>, so an existing server's data is never touched.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from shared.config import with_database
from shared.db import migrate

REPO_ROOT = Path(__file__).resolve().parent.parent


def test_database_name(service: str) -> str:
    return f"loyalty_test_{service}"


@dataclass(frozen=True)
class Infra:
    database_server_url: str
    redis_url: str

    def database_url(self, service: str) -> str:
        return with_database(self.database_server_url, test_database_name(service))

    def migrate(self, service: str) -> None:
        migrate(service=service, database_url=self.database_url(service))

    def service_env(self, service: str, **overrides: str) -> dict[str, str]:
        """The environment of a service process on this infrastructure, on free ports."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("LOYALTY_", "OTEL_"))}
        env.update(
            {
                f"LOYALTY_{service.upper()}_DATABASE_URL": self.database_url(service),
                "LOYALTY_REDIS_URL": self.redis_url,
                "LOYALTY_GRPC_PORT": "0",
                "LOYALTY_METRICS_PORT": "0",
                "LOYALTY_HEALTH_CHECK_INTERVAL_S": "0.2",
                "LOYALTY_DEPENDENCY_TIMEOUT_S": "0.5",
                "LOYALTY_SHUTDOWN_GRACE_S": "5",
            }
        )
        env.update(overrides)
        return env


@dataclass
class ServiceProcess:
    """A service started as `python -m services.<name>`, as in production."""

    service: str
    env: Mapping[str, str]
    process: subprocess.Popen[str] | None = None
    log_lines: list[str] = field(default_factory=list)
    grpc_address: str = ""
    metrics_address: str = ""
    _serving: threading.Event = field(default_factory=threading.Event)

    def start(self, *, wait: bool = True, timeout_s: float = 30.0) -> ServiceProcess:
        self.process = subprocess.Popen(
            [sys.executable, "-m", f"services.{self.service}"],
            env=dict(self.env),
            cwd=REPO_ROOT,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        threading.Thread(target=self._read_log, daemon=True).start()
        if wait:
            self.wait_serving_line(timeout_s)
        return self

    def _read_log(self) -> None:
        assert self.process is not None and self.process.stderr is not None
        for line in self.process.stderr:
            self.log_lines.append(line)
            record = parse_json(line)
            if record and record.get("message") == "serving":
                self.grpc_address = str(record["grpc_address"])
                self.metrics_address = str(record["metrics_address"])
                self._serving.set()

    def wait_serving_line(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while not self._serving.wait(0.05):
            assert self.process is not None
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"{self.service} did not start:\n{''.join(self.log_lines)}")

    def log_records(self) -> list[dict[str, object]]:
        return [r for r in (parse_json(line) for line in self.log_lines) if r]

    def signal(self, signum: int = signal.SIGTERM) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    def wait(self, timeout_s: float = 20.0) -> int:
        assert self.process is not None
        return self.process.wait(timeout_s)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def metrics_text(self) -> str:
        with urllib.request.urlopen(f"http://{self.metrics_address}/metrics", timeout=5) as response:
            return str(response.read().decode())

    def health_status(self, service: str = "") -> str:
        with grpc.insecure_channel(self.grpc_address) as channel:
            try:
                response = health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(service=service), timeout=2
                )
            except grpc.RpcError as error:
                return f"ERROR {error.code().name}"  # type: ignore[attr-defined]
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(response.status))

    def wait_health(self, expected: str, timeout_s: float = 15.0) -> None:
        deadline = time.monotonic() + timeout_s
        status = self.health_status()
        while status != expected:
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.service} health is {status}, expected {expected}")
            time.sleep(0.1)
            status = self.health_status()


def parse_json(line: str) -> dict[str, object] | None:
    try:
        record = json.loads(line)
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


def metric_value(metrics_text: str, name: str, labels: Mapping[str, str]) -> float | None:
    """The value of one Prometheus series in an exposition text, or None when absent."""
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in metrics_text.splitlines():
        if not line.startswith(name + "{"):
            continue
        series, _, value = line.rpartition(" ")
        label_text = series[len(name) + 1 : -1]
        pairs = sorted(p for p in label_text.split(","))
        if ",".join(pairs) == wanted:
            return float(value)
    return None
