"""The runner as each concern sees it: the shared core plus the methods the concerns call on one
another, declared for the type checker only (each is defined by exactly one concern module, and
:class:`~airflow_llm_provider.cascades.runner.CascadeRunner` inherits them all)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from airflow_llm_provider.cascades.run.core import RunnerCore

if TYPE_CHECKING:
    from airflow_llm_provider.cascades.spec import Phase


class RunnerBase(RunnerCore):
    """Base of every concern mixin. Nothing here at runtime beyond :class:`RunnerCore`."""

    if TYPE_CHECKING:
        # flow.py
        async def execute(self, inputs: Mapping[str, Any]) -> Any: ...

        def _prepare(self, inputs: Mapping[str, Any], outputs: Mapping[str, Any]) -> None: ...

        # tool_phase.py
        async def _run_tool_phase(
            self, phase: Phase, extra: Mapping[str, Any] | None = None
        ) -> tuple[Any, str | None]: ...

        async def _run_sub_cascade(self, reference: str, inputs: Mapping[str, Any]) -> Any: ...

        # llm_phase.py
        async def _run_llm_phase(
            self, phase: Phase, extra: Mapping[str, Any] | None = None, label: str = ""
        ) -> tuple[Any, str | None]: ...

        async def _attempts(
            self,
            phase: Phase,
            system: str,
            user: str,
            model_name: str | None,
            label: str,
            sounding: int | None = None,
        ) -> tuple[Any, str | None]: ...

        @staticmethod
        def _llm_route(phase: Phase, chosen: str | None) -> str | None: ...

        # soundings.py
        def _sounding_factor(self, phase: Phase, extra: Mapping[str, Any] | None) -> int: ...

        async def _run_soundings(
            self, phase: Phase, system: str, user: str, extra: Mapping[str, Any] | None, label: str
        ) -> tuple[Any, str | None]: ...

        # rules.py
        async def _accept(self, phase: Phase, output: Any, attempt: int, max_attempts: int) -> str | None: ...

        async def _check_pre_wards(self, phase: Phase) -> None: ...

        # context.py
        def _user_prompt(self, phase: Phase, extra: Mapping[str, Any] | None) -> str: ...

        # tackle.py
        def _tackle_tool(self, reference: str) -> Any: ...
