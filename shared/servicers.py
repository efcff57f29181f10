"""Servicers every process serves, and the visible placeholder for not-yet-built RPCs."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator
from typing import Any

from google.protobuf.descriptor import ServiceDescriptor
from grpc import aio
from loyalty.diagnostics.v1 import diagnostics_pb2, diagnostics_pb2_grpc

from shared.errors import DomainError, FieldViolation, Reason, invalid_argument

ECHO_PAYLOAD_BYTES_MAX = 4096
ECHO_DELAY_MS_MAX = 10_000


class DiagnosticsServicer(diagnostics_pb2_grpc.DiagnosticsServiceServicer):
    def __init__(self, service: str) -> None:
        self.service = service

    async def Echo(
        self, request: diagnostics_pb2.EchoRequest, context: aio.ServicerContext
    ) -> diagnostics_pb2.EchoResponse:
        violations = []
        if len(request.payload) > ECHO_PAYLOAD_BYTES_MAX:
            violations.append(FieldViolation("payload", f"at most {ECHO_PAYLOAD_BYTES_MAX} bytes"))
        if not 0 <= request.delay_ms <= ECHO_DELAY_MS_MAX:
            violations.append(FieldViolation("delay_ms", f"must be between 0 and {ECHO_DELAY_MS_MAX}"))
        if violations:
            raise invalid_argument(violations)
        if request.delay_ms:
            await asyncio.sleep(request.delay_ms / 1000)
        return diagnostics_pb2.EchoResponse(payload=request.payload, service=self.service)


def fill_unimplemented(servicer: Any, base: type, descriptor: ServiceDescriptor, *, issue: str) -> list[str]:
    """Answer every RPC `servicer` does not override with UNIMPLEMENTED + ErrorInfo NOT_IMPLEMENTED.

    The generated base class would also answer UNIMPLEMENTED, but with a bare message; ours names
    the method and the issue that will build it, so a caller (and the README table) can see
    exactly what is a placeholder. Returns the names of the placeholder methods.
    """
    placeholders = []
    for method in descriptor.methods:
        if getattr(type(servicer), method.name) is not getattr(base, method.name):
            continue  # implemented by the servicer
        placeholders.append(method.name)
        full_name = f"{descriptor.full_name}/{method.name}"
        handler = _not_implemented_stream if method.server_streaming else _not_implemented_unary
        setattr(servicer, method.name, functools.partial(handler, full_name, issue))
    return placeholders


def _not_implemented_error(method: str, issue: str) -> DomainError:
    return DomainError(
        Reason.NOT_IMPLEMENTED,
        f"{method} is part of the v1 contract but not implemented yet ({issue})",
        metadata={"method": method, "plannedIn": issue},
    )


async def _not_implemented_unary(method: str, issue: str, request: Any, context: aio.ServicerContext) -> Any:
    raise _not_implemented_error(method, issue)


async def _not_implemented_stream(
    method: str, issue: str, request: Any, context: aio.ServicerContext
) -> AsyncIterator[Any]:
    raise _not_implemented_error(method, issue)
    yield  # makes this an async generator, as streaming handlers must be


def add_service(
    server: aio.Server,
    servicer_type: type[Any],
    *args: Any,
    pb2: Any,
    pb2_grpc: Any,
    service_name: str,
    issue: str,
) -> ServiceDescriptor:
    """Register a `servicer_type(*args)` for `service_name` (the proto's service, e.g.
    "WalletService"), with placeholders for the RPCs it does not implement yet. Returns the
    service descriptor. (It takes the type because the generated stubs declare every RPC
    abstract, and the placeholders are what make the servicer complete.)"""
    descriptor: ServiceDescriptor = pb2.DESCRIPTOR.services_by_name[service_name]
    servicer = servicer_type(*args)
    base = getattr(pb2_grpc, f"{service_name}Servicer")
    fill_unimplemented(servicer, base, descriptor, issue=issue)
    getattr(pb2_grpc, f"add_{service_name}Servicer_to_server")(servicer, server)
    return descriptor
