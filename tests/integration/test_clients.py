"""Client channels against a real in-process gRPC server: retries on UNAVAILABLE only,
a default deadline on every call, and client-side metrics."""

from __future__ import annotations

import asyncio
from collections import Counter as Tally
from collections.abc import AsyncIterator

import grpc
import pytest
from grpc import aio
from loyalty.diagnostics.v1 import diagnostics_pb2, diagnostics_pb2_grpc
from prometheus_client import REGISTRY

from shared.clients import create_channel


class FlakyDiagnostics(diagnostics_pb2_grpc.DiagnosticsServiceServicer):
    """Fails each payload's first attempts with the code the payload names, then succeeds."""

    def __init__(self) -> None:
        self.attempts: Tally[bytes] = Tally()

    async def Echo(
        self, request: diagnostics_pb2.EchoRequest, context: aio.ServicerContext
    ) -> diagnostics_pb2.EchoResponse:
        self.attempts[request.payload] += 1
        code_name, _, failures = request.payload.decode().partition(":")
        if self.attempts[request.payload] <= int(failures or 0):
            await context.abort(grpc.StatusCode[code_name], f"attempt {self.attempts[request.payload]} fails")
        if request.delay_ms:
            await asyncio.sleep(request.delay_ms / 1000)
        return diagnostics_pb2.EchoResponse(payload=request.payload)


@pytest.fixture
async def flaky() -> AsyncIterator[tuple[FlakyDiagnostics, str]]:
    server = aio.server()
    servicer = FlakyDiagnostics()
    diagnostics_pb2_grpc.add_DiagnosticsServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield servicer, f"127.0.0.1:{port}"
    await server.stop(0)


async def test_unavailable_is_retried_transparently(flaky: tuple[FlakyDiagnostics, str]) -> None:
    servicer, target = flaky
    async with create_channel(target) as channel:
        response = await diagnostics_pb2_grpc.DiagnosticsServiceStub(channel).Echo(
            diagnostics_pb2.EchoRequest(payload=b"UNAVAILABLE:2")
        )
    assert response.payload == b"UNAVAILABLE:2"
    assert servicer.attempts[b"UNAVAILABLE:2"] == 3


async def test_retries_are_bounded(flaky: tuple[FlakyDiagnostics, str]) -> None:
    servicer, target = flaky
    async with create_channel(target) as channel:
        with pytest.raises(aio.AioRpcError) as raised:
            await diagnostics_pb2_grpc.DiagnosticsServiceStub(channel).Echo(
                diagnostics_pb2.EchoRequest(payload=b"UNAVAILABLE:10")
            )
    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
    assert servicer.attempts[b"UNAVAILABLE:10"] == 3


@pytest.mark.parametrize("code", ["ABORTED", "FAILED_PRECONDITION", "DEADLINE_EXCEEDED", "INTERNAL"])
async def test_other_codes_are_never_retried(flaky: tuple[FlakyDiagnostics, str], code: str) -> None:
    servicer, target = flaky
    payload = f"{code}:1".encode()
    async with create_channel(target) as channel:
        with pytest.raises(aio.AioRpcError) as raised:
            await diagnostics_pb2_grpc.DiagnosticsServiceStub(channel).Echo(
                diagnostics_pb2.EchoRequest(payload=payload)
            )
    assert raised.value.code() == grpc.StatusCode[code]
    assert servicer.attempts[payload] == 1


async def test_every_call_gets_the_default_deadline(flaky: tuple[FlakyDiagnostics, str]) -> None:
    _, target = flaky
    async with create_channel(target, default_timeout_s=0.2) as channel:
        with pytest.raises(aio.AioRpcError) as raised:
            await diagnostics_pb2_grpc.DiagnosticsServiceStub(channel).Echo(
                diagnostics_pb2.EchoRequest(payload=b"slow", delay_ms=2000)
            )
    assert raised.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED


async def test_client_metrics_count_calls_by_code(flaky: tuple[FlakyDiagnostics, str]) -> None:
    _, target = flaky
    labels = {"grpc_type": "unary", "grpc_service": "loyalty.diagnostics.v1.DiagnosticsService", "grpc_method": "Echo"}

    def value(name: str, **extra: str) -> float:
        return REGISTRY.get_sample_value(name, {**labels, **extra}) or 0.0

    ok_before = value("grpc_client_handled_total", grpc_code="OK")
    precondition_before = value("grpc_client_handled_total", grpc_code="FailedPrecondition")
    async with create_channel(target) as channel:
        stub = diagnostics_pb2_grpc.DiagnosticsServiceStub(channel)
        await stub.Echo(diagnostics_pb2.EchoRequest(payload=b"ok"))
        with pytest.raises(aio.AioRpcError):
            await stub.Echo(diagnostics_pb2.EchoRequest(payload=b"FAILED_PRECONDITION:1"))
    assert value("grpc_client_handled_total", grpc_code="OK") == ok_before + 1
    assert value("grpc_client_handled_total", grpc_code="FailedPrecondition") == precondition_before + 1
    assert value("grpc_client_handling_seconds_count") >= 2
