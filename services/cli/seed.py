"""Seeds a loyalty program through the public gRPC APIs only, idempotently.

Everything is derived from names and indexes: partner P01, outlet P01/O01, terminal
T-P01-O01-01, member number 7 with phone +79000000007. Each step first reads what exists and
creates only what is missing, with idempotency keys derived from the same names, so a second run
(today, or after the 24-hour key retention) creates nothing: partners, outlets, terminals, rules
and templates are found by code, members by phone (RegisterMember is idempotent by phone), cards
through ListMemberCards, and welcome points by their transfer id (kept forever by the wallet).

Two rule sets: "flat5" (one 5% rule, points spendable at once and never expiring: exact arithmetic
for tests and benchmarks) and "demo" (a realistic program that exercises the rules engine). Rules
of the other set are paused, not archived, so switching back and forth works on one database.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
from google.protobuf import duration_pb2, field_mask_pb2, timestamp_pb2
from grpc import aio
from loyalty.cards.v1 import cards_pb2, cards_pb2_grpc
from loyalty.common.v1 import types_pb2
from loyalty.processing.v1 import program_admin_pb2 as pa
from loyalty.processing.v1 import program_admin_pb2_grpc
from loyalty.wallet.v1 import wallet_pb2 as w
from loyalty.wallet.v1 import wallet_pb2_grpc

from shared.clients import create_channel
from shared.config import grpc_target

ACTOR = types_pb2.Actor(type=types_pb2.ACTOR_TYPE_OPERATOR, id="loyalty-seed")
ACCOUNT_KIND = "base"
RULE_SETS = ("demo", "flat5")
CARD_TEMPLATE_NAME = "Seed cards (EAN-13)"
# EAN-13 card numbers must start with "2" (GS1 restricted circulation); 8 serial digits leave
# room for 10^8 cards, far more than any seed plan.
CARD_PREFIX = "2990"
PAGE_SIZE = 1000
TRANSFER_BATCH_SIZE = 500  # the wallet takes up to 1000 per CreateTransfers
CALL_TIMEOUT_S = 30.0
RETRY_ATTEMPTS = 6
RETRY_BACKOFF_S = 0.1
# Refusals that a retry with the same key can get past: the first call still running, a
# concurrent edit, a brief overload or outage.
RETRYABLE = frozenset({grpc.StatusCode.ABORTED, grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED})
DAY_S = 86_400

T = TypeVar("T")
ItemT = TypeVar("ItemT")


class SeedError(Exception):
    """The seeder met a state it cannot reconcile (said in the message)."""


@dataclass(frozen=True)
class SeedPlan:
    partners: int = 1
    outlets_per_partner: int = 1
    terminals_per_outlet: int = 1
    members: int = 10
    welcome_points: int = 0  # minor units of points granted to every member
    rules: str = "demo"  # "demo" or "flat5"
    concurrency: int = 32  # member registrations in flight

    def check(self) -> None:
        limits = {
            "partners": (self.partners, 1, 99),
            "outlets_per_partner": (self.outlets_per_partner, 1, 99),
            "terminals_per_outlet": (self.terminals_per_outlet, 1, 99),
            "members": (self.members, 0, 9_999_999),
            "welcome_points": (self.welcome_points, 0, 10**12),
            "concurrency": (self.concurrency, 1, 512),
        }
        for name, (value, low, high) in limits.items():
            if not low <= value <= high:
                raise ValueError(f"SeedPlan.{name}={value}: expected {low}..{high}")
        if self.rules not in RULE_SETS:
            raise ValueError(f"SeedPlan.rules={self.rules!r}: expected one of {', '.join(RULE_SETS)}")


@dataclass(frozen=True)
class SeededMember:
    member_id: str
    phone: str  # E.164, from the member's index
    card_number: str  # an ACTIVE card bound to the member (MemberIdentifier.card_number)
    master_account_id: str


@dataclass(frozen=True)
class Seeded:
    program_id: str
    point_scale: int
    partner_ids: list[str]
    outlet_ids: list[str]
    terminal_ids: list[str]
    members: list[SeededMember]


ProgressCallback = Callable[[int, int], None]


# -- names -------------------------------------------------------------------------------------


def partner_code(partner_index: int) -> str:
    return f"P{partner_index + 1:02d}"


def outlet_code(outlet_index: int) -> str:
    return f"O{outlet_index + 1:02d}"


def terminal_id(partner_index: int, outlet_index: int, terminal_index: int) -> str:
    return f"T-{partner_code(partner_index)}-{outlet_code(outlet_index)}-{terminal_index + 1:02d}"


def member_phone(index: int) -> str:
    """+7 900 ... is a valid Russian mobile range; 7 digits give 10^7 distinct members."""
    return f"+7900{index:07d}"


def key(name: str) -> types_pb2.IdempotencyKey:
    return types_pb2.IdempotencyKey(key=f"seed-{name}")


def fingerprint(text: str) -> str:
    """A short stable digest, for keys that must change when the state they act on changes."""
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# -- calls ---------------------------------------------------------------------------------------


async def call(rpc: Callable[..., Awaitable[T]], request: object) -> T:
    """One unary call with a deadline, retried with the same request (so the same idempotency
    key) while the refusal is one a retry can get past."""
    for attempt in range(RETRY_ATTEMPTS):
        try:
            return await rpc(request, timeout=CALL_TIMEOUT_S)
        except aio.AioRpcError as error:
            if error.code() not in RETRYABLE or attempt == RETRY_ATTEMPTS - 1:
                raise
            await asyncio.sleep(RETRY_BACKOFF_S * 2**attempt)
    raise AssertionError("unreachable")


async def pages(
    rpc: Callable[..., Awaitable[Any]], request: Any, items: Callable[[Any], Sequence[ItemT]]
) -> list[ItemT]:
    """Every item of a paginated list call (`request` is advanced page by page)."""
    found: list[ItemT] = []
    while True:
        response = await call(rpc, request)
        found.extend(items(response))
        if not response.next_page_token:
            return found
        request.page_token = response.next_page_token


@dataclass(frozen=True)
class Stubs:
    admin: program_admin_pb2_grpc.ProgramAdminServiceStub
    cards: cards_pb2_grpc.CardsServiceStub
    wallet: wallet_pb2_grpc.WalletServiceStub


@asynccontextmanager
async def connect(*, processing_target: str, cards_target: str, wallet_target: str) -> AsyncIterator[Stubs]:
    channels = [
        create_channel(t, default_timeout_s=CALL_TIMEOUT_S) for t in (processing_target, cards_target, wallet_target)
    ]
    try:
        yield Stubs(
            admin=program_admin_pb2_grpc.ProgramAdminServiceStub(channels[0]),
            cards=cards_pb2_grpc.CardsServiceStub(channels[1]),
            wallet=wallet_pb2_grpc.WalletServiceStub(channels[2]),
        )
    finally:
        for channel in channels:
            await channel.close()


# -- entry point ---------------------------------------------------------------------------------


async def seed(
    *,
    processing_target: str,
    cards_target: str,
    wallet_target: str,
    plan: SeedPlan,
    on_progress: ProgressCallback | None = None,
) -> Seeded:
    """Configure the program, its network and members as `plan` says; a rerun changes nothing.
    `on_progress(done, total)` is called as members are registered."""
    plan.check()
    async with connect(
        processing_target=processing_target, cards_target=cards_target, wallet_target=wallet_target
    ) as stubs:
        program = (await call(stubs.admin.GetProgram, pa.GetProgramRequest())).program
        units = ProgramUnits.of(program)
        await ensure_account_kind(stubs.wallet, program.program_id, units, plan.rules)
        await ensure_policies(stubs.admin, program, plan)
        partners = await ensure_partners(stubs.admin, plan)
        outlets = await ensure_outlets(stubs.admin, partners, plan)
        terminals = await ensure_terminals(stubs.admin, outlets, plan)
        await ensure_rules(stubs.admin, units, plan.rules)
        await publish_if_changed(stubs.admin)
        template_id = await ensure_card_template(stubs.cards, program.program_id)
        members = await register_members(
            stubs.cards,
            MemberContext(program_id=program.program_id, template_id=template_id, outlets=outlets),
            plan,
            on_progress,
        )
        if plan.welcome_points:
            await grant_welcome_points(stubs.wallet, program.program_id, units, members, plan.welcome_points)
    return Seeded(
        program_id=program.program_id,
        point_scale=program.point_scale,
        partner_ids=[p.partner_id for p in partners],
        outlet_ids=[o.outlet_id for o in outlets],
        terminal_ids=terminals,
        members=members,
    )


@dataclass(frozen=True)
class ProgramUnits:
    currency_code: str
    currency_scale: int
    point_scale: int

    @staticmethod
    def of(program: pa.Program) -> ProgramUnits:
        return ProgramUnits(program.currency_code, program.currency_scale, program.point_scale)

    def money(self, major: int) -> types_pb2.Money:
        return types_pb2.Money(
            currency_code=self.currency_code, amount_minor=major * 10**self.currency_scale, scale=self.currency_scale
        )

    def points(self, whole: int) -> types_pb2.Points:
        return types_pb2.Points(amount_minor=whole * 10**self.point_scale, scale=self.point_scale)

    @property
    def wallet_unit(self) -> w.Unit:
        return w.Unit(type=w.UNIT_TYPE_POINTS, scale=self.point_scale)


# -- wallet account kind -------------------------------------------------------------------------


def account_policy(rules: str) -> w.AccountPolicy:
    """flat5: spendable at once, never expires (exact arithmetic). demo: lots expire a year after
    activation; activation is immediate here because processing sends the program's pending
    period with every accrual (lot_terms), so only non-purchase credits such as the welcome
    bonus use the kind's defaults."""
    expiry = (
        w.ExpiryRule(mode=w.EXPIRY_MODE_NEVER)
        if rules == "flat5"
        else w.ExpiryRule(mode=w.EXPIRY_MODE_AFTER_DURATION, lifetime_s=365 * DAY_S)
    )
    return w.AccountPolicy(
        spendable=True,
        transferable=True,
        overdraft_mode=w.OVERDRAFT_MODE_NO_OVERDRAFT,
        activation_delay_s=0,
        expiry_rule=expiry,
        redemption_priority=20,
    )


