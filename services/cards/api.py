"""gRPC edge of the cards service (members, loyalty cards, identification at the till).

Its business logic is issue #4; until it lands every CardsService RPC answers UNIMPLEMENTED
with ErrorInfo reason NOT_IMPLEMENTED naming the method and the issue.
"""

from __future__ import annotations

from collections.abc import Sequence

from google.protobuf.descriptor import ServiceDescriptor
from grpc import aio
from loyalty.cards.v1 import cards_pb2, cards_pb2_grpc

from shared.server import Runtime
from shared.servicers import add_service


class CardsServicer(cards_pb2_grpc.CardsServiceServicer):
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime


def register(server: aio.Server, runtime: Runtime) -> Sequence[ServiceDescriptor]:
    return [
        add_service(
            server,
            CardsServicer,
            runtime,
            pb2=cards_pb2,
            pb2_grpc=cards_pb2_grpc,
            service_name="CardsService",
            issue="issue #4",
        )
    ]
