"""SQL of operations and member statistics. Takes connections; raises no gRPC errors."""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from enum import Enum
from typing import Any

from services.processing.domain.operations import Leg, OperationState, OperationType, PlannedTransfer, Posting
from shared.db import Connection


@dataclass(frozen=True)
class Plan:
    """The saga's next step: the transfers to send, and the state the operation takes after."""

    target: OperationState
    transfers: tuple[PlannedTransfer, ...] = ()


NO_PLAN = Plan(OperationState.PROCESSING)


@dataclass(frozen=True)
class OperationRow:
    operation_id: str
    type: OperationType
    state: OperationState
    terminal_id: str
    partner_id: str
    member_id: str
    receipt_id: str
    idempotency_key: str
    request_hash: bytes
    method: str
    lease_until: datetime | None
    expire_time: datetime | None
    operation: bytes
    receipt: bytes | None
    plan: Plan
    postings: list[Posting]
    refunded: dict[int, dict[str, int]]
    response: bytes | None
    resolution_key: str | None
    original_operation_id: str | None
    # Changes with every update: a refund planned from one version is inserted only if the
    # purchase is still at that version (insert_refund).
    update_time: datetime
    now: datetime


@dataclass(frozen=True)
class NewOperation:
    operation_id: str
    type: OperationType
    state: OperationState
    terminal_id: str
    outlet_id: str
    partner_id: str
    member_id: str
    receipt_id: str
    idempotency_key: str
    request_hash: bytes
    method: str
    offline: bool
    original_operation_id: str | None
    effective_time: datetime
    lease_s: float
    expire_time: datetime | None
    operation: bytes
    receipt: bytes | None
    plan: Plan
    postings: Sequence[Posting]
    response: bytes | None = None
    # Refunds and cancels: the purchase's per-line refunded totals once this one completes.
    refunded: Mapping[int, Mapping[str, int]] | None = None


@dataclass(frozen=True)
class StatsChange:
    """What a captured purchase (or a refund) changes in the member's statistics."""

    member_id: str
    purchases: int = 0
    app_purchases: int = 0
    rule_ids: Sequence[str] = ()
    day: date | None = None
    spend: int = 0


# One outbox row: (event_id, event_type, partition_key, payload), as shared.outbox.event_row makes it.
EventRow = tuple[uuid.UUID, str, str, bytes]


COLUMNS = """operation_id, type, state, terminal_id, partner_id, member_id, receipt_id, idempotency_key,
    request_hash, method, lease_until, expire_time, operation, receipt, plan, postings, refunded, response,
    resolution_key, original_operation_id, update_time, now() AS now"""


def _json_default(value: object) -> str:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def dump_plan(plan: Plan) -> str:
    transfers = [vars(t) for t in plan.transfers]  # flat dataclasses: no deep copy (asdict)
    return json.dumps({"target": int(plan.target), "transfers": transfers}, default=_json_default)


def load_plan(text: str) -> Plan:
    document = json.loads(text)
    if not document:
        return NO_PLAN
    transfers = []
    for item in document["transfers"]:
        for name in ("imported_time", "activation_time", "expiry_time"):
            if item.get(name):
                item[name] = datetime.fromisoformat(item[name])
        transfers.append(PlannedTransfer(**item))
    return Plan(OperationState(document["target"]), tuple(transfers))


def dump_postings(postings: Sequence[Posting]) -> str:
    return json.dumps([{**vars(p), "leg": int(p.leg)} for p in postings])


def load_postings(text: str) -> list[Posting]:
    return [Posting(**{**item, "leg": Leg(item["leg"])}) for item in json.loads(text)]


def dump_refunded(refunded: Mapping[int, Mapping[str, int]]) -> str:
    return json.dumps({str(position): dict(totals) for position, totals in refunded.items()})


