"""The cards service's settings: defaults, normalisation, and bad values that stop start-up."""

from __future__ import annotations

import pytest

from services.cards.settings import DEV_QR_SECRET, load_settings
from shared.config import ConfigError


def test_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("LOYALTY_CARDS_QR_SECRET", "LOYALTY_QR_SECRET", "LOYALTY_CARDS_PHONE_REGION", "LOYALTY_PHONE_REGION"):
        monkeypatch.delenv(name, raising=False)
    settings = load_settings()
    assert settings.qr_secrets == (DEV_QR_SECRET,) and settings.qr_token_ttl_s == 60
    assert settings.phone_region == "RU" and settings.qr_refresh_margin_s == 10


def test_rotation_and_normalisation(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOYALTY_CARDS_QR_SECRET", "n" * 32)
    monkeypatch.setenv("LOYALTY_CARDS_QR_SECRET_PREVIOUS", "o" * 32)
    monkeypatch.setenv("LOYALTY_CARDS_PHONE_REGION", "de")
    monkeypatch.setenv("LOYALTY_CARDS_QR_TOKEN_TTL_S", "8")
    settings = load_settings()
    assert settings.qr_secrets == ("n" * 32, "o" * 32)
    assert settings.phone_region == "DE" and settings.qr_refresh_margin_s == 2


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("LOYALTY_CARDS_QR_SECRET", "short"),
        ("LOYALTY_CARDS_PHONE_REGION", "Russia"),
        ("LOYALTY_CARDS_QR_TOKEN_TTL_S", "0"),
        ("LOYALTY_CARDS_GIFT_ACCOUNT_KIND", "Gift Card"),
        ("LOYALTY_CARDS_CACHE_ENTRIES_MAX", "-1"),
    ],
)
def test_bad_values_name_the_variable(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match=name):
        load_settings()
