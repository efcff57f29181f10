"""Card numbers: templates, check digits, drawing random numbers, barcode and QR payloads.

A number is `prefix` + serial digits + one check digit. Serials are drawn uniformly from the
template's whole serial space with the operating system's CSPRNG, so a number reveals nothing
about its neighbours; uniqueness is the database's job (the caller inserts and redraws
collisions).

Check digits of many numbers are computed from tables of 4-digit chunks: the prefix adds a
constant, and every chunk of the serial (aligned from the right, so all chunks share the
same weight pattern) adds a precomputed sum. 100,000 numbers take a fraction of a second.
"""

from __future__ import annotations

import os
import re
import struct
from collections.abc import Sequence

from services.cards.domain.model import CheckDigitScheme, Symbology, Template

LENGTH_MIN, LENGTH_MAX = 8, 19
PREFIX_DIGITS_MAX = 12
SERIAL_DIGITS_MIN = 6
QR_FORMAT_LENGTH_MAX = 256
DISPLAY_NAME_LENGTH_MAX = 100
EAN_13_LENGTH = 13
PLACEHOLDER = "{number}"
_DIGITS = re.compile(r"[0-9]*")
_PRINTABLE_ASCII = re.compile(r"[\x20-\x7e]*")
_CHUNK = 10_000


def _luhn_digit(digit: int, position: int) -> int:
    """Position 0 is the rightmost digit before the check digit; it is doubled."""
    if position % 2:
        return digit
    doubled = digit * 2
    return doubled - 9 if doubled > 9 else doubled


def _gs1_digit(digit: int, position: int) -> int:
    return digit * (3 if position % 2 == 0 else 1)


_WEIGHTS = {CheckDigitScheme.LUHN: _luhn_digit, CheckDigitScheme.GS1_MOD10: _gs1_digit}


