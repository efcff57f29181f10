"""Property test of the wallet ledger against an independent in-memory model.

Hypothesis drives random sequences of accruals, redemptions, holds (debit holds and pending
accruals), posts (full, partial, too much), voids, gifts between members, adjustments into and out
of debt, linked pairs, replays of earlier ids (same and changed body) and time advances (with or
without the background work: hold timeouts and lot expiry). Every step goes to the domain
(`services.wallet.domain.ledger.Batch`) and to `Model` below, which knows nothing of ledger.py: its
balances are plain integers and its lots plain objects in lists. After every step every result
code and every member balance must agree, and the money invariants must hold.
"""

from __future__ import annotations

import copy
import itertools
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from services.wallet.domain.ledger import Batch, balance_of
from services.wallet.domain.model import (
    Account,
    AccountState,
    AccountType,
    Code,
    ExpiryMode,
    Flags,
    FreezeMode,
    Outcome,
    OverdraftMode,
    Policy,
    Reason,
    Reference,
    SystemRole,
    TransferRecord,
    TransferRequest,
    TransferState,
    Unit,
)

T0 = datetime(2026, 5, 1, tzinfo=UTC)
HOUR = 3600
DAY = 86_400
POINTS = Unit(type=1, currency_code="", scale=0)
MEMBERS = ("m0", "m1", "m2")
SYSTEMS = {
    "iss": SystemRole.ISSUANCE,
    "red": SystemRole.REDEMPTION,
    "exp": SystemRole.EXPIRY,
    "adj": SystemRole.ADJUSTMENT,
}


@dataclass(frozen=True)
class Terms:
    """A member kind's rules, as the model sees them."""

    delay: int  # seconds from an earning credit to its activation
    lifetime: int | None  # seconds from activation to expiry; None = never
    debt_limit: int | None  # None = no debt; else how far below zero


TERMS = {
    "m0": Terms(delay=0, lifetime=DAY, debt_limit=None),
    "m1": Terms(delay=DAY, lifetime=None, debt_limit=None),
    "m2": Terms(delay=12 * HOUR, lifetime=3 * DAY, debt_limit=50),
}


def policy(terms: Terms) -> Policy:
    return Policy(
        spendable=True,
        transferable=True,
        overdraft_mode=OverdraftMode.NO_OVERDRAFT if terms.debt_limit is None else OverdraftMode.DEBT_ALLOWED,
        debt_limit_minor=terms.debt_limit or 0,
        activation_delay_s=terms.delay,
        expiry_mode=ExpiryMode.NEVER if terms.lifetime is None else ExpiryMode.AFTER_DURATION,
        lifetime_s=terms.lifetime or 0,
    )


def domain_accounts() -> dict[str, Account]:
    accounts = {
        name: Account(
            account_id=name,
            program_id="p",
            type=AccountType.SYSTEM,
            unit=POINTS,
            state=AccountState.ACTIVE,
            freeze_mode=FreezeMode.NONE,
            system_role=role,
        )
        for name, role in SYSTEMS.items()
    }
    for name in MEMBERS:
        accounts[name] = Account(
            account_id=name,
            program_id="p",
            type=AccountType.MEMBER,
            unit=POINTS,
            state=AccountState.ACTIVE,
            freeze_mode=FreezeMode.NONE,
            kind="base",
            member_id=name,
            policy=policy(TERMS[name]),
        )
    return accounts


def request(
    transfer_id: str,
    debit: str = "",
    credit: str = "",
    amount: int = 0,
    *,
    reason: int = 0,
    pending: bool = False,
    post: bool = False,
    void: bool = False,
    linked: bool = False,
    allow_debt: bool = False,
    pending_id: str = "",
    timeout_s: int = 0,
    memo: str = "",
) -> TransferRequest:
    flags = Flags(pending=pending, post_pending=post, void_pending=void, linked=linked, allow_debt=allow_debt)
    body = repr((transfer_id, debit, credit, amount, reason, flags, pending_id, timeout_s, memo)).encode()
    return TransferRequest(
        transfer_id=transfer_id,
        debit_account_id=debit,
        credit_account_id=credit,
        amount=amount,
        pending_transfer_id=pending_id,
        timeout_s=timeout_s,
        flags=flags,
        reason=reason,
        reference=Reference(),
        metadata=(),
        memo=memo,
        imported_time=None,
        lot_terms=None,
        reverses_transfer_id="",
        on_behalf_of_member_id="",
        body=body,
    )


