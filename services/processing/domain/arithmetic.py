"""Integer arithmetic of points and money: rounding once, distributing by largest remainder.

What it decides: how an exact (rational) amount of points becomes an integer of the point's minor
unit, and how an integer total is split over receipt lines so that the parts add up to the total
exactly and every part stays within its line's share. Everything is done on Python integers
(numerator / denominator pairs); floats never touch money or points.

Largest remainder (Hamilton's method): part_i = floor(total * w_i / W); the units still missing
go one each to the lines with the largest remainders (total * w_i mod W), ties to the earlier line
in receipt order. Hence 0 <= part_i <= ceil(total * w_i / W); with total <= W every part_i <= w_i
(used to keep line redemption within each line's cap).
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import StrEnum


class RoundingMode(StrEnum):
    """AccrualPolicy.rounding: how a rule's exact points become whole minor point units."""

    DOWN = "DOWN"  # toward zero (the default: never gives more than earned)
    HALF_UP = "HALF_UP"  # to the nearest, halves away from zero
    UP = "UP"  # away from zero


def round_ratio(numerator: int, denominator: int, mode: RoundingMode) -> int:
    """numerator / denominator rounded to an integer (numerator >= 0, denominator > 0)."""
    if denominator <= 0 or numerator < 0:
        raise ValueError("round_ratio needs numerator >= 0 and denominator > 0")
    quotient, remainder = divmod(numerator, denominator)
    if remainder == 0 or mode is RoundingMode.DOWN:
        return quotient
    if mode is RoundingMode.UP:
        return quotient + 1
    return quotient + 1 if 2 * remainder >= denominator else quotient


def distribute(total: int, weights: Sequence[int]) -> list[int]:
    """Splits `total` (>= 0) over `weights` (>= 0, not all 0 unless total is 0) by largest remainder."""
    weight_sum = sum(weights)
    if total < 0 or min(weights, default=0) < 0:
        raise ValueError("distribute needs a non-negative total and weights")
    if weight_sum == 0:
        if total != 0:
            raise ValueError("cannot distribute a positive total over zero weights")
        return [0] * len(weights)
    products = [total * weight for weight in weights]
    parts = [product // weight_sum for product in products]
    missing = total - sum(parts)
    if missing:
        remainders = [product % weight_sum for product in products]
        # sorted() is stable, also with reverse=True: equal remainders keep receipt order.
        for index in sorted(range(len(parts)), key=remainders.__getitem__, reverse=True)[:missing]:
            parts[index] += 1
    return parts


def distribute_exact(total: int, numerators: Sequence[int]) -> list[int]:
    """Splits an already-rounded `total` in proportion to exact per-line amounts.

    `numerators` are the lines' exact amounts over a common denominator (which cancels out), so
    this is largest remainder on them as weights: the rounded total goes back to the lines that
    earned it, in proportion to what each earned before rounding.
    """
    return distribute(total, numerators)


def format_decimal(amount: int, scale: int) -> str:
    """12345 at scale 2 -> "123.45"; scale 0 -> "12345"."""
    sign = "-" if amount < 0 else ""
    digits = str(abs(amount))
    if scale <= 0:
        return sign + digits
    digits = digits.rjust(scale + 1, "0")
    return f"{sign}{digits[:-scale]}.{digits[-scale:]}"


def format_money(amount: int, scale: int, currency_code: str) -> str:
    return f"{format_decimal(amount, scale)} {currency_code}".rstrip()


def format_rate(rate_bp: int) -> str:
    """500 -> "5%", 250 -> "2.5%", 1 -> "0.01%"."""
    text = format_decimal(rate_bp, 2)
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return f"{text}%"


def format_positions(positions: Sequence[int]) -> str:
    return ", ".join(str(p) for p in positions)
