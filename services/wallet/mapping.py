"""Proto <-> domain for the wallet. No rules here: only shapes, units and times."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp
from loyalty.common.v1 import types_pb2
from loyalty.wallet.v1 import wallet_pb2

from services.wallet.domain.accounts import AccountKind
from services.wallet.domain.ledger import WALLET_ID_PREFIX
from services.wallet.domain.model import (
    Account,
    Balance,
    EntryType,
    ExpiryMode,
    Flags,
    Lot,
    LotTerms,
    Outcome,
    OverdraftMode,
    Policy,
    Reference,
    TransferRecord,
    TransferRequest,
    Unit,
)


def to_time(timestamp: Timestamp) -> datetime:
    return timestamp.ToDatetime(tzinfo=UTC)


def optional_time(message: object, field: str) -> datetime | None:
    return to_time(getattr(message, field)) if message.HasField(field) else None  # type: ignore[attr-defined]


def set_time(timestamp: Timestamp, value: datetime | None) -> None:
    if value is not None:
        timestamp.FromDatetime(value)


# -- transfers ------------------------------------------------------------------------------------


_NO_FLAGS = Flags()
_NO_REFERENCE = Reference()
# Every combination of the six flags, made once (the same values, so equal either way).
_FLAGS: dict[tuple[bool, ...], Flags] = {}


def _flags(message: wallet_pb2.TransferFlags) -> Flags:
    key = (
        message.pending,
        message.post_pending,
        message.void_pending,
        message.linked,
        message.imported,
        message.allow_debt,
    )
    flags = _FLAGS.get(key)
    if flags is None:
        flags = _FLAGS[key] = Flags(*key)
    return flags


def _reference(message: wallet_pb2.TransferReference) -> Reference:
    return Reference(
        operation_id=message.operation_id,
        terminal_id=message.terminal_id,
        receipt_id=message.receipt_id,
        outlet_id=message.outlet_id,
        partner_id=message.partner_id,
        campaign_id=message.campaign_id,
    )


def transfer_request(transfer: wallet_pb2.Transfer, *, body: bytes | None = None) -> TransferRequest:
    """`body`: the transfer's canonical encoding when the caller has it already (a stored one)."""
    has = transfer.HasField
    terms = None
    if has("lot_terms"):
        terms = LotTerms(
            activation_time=optional_time(transfer.lot_terms, "activation_time"),
            expiry_time=optional_time(transfer.lot_terms, "expiry_time"),
            no_expiry=transfer.lot_terms.no_expiry,
        )
    metadata = transfer.metadata
    return TransferRequest(
        transfer_id=transfer.transfer_id,
        debit_account_id=transfer.debit_account_id,
        credit_account_id=transfer.credit_account_id,
        amount=transfer.amount_minor,
        pending_transfer_id=transfer.pending_transfer_id,
        timeout_s=transfer.timeout_s,
        flags=_flags(transfer.flags) if has("flags") else _NO_FLAGS,
        reason=transfer.reason,
        reference=_reference(transfer.reference) if has("reference") else _NO_REFERENCE,
        metadata=tuple(sorted(metadata.items())) if metadata else (),
        memo=transfer.memo,
        imported_time=to_time(transfer.imported_time) if has("imported_time") else None,
        lot_terms=terms,
        reverses_transfer_id=transfer.reverses_transfer_id,
        on_behalf_of_member_id=transfer.on_behalf_of_member_id,
        # Deterministic encoding: equal field values give equal bytes, whatever the client sent.
        body=transfer.SerializeToString(deterministic=True) if body is None else body,
    )


def request_from_body(body: bytes) -> TransferRequest:
    """A client's transfer read back from its body, the protobuf `Transfer` it submitted (the
    store keeps each transfer once, in this canonical encoding)."""
    return transfer_request(wallet_pb2.Transfer.FromString(body), body=body)


def transfer_message(request: TransferRequest) -> wallet_pb2.Transfer:
    if request.transfer_id.startswith(WALLET_ID_PREFIX):
        message = wallet_pb2.Transfer(
            transfer_id=request.transfer_id,
            debit_account_id=request.debit_account_id,
            credit_account_id=request.credit_account_id,
            amount_minor=request.amount,
            reason=request.reason,  # type: ignore[arg-type]
        )
        return message
    message = wallet_pb2.Transfer()
    message.ParseFromString(request.body)
    return message


