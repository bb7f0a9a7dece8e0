"""Cascades an LLM phase starts (Windlass ``sub_cascades`` and ``async_cascades``).

- ``sub_cascades`` run one after the other before the phase's LLM turns. With ``context_in`` the
  child's input is the parent's state (which holds ``input``) plus the parent's input flattened;
  ``input_map`` entries override (a Jinja value is rendered; a value naming a state or input key
  takes that value; anything else is a literal). With ``context_out`` the child's state is merged
  into the parent's and its phase outputs join the parent's ``outputs`` and ``lineage``.
- ``async_cascades`` are fire-and-forget: they start when the phase starts (``on_start``) or after
  it succeeded (``on_end``) and run concurrently in the same process; a failure is a warning.
  The top-level run waits for them before it returns, so an Airflow task never ends (and loses
  them) while they run: under Airflow they run inside the task of the phase that started them.

Children share the parent's usage, budget and concurrency slots; nesting stops at
``MAX_CASCADE_DEPTH``, and the whole run tree starts at most ``max_sub_cascade_runs`` children.
Each child file is resolved relative to the parent cascade's folder.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any

from airflow_llm_provider.cascades.run.base import RunnerBase
from airflow_llm_provider.cascades.run.core import _describe
from airflow_llm_provider.cascades.run.results import PhaseFailed
from airflow_llm_provider.cascades.run.tool_phase import MAX_CASCADE_DEPTH, count_sub_run
from airflow_llm_provider.cascades.spec import AsyncCascade, CascadeRef, Phase, SubCascade
from airflow_llm_provider.cascades.templates import is_template

log = logging.getLogger("airflow_llm_provider.cascades.runner")


class ChildrenMixin(RunnerBase):
    """Runs a phase's sub-cascades and starts its background cascades."""

    def _child_runner(self, reference: str) -> Any:
        """A runner for the cascade file ``reference`` (relative to this cascade's folder) that
        spends from this run's usage and budget."""
        from airflow_llm_provider.cascades.loader import load_cascade

        if self.depth >= MAX_CASCADE_DEPTH:
            raise RecursionError(f"sub-cascades nest deeper than {MAX_CASCADE_DEPTH} levels at '{reference}'")
        count_sub_run(self, reference)
        path = self._cascade_path(reference)
        # type(self): the assembled runner (CascadeRunner), which this concern does not import.
        return type(self)(load_cascade(path), self.options, parent=self, base_dir=path.parent)

    def _child_input(self, ref: CascadeRef) -> dict[str, Any]:
        """Windlass's child input: state + flattened input when ``context_in``; ``input_map`` wins."""
        child: dict[str, Any] = {}
        if ref.context_in:
            child.update(self._state)
            child["input"] = dict(self._input)
            child.update(self._input)
        known = {**self._state, "input": self._input, **self._input}
        for key, value in ref.input_map.items():
            if is_template(value):
                child[key] = self._render_value(value, None)
            else:
                child[key] = known.get(value, value)
        return child

    async def _run_sub_cascades(self, phase: Phase) -> None:
        for ref in phase.sub_cascades:
            await self._run_sub(phase, ref)

    async def _run_sub(self, phase: Phase, ref: SubCascade) -> None:
        child = self._child_runner(ref.ref)
        self._emit(f"phase {phase.name}: sub-cascade {child.cascade.cascade_id} ({ref.ref}): started")
        try:
            await child.execute(self._child_input(ref))
        except PhaseFailed as err:
            raise PhaseFailed(phase.name, f"sub-cascade {child.cascade.cascade_id} failed: {err}") from err
        if ref.context_out:
            self._state.update(child._state)
            for name, output in child._outputs.items():
                self._outputs[name] = output
            self._lineage.extend(child._lineage)
            self._history.extend(child._history)
        self._emit(f"phase {phase.name}: sub-cascade {child.cascade.cascade_id}: done")

    def _start_async_cascades(self, phase: Phase, trigger: str) -> None:
        """Start the phase's background cascades of this ``trigger``; never raises."""
        for ref in phase.async_cascades:
            if ref.trigger != trigger:
                continue
            try:
                child = self._child_runner(ref.ref)
                inputs = self._child_input(ref)
            except Exception as err:  # a missing file must not fail the phase: fire-and-forget
                self._warn_async(phase, ref, err)
                continue
            self._emit(
                f"phase {phase.name}: background cascade {child.cascade.cascade_id} started ({trigger})"
            )
            task = asyncio.create_task(self._run_async(phase, ref, child, inputs))
            self._background.append(task)

    async def _run_async(
        self, phase: Phase, ref: AsyncCascade, child: Any, inputs: Mapping[str, Any]
    ) -> None:
        try:
            await child.execute(inputs)
        except Exception as err:  # PhaseFailed, BudgetExceeded or anything else: a warning
            self._warn_async(phase, ref, err)
            return
        self._emit(f"phase {phase.name}: background cascade {child.cascade.cascade_id}: done")

    def _warn_async(self, phase: Phase, ref: AsyncCascade, err: BaseException) -> None:
        message = f"phase {phase.name}: background cascade {ref.ref} failed (ignored): {_describe(err)}"
        log.warning("%s", message)
        self._emit(message)

    async def _drain_background(self) -> None:
        """Wait for every background cascade of this run (and of its children) to finish."""
        if self.depth > 0:
            return
        while self._background:
            pending = list(self._background)
            self._background.clear()
            await asyncio.gather(*pending, return_exceptions=True)
