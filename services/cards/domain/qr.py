"""Dynamic QR tokens: short-lived, HMAC-signed, consumed by the first terminal that presents them.

    token   = "LQ1." base64url(body) "." base64url(mac)
    body    = flags (1 byte: 1 = a card id follows) | expire (uint32, Unix seconds)
              | token id (12 random bytes) | program (first 8 bytes of SHA-256 of the program id)
              | member id (16-byte UUID) | [card id (16-byte UUID)]
    mac     = HMAC-SHA256(key, "LQ1." base64url(body)), first 16 bytes

The expiry is inside the signature, so it cannot be extended; the token id is what single use
is recorded under (by the caller, in the database); the program lets a till of another program
be refused before the token is consumed. Nothing secret is inside: the body is only
signed, not encrypted (it names ids, never a phone or a card number). The key is derived from a
configured secret; several secrets may be accepted at once (the first signs) so the secret can
be rotated without invalidating tokens in flight. Pure: the caller passes the clock.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import struct
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from services.cards.domain.errors import RefusalError

PREFIX = "LQ1."
TOKEN_LENGTH_MAX = 256
TOKEN_ID_BYTES = 12
PROGRAM_BYTES = 8
MAC_BYTES = 16
_HEADER = struct.Struct(">BI")
_HAS_CARD = 1
_KEY_CONTEXT = b"loyalty.cards.v1 qr token key"


@dataclass(frozen=True)
class QrClaims:
    token_id: bytes
    program_digest: bytes
    member_id: str
    card_id: str
    expire_s: int


def program_digest(program_id: str) -> bytes:
    return hashlib.sha256(program_id.encode()).digest()[:PROGRAM_BYTES]


def derive_key(secret: str) -> bytes:
    return hmac.new(secret.encode(), _KEY_CONTEXT, hashlib.sha256).digest()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _mac(key: bytes, signed_part: str) -> bytes:
    return hmac.new(key, signed_part.encode(), hashlib.sha256).digest()[:MAC_BYTES]


def issue_token(*, key: bytes, program_id: str, member_id: str, card_id: str, expire_s: int) -> tuple[str, QrClaims]:
    token_id = os.urandom(TOKEN_ID_BYTES)
    program = program_digest(program_id)
    body = _HEADER.pack(_HAS_CARD if card_id else 0, expire_s) + token_id + program + uuid.UUID(member_id).bytes
    if card_id:
        body += uuid.UUID(card_id).bytes
    signed_part = PREFIX + _b64(body)
    token = f"{signed_part}.{_b64(_mac(key, signed_part))}"
    return token, QrClaims(token_id, program, member_id, card_id, expire_s)


def _invalid(why: str) -> RefusalError:
    return RefusalError("QR_TOKEN_INVALID", f"the QR token is not valid: {why}")


def verify_token(token: str, *, keys: Sequence[bytes], now_s: float) -> QrClaims:
    """The claims of an authentic, unexpired token; QR_TOKEN_INVALID or QR_TOKEN_EXPIRED otherwise."""
    if len(token) > TOKEN_LENGTH_MAX or not token.startswith(PREFIX):
        raise _invalid("not a platform QR token")
    signed_part, _, mac_text = token.rpartition(".")
    try:
        body, mac = _unb64(signed_part[len(PREFIX) :]), _unb64(mac_text)
    except (binascii.Error, ValueError):
        raise _invalid("malformed") from None
    if not any(hmac.compare_digest(mac, _mac(key, signed_part)) for key in keys):
        raise _invalid("the signature does not verify")
    claims = _parse(body)
    if now_s >= claims.expire_s:
        raise RefusalError("QR_TOKEN_EXPIRED", "the QR token has expired; ask the member to refresh it")
    return claims


def _parse(body: bytes) -> QrClaims:
    program_at = _HEADER.size + TOKEN_ID_BYTES
    member_at = program_at + PROGRAM_BYTES
    fixed = member_at + 16
    if len(body) not in (fixed, fixed + 16):
        raise _invalid("malformed")
    flags, expire_s = _HEADER.unpack_from(body)
    has_card = bool(flags & _HAS_CARD)
    if has_card != (len(body) == fixed + 16):
        raise _invalid("malformed")
    token_id = body[_HEADER.size : program_at]
    member_id = str(uuid.UUID(bytes=body[member_at:fixed]))
    card_id = str(uuid.UUID(bytes=body[fixed:])) if has_card else ""
    return QrClaims(token_id, body[program_at:member_at], member_id, card_id, expire_s)
