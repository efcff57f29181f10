"""Exporting a batch for the print shop: CSV chunks in card number order, optional images.

Chunks stay under 1 MiB. Each carries a resume token (the batch, the image formats, the last
number sent and the rows sent so far), so a broken stream continues after the last chunk the
client received. Images are drawn off the event loop's own turn: the barcode with
python-barcode (SVG, with the human-readable number) or as a 300 dpi PNG drawn here from the
barcode's modules (python-barcode's PNG writer needs Pillow, which the platform does not ship;
the PNG has no human-readable line), the QR code with segno.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import csv
import io
import json
import struct
import zlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

import asyncpg
import barcode
import segno
from barcode.writer import SVGWriter

from services.cards import store
from services.cards.domain.model import Batch, Symbology, Template
from services.cards.domain.numbers import qr_payload
from shared.errors import FieldViolation, invalid_argument

HEADER = "card_number,barcode_payload,qr_payload\n"
CHUNK_BYTES_MAX = 1024 * 1024
# Room for the protobuf framing and the other fields of a chunk.
CHUNK_BYTES_BUDGET = CHUNK_BYTES_MAX - 64 * 1024
CSV_PAGE_ROWS = 5000
IMAGE_PAGE_ROWS = 50
SVG, PNG = 1, 2  # CardImageFormat
BARCODE, QR = 1, 2  # CardImageKind
PNG_DPI = 300
PNG_MODULE_PX = 4  # 0.34 mm at 300 dpi
PNG_BAR_HEIGHT_PX = 300  # one inch
PNG_QUIET_MODULES = 10


@dataclass(frozen=True)
class ResumePoint:
    batch_id: str
    formats: tuple[int, ...]
    last_number: str
    rows_exported: int


def encode_resume(point: ResumePoint) -> str:
    document = [point.batch_id, list(point.formats), point.last_number, point.rows_exported]
    return base64.urlsafe_b64encode(json.dumps(document).encode()).decode()


def decode_resume(token: str, *, batch_id: str, formats: tuple[int, ...]) -> ResumePoint:
    try:
        batch, token_formats, last_number, rows = json.loads(base64.urlsafe_b64decode(token.encode()))
        point = ResumePoint(str(batch), tuple(int(f) for f in token_formats), str(last_number), int(rows))
    except (ValueError, TypeError, binascii.Error):
        raise invalid_argument([FieldViolation("resume_token", "not a token of ExportCardBatch")]) from None
    if point.batch_id != batch_id or point.formats != formats or not point.last_number.isdigit():
        raise invalid_argument([FieldViolation("resume_token", "a token of another batch or other image formats")])
    return point


@dataclass(frozen=True)
class Image:
    card_number: str
    kind: int
    format: int
    data: bytes


@dataclass(frozen=True, kw_only=True)
class Chunk:
    sequence: int
    csv_data: bytes
    images: list[Image]
    row_count: int
    rows_exported: int
    rows_total: int
    resume_token: str
    last: bool


@dataclass(frozen=True)
class _Row:
    number: str
    csv_line: bytes
    images: tuple[Image, ...]

    @property
    def size(self) -> int:
        return len(self.csv_line) + sum(len(image.data) + len(image.card_number) + 16 for image in self.images)


class _ChunkBuilder:
    """Rows gathered for one chunk (joined once at the end: no quadratic byte concatenation)."""

    def __init__(self, sequence: int, *, header: bool) -> None:
        self.sequence = sequence
        self.parts: list[bytes] = [HEADER.encode()] if header else []
        self.images: list[Image] = []
        self.size = len(HEADER) if header else 0
        self.rows = 0

    def fits(self, row: _Row) -> bool:
        return self.rows == 0 or self.size + row.size <= CHUNK_BYTES_BUDGET

    def add(self, row: _Row) -> None:
        self.parts.append(row.csv_line)
        self.images.extend(row.images)
        self.size += row.size
        self.rows += 1

    def chunk(self, batch: Batch, *, formats: tuple[int, ...], last_number: str, exported: int, last: bool) -> Chunk:
        token = encode_resume(ResumePoint(batch.batch_id, formats, last_number, exported)) if last_number else ""
        return Chunk(
            sequence=self.sequence,
            csv_data=b"".join(self.parts),
            images=self.images,
            row_count=self.rows,
            rows_exported=exported,
            rows_total=batch.card_count,
            resume_token=token,
            last=last,
        )


async def export_batch(
    pool: asyncpg.Pool, batch: Batch, template: Template, *, formats: tuple[int, ...], resume: ResumePoint | None
) -> AsyncIterator[Chunk]:
    """The chunks of the export, from the start or after `resume`."""
    after = resume.last_number if resume else ""
    exported = resume.rows_exported if resume else 0
    page_rows = IMAGE_PAGE_ROWS if formats else CSV_PAGE_ROWS
    builder = _ChunkBuilder(0, header=resume is None)
    while True:
        async with pool.acquire() as connection:
            numbers = await store.batch_numbers(connection, batch.batch_id, after=after, limit=page_rows)
        for row in await _rows(numbers, template, formats):
            if not builder.fits(row):
                yield builder.chunk(batch, formats=formats, last_number=after, exported=exported, last=False)
                builder = _ChunkBuilder(builder.sequence + 1, header=False)
            builder.add(row)
            exported += 1
            after = row.number
        if len(numbers) < page_rows:
            yield builder.chunk(batch, formats=formats, last_number=after, exported=exported, last=True)
            return


async def _rows(numbers: Sequence[str], template: Template, formats: tuple[int, ...]) -> list[_Row]:
    if not formats:
        return [_Row(number, _csv_line(number, template), ()) for number in numbers]
    return await asyncio.to_thread(_rows_with_images, numbers, template, formats)


def _rows_with_images(numbers: Sequence[str], template: Template, formats: tuple[int, ...]) -> list[_Row]:
    rows = []
    for number in numbers:
        images = []
        for image_format in formats:
            images.append(Image(number, BARCODE, image_format, barcode_image(number, template.symbology, image_format)))
            payload = qr_payload(template.qr_payload_format, number)
            images.append(Image(number, QR, image_format, qr_image(payload, image_format)))
        rows.append(_Row(number, _csv_line(number, template), tuple(images)))
    return rows


def _csv_line(number: str, template: Template) -> bytes:
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerow([number, number, qr_payload(template.qr_payload_format, number)])
    return out.getvalue().encode()


def _barcode(number: str, symbology: Symbology, writer: object | None) -> barcode.Barcode:
    name = "ean13" if symbology is Symbology.EAN_13 else "code128"
    code = barcode.get(name, number, writer=writer)
    if code.get_fullcode() != number:  # python-barcode recomputes EAN-13's check digit
        raise RuntimeError(f"invariant violated: barcode payload {code.get_fullcode()} is not the card number")
    return code


def barcode_image(number: str, symbology: Symbology, image_format: int) -> bytes:
    if image_format == SVG:
        out = io.BytesIO()
        _barcode(number, symbology, SVGWriter()).write(out)
        return out.getvalue()
    modules = "".join(_barcode(number, symbology, None).build())
    return _png_bars(modules)


def qr_image(payload: str, image_format: int) -> bytes:
    out = io.BytesIO()
    code = segno.make(payload, error="m")
    if image_format == SVG:
        code.save(out, kind="svg", scale=4)
    else:
        code.save(out, kind="png", scale=10, dpi=PNG_DPI)
    return out.getvalue()


def _png_bars(modules: str) -> bytes:
    """A 1-bit grayscale PNG of the bars (1 = bar, black), with quiet zones, 300 dpi."""
    quiet = "0" * PNG_QUIET_MODULES
    pixels = "".join(("0" if m == "1" else "1") * PNG_MODULE_PX for m in quiet + modules + quiet)
    width = len(pixels)
    row = b"\x00" + int(pixels.ljust(-(-width // 8) * 8, "1"), 2).to_bytes(-(-width // 8), "big")
    raw = row * PNG_BAR_HEIGHT_PX
    per_metre = round(PNG_DPI / 0.0254)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, PNG_BAR_HEIGHT_PX, 1, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"pHYs", struct.pack(">IIB", per_metre, per_metre, 1))
        + chunk(b"IDAT", zlib.compress(raw, 9))
        + chunk(b"IEND", b"")
    )
