"""Client channels between services (and for the CLI): deadlines, retries, keepalive.

* Every call has a deadline: calls that set none get the channel's default (applied by the client
  edge interceptor), and callers pass a shorter one where the budget is tighter.
* Only UNAVAILABLE is retried, and only by gRPC's own retry machinery (bounded attempts with
  backoff, throttled). A write is therefore only ever re-sent with the same idempotency key.
* Keepalive pings are spaced wider than the server's minimum, so servers never answer
  GOAWAY "too_many_pings".
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from grpc import aio

from shared import interceptors, tracing

# Server side: accept pings no more often than every 10 s; ping idle clients every 60 s.
SERVER_KEEPALIVE_OPTIONS = [
    ("grpc.keepalive_time_ms", 60_000),
    ("grpc.keepalive_timeout_ms", 20_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
    ("grpc.http2.max_ping_strikes", 2),
]
# Client side: ping every 30 s (>= the server's 10 s minimum), even when idle.
CLIENT_KEEPALIVE_OPTIONS = [
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
]


def service_config(*, max_attempts: int = 3) -> str:
    """A gRPC service config: retries on UNAVAILABLE only, bounded and throttled. (No `timeout`
    here: grpcio applies service-config timeouts about a second early, grpc/grpc#34547.)"""
    if not 1 <= max_attempts <= 5:  # gRPC caps attempts at 5 anyway; say so instead of clamping
        raise ValueError("max_attempts must be between 1 and 5")
    return json.dumps(
        {
            "methodConfig": [
                {
                    "name": [{}],
                    "retryPolicy": {
                        "maxAttempts": max_attempts,
                        "initialBackoff": "0.05s",
                        "maxBackoff": "1s",
                        "backoffMultiplier": 2,
                        "retryableStatusCodes": ["UNAVAILABLE"],
                    },
                }
            ],
            "retryThrottling": {"maxTokens": 100, "tokenRatio": 0.1},
        }
    )


def create_channel(
    target: str,
    *,
    default_timeout_s: float = 2.0,
    traced: bool = False,
    extra_options: Sequence[tuple[str, object]] = (),
) -> aio.Channel:
    """An insecure channel to another loyalty service (inside the cluster network)."""
    options = [
        ("grpc.service_config", service_config()),
        ("grpc.enable_retries", 1),
        *CLIENT_KEEPALIVE_OPTIONS,
        *extra_options,
    ]
    return aio.insecure_channel(
        target,
        options=options,
        interceptors=[*tracing.client_interceptors(traced), *interceptors.client_interceptors(default_timeout_s)],
    )