def with_amount(original: TransferRequest, amount: int) -> TransferRequest:
    f = original.flags
    return request(
        original.transfer_id,
        original.debit_account_id,
        original.credit_account_id,
        amount,
        reason=original.reason,
        pending=f.pending,
        post=f.post_pending,
        void=f.void_pending,
        linked=f.linked,
        allow_debt=f.allow_debt,
        pending_id=original.pending_transfer_id,
        timeout_s=original.timeout_s,
        memo=original.memo,
    )


# ------------------------------------------------------------------------------------------------
# The model: what the contract says, written as plainly as possible.


@dataclass
class MLot:
    seq: int
    remaining: int
    activation: int
    expiry: int | None
    held: int = 0

    def expired(self, now: int) -> bool:
        return self.expiry is not None and self.expiry <= now

    def active(self, now: int) -> bool:
        return self.activation <= now and not self.expired(now)

    def order(self) -> tuple[bool, int, int, int]:
        """Soonest expiry first, never-expiring last, then older activation, then older lot."""
        return (self.expiry is None, self.expiry if self.expiry is not None else 0, self.activation, self.seq)


@dataclass
class MMember:
    terms: Terms
    posted: int = 0
    held: int = 0  # open holds debiting the account
    incoming: int = 0  # open holds crediting the account
    lifetime: int = 0
    lots: list[MLot] = field(default_factory=list)


@dataclass
class MHold:
    debit: str
    credit: str
    amount: int
    recorded: int
    deadline: int
    state: str = "open"  # open, posted, voided, expired
    posted: int = 0
    earmarks: list[tuple[MLot, int]] = field(default_factory=list)


Bal = tuple[int, int, int, int]  # available, pending, held, lifetime


