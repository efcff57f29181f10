"""Typed process configuration from environment variables, validated at start-up.

Every variable is looked up first with the service's own prefix, then with the platform-wide
one, so one environment can configure all five services (as `make run` does) and a single
service can still be overridden:

    LOYALTY_WALLET_GRPC_PORT=6000   # only the wallet
    LOYALTY_LOG_LEVEL=DEBUG         # every service

`LOYALTY_DATABASE_URL` names a PostgreSQL *server*; each service uses its own database on it
(`loyalty_<service>`) unless `LOYALTY_<SERVICE>_DATABASE_URL` names the database exactly.
A bad value stops start-up with a `ConfigError` that names the variable and the expectation.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

SERVICES = ("processing", "wallet", "cards", "antifraud", "notifications")
# Default ports, in the order of SERVICES: gRPC 50051-50055, metrics 9101-9105.
DEFAULT_GRPC_PORTS = dict(zip(SERVICES, range(50051, 50056), strict=True))
DEFAULT_METRICS_PORTS = dict(zip(SERVICES, range(9101, 9106), strict=True))
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
PLAN_CACHE_MODES = ("AUTO", "FORCE_GENERIC_PLAN", "FORCE_CUSTOM_PLAN")
# PostgreSQL's plan_cache_mode on a service's connections. The wallet's statements take their
# rows as array parameters, and under PostgreSQL's default (auto) each custom plan, made for the
# arrays' actual lengths, looks cheaper than the generic one, so they were planned again on
# every call: 1.8 ms of PostgreSQL CPU per purchase (0.8 ms of it for a batch's write, which ran
# in 0.6 ms). A cached generic plan is replaced when the tables' statistics change (ANALYZE).
# One made while a table was nearly empty scans it until autovacuum next analyzes it (within
# a minute or so): after a bulk load into a new ledger, run ANALYZE (measured: reading accounts
# by id took 1.9 ms instead of 0.07 ms on average while 30,000 accounts were being opened).
# A generic plan does not see parameter values, so the wallet's SQL must not need them to find
# its index: its list queries are put together from the filters given (store.find_account_ids,
# find_transfers), a filter on a column whose index is partial repeats the index's predicate
# (`operation_id = $1 AND operation_id <> ''`: `= $1` alone does not prove it), and the only
# optional filters written as ($2 = '' OR ...), find_pools', narrow a program's pools read by
# the index on program_id. Processing's list queries filter by ($1 = '' OR column = $1), which
# only a custom plan sees through: they keep auto.
DEFAULT_PLAN_CACHE_MODES = {"wallet": "FORCE_GENERIC_PLAN"}


class ConfigError(Exception):
    """A configuration variable is missing or invalid; the message names it."""


@dataclass(frozen=True, kw_only=True)
class ServiceConfig:
    service: str
    grpc_host: str
    grpc_port: int
    metrics_host: str
    metrics_port: int
    database_url: str
    redis_url: str
    log_level: str
    # Limits (DESIGN §3: a limit on everything).
    grpc_concurrent_rpcs_max: int
    db_pool_size_min: int
    db_pool_size_max: int
    db_command_timeout_s: float
    db_plan_cache_mode: str
    shutdown_grace_s: float
    health_check_interval_s: float
    dependency_timeout_s: float
    # Tracing is on only when an OTLP endpoint is configured.
    otlp_endpoint: str | None


Parser = Callable[[str], Any]


def int_between(low: int, high: int) -> Parser:
    def parse(raw: str) -> int:
        try:
            value = int(raw)
        except ValueError:
            raise ValueError(f"expected an integer between {low} and {high}") from None
        if not low <= value <= high:
            raise ValueError(f"expected an integer between {low} and {high}")
        return value

    return parse


def float_between(low: float, high: float) -> Parser:
    def parse(raw: str) -> float:
        try:
            value = float(raw)
        except ValueError:
            raise ValueError(f"expected a number between {low} and {high}") from None
        if not low <= value <= high:
            raise ValueError(f"expected a number between {low} and {high}")
        return value

    return parse


def one_of(*choices: str) -> Parser:
    def parse(raw: str) -> str:
        if raw.upper() not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}")
        return raw.upper()

    return parse


def url_with_scheme(*schemes: str) -> Parser:
    def parse(raw: str) -> str:
        parts = urlsplit(raw)
        if parts.scheme not in schemes or not (parts.hostname or parts.query):
            raise ValueError(f"expected a URL like {schemes[0]}://host:port/...")
        return raw

    return parse


def non_empty(raw: str) -> str:
    if not raw.strip():
        raise ValueError("expected a non-empty value")
    return raw.strip()


POSTGRES_URL = url_with_scheme("postgresql", "postgres")
REDIS_URL = url_with_scheme("redis", "rediss", "unix")


def database_name(service: str) -> str:
    return f"loyalty_{service}"


def with_database(server_url: str, database: str) -> str:
    """The URL of `database` on the server that `server_url` points at."""
    parts = urlsplit(server_url)
    return urlunsplit(parts._replace(path=f"/{database}"))


class _Reader:
    """Looks variables up as LOYALTY_<SERVICE>_<NAME>, then LOYALTY_<NAME>."""

    def __init__(self, service: str, environ: Mapping[str, str]) -> None:
        self.service = service
        self.environ = environ

    def names(self, name: str) -> tuple[str, str]:
        return f"LOYALTY_{self.service.upper()}_{name}", f"LOYALTY_{name}"

    def raw(self, name: str) -> tuple[str, str] | None:
        for variable in self.names(name):
            value = self.environ.get(variable)
            if value is not None and value != "":
                return variable, value
        return None

    def get(self, name: str, parse: Parser, default: Any) -> Any:
        found = self.raw(name)
        if found is None:
            if default is None:
                raise ConfigError(f"{' or '.join(self.names(name))} must be set")
            return default
        variable, value = found
        try:
            return parse(value)
        except ValueError as error:
            raise ConfigError(f"{variable}={value!r}: {error}") from None


def load_config(service: str, environ: Mapping[str, str] | None = None) -> ServiceConfig:
    """Read and validate the configuration of `service`; raise ConfigError naming the variable."""
    if service not in SERVICES:
        raise ConfigError(f"unknown service {service!r}; expected one of {', '.join(SERVICES)}")
    env = os.environ if environ is None else environ
    read = _Reader(service, env)
    port = int_between(0, 65535)
    config = ServiceConfig(
        service=service,
        grpc_host=read.get("GRPC_HOST", non_empty, "127.0.0.1"),
        grpc_port=read.get("GRPC_PORT", port, DEFAULT_GRPC_PORTS[service]),
        metrics_host=read.get("METRICS_HOST", non_empty, "127.0.0.1"),
        metrics_port=read.get("METRICS_PORT", port, DEFAULT_METRICS_PORTS[service]),
        database_url=_database_url(service, env),
        redis_url=read.get("REDIS_URL", REDIS_URL, None),
        log_level=read.get("LOG_LEVEL", one_of(*LOG_LEVELS), "INFO"),
        grpc_concurrent_rpcs_max=read.get("GRPC_CONCURRENT_RPCS_MAX", int_between(1, 100_000), 2000),
        db_pool_size_min=read.get("DB_POOL_SIZE_MIN", int_between(0, 500), 2),
        db_pool_size_max=read.get("DB_POOL_SIZE_MAX", int_between(1, 500), 16),
        db_command_timeout_s=read.get("DB_COMMAND_TIMEOUT_S", float_between(0.01, 600), 10.0),
        db_plan_cache_mode=read.get(
            "DB_PLAN_CACHE_MODE", one_of(*PLAN_CACHE_MODES), DEFAULT_PLAN_CACHE_MODES.get(service, "AUTO")
        ),
        shutdown_grace_s=read.get("SHUTDOWN_GRACE_S", float_between(0, 600), 10.0),
        health_check_interval_s=read.get("HEALTH_CHECK_INTERVAL_S", float_between(0.05, 60), 1.0),
        dependency_timeout_s=read.get("DEPENDENCY_TIMEOUT_S", float_between(0.01, 60), 1.0),
        otlp_endpoint=env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or None,
    )
    if config.db_pool_size_min > config.db_pool_size_max:
        raise ConfigError(
            f"{read.names('DB_POOL_SIZE_MIN')[0]}={config.db_pool_size_min} exceeds "
            f"DB_POOL_SIZE_MAX={config.db_pool_size_max}"
        )
    return config


def _database_url(service: str, env: Mapping[str, str]) -> str:
    own = f"LOYALTY_{service.upper()}_DATABASE_URL"
    if env.get(own):
        try:
            return str(POSTGRES_URL(env[own]))
        except ValueError as error:
            raise ConfigError(f"{own}={env[own]!r}: {error}") from None
    server = env.get("LOYALTY_DATABASE_URL")
    if not server:
        raise ConfigError(f"{own} or LOYALTY_DATABASE_URL must be set")
    try:
        POSTGRES_URL(server)
    except ValueError as error:
        raise ConfigError(f"LOYALTY_DATABASE_URL={server!r}: {error}") from None
    return with_database(server, database_name(service))


def grpc_target(service: str, environ: Mapping[str, str] | None = None) -> str:
    """Where a client (the CLI, another service) reaches `service`: LOYALTY_<SERVICE>_GRPC_TARGET,
    else 127.0.0.1 on the service's port."""
    env = os.environ if environ is None else environ
    explicit = env.get(f"LOYALTY_{service.upper()}_GRPC_TARGET")
    if explicit:
        return explicit
    # Only the target service's own variable: the platform-wide LOYALTY_GRPC_PORT is the port a
    # process listens on itself (0 in tests), never where another service is.
    variable = f"LOYALTY_{service.upper()}_GRPC_PORT"
    text = env.get(variable)
    if not text:
        return f"127.0.0.1:{DEFAULT_GRPC_PORTS[service]}"
    try:
        port = int_between(1, 65535)(text)
    except ValueError as error:
        raise ConfigError(f"{variable}={text!r}: {error}") from None
    return f"127.0.0.1:{port}"


def read_setting(service: str, name: str, parse: Parser, default: Any, environ: Mapping[str, str] | None = None) -> Any:
    """A service-specific setting, read and validated like the common ones (ConfigError names it)."""
    return _Reader(service, os.environ if environ is None else environ).get(name, parse, default)
