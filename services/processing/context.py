"""The program's configuration as the register flow sees it, cached in the process.

Terminals, outlets, partners and the program's settings take effect at once when an operator
changes them; rule set versions are immutable. The hot path must not read them from PostgreSQL
on every call, so they are cached here and the cache is dropped whenever the configuration
generation (a counter every admin write bumps in its own transaction) has moved. The generation
is checked at most once per `refresh_s`, so a change reaches every processing process within
that time (one second by default). The rule set in force is re-read on the same schedule, which
also picks up a scheduled version once its time has come.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from services.processing import rulesets
from services.processing.store import program as program_store
from shared.errors import DomainError, Reason


@dataclass(frozen=True)
class CachedRuleSet:
    version: int
    rule_set: Any  # services.processing.domain.rules.RuleSet


class ProgramContext:
    def __init__(self, pool: asyncpg.Pool, *, refresh_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.pool = pool
        self.refresh_s = refresh_s
        self.clock = clock
        self._generation: int | None = None
        self._checked_at = float("-inf")
        self._terminals: dict[str, Any] = {}
        self._settings: Any = None
        self._current: CachedRuleSet | None = None
        # When the next scheduled version takes effect (None: none is scheduled).
        self._current_until: datetime | None = None
        self._versions: dict[int, Any] = {}

    async def _refresh(self) -> None:
        if self.clock() - self._checked_at < self.refresh_s:
            return
        async with self.pool.acquire() as connection:
            generation = await program_store.config_generation(connection)
        self._checked_at = self.clock()
        if generation != self._generation:
            self._generation = generation
            self._terminals.clear()
            self._settings = None
            self._current = None

    async def settings(self) -> Any:
        await self._refresh()
        if self._settings is None:
            async with self.pool.acquire() as connection:
                settings = await program_store.load_program_settings(connection)
            if settings is None:
                raise DomainError(Reason.PERMISSION_DENIED, "the program is not configured yet (ProgramAdminService)")
            self._settings = settings
        return self._settings

    async def terminal(self, terminal_id: str) -> Any:
        """The terminal with its outlet and partner; refuses unknown and unusable terminals."""
        await self._refresh()
        context = self._terminals.get(terminal_id)
        if context is None:
            async with self.pool.acquire() as connection:
                context = await program_store.load_terminal_context(connection, terminal_id)
            if context is None:
                raise DomainError(
                    Reason.TERMINAL_NOT_FOUND,
                    f"terminal {terminal_id!r} is not registered in the program",
                    metadata={"resourceType": "Terminal", "resourceId": terminal_id},
                )
            self._terminals[terminal_id] = context
        return context

    async def rule_set_now(self) -> CachedRuleSet:
        """The version in force now: read again only when an admin write moved the generation,
        or when the next scheduled version takes effect."""
        await self._refresh()
        now = datetime.now().astimezone()
        if self._current is None or (self._current_until is not None and now >= self._current_until):
            async with self.pool.acquire() as connection:
                found = await program_store.load_rule_set_at(connection, now)
                self._current_until = await program_store.next_rule_set_change(connection, now)
            self._current = await self._compiled(found)
        return self._current

    async def rule_set_at(self, at: datetime) -> CachedRuleSet:
        """The version in force at a past time (offline operations)."""
        async with self.pool.acquire() as connection:
            found = await program_store.load_rule_set_at(connection, at)
        return await self._compiled(found)

    async def rule_set_version(self, version: int) -> CachedRuleSet:
        if version not in self._versions:
            async with self.pool.acquire() as connection:
                snapshot = await program_store.load_rule_set_version(connection, version)
            if snapshot is None:
                raise DomainError(Reason.INTERNAL, f"rule set version {version} is missing")
            await self._compiled((version, snapshot))
        return CachedRuleSet(version, self._versions[version])

    async def _compiled(self, found: tuple[int, bytes] | None) -> CachedRuleSet:
        if found is None:
            raise DomainError(
                Reason.PERMISSION_DENIED, "no rule set is published for this time (ProgramAdminService.PublishRuleSet)"
            )
        version, snapshot = found
        if version not in self._versions:
            self._versions[version] = rulesets.compile_rule_set(
                snapshot, settings=await self.settings(), version=version
            )
        return CachedRuleSet(version, self._versions[version])
