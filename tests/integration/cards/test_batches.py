"""Number templates, batch generation and export through a real cards process: every number
valid and unique (the database guarantees it, also under concurrent batches), the export
complete, resumable and in number order."""

from __future__ import annotations

import asyncio
import csv
import io

import asyncpg
import grpc
import pytest
from grpc import aio
from loyalty.cards.v1 import cards_pb2 as c

from tests.integration.cards.support import OPERATOR, TERMINAL, Program, details, key
from tests.unit.cards.test_numbers import ean13_valid, luhn_valid


async def batch_numbers(database: asyncpg.Connection, batch_id: str) -> list[str]:
    rows = await database.fetch("SELECT card_number FROM cards WHERE batch_id = $1 ORDER BY card_number", batch_id)
    return [row["card_number"] for row in rows]


async def test_a_batch_holds_count_generated_cards_with_valid_numbers(
    program: Program, cards_db: asyncpg.Connection
) -> None:
    batch = await program.batch(5000)
    assert batch.card_count == 5000 and batch.program_id == program.program_id
    numbers = await batch_numbers(cards_db, batch.batch_id)
    assert len(numbers) == len(set(numbers)) == 5000
    template = (
        await program.cards.GetCardNumberTemplate(c.GetCardNumberTemplateRequest(template_id=batch.template_id))
    ).template
    assert all(n.startswith(template.prefix) and len(n) == 16 and luhn_valid(n) for n in numbers)
    states = await cards_db.fetch("SELECT DISTINCT state, type FROM cards WHERE batch_id = $1", batch.batch_id)
    assert [(r["state"], r["type"]) for r in states] == [(c.Card.STATE_GENERATED, c.CARD_TYPE_BONUS)]
    assert template.allocated_count == 5000
    ean = await program.batch(2000, template_id=program.ean_template_id)
    assert all(ean13_valid(n) and n.startswith("2") for n in await batch_numbers(cards_db, ean.batch_id))


async def test_concurrent_batches_on_a_small_template_never_share_a_number(
    program: Program, cards_db: asyncpg.Connection
) -> None:
    # 10^6 numbers: three batches of 60,000 collide with each other thousands of times.
    template_id = await program.template(prefix="4", length=8)
    batches = await asyncio.gather(*(program.batch(60_000, template_id=template_id) for _ in range(3)))
    numbers = await cards_db.fetch("SELECT card_number FROM cards WHERE template_id = $1", template_id)
    values = [row["card_number"] for row in numbers]
    assert len(values) == len(set(values)) == 180_000
    assert all(luhn_valid(n) and n.startswith("4") and len(n) == 8 for n in values)
    for batch in batches:
        assert len(await batch_numbers(cards_db, batch.batch_id)) == 60_000


async def test_a_batch_may_not_fill_more_than_half_the_remaining_space(
    program: Program, cards_db: asyncpg.Connection
) -> None:
    template_id = await program.template(prefix="5", length=8)  # 10^6 numbers
    with pytest.raises(aio.AioRpcError) as too_many:
        await program.batch(100_001, template_id=template_id)
    assert details(too_many.value).fields == ["count"]
    # A template 90% drawn (as if by earlier batches) has 100,000 left: at most 50,000 more.
    await cards_db.execute(
        "UPDATE card_number_templates SET allocated_count = 900000 WHERE template_id = $1", template_id
    )
    with pytest.raises(aio.AioRpcError) as full:
        await program.batch(50_001, template_id=template_id)
    assert full.value.code() == grpc.StatusCode.INVALID_ARGUMENT and details(full.value).fields == ["count"]
    assert await cards_db.fetchval("SELECT count(*) FROM card_batches WHERE template_id = $1", template_id) == 0
    await program.batch(50_000, template_id=template_id)


async def test_a_retry_with_the_same_key_returns_the_same_batch(program: Program, cards_db: asyncpg.Connection) -> None:
    request = c.GenerateCardBatchRequest(
        idempotency_key=key(),
        actor=OPERATOR,
        template_id=program.luhn_template_id,
        card_type=c.CARD_TYPE_GIFT,
        count=10,
    )
    first = await program.cards.GenerateCardBatch(request)
    again = await program.cards.GenerateCardBatch(request)
    assert first == again
    assert (
        await cards_db.fetchval(
            "SELECT count(*) FROM card_batches WHERE template_id = $1::uuid", program.luhn_template_id
        )
        == 1
    )


