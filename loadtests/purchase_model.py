"""What a Purchase must answer under the seed's "flat5" program, computed independently of the
processing service's rules engine, so the benchmark can check every response exactly.

flat5 (services/cli/seed.py): one rule, 5% of the accrual base, rounded DOWN once per receipt;
the base is what the customer pays with money (receipt total minus the value of the points
spent); 1 point = 1 currency unit; points are spendable at once and never expire. So with p
minor point units worth m minor money units:

    redemption value = floor(points_spent * m / p)
    accrual          = floor((total - redemption value) * rate_bp * p / (10000 * m))

and the member's available balance moves by accrual - points_spent, with nothing pending or held.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from loyalty.common.v1 import types_pb2
from loyalty.processing.v1 import processing_pb2 as p
from loyalty.processing.v1 import program_admin_pb2 as pa

BP = 10_000
LINES_MAX = 4
LINE_MAJOR_MIN, LINE_MAJOR_MAX = 1, 3_000  # a line costs 1 to 3,000 currency units
REDEEM_SHARE_MAX_BP = 3_000  # at most 30% of a receipt is paid with points


class ModelError(Exception):
    """The program is not one this model can predict (the message says why)."""


@dataclass(frozen=True)
class Terms:
    rate_bp: int
    value_points: int  # p: minor point units ...
    value_money: int  # m: ... worth this many minor money units
    currency_code: str
    currency_scale: int
    point_scale: int

    @staticmethod
    def of(program: pa.Program, rules: list[pa.EarningRule]) -> Terms:
        """The terms of a flat5 program; ModelError for anything else."""
        active = [r for r in rules if r.state == pa.EARNING_RULE_STATE_ACTIVE]
        if len(active) != 1 or active[0].WhichOneof("reward") != "percent":
            raise ModelError(f"expected one active percent rule (seed rules=flat5), found {len(active)} active")
        rule = active[0]
        if rule.HasField("target") or rule.condition or rule.HasField("max_points_per_receipt"):
            raise ModelError(f"rule {rule.code} is targeted, conditional or capped")
        accrual, redemption = program.accrual_policy, program.redemption_policy
        if accrual.rounding != pa.ROUNDING_MODE_DOWN or accrual.base != pa.ACCRUAL_BASE_PAID_WITH_MONEY:
            raise ModelError("expected rounding DOWN on the amount paid with money")
        if accrual.lifetime.HasField("pending_period") or not redemption.enabled:
            raise ModelError("expected points spendable at once and redemption enabled")
        unlimited = pa.RedemptionPolicy(
            enabled=True,
            point_value=redemption.point_value,
            products=pa.REDEEMABLE_PRODUCTS_ALL,
            require_card_or_qr=redemption.require_card_or_qr,  # the driver redeems only with a card
            spend_order=redemption.spend_order,
        )
        if redemption != unlimited:
            raise ModelError("expected redemption without limits or exclusions")
        if program.has_unpublished_changes or not program.current_rule_set_version:
            raise ModelError("the program's rules are not published")
        return Terms(
            rate_bp=rule.percent.rate_bp,
            value_points=redemption.point_value.points.amount_minor,
            value_money=redemption.point_value.money.amount_minor,
            currency_code=program.currency_code,
            currency_scale=program.currency_scale,
            point_scale=program.point_scale,
        )

    def money(self, amount_minor: int) -> types_pb2.Money:
        return types_pb2.Money(currency_code=self.currency_code, amount_minor=amount_minor, scale=self.currency_scale)

    def redemption_value(self, points: int) -> int:
        return points * self.value_money // self.value_points

    def accrual(self, total: int, points_spent: int) -> int:
        base = total - self.redemption_value(points_spent)
        return base * self.rate_bp * self.value_points // (BP * self.value_money)

    def points_worth(self, money: int) -> int:
        """The most whole minor point units whose value fits in `money`."""
        return money * self.value_points // self.value_money


@dataclass(frozen=True)
class Sale:
    """One purchase to make and what its answer must say."""

    receipt: types_pb2.Receipt
    points_spent: int
    accrual: int
    balance_after: int


def receipt(terms: Terms, receipt_id: str, rng: random.Random) -> types_pb2.Receipt:
    """1..4 lines of 1 piece each, 1..3,000 currency units apiece, in whole minor units."""
    unit = 10**terms.currency_scale
    lines = []
    for position in range(1, rng.randint(1, LINES_MAX) + 1):
        amount = rng.randint(LINE_MAJOR_MIN * unit, LINE_MAJOR_MAX * unit)
        lines.append(
            types_pb2.ReceiptLine(
                position=position,
                sku=f"SKU-{rng.randint(1, 5000):05d}",
                name="Item",
                category_id="general",
                quantity_milli=1000,
                unit_price=terms.money(amount),
                amount=terms.money(amount),
            )
        )
    total = sum(line.amount.amount_minor for line in lines)
    return types_pb2.Receipt(
        receipt_id=receipt_id, lines=lines, total=terms.money(total), channel=types_pb2.SALES_CHANNEL_POS
    )


def sale(terms: Terms, receipt_id: str, *, balance: int, redeem: bool, rng: random.Random) -> Sale:
    """A receipt, maybe paid partly with points (never more than the balance or 30% of it)."""
    made = receipt(terms, receipt_id, rng)
    spent = 0
    if redeem:
        most = min(balance, terms.points_worth(made.total.amount_minor * REDEEM_SHARE_MAX_BP // BP))
        spent = rng.randint(1, most) if most >= 1 else 0
    accrual = terms.accrual(made.total.amount_minor, spent)
    return Sale(made, spent, accrual, balance + accrual - spent)


def check(response: p.PurchaseResponse, *, terms: Terms, sale: Sale, member_id: str) -> None:
    """Raise AssertionError unless the response is exactly what flat5 gives for `sale`."""
    operation = response.operation
    calculation = operation.purchase.calculation
    value = terms.redemption_value(sale.points_spent)
    _expect("state", operation.state, p.OPERATION_STATE_CAPTURED)
    _expect("member", operation.member_id, member_id)
    _expect("receipt", operation.receipt_id, sale.receipt.receipt_id)
    _expect("accrual", calculation.accrual.amount_minor, sale.accrual)
    _expect("redemption", calculation.redemption.amount_minor, sale.points_spent)
    _expect("redemption value", calculation.redemption_value.amount_minor, value)
    _expect("amount due", calculation.amount_due.amount_minor, sale.receipt.total.amount_minor - value)
    points = [b for b in response.balances if not b.currency_code]
    if not points and (sale.accrual or sale.points_spent):
        raise AssertionError("no balances in a response that moved points")
    if points:
        _expect("available", sum(b.available.amount_minor for b in points), sale.balance_after)
        _expect("pending", sum(b.pending.amount_minor for b in points), 0)
        _expect("held", sum(b.held.amount_minor for b in points), 0)


def _expect(what: str, got: object, wanted: object) -> None:
    if got != wanted:
        raise AssertionError(f"wrong {what}: got {got!r}, expected {wanted!r}")
