"""Judging soundings (and reforge refinements): the evaluator's pick, with Windlass's
``cost_aware_evaluation`` (the judge sees each attempt's model and cost and is told how to weigh
quality against cost) and ``pareto_frontier`` (the judge scores quality 0-100, the winner is
picked on the cost/quality Pareto frontier by ``policy``).

As in Windlass, the evaluator's answer names the best attempt by its 1-based number: a structured
``{winner}`` or, from a model answering in plain text, the first integer of the text; an answer
without a usable number picks attempt 1.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from airflow_llm_provider.cascades.run.base import RunnerBase
from airflow_llm_provider.cascades.run.core import _to_text
from airflow_llm_provider.cascades.spec import CostAwareEvaluation, Phase

DEFAULT_EVALUATOR = (
    "You judge several answers to the same task. Pick the one that does the task best: correct, "
    "complete, clear and faithful to what was asked."
)
"""The judge's instructions when the phase sets no ``evaluator_instructions``."""

QUALITY_SCORING = (
    "Give every attempt a quality score from 0 (useless) to 100 (excellent), judging correctness, "
    "completeness, clarity and usefulness. Answer with one line per attempt, exactly in the form\n"
    "Attempt <number>: <score> - <one short reason>"
)
"""What the judge is asked for under ``pareto_frontier`` (Windlass scores 0-100 per attempt)."""

NEUTRAL_SCORE = 50.0
"""The score of an attempt the judge's answer did not score (Windlass's default)."""

_NUMBER = re.compile(r"\b([1-9]\d*)\b")
_SCORE = re.compile(r"attempt\s*(\d+)\s*:\s*(\d+(?:\.\d+)?)", re.IGNORECASE)


@dataclass
class Candidate:
    """One successful sounding (or refinement) put before the judge."""

    index: int
    """The sounding's index (0-based) in the phase's soundings."""
    output: Any
    route: str | None = None
    model: str | None = None
    cost: float | None = None
    """USD its LLM calls cost; None when unknown (unpriced model, or it ran in another task)."""


def parse_choice(answer: Any, count: int) -> int:
    """The 0-based pick from an evaluator answer: a structured ``winner`` or the first integer of
    a text; none, or out of range: 0 (attempt 1), as in Windlass."""
    winner = getattr(answer, "winner", None)
    if winner is None:
        match = _NUMBER.search(_to_text(answer))
        winner = int(match.group(1)) if match else 1
    return winner - 1 if 1 <= winner <= count else 0


def parse_scores(answer: str, count: int) -> list[float]:
    """Quality scores ``Attempt N: score`` in attempt order; unscored attempts get 50."""
    scores = {int(number): float(score) for number, score in _SCORE.findall(answer)}
    return [scores.get(position, NEUTRAL_SCORE) for position in range(1, count + 1)]


def pareto_frontier(quality: Sequence[float], cost: Sequence[float]) -> list[int]:
    """Positions nobody dominates: no other is at least as good and as cheap, and better in one."""
    frontier = []
    for i in range(len(quality)):
        dominated = any(
            quality[j] >= quality[i] and cost[j] <= cost[i] and (quality[j] > quality[i] or cost[j] < cost[i])
            for j in range(len(quality))
            if j != i
        )
        if not dominated:
            frontier.append(i)
    return frontier


def pick_on_frontier(
    frontier: Sequence[int], quality: Sequence[float], cost: Sequence[float], policy: str
) -> int:
    """``prefer_cheap``: the cheapest; ``prefer_quality``: the best; ``balanced``: the most quality
    per dollar (a free attempt with any quality beats every paid one). Ties: the earliest."""
    if policy == "prefer_cheap":
        return min(frontier, key=lambda i: cost[i])
    if policy == "prefer_quality":
        return max(frontier, key=lambda i: quality[i])

    def per_dollar(i: int) -> float:
        if cost[i] == 0:
            return float("inf") if quality[i] > 0 else 0.0
        return quality[i] / cost[i]

    return max(frontier, key=per_dollar)