def _chunk_table(scheme: CheckDigitScheme) -> list[int]:
    weigh = _WEIGHTS[scheme]
    return [sum(weigh((chunk // 10**i) % 10, i) for i in range(4)) for chunk in range(_CHUNK)]


_TABLES = {scheme: _chunk_table(scheme) for scheme in _WEIGHTS}


def check_digit(payload: str, scheme: CheckDigitScheme) -> int:
    """The check digit to append to `payload` (digits only). Chunks of 4 digits aligned from the
    right all start at an even position, so one table serves them all (Resolve checks every
    number it is given: this is on the hot path)."""
    table = _TABLES[scheme]
    total = 0
    rest = int(payload)
    while rest:
        rest, chunk = divmod(rest, _CHUNK)
        total += table[chunk]
    return (10 - total % 10) % 10


def has_valid_check_digit(number: str, scheme: CheckDigitScheme) -> bool:
    return (
        len(number) >= 2
        and number.isascii()
        and number.isdigit()
        and check_digit(number[:-1], scheme) == int(number[-1])
    )


def serial_digits(prefix: str, length: int) -> int:
    return length - len(prefix) - 1


def capacity(prefix: str, length: int) -> int:
    return int(10 ** serial_digits(prefix, length))


def template_violations(
    *,
    display_name: str,
    prefix: str,
    length: int,
    scheme: CheckDigitScheme,
    symbology: Symbology,
    qr_payload_format: str,
) -> list[tuple[str, str]]:
    """Everything wrong with a template definition, as (field, description) pairs."""
    violations = []
    if not 1 <= len(display_name) <= DISPLAY_NAME_LENGTH_MAX:
        violations.append(("template.display_name", f"1..{DISPLAY_NAME_LENGTH_MAX} characters"))
    if not _DIGITS.fullmatch(prefix) or len(prefix) > PREFIX_DIGITS_MAX:
        violations.append(("template.prefix", f"0..{PREFIX_DIGITS_MAX} digits"))
    if not LENGTH_MIN <= length <= LENGTH_MAX:
        violations.append(("template.length", f"{LENGTH_MIN}..{LENGTH_MAX} digits, check digit included"))
    elif serial_digits(prefix, length) < SERIAL_DIGITS_MIN:
        violations.append(
            ("template.length", f"must leave at least {SERIAL_DIGITS_MIN} serial digits after the prefix")
        )
    if scheme not in _WEIGHTS:
        violations.append(("template.check_digit_scheme", "LUHN or GS1_MOD10"))
    if symbology not in (Symbology.EAN_13, Symbology.CODE_128):
        violations.append(("template.barcode_symbology", "EAN_13 or CODE_128"))
    if symbology is Symbology.EAN_13:
        if length != EAN_13_LENGTH:
            violations.append(("template.length", "exactly 13 with EAN_13"))
        if not prefix.startswith("2"):
            violations.append(("template.prefix", "must start with 2 with EAN_13 (GS1 restricted circulation)"))
        if scheme is not CheckDigitScheme.GS1_MOD10:
            violations.append(("template.check_digit_scheme", "EAN_13 requires GS1_MOD10"))
    if qr_payload_format and (
        len(qr_payload_format) > QR_FORMAT_LENGTH_MAX
        or not _PRINTABLE_ASCII.fullmatch(qr_payload_format)
        or qr_payload_format.count(PLACEHOLDER) != 1
    ):
        violations.append(
            (
                "template.qr_payload_format",
                f"0..{QR_FORMAT_LENGTH_MAX} printable ASCII characters with {PLACEHOLDER} once",
            )
        )
    return violations


def fits(number: str, template: Template) -> bool:
    """Whether `number` could have been drawn from `template` (length, prefix, check digit)."""
    return (
        len(number) == template.length
        and number.startswith(template.prefix)
        and has_valid_check_digit(number, template.check_digit_scheme)
    )


def qr_payload(qr_payload_format: str, number: str) -> str:
    return (qr_payload_format or PLACEHOLDER).replace(PLACEHOLDER, number)


def draw_serials(space: int, count: int) -> list[int]:
    """`count` serials uniform in [0, space) (not necessarily distinct), from the OS CSPRNG.
    Rejection sampling keeps them unbiased: 64-bit values past the last whole multiple of
    `space` are dropped and drawn again."""
    if not 1 <= space <= 2**63:
        raise ValueError("serial space out of range")
    limit = (2**64 // space) * space
    serials: list[int] = []
    while len(serials) < count:
        wanted = count - len(serials)
        extra = wanted + wanted // 16 + 8
        values = struct.unpack(f">{extra}Q", os.urandom(8 * extra))
        serials.extend(value % space for value in values if value < limit)
    return serials[:count]


def numbers_for(template: Template, serials: Sequence[int]) -> list[str]:
    """The full card numbers (prefix, zero-padded serial, check digit) of `serials`."""
    prefix = template.prefix
    width = serial_digits(prefix, template.length)
    table = _TABLES[template.check_digit_scheme]
    weigh = _WEIGHTS[template.check_digit_scheme]
    # The prefix sits left of the serial: its weights start at position `width`.
    base = sum(weigh(int(d), width + i) for i, d in enumerate(reversed(prefix)))
    numbers = []
    for serial in serials:
        total = base
        rest = serial
        while rest:
            rest, chunk = divmod(rest, _CHUNK)
            total += table[chunk]
        numbers.append(prefix + str(serial).zfill(width) + str((10 - total % 10) % 10))
    return numbers


def draw_numbers(template: Template, count: int, *, exclude: set[str]) -> list[str]:
    """`count` distinct new numbers of `template`, none in `exclude`, sorted (inserting in one
    order everywhere keeps concurrent batches from deadlocking on each other's numbers)."""
    space = capacity(template.prefix, template.length)
    drawn: set[str] = set()
    rounds = 0
    while len(drawn) < count:
        rounds += 1
        if rounds > 64:
            raise RuntimeError("could not draw distinct numbers; the template's space is too full")
        missing = count - len(drawn)
        for number in numbers_for(template, draw_serials(space, missing)):
            if number not in exclude:
                drawn.add(number)
    return sorted(drawn)
