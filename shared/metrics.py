"""Prometheus metrics named exactly as go-grpc-prometheus names them.

Stock gRPC dashboards and alerts filter on these names and label values
(`grpc_type="unary"`, `grpc_code="FailedPrecondition"`), so we follow them to the letter:
https://github.com/grpc-ecosystem/go-grpc-prometheus (server_metrics.go, client_metrics.go).
Each process serves its own registry on its own /metrics port; multiprocess mode is not used.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import grpc
from prometheus_client import Counter, Histogram, start_http_server

from shared.errors import GO_CODE_NAMES

# Finer than Prometheus' defaults at the low end: our hot paths answer in 1-20 ms.
LATENCY_BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_LABELS = ("grpc_type", "grpc_service", "grpc_method")

SERVER_STARTED = Counter("grpc_server_started_total", "Total number of RPCs started on the server.", _LABELS)
SERVER_HANDLED = Counter(
    "grpc_server_handled_total",
    "Total number of RPCs completed on the server, regardless of success or failure.",
    (*_LABELS, "grpc_code"),
)
SERVER_MSG_RECEIVED = Counter(
    "grpc_server_msg_received_total", "Total number of RPC stream messages received on the server.", _LABELS
)
SERVER_MSG_SENT = Counter(
    "grpc_server_msg_sent_total", "Total number of gRPC stream messages sent by the server.", _LABELS
)
SERVER_HANDLING = Histogram(
    "grpc_server_handling_seconds",
    "Histogram of response latency (seconds) of gRPC that had been application-level handled by the server.",
    _LABELS,
    buckets=LATENCY_BUCKETS_S,
)

CLIENT_STARTED = Counter("grpc_client_started_total", "Total number of RPCs started on the client.", _LABELS)
CLIENT_HANDLED = Counter(
    "grpc_client_handled_total",
    "Total number of RPCs completed by the client, regardless of success or failure.",
    (*_LABELS, "grpc_code"),
)
CLIENT_MSG_RECEIVED = Counter(
    "grpc_client_msg_received_total", "Total number of RPC stream messages received by the client.", _LABELS
)
CLIENT_MSG_SENT = Counter(
    "grpc_client_msg_sent_total", "Total number of gRPC stream messages sent by the client.", _LABELS
)
CLIENT_HANDLING = Histogram(
    "grpc_client_handling_seconds",
    "Histogram of response latency (seconds) of the gRPC until it is finished by the application.",
    _LABELS,
    buckets=LATENCY_BUCKETS_S,
)

RPC_TYPES = ("unary", "client_stream", "server_stream", "bidi_stream")


def rpc_type(*, request_streaming: bool, response_streaming: bool) -> str:
    return RPC_TYPES[int(request_streaming) + 2 * int(response_streaming)]


def split_method(full_method: str) -> tuple[str, str]:
    """'/pkg.Service/Method' -> ('pkg.Service', 'Method')."""
    service, _, method = full_method.lstrip("/").partition("/")
    return service, method


@dataclass(frozen=True)
class MethodSeries:
    """The label children of one method, resolved once: labels() is too slow per call."""

    started: Counter
    handled_by_code: dict[grpc.StatusCode, Counter]
    msg_received: Counter
    msg_sent: Counter
    handling: Histogram


def resolve_series(*, side: str, grpc_type: str, full_method: str) -> MethodSeries:
    service, method = split_method(full_method)
    labels = (grpc_type, service, method)
    started, handled, received, sent, handling = (
        (SERVER_STARTED, SERVER_HANDLED, SERVER_MSG_RECEIVED, SERVER_MSG_SENT, SERVER_HANDLING)
        if side == "server"
        else (CLIENT_STARTED, CLIENT_HANDLED, CLIENT_MSG_RECEIVED, CLIENT_MSG_SENT, CLIENT_HANDLING)
    )
    return MethodSeries(
        started=started.labels(*labels),
        handled_by_code={code: handled.labels(*labels, name) for code, name in GO_CODE_NAMES.items()},
        msg_received=received.labels(*labels),
        msg_sent=sent.labels(*labels),
        handling=handling.labels(*labels),
    )


def preinitialize_server_methods(methods: Iterable[tuple[str, str]]) -> None:
    """Create every (method, code) series at zero, as go-grpc-prometheus' InitializeMetrics does,
    so rate() and absent() work before the first call. `methods` yields (full_method, grpc_type)."""
    for full_method, grpc_type in methods:
        resolve_series(side="server", grpc_type=grpc_type, full_method=full_method)


# Every pause of the cyclic garbage collector: a collection stops the whole process (every call
# in flight), so one long one shows as a latency tail in all of them. The counts and objects of
# the collections are prometheus_client's own python_gc_* metrics; their duration is here.
GC_PAUSE = Histogram(
    "loyalty_gc_pause_seconds",
    "Time the Python cyclic garbage collector stopped the process, per collection, by generation.",
    ("generation",),
    buckets=LATENCY_BUCKETS_S,
)
_GC_PAUSE_BY_GENERATION = tuple(GC_PAUSE.labels(str(generation)) for generation in range(3))
_gc_started = 0.0


def _time_gc(phase: str, info: dict[str, Any]) -> None:
    global _gc_started
    if phase == "start":
        _gc_started = time.perf_counter()
    else:
        _GC_PAUSE_BY_GENERATION[info["generation"]].observe(time.perf_counter() - _gc_started)


def time_gc_pauses() -> None:
    """Record every collection's pause in GC_PAUSE from now on (once per process)."""
    if _time_gc not in gc.callbacks:
        gc.callbacks.append(_time_gc)


def serve_metrics(*, host: str, port: int) -> int:
    """Serve /metrics over HTTP in a background thread; fail loudly if the port is taken."""
    server, _thread = start_http_server(port, addr=host)
    return int(server.server_port)
