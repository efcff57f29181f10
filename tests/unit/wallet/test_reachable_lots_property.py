"""Property test of reading only the lots a batch can reach (services/wallet/store.py,
_plain_lots_needed and _REACHABLE_LOTS): a batch applied to a member account whose plain lots
(active, never expiring, nothing held) are read only as far as the batch's debits could reach,
the rest summed, decides exactly what it decides with every lot read: the same results and
balances, the same lots consumed or earmarked, in the same order.

`reachable` below restates the statement's selection in Python; the statement itself is checked
against PostgreSQL by tests/integration/wallet/test_wallet_lots.py.
"""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from services.wallet.domain.ledger import Batch
from services.wallet.domain.model import (
    Account,
    AccountState,
    AccountType,
    ExpiryMode,
    Flags,
    FreezeMode,
    Lot,
    OverdraftMode,
    Policy,
    Reason,
    Reference,
    SystemRole,
    TransferRequest,
    Unit,
)

NOW = datetime(2026, 6, 1, tzinfo=UTC)
HOUR = timedelta(hours=1)
POINTS = Unit(type=1, currency_code="", scale=0)


@st.composite
def lots(draw: st.DrawFn) -> list[Lot]:
    made = []
    for index in range(draw(st.integers(0, 8))):
        amount = draw(st.integers(1, 40))
        remaining = draw(st.integers(0, amount))
        held = draw(st.integers(0, remaining))
        activation = NOW + HOUR * draw(st.sampled_from([-48, -24, -24, -1, 2]))  # ties on purpose
        expiry = draw(st.sampled_from([None, None, None, NOW - HOUR, NOW + 5 * HOUR, NOW + 50 * HOUR]))
        lot_id = f"{draw(st.integers(0, 0xFFFF)):04x}{index:04x}-0000-4000-8000-000000000000"
        made.append(Lot(lot_id, "m", "t", 1, amount, remaining, held, 0, activation, expiry, activation))
    return [lot for lot in made if lot.remaining > 0]  # a batch only ever reads lots with something left


@st.composite
def debits(draw: st.DrawFn) -> list[TransferRequest]:
    made = []
    for index in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["spend", "spend", "hold", "debt"]))
        made.append(
            request(
                f"d{index}",
                amount=draw(st.integers(1, 120)),
                reason=Reason.ADJUSTMENT if kind == "debt" else Reason.REDEMPTION,
                pending=kind == "hold",
                allow_debt=kind == "debt",
            )
        )
    return made


def request(transfer_id: str, *, amount: int, reason: Reason, pending: bool, allow_debt: bool) -> TransferRequest:
    credit = "adj" if reason is Reason.ADJUSTMENT else "red"
    return TransferRequest(
        transfer_id=transfer_id,
        debit_account_id="m",
        credit_account_id=credit,
        amount=amount,
        pending_transfer_id="",
        timeout_s=3600 if pending else 0,
        flags=Flags(pending=pending, allow_debt=allow_debt),
        reason=int(reason),
        reference=Reference(),
        metadata=(),
        memo="debt" if reason is Reason.ADJUSTMENT else "",
        imported_time=None,
        lot_terms=None,
        reverses_transfer_id="",
        on_behalf_of_member_id="",
        body=transfer_id.encode(),
    )


def accounts(member_lots: list[Lot], debt_limit: int | None) -> dict[str, Account]:
    policy = Policy(
        spendable=True,
        overdraft_mode=OverdraftMode.NO_OVERDRAFT if debt_limit is None else OverdraftMode.DEBT_ALLOWED,
        debt_limit_minor=debt_limit or 0,
        expiry_mode=ExpiryMode.NEVER,
    )
    member = Account(
        account_id="m",
        program_id="p",
        type=AccountType.MEMBER,
        unit=POINTS,
        state=AccountState.ACTIVE,
        freeze_mode=FreezeMode.NONE,
        kind="base",
        policy=policy,
        credits_posted=sum(lot.remaining for lot in member_lots),
        debits_pending=sum(lot.held for lot in member_lots),
        lots=member_lots,
    )
    systems = {
        name: Account(
            account_id=name,
            program_id="p",
            type=AccountType.SYSTEM,
            unit=POINTS,
            state=AccountState.ACTIVE,
            freeze_mode=FreezeMode.NONE,
            system_role=role,
        )
        for name, role in (("red", SystemRole.REDEMPTION), ("adj", SystemRole.ADJUSTMENT))
    }
    return {"m": member, **systems}


def reachable(member: Account, needed: int) -> None:
    """What _REACHABLE_LOTS reads of `member`, in place: every lot that is not plain, the plain
    ones in consumption order while those before them cover less than `needed`; the remaining of
    the others summed in unloaded_remaining."""
    plain = sorted(
        (lot for lot in member.lots if lot.held == 0 and lot.expiry_time is None and lot.activation_time <= NOW),
        key=lambda lot: (lot.activation_time, lot.lot_id),
    )
    read, before = set(), 0
    for lot in plain:
        if before < needed:
            read.add(lot.lot_id)
        before += lot.remaining
    member.unloaded_remaining = sum(lot.remaining for lot in plain if lot.lot_id not in read)
    member.lots = [lot for lot in member.lots if lot not in plain or lot.lot_id in read]


@settings(max_examples=400, deadline=None)
@given(lots(), debits(), st.sampled_from([None, None, 30, 0]))
def test_reading_only_the_reachable_lots_decides_the_same(
    member_lots: list[Lot], requests: list[TransferRequest], debt_limit: int | None
) -> None:
    everything = accounts(copy.deepcopy(member_lots), debt_limit)
    reached = accounts(copy.deepcopy(member_lots), debt_limit)
    reachable(reached["m"], needed=sum(r.amount for r in requests))  # as store._plain_lots_needed counts

    full = Batch(now=NOW, accounts=everything, records={})
    partial = Batch(now=NOW, accounts=reached, records={})
    assert partial.apply(requests) == full.apply(requests)
    assert [(r.transfer_id, r.allocations) for r in partial.created] == [
        (r.transfer_id, r.allocations) for r in full.created
    ]
    state = {lot.lot_id: (lot.remaining, lot.held) for lot in everything["m"].lots}
    for lot in reached["m"].lots:
        assert (lot.remaining, lot.held) == state[lot.lot_id]
    untouched = {lot.lot_id for lot in reached["m"].lots}
    assert all(state[lot.lot_id] == (lot.remaining, lot.held) for lot in member_lots if lot.lot_id not in untouched)