def _row(record: Mapping[str, Any]) -> OperationRow:
    return OperationRow(
        operation_id=record["operation_id"],
        type=OperationType(record["type"]),
        state=OperationState(record["state"]),
        terminal_id=record["terminal_id"],
        partner_id=record["partner_id"],
        member_id=record["member_id"],
        receipt_id=record["receipt_id"],
        idempotency_key=record["idempotency_key"],
        request_hash=bytes(record["request_hash"]),
        method=record["method"],
        lease_until=record["lease_until"],
        expire_time=record["expire_time"],
        operation=bytes(record["operation"]),
        receipt=bytes(record["receipt"]) if record["receipt"] is not None else None,
        plan=load_plan(record["plan"]),
        postings=load_postings(record["postings"]),
        refunded={int(k): v for k, v in json.loads(record["refunded"]).items()},
        response=bytes(record["response"]) if record["response"] is not None else None,
        resolution_key=record["resolution_key"],
        original_operation_id=record["original_operation_id"],
        update_time=record["update_time"],
        now=record["now"],
    )


async def find_by_key(connection: Connection, *, terminal_id: str, key: str) -> OperationRow | None:
    record = await connection.fetchrow(
        f"SELECT {COLUMNS} FROM operations WHERE terminal_id = $1 AND idempotency_key = $2", terminal_id, key
    )
    return _row(record) if record else None


async def find(connection: Connection, operation_id: str, *, for_update: bool = False) -> OperationRow | None:
    lock = " FOR UPDATE" if for_update else ""
    record = await connection.fetchrow(f"SELECT {COLUMNS} FROM operations WHERE operation_id = $1{lock}", operation_id)
    return _row(record) if record else None


async def find_purchase_by_receipt(connection: Connection, *, terminal_id: str, receipt_id: str) -> OperationRow | None:
    """The receipt's live purchase, or else its latest one."""
    record = await connection.fetchrow(
        f"""SELECT {COLUMNS} FROM operations WHERE terminal_id = $1 AND receipt_id = $2 AND type = 1
            ORDER BY (state IN (1, 2, 3, 6, 7)) DESC, create_time DESC LIMIT 1""",
        terminal_id,
        receipt_id,
    )
    return _row(record) if record else None


async def insert(connection: Connection, new: NewOperation) -> bool:
    """Record a new operation; False when its key or (for a live purchase) its receipt is taken."""
    return (await insert_many(connection, [new]))[0] is not None


_INSERT_COLUMNS = """operation_id, type, state, terminal_id, outlet_id, partner_id, member_id, receipt_id,
    idempotency_key, request_hash, method, offline, original_operation_id, effective_time, lease_until, expire_time,
    operation, receipt, plan, postings, response, refunded"""
# lease_until from a lease in seconds (0 = none), counted by the database's clock.
_LEASE_UNTIL = "CASE WHEN {lease}::float8 > 0 THEN now() + make_interval(secs => {lease}::float8) END"
_INSERT_ONE = f"""INSERT INTO operations ({_INSERT_COLUMNS})
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, {_LEASE_UNTIL.format(lease="$15")},
            $16, $17, $18, $19, $20, $21, $22)
    ON CONFLICT DO NOTHING RETURNING {COLUMNS}"""
# The same for many rows, column by column: asyncpg encodes 22 arrays slower than 22 values, so
# one row goes the VALUES way (measured: about 60 us of CPU less per single insert).
_INSERT_MANY = f"""INSERT INTO operations ({_INSERT_COLUMNS})
    SELECT operation_id, type, state, terminal_id, outlet_id, partner_id, member_id, receipt_id, idempotency_key,
           request_hash, method, offline, original_operation_id, effective_time, {_LEASE_UNTIL.format(lease="lease_s")},
           expire_time, operation, receipt, plan, postings, response, refunded
    FROM unnest($1::text[], $2::smallint[], $3::smallint[], $4::text[], $5::text[], $6::text[], $7::text[],
                $8::text[], $9::text[], $10::bytea[], $11::text[], $12::boolean[], $13::text[], $14::timestamptz[],
                $15::float8[], $16::timestamptz[], $17::bytea[], $18::bytea[], $19::jsonb[], $20::jsonb[],
                $21::bytea[], $22::jsonb[])
        AS new (operation_id, type, state, terminal_id, outlet_id, partner_id, member_id, receipt_id,
                idempotency_key, request_hash, method, offline, original_operation_id, effective_time, lease_s,
                expire_time, operation, receipt, plan, postings, response, refunded)
    ON CONFLICT DO NOTHING RETURNING {COLUMNS}"""


