"""Helpers of the cards integration tests: actors, keys, a program set up in the wallet and in
cards, error details, and reads of the cards database (outbox, rows) to check what changed."""

from __future__ import annotations

import json
import random
import uuid
from dataclasses import dataclass
from typing import Any

import asyncpg
from google.rpc import error_details_pb2
from grpc import aio
from grpc_status import rpc_status
from loyalty.cards.v1 import cards_pb2 as c
from loyalty.cards.v1 import cards_pb2_grpc
from loyalty.common.v1 import types_pb2
from loyalty.wallet.v1 import wallet_pb2 as w
from loyalty.wallet.v1 import wallet_pb2_grpc

OPERATOR = types_pb2.Actor(type=types_pb2.ACTOR_TYPE_OPERATOR, id="olga")
TERMINAL = types_pb2.Actor(type=types_pb2.ACTOR_TYPE_TERMINAL, id="till-1")
OTHER_TERMINAL = types_pb2.Actor(type=types_pb2.ACTOR_TYPE_TERMINAL, id="till-2")
SYSTEM = types_pb2.Actor(type=types_pb2.ACTOR_TYPE_SYSTEM, id="tests")
POINTS = w.Unit(type=w.UNIT_TYPE_POINTS, scale=2)
RUB = w.Unit(type=w.UNIT_TYPE_MONEY, currency_code="RUB", scale=2)


def key() -> types_pb2.IdempotencyKey:
    return types_pb2.IdempotencyKey(key=str(uuid.uuid4()))


def new_phone() -> str:
    """A random valid Russian mobile number in E.164."""
    return f"+7916{random.randrange(10**7):07d}"


def member_actor(member_id: str) -> types_pb2.Actor:
    return types_pb2.Actor(type=types_pb2.ACTOR_TYPE_MEMBER, id=member_id)


@dataclass(frozen=True)
class ErrorDetails:
    reason: str
    metadata: dict[str, str]
    fields: list[str]


def details(error: aio.AioRpcError) -> ErrorDetails:
    status = rpc_status.from_call(error)
    if status is None:
        raise AssertionError(f"no google.rpc.Status in {error}")
    reason, metadata, fields = "", {}, []
    for packed in status.details:
        if packed.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            packed.Unpack(info)
            reason, metadata = info.reason, dict(info.metadata)
        if packed.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            packed.Unpack(bad)
            fields = [v.field for v in bad.field_violations]
    return ErrorDetails(reason, metadata, fields)


async def create_wallet_kinds(wallet: wallet_pb2_grpc.WalletServiceStub, program_id: str) -> None:
    """What the program's setup does on the wallet side: a points kind opened for every member
    and a money kind for gift card balances."""
    kinds = [
        w.AccountKind(
            program_id=program_id,
            kind="base",
            display_name="Bonus points",
            unit=POINTS,
            policy=w.AccountPolicy(
                spendable=True,
                overdraft_mode=w.OVERDRAFT_MODE_NO_OVERDRAFT,
                expiry_rule=w.ExpiryRule(mode=w.EXPIRY_MODE_NEVER),
            ),
            open_by_default=True,
        ),
        w.AccountKind(
            program_id=program_id,
            kind="gift",
            display_name="Gift balance",
            unit=RUB,
            policy=w.AccountPolicy(
                spendable=True,
                overdraft_mode=w.OVERDRAFT_MODE_NO_OVERDRAFT,
                expiry_rule=w.ExpiryRule(mode=w.EXPIRY_MODE_NEVER),
            ),
            open_by_default=False,
        ),
    ]
    for kind in kinds:
        await wallet.CreateAccountKind(
            w.CreateAccountKindRequest(account_kind=kind, actor=SYSTEM, idempotency_key=key()), timeout=10
        )


