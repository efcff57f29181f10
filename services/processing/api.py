"""gRPC edge of the processing service: the register flow and the program's admin RPCs.

Their business logic is issue #5; until it lands every ProcessingService and
ProgramAdminService RPC answers UNIMPLEMENTED with ErrorInfo reason NOT_IMPLEMENTED naming the
method and the issue.
"""

from __future__ import annotations

from collections.abc import Sequence

from google.protobuf.descriptor import ServiceDescriptor
from grpc import aio
from loyalty.processing.v1 import processing_pb2, processing_pb2_grpc, program_admin_pb2, program_admin_pb2_grpc

from services.processing.admin import ProgramAdminServicer
from shared.server import Runtime
from shared.servicers import add_service


class ProcessingServicer(processing_pb2_grpc.ProcessingServiceServicer):
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime


def register(server: aio.Server, runtime: Runtime) -> Sequence[ServiceDescriptor]:
    return [
        add_service(
            server,
            ProcessingServicer,
            runtime,
            pb2=processing_pb2,
            pb2_grpc=processing_pb2_grpc,
            service_name="ProcessingService",
            issue="issue #5",
        ),
        add_service(
            server,
            ProgramAdminServicer,
            runtime,
            pb2=program_admin_pb2,
            pb2_grpc=program_admin_pb2_grpc,
            service_name="ProgramAdminService",
            issue="issue #5",
        ),
    ]
