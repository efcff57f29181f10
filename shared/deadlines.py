"""Pass the caller's remaining time down to database and Redis calls."""

from __future__ import annotations

from grpc import aio


def remaining_s(context: aio.ServicerContext, *, cap_s: float) -> float:
    """The time left before the caller's deadline, at most `cap_s` (and `cap_s` without one)."""
    remaining: float | None = context.time_remaining()
    if remaining is None:
        return cap_s
    return max(0.0, min(cap_s, remaining))
