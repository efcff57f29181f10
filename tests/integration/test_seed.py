"""The seeder on a fresh wallet + cards + processing stack: a second run creates nothing, and what
it seeded works at the till (a seeded card at a seeded terminal earns exactly 5% with "flat5").
Switching the same database to the "demo" rule set pauses FLAT5 and publishes the demo rules."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import pytest
from grpc import aio
from loyalty.cards.v1 import cards_pb2, cards_pb2_grpc
from loyalty.common.v1 import types_pb2
from loyalty.processing.v1 import processing_pb2 as p
from loyalty.processing.v1 import processing_pb2_grpc, program_admin_pb2_grpc
from loyalty.processing.v1 import program_admin_pb2 as pa
from loyalty.wallet.v1 import wallet_pb2 as w
from loyalty.wallet.v1 import wallet_pb2_grpc

from services.cli.seed import Seeded, SeedPlan, seed
from shared.config import with_database
from shared.db import migrate
from tests.harness import Infra, ServiceProcess

PLAN = SeedPlan(
    partners=2, outlets_per_partner=2, terminals_per_outlet=2, members=6, welcome_points=10_000, rules="flat5"
)


def fresh_database(infra: Infra, service: str) -> str:
    url = with_database(infra.database_server_url, f"loyalty_test_{service}_seed_{uuid.uuid4().hex[:8]}")
    migrate(service=service, database_url=url)
    return url


@pytest.fixture(scope="module")
def stack(infra: Infra) -> Iterator[dict[str, ServiceProcess]]:
    wallet = ServiceProcess(
        "wallet", infra.service_env("wallet", LOYALTY_WALLET_DATABASE_URL=fresh_database(infra, "wallet"))
    ).start()
    cards = ServiceProcess(
        "cards",
        infra.service_env(
            "cards",
            LOYALTY_CARDS_DATABASE_URL=fresh_database(infra, "cards"),
            LOYALTY_WALLET_GRPC_TARGET=wallet.grpc_address,
        ),
    ).start()
    processing = ServiceProcess(
        "processing",
        infra.service_env(
            "processing",
            LOYALTY_PROCESSING_DATABASE_URL=fresh_database(infra, "processing"),
            LOYALTY_WALLET_GRPC_TARGET=wallet.grpc_address,
            LOYALTY_CARDS_GRPC_TARGET=cards.grpc_address,
            LOYALTY_PROCESSING_CONFIG_REFRESH_S="0.1",
        ),
    ).start()
    yield {"wallet": wallet, "cards": cards, "processing": processing}
    for process in (processing, cards, wallet):
        process.stop()


@dataclass
class Clients:
    processing: processing_pb2_grpc.ProcessingServiceStub
    admin: program_admin_pb2_grpc.ProgramAdminServiceStub
    cards: cards_pb2_grpc.CardsServiceStub
    wallet: wallet_pb2_grpc.WalletServiceStub
    stack: dict[str, ServiceProcess]

    async def seed(self, plan: SeedPlan) -> Seeded:
        seeded = await seed(
            processing_target=self.stack["processing"].grpc_address,
            cards_target=self.stack["cards"].grpc_address,
            wallet_target=self.stack["wallet"].grpc_address,
            plan=plan,
        )
        await asyncio.sleep(0.5)  # processing re-reads the published rule set every 0.1 s
        return seeded


@pytest.fixture(scope="module")
async def clients(stack: dict[str, ServiceProcess]) -> AsyncIterator[Clients]:
    channels = {name: aio.insecure_channel(process.grpc_address) for name, process in stack.items()}
    yield Clients(
        processing=processing_pb2_grpc.ProcessingServiceStub(channels["processing"]),
        admin=program_admin_pb2_grpc.ProgramAdminServiceStub(channels["processing"]),
        cards=cards_pb2_grpc.CardsServiceStub(channels["cards"]),
        wallet=wallet_pb2_grpc.WalletServiceStub(channels["wallet"]),
        stack=stack,
    )
    for channel in channels.values():
        await channel.close()


async def world_state(clients: Clients, seeded: Seeded) -> dict[str, object]:
    """Everything a rerun could add to: counts of each resource, every member's cards and balance."""
    admin = clients.admin
    cards_per_member = [
        [
            c.card_number
            for c in (
                await clients.cards.ListMemberCards(cards_pb2.ListMemberCardsRequest(member_id=m.member_id))
            ).cards
        ]
        for m in seeded.members
    ]
    balances = [
        [
            (b.balance.account_id, b.balance.available.amount_minor, b.balance.pending.amount_minor)
            for b in (
                await clients.wallet.GetBalances(w.GetBalancesRequest(master_account_id=m.master_account_id))
            ).balances
        ]
        for m in seeded.members
    ]
    member_accounts = await clients.wallet.ListAccounts(
        w.ListAccountsRequest(program_id=seeded.program_id, type=w.ACCOUNT_TYPE_MEMBER, page_size=1000)
    )
    return {
        "partners": len((await admin.ListPartners(pa.ListPartnersRequest(page_size=1000))).partners),
        "outlets": len((await admin.ListOutlets(pa.ListOutletsRequest(page_size=1000))).outlets),
        "terminals": len((await admin.ListTerminals(pa.ListTerminalsRequest(page_size=1000))).terminals),
        "rules": [
            (r.code, r.state)
            for r in (await admin.ListEarningRules(pa.ListEarningRulesRequest(page_size=1000))).earning_rules
        ],
        "versions": len((await admin.ListRuleSetVersions(pa.ListRuleSetVersionsRequest(page_size=1000))).versions),
        "templates": len(
            (
                await clients.cards.ListCardNumberTemplates(
                    cards_pb2.ListCardNumberTemplatesRequest(program_id=seeded.program_id)
                )
            ).templates
        ),
        "member_accounts": len(member_accounts.accounts),
        "cards": cards_per_member,
        "balances": balances,
    }