async def test_templates_are_validated_unique_and_listed(program: Program) -> None:
    with pytest.raises(aio.AioRpcError) as refused:
        await program.cards.CreateCardNumberTemplate(
            c.CreateCardNumberTemplateRequest(
                idempotency_key=key(),
                actor=OPERATOR,
                template=c.CardNumberTemplate(
                    program_id=program.program_id,
                    display_name="EAN",
                    prefix="11",
                    length=12,
                    check_digit_scheme=c.CHECK_DIGIT_SCHEME_LUHN,
                    barcode_symbology=c.BARCODE_SYMBOLOGY_EAN_13,
                ),
            )
        )
    assert details(refused.value).fields == ["template.length", "template.prefix", "template.check_digit_scheme"]
    listed = await program.cards.ListCardNumberTemplates(
        c.ListCardNumberTemplatesRequest(program_id=program.program_id, page_size=1)
    )
    assert [t.template_id for t in listed.templates] == [program.luhn_template_id] and listed.next_page_token
    rest = await program.cards.ListCardNumberTemplates(
        c.ListCardNumberTemplatesRequest(program_id=program.program_id, page_token=listed.next_page_token)
    )
    assert [t.template_id for t in rest.templates] == [program.ean_template_id] and not rest.next_page_token
    with pytest.raises(aio.AioRpcError) as terminal:
        await program.cards.GenerateCardBatch(
            c.GenerateCardBatchRequest(
                idempotency_key=key(),
                actor=TERMINAL,
                template_id=program.luhn_template_id,
                card_type=c.CARD_TYPE_BONUS,
                count=1,
            )
        )
    assert terminal.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def export(
    program: Program, batch_id: str, *, formats: tuple[c.CardImageFormat.ValueType, ...] = (), resume: str = ""
) -> list[c.ExportCardBatchResponse]:
    stream = program.cards.ExportCardBatch(
        c.ExportCardBatchRequest(actor=OPERATOR, batch_id=batch_id, image_formats=formats, resume_token=resume),
        timeout=60,
    )
    return [chunk async for chunk in stream]


async def test_export_is_complete_in_number_order_and_resumable(program: Program, cards_db: asyncpg.Connection) -> None:
    batch = await program.batch(20_000)  # about 1.4 MB of CSV: at least two chunks
    chunks = await export(program, batch.batch_id)
    assert [chunk.sequence for chunk in chunks] == list(range(len(chunks))) and len(chunks) > 1
    assert chunks[-1].last and not any(chunk.last for chunk in chunks[:-1])
    assert all(len(chunk.SerializeToString()) <= 1024 * 1024 for chunk in chunks)
    text = b"".join(chunk.csv_data for chunk in chunks).decode()
    rows = list(csv.reader(io.StringIO(text)))
    assert rows[0] == ["card_number", "barcode_payload", "qr_payload"]
    numbers = await batch_numbers(cards_db, batch.batch_id)
    assert [row[0] for row in rows[1:]] == numbers  # every card, in number order
    assert all(row[1] == row[0] and row[2] == f"https://loyalty.example.com/c/{row[0]}" for row in rows[1:])
    assert chunks[-1].rows_exported == chunks[-1].rows_total == 20_000
    # A broken stream resumes after the last chunk received.
    resumed = await export(program, batch.batch_id, resume=chunks[0].resume_token)
    tail = b"".join(chunk.csv_data for chunk in resumed).decode()
    assert b"".join(c.csv_data for c in chunks[:1]).decode() + tail == text
    with pytest.raises(aio.AioRpcError) as foreign:
        await export(program, batch.batch_id, formats=(c.CARD_IMAGE_FORMAT_SVG,), resume=chunks[0].resume_token)
    assert details(foreign.value).fields == ["resume_token"]


async def test_export_with_images(program: Program) -> None:
    batch = await program.batch(3, template_id=program.ean_template_id)
    chunks = await export(program, batch.batch_id, formats=(c.CARD_IMAGE_FORMAT_SVG, c.CARD_IMAGE_FORMAT_PNG))
    images = [image for chunk in chunks for image in chunk.images]
    assert len(images) == 3 * 2 * 2  # per card: barcode and QR, in SVG and PNG
    for image in images:
        if image.format == c.CARD_IMAGE_FORMAT_SVG:
            assert image.data.lstrip().startswith(b"<?xml") or b"<svg" in image.data[:400]
        else:
            assert image.data.startswith(b"\x89PNG\r\n\x1a\n")
    barcode_svgs = [i for i in images if i.kind == c.CARD_IMAGE_KIND_BARCODE and i.format == c.CARD_IMAGE_FORMAT_SVG]
    assert all(i.card_number.encode() in i.data for i in barcode_svgs)  # the human-readable number


async def test_unknown_batch_and_template(program: Program) -> None:
    with pytest.raises(aio.AioRpcError) as missing:
        await export(program, "5d1c7a43-3b0e-4a1f-9f55-0a6c8f2b1e77")
    assert details(missing.value).metadata["resourceType"] == "CardBatch"
    with pytest.raises(aio.AioRpcError) as no_template:
        await program.batch(1, template_id="5d1c7a43-3b0e-4a1f-9f55-0a6c8f2b1e77")
    assert details(no_template.value).metadata["resourceType"] == "CardNumberTemplate"
