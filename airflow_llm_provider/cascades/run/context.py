"""The context an LLM phase sees: the user message built from the cascade input, the ``map_over``
item and the outputs ``context.from`` selects."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from airflow_llm_provider.cascades.graph import context_sources
from airflow_llm_provider.cascades.run.base import RunnerBase
from airflow_llm_provider.cascades.run.core import _to_text
from airflow_llm_provider.cascades.spec import Phase


class ContextMixin(RunnerBase):
    """Assembles the user prompt of an LLM phase."""

    def _user_prompt(self, phase: Phase, extra: Mapping[str, Any] | None) -> str:
        """The user message: the cascade input and the outputs ``context.from`` selects."""
        parts: list[str] = []
        include_input = phase.context.include_input if phase.context is not None else True
        if include_input and self._input:
            parts.append("## Input\n" + _to_text(self._input))
        if extra and "item" in extra:
            parts.append("## Item\n" + _to_text(extra["item"]))
        for source in context_sources(self.cascade, phase):
            if source in self._outputs:
                parts.append(f"## Output of {source}\n" + _to_text(self._outputs[source]))
        return "\n\n".join(parts) or "Begin."