class Model:
    def __init__(self) -> None:
        self.now = 0
        self.members = {name: MMember(TERMS[name]) for name in MEMBERS}
        self.system = dict.fromkeys(SYSTEMS, 0)
        self.holds: dict[str, MHold] = {}
        self.lots_made = 0

    def next_seq(self) -> int:
        self.lots_made += 1
        return self.lots_made

    # -- reading --------------------------------------------------------------------------------

    def balance(self, name: str) -> Bal:
        m = self.members[name]
        not_active = sum(lot.remaining for lot in m.lots if lot.activation > self.now and not lot.expired(self.now))
        expired_unheld = sum(lot.remaining - lot.held for lot in m.lots if lot.expired(self.now))
        available = m.posted - m.held - not_active - expired_unheld
        return (available, not_active + m.incoming, m.held, m.lifetime)

    def available(self, name: str) -> int:
        return self.balance(name)[0]

    def posted(self, name: str) -> int:
        return self.members[name].posted if name in self.members else self.system[name]

    def _move(self, debit: str, credit: str, amount: int) -> None:
        for name, sign in ((debit, -1), (credit, 1)):
            if name in self.members:
                self.members[name].posted += sign * amount
            else:
                self.system[name] += sign * amount

    def _spendable(self, name: str) -> list[MLot]:
        lots = [lot for lot in self.members[name].lots if lot.active(self.now) and lot.remaining > lot.held]
        return sorted(lots, key=MLot.order)

    # -- the pieces of a transfer ----------------------------------------------------------------

    def _consume(self, name: str, amount: int, *, into_debt: bool = False) -> list[tuple[MLot, int]]:
        """Take `amount` from the unheld part of the spendable lots in order; into debt, then from
        the other unheld lots too (a debt has no lots)."""
        taken = []
        left = amount
        lots = self._spendable(name)
        if into_debt:
            spendable = {id(lot) for lot in lots}
            rest = [lot for lot in self.members[name].lots if id(lot) not in spendable and lot.remaining > lot.held]
            lots += sorted(rest, key=MLot.order)
        for lot in lots:
            take = min(left, lot.remaining - lot.held)
            if take:
                lot.remaining -= take
                taken.append((lot, take))
                left -= take
        assert into_debt or left == 0
        return taken

    def _credit(self, name: str, amount: int, *, earning: bool, effective: int, like: list[tuple[MLot, int]]) -> None:
        m = self.members[name]
        debt = max(0, -m.posted)
        to_lots = amount - min(debt, amount)
        if earning:
            m.lifetime += amount
        if like:  # a gift: one lot per lot it came from, with that lot's times
            for source, taken in like:
                share = min(taken, to_lots)
                if share:
                    m.lots.append(MLot(self.next_seq(), share, source.activation, source.expiry))
                to_lots -= share
        elif to_lots:
            activation = effective + (m.terms.delay if earning else 0)
            expiry = None if m.terms.lifetime is None else activation + m.terms.lifetime
            m.lots.append(MLot(self.next_seq(), to_lots, activation, expiry))

    # -- transfers ------------------------------------------------------------------------------

    def accrue(self, to: str, amount: int) -> Code:
        self._credit(to, amount, earning=True, effective=self.now, like=[])
        self._move("iss", to, amount)
        return Code.CREATED

    def adjust_up(self, to: str, amount: int) -> Code:
        self._credit(to, amount, earning=False, effective=self.now, like=[])
        self._move("adj", to, amount)
        return Code.CREATED

    def redeem(self, frm: str, amount: int) -> Code:
        if amount > self.available(frm):
            return Code.INSUFFICIENT_FUNDS
        self._consume(frm, amount)
        self._move(frm, "red", amount)
        return Code.CREATED

    def give(self, frm: str, to: str, amount: int) -> Code:
        if amount > self.available(frm):  # giving away never goes into debt
            return Code.INSUFFICIENT_FUNDS
        taken = self._consume(frm, amount)
        self._credit(to, amount, earning=False, effective=self.now, like=taken)
        self._move(frm, to, amount)
        return Code.CREATED

    def adjust_down(self, frm: str, amount: int) -> Code:
        """An operator's correction with allow_debt: into debt only where the kind allows it, down
        to its limit, and never into what open holds keep."""
        m = self.members[frm]
        usable = self.available(frm)
        if m.terms.debt_limit is not None:
            usable += m.terms.debt_limit
            if m.held:
                usable = min(usable, m.posted - m.held)
        if amount > usable:
            return Code.INSUFFICIENT_FUNDS
        self._consume(frm, amount, into_debt=m.terms.debt_limit is not None)
        self._move(frm, "adj", amount)
        return Code.CREATED

    def hold(self, transfer_id: str, frm: str, amount: int, timeout: int) -> Code:
        if amount > self.available(frm):
            return Code.INSUFFICIENT_FUNDS
        m = self.members[frm]
        earmarks = []
        left = amount
        for lot in self._spendable(frm):
            take = min(left, lot.remaining - lot.held)
            if take:
                lot.held += take
                earmarks.append((lot, take))
                left -= take
        assert left == 0
        m.held += amount
        self.holds[transfer_id] = MHold(frm, "red", amount, self.now, self.now + timeout, earmarks=earmarks)
        return Code.CREATED

    def pending_accrual(self, transfer_id: str, to: str, amount: int, timeout: int) -> Code:
        self.members[to].incoming += amount
        self.holds[transfer_id] = MHold("iss", to, amount, self.now, self.now + timeout)
        return Code.CREATED

    def _release(self, h: MHold, posted: int) -> None:
        left = posted
        for lot, earmarked in h.earmarks:
            lot.held -= earmarked
            take = min(earmarked, left)
            lot.remaining -= take
            left -= take
        if h.debit in self.members:
            self.members[h.debit].held -= h.amount
        if h.credit in self.members:
            self.members[h.credit].incoming -= h.amount
            if posted:
                self._credit(h.credit, posted, earning=True, effective=h.recorded, like=[])
        self._move(h.debit, h.credit, posted)
        h.posted = posted

    def resolve(self, hold_id: str, *, post: bool, amount: int, decided: set[str]) -> Code:
        h = self.holds.get(hold_id)
        if h is None:
            return Code.PENDING_TRANSFER_NOT_PENDING if hold_id in decided else Code.PENDING_TRANSFER_NOT_FOUND
        if not post and amount not in (0, h.amount):
            return Code.PENDING_TRANSFER_HAS_DIFFERENT_AMOUNT
        if h.state != "open":
            return {
                "posted": Code.PENDING_TRANSFER_ALREADY_POSTED,
                "voided": Code.PENDING_TRANSFER_ALREADY_VOIDED,
                "expired": Code.PENDING_TRANSFER_EXPIRED,
            }[h.state]
        if self.now >= h.deadline:
            self._release(h, 0)
            h.state = "expired"
            return Code.PENDING_TRANSFER_EXPIRED
        if post and amount > h.amount:
            return Code.AMOUNT_EXCEEDS_PENDING
        self._release(h, (amount or h.amount) if post else 0)
        h.state = "posted" if post else "voided"
        return Code.CREATED

    # -- background work ------------------------------------------------------------------------

    def expire_holds(self) -> set[str]:
        due = {i for i, h in self.holds.items() if h.state == "open" and h.deadline <= self.now}
        for hold_id in due:
            self._release(self.holds[hold_id], 0)
            self.holds[hold_id].state = "expired"
        return due

    def expire_lots(self) -> list[int]:
        moved = []
        for name, m in self.members.items():
            for lot in m.lots:
                unheld = lot.remaining - lot.held
                if lot.expired(self.now) and unheld > 0:
                    lot.remaining -= unheld
                    self._move(name, "exp", unheld)
                    moved.append(unheld)
        return sorted(moved)