class JudgingMixin(RunnerBase):
    """Asks the evaluator model which sounding is best."""

    async def _evaluate(self, phase: Phase, candidates: Sequence[Candidate], instructions: str) -> int:
        """The 0-based position of the winner among ``candidates`` (already in index order)."""
        soundings = phase.soundings
        assert soundings is not None
        pareto = soundings.pareto_frontier
        if pareto is not None and pareto.enabled:  # Windlass checks the frontier first
            return await self._pareto_pick(phase, candidates, instructions, pareto.policy)
        costs = soundings.cost_aware_evaluation
        if costs is not None and costs.enabled and costs.show_costs_to_evaluator:
            instructions = f"{instructions}\n\n{_balance(costs)}"
            return await self._choose(
                phase, _listing(candidates, "Attempt", costs=True), len(candidates), instructions
            )
        return await self._choose(phase, _listing(candidates, "Attempt"), len(candidates), instructions)

    async def _choose(
        self, phase: Phase, listing: str, count: int, instructions: str, noun: str = "attempt"
    ) -> int:
        """One evaluator call over ``listing``; the 0-based pick."""
        from pydantic import BaseModel

        class Choice(BaseModel):
            winner: int
            reason: str = ""

        system = (
            f"{instructions}\n\nAnswer with the number (1-{count}) of the best {noun}, then a short reason."
        )
        result = await self._judge_call(phase, "evaluator", system, listing, [Choice, str])
        return parse_choice(result.output, count)

    async def _pareto_pick(
        self, phase: Phase, candidates: Sequence[Candidate], instructions: str, policy: str
    ) -> int:
        listing = _listing(candidates, "Attempt", costs=False, models=True)
        result = await self._judge_call(phase, "scorer", f"{instructions}\n\n{QUALITY_SCORING}", listing, str)
        quality = parse_scores(_to_text(result.output), len(candidates))
        unpriced = [c.index + 1 for c in candidates if c.cost is None]
        if unpriced:
            self._emit(f"phase {phase.name}: soundings {unpriced} have no known cost; counted as free")
        cost = [c.cost or 0.0 for c in candidates]
        frontier = pareto_frontier(quality, cost)
        pick = pick_on_frontier(frontier, quality, cost, policy)
        summary = ", ".join(
            f"{candidates[i].index + 1}: quality {quality[i]:g}, ${cost[i]:.6f}" for i in frontier
        )
        self._emit(
            f"phase {phase.name}: Pareto frontier [{summary}]; policy {policy} picks sounding "
            f"{candidates[pick].index + 1}"
        )
        return pick

    async def _judge_call(self, phase: Phase, role: str, system: str, prompt: str, output_type: Any) -> Any:

        soundings = phase.soundings
        assert soundings is not None
        name = soundings.evaluator_model or self._model_name(phase)
        return await self._ask(
            name, system, prompt, phase=phase.name, label=f"{phase.name}:{role}", output_type=output_type
        )


def _listing(candidates: Sequence[Candidate], noun: str, *, costs: bool = False, models: bool = False) -> str:
    """``## Attempt N`` sections (N = position, 1-based), with model and cost lines if asked."""
    sections = []
    for position, candidate in enumerate(candidates, 1):
        lines = [f"## {noun} {position}"]
        if costs or models:
            lines.append(f"Model: {candidate.model or 'default'}")
        if costs:
            lines.append(f"Cost: ${candidate.cost:.6f}" if candidate.cost is not None else "Cost: unknown")
        lines.append(_to_text(candidate.output))
        sections.append("\n".join(lines))
    return "\n\n".join(sections)


def _balance(costs: CostAwareEvaluation) -> str:
    quality, cost = round(costs.quality_weight * 100), round(costs.cost_weight * 100)
    return (
        f"## Quality and cost\nWeigh quality at {quality}% and cost at {cost}% when you choose. "
        "Between answers of about the same quality, choose the cheaper one; a clearly better answer "
        "may be worth a higher cost."
    )
