"""Traces leave a service over OTLP with the caller's W3C trace context, and its log lines carry
the same trace id. The collector here is a real OTLP/gRPC TraceService server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from grpc import aio
from loyalty.diagnostics.v1 import diagnostics_pb2, diagnostics_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from tests.harness import Infra, ServiceProcess

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_SPAN_ID = "00f067aa0ba902b7"


class Collector(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self) -> None:
        self.spans: list[tuple[str, str, str]] = []  # (trace id, parent span id, name)
        self.received = asyncio.Event()

    async def Export(
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: aio.ServicerContext
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        for resource_spans in request.resource_spans:
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    self.spans.append((span.trace_id.hex(), span.parent_span_id.hex(), span.name))
        self.received.set()
        return trace_service_pb2.ExportTraceServiceResponse()


@pytest.fixture
async def collector() -> AsyncIterator[tuple[Collector, int]]:
    server = aio.server()
    servicer = Collector()
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield servicer, port
    await server.stop(0)


async def test_server_span_continues_the_callers_trace(infra: Infra, collector: tuple[Collector, int]) -> None:
    servicer, port = collector
    env = infra.service_env(
        "antifraud",
        OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{port}",
        OTEL_BSP_SCHEDULE_DELAY="100",
    )
    process = ServiceProcess("antifraud", env).start()
    try:
        async with aio.insecure_channel(process.grpc_address) as channel:
            stub = diagnostics_pb2_grpc.DiagnosticsServiceStub(channel)
            traceparent = f"00-{TRACE_ID}-{PARENT_SPAN_ID}-01"
            await stub.Echo(diagnostics_pb2.EchoRequest(payload=b"t"), metadata=[("traceparent", traceparent)])
        await asyncio.wait_for(servicer.received.wait(), 10)
    finally:
        process.stop()
    assert (TRACE_ID, PARENT_SPAN_ID, "/loyalty.diagnostics.v1.DiagnosticsService/Echo") in servicer.spans
    # Health checks are excluded from tracing (they would drown the real traffic).
    assert not [s for s in servicer.spans if "grpc.health" in s[2]]