def _insert_values(new: NewOperation) -> tuple[Any, ...]:
    return (
        new.operation_id,
        int(new.type),
        int(new.state),
        new.terminal_id,
        new.outlet_id,
        new.partner_id,
        new.member_id,
        new.receipt_id,
        new.idempotency_key,
        new.request_hash,
        new.method,
        new.offline,
        new.original_operation_id,
        new.effective_time,
        new.lease_s,
        new.expire_time,
        new.operation,
        new.receipt,
        dump_plan(new.plan),
        dump_postings(new.postings),
        new.response,
        dump_refunded(new.refunded or {}),
    )


async def insert_many(connection: Connection, news: Sequence[NewOperation]) -> list[OperationRow | None]:
    """Record new operations in one statement, each as `insert` would, returning its recorded
    row (no second round trip to read it back), or None when its key or (a live purchase) its
    receipt is taken - also when taken by one before it in `news`."""
    if len(news) == 1:
        record = await connection.fetchrow(_INSERT_ONE, *_insert_values(news[0]))
        return [_row(record) if record else None]
    columns = [list(column) for column in zip(*(_insert_values(new) for new in news), strict=True)]
    recorded = {record["operation_id"]: _row(record) for record in await connection.fetch(_INSERT_MANY, *columns)}
    return [recorded.get(new.operation_id) for new in news]


class RefundInsert(Enum):
    INSERTED = "inserted"
    KEY_TAKEN = "key taken"  # the key has an operation: replay it
    IN_FLIGHT = "in flight"  # another refund or cancel of the purchase is PROCESSING
    CHANGED = "changed"  # the purchase moved on since the refund was planned: plan again


async def insert_refund(connection: Connection, new: NewOperation, *, planned_from: datetime) -> RefundInsert:
    """Record a refund (or cancel) planned from the purchase as it was at `planned_from`.
    The purchase row is locked meanwhile, and at most one refund per purchase may be PROCESSING
    (operations_one_refund_in_flight), so refunds of one purchase apply one after another, each
    planned from what the previous ones left: together they never exceed the original."""
    if new.original_operation_id is None:
        raise ValueError("a refund needs its purchase")
    async with connection.transaction():
        current = await connection.fetchval(
            "SELECT update_time FROM operations WHERE operation_id = $1 FOR UPDATE", new.original_operation_id
        )
        if current != planned_from:
            return RefundInsert.CHANGED
        if await insert(connection, new):
            return RefundInsert.INSERTED
    taken = await connection.fetchval(
        "SELECT true FROM operations WHERE terminal_id = $1 AND idempotency_key = $2",
        new.terminal_id,
        new.idempotency_key,
    )
    return RefundInsert.KEY_TAKEN if taken else RefundInsert.IN_FLIGHT


async def claim(connection: Connection, operation_id: str, *, lease_s: float) -> OperationRow | None:
    """Take over a PROCESSING operation whose lease ran out (its driver died or gave up)."""
    record = await connection.fetchrow(
        f"""UPDATE operations SET lease_until = now() + make_interval(secs => $2::float8)
            WHERE operation_id = $1 AND state = 1 AND (lease_until IS NULL OR lease_until < now())
            RETURNING {COLUMNS}""",
        operation_id,
        lease_s,
    )
    return _row(record) if record else None


