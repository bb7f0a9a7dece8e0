"""The runner as each concern sees it: the shared core plus the methods the concerns call on one
another, declared for the type checker only (each is defined by exactly one concern module, and
:class:`~airflow_llm_provider.cascades.runner.CascadeRunner` inherits them all)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from airflow_llm_provider.cascades.run.core import RunnerCore

if TYPE_CHECKING:
    from airflow_llm_provider.cascades.run.results import PhaseOutcome
    from airflow_llm_provider.cascades.spec import Cascade, Phase, ValidatorRef
    from airflow_llm_provider.cascades.tools.builtin import ToolContext


class RunnerBase(RunnerCore):
    """Base of every concern mixin. Nothing here at runtime beyond :class:`RunnerCore`."""

    if TYPE_CHECKING:
        # flow.py
        async def execute(self, inputs: Mapping[str, Any]) -> Any: ...

        def _prepare(
            self,
            inputs: Mapping[str, Any],
            outputs: Mapping[str, Any],
            state: Mapping[str, Any] | None = None,
        ) -> None: ...

        def _outcome(self, name: str, output: Any, route: str | None) -> PhaseOutcome: ...

        # tool_phase.py
        async def _run_tool_phase(
            self, phase: Phase, extra: Mapping[str, Any] | None = None
        ) -> tuple[Any, str | None]: ...

        async def _run_sub_cascade(self, reference: str, inputs: Mapping[str, Any]) -> Any: ...

        async def _run_child(
            self,
            cascade: Cascade | str,
            inputs: Mapping[str, Any],
            outputs: Mapping[str, Any] | None = None,
            state: Mapping[str, Any] | None = None,
            variables: Mapping[str, Any] | None = None,
        ) -> Any: ...

        # tool_phase.py (static)
        @staticmethod
        def _route_of(phase: Phase, result: Any) -> str | None: ...

        # human_steps.py
        async def _human_steps(self, phase: Phase, output: Any, route: str | None) -> str | None: ...

        # tackle.py
        def _tool_context(self, phase_name: str, *, deterministic: bool = False) -> ToolContext: ...

        # rows.py
        async def _run_row_phase(self, phase: Phase) -> tuple[Any, str | None]: ...

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
            settings: Mapping[str, Any] | None = None,
        ) -> tuple[Any, str | None]: ...

        @staticmethod
        def _llm_route(phase: Phase, chosen: str | None) -> str | None: ...

        # soundings.py
        def _sounding_factor(self, phase: Phase, extra: Mapping[str, Any] | None) -> int: ...

        async def _run_soundings(
            self, phase: Phase, system: str, user: str, extra: Mapping[str, Any] | None, label: str
        ) -> tuple[Any, str | None]: ...

        async def _run_on_error_fallback(
            self,
            phase: Phase,
            error: BaseException | None,
            inputs: Mapping[str, Any],
            extra: Mapping[str, Any] | None = None,
        ) -> Any: ...

        # rules.py
        async def _accept(
            self, phase: Phase, output: Any, attempt: int, max_attempts: int, loop_until_passed: bool = False
        ) -> str | None: ...

        async def _check_pre_wards(self, phase: Phase) -> None: ...

        def _retry_text(self, phase: Phase, reason: str, attempt: int, max_attempts: int) -> str: ...

        def _with_validation_goal(self, phase: Phase, system: str) -> str: ...

        async def _turn_passes(self, phase: Phase, output: Any, turn: int, max_turns: int) -> bool: ...

        def _turn_prompt(self, phase: Phase, turn: int, max_turns: int) -> str: ...

        def _after_accept(self, phase: Phase, output: Any) -> None: ...

        # validators.py
        async def _validate(self, validator: ValidatorRef, content: Any) -> tuple[bool, str]: ...

        def _validator_description(self, validator: ValidatorRef) -> str: ...

        # context.py
        def _user_prompt(self, phase: Phase, extra: Mapping[str, Any] | None) -> str: ...

        async def _phase_prompts(self, phase: Phase, extra: Mapping[str, Any] | None) -> tuple[str, str]: ...

        def _history_processors(self, phase: Phase) -> list[Any]: ...

        def _phase_started(self, phase: Phase) -> None: ...

        async def _phase_finished(self, phase: Phase, output: Any) -> None: ...

        # children.py
        async def _drain_background(self) -> None: ...

        # human_steps.py
        async def _human_steps(self, phase: Phase, output: Any, route: str | None) -> str | None: ...

        # tackle.py
        def _tackle_tool(self, reference: str, phase_name: str) -> Any: ...

        async def _phase_tools(self, phase: Phase, system: str) -> tuple[list[Any], dict[str, str]]: ...

        def _resolve_tool(
            self, name: str, phase_name: str = "", *, deterministic: bool = False
        ) -> Callable[..., Any]: ...

        def _cached_tool(self, name: str, function: Callable[..., Any]) -> Callable[..., Any]: ...

        # cascade_soundings.py
        def _cascade_soundings_factor(self, inputs: Mapping[str, Any]) -> int: ...

        async def _run_cascade_soundings(self, inputs: Mapping[str, Any], factor: int) -> Any: ...
