"""How much work one request causes across the platform, read from what the platform already
counts: the gRPC calls each service served (grpc_server_handled_total on its /metrics), the time
its writes spent per step (loyalty_<service>_step_seconds, processing's saga steps), the
collections of its garbage collector and how long they stopped it (loyalty_gc_pause_seconds), the
transactions each service database committed (pg_stat_database: an autocommit statement is a
transaction of its own, so this counts database round trips that end in a commit, roughly), and
the commands Redis processed (INFO stats; Redis is shared by all services).
Read before and after a step; the difference divided by the requests is "per request".
PostgreSQL publishes its statistics within about a second, so read them after a pause."""

from __future__ import annotations

import asyncio
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass

import asyncpg
from redis.asyncio import Redis

HANDLED = "grpc_server_handled_total{"
HEALTH_SERVICES = ("grpc.health.v1.Health",)


def rpc_counts(metrics_text: str, service: str) -> dict[str, float]:
    """ "<service>.<Method>" -> calls handled (every status code), health checks left out."""
    counts: dict[str, float] = {}
    for line in metrics_text.splitlines():
        if not line.startswith(HANDLED):
            continue
        labels_text, _, value = line[len(HANDLED) :].rpartition("} ")
        labels = dict(_label(pair) for pair in labels_text.split('",') if pair)
        if labels.get("grpc_service") in HEALTH_SERVICES:
            continue
        name = f"{service}.{labels.get('grpc_method', '?')}"
        counts[name] = counts.get(name, 0.0) + float(value)
    return counts


def step_times(metrics_text: str, service: str) -> dict[str, float]:
    """ "<service>.step.<step>.seconds" and ".count" from loyalty_<service>_step_seconds (the time
    a service's writes spend in each step: their means per step are the latency breakdown)."""
    times: dict[str, float] = {}
    prefix = f"loyalty_{service}_step_seconds_"
    for line in metrics_text.splitlines():
        if not line.startswith(prefix):
            continue
        name, _, rest = line[len(prefix) :].partition('{step="')
        step, _, value = rest.partition('"} ')
        if name in ("sum", "count") and step:
            times[f"{service}.step.{step}.{'seconds' if name == 'sum' else 'count'}"] = float(value)
    return times


GC_PAUSE = "loyalty_gc_pause_seconds_"
GC_LONG_PAUSE_S = "0.01"  # a bucket bound of the histogram


def gc_pauses(metrics_text: str, service: str) -> dict[str, float]:
    """ "<service>.gc.count", ".gc.seconds" and ".gc.over_10ms": the collections of a service's
    garbage collector (every generation), the time they stopped it, and how many took longer
    than 10 ms (from loyalty_gc_pause_seconds)."""
    totals = {"count": 0.0, "seconds": 0.0, "short": 0.0}
    for line in metrics_text.splitlines():
        if not line.startswith(GC_PAUSE):
            continue
        name, _, rest = line[len(GC_PAUSE) :].partition("{")
        labels_text, _, value = rest.rpartition("} ")
        if name == "count":
            totals["count"] += float(value)
        elif name == "sum":
            totals["seconds"] += float(value)
        elif name == "bucket" and f'le="{GC_LONG_PAUSE_S}"' in labels_text:
            totals["short"] += float(value)
    return {
        f"{service}.gc.count": totals["count"],
        f"{service}.gc.seconds": totals["seconds"],
        f"{service}.gc.over_10ms": totals["count"] - totals["short"],
    }


def _label(pair: str) -> tuple[str, str]:
    key, _, value = pair.partition("=")
    return key, value.strip('"')


def _fetch(address: str) -> str:
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=5) as response:
        return str(response.read().decode())


@dataclass(frozen=True)
class Counters:
    metrics_addresses: Mapping[str, str]  # service -> host:port of its /metrics
    database_url: str  # the PostgreSQL server (any database on it)
    databases: Mapping[str, str]  # database name -> the service it belongs to
    redis_url: str

    async def read(self) -> dict[str, float]:
        counts: dict[str, float] = {}
        for service, address in self.metrics_addresses.items():
            text = await asyncio.to_thread(_fetch, address)
            counts.update(rpc_counts(text, service))
            counts.update(step_times(text, service))
            counts.update(gc_pauses(text, service))
        counts.update(await self._transactions())
        counts["redis.commands"] = await self._redis_commands()
        return counts

    async def _redis_commands(self) -> float:
        redis = Redis.from_url(self.redis_url)
        try:
            stats = await redis.info("stats")
        finally:
            await redis.aclose()
        return float(stats["total_commands_processed"])

    async def _transactions(self) -> dict[str, float]:
        connection = await asyncpg.connect(self.database_url)
        try:
            rows = await connection.fetch(
                "SELECT datname, xact_commit FROM pg_stat_database WHERE datname = any($1::text[])",
                list(self.databases),
            )
        finally:
            await connection.close()
        return {f"{self.databases[row['datname']]}.db_commits": float(row["xact_commit"]) for row in rows}


def spent(before: Mapping[str, float], after: Mapping[str, float]) -> dict[str, float]:
    return {name: after[name] - before.get(name, 0.0) for name in after if after[name] != before.get(name, 0.0)}