async def update(
    connection: Connection,
    operation_id: str,
    *,
    state: OperationState,
    operation: bytes,
    plan: Plan = NO_PLAN,
    postings: Sequence[Posting] | None = None,
    receipt: bytes | None = None,
    response: bytes | None = None,
    refunded: Mapping[int, Mapping[str, int]] | None = None,
    expire_time: datetime | None = None,
    lease_s: float = 0.0,
    resolution_key: str | None = None,
) -> None:
    await connection.execute(
        """UPDATE operations SET state = $2, operation = $3, plan = $4,
               postings = COALESCE($5, postings), receipt = COALESCE($6, receipt),
               response = COALESCE(response, $7), refunded = COALESCE($8, refunded),
               expire_time = $9, update_time = now(),
               lease_until = CASE WHEN $10::float8 > 0 THEN now() + make_interval(secs => $10::float8) END,
               resolution_key = COALESCE($11, resolution_key)
           WHERE operation_id = $1""",
        operation_id,
        int(state),
        operation,
        dump_plan(plan),
        dump_postings(postings) if postings is not None else None,
        receipt,
        response,
        dump_refunded(refunded) if refunded is not None else None,
        expire_time,
        lease_s,
        resolution_key,
    )


@dataclass(frozen=True)
class Outcome:
    """How a sale's saga ended: its state and response, the member's statistics, its events."""

    operation_id: str
    state: OperationState
    operation: bytes
    response: bytes
    expire_time: datetime | None
    stats: StatsChange | None
    events: Sequence[EventRow]


# Adds a statistics change (EXCLUDED) to a member's row (s), summing rule uses key by key.
MERGE_STATS = """purchase_count = s.purchase_count + EXCLUDED.purchase_count,
               app_purchase_count = s.app_purchase_count + EXCLUDED.app_purchase_count,
               rule_uses = (SELECT COALESCE(jsonb_object_agg(key, to_jsonb(total)), '{}'::jsonb) FROM (
                   SELECT key, sum(value::bigint) AS total FROM (
                       SELECT * FROM jsonb_each_text(s.rule_uses)
                       UNION ALL SELECT * FROM jsonb_each_text(EXCLUDED.rule_uses)) AS both_sides
                   GROUP BY key) AS totals)"""


# A sale's outcome, or many sales' outcomes column by column (asyncpg encodes arrays slower
# than values: one outcome by values costs about 70 us of CPU and 0.3 ms less).
_RECORD_ONE = f"""WITH outcome AS (
        UPDATE operations SET state = $2, operation = $3, plan = $4, response = COALESCE(response, $5),
            expire_time = $6, update_time = now(), lease_until = NULL
        WHERE operation_id = $1
    ), stats AS (
        INSERT INTO member_stats AS s (member_id, purchase_count, app_purchase_count, rule_uses)
        SELECT $7, $8::bigint, $9::bigint, $10::jsonb WHERE $7 <> ''
        ON CONFLICT (member_id) DO UPDATE SET {MERGE_STATS}
    ), spend AS (
        INSERT INTO member_daily_spend AS d (member_id, day, amount)
        SELECT $7, $11::date, $12::bigint WHERE $7 <> '' AND $11::date IS NOT NULL AND $12::bigint <> 0
        ON CONFLICT (member_id, day) DO UPDATE SET amount = d.amount + EXCLUDED.amount
    )
    INSERT INTO outbox (event_id, event_type, partition_key, payload)
    SELECT * FROM unnest($13::uuid[], $14::text[], $15::text[], $16::bytea[])"""
_RECORD_MANY = f"""WITH outcome AS (
        UPDATE operations o SET state = new.state, operation = new.operation, plan = $4,
            response = COALESCE(o.response, new.response), expire_time = new.expire_time, update_time = now(),
            lease_until = NULL
        FROM unnest($1::text[], $2::smallint[], $3::bytea[], $5::bytea[], $6::timestamptz[])
            AS new (operation_id, state, operation, response, expire_time)
        WHERE o.operation_id = new.operation_id
    ), stats AS (
        INSERT INTO member_stats AS s (member_id, purchase_count, app_purchase_count, rule_uses)
        SELECT * FROM unnest($7::text[], $8::bigint[], $9::bigint[], $10::jsonb[])
        ON CONFLICT (member_id) DO UPDATE SET {MERGE_STATS}
    ), spend AS (
        INSERT INTO member_daily_spend AS d (member_id, day, amount)
        SELECT * FROM unnest($11::text[], $12::date[], $13::bigint[])
        ON CONFLICT (member_id, day) DO UPDATE SET amount = d.amount + EXCLUDED.amount
    )
    INSERT INTO outbox (event_id, event_type, partition_key, payload)
    SELECT * FROM unnest($14::uuid[], $15::text[], $16::text[], $17::bytea[])"""


