"""What the processing integration tests share: wallet, cards and processing processes on fresh
databases, a configured program (one terminal, a 5% earning rule), members, receipts, requests,
and read-only checks of the wallet (balances, transfers, the whole ledger's sum)."""

from __future__ import annotations

import asyncio
import signal
import uuid
from dataclasses import dataclass, field
from typing import Any

import asyncpg
from loyalty.cards.v1 import cards_pb2, cards_pb2_grpc
from loyalty.common.v1 import types_pb2
from loyalty.processing.v1 import processing_pb2 as p
from loyalty.processing.v1 import processing_pb2_grpc, program_admin_pb2_grpc
from loyalty.processing.v1 import program_admin_pb2 as pa
from loyalty.wallet.v1 import wallet_pb2 as w
from loyalty.wallet.v1 import wallet_pb2_grpc

from services.wallet import store as wallet_store
from shared.config import with_database
from shared.db import migrate
from tests.harness import Infra, ServiceProcess

ACTOR = types_pb2.Actor(type=types_pb2.ACTOR_TYPE_OPERATOR, id="tests")


def key() -> types_pb2.IdempotencyKey:
    return types_pb2.IdempotencyKey(key=str(uuid.uuid4()))


def rub(amount: int) -> types_pb2.Money:
    return types_pb2.Money(currency_code="RUB", amount_minor=amount, scale=2)


def fresh_database(infra: Infra, service: str) -> str:
    url = with_database(infra.database_server_url, f"loyalty_test_{service}_flow_{uuid.uuid4().hex[:8]}")
    migrate(service=service, database_url=url)
    return url


def start_wallet(infra: Infra, database_url: str, **env: str) -> ServiceProcess:
    return ServiceProcess(
        "wallet", infra.service_env("wallet", LOYALTY_WALLET_DATABASE_URL=database_url, **env)
    ).start()


def start_cards(infra: Infra, wallet: ServiceProcess, **env: str) -> ServiceProcess:
    return ServiceProcess(
        "cards",
        infra.service_env(
            "cards",
            LOYALTY_CARDS_DATABASE_URL=fresh_database(infra, "cards"),
            LOYALTY_WALLET_GRPC_TARGET=wallet.grpc_address,
            **env,
        ),
    ).start()


def processing_env(
    infra: Infra, *, database_url: str, wallet: ServiceProcess, cards: ServiceProcess, **env: str
) -> dict[str, str]:
    return infra.service_env(
        "processing",
        LOYALTY_PROCESSING_DATABASE_URL=database_url,
        LOYALTY_WALLET_GRPC_TARGET=wallet.grpc_address,
        LOYALTY_CARDS_GRPC_TARGET=cards.grpc_address,
        LOYALTY_PROCESSING_CONFIG_REFRESH_S="0.1",
        **env,
    )


@dataclass
class Restartable:
    """A service process that tests stop, kill and start again: the same environment each time,
    plus per-start overrides (e.g. a crash point)."""

    service: str
    env: dict[str, str]
    process: ServiceProcess | None = None
    starts: int = field(default=0)

    async def start(self, **overrides: str) -> ServiceProcess:
        await self.stop()
        process = ServiceProcess(self.service, {**self.env, **overrides})
        await asyncio.to_thread(process.start)
        self.process, self.starts = process, self.starts + 1
        return process

    async def stop(self) -> None:
        """SIGTERM (graceful) and wait; nothing to do when it is not running."""
        if self.process is not None:
            await asyncio.to_thread(self.process.stop)
            self.process = None

    async def exit_code(self, timeout_s: float = 10.0) -> int:
        """How the process ended by itself (negative: the signal that ended it)."""
        assert self.process is not None
        code = await asyncio.to_thread(self.process.wait, timeout_s)
        self.process = None
        return code

    def freeze(self) -> None:
        assert self.process is not None
        self.process.signal(signal.SIGSTOP)

    def thaw(self) -> None:
        assert self.process is not None
        self.process.signal(signal.SIGCONT)

    @property
    def address(self) -> str:
        assert self.process is not None
        return self.process.grpc_address


@dataclass
class World:
    processing: processing_pb2_grpc.ProcessingServiceStub
    admin: program_admin_pb2_grpc.ProgramAdminServiceStub
    wallet: wallet_pb2_grpc.WalletServiceStub
    cards: cards_pb2_grpc.CardsServiceStub
    program_id: str
    terminal_id: str
    redis_url: str


