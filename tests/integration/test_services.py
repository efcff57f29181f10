"""All five services as real processes on the embedded stack: SERVING, reflection, metrics,
the error model on the wire, and the visible UNIMPLEMENTED placeholders."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf import descriptor_pool
from google.rpc import error_details_pb2
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase
from grpc_status import rpc_status
from loyalty.antifraud.v1 import antifraud_pb2, antifraud_pb2_grpc
from loyalty.diagnostics.v1 import diagnostics_pb2, diagnostics_pb2_grpc
from loyalty.wallet.v1 import wallet_pb2, wallet_pb2_grpc

from shared.config import SERVICES
from tests.harness import ServiceProcess, metric_value

EXPECTED_APIS = {
    "processing": {"loyalty.processing.v1.ProcessingService", "loyalty.processing.v1.ProgramAdminService"},
    "wallet": {"loyalty.wallet.v1.WalletService"},
    "cards": {"loyalty.cards.v1.CardsService"},
    "antifraud": {"loyalty.antifraud.v1.AntifraudService"},
    "notifications": {"loyalty.notifications.v1.NotificationsService"},
}
COMMON_APIS = {
    "loyalty.diagnostics.v1.DiagnosticsService",
    "grpc.health.v1.Health",
    "grpc.reflection.v1alpha.ServerReflection",
}


@pytest.mark.parametrize("service", SERVICES)
def test_every_service_is_serving_overall_and_per_api(
    running_services: dict[str, ServiceProcess], service: str
) -> None:
    process = running_services[service]
    process.wait_health("SERVING")
    for api in EXPECTED_APIS[service]:
        assert process.health_status(api) == "SERVING"


@pytest.mark.parametrize("service", SERVICES)
def test_reflection_lists_and_describes_every_api(running_services: dict[str, ServiceProcess], service: str) -> None:
    with grpc.insecure_channel(running_services[service].grpc_address) as channel:
        database = ProtoReflectionDescriptorDatabase(channel)
        assert set(database.get_services()) == EXPECTED_APIS[service] | COMMON_APIS
        pool = descriptor_pool.DescriptorPool(database)
        for api in EXPECTED_APIS[service]:
            # Resolving the service pulls its file and every import (common/v1 types) over reflection.
            assert len(pool.FindServiceByName(api).methods) > 0


def test_register_flow_is_discoverable_over_reflection(running_services: dict[str, ServiceProcess]) -> None:
    with grpc.insecure_channel(running_services["processing"].grpc_address) as channel:
        pool = descriptor_pool.DescriptorPool(ProtoReflectionDescriptorDatabase(channel))
        methods = {m.name for m in pool.FindServiceByName("loyalty.processing.v1.ProcessingService").methods}
    register_flow = {"Identify", "Calculate", "Authorize", "Capture", "Void", "Purchase", "Refund"}
    assert register_flow | {"UploadOfflineBatch", "GetOperation", "ListOperations"} <= methods


def details_of(error: grpc.RpcError) -> tuple[error_details_pb2.ErrorInfo, list[object]]:
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None, "no google.rpc.Status in the trailers"
    infos: list[error_details_pb2.ErrorInfo] = []
    others: list[object] = []
    for packed in status.details:
        for kind in (error_details_pb2.ErrorInfo, error_details_pb2.BadRequest, error_details_pb2.RetryInfo):
            if packed.Is(kind.DESCRIPTOR):
                detail = kind()
                packed.Unpack(detail)
                (infos if kind is error_details_pb2.ErrorInfo else others).append(detail)
    (info,) = infos
    return info, others


def test_placeholder_rpcs_answer_unimplemented_visibly(running_services: dict[str, ServiceProcess]) -> None:
    with grpc.insecure_channel(running_services["antifraud"].grpc_address) as channel:
        stub = antifraud_pb2_grpc.AntifraudServiceStub(channel)
        with pytest.raises(grpc.RpcError) as raised:
            stub.Assess(antifraud_pb2.AssessRequest(), timeout=5)
    assert raised.value.code() == grpc.StatusCode.UNIMPLEMENTED  # type: ignore[attr-defined]
    info, _ = details_of(raised.value)
    assert info.reason == "NOT_IMPLEMENTED"
    assert info.domain == "loyalty.antifraud.v1"
    assert info.metadata["method"] == "loyalty.antifraud.v1.AntifraudService/Assess"
    assert info.metadata["plannedIn"] == "the anti-fraud issue (not filed yet)"


def test_bad_input_gets_invalid_argument_with_field_violations(running_services: dict[str, ServiceProcess]) -> None:
    with grpc.insecure_channel(running_services["cards"].grpc_address) as channel:
        stub = diagnostics_pb2_grpc.DiagnosticsServiceStub(channel)
        with pytest.raises(grpc.RpcError) as raised:
            stub.Echo(diagnostics_pb2.EchoRequest(payload=b"x" * 5000, delay_ms=-1), timeout=5)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
    info, others = details_of(raised.value)
    assert (info.reason, info.domain) == ("INVALID_ARGUMENT", "loyalty.diagnostics.v1")
    (bad_request,) = others
    assert isinstance(bad_request, error_details_pb2.BadRequest)
    assert [v.field for v in bad_request.field_violations] == ["payload", "delay_ms"]


def handled(process: ServiceProcess, method: str, code: str, service: str) -> float:
    labels = {"grpc_type": "unary", "grpc_service": service, "grpc_method": method, "grpc_code": code}
    value = metric_value(process.metrics_text(), "grpc_server_handled_total", labels)
    assert value is not None, f"series {labels} is missing (metrics must be pre-initialised)"
    return value


def test_a_call_increments_exactly_its_own_series(running_services: dict[str, ServiceProcess]) -> None:
    process = running_services["antifraud"]
    echo = ("Echo", "loyalty.diagnostics.v1.DiagnosticsService")
    before_ok = handled(process, *echo[:1], "OK", echo[1])
    before_invalid = handled(process, *echo[:1], "InvalidArgument", echo[1])
    with grpc.insecure_channel(process.grpc_address) as channel:
        stub = diagnostics_pb2_grpc.DiagnosticsServiceStub(channel)
        for _ in range(3):
            stub.Echo(diagnostics_pb2.EchoRequest(payload=b"ping"), timeout=5)
        with pytest.raises(grpc.RpcError):
            stub.Echo(diagnostics_pb2.EchoRequest(delay_ms=999_999), timeout=5)
    assert handled(process, "Echo", "OK", echo[1]) == before_ok + 3
    assert handled(process, "Echo", "InvalidArgument", echo[1]) == before_invalid + 1
    text = process.metrics_text()
    started = metric_value(
        text,
        "grpc_server_started_total",
        {"grpc_type": "unary", "grpc_service": echo[1], "grpc_method": "Echo"},
    )
    assert started is not None and started >= 4
    histogram_count = metric_value(
        text,
        "grpc_server_handling_seconds_count",
        {"grpc_type": "unary", "grpc_service": echo[1], "grpc_method": "Echo"},
    )
    assert histogram_count is not None and histogram_count >= 4


def test_aborts_are_counted_with_go_code_names(running_services: dict[str, ServiceProcess]) -> None:
    process = running_services["wallet"]
    before = handled(process, "GetBalances", "InvalidArgument", "loyalty.wallet.v1.WalletService")
    with grpc.insecure_channel(process.grpc_address) as channel, pytest.raises(grpc.RpcError):
        wallet_pb2_grpc.WalletServiceStub(channel).GetBalances(wallet_pb2.GetBalancesRequest(), timeout=5)
    assert handled(process, "GetBalances", "InvalidArgument", "loyalty.wallet.v1.WalletService") == before + 1


def test_every_method_is_preinitialised_for_every_code(running_services: dict[str, ServiceProcess]) -> None:
    text = running_services["processing"].metrics_text()
    for code in ("OK", "InvalidArgument", "FailedPrecondition", "Unavailable", "DeadlineExceeded"):
        labels = {
            "grpc_type": "unary",
            "grpc_service": "loyalty.processing.v1.ProcessingService",
            "grpc_method": "Purchase",
            "grpc_code": code,
        }
        assert metric_value(text, "grpc_server_handled_total", labels) is not None, code