async def record_outcomes(connection: Connection, outcomes: Sequence[Outcome]) -> None:
    """Sales' outcomes in ONE statement (one round trip, atomic like a transaction): each
    operation's state and response, the members' statistics (summed per member and day first:
    one statement may change a row once), and the outbox events."""
    events = [event for outcome in outcomes for event in outcome.events]
    event_columns = [[event[i] for event in events] for i in range(4)]
    if len(outcomes) == 1:
        await connection.execute(_RECORD_ONE, *_one_outcome(outcomes[0]), *event_columns)
        return
    changes = [outcome.stats for outcome in outcomes if outcome.stats and outcome.stats.member_id]
    stats, spend = _summed_stats(changes), _summed_spend(changes)
    await connection.execute(
        _RECORD_MANY,
        [outcome.operation_id for outcome in outcomes],
        [int(outcome.state) for outcome in outcomes],
        [outcome.operation for outcome in outcomes],
        dump_plan(NO_PLAN),
        [outcome.response for outcome in outcomes],
        [outcome.expire_time for outcome in outcomes],
        [member_id for member_id, _, _, _ in stats],
        [purchases for _, purchases, _, _ in stats],
        [app_purchases for _, _, app_purchases, _ in stats],
        [json.dumps(uses) for _, _, _, uses in stats],
        [member_id for member_id, _, _ in spend],
        [day for _, day, _ in spend],
        [amount for _, _, amount in spend],
        *event_columns,
    )


def _one_outcome(outcome: Outcome) -> tuple[Any, ...]:
    stats = outcome.stats
    uses = json.dumps(dict.fromkeys(stats.rule_ids, 1)) if stats else "{}"
    return (
        outcome.operation_id,
        int(outcome.state),
        outcome.operation,
        dump_plan(NO_PLAN),
        outcome.response,
        outcome.expire_time,
        stats.member_id if stats else "",
        stats.purchases if stats else 0,
        stats.app_purchases if stats else 0,
        uses,
        stats.day if stats else None,
        stats.spend if stats else 0,
    )


def _summed_stats(changes: Sequence[StatsChange]) -> list[tuple[str, int, int, dict[str, int]]]:
    """Per member: purchases, app purchases, and rule uses (rule id -> receipts) of `changes`."""
    totals: dict[str, tuple[int, int, dict[str, int]]] = {}
    for change in changes:
        purchases, app_purchases, uses = totals.get(change.member_id, (0, 0, {}))
        for rule_id in dict.fromkeys(change.rule_ids):  # a rule counts once per receipt
            uses[rule_id] = uses.get(rule_id, 0) + 1
        totals[change.member_id] = (purchases + change.purchases, app_purchases + change.app_purchases, uses)
    return [(member_id, *total) for member_id, total in totals.items()]


def _summed_spend(changes: Sequence[StatsChange]) -> list[tuple[str, date, int]]:
    """Per member and day: the money spent in `changes` (days without spend left out)."""
    totals: dict[tuple[str, date], int] = {}
    for change in changes:
        if change.day is not None and change.spend:
            key = (change.member_id, change.day)
            totals[key] = totals.get(key, 0) + change.spend
    return [(member_id, day, amount) for (member_id, day), amount in totals.items()]


