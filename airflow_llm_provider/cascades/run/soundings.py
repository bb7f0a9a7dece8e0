"""Soundings: several attempts of one LLM phase (prompt mutations, a model per attempt), then an
evaluator picks one or an aggregator merges them; also one sounding, or the judging, run alone."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any

from airflow_llm_provider.cascades.run.base import RunnerBase
from airflow_llm_provider.cascades.run.core import DEFAULT_MODEL, _describe, _to_text
from airflow_llm_provider.cascades.run.results import PhaseFailed, PhaseOutcome
from airflow_llm_provider.cascades.spec import Phase
from airflow_llm_provider.cascades.usage import BudgetExceeded, estimate_tokens

# `soundings.mutate: true`: attempt 1 keeps the prompt; later attempts append one of these.
MUTATIONS = (
    "Take a different angle from the most obvious answer.",
    "Be as concise as possible.",
    "Reason step by step before you answer, then give only the answer.",
    "Prefer concrete examples and specifics over generalities.",
    "Write for a reader who is new to the subject.",
)


class SoundingsMixin(RunnerBase):
    """Runs and judges the soundings of an LLM phase."""

    async def run_sounding(
        self, name: str, index: int, inputs: Mapping[str, Any], outputs: Mapping[str, Any]
    ) -> PhaseOutcome:
        self._prepare(inputs, outputs)
        phase = self.cascade.phase(name)
        if phase.kind != "llm" or phase.soundings is None:
            raise PhaseFailed(name, "has no soundings")
        self._visits[name] = 1
        try:
            system = self._sounding_prompt(phase, self.render(phase.instructions or ""), index)
            user = self._user_prompt(phase, None)
            await self._check_pre_wards(phase)
            output, route = await self._attempts(
                phase, system, user, self._sounding_model(phase, index), f"#{index + 1}", sounding=index
            )
        except (PhaseFailed, BudgetExceeded):
            raise
        except Exception as err:
            raise PhaseFailed(name, _describe(err)) from err
        return PhaseOutcome(phase=name, output=output, route=route, usage=self.usage.totals().as_dict())

    async def judge_soundings(
        self,
        name: str,
        candidates: Sequence[tuple[int, Any, str | None]],
        inputs: Mapping[str, Any],
        outputs: Mapping[str, Any],
    ) -> PhaseOutcome:
        self._prepare(inputs, outputs)
        phase = self.cascade.phase(name)
        if phase.soundings is None:
            raise PhaseFailed(name, "has no soundings")
        self._visits[name] = 1
        good = [(index, (output, route)) for index, output, route in sorted(candidates, key=lambda c: c[0])]
        if not good:
            raise PhaseFailed(name, "all soundings failed")
        try:
            output, route = await self._judge(phase, good, self._sounding_factor(phase, None), None, "")
        except (PhaseFailed, BudgetExceeded):
            raise
        except Exception as err:
            raise PhaseFailed(name, _describe(err)) from err
        route = self._llm_route(phase, route)
        return PhaseOutcome(phase=name, output=output, route=route, usage=self.usage.totals().as_dict())

    def _sounding_factor(self, phase: Phase, extra: Mapping[str, Any] | None) -> int:
        factor = phase.soundings.factor  # type: ignore[union-attr]
        if isinstance(factor, str):
            try:
                return max(1, int(self.render(factor, extra).strip()))
            except ValueError:
                return 1
        return factor

    def _sounding_prompt(self, phase: Phase, system: str, index: int) -> str:
        """The system prompt of sounding ``index`` (0-based): with ``mutate``, later ones get a hint."""
        if not phase.soundings or not phase.soundings.mutate or index == 0:
            return system
        return f"{system}\n\n{MUTATIONS[(index - 1) % len(MUTATIONS)]}"

    def _sounding_model(self, phase: Phase, index: int) -> str | None:
        """The model of sounding ``index``: ``soundings.models`` round robin, else the phase's."""
        models = phase.soundings.model_names if phase.soundings else None
        return models[index % len(models)] if models else self._model_name(phase, None)

    async def _run_soundings(
        self, phase: Phase, system: str, user: str, extra: Mapping[str, Any] | None, label: str
    ) -> tuple[Any, str | None]:
        soundings = phase.soundings
        assert soundings is not None
        factor = self._sounding_factor(phase, extra)
        gate = asyncio.Semaphore(soundings.max_parallel)

        async def attempt(index: int) -> tuple[Any, str | None] | BaseException:
            async with gate:
                try:
                    return await self._attempts(
                        phase,
                        self._sounding_prompt(phase, system, index),
                        user,
                        self._sounding_model(phase, index),
                        f"{label}#{index + 1}",
                        sounding=index,
                    )
                except PhaseFailed as err:
                    return err

        self._emit(f"phase {phase.name}{label}: {factor} soundings, up to {soundings.max_parallel} at once")
        results = await asyncio.gather(*(attempt(i) for i in range(factor)))
        good = [(i, r) for i, r in enumerate(results) if not isinstance(r, BaseException)]
        if not good:
            raise PhaseFailed(phase.name, f"all {factor} soundings failed: {results[0]}")
        return await self._judge(phase, good, factor, extra, label)  # type: ignore[arg-type]

    async def _judge(
        self,
        phase: Phase,
        good: list[tuple[int, tuple[Any, str | None]]],
        factor: int,
        extra: Mapping[str, Any] | None,
        label: str,
    ) -> tuple[Any, str | None]:
        """The phase result from the successful soundings ``(index, (output, route))``, in index
        order: the only one, the evaluator's choice, or the aggregate (with the first one's route)."""
        soundings = phase.soundings
        assert soundings is not None
        if len(good) == 1:
            self._note_winner(phase, good[0][0])
            return good[0][1]
        if soundings.mode == "aggregate":
            return await self._aggregate(phase, [r[0] for _, r in good]), good[0][1][1]
        winner = await self._evaluate(phase, [r[0] for _, r in good], extra)
        self._emit(f"phase {phase.name}{label}: evaluator chose sounding {good[winner][0] + 1} of {factor}")
        self._state[f"sounding_winner_{phase.name}"] = good[winner][0]
        self._note_winner(phase, good[winner][0])
        return good[winner][1]

    def _note_winner(self, phase: Phase, index: int) -> None:
        if self.record is not None:
            self.record.soundings_winners[phase.name] = index

    async def _evaluate(self, phase: Phase, candidates: list[Any], extra: Mapping[str, Any] | None) -> int:
        from pydantic import BaseModel
        from pydantic_ai import Agent

        class Choice(BaseModel):
            winner: int
            reason: str = ""

        soundings = phase.soundings
        assert soundings is not None
        name = soundings.evaluator_model or self._model_name(phase)
        listing = "\n\n".join(f"## Attempt {i + 1}\n{_to_text(c)}" for i, c in enumerate(candidates))
        instructions = self.render(soundings.evaluator_instructions or "Pick the best attempt.", extra)
        agent = Agent(
            self._model(name),
            output_type=Choice,
            instructions=f"{instructions}\n\nAnswer with the number (1-{len(candidates)}) of the best one.",
        )
        result = await self._guarded_run(
            agent,
            listing,
            phase=phase.name,
            label=f"{phase.name}:evaluator",
            model=name or DEFAULT_MODEL,
            estimated_input_tokens=estimate_tokens(instructions) + estimate_tokens(listing),
        )
        winner = result.output.winner - 1
        return winner if 0 <= winner < len(candidates) else 0

    async def _aggregate(self, phase: Phase, candidates: list[Any]) -> Any:
        soundings = phase.soundings
        assert soundings is not None
        if not soundings.aggregator_instructions:
            return "\n\n".join(_to_text(c) for c in candidates)
        from pydantic_ai import Agent

        name = soundings.aggregator_model or self._model_name(phase)
        listing = "\n\n".join(f"## Attempt {i + 1}\n{_to_text(c)}" for i, c in enumerate(candidates))
        instructions = self.render(soundings.aggregator_instructions)
        agent = Agent(self._model(name), instructions=instructions)
        result = await self._guarded_run(
            agent,
            listing,
            phase=phase.name,
            label=f"{phase.name}:aggregator",
            model=name or DEFAULT_MODEL,
            estimated_input_tokens=estimate_tokens(instructions) + estimate_tokens(listing),
        )
        return result.output