@dataclass
class Program:
    """A fresh program: wallet kinds, and in cards a Luhn/Code 128 and an EAN-13 template."""

    cards: cards_pb2_grpc.CardsServiceStub
    wallet: wallet_pb2_grpc.WalletServiceStub
    program_id: str
    luhn_template_id: str = ""
    ean_template_id: str = ""

    async def setup(self) -> Program:
        await create_wallet_kinds(self.wallet, self.program_id)
        self.luhn_template_id = await self.template(prefix=f"{random.randrange(100, 1000)}", length=16)
        self.ean_template_id = await self.template(
            prefix="2" + f"{random.randrange(100):02d}",
            length=13,
            scheme=c.CHECK_DIGIT_SCHEME_GS1_MOD10,
            symbology=c.BARCODE_SYMBOLOGY_EAN_13,
        )
        return self

    async def template(
        self,
        *,
        prefix: str,
        length: int,
        scheme: int = c.CHECK_DIGIT_SCHEME_LUHN,
        symbology: int = c.BARCODE_SYMBOLOGY_CODE_128,
        qr_format: str = "https://loyalty.example.com/c/{number}",
    ) -> str:
        response = await self.cards.CreateCardNumberTemplate(
            c.CreateCardNumberTemplateRequest(
                idempotency_key=key(),
                actor=OPERATOR,
                template=c.CardNumberTemplate(
                    program_id=self.program_id,
                    display_name=f"Plastic {uuid.uuid4().hex[:8]}",
                    prefix=prefix,
                    length=length,
                    check_digit_scheme=scheme,  # type: ignore[arg-type]
                    barcode_symbology=symbology,  # type: ignore[arg-type]
                    qr_payload_format=qr_format,
                ),
            ),
            timeout=10,
        )
        return str(response.template.template_id)

    async def register(self, phone: str = "", **fields: Any) -> c.Member:
        response: c.RegisterMemberResponse = await self.cards.RegisterMember(
            c.RegisterMemberRequest(
                idempotency_key=key(),
                actor=TERMINAL,
                program_id=self.program_id,
                phone=phone or new_phone(),
                first_name=fields.pop("first_name", "Anna"),
                last_name=fields.pop("last_name", "Petrova"),
                **fields,
            ),
            timeout=10,
        )
        return response.member

    async def batch(self, count: int, card_type: int = c.CARD_TYPE_BONUS, template_id: str = "") -> c.CardBatch:
        response: c.GenerateCardBatchResponse = await self.cards.GenerateCardBatch(
            c.GenerateCardBatchRequest(
                idempotency_key=key(),
                actor=OPERATOR,
                template_id=template_id or self.luhn_template_id,
                card_type=card_type,  # type: ignore[arg-type]
                count=count,
                display_name="Test batch",
            ),
            timeout=60,
        )
        return response.batch

    async def bound_card(self, member_id: str = "", card_type: int = c.CARD_TYPE_BONUS) -> tuple[c.Card, str]:
        """A new ACTIVE card bound to `member_id` (a new member when empty); (card, member_id)."""
        member_id = member_id or (await self.register()).member_id
        response = await self.cards.IssueCard(
            c.IssueCardRequest(
                idempotency_key=key(),
                actor=TERMINAL,
                new_card=c.NewCard(template_id=self.luhn_template_id, type=card_type),  # type: ignore[arg-type]
                binding=c.CardBinding(member_id=member_id),
            ),
            timeout=10,
        )
        return response.card, member_id

    async def resolve_number(
        self, number: str, actor: types_pb2.Actor = TERMINAL, stub: cards_pb2_grpc.CardsServiceStub | None = None
    ) -> c.Resolution:
        response: c.ResolveResponse = await (stub or self.cards).Resolve(
            c.ResolveRequest(
                program_id=self.program_id, identifier=types_pb2.MemberIdentifier(card_number=number), actor=actor
            ),
            timeout=10,
        )
        return response.resolution


async def outbox_events(database: asyncpg.Connection, partition_key: str) -> list[tuple[str, dict[str, Any]]]:
    """(event type, JSON payload) of the outbox rows about a member or an unbound card, in order."""
    rows = await database.fetch(
        "SELECT event_type, payload FROM outbox WHERE partition_key = $1 ORDER BY id", partition_key
    )
    return [(row["event_type"], json.loads(bytes(row["payload"]))) for row in rows]
