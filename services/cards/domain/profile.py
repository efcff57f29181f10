"""Member profile rules: phone numbers (E.164), e-mail, birth date, names, segments, display.

Each `*_violation` returns a description of what is wrong, or "" when the value is fine;
normalisers return the stored form.
"""

from __future__ import annotations

import calendar
import functools
import re
from datetime import date

import phonenumbers

from services.cards.domain.model import BirthDate

PHONE_INPUT_LENGTH_MAX = 32
NAME_LENGTH_MAX = 100
EMAIL_LENGTH_MAX = 254
LANGUAGE_LENGTH_MAX = 35
SEGMENTS_MAX = 20
SEGMENT_LENGTH_MAX = 64
YEAR_MIN, YEAR_MAX = 1900, 9999
MASKED_PHONES_CACHED_MAX = 100_000
_EMAIL = re.compile(
    r"[^@\s]{1,64}@[A-Za-z0-9](?:[A-Za-z0-9-]{0,62}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,62}[A-Za-z0-9])?)+"
)
_LANGUAGE = re.compile(r"[A-Za-z]{2,3}(?:-[A-Za-z0-9]{1,8})*")
_SEGMENT = re.compile(rf"[A-Za-z0-9_.:\-]{{1,{SEGMENT_LENGTH_MAX}}}")


class InvalidPhoneError(ValueError):
    """Not a valid phone number in any reading."""


def normalize_phone(raw: str, *, default_region: str) -> str:
    """Any common notation ("+7 912 345-67-89", "89123456789") -> E.164 ("+79123456789").
    A number without a country code is read in `default_region` (ISO 3166 alpha-2)."""
    text = raw.strip()
    if not text or len(text) > PHONE_INPUT_LENGTH_MAX:
        raise InvalidPhoneError("empty or too long")
    try:
        parsed = phonenumbers.parse(text, default_region)
    except phonenumbers.NumberParseException as error:
        raise InvalidPhoneError(str(error)) from None
    if not phonenumbers.is_valid_number(parsed):
        raise InvalidPhoneError("not a valid number")
    return str(phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164))


@functools.lru_cache(maxsize=MASKED_PHONES_CACHED_MAX)
def mask_phone(e164: str) -> str:
    """The phone for the cashier's screen: "+79123456789" -> "+7 *** ***-**-89" (the country
    code and the last two digits stay). Cached: formatting costs about 80 us, and every Resolve
    shows it."""
    try:
        parsed = phonenumbers.parse(e164, None)
    except phonenumbers.NumberParseException:
        return ""
    text = str(phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.INTERNATIONAL))
    country = f"+{parsed.country_code}"
    head, rest = text[: len(country)], text[len(country) :]
    digits_left = sum(ch.isdigit() for ch in rest)
    masked = []
    for ch in rest:
        if ch.isdigit():
            digits_left -= 1
            masked.append(ch if digits_left < 2 else "*")
        else:
            masked.append(ch)
    return head + "".join(masked)


def display_name(first_name: str, last_name: str) -> str:
    """ "Anna", "Petrova" -> "Anna P."; nothing more is disclosed at the till."""
    if not first_name:
        return ""
    return f"{first_name} {last_name[0]}." if last_name else first_name


def name_violation(value: str) -> str:
    return f"at most {NAME_LENGTH_MAX} characters" if len(value) > NAME_LENGTH_MAX else ""


def normalize_email(value: str) -> str:
    """The domain part is stored lower case (it is case-insensitive; the local part is not)."""
    local, _, domain = value.rpartition("@")
    return f"{local}@{domain.lower()}" if local else value


def email_violation(value: str) -> str:
    if not value:
        return ""
    if len(value) > EMAIL_LENGTH_MAX or not _EMAIL.fullmatch(value):
        return f"a valid e-mail address, at most {EMAIL_LENGTH_MAX} characters"
    return ""


def language_violation(value: str) -> str:
    if value and (len(value) > LANGUAGE_LENGTH_MAX or not _LANGUAGE.fullmatch(value)):
        return "a BCP 47 language tag such as ru or en-GB"
    return ""


def birth_date_violation(value: BirthDate, *, today: date) -> str:
    if not 1 <= value.month <= 12:
        return "month must be 1..12"
    if value.year != 0 and not YEAR_MIN <= value.year <= YEAR_MAX:
        return f"year must be 0 (unknown) or {YEAR_MIN}..{YEAR_MAX}"
    leap_year = 2000  # with the year unknown, 29 February is a valid birthday
    days = calendar.monthrange(value.year or leap_year, value.month)[1]
    if not 1 <= value.day <= days:
        return f"day must be 1..{days} for this month"
    if value.year and date(value.year, value.month, value.day) > today:
        return "must not be in the future"
    return ""


def normalize_segments(values: list[str]) -> tuple[str, ...]:
    return tuple(sorted({v.strip() for v in values}))


def segments_violation(values: tuple[str, ...]) -> str:
    if len(values) > SEGMENTS_MAX:
        return f"at most {SEGMENTS_MAX} segments"
    if any(not _SEGMENT.fullmatch(v) for v in values):
        return f"each 1..{SEGMENT_LENGTH_MAX} characters from [A-Za-z0-9_.:-]"
    return ""
