"""Tools offered to the model in an LLM phase (``tackle``): registered callables, ``python:``
references and sub-cascades."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from airflow_llm_provider.cascades.run.base import RunnerBase
from airflow_llm_provider.cascades.run.tool_phase import CASCADE_PREFIX


class TackleMixin(RunnerBase):
    """Builds the pydantic-ai tools of a phase's ``tackle`` list."""

    def _tackle_tool(self, reference: str) -> Any:
        """A tool the model may call: a registered callable, python:..., or a sub-cascade."""
        from pydantic_ai import Tool

        if not reference.startswith(CASCADE_PREFIX):
            return Tool(self.tools.resolve(reference), name=reference.split(":")[-1].split(".")[-1])
        from airflow_llm_provider.cascades.loader import load_cascade

        child = load_cascade((self.base_dir or Path.cwd()) / reference[len(CASCADE_PREFIX) :].strip())

        async def run_cascade_tool(input: dict[str, Any]) -> Any:
            return await self._run_sub_cascade(reference, input)

        description = (child.description or f"Run the cascade {child.cascade_id}.").strip()
        if child.inputs_schema:
            fields = ", ".join(f"{name}: {text}" for name, text in child.inputs_schema.items())
            description += f" Input fields: {fields}."
        return Tool(run_cascade_tool, name=child.cascade_id, description=description)
