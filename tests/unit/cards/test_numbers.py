"""Card numbers: check digits against known values and an independent implementation, template
rules, and every drawn number valid, distinct and inside its template."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.cards.domain import numbers
from services.cards.domain.model import Actor, ActorType, CheckDigitScheme, Symbology, Template

LUHN, GS1 = CheckDigitScheme.LUHN, CheckDigitScheme.GS1_MOD10


def template(prefix: str, length: int, scheme: CheckDigitScheme = LUHN) -> Template:
    return Template(
        template_id="t",
        program_id="p",
        display_name="Plastic",
        prefix=prefix,
        length=length,
        check_digit_scheme=scheme,
        symbology=Symbology.EAN_13 if scheme is GS1 else Symbology.CODE_128,
        qr_payload_format="",
        capacity=numbers.capacity(prefix, length),
        allocated_count=0,
        create_time=datetime(2026, 1, 1, tzinfo=UTC),
        creator=Actor(ActorType.OPERATOR, "o"),
    )


def luhn_valid(number: str) -> bool:
    """Independent Luhn (ISO/IEC 7812-1): double every second digit from the right."""
    total = 0
    for index, char in enumerate(reversed(number)):
        digit = int(char)
        if index % 2 == 1:
            digit = digit * 2 - 9 if digit * 2 > 9 else digit * 2
        total += digit
    return total % 10 == 0


def ean13_valid(number: str) -> bool:
    """Independent EAN-13: weights 1, 3 from the left over the first 12 digits."""
    if len(number) != 13:
        return False
    total = sum(int(d) * (1 if i % 2 == 0 else 3) for i, d in enumerate(number[:12]))
    return (10 - total % 10) % 10 == int(number[12])


def gs1_valid(number: str) -> bool:
    """Independent GS1 mod 10 of any length: weights 1, 3 from the right, check digit included."""
    return sum(int(d) * (3 if i % 2 else 1) for i, d in enumerate(reversed(number))) % 10 == 0


KNOWN = [
    ("7992739871", LUHN, 3),  # the Wikipedia Luhn example
    ("453201511283036", LUHN, 6),
    ("400638133393", GS1, 1),  # EAN-13 4006381333931
    ("590123412345", GS1, 7),  # EAN-13 5901234123457
    ("200000000000", GS1, 8),
]


@pytest.mark.parametrize(("payload", "scheme", "digit"), KNOWN)
def test_known_check_digits(payload: str, scheme: CheckDigitScheme, digit: int) -> None:
    assert numbers.check_digit(payload, scheme) == digit
    assert numbers.has_valid_check_digit(payload + str(digit), scheme)


@given(st.text(alphabet="0123456789", min_size=7, max_size=18))
def test_luhn_matches_an_independent_implementation(payload: str) -> None:
    number = payload + str(numbers.check_digit(payload, LUHN))
    assert luhn_valid(number)


@given(st.text(alphabet="0123456789", min_size=12, max_size=12))
def test_gs1_matches_ean13(payload: str) -> None:
    assert ean13_valid(payload + str(numbers.check_digit(payload, GS1)))


@given(st.text(alphabet="0123456789", min_size=8, max_size=19), st.integers(0, 18), st.integers(1, 9))
def test_any_single_digit_typo_is_caught(number_payload: str, position: int, delta: int) -> None:
    number = number_payload[:-1] + str(numbers.check_digit(number_payload[:-1], LUHN))
    position %= len(number)
    typo = number[:position] + str((int(number[position]) + delta) % 10) + number[position + 1 :]
    assert not numbers.has_valid_check_digit(typo, LUHN)


@pytest.mark.parametrize(
    ("prefix", "length", "scheme"),
    [("7788", 16, LUHN), ("", 8, LUHN), ("12", 19, LUHN), ("22", 13, GS1), ("2999", 13, GS1), ("9", 10, GS1)],
)
def test_every_drawn_number_is_valid_distinct_sorted_and_inside_the_template(
    prefix: str, length: int, scheme: CheckDigitScheme
) -> None:
    subject = template(prefix, length, scheme)
    drawn = numbers.draw_numbers(subject, 5000, exclude=set())
    assert len(drawn) == len(set(drawn)) == 5000
    assert drawn == sorted(drawn)
    for number in drawn:
        assert len(number) == length and number.startswith(prefix) and number.isdigit()
        assert numbers.fits(number, subject)
        assert luhn_valid(number) if scheme is LUHN else gs1_valid(number)
        assert ean13_valid(number) or length != 13 or scheme is LUHN


def test_excluded_numbers_are_never_drawn_again() -> None:
    subject = template("", 8)  # 10^7 serials: small enough to collide in a test
    first = set(numbers.draw_numbers(subject, 20_000, exclude=set()))
    second = numbers.draw_numbers(subject, 20_000, exclude=first)
    assert not first & set(second)


def test_serials_spread_over_the_whole_space() -> None:
    space = 10**12
    serials = numbers.draw_serials(space, 20_000)
    assert all(0 <= s < space for s in serials)
    # Uniform: each tenth of the space gets about a tenth (a generous band; 20,000 draws).
    tenths = [sum(1 for s in serials if k * space // 10 <= s < (k + 1) * space // 10) for k in range(10)]
    assert all(1700 < count < 2300 for count in tenths), tenths


TEMPLATE_CASES = [
    ({}, []),
    ({"display_name": ""}, ["template.display_name"]),
    ({"prefix": "12a"}, ["template.prefix"]),
    ({"prefix": "1234567890123", "length": 19}, ["template.prefix", "template.length"]),
    ({"length": 7}, ["template.length"]),
    ({"length": 20}, ["template.length"]),
    ({"prefix": "1234567890", "length": 16}, ["template.length"]),  # 5 serial digits
    ({"scheme": CheckDigitScheme.UNSPECIFIED}, ["template.check_digit_scheme"]),
    ({"symbology": Symbology.UNSPECIFIED}, ["template.barcode_symbology"]),
    ({"symbology": Symbology.EAN_13}, ["template.length", "template.prefix", "template.check_digit_scheme"]),
    ({"symbology": Symbology.EAN_13, "length": 13, "prefix": "22", "scheme": GS1}, []),
    ({"qr_payload_format": "https://x.example/c/"}, ["template.qr_payload_format"]),
    ({"qr_payload_format": "{number}/{number}"}, ["template.qr_payload_format"]),
    ({"qr_payload_format": "https://x.example/c/{number}"}, []),
]


@pytest.mark.parametrize(("changes", "fields"), TEMPLATE_CASES)
def test_template_rules(changes: dict[str, object], fields: list[str]) -> None:
    values: dict[str, object] = {
        "display_name": "Plastic 2026",
        "prefix": "7788",
        "length": 16,
        "scheme": LUHN,
        "symbology": Symbology.CODE_128,
        "qr_payload_format": "",
    }
    values.update(changes)
    found = numbers.template_violations(**values)  # type: ignore[arg-type]
    assert [field for field, _ in found] == fields


def test_qr_payload_defaults_to_the_bare_number() -> None:
    assert numbers.qr_payload("", "7788000000000006") == "7788000000000006"
    assert numbers.qr_payload("https://x.example/c/{number}", "12345678") == "https://x.example/c/12345678"
