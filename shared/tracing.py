"""OpenTelemetry tracing with W3C trace context, on only when an OTLP endpoint is configured.

When `OTEL_EXPORTER_OTLP_ENDPOINT` is unset the interceptors are not installed at all, so an
untraced deployment pays nothing on the hot path. Health checks are never traced. No request
payloads (member PII) go into spans: the gRPC instrumentation records method and status only.
"""

from __future__ import annotations

import os

from grpc import aio
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.instrumentation.grpc import aio_client_interceptors, aio_server_interceptor
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

_EXCLUDED_SERVICES = ["grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"]


def configure_tracing(*, service: str, otlp_endpoint: str | None) -> TracerProvider | None:
    """Install the global tracer provider exporting to `otlp_endpoint`; None when disabled."""
    if not otlp_endpoint:
        return None
    provider = TracerProvider(resource=Resource.create({SERVICE_NAME: f"loyalty-{service}"}))
    insecure = otlp_endpoint.startswith("http://")
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=otlp_endpoint, insecure=insecure)))
    trace.set_tracer_provider(provider)
    return provider


def server_interceptors(enabled: bool) -> list[aio.ServerInterceptor]:
    if not enabled:
        return []
    os.environ.setdefault("OTEL_PYTHON_GRPC_EXCLUDED_SERVICES", ",".join(_EXCLUDED_SERVICES))
    return [aio_server_interceptor()]


def client_interceptors(enabled: bool) -> list[aio.ClientInterceptor]:
    return list(aio_client_interceptors()) if enabled else []
