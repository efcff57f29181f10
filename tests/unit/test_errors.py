import grpc
import pytest
from google.rpc import error_details_pb2
from loyalty.common.v1 import errors_pb2

from shared.errors import (
    GO_CODE_NAMES,
    REASON_TO_STATUS,
    DomainError,
    FieldViolation,
    Reason,
    invalid_argument,
    to_status,
)


def test_python_reasons_are_exactly_the_proto_enum() -> None:
    proto_reasons = {
        name.removeprefix("ERROR_REASON_")
        for name in errors_pb2.ErrorReason.keys()  # noqa: SIM118 (an enum wrapper, not a dict)
        if name != "ERROR_REASON_UNSPECIFIED"
    }
    assert {reason.value for reason in Reason} == proto_reasons


@pytest.mark.parametrize(
    ("reason", "code"),
    [
        (Reason.INSUFFICIENT_POINTS, grpc.StatusCode.FAILED_PRECONDITION),
        (Reason.IDEMPOTENCY_KEY_REUSED, grpc.StatusCode.FAILED_PRECONDITION),
        (Reason.REQUEST_IN_PROGRESS, grpc.StatusCode.ABORTED),
        (Reason.CARD_BLOCKED, grpc.StatusCode.FAILED_PRECONDITION),
        (Reason.FRAUD_DENIED, grpc.StatusCode.PERMISSION_DENIED),
        (Reason.CARD_NOT_FOUND, grpc.StatusCode.NOT_FOUND),
        (Reason.INVALID_ARGUMENT, grpc.StatusCode.INVALID_ARGUMENT),
        (Reason.DEPENDENCY_UNAVAILABLE, grpc.StatusCode.UNAVAILABLE),
        (Reason.NOT_IMPLEMENTED, grpc.StatusCode.UNIMPLEMENTED),
    ],
)
def test_the_table_maps_reasons_to_codes(reason: Reason, code: grpc.StatusCode) -> None:
    assert REASON_TO_STATUS[reason].code == code


def test_business_refusals_are_never_internal_or_unknown() -> None:
    for reason, mapping in REASON_TO_STATUS.items():
        if reason is not Reason.INTERNAL:
            assert mapping.code not in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN), reason


def unpack(status, detail_type):
    found = []
    for packed in status.details:
        if packed.Is(detail_type.DESCRIPTOR):
            detail = detail_type()
            packed.Unpack(detail)
            found.append(detail)
    return found


def test_status_carries_error_info_with_reason_domain_and_metadata() -> None:
    error = DomainError(Reason.CARD_BLOCKED, "card is blocked", metadata={"blockReason": "LOST"})
    status = to_status(error, domain="loyalty.cards.v1")
    assert status.code == grpc.StatusCode.FAILED_PRECONDITION.value[0]
    (info,) = unpack(status, error_details_pb2.ErrorInfo)
    assert (info.reason, info.domain, dict(info.metadata)) == (
        "CARD_BLOCKED",
        "loyalty.cards.v1",
        {"blockReason": "LOST"},
    )
    assert unpack(status, error_details_pb2.RetryInfo) == []


def test_invalid_argument_lists_every_field_violation() -> None:
    error = invalid_argument(
        [FieldViolation("phone", "not a phone number"), FieldViolation("lines[1].amount", "negative")]
    )
    status = to_status(error, domain="loyalty.cards.v1")
    (bad_request,) = unpack(status, error_details_pb2.BadRequest)
    assert [(v.field, v.description) for v in bad_request.field_violations] == [
        ("phone", "not a phone number"),
        ("lines[1].amount", "negative"),
    ]


def test_retryable_reasons_carry_retry_info() -> None:
    status = to_status(DomainError(Reason.REQUEST_IN_PROGRESS, "busy"), domain="loyalty.processing.v1")
    (retry,) = unpack(status, error_details_pb2.RetryInfo)
    assert retry.retry_delay.ToNanoseconds() > 0


def test_every_grpc_code_has_its_go_spelling() -> None:
    assert set(GO_CODE_NAMES) == set(grpc.StatusCode)
    assert GO_CODE_NAMES[grpc.StatusCode.FAILED_PRECONDITION] == "FailedPrecondition"
    assert GO_CODE_NAMES[grpc.StatusCode.CANCELLED] == "Canceled"