def points(amount: int, unit: Unit) -> types_pb2.Points:
    return types_pb2.Points(amount_minor=amount, scale=unit.scale)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _timestamp(value: datetime) -> dict[str, int]:
    """A Timestamp's fields, as Timestamp.FromDatetime sets them (naive times are UTC), without
    its calendar round trip: a response carries several per transfer."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    delta = value - _EPOCH
    return {"seconds": delta.days * 86_400 + delta.seconds, "nanos": delta.microseconds * 1000}


def _balance_fields(balance: Balance) -> dict[str, Any]:
    """AccountBalance's fields as a dict: upb builds nested messages from dicts in one call."""
    scale = balance.unit.scale
    fields: dict[str, Any] = {
        "account_id": balance.account_id,
        "account_kind": balance.kind,
        "available": {"amount_minor": balance.available, "scale": scale},
        "pending": {"amount_minor": balance.pending, "scale": scale},
        "held": {"amount_minor": balance.held, "scale": scale},
        "next_expiry_amount": {"amount_minor": balance.next_expiry_amount, "scale": scale},
        "lifetime_earned": {"amount_minor": balance.lifetime_earned, "scale": scale},
        "currency_code": balance.unit.currency_code,
    }
    if balance.next_expiry_time is not None:
        fields["next_expiry_time"] = _timestamp(balance.next_expiry_time)
    return fields


def account_balance(balance: Balance | None) -> types_pb2.AccountBalance | None:
    if balance is None:
        return None
    return types_pb2.AccountBalance(**_balance_fields(balance))


def transfer_result_fields(index: int, outcome: Outcome) -> dict[str, Any]:
    """TransferResult's fields as a dict (CreateTransfersResponse(results=[...]) takes them)."""
    fields: dict[str, Any] = {
        "index": index,
        "transfer_id": outcome.transfer_id,
        "code": int(outcome.code),
        "replayed": outcome.replayed,
        "different_fields": outcome.different_fields,
        "amount_minor": outcome.amount,
        "released_amount_minor": outcome.released_amount,
        "lot_id": outcome.lot_id,
    }
    if outcome.recorded_time is not None:
        fields["recorded_time"] = _timestamp(outcome.recorded_time)
    if outcome.effective_time is not None:
        fields["effective_time"] = _timestamp(outcome.effective_time)
    if outcome.pending_expiry_time is not None:
        fields["pending_expiry_time"] = _timestamp(outcome.pending_expiry_time)
    if outcome.debit_balance is not None:
        fields["debit_account_balance"] = _balance_fields(outcome.debit_balance)
    if outcome.credit_balance is not None:
        fields["credit_account_balance"] = _balance_fields(outcome.credit_balance)
    return fields


def transfer_result(index: int, outcome: Outcome) -> wallet_pb2.TransferResult:
    return wallet_pb2.TransferResult(**transfer_result_fields(index, outcome))


def transfer_record(record: TransferRecord) -> wallet_pb2.TransferRecord:
    message = wallet_pb2.TransferRecord(
        transfer=transfer_message(record.request),
        state=int(record.state),  # type: ignore[arg-type]
        rejection_code=int(record.rejection_code or 0),  # type: ignore[arg-type]
        amount_minor=record.amount,
        posted_amount_minor=record.posted_amount,
        resolved_by_transfer_id=record.resolved_by_transfer_id,
        reversed_amount_minor=record.reversed_amount,
    )
    set_time(message.recorded_time, record.recorded_time)
    set_time(message.effective_time, record.effective_time)
    set_time(message.pending_expiry_time, record.pending_expiry_time)
    set_time(message.resolved_time, record.resolved_time)
    return message


# -- kinds and accounts ------------------------------------------------------------------------------


def unit_message(unit: Unit) -> wallet_pb2.Unit:
    return wallet_pb2.Unit(type=unit.type, currency_code=unit.currency_code, scale=unit.scale)  # type: ignore[arg-type]


