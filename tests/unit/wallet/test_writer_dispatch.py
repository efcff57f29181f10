"""Which queued calls the transfer writer puts in its next transaction (no database: the choice
is made before one is opened)."""

from __future__ import annotations

from typing import Any

from services.wallet.domain.ledger import internal_request
from services.wallet.domain.model import Reason, TransferRequest
from services.wallet.writer import TransferWriter


def transfer(transfer_id: str, debit: str, credit: str) -> TransferRequest:
    return internal_request(
        transfer_id=transfer_id, debit_account_id=debit, credit_account_id=credit, amount=1, reason=Reason.ACCRUAL
    )


def call(name: str, size: int, *, member: str = "", system: str = "issuance") -> list[TransferRequest]:
    """`size` accruals from a SYSTEM account, to `member` or to members of their own."""
    return [transfer(f"{name}-{i}", system, member or f"{name}-member-{i}") for i in range(size)]


def writer(*, knows_system_accounts: bool = True) -> TransferWriter:
    no_database: Any = None  # the choice is made before a connection is taken
    w = TransferWriter(no_database, writers=2, transfers_per_transaction_max=2000, parallel_transfers_min=100)
    if knows_system_accounts:
        w.shared_accounts.add("issuance")  # as learnt from an earlier batch
    return w


def names(calls: list[Any]) -> list[str]:
    return [c.requests[0].transfer_id.split("-")[0] for c in calls]


def start(w: TransferWriter) -> list[str]:
    """The next transaction's calls, as if it started (running, its accounts in use)."""
    calls = w._next_transaction()
    if calls:
        w.running += 1
        w.accounts_in_use.append(frozenset().union(*(c.accounts for c in calls)) - w.shared_accounts)
    return names(calls)


async def test_big_calls_are_split_between_two_transactions_that_overlap() -> None:
    w = writer()
    for name in "abcdefgh":
        w.enqueue(call(name, 100))
    assert start(w) == ["a", "b", "c", "d"]
    assert start(w) == ["e", "f", "g", "h"]
    assert start(w) == []  # both writers busy


async def test_small_calls_share_one_transaction() -> None:
    w = writer()
    for name in "abcdefgh":
        w.enqueue(call(name, 1))
    assert start(w) == list("abcdefgh")


async def test_a_second_transaction_waits_for_enough_transfers() -> None:
    w = writer()
    w.enqueue(call("a", 100))
    assert start(w) == ["a"]
    w.enqueue(call("b", 99))
    assert start(w) == []
    w.enqueue(call("c", 1))
    assert start(w) == ["b", "c"]


async def test_calls_naming_a_member_account_in_use_wait_in_order() -> None:
    w = writer()
    w.enqueue(call("a", 100, member="m1"))
    assert start(w) == ["a"]
    w.enqueue(call("b", 100, member="m1"))  # would wait for a's lock on m1
    w.enqueue(call("c", 100))
    assert start(w) == ["c"]
    assert names(list(w.queue)) == ["b"]
    w.running, w.accounts_in_use = 0, []  # a and c are done
    w.enqueue(call("d", 100))
    assert start(w) == ["b"]


async def test_system_accounts_are_shared() -> None:
    w = writer(knows_system_accounts=False)
    w.enqueue(call("a", 100, system="issuance"))
    assert start(w) == ["a"]
    w.enqueue(call("b", 100, system="issuance"))
    assert start(w) == []  # not known to be a SYSTEM account yet: it might be a member's
    w.shared_accounts.add("issuance")  # learnt from a batch that loaded it
    w.accounts_in_use = [a - w.shared_accounts for a in w.accounts_in_use]
    assert start(w) == ["b"]
