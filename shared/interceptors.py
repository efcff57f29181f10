"""The gRPC edge shared by every service: metrics, error mapping, and their client twins.

`ServerEdgeInterceptor` must be the innermost server interceptor: it caches one wrapped handler
per method (resolving label children and the error domain once), which is only correct when
nothing after it varies per call.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeAlias

import asyncpg
import grpc
import redis.exceptions
from grpc import aio
from grpc_status import rpc_status

from shared.errors import DomainError, Reason, to_status
from shared.metrics import MethodSeries, resolve_series, rpc_type, split_method

log = logging.getLogger(__name__)

# Failures to reach PostgreSQL or Redis (connection refused or lost, pool timeouts).
DEPENDENCY_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
)

# grpc.RpcMethodHandler; grpc is untyped here (see pyproject's mypy section).
Handler: TypeAlias = Any


def error_domain(full_method: str) -> str:
    """'/loyalty.wallet.v1.WalletService/X' -> 'loyalty.wallet.v1' (ErrorInfo.domain)."""
    service, _ = split_method(full_method)
    return service.rpartition(".")[0] or service


class ServerEdgeInterceptor(aio.ServerInterceptor):  # type: ignore[misc]
    def __init__(self) -> None:
        self._wrapped: dict[str, Handler] = {}

    async def intercept_service(
        self, continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler]], details: grpc.HandlerCallDetails
    ) -> Handler:
        method: str = details.method  # type: ignore[attr-defined]
        cached = self._wrapped.get(method)
        if cached is not None:
            return cached
        handler = await continuation(details)
        if handler is None:
            return handler  # unknown method: grpc answers UNIMPLEMENTED itself
        wrapped = wrap_handler(handler, method)
        self._wrapped[method] = wrapped
        return wrapped


def wrap_handler(handler: Handler, full_method: str) -> Handler:
    grpc_type = rpc_type(request_streaming=handler.request_streaming, response_streaming=handler.response_streaming)
    series = resolve_series(side="server", grpc_type=grpc_type, full_method=full_method)
    domain = error_domain(full_method)
    edge = _Edge(series, domain, full_method)
    kwargs = {"request_deserializer": handler.request_deserializer, "response_serializer": handler.response_serializer}
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(edge.unary_unary(handler.unary_unary), **kwargs)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(edge.unary_stream(handler.unary_stream), **kwargs)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(edge.stream_unary(handler.stream_unary), **kwargs)
    return grpc.stream_stream_rpc_method_handler(edge.stream_stream(handler.stream_stream), **kwargs)


class _Edge:
    """Per-method wrappers: count, time, and turn DomainError into a rich google.rpc.Status."""

    def __init__(self, series: MethodSeries, domain: str, full_method: str) -> None:
        self.series = series
        self.domain = domain
        self.full_method = full_method

    async def _fail(self, error: BaseException, context: aio.ServicerContext) -> None:
        if isinstance(error, DomainError):
            await context.abort_with_status(rpc_status.to_status(to_status(error, domain=self.domain)))
        if isinstance(error, DEPENDENCY_ERRORS):
            # The database or Redis is unreachable: the request may or may not have taken effect,
            # and a retry with the same key is safe. Never INTERNAL: nothing is wrong with the code.
            log.warning("dependency unavailable in %s: %s: %s", self.full_method, type(error).__name__, error)
            unavailable = DomainError(
                Reason.DEPENDENCY_UNAVAILABLE, "a dependency is unavailable; retry with the same key"
            )
            await context.abort_with_status(rpc_status.to_status(to_status(unavailable, domain=self.domain)))
        log.exception("unexpected error in %s", self.full_method, exc_info=error)
        internal = DomainError(Reason.INTERNAL, "internal error; the request may be retried with the same key")
        await context.abort_with_status(rpc_status.to_status(to_status(internal, domain=self.domain)))

    def _finish(self, context: aio.ServicerContext, started_at: float, error: BaseException | None) -> None:
        code = context.code()
        if code is None:
            if error is None:
                code = grpc.StatusCode.OK
            elif isinstance(error, asyncio.CancelledError):
                remaining = context.time_remaining()
                expired = remaining is not None and remaining <= 0
                code = grpc.StatusCode.DEADLINE_EXCEEDED if expired else grpc.StatusCode.CANCELLED
            else:
                code = grpc.StatusCode.UNKNOWN
        self.series.handled_by_code[code].inc()
        self.series.handling.observe(time.perf_counter() - started_at)

    def unary_unary(self, behavior: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        async def handle(request: Any, context: aio.ServicerContext) -> Any:
            self.series.started.inc()
            self.series.msg_received.inc()
            started_at = time.perf_counter()
            error: BaseException | None = None
            try:
                response = await behavior(request, context)
                self.series.msg_sent.inc()
                return response
            except (aio.AbortError, asyncio.CancelledError) as raised:
                error = raised
                raise
            except Exception as raised:
                error = raised
                await self._fail(raised, context)
            finally:
                self._finish(context, started_at, error)

        return handle

    def unary_stream(self, behavior: Callable[..., Any]) -> Callable[..., Any]:
        if not inspect.isasyncgenfunction(behavior):
            # A handler that streams with `await context.write()` (grpc's own Health.Watch does)
            # must stay a coroutine: grpc only iterates async generators.
            return self.unary_unary(behavior)

        async def handle(request: Any, context: aio.ServicerContext) -> AsyncIterator[Any]:
            self.series.started.inc()
            self.series.msg_received.inc()
            started_at = time.perf_counter()
            error: BaseException | None = None
            try:
                async for response in behavior(request, context):
                    self.series.msg_sent.inc()
                    yield response
            except (aio.AbortError, asyncio.CancelledError, GeneratorExit) as raised:
                error = raised
                raise
            except Exception as raised:
                error = raised
                await self._fail(raised, context)
            finally:
                self._finish(context, started_at, error)

        return handle

    def _counted(self, requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
        async def counting() -> AsyncIterator[Any]:
            async for request in requests:
                self.series.msg_received.inc()
                yield request

        return counting()

    def stream_unary(self, behavior: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        async def handle(requests: AsyncIterator[Any], context: aio.ServicerContext) -> Any:
            self.series.started.inc()
            started_at = time.perf_counter()
            error: BaseException | None = None
            try:
                response = await behavior(self._counted(requests), context)
                self.series.msg_sent.inc()
                return response
            except (aio.AbortError, asyncio.CancelledError) as raised:
                error = raised
                raise
            except Exception as raised:
                error = raised
                await self._fail(raised, context)
            finally:
                self._finish(context, started_at, error)

        return handle

    def stream_stream(self, behavior: Callable[..., Any]) -> Callable[..., Any]:
        if not inspect.isasyncgenfunction(behavior):
            return self.stream_unary(behavior)  # `context.write()` style, as in unary_stream

        async def handle(requests: AsyncIterator[Any], context: aio.ServicerContext) -> AsyncIterator[Any]:
            self.series.started.inc()
            started_at = time.perf_counter()
            error: BaseException | None = None
            try:
                async for response in behavior(self._counted(requests), context):
                    self.series.msg_sent.inc()
                    yield response
            except (aio.AbortError, asyncio.CancelledError, GeneratorExit) as raised:
                error = raised
                raise
            except Exception as raised:
                error = raised
                await self._fail(raised, context)
            finally:
                self._finish(context, started_at, error)

        return handle


class _ClientEdge:
    """Shared by the client twins: a default deadline for calls that set none, and their series.

    The default deadline is applied here rather than as a service-config `timeout`, because
    grpcio applies service-config timeouts about a second early (grpc/grpc#34547, #40633).
    """

    def __init__(self, grpc_type: str, default_timeout_s: float) -> None:
        self.grpc_type = grpc_type
        self.default_timeout_s = default_timeout_s
        self._series: dict[str, MethodSeries] = {}

    def series(self, method: str | bytes) -> MethodSeries:
        name = method.decode() if isinstance(method, bytes) else method
        series = self._series.get(name)
        if series is None:
            series = resolve_series(side="client", grpc_type=self.grpc_type, full_method=name)
            self._series[name] = series
        return series

    def with_deadline(self, details: aio.ClientCallDetails) -> aio.ClientCallDetails:
        if details.timeout is not None:
            return details
        return details._replace(timeout=self.default_timeout_s)  # type: ignore[attr-defined,no-any-return]


class ClientEdgeUnaryUnary(aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    """Default deadline and grpc_client_* metrics for unary calls."""

    def __init__(self, default_timeout_s: float) -> None:
        self._edge = _ClientEdge("unary", default_timeout_s)

    async def intercept_unary_unary(self, continuation: Any, details: aio.ClientCallDetails, request: Any) -> Any:
        series = self._edge.series(details.method)
        series.started.inc()
        series.msg_sent.inc()
        started_at = time.perf_counter()
        call = await continuation(self._edge.with_deadline(details), request)
        try:
            await call
            series.msg_received.inc()
        except aio.AioRpcError:
            pass  # the caller sees the same error when it awaits the call
        except asyncio.CancelledError:
            series.handled_by_code[grpc.StatusCode.CANCELLED].inc()
            raise
        series.handled_by_code[await call.code()].inc()
        series.handling.observe(time.perf_counter() - started_at)
        return call


class ClientEdgeUnaryStream(aio.UnaryStreamClientInterceptor):  # type: ignore[misc]
    """Default deadline and grpc_client_* metrics for server-streaming calls."""

    def __init__(self, default_timeout_s: float) -> None:
        self._edge = _ClientEdge("server_stream", default_timeout_s)

    async def intercept_unary_stream(self, continuation: Any, details: aio.ClientCallDetails, request: Any) -> Any:
        series = self._edge.series(details.method)
        series.started.inc()
        series.msg_sent.inc()
        started_at = time.perf_counter()
        call = await continuation(self._edge.with_deadline(details), request)

        def finished(done: Any) -> None:
            series.handled_by_code[done.code()].inc()
            series.handling.observe(time.perf_counter() - started_at)

        call.add_done_callback(finished)
        return call


def client_interceptors(default_timeout_s: float) -> list[aio.ClientInterceptor]:
    return [ClientEdgeUnaryUnary(default_timeout_s), ClientEdgeUnaryStream(default_timeout_s)]