async def ensure_account_kind(
    wallet: wallet_pb2_grpc.WalletServiceStub, program_id: str, units: ProgramUnits, rules: str
) -> None:
    wanted = w.AccountKind(
        program_id=program_id,
        kind=ACCOUNT_KIND,
        display_name="Bonus points",
        unit=units.wallet_unit,
        policy=account_policy(rules),
        open_by_default=True,
    )
    kinds = await pages(
        wallet.ListAccountKinds,
        w.ListAccountKindsRequest(program_id=program_id, page_size=PAGE_SIZE),
        lambda r: r.account_kinds,
    )
    existing = next((k for k in kinds if k.kind == ACCOUNT_KIND), None)
    if existing is None:
        request = w.CreateAccountKindRequest(account_kind=wanted, actor=ACTOR, idempotency_key=key("account-kind-base"))
        await call(wallet.CreateAccountKind, request)
    elif existing.policy != wanted.policy or existing.display_name != wanted.display_name:
        update_key = key(f"account-kind-base-{rules}-{fingerprint(existing.SerializeToString().hex())}")
        await call(
            wallet.UpdateAccountKind,
            w.UpdateAccountKindRequest(account_kind=wanted, actor=ACTOR, idempotency_key=update_key),
        )


# -- program policies ----------------------------------------------------------------------------


