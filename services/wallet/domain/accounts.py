"""Account kinds and the rules of opening accounts. Pure; no I/O."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

from services.wallet.domain.model import ExpiryMode, OverdraftMode, Policy, SystemRole, Unit

KIND_CODE = re.compile(r"[a-z0-9_]{1,32}")
CURRENCY_CODE = re.compile(r"[A-Z]{3}")
# Opened with every kind's unit by CreateAccountKind: the other side of every member movement.
PROGRAM_SYSTEM_ROLES = (SystemRole.ISSUANCE, SystemRole.REDEMPTION, SystemRole.EXPIRY, SystemRole.ADJUSTMENT)
STRIPES = 16
LIFETIME_S_MIN, LIFETIME_S_MAX = 86_400, 315_360_000
ACTIVATION_DELAY_S_MAX = 31_536_000


@dataclass(frozen=True)
class AccountKind:
    program_id: str
    kind: str
    display_name: str
    unit: Unit
    policy: Policy
    open_by_default: bool
    create_time: datetime | None = None
    update_time: datetime | None = None

    def same_definition(self, other: AccountKind) -> bool:
        return (self.display_name, self.unit, self.policy, self.open_by_default) == (
            other.display_name,
            other.unit,
            other.policy,
            other.open_by_default,
        )


def kind_violations(kind: AccountKind) -> list[tuple[str, str]]:
    """Field violations of a kind definition, as (proto field path, description)."""
    violations = []
    if not kind.program_id or len(kind.program_id) > 64:
        violations.append(("account_kind.program_id", "required, at most 64 characters"))
    if not KIND_CODE.fullmatch(kind.kind):
        violations.append(("account_kind.kind", "1..32 characters from [a-z0-9_]"))
    if not 1 <= len(kind.display_name) <= 64:
        violations.append(("account_kind.display_name", "1..64 characters"))
    if kind.unit.type not in (1, 2):
        violations.append(("account_kind.unit.type", "POINTS or MONEY"))
    if kind.unit.type == 2 and not CURRENCY_CODE.fullmatch(kind.unit.currency_code):
        violations.append(("account_kind.unit.currency_code", "an ISO 4217 code for MONEY"))
    if kind.unit.type == 1 and kind.unit.currency_code:
        violations.append(("account_kind.unit.currency_code", "must be empty for POINTS"))
    if not 0 <= kind.unit.scale <= 6:
        violations.append(("account_kind.unit.scale", "0..6"))
    violations += _policy_violations(kind.policy)
    return violations


def _policy_violations(policy: Policy) -> list[tuple[str, str]]:
    violations = []
    if policy.debt_limit_minor < 0:
        violations.append(("account_kind.policy.debt_limit_minor", "must not be negative"))
    if policy.balance_max_minor < 0:
        violations.append(("account_kind.policy.balance_max_minor", "must not be negative"))
    if not 0 <= policy.activation_delay_s <= ACTIVATION_DELAY_S_MAX:
        violations.append(("account_kind.policy.activation_delay_s", f"0..{ACTIVATION_DELAY_S_MAX}"))
    if policy.expiry_mode is ExpiryMode.AFTER_DURATION and not LIFETIME_S_MIN <= policy.lifetime_s <= LIFETIME_S_MAX:
        violations.append(("account_kind.policy.expiry_rule.lifetime_s", f"{LIFETIME_S_MIN}..{LIFETIME_S_MAX}"))
    if policy.expiry_mode is ExpiryMode.FIXED_TIME and policy.fixed_expiry_time is None:
        violations.append(("account_kind.policy.expiry_rule.fixed_expiry_time", "required for FIXED_TIME"))
    return violations


def balance_floor(policy: Policy | None) -> int | None:
    """The database's last line of defence for an account's posted - held (see the migration)."""
    if policy is None:
        return None
    if policy.overdraft_mode is OverdraftMode.NO_OVERDRAFT:
        return 0
    return -policy.debt_limit_minor if policy.debt_limit_minor else None
