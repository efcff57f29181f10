"""Member profile rules: phone normalisation and masking, e-mail, birth dates, segments."""

from __future__ import annotations

from datetime import date

import pytest

from services.cards.domain import profile
from services.cards.domain.model import BirthDate

PHONES = [
    ("+7 912 345-67-89", "RU", "+79123456789"),
    ("89123456789", "RU", "+79123456789"),
    ("8 (912) 345 67 89", "RU", "+79123456789"),
    ("+79123456789", "DE", "+79123456789"),
    ("  +44 20 7946 0958 ", "RU", "+442079460958"),
    ("030 123456", "DE", "+4930123456"),
]


@pytest.mark.parametrize(("raw", "region", "e164"), PHONES)
def test_phones_are_normalised_to_e164(raw: str, region: str, e164: str) -> None:
    assert profile.normalize_phone(raw, default_region=region) == e164


@pytest.mark.parametrize("raw", ["", "12", "+7 912", "not a phone", "+7 000 000-00-00", "9" * 40, "+999 123456789"])
def test_invalid_phones_are_refused(raw: str) -> None:
    with pytest.raises(profile.InvalidPhoneError):
        profile.normalize_phone(raw, default_region="RU")


def test_phones_are_masked_for_the_till() -> None:
    assert profile.mask_phone("+79123456789") == "+7 *** ***-**-89"
    assert profile.mask_phone("+442079460958").endswith("58")
    assert profile.mask_phone("+442079460958").count("*") == 8


@pytest.mark.parametrize(
    ("first", "last", "shown"), [("Anna", "Petrova", "Anna P."), ("Anna", "", "Anna"), ("", "Petrova", "")]
)
def test_display_name(first: str, last: str, shown: str) -> None:
    assert profile.display_name(first, last) == shown


@pytest.mark.parametrize(
    ("email", "ok"),
    [
        ("anna@example.com", True),
        ("a.b+c@sub.example.org", True),
        ("", True),
        ("anna@", False),
        ("@x.org", False),
        ("anna@localhost", False),
        ("an na@example.com", False),
        ("a@" + "x" * 250 + ".com", False),
    ],
)
def test_email_rules(email: str, ok: bool) -> None:
    assert (profile.email_violation(email) == "") is ok


def test_email_domain_is_stored_lower_case() -> None:
    assert profile.normalize_email("Anna.P@Example.COM") == "Anna.P@example.com"


TODAY = date(2026, 3, 1)


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        (BirthDate(1990, 5, 17), True),
        (BirthDate(0, 2, 29), True),
        (BirthDate(2023, 2, 29), False),
        (BirthDate(1990, 13, 1), False),
        (BirthDate(1990, 4, 31), False),
        (BirthDate(1899, 1, 1), False),
        (BirthDate(2026, 3, 2), False),
        (BirthDate(2026, 3, 1), True),
        (BirthDate(0, 0, 0), False),
    ],
)
def test_birth_date_rules(value: BirthDate, ok: bool) -> None:
    assert (profile.birth_date_violation(value, today=TODAY) == "") is ok


def test_segments_are_deduplicated_sorted_and_bounded() -> None:
    assert profile.normalize_segments(["GOLD", " STAFF ", "GOLD"]) == ("GOLD", "STAFF")
    assert profile.segments_violation(("GOLD", "STAFF")) == ""
    assert profile.segments_violation(tuple(f"S{i}" for i in range(21))) != ""
    assert profile.segments_violation(("not ok",)) != ""


@pytest.mark.parametrize(
    ("tag", "ok"), [("ru", True), ("en-GB", True), ("zh-Hant-TW", True), ("", True), ("r", False), ("en_GB", False)]
)
def test_language_tags(tag: str, ok: bool) -> None:
    assert (profile.language_violation(tag) == "") is ok
