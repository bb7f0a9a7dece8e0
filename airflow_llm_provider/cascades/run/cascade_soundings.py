"""Cascade-level ``soundings`` (Windlass's "Tree of Thought" over whole runs): the cascade runs
``factor`` times, ``max_parallel`` at a time, each run with its own state (and ``sounding_index``
/ ``sounding_factor`` in its templates); an evaluator model then reads the final outputs and
answers with the number of the best run, whose outputs, state and trace become the result.
``mode: aggregate`` instead merges the final outputs (``aggregator_instructions``; without them
they are joined), the first successful run giving the outputs and state.

As in Windlass, the runs share the parent's usage and budget; a run that fails is left out of the
judging (Windlass shows it to the judge as an error text); the judge is the cascade's default model
unless ``evaluator_model`` names one. ``reforge`` then hones the winning run with rounds of whole
refined runs (:meth:`CascadeSoundingsMixin._reforge_runs`). Phase-level soundings settings that
Windlass ignores at this level (mutations, models, validator...) are ignored here too, and said so.
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from airflow_llm_provider.cascades.budget import BudgetExceeded
from airflow_llm_provider.cascades.limits import LimitExceeded, clip
from airflow_llm_provider.cascades.run.base import RunnerBase
from airflow_llm_provider.cascades.run.core import _describe, _to_text
from airflow_llm_provider.cascades.run.mutations import APPROACH_TEMPLATES
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

        good = await self._whole_runs(factor, one)
        if soundings.mode == "aggregate":
            self._adopt(good[0][1])
            return await self._aggregate_runs([final for _, _, final in good])
        winner = 0 if len(good) == 1 else await self._judge_runs([final for _, _, final in good])
        index, child, final = good[winner]
        self._emit(f"cascade {self.cascade.cascade_id}: sounding {index + 1} of {factor} won")
        if soundings.reforge is not None:
            child, final = await self._reforge_runs(inputs, child, final)
        self._adopt(child)
        self._state["cascade_sounding_winner"] = index
        return final

    async def _whole_runs(
        self, count: int, one: Callable[[int], Awaitable[tuple[Any, Any, PhaseFailed | None]]]
    ) -> list[tuple[int, Any, Any]]:
        """``count`` whole runs at once: ``(index, runner, final)`` of those that succeeded."""
        tasks = [asyncio.ensure_future(one(index)) for index in range(count)]
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
            raise PhaseFailed(failure.phase, f"all {count} cascade runs failed; the first: {failure}")
        return good

    async def _reforge_runs(self, inputs: Mapping[str, Any], best: Any, final: Any) -> tuple[Any, Any]:
        """Windlass's cascade-level reforge: each of ``steps`` rounds runs the whole cascade
        ``factor_per_step`` times with the input ``_refinement_context`` (the cascade's goal, the
        current best output, the ``honing_prompt`` and, with ``mutate``, a strategy), and the
        evaluator (``evaluator_override``, else the soundings' instructions) picks the round's best,
        which becomes the current best. ``threshold`` passing on a round's best stops early."""
        soundings = self.cascade.soundings
        assert soundings is not None and soundings.reforge is not None
        reforge = soundings.reforge
        first = self.cascade.phases[0].name
        most = self.options.limits.max_soundings
        if reforge.factor_per_step > most:
            why = LimitExceeded(
                "max_soundings", most, f"reforge.factor_per_step is {reforge.factor_per_step}"
            )
            raise PhaseFailed(first, str(why))
        goal = self.cascade.description or self.cascade.cascade_id
        gate = asyncio.Semaphore(soundings.max_parallel)
        for step in range(1, reforge.steps + 1):
            context = (
                f"Original cascade goal: {goal}\nCurrent best output: {self._run_text(final)}\n"
                f"Refinement directive: {reforge.honing_prompt}\n"
            )
            if reforge.mutate:
                context += (
                    f"\n\nVariation strategy: {APPROACH_TEMPLATES[(step - 1) % len(APPROACH_TEMPLATES)]}"
                )
            refined = {**inputs, "_refinement_context": context}
            self._emit(f"cascade reforge step {step}/{reforge.steps}: {reforge.factor_per_step} refinements")

            async def one(
                index: int, refined: Mapping[str, Any] = refined, step: int = step
            ) -> tuple[Any, Any, PhaseFailed | None]:
                async with gate:
                    child = self._sounding_runner(index, reforge.factor_per_step)
                    try:
                        return child, await child.execute(refined), None
                    except PhaseFailed as err:
                        self._emit(f"cascade reforge step {step}, refinement {index + 1}: failed: {err}")
                        return child, None, err

            good = await self._whole_runs(reforge.factor_per_step, one)
            finals = [candidate for _, _, candidate in good]
            choice = 0 if len(good) == 1 else await self._judge_runs(finals, reforge.evaluator_override)
            _, best, final = good[choice]
            self._emit(f"cascade reforge step {step}: refinement {good[choice][0] + 1} is the new best")
            if reforge.threshold is not None:
                valid, reason = await self._validate(reforge.threshold.validator, final)
                if valid:
                    self._emit(f"cascade reforge: threshold passed after step {step}; stopping")
                    break
                self._emit(f"cascade reforge: threshold not yet passed: {reason}")
        return best, final

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

    async def _judge_runs(self, finals: list[Any], override: str | None = None) -> int:
        """The evaluator's choice (0-based); an answer without a valid number picks the first.
        ``override``: the reforge rounds' own judge instructions."""
        soundings = self.cascade.soundings
        assert soundings is not None
        name = soundings.evaluator_model or self.options.model or self.cascade.defaults.model
        instructions = JUDGE_INSTRUCTIONS
        if override or soundings.evaluator_instructions:
            instructions = self.render(override or soundings.evaluator_instructions or "")
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
