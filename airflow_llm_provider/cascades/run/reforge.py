"""``soundings.reforge``: refinement rounds after the soundings' winner is chosen (Windlass's
``_reforge_winner``). Each of ``steps`` rounds runs ``factor_per_step`` refinements of the current
best answer, concurrently (``max_parallel``), each told the phase's task, the current best answer
and the ``honing_prompt`` (with ``mutate``, also one strategy per round); the evaluator
(``evaluator_override``, else the phase's evaluator instructions) picks the round's best, which
becomes the current best. ``threshold`` (a ward) is checked on each round's best: once it passes,
the rounds stop early. Not in ``mode: aggregate`` (no single winner to refine; Windlass skips it).
"""

from __future__ import annotations

import asyncio
from typing import Any

from airflow_llm_provider.cascades.run.core import _to_text
from airflow_llm_provider.cascades.run.judging import DEFAULT_EVALUATOR, Candidate, JudgingMixin, _listing
from airflow_llm_provider.cascades.run.mutations import APPROACH_TEMPLATES
from airflow_llm_provider.cascades.run.results import PhaseFailed
from airflow_llm_provider.cascades.spec import Phase, validator_label


def refinement_instructions(task: str, best: Any, honing: str, strategy: str | None) -> str:
    """The instructions of one refinement: the task, the answer to improve, how to improve it."""
    parts = [
        f"## The task\n{task}" if task else "",
        f"## The current best answer\n{_to_text(best)}",
        f"## How to improve it\n{honing}\n\nReply with the improved answer in full.",
        f"## Strategy for this round\n{strategy}" if strategy else "",
    ]
    return "\n\n".join(part for part in parts if part)


class ReforgeMixin(JudgingMixin):
    """Hones the soundings' winner."""

    async def _reforge(
        self,
        phase: Phase,
        winner: tuple[Any, str | None],
        task: str,
        rest: str,
        user: str,
        extra: dict[str, Any] | None,
        label: str,
    ) -> tuple[Any, str | None]:
        """The refined ``(output, route)``. ``task``: the phase's rendered instructions;
        ``rest``: the rest of its system prompt (context blocks); ``user``: its user message."""
        soundings = phase.soundings
        assert soundings is not None and soundings.reforge is not None
        reforge = soundings.reforge
        honing = self.render(reforge.honing_prompt, extra)
        judge = reforge.evaluator_override or soundings.evaluator_instructions
        judge_text = self.render(judge, extra) if judge else DEFAULT_EVALUATOR
        model = self._model_name(phase)
        gate = asyncio.Semaphore(soundings.max_parallel)
        best = winner
        for step in range(1, reforge.steps + 1):
            strategy = APPROACH_TEMPLATES[(step - 1) % len(APPROACH_TEMPLATES)] if reforge.mutate else None
            refine = refinement_instructions(task, best[0], honing, strategy)
            system = "\n\n".join(part for part in (refine, rest) if part)
            where = f"{label}:reforge{step}"
            self._emit(
                f"phase {phase.name}{label}: reforge step {step}/{reforge.steps}, "
                f"{reforge.factor_per_step} refinement(s)"
            )

            async def one(index: int, system: str = system, where: str = where) -> Any:
                async with gate:
                    try:
                        return await self._attempts(
                            phase, system, user, model, f"{where}#{index + 1}", sounding=index
                        )
                    except PhaseFailed as err:
                        return err

            results = await asyncio.gather(*(one(i) for i in range(reforge.factor_per_step)))
            good = [
                Candidate(index=i, output=r[0], route=r[1], model=model)
                for i, r in enumerate(results)
                if not isinstance(r, BaseException)
            ]
            if not good:
                self._emit(f"phase {phase.name}{where}: every refinement failed; keeping the best so far")
                break
            pick = 0
            if len(good) > 1:
                listing = _listing(good, "Refinement")
                pick = await self._choose(phase, listing, len(good), judge_text, "refinement")
            best = (good[pick].output, good[pick].route)
            self._emit(f"phase {phase.name}{where}: refinement {good[pick].index + 1} is the best")
            if reforge.threshold is not None:
                valid, reason = await self._validate(reforge.threshold.validator, best[0])
                name = validator_label(reforge.threshold.validator)
                if valid:
                    self._emit(f"phase {phase.name}{where}: threshold {name} passed; reforge stops early")
                    break
                self._emit(f"phase {phase.name}{where}: threshold {name} not yet passed: {reason}")
        return best