async def record_stats(connection: Connection, change: StatsChange) -> None:
    uses = json.dumps({rule_id: 1 for rule_id in change.rule_ids})
    await connection.execute(
        """INSERT INTO member_stats AS s (member_id, purchase_count, app_purchase_count, rule_uses)
           VALUES ($1, $2, $3, $4::jsonb)
           ON CONFLICT (member_id) DO UPDATE SET """
        + MERGE_STATS,
        change.member_id,
        change.purchases,
        change.app_purchases,
        uses,
    )
    if change.day is not None and change.spend:
        await connection.execute(
            """INSERT INTO member_daily_spend AS d (member_id, day, amount) VALUES ($1, $2, $3)
               ON CONFLICT (member_id, day) DO UPDATE SET amount = d.amount + EXCLUDED.amount""",
            change.member_id,
            change.day,
            change.spend,
        )


async def add_events(connection: Connection, events: Sequence[EventRow]) -> None:
    if events:
        await connection.executemany(
            "INSERT INTO outbox (event_id, event_type, partition_key, payload) VALUES ($1, $2, $3, $4)", events
        )


@dataclass(frozen=True)
class MemberHistory:
    purchase_count: int
    app_purchase_count: int
    rule_uses: dict[str, int]
    spend_by_window: dict[tuple[date, date], int]


NO_HISTORY = MemberHistory(purchase_count=0, app_purchase_count=0, rule_uses={}, spend_by_window={})


async def member_history(connection: Connection, member_id: str, windows: Sequence[tuple[date, date]]) -> MemberHistory:
    record = await connection.fetchrow(
        """SELECT s.purchase_count, s.app_purchase_count, s.rule_uses,
               (SELECT COALESCE(array_agg(COALESCE((SELECT sum(amount) FROM member_daily_spend d
                    WHERE d.member_id = $1 AND d.day BETWEEN w.first_day AND w.last_day), 0)
                    ORDER BY w.ord), '{}')
                FROM unnest($2::date[], $3::date[]) WITH ORDINALITY AS w(first_day, last_day, ord)) AS spends
           FROM (SELECT 1) AS one LEFT JOIN member_stats s ON s.member_id = $1""",
        member_id,
        [w[0] for w in windows],
        [w[1] for w in windows],
    )
    spends = record["spends"] if record else []
    return MemberHistory(
        purchase_count=record["purchase_count"] or 0 if record else 0,
        app_purchase_count=record["app_purchase_count"] or 0 if record else 0,
        rule_uses={k: int(v) for k, v in json.loads(record["rule_uses"] or "{}").items()} if record else {},
        spend_by_window={window: int(spend) for window, spend in zip(windows, spends, strict=True)},
    )


async def unfinished(connection: Connection, *, limit: int) -> list[str]:
    """PROCESSING operations nobody drives any more (lease run out)."""
    rows = await connection.fetch(
        "SELECT operation_id FROM operations WHERE state = 1 AND (lease_until IS NULL OR lease_until < now())"
        " ORDER BY lease_until NULLS FIRST LIMIT $1",
        limit,
    )
    return [row["operation_id"] for row in rows]


async def expired_authorizations(connection: Connection, *, limit: int) -> list[str]:
    rows = await connection.fetch(
        "SELECT operation_id FROM operations WHERE state = 2 AND expire_time < now() ORDER BY expire_time LIMIT $1",
        limit,
    )
    return [row["operation_id"] for row in rows]


@dataclass(frozen=True)
class OperationFilter:
    terminal_id: str = ""
    outlet_id: str = ""
    partner_id: str = ""
    member_id: str = ""
    receipt_id: str = ""
    types: Sequence[int] = ()
    states: Sequence[int] = ()
    offline_only: bool = False
    effective_from: datetime | None = None
    effective_to: datetime | None = None
    created_from: datetime | None = None
    created_to: datetime | None = None