# ------------------------------------------------------------------------------------------------
# The machine: every step to both, then compare.

members = st.sampled_from(MEMBERS)
amounts = st.integers(min_value=1, max_value=80)
timeouts = st.sampled_from([HOUR, DAY, 3 * DAY, 3 * DAY])
advances = st.sampled_from([0, HOUR, 6 * HOUR, DAY, 2 * DAY])
picks = st.integers(min_value=0, max_value=10_000)
# Steps and their weights (repeats).
actions = st.sampled_from(
    [
        *["hold"] * 2,
        *["resolve"] * 3,
        *["redeem"] * 2,
        "linked_pair",
        *["replay"] * 2,
        "accrue",
        "pending_accrual",
        "give",
        "adjust_down",
        "adjust_up",
        *["advance"] * 2,
    ]
)


@dataclass
class Op:
    """One transfer of a step: the request and how the model applies it."""

    request: TransferRequest
    kind: str
    args: tuple[object, ...]


class LedgerMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.model = Model()
        self.accounts = domain_accounts()
        self.records: dict[str, TransferRecord] = {}
        self.lot_ids = itertools.count(1)
        self.ids = itertools.count(1)
        # What was decided: id -> (the requests to resend for it, the original outcomes).
        self.decided: dict[str, tuple[list[TransferRequest], list[Outcome]]] = {}
        self.hold_ids: list[str] = []
        self.effects: set[str] = set()  # ids that created a record: each exactly once
        self.resolutions: dict[str, int] = {}  # hold id -> CREATED posts and voids
        self.final_states: dict[str, TransferState] = {}  # resolved holds never change again

    # -- plumbing -----------------------------------------------------------------------------

    def new_id(self) -> str:
        return f"t{next(self.ids)}"

    def batch(self) -> Batch:
        return Batch(
            now=T0 + timedelta(seconds=self.model.now),
            accounts=self.accounts,
            records=self.records,
            new_lot_id=lambda: f"lot{next(self.lot_ids):08d}",  # creation order = id order
        )

    def submit(self, requests: list[TransferRequest]) -> list[Outcome]:
        batch = self.batch()
        outcomes = batch.apply(requests)
        self.note_effects(batch)
        return outcomes

    def note_effects(self, batch: Batch) -> None:
        for record in batch.created:
            assert record.transfer_id not in self.effects, f"{record.transfer_id} had a second effect"
            self.effects.add(record.transfer_id)

    def model_apply(self, model: Model, op: Op) -> Code:
        method = getattr(model, op.kind)
        if op.kind == "resolve":
            hold_id, post, amount = op.args
            return method(hold_id, post=post, amount=amount, decided=set(self.decided))  # type: ignore[no-any-return]
        return method(*op.args)  # type: ignore[no-any-return]

    def member_sides(self, req: TransferRequest) -> tuple[str, str]:
        if req.flags.post_pending or req.flags.void_pending:
            h = self.records.get(req.pending_transfer_id)
            if h is not None and h.is_hold and h.state is not TransferState.REJECTED:
                return h.request.debit_account_id, h.request.credit_account_id
        return req.debit_account_id, req.credit_account_id

    def check_outcome_balances(self, req: TransferRequest, outcome: Outcome) -> None:
        """A decided transfer's result carries the member balances right after it."""
        if outcome.code is not Code.CREATED and not outcome.code.recorded:
            assert outcome.debit_balance is None and outcome.credit_balance is None
            return
        debit, credit = self.member_sides(req)
        for name, balance in ((debit, outcome.debit_balance), (credit, outcome.credit_balance)):
            if name in self.model.members:
                assert balance is not None
                got = (balance.available, balance.pending, balance.held, balance.lifetime_earned)
                assert got == self.model.balance(name), (req.transfer_id, name, got, self.model.balance(name))
            else:
                assert balance is None

    def step(self, op: Op) -> None:
        """One transfer alone in a batch."""
        expected = self.model_apply(self.model, op)
        outcome = self.submit([op.request])[0]
        assert outcome.code is expected, (op, outcome.code, expected)
        assert not outcome.replayed
        self.check_outcome_balances(op.request, outcome)
        self.remember([op], [outcome])

    def remember(self, ops: list[Op], outcomes: list[Outcome]) -> None:
        requests = [op.request for op in ops]
        for op, outcome in zip(ops, outcomes, strict=True):
            if outcome.code is Code.CREATED or outcome.code.recorded:
                self.decided[op.request.transfer_id] = (requests, outcomes)
            if outcome.code is Code.CREATED and op.request.flags.pending:
                self.hold_ids.append(op.request.transfer_id)
            if outcome.code is Code.CREATED and op.kind == "resolve":
                hold_id = str(op.args[0])
                self.resolutions[hold_id] = self.resolutions.get(hold_id, 0) + 1

    def pick(self, choices: list[str], index: int) -> str:
        return choices[index % len(choices)]

    # -- the steps ----------------------------------------------------------------------------

    @initialize()
    def opening_balances(self) -> None:
        """Start with something to spend, hold, give and expire (little on m2, to reach its debt)."""
        for name, amount in (("m0", 200), ("m1", 200), ("m2", 30)):
            req = request(self.new_id(), "iss", name, amount, reason=Reason.ACCRUAL)
            self.step(Op(req, "accrue", (name, amount)))

    @rule(action=actions, data=st.data())
    def act(self, action: str, data: st.DataObject) -> None:
        """One step. A single rule whose action is drawn from a weighted list: hypothesis favours
        its first rules, so separate rules would starve the later ones."""
        if action == "resolve":
            self.resolve(data)
        elif action == "linked_pair":
            self.linked_pair(data)
        elif action == "replay":
            self.replay(data)
        elif action == "advance":
            self.advance(data.draw(advances, "seconds"), work=data.draw(st.sampled_from([True, True, False]), "work"))
        else:
            self.transfer(action, data)

    def transfer(self, kind: str, data: st.DataObject) -> None:
        """One single-phase transfer or hold, alone in its batch."""
        member = data.draw(members, "member")
        amount = data.draw(amounts, "amount")
        i = self.new_id()
        if kind == "accrue":
            self.step(Op(request(i, "iss", member, amount, reason=Reason.ACCRUAL), "accrue", (member, amount)))
        elif kind == "redeem":
            self.step(Op(request(i, member, "red", amount, reason=Reason.REDEMPTION), "redeem", (member, amount)))
        elif kind == "hold":
            timeout = data.draw(timeouts, "timeout")
            req = request(i, member, "red", amount, reason=Reason.REDEMPTION, pending=True, timeout_s=timeout)
            self.step(Op(req, "hold", (i, member, amount, timeout)))
        elif kind == "pending_accrual":
            timeout = data.draw(timeouts, "timeout")
            req = request(i, "iss", member, amount, reason=Reason.ACCRUAL, pending=True, timeout_s=timeout)
            self.step(Op(req, "pending_accrual", (i, member, amount, timeout)))
        elif kind == "give":
            other = data.draw(members.filter(lambda m: m != member), "to")
            req = request(i, member, other, amount, reason=Reason.MEMBER_TRANSFER)
            self.step(Op(req, "give", (member, other, amount)))
        elif kind == "adjust_down":
            req = request(i, member, "adj", amount, reason=Reason.ADJUSTMENT, memo="fix", allow_debt=True)
            self.step(Op(req, "adjust_down", (member, amount)))
        else:
            req = request(i, "adj", member, amount, reason=Reason.ADJUSTMENT, memo="fix")
            self.step(Op(req, "adjust_up", (member, amount)))

    def resolve(self, data: st.DataObject) -> None:
        """Post (in full, with 0, in part, too much) or void a hold: an open one, any one, or
        something that is not a hold at all."""
        index = data.draw(picks, "index")
        which = data.draw(st.sampled_from(["open", "open", "open", "any", "other"]), "which")
        open_holds = [i for i in self.hold_ids if self.model.holds[i].state == "open"]
        if which == "open" and open_holds:
            target = self.pick(open_holds, index)
        elif which in ("open", "any") and self.hold_ids:
            target = self.pick(self.hold_ids, index)
        else:
            target = self.pick([*self.decided, "never-sent"], index)
        post = data.draw(st.booleans(), "post")
        how = data.draw(st.sampled_from(["full", "zero", "part", "over"]), "how")
        part = data.draw(amounts, "part")
        h = self.model.holds.get(target)
        full = h.amount if h is not None else part
        amount = {"full": full, "zero": 0, "part": min(part, full), "over": full + 1}[how]
        req = request(self.new_id(), amount=amount, post=post, void=not post, pending_id=target)
        self.step(Op(req, "resolve", (target, post, amount)))

    def linked_pair(self, data: st.DataObject) -> None:
        """Two transfers linked: both or neither."""
        member = data.draw(members, "member")
        kinds = (
            data.draw(st.sampled_from(["accrue", "redeem", "hold"])),
            data.draw(st.sampled_from(["redeem", "hold", "give"])),
        )
        ops = []
        for position, kind in enumerate(kinds):
            i, amount, linked = self.new_id(), data.draw(amounts), position == 0
            if kind == "accrue":
                ops.append(Op(request(i, "iss", member, amount, reason=1, linked=linked), "accrue", (member, amount)))
            elif kind == "redeem":
                ops.append(Op(request(i, member, "red", amount, reason=4, linked=linked), "redeem", (member, amount)))
            elif kind == "give":
                other = "m1" if member != "m1" else "m0"
                req = request(i, member, other, amount, reason=Reason.MEMBER_TRANSFER, linked=linked)
                ops.append(Op(req, "give", (member, other, amount)))
            else:
                req = request(i, member, "red", amount, reason=4, pending=True, timeout_s=DAY, linked=linked)
                ops.append(Op(req, "hold", (i, member, amount, DAY)))
        trial = copy.deepcopy(self.model)
        expected = []
        for op in ops:
            code = self.model_apply(trial, op)
            expected.append(code)
            if code is not Code.CREATED:
                break
        if all(code is Code.CREATED for code in expected):
            self.model = trial
        else:
            failed = len(expected) - 1
            expected = [expected[failed] if n == failed else Code.LINKED_EVENT_FAILED for n in range(len(ops))]
        outcomes = self.submit([op.request for op in ops])
        assert [o.code for o in outcomes] == expected, ([op.request.transfer_id for op in ops], outcomes, expected)
        if all(code is Code.CREATED for code in expected):
            self.remember(ops, outcomes)
        else:
            assert all(op.request.transfer_id not in self.records for op in ops), "a failed chain records nothing"

    def replay(self, data: st.DataObject) -> None:
        """Resend an id already decided: the same body (with its whole chain) or a changed one."""
        if not self.decided:
            return
        transfer_id = self.pick(list(self.decided), data.draw(picks, "index"))
        requests, originals = self.decided[transfer_id]
        if data.draw(st.booleans(), "change"):
            position = next(n for n, r in enumerate(requests) if r.transfer_id == transfer_id)
            changed = with_amount(requests[position], requests[position].amount + 1)
            resend = [changed] if not changed.flags.linked else [changed, *requests[position + 1 :]]
            outcome = self.submit(resend)[0]
            assert outcome.code is Code.EXISTS_WITH_DIFFERENT_FIELDS
            assert outcome.different_fields == ("amount_minor",)
            return
        outcomes = self.submit(requests)
        for original, again in zip(originals, outcomes, strict=True):
            code = Code.EXISTS if original.code is Code.CREATED else original.code
            assert again == replace(original, code=code, replayed=True), (again, original)

    def advance(self, seconds: int, *, work: bool) -> None:
        """Time passes; with `work`, the background work runs: hold timeouts, then lot expiry."""
        self.model.now += seconds
        if not work:
            return
        batch = self.batch()
        expected_holds = self.model.expire_holds()
        due = [
            r
            for r in self.records.values()
            if r.state is TransferState.PENDING
            and r.pending_expiry_time is not None
            and r.pending_expiry_time <= batch.now
        ]
        assert {r.transfer_id for r in due} == expected_holds
        for record in due:
            batch.expire_hold(record)
        expected_lots = self.model.expire_lots()
        moved = []
        for name in MEMBERS:
            for lot in list(self.accounts[name].lots):
                if lot.is_expired(batch.now) and lot.free() > 0:
                    moved.append(batch.expire_lot(lot, self.accounts["exp"]).amount)
        assert sorted(moved) == expected_lots
        self.note_effects(batch)

    # -- what always holds ----------------------------------------------------------------------

    @invariant()
    def balances_agree(self) -> None:
        now = T0 + timedelta(seconds=self.model.now)
        for name in MEMBERS:
            b = balance_of(self.accounts[name], now)
            got = (b.available, b.pending, b.held, b.lifetime_earned)
            assert got == self.model.balance(name), (name, got, self.model.balance(name))
            assert self.accounts[name].posted == self.model.posted(name)
            limit = TERMS[name].debt_limit
            assert b.available >= -(limit or 0), f"{name} below zero without debt"
        for name in SYSTEMS:
            assert self.accounts[name].posted == self.model.posted(name), name

    @invariant()
    def double_entry(self) -> None:
        assert sum(account.posted for account in self.accounts.values()) == 0
        assert sum(self.model.posted(name) for name in (*MEMBERS, *SYSTEMS)) == 0

    @invariant()
    def holds_resolve_once(self) -> None:
        for hold_id in self.hold_ids:
            record = self.records[hold_id]
            h = self.model.holds[hold_id]
            assert record.state.name.lower() == {"open": "pending"}.get(h.state, h.state)
            assert 0 <= record.posted_amount <= record.amount, "posted <= held"
            assert record.posted_amount == h.posted
            assert self.resolutions.get(hold_id, 0) <= 1
            if record.state is TransferState.EXPIRED:
                assert self.resolutions.get(hold_id, 0) == 0
            if record.state is not TransferState.PENDING:
                assert self.final_states.setdefault(hold_id, record.state) is record.state

    @invariant()
    def one_record_per_id(self) -> None:
        assert set(self.records) <= self.effects
        assert set(self.decided) <= set(self.records)


LedgerMachine.TestCase.settings = settings(
    max_examples=200,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
test_ledger_against_the_model = LedgerMachine.TestCase
