"""The cards service's own settings (LOYALTY_CARDS_<NAME>, or LOYALTY_<NAME>), checked at start-up."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Any

from shared.config import Parser, float_between, int_between, read_setting

log = logging.getLogger(__name__)

# FOR DEVELOPMENT ONLY. Anyone who knows the secret can make QR tokens for any member: every
# real deployment sets LOYALTY_CARDS_QR_SECRET (32 random characters or more, from a secret
# store; shorter than 16 is refused).
# The service logs a warning at start-up while this default is in use.
DEV_QR_SECRET = "loyalty-dev-qr-secret-do-not-use-in-production"
QR_SECRET_LENGTH_MIN = 16
_REGION = re.compile(r"[A-Z]{2}")
_KIND = re.compile(r"[a-z0-9_]{1,32}")


def _region(raw: str) -> str:
    if not _REGION.fullmatch(raw.strip().upper()):
        raise ValueError("expected an ISO 3166 alpha-2 region such as RU")
    return raw.strip().upper()


def _secret(raw: str) -> str:
    if len(raw) < QR_SECRET_LENGTH_MIN:
        raise ValueError(f"expected at least {QR_SECRET_LENGTH_MIN} characters")
    return raw


def _optional_secret(raw: str) -> str:
    return _secret(raw) if raw else ""


def _kind(raw: str) -> str:
    if not _KIND.fullmatch(raw):
        raise ValueError("expected an account kind code, 1..32 characters from [a-z0-9_]")
    return raw


@dataclass(frozen=True, kw_only=True)
class CardsSettings:
    # Where a phone number written without a country code is read ("89123456789" in RU).
    phone_region: str
    qr_secrets: tuple[str, ...]  # the first signs, all verify (rotation)
    qr_token_ttl_s: int
    wallet_timeout_s: float
    gift_account_kind: str
    card_account_kind: str
    work_interval_s: float
    # How often the outbox relay looks for new events when there is no backlog.
    outbox_interval_s: float
    pending_grace_s: float
    cache_entries_max: int
    cache_entry_ttl_s: float

    @property
    def qr_refresh_margin_s(self) -> int:
        """The app fetches a new token this long before expiry, leaving the cashier time to scan."""
        return min(10, self.qr_token_ttl_s // 4)


def load_settings() -> CardsSettings:
    """Read and check the settings; a bad value stops start-up with a ConfigError naming it."""

    def read(name: str, parse: Parser, default: object) -> Any:
        return read_setting("cards", name, parse, default)

    secret = str(read("QR_SECRET", _secret, DEV_QR_SECRET))
    previous = str(read("QR_SECRET_PREVIOUS", _optional_secret, ""))
    if secret == DEV_QR_SECRET:
        log.warning("LOYALTY_CARDS_QR_SECRET is not set: QR tokens are signed with the development secret")
    return CardsSettings(
        phone_region=str(read("PHONE_REGION", _region, "RU")),
        qr_secrets=(secret, previous) if previous else (secret,),
        qr_token_ttl_s=int(read("QR_TOKEN_TTL_S", int_between(1, 600), 60)),
        wallet_timeout_s=float(read("WALLET_TIMEOUT_S", float_between(0.05, 60), 2.0)),
        gift_account_kind=str(read("GIFT_ACCOUNT_KIND", _kind, "gift")),
        card_account_kind=str(read("CARD_ACCOUNT_KIND", _kind, "base")),
        work_interval_s=float(read("WORK_INTERVAL_S", float_between(0.05, 3600), 5.0)),
        outbox_interval_s=float(read("OUTBOX_INTERVAL_S", float_between(0.01, 60), 0.5)),
        pending_grace_s=float(read("PENDING_GRACE_S", float_between(0, 3600), 5.0)),
        cache_entries_max=int(read("CACHE_ENTRIES_MAX", int_between(0, 10_000_000), 200_000)),
        cache_entry_ttl_s=float(read("CACHE_ENTRY_TTL_S", float_between(0, 86_400), 60.0)),
    )
