"""Control flow: a whole run (state machine or data-flow scheduler), one phase with its trace
entry, ``map_over`` fan-out, and one phase run on its own from given outputs."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from typing import Any, Literal

from airflow_llm_provider.cascades.budget import BudgetExceeded
from airflow_llm_provider.cascades.graph import is_state_machine, next_in_list, phase_dependencies
from airflow_llm_provider.cascades.limits import LimitExceeded
from airflow_llm_provider.cascades.run.cascade_soundings import CascadeSoundingsMixin
from airflow_llm_provider.cascades.run.core import _describe
from airflow_llm_provider.cascades.run.results import CascadeResult, PhaseFailed, PhaseOutcome, PhaseRun
from airflow_llm_provider.cascades.spec import DEFAULT_MAX_PHASE_VISITS, END, Phase


class FlowMixin(CascadeSoundingsMixin):
    """Walks the phases of a cascade and runs each one through its kind's concern."""

    # -- public -----------------------------------------------------------------------------
    async def run(self, inputs: Mapping[str, Any]) -> CascadeResult:
        self._emit(f"cascade {self.cascade.cascade_id}: {len(self.cascade.phases)} phases")
        error: str | None = None
        budget_exceeded = False
        try:
            final = await self.execute(inputs)
        except BudgetExceeded as err:
            error, budget_exceeded, final = str(err), True, None
        except PhaseFailed as err:
            error, final = str(err), None
        finally:
            await self._drain_background()  # async_cascades: the run ends after them
        status: Literal["success", "failed"] = "failed" if error else "success"
        usage = self.usage.totals().as_dict()
        self._emit(
            f"cascade {self.cascade.cascade_id}: {status}; {usage['requests']} requests, "
            f"{usage['input_tokens'] + usage['output_tokens']} tokens, ${usage['cost_usd']:.6f}, "
            f"{usage['cache_hits']} cache hits" + (f"; error: {error}" if error else "")
        )
        return CascadeResult(
            cascade_id=self.cascade.cascade_id,
            status=status,
            outputs=dict(self._outputs),
            final=final,
            usage=usage,
            error=error,
            budget_exceeded=budget_exceeded,
            trace=list(self._trace),
        )

    async def execute(self, inputs: Mapping[str, Any]) -> Any:
        """Run every phase and return the final output; raises PhaseFailed or BudgetExceeded."""
        self._use_limits()
        self._input = dict(inputs)
        self._check_models()  # an unusable model fails here, before any call is paid for
        factor = self._cascade_soundings_factor(inputs)
        if factor > 1:  # cascade-level soundings: whole runs, one kept (cascade_soundings.py)
            return await self._run_cascade_soundings(inputs, factor)
        if is_state_machine(self.cascade):
            return await self._run_state_machine()
        return await self._run_dataflow()

    async def run_one(
        self,
        name: str,
        inputs: Mapping[str, Any],
        outputs: Mapping[str, Any],
        *,
        item: Any = None,
        item_index: int | None = None,
        state: Mapping[str, Any] | None = None,
    ) -> PhaseOutcome:
        self._prepare(inputs, outputs, state)
        phase = self.cascade.phase(name)
        if self._cascade_soundings_factor(inputs) > 1:
            raise PhaseFailed(
                name,
                "the cascade has cascade-level soundings (whole runs compared): it runs as one task "
                "(CascadeOperator), not phase by phase",
            )
        if item_index is None:
            output, route = await self._run_phase(phase)
        else:
            extra = {"item": item, "item_index": item_index}
            self._visits[name] = 1
            try:
                if phase.kind == "tool":
                    output, route = await self._run_tool_phase(phase, extra)
                else:
                    output, route = await self._run_llm_phase(phase, extra, label=f"[{item_index}]")
            except (PhaseFailed, BudgetExceeded):
                raise
            except Exception as err:
                raise PhaseFailed(name, _describe(err)) from err
        await self._drain_background()  # async_cascades run inside this task
        return self._outcome(name, output, route)

    def _prepare(
        self, inputs: Mapping[str, Any], outputs: Mapping[str, Any], state: Mapping[str, Any] | None = None
    ) -> None:
        """A phase run on its own (a task): the run's input, the upstream outputs and state."""
        self._use_limits()
        self._input = dict(inputs)
        self._state.update(state or {})
        for source, output in outputs.items():
            self._store(source, output)

    def _outcome(self, name: str, output: Any, route: str | None) -> PhaseOutcome:
        return PhaseOutcome(
            phase=name,
            output=output,
            route=route,
            usage=self.usage.totals().as_dict(),
            state=dict(self._state),
        )

    def _use_limits(self) -> None:
        """Render templates under the run's own template limits (``RunOptions.limits``); the core
        builds its environment with the configured ones, the same unless a caller chose others."""
        from airflow_llm_provider.cascades.templates import sandboxed_environment

        if getattr(self._env, "limits", None) != self.options.limits:
            self._env = sandboxed_environment(self.options.limits)
            self._templates.clear()
            self._expressions.clear()

    # -- control flow -----------------------------------------------------------------------
    async def _run_state_machine(self) -> Any:
        visits: dict[str, int] = {}
        # Cycles are legal (Windlass has no guard); a runaway loop still ends at the limit.
        limit = self.cascade.max_phase_visits or DEFAULT_MAX_PHASE_VISITS
        source = "" if self.cascade.max_phase_visits else ", the default; set max_phase_visits to change it"
        current: str | None = self.cascade.phases[0].name
        last: Any = None
        while current is not None and current != END:
            visits[current] = visits.get(current, 0) + 1
            if visits[current] > limit:
                why = f"loop guard: would run more than {limit} times (max_phase_visits={limit}{source})"
                raise PhaseFailed(current, why)
            phase = self.cascade.phase(current)
            output, route = await self._run_phase(phase)
            last = output
            current = route if route is not None else next_in_list(self.cascade, phase)
        return last

    async def _run_dataflow(self) -> Any:
        needs = phase_dependencies(self.cascade)
        done: set[str] = set()
        running: dict[str, asyncio.Task[Any]] = {}
        pending = [p.name for p in self.cascade.phases]
        while pending or running:
            for name in [n for n in pending if needs[n] <= done]:
                pending.remove(name)
                running[name] = asyncio.create_task(self._run_phase(self.cascade.phase(name)))
            if not running:
                raise PhaseFailed(
                    pending[0], f"waits on phases that never ran: {sorted(needs[pending[0]] - done)}"
                )
            finished, _ = await asyncio.wait(running.values(), return_when=asyncio.FIRST_COMPLETED)
            for name, task in list(running.items()):
                if task in finished:
                    del running[name]
                    if task.exception() is not None:
                        for other in running.values():
                            other.cancel()
                        raise task.exception()  # type: ignore[misc]
                    done.add(name)
        return self._outputs.get(self.cascade.phases[-1].name)

    # -- one phase --------------------------------------------------------------------------
    async def _run_phase(self, phase: Phase) -> tuple[Any, str | None]:
        started = time.monotonic()
        self._visits[phase.name] = self._visits.get(phase.name, 0) + 1
        self._emit(f"phase {phase.name}: started ({phase.kind})")
        self._phase_started(phase)
        try:
            if phase.map_over is not None:
                output, route = await self._run_mapped(phase), None
            elif phase.kind == "tool":
                output, route = await self._run_tool_phase(phase)
            elif phase.kind == "rows":
                output, route = await self._run_row_phase(phase)
            else:
                output, route = await self._run_llm_phase(phase)
                if phase.human_input or phase.decision_points:
                    route = await self._human_steps(phase, output, route)
        except (PhaseFailed, BudgetExceeded) as err:
            self._trace.append(PhaseRun(phase.name, "failed", time.monotonic() - started, error=str(err)))
            self._emit(f"phase {phase.name}: failed: {err}")
            raise
        except Exception as err:  # templates (incl. sandbox violations), unknown tools, bad data
            failure = PhaseFailed(phase.name, _describe(err))
            self._trace.append(PhaseRun(phase.name, "failed", time.monotonic() - started, error=str(failure)))
            self._emit(f"phase {phase.name}: failed: {failure}")
            raise failure from err
        self._store(phase.name, output)
        await self._phase_finished(phase, output)  # lineage, history, memory, on_end cascades
        self._trace.append(PhaseRun(phase.name, "success", time.monotonic() - started, route=route))
        self._emit(
            f"phase {phase.name}: done in {time.monotonic() - started:.2f}s"
            + (f" -> {route}" if route else "")
        )
        return output, route

    def _store(self, name: str, output: Any) -> None:
        self._outputs[name] = output
        self._state[f"output_{name}"] = output

    async def _run_mapped(self, phase: Phase) -> list[Any]:
        source, _, key_path = phase.map_over.partition(".")  # type: ignore[union-attr]
        items: Any = self._outputs.get(source)
        for key in filter(None, key_path.split(".")):
            items = items.get(key) if isinstance(items, Mapping) else None
        if not isinstance(items, list):
            raise PhaseFailed(
                phase.name, f"map_over '{phase.map_over}' is {type(items).__name__}, not a list"
            )
        most = self.options.limits.max_map_items
        if len(items) > most:  # before a single item's task is made
            what = f"map_over '{phase.map_over}' has {len(items):,} items"
            why = LimitExceeded("max_map_items", most, what)
            raise PhaseFailed(phase.name, str(why))

        async def one(index: int, item: Any) -> Any:
            extra = {"item": item, "item_index": index}
            if phase.kind == "tool":
                output, _ = await self._run_tool_phase(phase, extra)
            else:
                output, _ = await self._run_llm_phase(phase, extra, label=f"[{index}]")
            return output

        return list(await asyncio.gather(*(one(i, item) for i, item in enumerate(items))))
