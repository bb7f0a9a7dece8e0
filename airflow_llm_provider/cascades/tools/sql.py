"""Built-in tool family: sql (to be written)."""

from __future__ import annotations

from airflow_llm_provider.cascades.tools.builtin import BuiltinTool

TOOLS: tuple[BuiltinTool, ...] = ()
