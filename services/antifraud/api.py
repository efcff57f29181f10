"""gRPC edge of the anti-fraud service (Assess, signals, blocks, rules).

Its business logic has no issue yet; until it lands every AntifraudService RPC answers
UNIMPLEMENTED with ErrorInfo reason NOT_IMPLEMENTED naming the method.
"""

from __future__ import annotations

from collections.abc import Sequence

from google.protobuf.descriptor import ServiceDescriptor
from grpc import aio
from loyalty.antifraud.v1 import antifraud_pb2, antifraud_pb2_grpc

from shared.server import Runtime
from shared.servicers import add_service


class AntifraudServicer(antifraud_pb2_grpc.AntifraudServiceServicer):
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime


def register(server: aio.Server, runtime: Runtime) -> Sequence[ServiceDescriptor]:
    return [
        add_service(
            server,
            AntifraudServicer,
            runtime,
            pb2=antifraud_pb2,
            pb2_grpc=antifraud_pb2_grpc,
            service_name="AntifraudService",
            issue="the anti-fraud issue (not filed yet)",
        )
    ]
