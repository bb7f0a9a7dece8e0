"""The runner's side of Windlass ``memory:``: each finished phase's messages go into the bank,
and a phase that lists the bank's name in its ``tackle`` gets a ``<bank>(query, limit=5)`` tool
that searches it (see :mod:`airflow_llm_provider.cascades.memory`)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

from airflow_llm_provider.cascades.memory import MemoryStore, format_results, open_memory, search
from airflow_llm_provider.cascades.run.base import RunnerBase
from airflow_llm_provider.cascades.run.core import _describe
from airflow_llm_provider.cascades.spec import Phase

log = logging.getLogger("airflow_llm_provider.cascades.runner")


class MemoryMixin(RunnerBase):
    """Saves to and searches the cascade's memory bank."""

    _memory: MemoryStore | None = None

    def _memory_store(self) -> MemoryStore:
        if self._memory is None:
            self._memory = self.options.memory or open_memory(None)
        return self._memory

    def _offer_memory_tool(self, phase: Phase) -> None:
        """Make the bank a tool this runner resolves by name (a copy of the registry: the one the
        caller handed in stays untouched)."""
        bank = self.cascade.memory
        if bank is None or bank not in phase.tackle or bank in self.tools.names():
            return
        store = self._memory_store()

        async def memory_tool(query: str, limit: int = 5) -> str:
            found = await asyncio.to_thread(search, store, bank, query, limit)
            return format_results(bank, query, found)

        memory_tool.__doc__ = (
            f"Search the memory bank '{bank}': messages of earlier runs of cascades that use it.\n\n"
            "Args:\n    query: words to look for\n    limit: most messages to return"
        )
        self.tools.register(bank, memory_tool)  # this run's own copy of the registry (core.py)

    async def _remember(self, phase: Phase, messages: Sequence[dict[str, Any]]) -> None:
        """Save a phase's messages into the bank; a store that fails is a warning (as Windlass)."""
        bank = self.cascade.memory
        if bank is None or not messages:
            return
        where = {"cascade_id": self.cascade.cascade_id, "phase": phase.name, "run": self.options.cache_scope}
        rows = [{**message, **where} for message in messages if str(message.get("content") or "").strip()]
        try:
            await asyncio.to_thread(self._memory_store().save, bank, rows)
        except Exception as err:
            message = f"memory '{bank}': could not save phase {phase.name} ({_describe(err)}); continuing"
            log.warning("%s", message)
            self._emit(message)