def account_kind(message: wallet_pb2.AccountKind) -> AccountKind:
    policy = message.policy
    rule = policy.expiry_rule
    return AccountKind(
        program_id=message.program_id,
        kind=message.kind,
        display_name=message.display_name,
        unit=Unit(message.unit.type, message.unit.currency_code, message.unit.scale),
        policy=Policy(
            spendable=policy.spendable,
            transferable=policy.transferable,
            overdraft_mode=OverdraftMode(policy.overdraft_mode or OverdraftMode.NO_OVERDRAFT),
            debt_limit_minor=policy.debt_limit_minor,
            balance_max_minor=policy.balance_max_minor,
            activation_delay_s=policy.activation_delay_s,
            expiry_mode=ExpiryMode(rule.mode or ExpiryMode.NEVER),
            lifetime_s=rule.lifetime_s,
            fixed_expiry_time=optional_time(rule, "fixed_expiry_time"),
            redemption_priority=policy.redemption_priority,
        ),
        open_by_default=message.open_by_default,
    )


def policy_message(policy: Policy) -> wallet_pb2.AccountPolicy:
    message = wallet_pb2.AccountPolicy(
        spendable=policy.spendable,
        transferable=policy.transferable,
        overdraft_mode=int(policy.overdraft_mode),  # type: ignore[arg-type]
        debt_limit_minor=policy.debt_limit_minor,
        balance_max_minor=policy.balance_max_minor,
        activation_delay_s=policy.activation_delay_s,
        expiry_rule=wallet_pb2.ExpiryRule(mode=int(policy.expiry_mode), lifetime_s=policy.lifetime_s),  # type: ignore[arg-type]
        redemption_priority=policy.redemption_priority,
    )
    set_time(message.expiry_rule.fixed_expiry_time, policy.fixed_expiry_time)
    return message


def account_kind_message(kind: AccountKind) -> wallet_pb2.AccountKind:
    message = wallet_pb2.AccountKind(
        program_id=kind.program_id,
        kind=kind.kind,
        display_name=kind.display_name,
        unit=unit_message(kind.unit),
        policy=policy_message(kind.policy),
        open_by_default=kind.open_by_default,
    )
    set_time(message.create_time, kind.create_time)
    set_time(message.update_time, kind.update_time)
    return message


def account_message(account: Account, balance: Balance) -> wallet_pb2.Account:
    message = wallet_pb2.Account(
        account_id=account.account_id,
        program_id=account.program_id,
        type=int(account.type),  # type: ignore[arg-type]
        master_account_id=account.master_account_id,
        member_id=account.member_id,
        kind=account.kind,
        system_role=int(account.system_role),  # type: ignore[arg-type]
        partner_id=account.partner_id,
        pool_id=account.pool_id,
        unit=unit_message(account.unit),
        state=int(account.own_state),  # type: ignore[arg-type]
        effective_state=int(account.state),  # type: ignore[arg-type]
        freeze_mode=int(account.freeze_mode),  # type: ignore[arg-type]
        primary=account.primary,
        external_ref=account.external_ref,
        display_name=account.display_name,
    )
    if account.policy is not None:
        message.policy.CopyFrom(policy_message(account.policy))
    converted = account_balance(balance)
    assert converted is not None
    message.balance.CopyFrom(converted)
    return message


def balance_view(account: Account, balance: Balance) -> wallet_pb2.AccountBalanceView:
    converted = account_balance(balance)
    assert converted is not None
    return wallet_pb2.AccountBalanceView(
        balance=converted,
        unit=unit_message(account.unit),
        account_type=int(account.type),  # type: ignore[arg-type]
        effective_state=int(account.state),  # type: ignore[arg-type]
        spendable=bool(account.policy and account.policy.spendable),
        pool_id=account.pool_id,
    )


# The states lot_message gives a spent lot (remaining == 0, the lots table's `spent` flag); it gives
# every other lot PENDING or ACTIVE. ListLots reads spent lots (which no index by account covers:
# the account's lots ever) only when asked for one of these.
SPENT_LOT_STATES = frozenset({wallet_pb2.LOT_STATE_CONSUMED, wallet_pb2.LOT_STATE_EXPIRED})