def duration(seconds: int) -> duration_pb2.Duration:
    return duration_pb2.Duration(seconds=seconds)


def program_policies(program: pa.Program, plan: SeedPlan) -> pa.Program:
    units = ProgramUnits.of(program)
    point_value = pa.PointValue(points=units.points(1), money=units.money(1))  # 1 point = 1 RUB
    wanted = pa.Program(
        type=pa.PROGRAM_TYPE_COALITION if plan.partners > 1 else pa.PROGRAM_TYPE_SINGLE_BRAND,
        refund_policy=pa.RefundPolicy(
            shortfall_policy=pa.REFUND_SHORTFALL_POLICY_WITHIN_BALANCE,
            restored_points_min_lifetime=duration(30 * DAY_S),
        ),
    )
    if plan.rules == "flat5":
        wanted.accrual_policy.CopyFrom(
            pa.AccrualPolicy(
                base=pa.ACCRUAL_BASE_PAID_WITH_MONEY,
                rounding=pa.ROUNDING_MODE_DOWN,
                lifetime=pa.PointsLifetime(expiry_rounding=pa.EXPIRY_ROUNDING_NONE),
                account_kind=ACCOUNT_KIND,
            )
        )
        wanted.redemption_policy.CopyFrom(
            pa.RedemptionPolicy(enabled=True, point_value=point_value, products=pa.REDEEMABLE_PRODUCTS_ALL)
        )
        return wanted
    # demo: a 14-day return window before earned points are spendable, expiry at the end of the
    # month a year later, at most half a receipt paid with points, no points on tobacco/alcohol.
    wanted.accrual_policy.CopyFrom(
        pa.AccrualPolicy(
            base=pa.ACCRUAL_BASE_PAID_WITH_MONEY,
            rounding=pa.ROUNDING_MODE_DOWN,
            lifetime=pa.PointsLifetime(
                pending_period=duration(14 * DAY_S),
                expire_after=duration(365 * DAY_S),
                expiry_rounding=pa.EXPIRY_ROUNDING_END_OF_MONTH,
            ),
            account_kind=ACCOUNT_KIND,
        )
    )
    wanted.redemption_policy.CopyFrom(
        pa.RedemptionPolicy(
            enabled=True,
            point_value=point_value,
            products=pa.REDEEMABLE_PRODUCTS_ALL,
            excluded_category_ids=["tobacco", "alcohol"],
            max_share_bp=5000,
            min_line_remainder=types_pb2.Money(
                currency_code=units.currency_code, amount_minor=1, scale=units.currency_scale
            ),
        )
    )
    return wanted


POLICY_FIELDS = ("type", "accrual_policy", "redemption_policy", "refund_policy")


async def ensure_policies(
    admin: program_admin_pb2_grpc.ProgramAdminServiceStub, program: pa.Program, plan: SeedPlan
) -> None:
    wanted = program_policies(program, plan)
    changed = [f for f in POLICY_FIELDS if getattr(program, f) != getattr(wanted, f)]
    if not changed:
        return
    request = pa.UpdateProgramRequest(
        idempotency_key=key(f"program-{plan.rules}-{fingerprint(program.etag)}"),
        actor=ACTOR,
        program=wanted,
        update_mask=field_mask_pb2.FieldMask(paths=changed),
    )
    await call(admin.UpdateProgram, request)


# -- network: partners, outlets, terminals -------------------------------------------------------

PARTNER_NAMES = (
    "Coffee & Co",
    "FreshMart",
    "BookNook",
    "PharmaPlus",
    "SportLine",
    "HomeStyle",
    "PetWorld",
    "TechPoint",
)


@dataclass(frozen=True)
class Place:
    region_code: str
    region: str
    city: str
    postal_code: str
    latitude_e7: int
    longitude_e7: int
    time_zone: str
    street: str


PLACES = (
    Place("RU-MOW", "Moscow", "Moscow", "101000", 557_558_000, 376_173_000, "Europe/Moscow", "Tverskaya St"),
    Place("RU-SPE", "St Petersburg", "St Petersburg", "190000", 599_343_000, 303_351_000, "Europe/Moscow", "Nevsky"),
    Place("RU-SVE", "Sverdlovsk", "Yekaterinburg", "620014", 568_389_000, 606_057_000, "Asia/Yekaterinburg", "Lenina"),
    Place("RU-NVS", "Novosibirsk", "Novosibirsk", "630099", 550_084_000, 829_357_000, "Asia/Novosibirsk", "Krasny"),
    Place("RU-KDA", "Krasnodar Krai", "Krasnodar", "350000", 450_355_000, 389_750_000, "Europe/Moscow", "Krasnaya St"),
    Place("RU-TA", "Tatarstan", "Kazan", "420111", 557_887_000, 491_221_000, "Europe/Moscow", "Baumana St"),
)


@dataclass(frozen=True)
class SeededOutlet:
    outlet_id: str
    partner_index: int
    outlet_index: int


