"""Cascade-level ``soundings`` (Windlass's "Tree of Thought" over whole runs): the cascade runs
``factor`` times, ``max_parallel`` at a time, each run with its own state (and ``sounding_index``
/ ``sounding_factor`` in its templates); an evaluator model then reads the final outputs and
answers with the number of the best run, whose outputs, state and trace become the result.
``mode: aggregate`` instead merges the final outputs (``aggregator_instructions``; without them
they are joined), the first successful run giving the outputs and state.

As in Windlass, the runs share the parent's usage and budget; a run that fails is left out of the
judging (Windlass shows it to the judge as an error text); the judge is the cascade's default model
unless ``evaluator_model`` names one. Phase-level soundings settings that Windlass ignores at this
level (mutations, models, validator...) are ignored here too, and said so.
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
from collections.abc import Mapping
from typing import Any

from airflow_llm_provider.cascades.budget import BudgetExceeded
from airflow_llm_provider.cascades.limits import LimitExceeded, clip
from airflow_llm_provider.cascades.run.base import RunnerBase
from airflow_llm_provider.cascades.run.core import _describe, _to_text
from airflow_llm_provider.cascades.run.results import PhaseFailed

JUDGE_INSTRUCTIONS = (
    "You compare complete runs of the same workflow on the same input and pick the run whose final "
    "result is the best: correct, complete and useful."
)
CALL_LABEL = "cascade_soundings"
IGNORED_HERE = (
    "mutate",
    "mutation_mode",
    "mutations",
    "models",
    "model_strategy",
    "validator",
    "cost_aware_evaluation",
    "pareto_frontier",
    "llm_prefilter",
    "llm_prefilter_instructions",
)
_NUMBER = re.compile(r"\b([1-9]\d*)\b")


class CascadeSoundingsMixin(RunnerBase):
    """Runs a cascade with cascade-level soundings and keeps the best run."""

    _cascade_sounding: int | None = None
    """Set on the runner of one sounding: it runs the cascade once."""

    def _cascade_soundings_factor(self, inputs: Mapping[str, Any]) -> int:
        """How many whole runs (1: none). A templated factor sees the input only; a value that is
        not a number means 1, as in Windlass."""
        soundings = self.cascade.soundings
        if soundings is None or self._cascade_sounding is not None:
            return 1
        if isinstance(soundings.factor, int):
            factor = soundings.factor
        else:
            try:
                factor = max(1, int(self.render(soundings.factor, {"input": dict(inputs)}).strip()))
            except LimitExceeded as err:  # a template over its limits is an error, not "once"
                raise PhaseFailed(self.cascade.phases[0].name, f"cascade soundings.factor: {err}") from err
            except Exception:
                self._emit(f"cascade soundings: factor {soundings.factor!r} is not a number; running once")
                return 1
        most = self.options.limits.max_soundings
        if factor > most:  # before any run, runner or task is made
            source = f" (rendered from {soundings.factor!r})" if isinstance(soundings.factor, str) else ""
            why = LimitExceeded("max_soundings", most, f"cascade soundings.factor is {factor:,}{source}")
            raise PhaseFailed(self.cascade.phases[0].name, str(why))
        return factor

    async def _run_cascade_soundings(self, inputs: Mapping[str, Any], factor: int) -> Any:
        soundings = self.cascade.soundings
        assert soundings is not None
        first = self.cascade.phases[0].name
        if soundings.reforge is not None:
            raise PhaseFailed(first, "`reforge` of cascade-level soundings is not supported yet")
        ignored = sorted(set(IGNORED_HERE) & soundings.model_fields_set)
        if ignored:
            self._emit(f"cascade soundings: {', '.join(ignored)} apply to phase soundings only; ignored")
        gate = asyncio.Semaphore(soundings.max_parallel)
        self._emit(
            f"cascade {self.cascade.cascade_id}: {factor} soundings, up to {soundings.max_parallel} at once"
        )

        async def one(index: int) -> tuple[Any, Any, PhaseFailed | None]:
            async with gate:
                child = self._sounding_runner(index, factor)
                try:
                    return child, await child.execute(inputs), None
                except PhaseFailed as err:
                    self._emit(f"cascade sounding {index + 1}/{factor}: failed: {err}")
                    return child, None, err

        tasks = [asyncio.ensure_future(one(index)) for index in range(factor)]
        try:
            runs = await asyncio.gather(*tasks)
        except BaseException:  # a budget stop (or cancellation) ends every run
            for task in tasks:
                task.cancel()
            raise
        good = [(index, child, final) for index, (child, final, err) in enumerate(runs) if err is None]
        if not good:
            failure = runs[0][2]
            assert failure is not None
            raise PhaseFailed(failure.phase, f"all {factor} cascade soundings failed; the first: {failure}")
        if soundings.mode == "aggregate":
            self._adopt(good[0][1])
            return await self._aggregate_runs([final for _, _, final in good])
        winner = 0 if len(good) == 1 else await self._judge_runs([final for _, _, final in good])
        index, child, final = good[winner]
        self._emit(f"cascade {self.cascade.cascade_id}: sounding {index + 1} of {factor} won")
        self._adopt(child)
        self._state["cascade_sounding_winner"] = index
        return final

    def _sounding_runner(self, index: int, factor: int) -> Any:
        """A runner for one whole run: own state, shared usage/budget/models, same depth."""
        context = {**self.options.template_context, "sounding_index": index, "sounding_factor": factor}

        def tagged(line: str) -> None:
            self._emit(f"cascade sounding {index + 1}/{factor}: {line}")

        options = dataclasses.replace(self.options, template_context=context, on_event=tagged)
        # type(self): the assembled runner (CascadeRunner), which this concern does not import.
        child = type(self)(self.cascade, options, parent=self, base_dir=self.base_dir)
        child.depth = self.depth
        child._models = self._models
        child._cascade_sounding = index
        return child

    def _adopt(self, child: Any) -> None:
        """The chosen run's outputs, state, trace and messages become this run's."""
        for name, output in child._outputs.items():
            self._outputs[name] = output
        self._state.update(child._state)
        self._trace.extend(child._trace)
        self._history.extend(child._history)
        self._lineage.extend(child._lineage)
        self._conversations.update(child._conversations)

    async def _judge_runs(self, finals: list[Any]) -> int:
        """The evaluator's choice (0-based); an answer without a valid number picks the first."""
        soundings = self.cascade.soundings
        assert soundings is not None
        name = soundings.evaluator_model or self.options.model or self.cascade.defaults.model
        instructions = JUDGE_INSTRUCTIONS
        if soundings.evaluator_instructions:
            instructions = self.render(soundings.evaluator_instructions)
        listing = "\n\n".join(f"## Run {n}\n{self._run_text(final)}" for n, final in enumerate(finals, 1))
        prompt = (
            f"{listing}\n\nAnswer with the number (1-{len(finals)}) of the best run, then one sentence why."
        )
        answer = str(await self._soundings_call("evaluator", name, instructions, prompt))
        match = _NUMBER.search(answer)
        choice = int(match.group(1)) - 1 if match else 0
        if not 0 <= choice < len(finals):
            self._emit(f"cascade soundings: evaluator answered {answer[:80]!r}; keeping run 1")
            return 0
        return choice

    async def _aggregate_runs(self, finals: list[Any]) -> Any:
        soundings = self.cascade.soundings
        assert soundings is not None
        if not soundings.aggregator_instructions:
            return "\n\n".join(_to_text(final) for final in finals)

        name = soundings.aggregator_model or self.options.model or self.cascade.defaults.model
        listing = "\n\n".join(f"## Run {n}\n{self._run_text(final)}" for n, final in enumerate(finals, 1))
        instructions = self.render(soundings.aggregator_instructions)
        return await self._soundings_call("aggregator", name, instructions, listing)

    def _run_text(self, final: Any) -> str:
        """A run's final output as the judge or aggregator reads it, within ``max_reply_chars``."""
        return clip(_to_text(final), self.options.limits.max_reply_chars, "run output")

    async def _soundings_call(self, role: str, model: str | None, instructions: str, prompt: str) -> Any:
        """One guarded call of the evaluator or aggregator; a failed call fails the run."""

        try:
            result = await self._ask(
                model, instructions, prompt, phase=CALL_LABEL, label=f"{CALL_LABEL}:{role}"
            )
        except (PhaseFailed, BudgetExceeded):
            raise
        except Exception as err:  # HTTP errors after the client's own retries
            raise PhaseFailed(
                self.cascade.phases[0].name, f"cascade soundings {role}: {_describe(err)}"
            ) from err
        return result.output
