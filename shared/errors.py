"""The error model: a closed set of domain reasons, mapped in ONE table to gRPC statuses.

Domain and store code raise `DomainError(Reason.X, ...)`; only the gRPC edge turns it into a
`google.rpc.Status` (ErrorInfo with reason and domain; BadRequest field violations for invalid
input; RetryInfo where a retry can succeed). The reasons mirror `loyalty.common.v1.ErrorReason`
in protos/loyalty/common/v1/errors.proto (a test keeps the two equal), so integrators in any
language can switch on them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2


class Reason(StrEnum):
    INVALID_ARGUMENT = "INVALID_ARGUMENT"
    MEMBER_NOT_FOUND = "MEMBER_NOT_FOUND"
    CARD_NOT_FOUND = "CARD_NOT_FOUND"
    ACCOUNT_NOT_FOUND = "ACCOUNT_NOT_FOUND"
    OPERATION_NOT_FOUND = "OPERATION_NOT_FOUND"
    TERMINAL_NOT_FOUND = "TERMINAL_NOT_FOUND"
    RESOURCE_NOT_FOUND = "RESOURCE_NOT_FOUND"
    ALREADY_EXISTS = "ALREADY_EXISTS"
    IDEMPOTENCY_KEY_REUSED = "IDEMPOTENCY_KEY_REUSED"
    REQUEST_IN_PROGRESS = "REQUEST_IN_PROGRESS"
    CONCURRENT_MODIFICATION = "CONCURRENT_MODIFICATION"
    INSUFFICIENT_POINTS = "INSUFFICIENT_POINTS"
    ACCOUNT_FROZEN = "ACCOUNT_FROZEN"
    ACCOUNT_CLOSED = "ACCOUNT_CLOSED"
    CARD_BLOCKED = "CARD_BLOCKED"
    CARD_NOT_ACTIVE = "CARD_NOT_ACTIVE"
    CARD_EXPIRED = "CARD_EXPIRED"
    MEMBER_BLOCKED = "MEMBER_BLOCKED"
    INVALID_STATE_TRANSITION = "INVALID_STATE_TRANSITION"
    HOLD_ALREADY_RESOLVED = "HOLD_ALREADY_RESOLVED"
    HOLD_EXPIRED = "HOLD_EXPIRED"
    REDEMPTION_NOT_ALLOWED = "REDEMPTION_NOT_ALLOWED"
    REFUND_EXCEEDS_ORIGINAL = "REFUND_EXCEEDS_ORIGINAL"
    QR_TOKEN_EXPIRED = "QR_TOKEN_EXPIRED"
    QR_TOKEN_ALREADY_USED = "QR_TOKEN_ALREADY_USED"
    QR_TOKEN_INVALID = "QR_TOKEN_INVALID"
    OFFLINE_OPERATION_TOO_OLD = "OFFLINE_OPERATION_TOO_OLD"
    FRAUD_DENIED = "FRAUD_DENIED"
    PERMISSION_DENIED = "PERMISSION_DENIED"
    RATE_LIMITED = "RATE_LIMITED"
    OVERLOADED = "OVERLOADED"
    DEPENDENCY_UNAVAILABLE = "DEPENDENCY_UNAVAILABLE"
    NOT_IMPLEMENTED = "NOT_IMPLEMENTED"
    INTERNAL = "INTERNAL"
    CARD_ALREADY_BOUND = "CARD_ALREADY_BOUND"
    MEMBER_CLOSED = "MEMBER_CLOSED"
    VERSION_MISMATCH = "VERSION_MISMATCH"
    LIMIT_EXCEEDED = "LIMIT_EXCEEDED"
    ACCOUNT_NOT_EMPTY = "ACCOUNT_NOT_EMPTY"
    QUOTA_EXCEEDED = "QUOTA_EXCEEDED"


@dataclass(frozen=True)
class StatusMapping:
    code: grpc.StatusCode
    # Seconds a client should wait before retrying; None when a retry cannot help.
    retry_delay_s: float | None = None


_S = grpc.StatusCode
# The one table. Business refusals are FAILED_PRECONDITION / PERMISSION_DENIED, never INTERNAL.
REASON_TO_STATUS: Mapping[Reason, StatusMapping] = {
    Reason.INVALID_ARGUMENT: StatusMapping(_S.INVALID_ARGUMENT),
    Reason.MEMBER_NOT_FOUND: StatusMapping(_S.NOT_FOUND),
    Reason.CARD_NOT_FOUND: StatusMapping(_S.NOT_FOUND),
    Reason.ACCOUNT_NOT_FOUND: StatusMapping(_S.NOT_FOUND),
    Reason.OPERATION_NOT_FOUND: StatusMapping(_S.NOT_FOUND),
    Reason.TERMINAL_NOT_FOUND: StatusMapping(_S.NOT_FOUND),
    Reason.RESOURCE_NOT_FOUND: StatusMapping(_S.NOT_FOUND),
    Reason.ALREADY_EXISTS: StatusMapping(_S.ALREADY_EXISTS),
    Reason.IDEMPOTENCY_KEY_REUSED: StatusMapping(_S.FAILED_PRECONDITION),
    Reason.REQUEST_IN_PROGRESS: StatusMapping(_S.ABORTED, retry_delay_s=0.2),
    Reason.CONCURRENT_MODIFICATION: StatusMapping(_S.ABORTED, retry_delay_s=0.05),
    Reason.INSUFFICIENT_POINTS: StatusMapping(_S.FAILED_PRECONDITION),
    Reason.ACCOUNT_FROZEN: StatusMapping(_S.FAILED_PRECONDITION),
    Reason.ACCOUNT_CLOSED: StatusMapping(_S.FAILED_PRECONDITION),
    Reason.CARD_BLOCKED: StatusMapping(_S.FAILED_PRECONDITION),
    Reason.CARD_NOT_ACTIVE: StatusMapping(_S.FAILED_PRECONDITION),
    Reason.CARD_EXPIRED: StatusMapping(_S.FAILED_PRECONDITION),
    Reason.MEMBER_BLOCKED: StatusMapping(_S.FAILED_PRECONDITION),
    Reason.INVALID_STATE_TRANSITION: StatusMapping(_S.FAILED_PRECONDITION),
    Reason.HOLD_ALREADY_RESOLVED: StatusMapping(_S.FAILED_PRECONDITION),
    Reason.HOLD_EXPIRED: StatusMapping(_S.FAILED_PRECONDITION),
    Reason.REDEMPTION_NOT_ALLOWED: StatusMapping(_S.FAILED_PRECONDITION),
    Reason.REFUND_EXCEEDS_ORIGINAL: StatusMapping(_S.FAILED_PRECONDITION),
    Reason.QR_TOKEN_EXPIRED: StatusMapping(_S.FAILED_PRECONDITION),
    Reason.QR_TOKEN_ALREADY_USED: StatusMapping(_S.FAILED_PRECONDITION),
    Reason.QR_TOKEN_INVALID: StatusMapping(_S.INVALID_ARGUMENT),
    Reason.OFFLINE_OPERATION_TOO_OLD: StatusMapping(_S.FAILED_PRECONDITION),
    Reason.FRAUD_DENIED: StatusMapping(_S.PERMISSION_DENIED),
    Reason.PERMISSION_DENIED: StatusMapping(_S.PERMISSION_DENIED),
    Reason.RATE_LIMITED: StatusMapping(_S.RESOURCE_EXHAUSTED, retry_delay_s=1.0),
    Reason.OVERLOADED: StatusMapping(_S.UNAVAILABLE, retry_delay_s=0.5),
    Reason.DEPENDENCY_UNAVAILABLE: StatusMapping(_S.UNAVAILABLE, retry_delay_s=0.5),
    Reason.NOT_IMPLEMENTED: StatusMapping(_S.UNIMPLEMENTED),
    Reason.INTERNAL: StatusMapping(_S.INTERNAL),
    Reason.CARD_ALREADY_BOUND: StatusMapping(_S.FAILED_PRECONDITION),
    Reason.MEMBER_CLOSED: StatusMapping(_S.FAILED_PRECONDITION),
    Reason.VERSION_MISMATCH: StatusMapping(_S.FAILED_PRECONDITION),
    Reason.LIMIT_EXCEEDED: StatusMapping(_S.FAILED_PRECONDITION),
    Reason.ACCOUNT_NOT_EMPTY: StatusMapping(_S.FAILED_PRECONDITION),
    Reason.QUOTA_EXCEEDED: StatusMapping(_S.RESOURCE_EXHAUSTED),
}

_missing = set(Reason) - set(REASON_TO_STATUS)
if _missing:  # an explicit check, kept under `python -O`
    raise RuntimeError(f"reasons without a gRPC mapping: {sorted(_missing)}")


@dataclass(frozen=True)
class FieldViolation:
    # The field path in proto names, e.g. "receipt.lines[2].amount".
    field: str
    description: str


@dataclass(eq=False)  # not frozen: the interpreter and contextlib set __traceback__ & co.
class DomainError(Exception):
    """A refusal the client can act on. Raised anywhere below the edge; mapped at the edge."""

    reason: Reason
    message: str
    metadata: Mapping[str, str] = field(default_factory=dict)
    violations: Sequence[FieldViolation] = ()

    def __str__(self) -> str:
        return f"{self.reason}: {self.message}"


def invalid_argument(violations: Sequence[FieldViolation]) -> DomainError:
    """One error listing every bad field, so a client can fix them all at once."""
    summary = "; ".join(f"{v.field}: {v.description}" for v in violations)
    return DomainError(Reason.INVALID_ARGUMENT, f"invalid request: {summary}", violations=violations)


def to_status(error: DomainError, *, domain: str) -> status_pb2.Status:
    """The google.rpc.Status of `error`, with its details, for `abort_with_status`."""
    mapping = REASON_TO_STATUS[error.reason]
    status = status_pb2.Status(code=mapping.code.value[0], message=error.message)
    _pack(status, error_details_pb2.ErrorInfo(reason=error.reason.value, domain=domain, metadata=error.metadata))
    if error.violations:
        bad_request = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(field=v.field, description=v.description)
                for v in error.violations
            ]
        )
        _pack(status, bad_request)
    if mapping.retry_delay_s is not None:
        delay = duration_pb2.Duration()
        delay.FromNanoseconds(int(mapping.retry_delay_s * 1e9))
        _pack(status, error_details_pb2.RetryInfo(retry_delay=delay))
    return status


def _pack(status: status_pb2.Status, detail: object) -> None:
    packed = any_pb2.Any()
    packed.Pack(detail)  # type: ignore[arg-type]
    status.details.append(packed)


# Go's spelling of gRPC codes, as go-grpc-prometheus puts them in the grpc_code label.
GO_CODE_NAMES: Mapping[grpc.StatusCode, str] = {
    _S.OK: "OK",
    _S.CANCELLED: "Canceled",
    _S.UNKNOWN: "Unknown",
    _S.INVALID_ARGUMENT: "InvalidArgument",
    _S.DEADLINE_EXCEEDED: "DeadlineExceeded",
    _S.NOT_FOUND: "NotFound",
    _S.ALREADY_EXISTS: "AlreadyExists",
    _S.PERMISSION_DENIED: "PermissionDenied",
    _S.RESOURCE_EXHAUSTED: "ResourceExhausted",
    _S.FAILED_PRECONDITION: "FailedPrecondition",
    _S.ABORTED: "Aborted",
    _S.OUT_OF_RANGE: "OutOfRange",
    _S.UNIMPLEMENTED: "Unimplemented",
    _S.INTERNAL: "Internal",
    _S.UNAVAILABLE: "Unavailable",
    _S.DATA_LOSS: "DataLoss",
    _S.UNAUTHENTICATED: "Unauthenticated",
}
