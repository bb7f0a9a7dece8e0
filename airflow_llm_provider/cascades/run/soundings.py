"""Soundings of an LLM phase (Windlass's ``_execute_phase_with_soundings``): several attempts, each
with its own model (``soundings.models``, ``model_strategy``), its own rendering of the phase's
instructions (``sounding_index``, ``sounding_factor``, ``is_sounding``) and its own prompt mutation
(mutations.py); a ``validator`` pre-filter; then the evaluator picks one (judging.py: also
cost-aware and Pareto picks) or an aggregator merges them; then ``reforge`` rounds (reforge.py).
Also one sounding, or the judging, run alone (soundings as separate Airflow tasks).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from airflow_llm_provider.cascades.budget import BudgetExceeded
from airflow_llm_provider.cascades.limits import LimitExceeded, clip
from airflow_llm_provider.cascades.run.core import DEFAULT_MODEL, _describe, _to_text
from airflow_llm_provider.cascades.run.human_judging import HumanJudgingMixin
from airflow_llm_provider.cascades.run.judging import DEFAULT_EVALUATOR, Candidate
from airflow_llm_provider.cascades.run.mutations import BUILT_IN_MUTATIONS, MutationsMixin
from airflow_llm_provider.cascades.run.reforge import ReforgeMixin
from airflow_llm_provider.cascades.run.results import PhaseFailed, PhaseOutcome
from airflow_llm_provider.cascades.spec import Phase, Soundings, validator_label

MUTATIONS = BUILT_IN_MUTATIONS
"""``mutation_mode`` -> the built-in mutation templates (kept under its old name)."""

MODEL_CHOICE = random.Random()
"""The random source of ``model_strategy: random``. Seed it (``MODEL_CHOICE.seed(n)``) for
reproducible model assignments."""


@dataclass(frozen=True)
class SoundingPlan:
    """Who runs sounding ``index``: its model and that model's settings (temperature, max_tokens)."""

    index: int
    model: str | None
    settings: dict[str, Any] = field(default_factory=dict)


def plan_soundings(soundings: Soundings, count: int, default: str | None) -> list[SoundingPlan]:
    """Windlass's ``_assign_models``. No ``models``: the phase's model for all. A list: round
    robin, or ``model_strategy: random`` (an independent choice per sounding); any other strategy
    (``weighted`` included) is round robin, as in Windlass. A map: each model ``factor`` times, in
    file order, with its temperature/max_tokens (the map then decides the number of soundings)."""
    models = soundings.models
    if not models:
        return [SoundingPlan(i, default) for i in range(count)]
    if isinstance(models, Mapping):
        assigned: list[tuple[str, dict[str, Any]]] = []
        for name, config in models.items():
            settings = {
                key: value
                for key in ("temperature", "max_tokens")
                if (value := getattr(config, key)) is not None
            }
            assigned.extend([(name, settings)] * config.factor)
        return [SoundingPlan(i, name, settings) for i, (name, settings) in enumerate(assigned)]
    names = list(models)
    if soundings.model_strategy == "random":
        return [SoundingPlan(i, MODEL_CHOICE.choice(names)) for i in range(count)]
    return [SoundingPlan(i, names[i % len(names)]) for i in range(count)]