def lot_message(lot: Lot, now: datetime) -> wallet_pb2.Lot:
    if lot.remaining == 0:
        state = (
            wallet_pb2.LOT_STATE_EXPIRED
            if lot.expired_amount and lot.expired_amount == lot.amount
            else (wallet_pb2.LOT_STATE_CONSUMED)
        )
    elif not lot.is_active(now):
        state = wallet_pb2.LOT_STATE_PENDING
    else:
        state = wallet_pb2.LOT_STATE_ACTIVE
    message = wallet_pb2.Lot(
        lot_id=lot.lot_id,
        account_id=lot.account_id,
        transfer_id=lot.transfer_id,
        reason=lot.reason,  # type: ignore[arg-type]
        state=state,
        original_amount_minor=lot.amount,
        remaining_minor=lot.remaining,
        held_minor=lot.held,
        expired_amount_minor=lot.expired_amount,
    )
    set_time(message.activation_time, lot.activation_time)
    set_time(message.expiry_time, lot.expiry_time)
    set_time(message.effective_time, lot.effective_time)
    return message


def entry_message(row: Any, request: TransferRequest, unit: Unit, kind: str) -> wallet_pb2.Entry:
    """A history row, and the request of its transfer, as an Entry."""
    message = wallet_pb2.Entry(
        account_id=str(row["account_id"]),
        sequence=row["sequence"],
        transfer_id=row["transfer_id"],
        type=int(EntryType(row["type"])),  # type: ignore[arg-type]
        direction=row["direction"],
        amount_minor=row["amount"],
        released_amount_minor=row["released_amount"],
        reason=request.reason,  # type: ignore[arg-type]
        reference=wallet_pb2.TransferReference(**vars(request.reference)),
        memo=request.memo,
        metadata=dict(request.metadata),
        counterparty=wallet_pb2.Counterparty(account_id=row["counterparty_account_id"]),
        pending_transfer_id=request.pending_transfer_id,
        reverses_transfer_id=request.reverses_transfer_id,
        on_behalf_of_member_id=request.on_behalf_of_member_id,
    )
    balance = Balance(
        account_id=str(row["account_id"]),
        kind=kind,
        available=row["available"],
        pending=row["pending"],
        held=row["held"],
        next_expiry_amount=row["next_expiry_amount"],
        next_expiry_time=row["next_expiry_time"],
        lifetime_earned=row["lifetime_earned"],
        unit=unit,
    )
    converted = account_balance(balance)
    assert converted is not None
    message.balance_after.CopyFrom(converted)
    set_time(message.recorded_time, row["recorded_time"])
    set_time(message.effective_time, row["effective_time"])
    return message


def pool_message(view: Any) -> wallet_pb2.Pool:
    """A pool (members.PoolView) with its members' usage in their current periods."""
    row = view.row
    message = wallet_pb2.Pool(
        pool_id=str(row["pool_id"]),
        program_id=row["program_id"],
        kind=row["kind"],
        account_id=str(row["account_id"]),
        owner_member_id=row["owner_member_id"],
        display_name=row["display_name"],
        state=row["state"],
        time_zone=row["time_zone"],
    )
    for member in view.members:
        spent = next((v for (m, _), v in view.spent.items() if m == member["member_id"]), 0)
        start = next((s for (m, s) in view.spent if m == member["member_id"]), None)
        limited = member["role"] == 2 and member["limit_period"] != 1
        entry = message.members.add(
            member_id=member["member_id"],
            role=member["role"],
            spending_limit=wallet_pb2.SpendingLimit(period=member["limit_period"], amount_minor=member["limit_minor"]),
            spent_in_period_minor=spent,
            remaining_in_period_minor=max(0, member["limit_minor"] - spent) if limited else 0,
        )
        if start is not None and member["limit_period"] not in (1, 5):
            set_time(entry.period_start_time, start)
        set_time(entry.join_time, member["join_time"])
    converted = account_balance(view.balance)
    if converted is not None:
        message.balance.CopyFrom(converted)
    set_time(message.create_time, row["create_time"])
    set_time(message.close_time, row["close_time"])
    return message
