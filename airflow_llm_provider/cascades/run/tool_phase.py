"""Deterministic phases: a registered tool, a ``sql:`` file or a ``cascade:`` sub-cascade, with
retries, timeouts, ``on_error`` and routing on the result."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from airflow_llm_provider.cascades.budget import BudgetExceeded
from airflow_llm_provider.cascades.limits import limit_in
from airflow_llm_provider.cascades.run.base import RunnerBase
from airflow_llm_provider.cascades.run.core import _describe
from airflow_llm_provider.cascades.run.results import PhaseFailed
from airflow_llm_provider.cascades.spec import Cascade, Phase
from airflow_llm_provider.cascades.tools import call_tool

SQL_PREFIX = "sql:"
SHELL_PREFIX = "shell:"
SQL_TOOL_ARGUMENTS = ("conn_id", "parameters", "max_rows")
CASCADE_PREFIX = "cascade:"
MAX_CASCADE_DEPTH = 5


class ToolPhaseMixin(RunnerBase):
    """Runs tool phases and sub-cascades."""

    async def _run_tool_phase(
        self, phase: Phase, extra: Mapping[str, Any] | None = None
    ) -> tuple[Any, str | None]:
        from airflow_llm_provider.cascades.spec import parse_duration

        arguments = self._render_value(phase.inputs or {}, extra)
        tool = phase.tool or ""
        function: Callable[..., Any]
        if tool.startswith(CASCADE_PREFIX):

            async def function(**child_input: Any) -> Any:
                return await self._run_sub_cascade(tool, child_input)

        elif tool.startswith(SHELL_PREFIX):
            script = self._cascade_path(tool[len(SHELL_PREFIX) :])
            if not script.is_file():
                raise FileNotFoundError(f"shell script '{tool[len(SHELL_PREFIX) :]}' not found at {script}")

            async def function(**inputs: Any) -> Any:
                from airflow_llm_provider.cascades.tools.bash import run_shell_script

                return await run_shell_script(
                    self._tool_context(phase.name, deterministic=True), script, inputs
                )

        elif tool.startswith(SQL_PREFIX):
            # Other inputs are variables of the SQL template (``inputs.x``), not tool arguments.
            sql = self._sql_file(phase, arguments, extra)
            arguments = {k: v for k, v in arguments.items() if k in SQL_TOOL_ARGUMENTS} | {"sql": sql}
            function = self._cached_tool(
                "sql_data", self._resolve_tool("sql_data", phase.name, deterministic=True)
            )
        else:  # a registered tool, python:..., or a cascade by cascade_id (tackle.py)
            function = self._cached_tool(tool, self._resolve_tool(tool, phase.name, deterministic=True))
        retry = phase.retry
        attempts = retry.max_attempts if retry else 1
        timeout = parse_duration(phase.timeout) if phase.timeout is not None else None
        last_error: BaseException | None = None
        for attempt in range(1, attempts + 1):
            try:
                call = call_tool(function, arguments)
                result = await (asyncio.wait_for(call, timeout) if timeout else call)
                return result, self._route_of(phase, result)
            except BudgetExceeded:
                raise  # spending limits are final, never a tool failure to retry
            except Exception as err:  # a tool's own failure: retried, then on_error or a failed phase
                if limit_in(err) is not None:
                    raise  # so are resource limits (a runaway sub-cascade must not be retried)
                last_error = err
                if attempt < attempts and retry is not None:
                    delay = _backoff(retry.backoff, retry.backoff_base_seconds, attempt)
                    failure = _describe(err)
                    self._emit(
                        f"phase {phase.name}: attempt {attempt} failed ({failure}); retry in {delay:g}s"
                    )
                    await asyncio.sleep(delay)
        message = _describe(last_error)
        if phase.on_error_target:
            self._state["last_deterministic_error"] = message
            self._emit(f"phase {phase.name}: failed ({message}); on_error -> {phase.on_error_target}")
            return {"error": message}, phase.on_error_target
        if phase.on_error_inline is not None:  # an LLM fallback answers instead; the route is unchanged
            output = await self._run_on_error_fallback(phase, last_error, arguments, extra)
            return output, self._route_of(phase, output)
        raise PhaseFailed(phase.name, f"tool '{phase.tool}' failed after {attempts} attempt(s): {message}")

    async def _run_sub_cascade(self, reference: str, inputs: Mapping[str, Any]) -> Any:
        """Run the cascade file ``reference`` names; its final output is the tool's result."""
        from airflow_llm_provider.cascades.loader import load_cascade

        self._check_child_allowed(reference)
        path = self._cascade_path(reference[len(CASCADE_PREFIX) :])
        # type(self): the assembled runner (CascadeRunner), which this concern does not import.
        child = type(self)(load_cascade(path), self.options, parent=self, base_dir=path.parent)
        self._emit(f"sub-cascade {child.cascade.cascade_id} ({path.name}): started")
        return await self._execute_child(child, inputs)

    async def _run_child(
        self,
        cascade: Cascade | str,
        inputs: Mapping[str, Any],
        outputs: Mapping[str, Any] | None = None,
        state: Mapping[str, Any] | None = None,
        variables: Mapping[str, Any] | None = None,
    ) -> Any:
        """A child run for a built-in tool (``tools/builtin.py``: ``ToolContext.run_cascade``): a
        cascade file relative to this cascade's folder (or the folders above it, as Windlass
        resolves paths from its working directory), or a cascade built in memory that starts with
        the caller's ``outputs`` and ``state`` and sees ``variables`` in its templates (rows.py).
        Shared usage, budget, depth and run limits."""
        if isinstance(cascade, str):
            return await self._run_sub_cascade(f"{CASCADE_PREFIX}{self._child_reference(cascade)}", inputs)
        self._check_child_allowed(cascade.cascade_id)
        options = self.options
        if variables:
            options = dataclasses.replace(options, template_context={**options.template_context, **variables})
        child = type(self)(cascade, options, parent=self, base_dir=self.base_dir)
        child._outputs.update(outputs or {})
        child._state.update(state or {})
        return await self._execute_child(child, inputs)

    def _child_reference(self, relative: str) -> str:
        """``relative`` as given when it exists from this cascade's folder, else the file the
        upward search finds (confined per folder, as ``@file`` templates)."""
        from airflow_llm_provider.cascades.references import find_relative_file

        here = self.base_dir or Path.cwd()
        if (here / relative).is_file():
            return relative
        found = find_relative_file(relative.strip(), here)
        return str(found) if found is not None else relative

    def _check_child_allowed(self, reference: str) -> None:
        if self.depth >= MAX_CASCADE_DEPTH:
            raise RecursionError(f"sub-cascades nest deeper than {MAX_CASCADE_DEPTH} levels at '{reference}'")
        count_sub_run(self, reference)

    @staticmethod
    async def _execute_child(child: RunnerBase, inputs: Mapping[str, Any]) -> Any:
        try:
            return await child.execute(inputs)  # a budget stop propagates as BudgetExceeded
        except PhaseFailed as err:
            raise RuntimeError(f"sub-cascade {child.cascade.cascade_id} failed: {err}") from err

    def _sql_file(self, phase: Phase, arguments: Mapping[str, Any], extra: Mapping[str, Any] | None) -> str:
        """``sql:path.sql``: the file, relative to the cascade's folder, rendered in the sandbox
        with the run's variables and the phase's rendered inputs (values still go as parameters)."""
        relative = phase.tool[len(SQL_PREFIX) :]  # type: ignore[index]
        path = self._cascade_path(relative)
        if not path.is_file():
            raise FileNotFoundError(f"sql file '{relative}' not found at {path}")
        return self.render(path.read_text(), {**(extra or {}), "inputs": dict(arguments)})

    @staticmethod
    def _route_of(phase: Phase, result: Any) -> str | None:
        if phase.routing:
            key = None
            if isinstance(result, Mapping):
                key = result.get("_route", result.get("status"))
            key = "success" if key is None else str(key)
            if key in phase.routing:
                return phase.routing[key]
            if "default" in phase.routing:
                return phase.routing["default"]
            raise PhaseFailed(
                phase.name, f"result route '{key}' matches no routing entry and there is no default"
            )
        if len(phase.handoffs) == 1:
            return phase.handoffs[0].target
        return None


def count_sub_run(runner: RunnerBase, reference: str) -> None:
    """Count one more child cascade run in the run tree (shared through ``parent``); beyond
    ``max_sub_cascade_runs`` raises :class:`LimitExceeded` before the child is even loaded."""
    most = runner.options.limits.max_sub_cascade_runs
    runner.sub_runs.add("max_sub_cascade_runs", most, f"sub-cascade '{reference}' not started")


def _backoff(kind: str, base: float, attempt: int) -> float:
    if kind == "none":
        return 0.0
    if kind == "exponential":
        return base * (2 ** (attempt - 1))
    return base * attempt
