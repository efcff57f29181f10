"""A lean closed-loop load driver for benchmarks (not locust): N calls in flight, bounded in
count and time, latency recorded in an HDR histogram (microseconds)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from hdrh.histogram import HdrHistogram


@dataclass(frozen=True)
class RunResult:
    calls: int
    errors: int
    seconds: float
    p50_ms: float
    p99_ms: float

    @property
    def rate(self) -> float:
        return self.calls / self.seconds


async def closed_loop(
    call: Callable[[], Awaitable[object]],
    *,
    in_flight: int,
    duration_s: float,
    calls_max: int,
) -> RunResult:
    """Keep `in_flight` calls running until `duration_s` passes or `calls_max` calls were made.
    A call that raises counts as an error (and its latency is not recorded)."""
    histogram = HdrHistogram(1, 60_000_000, 3)
    counts = {"calls": 0, "errors": 0}
    deadline = time.perf_counter() + duration_s

    async def worker() -> None:
        while time.perf_counter() < deadline and counts["calls"] + counts["errors"] < calls_max:
            started = time.perf_counter()
            try:
                await call()
            except Exception:
                counts["errors"] += 1
                continue
            histogram.record_value(max(1, int((time.perf_counter() - started) * 1e6)))
            counts["calls"] += 1

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(in_flight)))
    elapsed = time.perf_counter() - started
    return RunResult(
        calls=counts["calls"],
        errors=counts["errors"],
        seconds=elapsed,
        p50_ms=histogram.get_value_at_percentile(50) / 1000,
        p99_ms=histogram.get_value_at_percentile(99) / 1000,
    )
