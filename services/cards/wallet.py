"""The wallet service as the cards service uses it: opening accounts, checking ownership.

Every call is idempotent twice over: the wallet opens accounts idempotently by nature (one master
account per member, one sub-account per external_ref), and the idempotency key is derived from
what is opened, so a repeated call is a replay. Unreachable (UNAVAILABLE, deadline) is
DEPENDENCY_UNAVAILABLE; the wallet's own refusals keep their reason (e.g. RESOURCE_NOT_FOUND
for a program without the gift account kind).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import grpc
from google.rpc import error_details_pb2
from grpc import aio
from grpc_status import rpc_status
from loyalty.common.v1 import types_pb2
from loyalty.wallet.v1 import wallet_pb2, wallet_pb2_grpc

from services.cards.domain.model import WalletAccount
from shared.errors import DomainError, Reason

IN_PROGRESS_ATTEMPTS_MAX = 5
IN_PROGRESS_DELAY_S = 0.1
ACTOR = types_pb2.Actor(type=types_pb2.ACTOR_TYPE_SYSTEM, id="cards")
_UNREACHABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED}
T = TypeVar("T")


@dataclass(frozen=True, kw_only=True)
class WalletSettings:
    timeout_s: float
    # The account kind of a gift card's own balance (a MONEY kind of the program).
    gift_kind: str
    # The account kind of a card bound in OWN_SUB_ACCOUNT mode.
    card_account_kind: str


class Wallet:
    def __init__(self, channel: aio.Channel, settings: WalletSettings) -> None:
        self._stub = wallet_pb2_grpc.WalletServiceStub(channel)
        self._settings = settings

    async def _call(self, what: str, call: Callable[[], Awaitable[T]]) -> T:
        """The call; while the wallet is still running the same request (a concurrent
        registration of the same member) it is repeated, a bounded number of times."""
        for attempt in range(1, IN_PROGRESS_ATTEMPTS_MAX + 1):
            try:
                return await call()
            except aio.AioRpcError as error:
                info = _error_info(error)
                in_progress = info is not None and info.reason == Reason.REQUEST_IN_PROGRESS.value
                if not in_progress or attempt == IN_PROGRESS_ATTEMPTS_MAX:
                    raise _domain_error(what, error) from None
            await asyncio.sleep(IN_PROGRESS_DELAY_S * attempt)
        raise RuntimeError("unreachable")

    async def open_member_accounts(self, *, program_id: str, member_id: str) -> tuple[str, list[WalletAccount]]:
        """The member's master account id (opened with the program's default kinds if new) and
        its member sub-accounts in the wallet's order."""
        request = wallet_pb2.OpenMemberAccountsRequest(
            program_id=program_id,
            member_id=member_id,
            actor=ACTOR,
            idempotency_key=types_pb2.IdempotencyKey(key=f"cards:member-accounts:{member_id}"),
        )
        response = await self._call(
            "opening the member's wallet accounts",
            lambda: self._stub.OpenMemberAccounts(request, timeout=self._settings.timeout_s),
        )
        accounts = [
            WalletAccount(account.account_id, account.kind)
            for account in response.master_account.accounts
            if account.type == wallet_pb2.ACCOUNT_TYPE_MEMBER
        ]
        return str(response.master_account.master_account_id), accounts

    async def open_gift_account(self, *, program_id: str, card_id: str) -> str:
        """A gift card's own balance: a bearer account keyed by the card, whoever holds it."""
        return await self._open_sub_account(
            program_id=program_id,
            kind=self._settings.gift_kind,
            master_account_id="",
            external_ref=f"card:{card_id}:gift",
            display_name="Gift card",
        )

    async def open_card_account(self, *, program_id: str, master_account_id: str, card_id: str, label: str) -> str:
        """A card's own sub-account under the member's master account (OWN_SUB_ACCOUNT mode)."""
        return await self._open_sub_account(
            program_id=program_id,
            kind=self._settings.card_account_kind,
            master_account_id=master_account_id,
            external_ref=f"card:{card_id}",
            display_name=label,
        )

    async def _open_sub_account(
        self, *, program_id: str, kind: str, master_account_id: str, external_ref: str, display_name: str
    ) -> str:
        request = wallet_pb2.OpenSubAccountRequest(
            program_id=program_id,
            kind=kind,
            master_account_id=master_account_id,
            external_ref=external_ref,
            display_name=display_name,
            actor=ACTOR,
            idempotency_key=types_pb2.IdempotencyKey(key=f"cards:{external_ref}"),
        )
        response = await self._call(
            f"opening the {kind!r} account {external_ref}",
            lambda: self._stub.OpenSubAccount(request, timeout=self._settings.timeout_s),
        )
        return str(response.account.account_id)

    async def is_member_account(self, *, account_id: str, member_id: str, program_id: str) -> bool:
        """Whether `account_id` is an open sub-account of the member (EXISTING_ACCOUNT mode)."""
        request = wallet_pb2.GetAccountRequest(account_id=account_id)
        try:
            response = await self._stub.GetAccount(request, timeout=self._settings.timeout_s)
        except aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.NOT_FOUND:
                return False
            raise _domain_error("reading the account", error) from None
        account = response.account
        return bool(
            account.type == wallet_pb2.ACCOUNT_TYPE_MEMBER
            and account.member_id == member_id
            and account.program_id == program_id
            and account.effective_state != wallet_pb2.ACCOUNT_STATE_CLOSED
        )


def _domain_error(what: str, error: aio.AioRpcError) -> DomainError:
    if error.code() in _UNREACHABLE:
        return DomainError(
            Reason.DEPENDENCY_UNAVAILABLE,
            f"the wallet service is unavailable ({what}); retry with the same key",
            metadata={"dependency": "wallet"},
        )
    info = _error_info(error)
    if info is not None and info.reason in Reason.__members__:
        return DomainError(Reason(info.reason), f"wallet: {error.details()}", metadata=dict(info.metadata))
    return DomainError(Reason.INTERNAL, f"wallet answered {error.code().name} ({what}): {error.details()}")


def _error_info(error: aio.AioRpcError) -> error_details_pb2.ErrorInfo | None:
    status = rpc_status.from_call(error)
    if status is None:
        return None
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return info
    return None