async def list_operations(
    connection: Connection, where: OperationFilter, *, after: tuple[datetime, str] | None, limit: int
) -> list[tuple[bytes, bytes | None, datetime]]:
    """(operation, receipt, create_time) oldest first, after the cursor."""
    rows = await connection.fetch(
        """SELECT operation, receipt, create_time, operation_id FROM operations
           WHERE ($1 = '' OR terminal_id = $1) AND ($2 = '' OR outlet_id = $2) AND ($3 = '' OR partner_id = $3)
             AND ($4 = '' OR member_id = $4) AND ($5 = '' OR receipt_id = $5)
             AND (cardinality($6::smallint[]) = 0 OR type = ANY($6))
             AND (cardinality($7::smallint[]) = 0 OR state = ANY($7))
             AND (NOT $8 OR offline)
             AND ($9::timestamptz IS NULL OR effective_time >= $9)
             AND ($10::timestamptz IS NULL OR effective_time < $10)
             AND ($11::timestamptz IS NULL OR create_time >= $11) AND ($12::timestamptz IS NULL OR create_time < $12)
             AND ($13::timestamptz IS NULL OR (create_time, operation_id) > ($13, $14))
           ORDER BY create_time, operation_id LIMIT $15""",
        where.terminal_id,
        where.outlet_id,
        where.partner_id,
        where.member_id,
        where.receipt_id,
        list(where.types),
        list(where.states),
        where.offline_only,
        where.effective_from,
        where.effective_to,
        where.created_from,
        where.created_to,
        after[0] if after else None,
        after[1] if after else "",
        limit,
    )
    return [(bytes(r["operation"]), bytes(r["receipt"]) if r["receipt"] else None, r["create_time"]) for r in rows]


# An offline sale and an offline cancel of the same receipt may arrive at once (two uploads):
# both take this transaction-scoped lock on the receipt first, so either the cancel sees the
# sale, or the sale sees the remembered cancel; never neither.
LOCK_RECEIPT = "SELECT pg_advisory_xact_lock(hashtextextended(length($1) || ':' || $1 || $2, 0))"


async def insert_offline_sale(connection: Connection, new: NewOperation) -> tuple[bool, str | None]:
    """Record an offline sale unless its receipt's cancel arrived first: (inserted, the cancel's
    operation id when it did, and nothing was inserted)."""
    async with connection.transaction():
        await connection.execute(LOCK_RECEIPT, new.terminal_id, new.receipt_id)
        cancelled_by = await connection.fetchval(
            "SELECT operation_id FROM early_cancels WHERE terminal_id = $1 AND receipt_id = $2",
            new.terminal_id,
            new.receipt_id,
        )
        if cancelled_by is not None:
            return False, str(cancelled_by)
        return await insert(connection, new), None


async def purge_early_cancels(connection: Connection, *, older_than: timedelta, limit: int) -> int:
    """Forget up to `limit` offline cancels remembered more than `older_than` ago, oldest first;
    returns how many."""
    status = await connection.execute(
        """DELETE FROM early_cancels WHERE (terminal_id, receipt_id) IN (
               SELECT terminal_id, receipt_id FROM early_cancels WHERE create_time < now() - $1::interval
               ORDER BY create_time LIMIT $2)""",
        older_than,
        limit,
    )
    return int(status.split()[-1])


async def purchase_to_cancel(
    connection: Connection, *, terminal_id: str, receipt_id: str, cancel_operation_id: str
) -> OperationRow | None:
    """The receipt's purchase for an offline cancel; when it has not arrived, the cancel is
    remembered (early_cancels) and None returned: the purchase is recorded VOIDED when it comes."""
    async with connection.transaction():
        await connection.execute(LOCK_RECEIPT, terminal_id, receipt_id)
        purchase = await find_purchase_by_receipt(connection, terminal_id=terminal_id, receipt_id=receipt_id)
        if purchase is None:
            await connection.execute(
                """INSERT INTO early_cancels (terminal_id, receipt_id, operation_id) VALUES ($1, $2, $3)
                   ON CONFLICT DO NOTHING""",
                terminal_id,
                receipt_id,
                cancel_operation_id,
            )
        return purchase