async def configure_program(
    admin: program_admin_pb2_grpc.ProgramAdminServiceStub, wallet: wallet_pb2_grpc.WalletServiceStub
) -> tuple[str, str]:
    """The program's points kind, a partner with one outlet and terminal, a published 5% rule:
    (program_id, terminal_id)."""
    program = (await admin.GetProgram(pa.GetProgramRequest())).program
    points = w.Unit(type=w.UNIT_TYPE_POINTS, scale=program.point_scale)
    await wallet.CreateAccountKind(
        w.CreateAccountKindRequest(
            account_kind=w.AccountKind(
                program_id=program.program_id,
                kind="base",
                display_name="Bonus points",
                unit=points,
                policy=w.AccountPolicy(
                    spendable=True,
                    overdraft_mode=w.OVERDRAFT_MODE_NO_OVERDRAFT,
                    expiry_rule=w.ExpiryRule(mode=w.EXPIRY_MODE_NEVER),
                ),
                open_by_default=True,
            ),
            actor=ACTOR,
            idempotency_key=key(),
        )
    )
    partner = (
        await admin.CreatePartner(
            pa.CreatePartnerRequest(
                idempotency_key=key(),
                actor=ACTOR,
                partner=pa.Partner(code="SHOP", name="Shop", accrual_enabled=True, redemption_enabled=True),
            )
        )
    ).partner
    outlet = (
        await admin.CreateOutlet(
            pa.CreateOutletRequest(
                idempotency_key=key(),
                actor=ACTOR,
                outlet=pa.Outlet(partner_id=partner.partner_id, code="O1", name="Outlet", region_code="RU-MOW"),
            )
        )
    ).outlet
    terminal = (
        await admin.CreateTerminal(
            pa.CreateTerminalRequest(
                idempotency_key=key(),
                actor=ACTOR,
                terminal=pa.Terminal(terminal_id="till-1", outlet_id=outlet.outlet_id, name="Till 1"),
            )
        )
    ).terminal
    await admin.CreateEarningRule(
        pa.CreateEarningRuleRequest(
            idempotency_key=key(),
            actor=ACTOR,
            earning_rule=pa.EarningRule(code="BASE5", name="Base 5%", percent=pa.PercentReward(rate_bp=500)),
        )
    )
    await admin.PublishRuleSet(pa.PublishRuleSetRequest(idempotency_key=key(), actor=ACTOR, comment="tests"))
    return program.program_id, terminal.terminal_id


async def register_member(cards: cards_pb2_grpc.CardsServiceStub, program_id: str) -> tuple[str, str]:
    """A new member (cards opens the wallet accounts): (member_id, phone)."""
    phone = f"+7916{uuid.uuid4().int % 10_000_000:07d}"
    response = await cards.RegisterMember(
        cards_pb2.RegisterMemberRequest(
            idempotency_key=key(),
            actor=ACTOR,
            program_id=program_id,
            phone=phone,
            first_name="Anna",
            last_name="Petrova",
        )
    )
    return response.member.member_id, phone


async def register(world: World) -> tuple[str, str]:
    return await register_member(world.cards, world.program_id)


def receipt(receipt_id: str, amount: int = 100_000) -> types_pb2.Receipt:
    line = types_pb2.ReceiptLine(
        position=1, sku="SKU-1", name="Coffee beans", quantity_milli=1000, unit_price=rub(amount), amount=rub(amount)
    )
    return types_pb2.Receipt(receipt_id=receipt_id, lines=[line], total=rub(amount))


def new_receipt_id() -> str:
    return f"r-{uuid.uuid4().hex[:12]}"


def purchase(world: World, phone: str, receipt_id: str, **fields: Any) -> p.PurchaseRequest:
    return purchase_request(world.terminal_id, phone, receipt_id, **fields)


def purchase_request(terminal_id: str, phone: str, receipt_id: str, **fields: Any) -> p.PurchaseRequest:
    return p.PurchaseRequest(
        idempotency_key=fields.pop("idempotency_key", key()),
        terminal_id=terminal_id,
        member=types_pb2.MemberIdentifier(phone=phone),
        receipt=fields.pop("receipt", receipt(receipt_id)),
        **fields,
    )


async def member_balances(
    wallet: wallet_pb2_grpc.WalletServiceStub, program_id: str, member_id: str
) -> list[types_pb2.AccountBalance]:
    response = await wallet.GetBalances(w.GetBalancesRequest(program_id=program_id, member_id=member_id))
    return [view.balance for view in response.balances]


async def wallet_total(world: World, member_id: str) -> int:
    balances = await member_balances(world.wallet, world.program_id, member_id)
    return sum(balance.available.amount_minor + balance.pending.amount_minor for balance in balances)


async def account_transfers(wallet: wallet_pb2_grpc.WalletServiceStub, account_id: str) -> list[w.TransferRecord]:
    """Every transfer the wallet recorded on an account (all pages), oldest first."""
    records: list[w.TransferRecord] = []
    token = ""
    for _ in range(100):  # bounded: a test account has a handful of transfers
        page = await wallet.ListTransfers(
            w.ListTransfersRequest(account_id=account_id, page_size=1000, page_token=token)
        )
        records.extend(page.transfers)
        token = page.next_page_token
        if not token:
            return records[::-1]
    raise AssertionError(f"too many transfers on {account_id}")


async def ledger_sums(wallet_database_url: str) -> list[tuple[int, str, int, int]]:
    """Per unit, the posted and pending sums over every account of the wallet (both must be 0)."""
    connection = await asyncpg.connect(wallet_database_url)
    try:
        return await wallet_store.ledger_sum(connection)
    finally:
        await connection.close()
