"""Refusals decided by the domain, without any transport: the edge maps them to rich statuses.

`reason` is a value of loyalty.common.v1.ErrorReason without its prefix (shared.errors.Reason
holds the same names), so the mapping is by name and needs no table here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True)
class RefusalError(Exception):
    reason: str
    message: str
    metadata: Mapping[str, str] = field(default_factory=dict)
    # (field path, description) pairs for INVALID_ARGUMENT.
    violations: Sequence[tuple[str, str]] = ()

    def __str__(self) -> str:
        return f"{self.reason}: {self.message}"


def invalid(field_path: str, description: str) -> RefusalError:
    return RefusalError(
        "INVALID_ARGUMENT", f"invalid request: {field_path}: {description}", violations=[(field_path, description)]
    )


def check(condition: bool, message: str) -> None:
    """An invariant of our own code (kept under `python -O`, unlike assert): a failure is a bug."""
    if not condition:
        raise RuntimeError(f"invariant violated: {message}")
