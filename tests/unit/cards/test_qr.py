"""Dynamic QR tokens: signed, expiring, unforgeable; the format the proto promises."""

from __future__ import annotations

import re

import pytest

from services.cards.domain import qr
from services.cards.domain.errors import RefusalError

KEY = qr.derive_key("a-test-secret-of-enough-length")
OTHER_KEY = qr.derive_key("another-secret-of-enough-length")
PROGRAM = "program-1"
MEMBER = "5d1c7a43-3b0e-4a1f-9f55-0a6c8f2b1e77"
CARD = "0f6a1f3e-8e2b-4c59-9d4e-1b2a3c4d5e6f"
TOKEN_SHAPE = re.compile(r"LQ1\.[A-Za-z0-9._-]{1,252}")


def refusal(token: str, *, keys: tuple[bytes, ...] = (KEY,), now_s: float = 1000.0) -> str:
    with pytest.raises(RefusalError) as refused:
        qr.verify_token(token, keys=keys, now_s=now_s)
    return refused.value.reason


@pytest.mark.parametrize("card_id", ["", CARD])
def test_a_token_verifies_until_it_expires(card_id: str) -> None:
    token, claims = qr.issue_token(program_id=PROGRAM, key=KEY, member_id=MEMBER, card_id=card_id, expire_s=1060)
    assert TOKEN_SHAPE.fullmatch(token) and not token.isdigit() and len(token) <= 256
    assert qr.verify_token(token, keys=(KEY,), now_s=1059.9) == claims
    assert (claims.member_id, claims.card_id, claims.expire_s) == (MEMBER, card_id, 1060)
    assert claims.program_digest == qr.program_digest(PROGRAM) != qr.program_digest("program-2")
    assert refusal(token, now_s=1060) == "QR_TOKEN_EXPIRED"


def test_every_token_is_new() -> None:
    tokens = {
        qr.issue_token(program_id=PROGRAM, key=KEY, member_id=MEMBER, card_id="", expire_s=1060)[0] for _ in range(100)
    }
    assert len(tokens) == 100


def test_an_altered_token_is_invalid() -> None:
    token, _ = qr.issue_token(program_id=PROGRAM, key=KEY, member_id=MEMBER, card_id=CARD, expire_s=1060)
    signed, _, mac = token.rpartition(".")
    for position in range(4, len(signed)):
        flipped = signed[:position] + ("A" if signed[position] != "A" else "B") + signed[position + 1 :]
        assert refusal(f"{flipped}.{mac}") == "QR_TOKEN_INVALID"
    assert refusal(signed + "." + mac[::-1]) == "QR_TOKEN_INVALID"


def test_a_later_expiry_cannot_be_forged() -> None:
    token, _ = qr.issue_token(program_id=PROGRAM, key=KEY, member_id=MEMBER, card_id="", expire_s=1060)
    longer, _ = qr.issue_token(program_id=PROGRAM, key=OTHER_KEY, member_id=MEMBER, card_id="", expire_s=999_999)
    # The longer-lived body with the original signature, and the foreign signature: both refused.
    assert refusal(longer.rpartition(".")[0] + "." + token.rpartition(".")[2]) == "QR_TOKEN_INVALID"
    assert refusal(longer) == "QR_TOKEN_INVALID"


@pytest.mark.parametrize("junk", ["", "LQ1.", "LQ1..", "7788000000000006", "LQ1.@@@.@@@", "LQ2.abc.def", "x" * 300])
def test_malformed_tokens_are_invalid(junk: str) -> None:
    assert refusal(junk) == "QR_TOKEN_INVALID"


def test_the_previous_secret_still_verifies_during_rotation() -> None:
    token, _ = qr.issue_token(program_id=PROGRAM, key=OTHER_KEY, member_id=MEMBER, card_id="", expire_s=1060)
    assert qr.verify_token(token, keys=(KEY, OTHER_KEY), now_s=1000).member_id == MEMBER
