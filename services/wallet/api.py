"""gRPC edge of the wallet service (the double-entry points ledger).

The ledger's business logic is issue #3; until it lands every WalletService RPC answers
UNIMPLEMENTED with ErrorInfo reason NOT_IMPLEMENTED naming the method and the issue.
"""

from __future__ import annotations

from collections.abc import Sequence

from google.protobuf.descriptor import ServiceDescriptor
from grpc import aio
from loyalty.wallet.v1 import wallet_pb2, wallet_pb2_grpc

from shared.server import Runtime
from shared.servicers import add_service


class WalletServicer(wallet_pb2_grpc.WalletServiceServicer):
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime


def register(server: aio.Server, runtime: Runtime) -> Sequence[ServiceDescriptor]:
    return [
        add_service(
            server,
            WalletServicer,
            runtime,
            pb2=wallet_pb2,
            pb2_grpc=wallet_pb2_grpc,
            service_name="WalletService",
            issue="issue #3",
        )
    ]
