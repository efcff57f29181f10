"""Lean load drivers for benchmarks (not locust), bounded in count and time, latency recorded in
an HDR histogram (microseconds):

* closed_loop - N calls in flight, each starting when the previous one ends: a throughput ceiling;
* open_loop   - calls start on a fixed schedule (a constant arrival rate) whatever the answers do,
                and latency runs from the scheduled start, so a stall is not hidden by the
                driver slowing down with the server (no coordinated omission)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

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


@dataclass(frozen=True)
class OpenLoopResult:
    """One open-loop step. `offered` calls were scheduled; each ended ok, as an error, or was
    never started because `in_flight_max` calls were already running (counted in `dropped`, and
    an error too: the load was not served)."""

    rate_offered: float
    offered: int
    calls: int
    errors: int
    dropped: int
    seconds: float  # from the first scheduled start to the last answer
    p50_ms: float
    p99_ms: float
    p999_ms: float
    max_ms: float
    start_lag_p99_ms: float  # how late the driver itself started calls (its own saturation)
    first_errors: tuple[str, ...] = field(default=())

    @property
    def rate(self) -> float:
        """Calls answered correctly per second."""
        return self.calls / self.seconds if self.seconds > 0 else 0.0


ERRORS_KEPT = 5


async def open_loop(
    call: Callable[[], Awaitable[object]],
    *,
    rate: float,
    duration_s: float,
    in_flight_max: int,
    drain_s: float,
) -> OpenLoopResult:
    """Start `call` `rate` times a second for `duration_s`, then wait up to `drain_s` for the calls
    still running (those still running after it count as errors). A call that raises is an error."""
    if rate <= 0 or duration_s <= 0 or in_flight_max < 1:
        raise ValueError("open_loop needs rate > 0, duration_s > 0 and in_flight_max >= 1")
    offered = max(1, round(rate * duration_s))
    latency = HdrHistogram(1, 60_000_000, 3)
    lag = HdrHistogram(1, 60_000_000, 3)
    state = _OpenLoopState()
    tasks: set[asyncio.Task[None]] = set()

    async def one(scheduled: float) -> None:
        try:
            await call()
        except Exception as error:
            state.error(error)
            return
        finally:
            state.in_flight -= 1
        now = time.perf_counter()
        latency.record_value(max(1, int((now - scheduled) * 1e6)))
        state.calls += 1
        state.last_answer = max(state.last_answer, now)

    started = time.perf_counter()
    for index in range(offered):
        scheduled = started + index / rate
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        lag.record_value(max(1, int((time.perf_counter() - scheduled) * 1e6)))
        if state.in_flight >= in_flight_max:
            state.dropped += 1
            continue
        state.in_flight += 1
        task = asyncio.create_task(one(scheduled))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    if tasks:
        _, late = await asyncio.wait(set(tasks), timeout=drain_s)
        for task in late:
            task.cancel()
        await asyncio.gather(*late, return_exceptions=True)
        state.errors += len(late)
    end = state.last_answer if state.last_answer > 0 else time.perf_counter()
    return OpenLoopResult(
        rate_offered=rate,
        offered=offered,
        calls=state.calls,
        errors=state.errors + state.dropped,
        dropped=state.dropped,
        seconds=max(end - started, 1e-9),
        p50_ms=latency.get_value_at_percentile(50) / 1000,
        p99_ms=latency.get_value_at_percentile(99) / 1000,
        p999_ms=latency.get_value_at_percentile(99.9) / 1000,
        max_ms=latency.get_max_value() / 1000,
        start_lag_p99_ms=lag.get_value_at_percentile(99) / 1000,
        first_errors=tuple(state.first_errors),
    )


@dataclass
class _OpenLoopState:
    calls: int = 0
    errors: int = 0
    dropped: int = 0
    in_flight: int = 0
    last_answer: float = 0.0
    first_errors: list[str] = field(default_factory=list)

    def error(self, error: Exception) -> None:
        self.errors += 1
        if len(self.first_errors) < ERRORS_KEPT:
            self.first_errors.append(f"{type(error).__name__}: {error}"[:500])