class SoundingsMixin(ReforgeMixin, MutationsMixin, HumanJudgingMixin):
    """Runs and judges the soundings of an LLM phase."""

    # -- one sounding, or the judging, alone (soundings as Airflow tasks) -----------------------

    async def run_sounding(
        self,
        name: str,
        index: int,
        inputs: Mapping[str, Any],
        outputs: Mapping[str, Any],
        state: Mapping[str, Any] | None = None,
    ) -> PhaseOutcome:
        self._prepare(inputs, outputs, state)
        phase = self.cascade.phase(name)
        if phase.kind != "llm" or phase.soundings is None:
            raise PhaseFailed(name, "has no soundings")
        self._visits[name] = 1
        try:
            count = self._sounding_factor(phase, None)
            plans = self._plans(phase, count)
            plan = plans[index] if index < len(plans) else SoundingPlan(index, self._model_name(phase))
            system = await self._sounding_instructions(phase, None, index, count)
            user = self._user_prompt(phase, None)
            await self._check_pre_wards(phase)
            output, route = await self._attempts(
                phase, system, user, plan.model, f"#{index + 1}", sounding=index, settings=plan.settings
            )
        except (PhaseFailed, BudgetExceeded):
            raise
        except Exception as err:
            raise PhaseFailed(name, _describe(err)) from err
        return self._outcome(name, output, route)

    async def judge_soundings(
        self,
        name: str,
        candidates: Sequence[tuple[int, Any, str | None]],
        inputs: Mapping[str, Any],
        outputs: Mapping[str, Any],
        state: Mapping[str, Any] | None = None,
    ) -> PhaseOutcome:
        """The phase's result from soundings that ran as tasks: pre-filter, judge, reforge. Their
        costs are not known here, so cost-aware and Pareto picks see them as unknown (the DAG
        renderer keeps such phases in one task)."""
        self._prepare(inputs, outputs, state)
        phase = self.cascade.phase(name)
        if phase.soundings is None:
            raise PhaseFailed(name, "has no soundings")
        self._visits[name] = 1
        count = self._sounding_factor(phase, None)
        # Which model ran each attempt (a random assignment was drawn in the attempt's own task).
        random_models = phase.soundings.model_strategy == "random" and isinstance(
            phase.soundings.models, list
        )
        plans = {} if random_models else {plan.index: plan.model for plan in self._plans(phase, count)}
        good = [
            Candidate(index, output, route, plans.get(index))
            for index, output, route in sorted(candidates, key=lambda c: c[0])
        ]
        if not good:
            raise PhaseFailed(name, "all soundings failed")
        try:
            # Reforge runs here; its refinements get the phase's user message (no LLM-picked context).
            user = self._user_prompt(phase, None) if phase.soundings.reforge is not None else ""
            output, route = await self._judge(phase, good, count, None, "", ("", user))
        except (PhaseFailed, BudgetExceeded):
            raise
        except Exception as err:
            raise PhaseFailed(name, _describe(err)) from err
        route = self._llm_route(phase, route)
        return self._outcome(name, output, route)

    # -- the soundings of a phase, in one run ---------------------------------------------------

    def _sounding_factor(self, phase: Phase, extra: Mapping[str, Any] | None) -> int:
        """How many soundings: ``factor`` (a template that does not render a number: 1); with
        ``models`` as a map and ``factor`` > 1, the sum of the models' factors (Windlass ignores
        the top-level factor then, and runs no soundings when it is 1)."""
        soundings = phase.soundings
        assert soundings is not None
        factor = soundings.factor
        if isinstance(factor, str):
            try:
                factor = max(1, int(self.render(factor, extra).strip()))
            except ValueError:
                factor = 1
        if factor > 1 and isinstance(soundings.models, Mapping):
            factor = sum(config.factor for config in soundings.models.values())
        return self._bounded_soundings(phase.name, factor, soundings.factor)

    def _bounded_soundings(self, phase: str, count: int, declared: int | str) -> int:
        """``count`` soundings, or PhaseFailed when over ``max_soundings``: checked before any
        sounding, plan or task exists (a templated factor is only known here, at run time)."""
        most = self.options.limits.max_soundings
        if count > most:
            source = f" (rendered from {declared!r})" if isinstance(declared, str) else ""
            why = LimitExceeded("max_soundings", most, f"soundings.factor is {count:,}{source}")
            raise PhaseFailed(phase, str(why))
        return count

    def _plans(self, phase: Phase, count: int) -> list[SoundingPlan]:
        assert phase.soundings is not None
        return plan_soundings(phase.soundings, count, self._model_name(phase))

    async def _sounding_instructions(
        self, phase: Phase, extra: Mapping[str, Any] | None, index: int, count: int
    ) -> str:
        """The phase's instructions as sounding ``index`` sees them: rendered with its
        ``sounding_index``/``sounding_factor``/``is_sounding``, then mutated."""
        own = {**(extra or {}), "sounding_index": index, "sounding_factor": count, "is_sounding": True}
        return await self._mutated(phase, self.render(phase.instructions or "", own), index)

    def _system_rest(self, phase: Phase, system: str, extra: Mapping[str, Any] | None) -> str | None:
        """What the phase's system prompt holds after its instructions (context blocks), or None
        when it does not start with them."""
        base = self.render(phase.instructions or "", extra)
        if not base:
            return system
        return system[len(base) :].lstrip("\n") if system.startswith(base) else None

    async def _run_soundings(
        self, phase: Phase, system: str, user: str, extra: Mapping[str, Any] | None, label: str
    ) -> tuple[Any, str | None]:
        soundings = phase.soundings
        assert soundings is not None
        count = self._sounding_factor(phase, extra)
        plans = self._plans(phase, count)
        rest = self._system_rest(phase, system, extra)
        gate = asyncio.Semaphore(soundings.max_parallel)
        first_record = len(self.usage.records)

        async def attempt(plan: SoundingPlan) -> tuple[Any, str | None] | BaseException:
            async with gate:
                try:
                    if rest is None:  # cannot re-render apart from the context: mutate it all
                        prompt = await self._mutated(phase, system, plan.index)
                    else:
                        own = await self._sounding_instructions(phase, extra, plan.index, count)
                        prompt = "\n\n".join(part for part in (own, rest) if part)
                    return await self._attempts(
                        phase,
                        prompt,
                        user,
                        plan.model,
                        f"{label}#{plan.index + 1}",
                        sounding=plan.index,
                        settings=plan.settings,
                    )
                except PhaseFailed as err:
                    return err

        models = sorted({plan.model or DEFAULT_MODEL for plan in plans})
        self._emit(
            f"phase {phase.name}{label}: {count} soundings (models: {', '.join(models)}), "
            f"up to {soundings.max_parallel} at once"
        )
        results = await asyncio.gather(*(attempt(plan) for plan in plans))
        costs = self._sounding_costs(phase, first_record)
        good = [
            Candidate(
                plan.index, result[0], result[1], plan.model or self._model_name(phase), costs.get(plan.index)
            )
            for plan, result in zip(plans, results, strict=True)
            if not isinstance(result, BaseException)
        ]
        if not good:
            raise PhaseFailed(phase.name, f"all {count} soundings failed: {results[0]}")
        return await self._judge(phase, good, count, extra, label, (rest or "", user))

    def _sounding_costs(self, phase: Phase, first_record: int) -> dict[int, float]:
        """USD per sounding index from the calls recorded since ``first_record`` (priced ones)."""
        costs: dict[int, float] = {}
        for record in self.usage.records[first_record:]:
            if record.phase == phase.name and record.sounding is not None and record.cost_usd is not None:
                costs[record.sounding] = costs.get(record.sounding, 0.0) + record.cost_usd
        return costs

    # -- judging --------------------------------------------------------------------------------

    async def _judge(
        self,
        phase: Phase,
        good: list[Candidate],
        factor: int,
        extra: Mapping[str, Any] | None,
        label: str,
        prompts: tuple[str, str],
    ) -> tuple[Any, str | None]:
        """The phase result from the successful soundings (in index order): the pre-filter, then
        the only one, the evaluator's choice or the aggregate (with the first one's route); then
        reforge. ``prompts``: the system prompt after the instructions, and the user message."""
        soundings = phase.soundings
        assert soundings is not None
        good = await self._prefilter(phase, good, label)
        if soundings.mode == "aggregate":
            if soundings.reforge is not None:
                self._emit(
                    f"phase {phase.name}{label}: reforge skipped: it refines one winner, not an aggregate"
                )
            if len(good) == 1:
                return good[0].output, good[0].route
            return await self._aggregate(phase, [c.output for c in good]), good[0].route
        pick = 0
        if len(good) > 1:
            instructions = soundings.evaluator_instructions
            text = self.render(instructions, extra) if instructions else DEFAULT_EVALUATOR
            human = await self._human_pick(phase, good, text) if soundings.evaluator else None
            pick = await self._evaluate(phase, good, text) if human is None else human
            judge = "evaluator" if human is None else "the human"
            chosen = good[pick].index + 1
            self._emit(f"phase {phase.name}{label}: {judge} chose sounding {chosen} of {factor}")
            self._state[f"sounding_winner_{phase.name}"] = good[pick].index
        winner = good[pick]
        if self.record is not None:
            self.record.soundings_winners[phase.name] = winner.index
        if soundings.reforge is None:
            return winner.output, winner.route
        own = {
            **(extra or {}),
            "sounding_index": winner.index,
            "sounding_factor": factor,
            "is_sounding": True,
        }
        task = self.render(phase.instructions or "", own)
        rest, user = prompts
        return await self._reforge(phase, (winner.output, winner.route), task, rest, user, dict(own), label)

    async def _prefilter(self, phase: Phase, good: list[Candidate], label: str) -> list[Candidate]:
        """``soundings.validator``: only soundings that pass are judged; none passing, all are."""
        soundings = phase.soundings
        assert soundings is not None
        if soundings.validator is None or len(good) < 2:
            return good
        verdicts = await asyncio.gather(*(self._validate(soundings.validator, c.output) for c in good))
        passed = [c for c, (valid, _) in zip(good, verdicts, strict=True) if valid]
        name = validator_label(soundings.validator)
        if not passed:
            self._emit(f"phase {phase.name}{label}: no sounding passed {name}; judging all {len(good)}")
            return good
        self._emit(f"phase {phase.name}{label}: {len(passed)}/{len(good)} soundings passed {name}")
        return passed

    async def _aggregate(self, phase: Phase, candidates: list[Any]) -> Any:
        soundings = phase.soundings
        assert soundings is not None
        if not soundings.aggregator_instructions:
            return "\n\n".join(_to_text(c) for c in candidates)
        limit = self.options.limits.max_reply_chars  # what the aggregator model reads
        texts = [clip(_to_text(c), limit, "sounding output") for c in candidates]

        name = soundings.aggregator_model or self._model_name(phase)
        listing = "\n\n".join(f"## Attempt {i + 1}\n{text}" for i, text in enumerate(texts))
        instructions = self.render(soundings.aggregator_instructions)
        result = await self._ask(
            name, instructions, listing, phase=phase.name, label=f"{phase.name}:aggregator"
        )
        return result.output
