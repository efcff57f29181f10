"""The receipt as the rules engine sees it: integers in minor units, nothing else.

What it decides: the shape of a receipt that reached the domain, and the invariants every such
receipt has (1..500 lines, unique positive positions, positive quantities, non-negative
amounts, lines adding up to the total). The proto mapping (services/processing/rulesets.py)
checks the same things first and reports every bad field to the register; the checks here are
the domain's own guard (explicit, kept under `python -O`), so a receipt built in code cannot
skip them.

Why: the platform never recomputes prices (processing.proto, RECEIPTS); it only distributes
points over the register's line amounts, so those amounts must be consistent before anything
is distributed over them.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

RECEIPT_LINES_MAX = 500


class Channel(StrEnum):
    """Where the sale happened (loyalty.common.v1.SalesChannel); CEL sees these strings."""

    POS = "POS"
    ONLINE = "ONLINE"
    APP = "APP"


@dataclass(frozen=True)
class ReceiptLine:
    position: int
    sku: str
    category_id: str
    quantity_milli: int
    # What the customer owes for the line after the register's discounts, before points.
    amount: int
    name: str = ""
    # Price of one unit (per 1000 quantity_milli); informational only.
    unit_price: int = 0
    accrual_excluded: bool = False
    redemption_excluded: bool = False

    def __post_init__(self) -> None:
        if self.position < 1:
            raise ValueError(f"line position must be positive, got {self.position}")
        if self.quantity_milli <= 0:
            raise ValueError(f"line {self.position}: quantity_milli must be positive")
        if self.amount < 0 or self.unit_price < 0:
            raise ValueError(f"line {self.position}: amounts must not be negative")


@dataclass(frozen=True)
class Receipt:
    lines: tuple[ReceiptLine, ...]
    # Sum of the line amounts, before paying with points.
    total: int
    channel: Channel
    receipt_id: str = ""
    # The register's clock when the receipt was opened; None when not sent.
    issue_time: datetime | None = None

    def __post_init__(self) -> None:
        if not 1 <= len(self.lines) <= RECEIPT_LINES_MAX:
            raise ValueError(f"a receipt has 1..{RECEIPT_LINES_MAX} lines, got {len(self.lines)}")
        positions = {line.position for line in self.lines}
        if len(positions) != len(self.lines):
            raise ValueError("line positions must be unique")
        if sum(line.amount for line in self.lines) != self.total:
            raise ValueError("the receipt total must equal the sum of the line amounts")
        if self.issue_time is not None and self.issue_time.tzinfo is None:
            raise ValueError("issue_time must be timezone-aware")

    def line(self, position: int) -> ReceiptLine:
        for line in self.lines:
            if line.position == position:
                return line
        raise KeyError(position)