async def ensure_partners(admin: program_admin_pb2_grpc.ProgramAdminServiceStub, plan: SeedPlan) -> list[pa.Partner]:
    existing = await pages(admin.ListPartners, pa.ListPartnersRequest(page_size=PAGE_SIZE), lambda r: r.partners)
    by_code = {p.code: p for p in existing}
    partners = []
    for index in range(plan.partners):
        code = partner_code(index)
        partner = by_code.get(code)
        if partner is None:
            partner = await create_partner(admin, index)
        partners.append(partner)
    return partners


async def create_partner(admin: program_admin_pb2_grpc.ProgramAdminServiceStub, index: int) -> pa.Partner:
    code = partner_code(index)
    name = PARTNER_NAMES[index % len(PARTNER_NAMES)]
    if index >= len(PARTNER_NAMES):
        name = f"{name} {index // len(PARTNER_NAMES) + 1}"
    request = pa.CreatePartnerRequest(
        idempotency_key=key(f"partner-{code}"),
        actor=ACTOR,
        partner=pa.Partner(
            code=code,
            name=name,
            points_scope=pa.PARTNER_POINTS_SCOPE_COALITION,
            accrual_enabled=True,
            redemption_enabled=True,
        ),
    )
    response: pa.CreatePartnerResponse = await call(admin.CreatePartner, request)
    return response.partner


async def ensure_outlets(
    admin: program_admin_pb2_grpc.ProgramAdminServiceStub, partners: list[pa.Partner], plan: SeedPlan
) -> list[SeededOutlet]:
    outlets = []
    for partner_index, partner in enumerate(partners):
        existing = await pages(
            admin.ListOutlets,
            pa.ListOutletsRequest(partner_id=partner.partner_id, page_size=PAGE_SIZE),
            lambda r: r.outlets,
        )
        by_code = {o.code: o.outlet_id for o in existing}
        for outlet_index in range(plan.outlets_per_partner):
            outlet_id = by_code.get(outlet_code(outlet_index))
            if outlet_id is None:
                outlet_id = await create_outlet(admin, partner, partner_index, outlet_index)
            outlets.append(SeededOutlet(outlet_id, partner_index, outlet_index))
    return outlets


