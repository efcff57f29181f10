"""gRPC edge of the notifications service (templates, preferences, deliveries, stats).

Its business logic has no issue yet; until it lands every NotificationsService RPC answers
UNIMPLEMENTED with ErrorInfo reason NOT_IMPLEMENTED naming the method.
"""

from __future__ import annotations

from collections.abc import Sequence

from google.protobuf.descriptor import ServiceDescriptor
from grpc import aio
from loyalty.notifications.v1 import notifications_pb2, notifications_pb2_grpc

from shared.server import Runtime
from shared.servicers import add_service


class NotificationsServicer(notifications_pb2_grpc.NotificationsServiceServicer):
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime


def register(server: aio.Server, runtime: Runtime) -> Sequence[ServiceDescriptor]:
    return [
        add_service(
            server,
            NotificationsServicer,
            runtime,
            pb2=notifications_pb2,
            pb2_grpc=notifications_pb2_grpc,
            service_name="NotificationsService",
            issue="the notifications issue (not filed yet)",
        )
    ]
