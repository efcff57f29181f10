"""Processing's clients of cards and wallet, built for the hot path.

* Resolutions and transfers of concurrent purchases are coalesced into batch RPCs
  (`BatchResolve`, `CreateTransfers` with one linked chain per purchase), see shared/batching.py.
* Resolutions are never cached here: a BlockCard must win at once, and cards owns that cache.
* What never changes is cached: the ids of a member's sub-accounts by kind (a sub-account id is
  fixed for life) and the program's system accounts. A member not cached yet costs no wallet
  call either: cards' resolution carries the sub-accounts the wallet opened at registration.
* A downstream that is down or too slow becomes DEPENDENCY_UNAVAILABLE (UNAVAILABLE with a
  retry delay): the register retries with the same key, and nothing is decided meanwhile.
  A coalesced request waits at most its dependency's deadline in all: queued behind hung calls
  for a free one, then in its call (else a burst during a freeze waited two deadlines).
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import grpc
from grpc import aio
from loyalty.cards.v1 import cards_pb2, cards_pb2_grpc
from loyalty.common.v1 import errors_pb2, types_pb2
from loyalty.wallet.v1 import wallet_pb2, wallet_pb2_grpc

from shared.batching import Coalescer
from shared.clients import create_channel
from shared.errors import DomainError, FieldViolation, Reason

ACTOR = types_pb2.Actor(type=types_pb2.ACTOR_TYPE_SYSTEM, id="processing")
# What a register may retry with the same key. ABORTED: the dependency's own idempotency says the
# same request is still running (e.g. two processing processes opening one system account).
TRANSIENT_CODES = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.ABORTED,
    }
)
ACCOUNT_CACHE_SIZE = 200_000
ResultT = TypeVar("ResultT")


def reason_of(value: errors_pb2.ErrorReason.ValueType) -> Reason:
    """loyalty.common.v1.ErrorReason (wire value) -> Reason."""
    return Reason(errors_pb2.ErrorReason.Name(value).removeprefix("ERROR_REASON_"))


def reason_value(reason: Reason) -> errors_pb2.ErrorReason.ValueType:
    return errors_pb2.ErrorReason.Value(f"ERROR_REASON_{reason.value}")


def unavailable(service: str, error: aio.AioRpcError) -> DomainError:
    return DomainError(
        Reason.DEPENDENCY_UNAVAILABLE,
        f"{service} did not answer ({error.code().name}); retry with the same key",
        metadata={"dependency": service},
    )


async def within(service: str, deadline_s: float, work: Awaitable[ResultT]) -> ResultT:
    """`work` (a coalesced request: its wait for a call, then the call), bounded by the deadline."""
    try:
        async with asyncio.timeout(deadline_s):
            return await work
    except TimeoutError:
        raise DomainError(
            Reason.DEPENDENCY_UNAVAILABLE,
            f"{service} did not answer within {deadline_s} s; retry with the same key",
            metadata={"dependency": service},
        ) from None


@dataclass(frozen=True)
class SubAccount:
    account_id: str
    kind: str
    unit: wallet_pb2.Unit
    spendable: bool


CALLS_IN_FLIGHT_MAX = 4


@dataclass(frozen=True)
class Deadlines:
    cards_s: float
    wallet_s: float


class Downstream:
    def __init__(self, *, cards_target: str, wallet_target: str, deadlines: Deadlines, traced: bool) -> None:
        self.deadlines = deadlines
        self._cards_channel = create_channel(cards_target, default_timeout_s=deadlines.cards_s, traced=traced)
        self._wallet_channel = create_channel(wallet_target, default_timeout_s=deadlines.wallet_s, traced=traced)
        self.cards = cards_pb2_grpc.CardsServiceStub(self._cards_channel)
        self.wallet = wallet_pb2_grpc.WalletServiceStub(self._wallet_channel)
        # Up to CALLS_IN_FLIGHT_MAX calls of each kind at once, the rest batched behind them. With
        # one at a time, a purchase arriving during the call waited for it, the wallet step
        # doubled at 100 purchases/s and purchases piled up (p50 30-50 ms against 11-12 ms).
        self._resolver: Coalescer[cards_pb2.ResolveRequest, cards_pb2.BatchResolveResult] = Coalescer(
            self._batch_resolve, batch_size_max=100, calls_in_flight_max=CALLS_IN_FLIGHT_MAX
        )
        self._transfers: Coalescer[Sequence[wallet_pb2.Transfer], list[wallet_pb2.TransferResult]] = Coalescer(
            self._create_transfers, batch_size_max=1000, calls_in_flight_max=CALLS_IN_FLIGHT_MAX, size_of=len
        )
        self._sub_accounts: OrderedDict[str, tuple[SubAccount, ...]] = OrderedDict()
        self._system_accounts: dict[tuple[str, int, str, int], str] = {}
        self._kinds: dict[str, dict[str, wallet_pb2.AccountKind]] = {}
        self._opening: dict[tuple[str, int, str, int], asyncio.Future[str]] = {}

    async def close(self) -> None:
        await self._cards_channel.close()
        await self._wallet_channel.close()

    # -- cards ---------------------------------------------------------------------------------

    async def resolve(
        self, *, program_id: str, identifier: types_pb2.MemberIdentifier, terminal_id: str, with_cards: bool = False
    ) -> cards_pb2.Resolution:
        """The member behind what the customer presented; refusals as DomainError."""
        request = cards_pb2.ResolveRequest(
            program_id=program_id,
            identifier=identifier,
            actor=types_pb2.Actor(type=types_pb2.ACTOR_TYPE_TERMINAL, id=terminal_id),
            include_member_cards=with_cards,
        )
        result = await within("cards", self.deadlines.cards_s, self._resolver.submit(request))
        if result.HasField("error"):
            reason = reason_of(result.error.reason)
            error = result.error
            violations = [FieldViolation(f"member.{error.field}", error.message)] if error.field else []
            raise DomainError(reason, error.message or reason.value, violations=violations)
        resolution: cards_pb2.Resolution = result.resolution
        return resolution

    async def _batch_resolve(self, requests: Sequence[cards_pb2.ResolveRequest]) -> list[cards_pb2.BatchResolveResult]:
        try:
            response = await self.cards.BatchResolve(cards_pb2.BatchResolveRequest(requests=requests))
        except aio.AioRpcError as error:
            raise self._translate("cards", error) from None
        return list(response.results)

    # -- wallet --------------------------------------------------------------------------------

    async def transfer(self, chain: Sequence[wallet_pb2.Transfer]) -> list[wallet_pb2.TransferResult]:
        """Apply one operation's transfers (already linked as the caller wants) in a shared call."""
        if not chain:
            return []
        return await within("wallet", self.deadlines.wallet_s, self._transfers.submit(chain))

    async def _create_transfers(
        self, chains: Sequence[Sequence[wallet_pb2.Transfer]]
    ) -> list[list[wallet_pb2.TransferResult]]:
        request = wallet_pb2.CreateTransfersRequest(transfers=[t for chain in chains for t in chain])
        try:
            response = await self.wallet.CreateTransfers(request)
        except aio.AioRpcError as error:
            raise self._translate("wallet", error) from None
        results, start = [], 0
        for chain in chains:
            results.append(list(response.results[start : start + len(chain)]))
            start += len(chain)
        return results

    async def balances(self, master_account_id: str) -> list[wallet_pb2.AccountBalanceView]:
        try:
            response = await self.wallet.GetBalances(wallet_pb2.GetBalancesRequest(master_account_id=master_account_id))
        except aio.AioRpcError as error:
            raise self._translate("wallet", error) from None
        views = list(response.balances)
        self._remember_sub_accounts(master_account_id, views)
        return views

    async def member_balances(self, *, program_id: str, member_id: str) -> list[wallet_pb2.AccountBalanceView]:
        request = wallet_pb2.GetBalancesRequest(program_id=program_id, member_id=member_id)
        try:
            response = await self.wallet.GetBalances(request)
        except aio.AioRpcError as error:
            raise self._translate("wallet", error) from None
        return list(response.balances)

    async def sub_accounts(self, resolution: cards_pb2.Resolution) -> tuple[SubAccount, ...]:
        """The member's sub-accounts in redemption-priority order: cached from the wallet (ids
        never change), else as cards recorded them when the wallet opened them (the resolution's
        `member_accounts`, with unit and policy from the program's account kinds), else read
        from the wallet (GetBalances, then cached)."""
        master_account_id = resolution.master_account_id
        cached = self._sub_accounts.get(master_account_id)
        if cached is not None:
            self._sub_accounts.move_to_end(master_account_id)
            return cached
        if resolution.member_accounts:
            recorded = await self._recorded_sub_accounts(resolution)
            if recorded is not None:
                return recorded
        await self.balances(master_account_id)
        return self._sub_accounts[master_account_id]

    async def _recorded_sub_accounts(self, resolution: cards_pb2.Resolution) -> tuple[SubAccount, ...] | None:
        """The resolution's `member_accounts` as SubAccounts; None when a kind is unknown even
        after reading the kinds again (the wallet answers then). Not cached: a sub-account opened
        after the registration (which only the wallet knows) must not go missing for long."""
        kinds = await self._account_kinds(resolution.program_id)
        if any(account.kind not in kinds for account in resolution.member_accounts):
            kinds = await self._account_kinds(resolution.program_id, refresh=True)
            if any(account.kind not in kinds for account in resolution.member_accounts):
                return None
        return tuple(
            SubAccount(account.account_id, account.kind, kinds[account.kind].unit, kinds[account.kind].policy.spendable)
            for account in resolution.member_accounts
        )

    def _remember_sub_accounts(self, master_account_id: str, views: Sequence[wallet_pb2.AccountBalanceView]) -> None:
        accounts = tuple(
            SubAccount(view.balance.account_id, view.balance.account_kind, view.unit, view.spendable)
            for view in views
            if view.account_type == wallet_pb2.ACCOUNT_TYPE_MEMBER
        )
        self._sub_accounts[master_account_id] = accounts
        self._sub_accounts.move_to_end(master_account_id)
        while len(self._sub_accounts) > ACCOUNT_CACHE_SIZE:
            self._sub_accounts.popitem(last=False)

    async def system_account(
        self, *, program_id: str, role: wallet_pb2.SystemAccountRole.ValueType, unit: wallet_pb2.Unit
    ) -> str:
        """The program-level system account of a role and unit, opened on first use."""
        cache_key = (program_id, role, unit.currency_code, unit.scale)
        account_id = self._system_accounts.get(cache_key)
        if account_id is not None:
            return account_id
        # One open per account however many purchases arrive at once after a start: concurrent
        # opens under one key would be ABORTED (in progress) by the wallet's idempotency.
        opening = self._opening.get(cache_key)
        if opening is None:
            opening = asyncio.ensure_future(self._open_system_account(program_id, role, unit, cache_key))
            self._opening[cache_key] = opening
            opening.add_done_callback(lambda _: self._opening.pop(cache_key, None))
        return await asyncio.shield(opening)

    async def _open_system_account(
        self,
        program_id: str,
        role: wallet_pb2.SystemAccountRole.ValueType,
        unit: wallet_pb2.Unit,
        cache_key: tuple[str, int, str, int],
    ) -> str:
        account_id = self._system_accounts.get(cache_key)
        if account_id is None:
            key = f"processing.system.{program_id}.{role}.{unit.type}.{unit.currency_code or 'points'}.{unit.scale}"
            request = wallet_pb2.OpenSystemAccountRequest(
                program_id=program_id,
                role=role,
                unit=unit,
                actor=ACTOR,
                idempotency_key=types_pb2.IdempotencyKey(key=key[:128]),
            )
            try:
                response = await self.wallet.OpenSystemAccount(request)
            except aio.AioRpcError as error:
                raise self._translate("wallet", error) from None
            account_id = response.account.account_id
            self._system_accounts[cache_key] = account_id
        return account_id

    async def pending_lots(self, account_id: str) -> dict[str, int]:
        """transfer id -> what is left of its lot, for the account's lots still PENDING (refunds
        may take these back under every shortfall policy)."""
        remaining: dict[str, int] = {}
        token = ""
        while True:
            request = wallet_pb2.ListLotsRequest(
                account_id=account_id, states=[wallet_pb2.LOT_STATE_PENDING], page_size=1000, page_token=token
            )
            try:
                response = await self.wallet.ListLots(request)
            except aio.AioRpcError as error:
                raise self._translate("wallet", error) from None
            for lot in response.lots:
                remaining[lot.transfer_id] = remaining.get(lot.transfer_id, 0) + lot.remaining_minor
            token = response.next_page_token
            if not token:
                return remaining

    async def debt_limit(self, *, program_id: str, kind: str) -> int | None:
        """How far below zero a refund may take an account of `kind`: None = no limit, 0 = not at
        all (the kind does not allow debt)."""
        account_kind = (await self._account_kinds(program_id)).get(kind)
        if account_kind is None or account_kind.policy.overdraft_mode != wallet_pb2.OVERDRAFT_MODE_DEBT_ALLOWED:
            return 0
        return account_kind.policy.debt_limit_minor or None

    async def _account_kinds(self, program_id: str, *, refresh: bool = False) -> dict[str, wallet_pb2.AccountKind]:
        """The program's account kinds by name, read once per process (they rarely change; a
        kind never seen before makes callers ask again with `refresh`)."""
        if refresh or program_id not in self._kinds:
            kinds: dict[str, wallet_pb2.AccountKind] = {}
            token = ""
            while True:
                request = wallet_pb2.ListAccountKindsRequest(program_id=program_id, page_size=1000, page_token=token)
                try:
                    response = await self.wallet.ListAccountKinds(request)
                except aio.AioRpcError as error:
                    raise self._translate("wallet", error) from None
                kinds.update((k.kind, k) for k in response.account_kinds)
                token = response.next_page_token
                if not token:
                    break
            self._kinds[program_id] = kinds
        return self._kinds[program_id]

    @staticmethod
    def _translate(service: str, error: aio.AioRpcError) -> Exception:
        if error.code() in TRANSIENT_CODES:
            return unavailable(service, error)
        unexpected: Exception = error
        return unexpected
