"""The data set the locust users run on, and the receipts they ring up.

The data set is seeded through the public APIs (services/cli/seed.py) and saved as JSON next to
the stack's data, so a later `make load` on the same data folder reuses it instead of registering
10,000 members again. This module imports no gRPC code at module level: the locust process
(gevent) only needs `load` and `ReceiptMaker`.
"""

from __future__ import annotations

import dataclasses
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# 5 partners x 10 outlets x 4 terminals = 50 outlets, 200 terminals; 10,000 members, each with
# 5,000.00 welcome points, so redemption scenarios never run a member dry within a run.
LOAD_PLAN_FIELDS: dict[str, Any] = {
    "partners": 5,
    "outlets_per_partner": 10,
    "terminals_per_outlet": 4,
    "members": 10_000,
    "welcome_points": 500_000,
    "rules": "demo",
    "concurrency": 48,
}


@dataclass(frozen=True)
class Member:
    member_id: str
    phone: str
    card_number: str
    master_account_id: str


@dataclass(frozen=True)
class Dataset:
    plan: dict[str, Any]
    program_id: str
    point_scale: int
    terminal_ids: list[str]
    members: list[Member]

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_suffix(".tmp")
        temporary.write_text(json.dumps(dataclasses.asdict(self)))
        temporary.replace(path)  # never a half-written cache


def load(path: Path) -> Dataset:
    raw = json.loads(path.read_text())
    return Dataset(
        plan=raw["plan"],
        program_id=raw["program_id"],
        point_scale=raw["point_scale"],
        terminal_ids=list(raw["terminal_ids"]),
        members=[Member(**m) for m in raw["members"]],
    )


def load_if_matching(path: Path, plan: dict[str, Any]) -> Dataset | None:
    """The cached data set if it was seeded with this plan (the concurrency does not matter)."""
    if not path.exists():
        return None
    dataset = load(path)
    if _plan_shape(dataset.plan) != _plan_shape(plan):
        return None
    return dataset


def _plan_shape(plan: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in plan.items() if k != "concurrency"}


# -- receipts ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Product:
    sku: str
    name: str
    category_id: str
    price_minor: int  # per piece, or per kilogram for weighed goods
    weighed: bool = False
    accrual_excluded: bool = False  # the register's flag: tobacco and alcohol never earn
    redemption_excluded: bool = False


# A grocery-and-coffee assortment with the categories the demo rules target (coffee, tea,
# bakery, fruit, vegetables) and lines the register excludes by law (tobacco, alcohol).
CATALOGUE = (
    Product("4600000000101", "Signature coffee beans 250 g", "coffee", 45_000),
    Product("4600000000118", "Cappuccino 300 ml", "coffee", 22_000),
    Product("4600000000125", "Espresso", "coffee", 12_000),
    Product("4600000000132", "Green tea, 25 bags", "tea", 18_900),
    Product("4600000000149", "Croissant", "bakery", 9_500),
    Product("4600000000156", "Rye bread 500 g", "bakery", 6_900),
    Product("4600000000163", "Milk 3.2% 1 l", "dairy", 8_990),
    Product("4600000000170", "Cottage cheese 5% 200 g", "dairy", 11_490),
    Product("4600000000187", "Butter 82% 180 g", "dairy", 21_990),
    Product("2000000000015", "Apples Golden, kg", "fruit", 15_990, weighed=True),
    Product("2000000000022", "Bananas, kg", "fruit", 12_990, weighed=True),
    Product("2000000000039", "Tomatoes, kg", "vegetables", 29_990, weighed=True),
    Product("2000000000046", "Cucumbers, kg", "vegetables", 19_990, weighed=True),
    Product("4600000000194", "Chicken breast 1 kg", "meat", 49_990),
    Product("4600000000200", "Pasta 450 g", "grocery", 9_990),
    Product("4600000000217", "Olive oil 0.5 l", "grocery", 89_990),
    Product("4600000000224", "Dish soap 500 ml", "household", 19_990),
    Product("4600000000231", "Paper towels, 2 rolls", "household", 14_990),
    Product("4600000000248", "Cigarettes", "tobacco", 22_900, accrual_excluded=True, redemption_excluded=True),
    Product("4600000000255", "Dry red wine 0.75 l", "alcohol", 79_900, accrual_excluded=True),
)
EVERYDAY = tuple(p for p in CATALOGUE if not (p.accrual_excluded or p.redemption_excluded))


@dataclass(frozen=True)
class Line:
    position: int
    product: Product
    quantity_milli: int
    amount_minor: int


class ReceiptMaker:
    """Receipts of 1..20 lines. The first line is always an everyday product, so every receipt
    can earn and be paid partly with points; quantities are whole pieces or weighed kilograms."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def lines(self, count_max: int = 20) -> list[Line]:
        count = min(count_max, max(1, int(self.rng.expovariate(1 / 5)) + 1))
        products = [self.rng.choice(EVERYDAY)] + [self.rng.choice(CATALOGUE) for _ in range(count - 1)]
        return [self._line(position, product) for position, product in enumerate(products, start=1)]

    def _line(self, position: int, product: Product) -> Line:
        pieces = 1000 * self.rng.choice((1, 1, 1, 2, 3))
        quantity_milli = self.rng.randint(150, 2_500) if product.weighed else pieces
        # Price x quantity, in kopecks; a register's rounding of weighed goods is half up.
        amount = (product.price_minor * quantity_milli + 500) // 1000
        return Line(position=position, product=product, quantity_milli=quantity_milli, amount_minor=amount)
