"""gRPC edge of ProgramAdminService: the program's configuration (policies, partners, outlets,
terminals, earning rules, campaigns, rule set versions)."""

from __future__ import annotations

from loyalty.processing.v1 import program_admin_pb2_grpc

from shared.server import Runtime


class ProgramAdminServicer(program_admin_pb2_grpc.ProgramAdminServiceServicer):
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