def outlet_message(partner: pa.Partner, partner_index: int, outlet_index: int) -> pa.Outlet:
    spread = partner_index * 7 + outlet_index  # outlets of one partner spread over the cities
    place = PLACES[spread % len(PLACES)]
    # A few hundred metres apart per outlet, deterministic.
    offset_e7 = (spread // len(PLACES) + 1) * 37_000
    return pa.Outlet(
        partner_id=partner.partner_id,
        code=outlet_code(outlet_index),
        name=f"{partner.name}, {place.city} #{outlet_index + 1}",
        region_code=place.region_code,
        address=pa.Address(
            country_code="RU",
            region=place.region,
            city=place.city,
            postal_code=place.postal_code,
            address_lines=[f"{place.street}, {outlet_index * 3 + partner_index + 1}"],
        ),
        location=pa.GeoPoint(latitude_e7=place.latitude_e7 + offset_e7, longitude_e7=place.longitude_e7 - offset_e7),
        time_zone=place.time_zone,
    )


async def create_outlet(
    admin: program_admin_pb2_grpc.ProgramAdminServiceStub, partner: pa.Partner, partner_index: int, outlet_index: int
) -> str:
    request = pa.CreateOutletRequest(
        idempotency_key=key(f"outlet-{partner.code}-{outlet_code(outlet_index)}"),
        actor=ACTOR,
        outlet=outlet_message(partner, partner_index, outlet_index),
    )
    response: pa.CreateOutletResponse = await call(admin.CreateOutlet, request)
    return response.outlet.outlet_id


async def ensure_terminals(
    admin: program_admin_pb2_grpc.ProgramAdminServiceStub, outlets: list[SeededOutlet], plan: SeedPlan
) -> list[str]:
    existing = await pages(admin.ListTerminals, pa.ListTerminalsRequest(page_size=PAGE_SIZE), lambda r: r.terminals)
    known = {t.terminal_id for t in existing}
    terminal_ids = []
    for outlet in outlets:
        for terminal_index in range(plan.terminals_per_outlet):
            tid = terminal_id(outlet.partner_index, outlet.outlet_index, terminal_index)
            if tid not in known:
                await create_terminal(admin, outlet, tid, terminal_index)
            terminal_ids.append(tid)
    return terminal_ids


async def create_terminal(
    admin: program_admin_pb2_grpc.ProgramAdminServiceStub, outlet: SeededOutlet, tid: str, terminal_index: int
) -> None:
    request = pa.CreateTerminalRequest(
        idempotency_key=key(f"terminal-{tid}"),
        actor=ACTOR,
        terminal=pa.Terminal(
            terminal_id=tid,
            outlet_id=outlet.outlet_id,
            name=f"Till {terminal_index + 1}",
            serial_number=f"SN-{fingerprint(tid)[:10].upper()}",
            default_channel=types_pb2.SALES_CHANNEL_POS,
            offline_allowed=True,
        ),
    )
    await call(admin.CreateTerminal, request)


# -- earning rules and campaign ------------------------------------------------------------------

CAMPAIGN_CODE = "DEMO-FRESH-WEEKS"
# Codes the seeder owns: rules of the rule set not asked for are paused, never touched otherwise.
SEED_RULE_PREFIXES = ("DEMO-", "FLAT5")


def is_seed_rule(code: str) -> bool:
    return code.startswith(SEED_RULE_PREFIXES)


def flat5_rules() -> list[pa.EarningRule]:
    return [
        pa.EarningRule(
            code="FLAT5",
            name="Flat 5%",
            slip_text="5% back in points",
            percent=pa.PercentReward(rate_bp=500),
            stacking=pa.STACKING_MODE_STACKABLE,
        )
    ]


def demo_rules(units: ProgramUnits, campaign_id: str) -> list[pa.EarningRule]:
    weekend = [pa.WEEKDAY_SATURDAY, pa.WEEKDAY_SUNDAY]
    return [
        pa.EarningRule(
            code="DEMO-BASE",
            name="Base 3% on everything",
            slip_text="3% back",
            percent=pa.PercentReward(rate_bp=300),
            target=pa.RuleTarget(excluded_category_ids=["tobacco", "alcohol", "gift-cards"]),
            stacking=pa.STACKING_MODE_STACKABLE,
        ),
        pa.EarningRule(
            code="DEMO-COFFEE-BONUS",
            name="Coffee: +5%",
            description="Category bonus on coffee and tea",
            slip_text="Coffee +5%",
            percent=pa.PercentReward(rate_bp=500),
            target=pa.RuleTarget(category_ids=["coffee", "tea"]),
            priority=100,
            stacking=pa.STACKING_MODE_STACKABLE,
        ),
        pa.EarningRule(
            code="DEMO-SKU-BEANS",
            name="Signature beans: 20 points each",
            slip_text="Signature beans bonus",
            per_item=pa.PerItemReward(points_per_unit=units.points(20)),
            target=pa.RuleTarget(skus=["4600000000101"]),
            priority=90,
            stacking=pa.STACKING_MODE_STACKABLE,
        ),
        pa.EarningRule(
            code="DEMO-BIG-BASKET",
            name="Big basket: +1% from 3,000, +2% from 10,000",
            slip_text="Big basket bonus",
            progressive=pa.ProgressiveReward(
                basis=pa.PROGRESSIVE_BASIS_PER_RECEIPT,
                method=pa.PROGRESSIVE_METHOD_WHOLE_AMOUNT,
                tiers=[
                    pa.ProgressiveTier(threshold=units.money(3_000), rate_bp=100),
                    pa.ProgressiveTier(threshold=units.money(10_000), rate_bp=200),
                ],
            ),
            priority=50,
            stacking=pa.STACKING_MODE_STACKABLE,
        ),
        pa.EarningRule(
            code="DEMO-WEEKEND",
            name="Weekend: +2%",
            slip_text="Weekend +2%",
            percent=pa.PercentReward(rate_bp=200),
            target=pa.RuleTarget(days_of_week=weekend),
            priority=40,
            stacking=pa.STACKING_MODE_STACKABLE,
            exclusivity_group="time-bonus",
        ),
        pa.EarningRule(
            code="DEMO-MORNING-COFFEE",
            name="Morning coffee 7:00-10:00: +3%",
            slip_text="Morning coffee +3%",
            percent=pa.PercentReward(rate_bp=300),
            target=pa.RuleTarget(
                category_ids=["coffee", "bakery"], times_of_day=[pa.TimeOfDayRange(start_minute=420, end_minute=600)]
            ),
            priority=30,
            stacking=pa.STACKING_MODE_STACKABLE,
            exclusivity_group="time-bonus",
        ),
        pa.EarningRule(
            code="DEMO-BIRTHDAY-WEEK",
            name="Birthday week: +10% (up to 500 points)",
            slip_text="Happy birthday!",
            percent=pa.PercentReward(rate_bp=1000),
            condition=("member.birthday_known && (member.days_to_birthday <= 3 || member.days_since_birthday <= 3)"),
            max_points_per_receipt=units.points(500),
            priority=80,
            stacking=pa.STACKING_MODE_STACKABLE,
        ),
        pa.EarningRule(
            code="DEMO-FIRST-APP-ORDER",
            name="First order in the app: 100 points",
            slip_text="Welcome to the app",
            fixed=pa.FixedReward(points=units.points(100)),
            condition='receipt.channel == "APP" && member.app_purchase_count == 0',
            max_uses_per_member=1,
            priority=70,
            stacking=pa.STACKING_MODE_STACKABLE,
        ),
        pa.EarningRule(
            code="DEMO-FRESH-X3",
            name="Fresh weeks: +7% on fruit and vegetables",
            slip_text="Fresh weeks +7%",
            campaign_id=campaign_id,
            percent=pa.PercentReward(rate_bp=700),
            target=pa.RuleTarget(category_ids=["fruit", "vegetables"]),
            # Campaign points are use-them-or-lose-them: spendable at once, gone in 60 days.
            lifetime=pa.PointsLifetime(
                expire_after=duration(60 * DAY_S), expiry_rounding=pa.EXPIRY_ROUNDING_END_OF_DAY
            ),
            min_eligible_amount=units.money(200),
            priority=60,
            stacking=pa.STACKING_MODE_STACKABLE,
        ),
    ]


async def ensure_campaign(admin: program_admin_pb2_grpc.ProgramAdminServiceStub) -> str:
    existing = await pages(admin.ListCampaigns, pa.ListCampaignsRequest(page_size=PAGE_SIZE), lambda r: r.campaigns)
    found = next((c for c in existing if c.code == CAMPAIGN_CODE), None)
    if found is not None:
        return str(found.campaign_id)
    request = pa.CreateCampaignRequest(
        idempotency_key=key(f"campaign-{CAMPAIGN_CODE}"),
        actor=ACTOR,
        campaign=pa.Campaign(
            code=CAMPAIGN_CODE,
            name="Fresh weeks",
            description="Extra points on fruit and vegetables; open-ended demo campaign",
            # A fixed start keeps the request identical across runs; no end: it keeps running.
            period=types_pb2.TimeRange(start_time=timestamp_pb2.Timestamp(seconds=1_767_225_600)),  # 2026-01-01
        ),
    )
    response: pa.CreateCampaignResponse = await call(admin.CreateCampaign, request)
    return response.campaign.campaign_id


async def ensure_rules(admin: program_admin_pb2_grpc.ProgramAdminServiceStub, units: ProgramUnits, rules: str) -> None:
    wanted = flat5_rules() if rules == "flat5" else demo_rules(units, await ensure_campaign(admin))
    existing = await pages(
        admin.ListEarningRules, pa.ListEarningRulesRequest(page_size=PAGE_SIZE), lambda r: r.earning_rules
    )
    by_code = {r.code: r for r in existing}
    wanted_codes = {r.code for r in wanted}
    for rule in wanted:
        current = by_code.get(rule.code)
        if current is None:
            request = pa.CreateEarningRuleRequest(
                idempotency_key=key(f"rule-{rule.code}"), actor=ACTOR, earning_rule=rule
            )
            await call(admin.CreateEarningRule, request)
        elif current.state == pa.EARNING_RULE_STATE_PAUSED:
            await set_rule_state(admin, current, pa.EARNING_RULE_STATE_ACTIVE)
    for current in existing:
        if (
            is_seed_rule(current.code)
            and current.code not in wanted_codes
            and current.state == pa.EARNING_RULE_STATE_ACTIVE
        ):
            await set_rule_state(admin, current, pa.EARNING_RULE_STATE_PAUSED)


async def set_rule_state(
    admin: program_admin_pb2_grpc.ProgramAdminServiceStub, rule: pa.EarningRule, state: pa.EarningRuleState.ValueType
) -> None:
    # The etag is in the key: pausing, resuming and pausing again are three different changes.
    request = pa.UpdateEarningRuleRequest(
        idempotency_key=key(f"rule-{rule.code}-state{state}-{fingerprint(rule.etag)}"),
        actor=ACTOR,
        earning_rule=pa.EarningRule(rule_id=rule.rule_id, state=state),
        update_mask=field_mask_pb2.FieldMask(paths=["state"]),
    )
    await call(admin.UpdateEarningRule, request)


async def publish_if_changed(admin: program_admin_pb2_grpc.ProgramAdminServiceStub) -> None:
    program = (await call(admin.GetProgram, pa.GetProgramRequest())).program
    if program.current_rule_set_version and not program.has_unpublished_changes:
        return
    request = pa.PublishRuleSetRequest(
        idempotency_key=key(f"publish-after-v{program.current_rule_set_version}-{fingerprint(program.etag)}"),
        actor=ACTOR,
        comment="loyalty seed",
    )
    await call(admin.PublishRuleSet, request)


# -- cards and members ---------------------------------------------------------------------------


async def ensure_card_template(cards: cards_pb2_grpc.CardsServiceStub, program_id: str) -> str:
    existing = await pages(
        cards.ListCardNumberTemplates,
        cards_pb2.ListCardNumberTemplatesRequest(program_id=program_id, page_size=PAGE_SIZE),
        lambda r: r.templates,
    )
    found = next((t for t in existing if t.display_name == CARD_TEMPLATE_NAME), None)
    if found is not None:
        return str(found.template_id)
    request = cards_pb2.CreateCardNumberTemplateRequest(
        idempotency_key=key("card-template"),
        actor=ACTOR,
        template=cards_pb2.CardNumberTemplate(
            program_id=program_id,
            display_name=CARD_TEMPLATE_NAME,
            prefix=CARD_PREFIX,
            length=13,
            check_digit_scheme=cards_pb2.CHECK_DIGIT_SCHEME_GS1_MOD10,
            barcode_symbology=cards_pb2.BARCODE_SYMBOLOGY_EAN_13,
        ),
    )
    response: cards_pb2.CreateCardNumberTemplateResponse = await call(cards.CreateCardNumberTemplate, request)
    return response.template.template_id


FIRST_NAMES = ("Anna", "Ivan", "Maria", "Dmitry", "Elena", "Sergey", "Olga", "Alexey", "Natalia", "Pavel")
LAST_NAMES = (
    "Ivanova",
    "Petrov",
    "Smirnova",
    "Kuznetsov",
    "Popova",
    "Sokolov",
    "Lebedeva",
    "Novikov",
    "Morozova",
    "Volkov",
)


@dataclass(frozen=True)
class MemberContext:
    program_id: str
    template_id: str
    outlets: list[SeededOutlet]


def registration(context: MemberContext, index: int) -> cards_pb2.RegisterMemberRequest:
    phone = member_phone(index)
    # Birthdays spread over the year so that some members are always in their birthday week.
    birth = cards_pb2.Date(year=1960 + index % 45, month=1 + index % 12, day=1 + (index * 7) % 28)
    request = cards_pb2.RegisterMemberRequest(
        actor=ACTOR,
        program_id=context.program_id,
        phone=phone,
        first_name=FIRST_NAMES[index % len(FIRST_NAMES)],
        last_name=LAST_NAMES[(index // len(FIRST_NAMES)) % len(LAST_NAMES)],
        email=f"member{index:07d}@example.com",
        birth_date=birth,
        language_code="ru",
        registration_channel=types_pb2.SALES_CHANNEL_POS,
        registration_outlet_id=context.outlets[index % len(context.outlets)].outlet_id,
    )
    # The body is in the key: a plan with other outlets registers the same phone under a new key,
    # and RegisterMember, idempotent by phone, returns the existing member instead of refusing
    # a reused key.
    body = fingerprint(request.SerializeToString(deterministic=True).hex())
    request.idempotency_key.CopyFrom(key(f"member-{phone[1:]}-{body}"))
    return request


async def member_card(
    cards: cards_pb2_grpc.CardsServiceStub, context: MemberContext, member_id: str, created: bool
) -> str:
    """The number of the member's ACTIVE card, issuing (and binding) one if there is none."""
    if not created:
        listed = await call(
            cards.ListMemberCards,
            cards_pb2.ListMemberCardsRequest(member_id=member_id, states=[cards_pb2.Card.STATE_ACTIVE]),
        )
        if listed.cards:
            return str(listed.cards[0].card_number)
    request = cards_pb2.IssueCardRequest(
        idempotency_key=key(f"card-{member_id}"),
        actor=ACTOR,
        new_card=cards_pb2.NewCard(template_id=context.template_id, type=cards_pb2.CARD_TYPE_MULTI),
        binding=cards_pb2.CardBinding(
            member_id=member_id, account_mode=cards_pb2.CARD_ACCOUNT_MODE_MASTER, label="Plastic"
        ),
    )
    response: cards_pb2.IssueCardResponse = await call(cards.IssueCard, request)
    return str(response.card.card_number)


async def register_member(cards: cards_pb2_grpc.CardsServiceStub, context: MemberContext, index: int) -> SeededMember:
    request = registration(context, index)
    response: cards_pb2.RegisterMemberResponse = await call(cards.RegisterMember, request)
    member = response.member
    card_number = await member_card(cards, context, member.member_id, response.created)
    return SeededMember(
        member_id=member.member_id,
        phone=member.phone,
        card_number=card_number,
        master_account_id=member.master_account_id,
    )


async def register_members(
    cards: cards_pb2_grpc.CardsServiceStub, context: MemberContext, plan: SeedPlan, on_progress: ProgressCallback | None
) -> list[SeededMember]:
    """Registers members with `plan.concurrency` workers taking indexes in turn."""
    results: list[SeededMember | None] = [None] * plan.members
    indexes = iter(range(plan.members))
    done = 0

    async def worker() -> None:
        nonlocal done
        for index in indexes:  # a shared iterator: each index goes to exactly one worker
            results[index] = await register_member(cards, context, index)
            done += 1
            if on_progress is not None and (done % 500 == 0 or done == plan.members):
                on_progress(done, plan.members)

    await asyncio.gather(*(worker() for _ in range(min(plan.concurrency, max(plan.members, 1)))))
    return [member for member in results if member is not None]


# -- welcome points ------------------------------------------------------------------------------


async def base_accounts(wallet: wallet_pb2_grpc.WalletServiceStub, program_id: str) -> dict[str, str]:
    """member_id -> the member's primary "base" account, read a thousand at a time."""
    accounts = await pages(
        wallet.ListAccounts,
        w.ListAccountsRequest(
            program_id=program_id, type=w.ACCOUNT_TYPE_MEMBER, kind=ACCOUNT_KIND, page_size=PAGE_SIZE
        ),
        lambda r: r.accounts,
    )
    return {a.member_id: a.account_id for a in accounts if a.primary}


async def issuance_account(wallet: wallet_pb2_grpc.WalletServiceStub, program_id: str, units: ProgramUnits) -> str:
    request = w.OpenSystemAccountRequest(
        program_id=program_id,
        role=w.SYSTEM_ACCOUNT_ROLE_ISSUANCE,
        unit=units.wallet_unit,
        actor=ACTOR,
        idempotency_key=key("issuance-account"),
    )
    response: w.OpenSystemAccountResponse = await call(wallet.OpenSystemAccount, request)
    return str(response.account.account_id)


def welcome_transfer(member_id: str, debit: str, credit: str, amount_minor: int) -> w.Transfer:
    # The amount is part of the id: rerunning the same plan is a no-op, a bigger welcome bonus in
    # a later plan is a new grant rather than a conflict.
    return w.Transfer(
        transfer_id=f"seed:welcome:{amount_minor}:{member_id}",
        debit_account_id=debit,
        credit_account_id=credit,
        amount_minor=amount_minor,
        reason=w.TRANSFER_REASON_BONUS,
        memo="Welcome bonus",
    )


SUCCESS = (w.TRANSFER_RESULT_CODE_CREATED, w.TRANSFER_RESULT_CODE_EXISTS)


async def grant_welcome_points(
    wallet: wallet_pb2_grpc.WalletServiceStub,
    program_id: str,
    units: ProgramUnits,
    members: list[SeededMember],
    amount_minor: int,
) -> None:
    issuance = await issuance_account(wallet, program_id, units)
    accounts = await base_accounts(wallet, program_id)
    missing = [m.member_id for m in members if m.member_id not in accounts]
    if missing:
        raise SeedError(f"{len(missing)} members have no {ACCOUNT_KIND!r} account, e.g. {missing[0]}")
    transfers = [welcome_transfer(m.member_id, issuance, accounts[m.member_id], amount_minor) for m in members]
    for start in range(0, len(transfers), TRANSFER_BATCH_SIZE):
        batch = transfers[start : start + TRANSFER_BATCH_SIZE]
        response: w.CreateTransfersResponse = await call(
            wallet.CreateTransfers, w.CreateTransfersRequest(transfers=batch)
        )
        refused = [r for r in response.results if r.code not in SUCCESS]
        if refused:
            first = refused[0]
            raise SeedError(
                f"{len(refused)} welcome transfers refused, e.g. {first.transfer_id}: "
                f"{w.TransferResultCode.Name(first.code)} {list(first.different_fields)}"
            )


# -- command line: `loyalty seed`, and the demo data of `loyalty run` ----------------------------

# What `loyalty run` loads unless --no-demo: small enough to start in a few seconds.
DEMO_PLAN = SeedPlan(
    partners=2, outlets_per_partner=3, terminals_per_outlet=2, members=100, welcome_points=50_000, rules="demo"
)


def argument_parser() -> argparse.ArgumentParser:
    """The flags of `loyalty seed`; defaults are the demo plan and the local service ports."""
    parser = argparse.ArgumentParser(
        prog="loyalty seed", description="Load a program and members through the public APIs, idempotently."
    )
    defaults = DEMO_PLAN
    parser.add_argument("--partners", type=int, default=defaults.partners)
    parser.add_argument("--outlets-per-partner", type=int, default=defaults.outlets_per_partner)
    parser.add_argument("--terminals-per-outlet", type=int, default=defaults.terminals_per_outlet)
    parser.add_argument("--members", type=int, default=defaults.members)
    parser.add_argument(
        "--welcome-points", type=int, default=defaults.welcome_points, help="minor units of points per member"
    )
    parser.add_argument("--rules", choices=RULE_SETS, default=defaults.rules)
    parser.add_argument("--concurrency", type=int, default=defaults.concurrency, help="registrations in flight")
    for service in ("processing", "cards", "wallet"):
        parser.add_argument(
            f"--{service}-target",
            default=None,
            help=f"host:port (default: LOYALTY_{service.upper()}_GRPC_TARGET or local)",
        )
    return parser


def plan_from(args: argparse.Namespace) -> SeedPlan:
    return SeedPlan(
        partners=args.partners,
        outlets_per_partner=args.outlets_per_partner,
        terminals_per_outlet=args.terminals_per_outlet,
        members=args.members,
        welcome_points=args.welcome_points,
        rules=args.rules,
        concurrency=args.concurrency,
    )


def demo_purchase(terminal: str, card_number: str) -> dict[str, object]:
    """A PurchaseRequest in proto JSON: one bag of signature beans, 450.00 RUB."""
    price = {"currency_code": "RUB", "amount_minor": 45000, "scale": 2}
    line = {"position": 1, "sku": "4600000000101", "name": "Signature beans", "category_id": "coffee"}
    return {
        "idempotency_key": {"key": "demo-purchase-0001"},
        "terminal_id": terminal,
        "member": {"card_number": card_number},
        "receipt": {
            "receipt_id": "demo-0001",
            "total": price,
            "lines": [{**line, "quantity_milli": 1000, "unit_price": price, "amount": price}],
        },
    }


def summary(seeded: Seeded, processing_target: str) -> list[str]:
    """Lines that make the README's grpcurl examples work against the seeded data."""
    lines = [
        f"program {seeded.program_id}: {len(seeded.partner_ids)} partners, {len(seeded.outlet_ids)} outlets, "
        f"{len(seeded.terminal_ids)} terminals, {len(seeded.members)} members",
    ]
    if not seeded.members or not seeded.terminal_ids:
        return lines
    member = seeded.members[0]
    request = json.dumps(demo_purchase(seeded.terminal_ids[0], member.card_number), separators=(",", ":"))
    lines += [
        f"terminal id  {seeded.terminal_ids[0]}   (all: {', '.join(seeded.terminal_ids[:4])}, ...)",
        f"card number  {member.card_number}",
        f"phone        {member.phone}",
        f"member id    {member.member_id}",
        "try:",
        f"    grpcurl -plaintext -d '{request}' {processing_target} loyalty.processing.v1.ProcessingService/Purchase",
    ]
    return lines


async def seed_and_time(
    *, processing_target: str, cards_target: str, wallet_target: str, plan: SeedPlan, say: Callable[[str], None]
) -> Seeded:
    started = time.monotonic()
    seeded = await seed(
        processing_target=processing_target,
        cards_target=cards_target,
        wallet_target=wallet_target,
        plan=plan,
        on_progress=lambda done, total: say(f"members {done}/{total}") if total >= 1000 else None,
    )
    elapsed_s = time.monotonic() - started
    say(f"seeded in {elapsed_s:.1f} s ({len(seeded.members) / max(elapsed_s, 1e-9):.0f} members/s)")
    return seeded


def main(argv: list[str]) -> int:
    """`loyalty seed`: exit 0 when the plan is in place, 1 when a service refused or is down."""
    args = argument_parser().parse_args(argv)
    targets = {s: getattr(args, f"{s}_target") or grpc_target(s) for s in ("processing", "cards", "wallet")}
    try:
        plan = plan_from(args)
        plan.check()
        seeded = asyncio.run(
            seed_and_time(
                processing_target=targets["processing"],
                cards_target=targets["cards"],
                wallet_target=targets["wallet"],
                plan=plan,
                say=lambda message: print(f"[loyalty seed] {message}", flush=True),
            )
        )
    except ValueError as error:
        print(f"loyalty seed: {error}", file=sys.stderr)
        return 2
    except (SeedError, aio.AioRpcError) as error:
        print(f"loyalty seed: failed: {describe(error)}", file=sys.stderr)
        return 1
    for line in summary(seeded, targets["processing"]):
        print(line)
    return 0


def describe(error: Exception) -> str:
    if isinstance(error, aio.AioRpcError):
        return f"{error.code().name}: {error.details()}"
    return str(error)
