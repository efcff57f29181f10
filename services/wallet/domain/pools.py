"""Household pools: who may spend from a shared account, and how much per period. Pure.

A pool is a POOL ledger account plus its members. The owner spends without a limit; every other
member within a limit per calendar period (day, week from Monday, month from the 1st, in the
pool's time zone) or in total. Open holds count as spent: a hold that is voided, expires or is
posted for less gives the unspent part back to the period it was counted in; a reversal of a
redemption gives it back too, if the period is still the current one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import IntEnum
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

POOL_MEMBERS_MAX = 20
TOTAL_PERIOD_START = datetime(1970, 1, 1, tzinfo=UTC)


class PoolState(IntEnum):
    ACTIVE = 1
    CLOSED = 2


class Role(IntEnum):
    OWNER = 1
    MEMBER = 2


class Period(IntEnum):
    """SpendingLimitPeriod."""

    NO_LIMIT = 1
    DAY = 2
    WEEK = 3
    MONTH = 4
    TOTAL = 5


def valid_time_zone(name: str) -> bool:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return False
    return True


def period_start(period: Period, at: datetime, time_zone: str) -> datetime | None:
    """When the period containing `at` started (None for NO_LIMIT)."""
    if period is Period.NO_LIMIT:
        return None
    if period is Period.TOTAL:
        return TOTAL_PERIOD_START
    local = at.astimezone(ZoneInfo(time_zone))
    midnight = local.replace(hour=0, minute=0, second=0, microsecond=0)
    if period is Period.WEEK:
        midnight -= timedelta(days=midnight.weekday())
    elif period is Period.MONTH:
        midnight = midnight.replace(day=1)
    return midnight.astimezone(UTC)


@dataclass
class PoolMember:
    member_id: str
    role: Role
    period: Period
    limit_minor: int
    # Spent (holds included) per period start; only the periods the batch may touch are loaded.
    spent: dict[datetime, int] = field(default_factory=dict)


@dataclass
class Pool:
    """The part of a pool the ledger needs: its members and their usage. Attached to the POOL
    account by the store; changed `spent` entries are persisted with the batch."""

    pool_id: str
    time_zone: str
    state: PoolState
    members: dict[str, PoolMember]
    changed: set[tuple[str, datetime]] = field(default_factory=set)

    def allowance(self, member_id: str, at: datetime) -> int | None:
        """What `member_id` may still spend at `at`; None = no limit; -1 = not a member."""
        member = self.members.get(member_id)
        if member is None:
            return -1
        if member.role is Role.OWNER or member.period is Period.NO_LIMIT:
            return None
        start = period_start(member.period, at, self.time_zone)
        assert start is not None
        return max(0, member.limit_minor - member.spent.get(start, 0))

    def count(self, member_id: str, at: datetime, amount: int) -> None:
        """Add (or, negative, give back) spending in the period containing `at`."""
        member = self.members.get(member_id)
        if member is None:
            return  # removed since: nothing left to account for
        start = period_start(member.period, at, self.time_zone)
        if start is None:
            return
        member.spent[start] = max(0, member.spent.get(start, 0) + amount)
        self.changed.add((member_id, start))