def rub(amount_minor: int) -> types_pb2.Money:
    return types_pb2.Money(currency_code="RUB", amount_minor=amount_minor, scale=2)


def line(position: int, sku: str, category: str, amount_minor: int) -> types_pb2.ReceiptLine:
    return types_pb2.ReceiptLine(
        position=position,
        sku=sku,
        name=sku,
        category_id=category,
        quantity_milli=1000,
        unit_price=rub(amount_minor),
        amount=rub(amount_minor),
    )


def purchase_request(terminal_id: str, card_number: str, lines: list[types_pb2.ReceiptLine]) -> p.PurchaseRequest:
    total = sum(item.amount.amount_minor for item in lines)
    return p.PurchaseRequest(
        idempotency_key=types_pb2.IdempotencyKey(key=str(uuid.uuid4())),
        terminal_id=terminal_id,
        member=types_pb2.MemberIdentifier(card_number=card_number),
        receipt=types_pb2.Receipt(
            receipt_id=f"r-{uuid.uuid4().hex[:10]}", lines=lines, total=rub(total), channel=types_pb2.SALES_CHANNEL_POS
        ),
    )


async def available_points(clients: Clients, master_account_id: str) -> int:
    response = await clients.wallet.GetBalances(w.GetBalancesRequest(master_account_id=master_account_id))
    return sum(b.balance.available.amount_minor for b in response.balances)


async def test_a_second_run_creates_nothing_and_a_seeded_card_earns_exactly_five_percent(clients: Clients) -> None:
    first = await clients.seed(PLAN)
    assert len(first.partner_ids) == 2 and len(first.outlet_ids) == 4
    assert first.terminal_ids[0] == "T-P01-O01-01" and first.terminal_ids[-1] == "T-P02-O02-02"
    assert len(first.terminal_ids) == len(set(first.terminal_ids)) == 8
    assert len({m.member_id for m in first.members}) == len({m.card_number for m in first.members}) == 6
    assert all(m.card_number and m.master_account_id and m.phone.startswith("+7900") for m in first.members)
    before = await world_state(clients, first)
    assert all(len(numbers) == 1 for numbers in before["cards"])  # type: ignore[attr-defined]

    second = await clients.seed(PLAN)

    assert second == first
    assert await world_state(clients, second) == before

    member = second.members[3]
    assert await available_points(clients, member.master_account_id) == 10_000  # the welcome bonus
    request = purchase_request(
        second.terminal_ids[-1], member.card_number, [line(1, "4600000000101", "coffee", 123_456)]
    )
    response = await clients.processing.Purchase(request)
    assert response.operation.state == p.OPERATION_STATE_CAPTURED
    assert response.operation.member_id == member.member_id
    # 5% of 1,234.56 RUB at 1 point = 1.00 RUB is 61.728 points, rounded down: 61.72 (scale 2).
    assert response.operation.purchase.calculation.accrual.amount_minor == 6172
    assert [r.rule_code for r in response.operation.purchase.calculation.applied_rules] == ["FLAT5"]
    assert await available_points(clients, member.master_account_id) == 10_000 + 6172


async def test_switching_to_the_demo_rule_set_pauses_flat5_and_applies_the_demo_rules(clients: Clients) -> None:
    demo = await clients.seed(
        SeedPlan(partners=2, outlets_per_partner=2, terminals_per_outlet=2, members=6, rules="demo")
    )
    rules = (await clients.admin.ListEarningRules(pa.ListEarningRulesRequest(page_size=1000))).earning_rules
    states = {r.code: r.state for r in rules}
    assert states["FLAT5"] == pa.EARNING_RULE_STATE_PAUSED
    assert states["DEMO-BASE"] == states["DEMO-FRESH-X3"] == pa.EARNING_RULE_STATE_ACTIVE
    program = (await clients.admin.GetProgram(pa.GetProgramRequest())).program
    assert not program.has_unpublished_changes
    versions = len((await clients.admin.ListRuleSetVersions(pa.ListRuleSetVersionsRequest())).versions)

    assert (
        await clients.seed(SeedPlan(partners=2, outlets_per_partner=2, terminals_per_outlet=2, members=6, rules="demo"))
        == demo
    )
    assert len((await clients.admin.ListRuleSetVersions(pa.ListRuleSetVersionsRequest())).versions) == versions

    member = demo.members[0]
    request = purchase_request(
        demo.terminal_ids[0],
        member.card_number,
        [line(1, "4600000000101", "coffee", 100_000), line(2, "4600000000202", "tobacco", 50_000)],
    )
    calculation = (await clients.processing.Purchase(request)).operation.purchase.calculation
    applied = {r.rule_code: r for r in calculation.applied_rules}
    # 3% base on the coffee line only (tobacco is excluded), +5% coffee, 20 points for the beans.
    assert applied["DEMO-BASE"].points.amount_minor == 3_000
    assert applied["DEMO-BASE"].positions == [1]
    assert applied["DEMO-COFFEE-BONUS"].points.amount_minor == 5_000
    assert applied["DEMO-SKU-BEANS"].points.amount_minor == 2_000
    assert "FLAT5" not in applied
    # The demo program keeps earned points pending for a 14-day return window.
    assert calculation.accrual_parts[0].activation_time.seconds > time.time() + 13 * 86_400
