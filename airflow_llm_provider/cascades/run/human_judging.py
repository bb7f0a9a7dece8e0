"""Soundings judged by a human: ``evaluator: human`` and ``evaluator: hybrid`` (Windlass's
``runner.py`` human sounding evaluation).

The successful attempts are shown to the human (through the run's human channel: the terminal, an
answers file, or Airflow's human-in-the-loop) as one decision: an option per attempt, plus "reject
all" unless ``human_eval.allow_reject_all`` is false. ``hybrid`` first lets the LLM evaluator keep
the best ``llm_prefilter`` attempts. With no answer in ``human_eval.timeout_seconds``,
``human_eval.on_timeout`` decides as in Windlass: ``llm_fallback`` (default: the LLM evaluator
picks), ``first``, ``random`` or ``abort`` (the phase fails). Rejecting all fails the phase.
"""

from __future__ import annotations

import random
import re
from collections.abc import Mapping, Sequence
from typing import Any

from airflow_llm_provider.cascades.human import HumanOption, HumanRequest, ask
from airflow_llm_provider.cascades.run.core import _to_text
from airflow_llm_provider.cascades.run.judging import Candidate, JudgingMixin, _listing
from airflow_llm_provider.cascades.run.results import PhaseFailed
from airflow_llm_provider.cascades.spec import Phase
from airflow_llm_provider.cascades.tools.builtin import ToolServices

REJECT_ALL = "reject_all"
DEFAULT_PREVIEW = 4000
"""Characters of each attempt shown when ``human_eval.max_preview_length`` is not set."""


class HumanJudgingMixin(JudgingMixin):
    """``_human_pick``: the 0-based pick among ``good`` by a human, or None to let the LLM judge."""

    async def _human_pick(self, phase: Phase, good: list[Candidate], instructions: str) -> int | None:
        soundings = phase.soundings
        assert soundings is not None and soundings.evaluator in ("human", "hybrid")
        settings: Mapping[str, Any] = soundings.human_eval or {}
        shown = list(range(len(good)))
        keep = soundings.llm_prefilter if soundings.evaluator == "hybrid" else None
        if keep and len(good) > keep:
            shown = await self._llm_prefilter(phase, good, keep, instructions)
        preview = int(settings.get("max_preview_length") or DEFAULT_PREVIEW)
        sections = [
            f"### Attempt {n + 1}\n\n{_to_text(good[i].output)[:preview]}" for n, i in enumerate(shown)
        ]
        options = [HumanOption(str(n), f"Attempt {n + 1}") for n in range(len(shown))]
        if settings.get("allow_reject_all", True):
            options.append(HumanOption(REJECT_ALL, "Reject all", "none is acceptable: the phase fails"))
        question = f"Which attempt of phase '{phase.name}' is best?"
        timeout = settings.get("timeout_seconds")
        request = HumanRequest(
            key=self.questions.key(f"{self.cascade.cascade_id}:{phase.name}", "sounding_eval", question),
            phase=phase.name,
            kind="decision",
            question=question,
            context="\n\n".join(sections),
            options=tuple(options),
            timeout_seconds=float(timeout) if timeout else None,
            cascade_id=self.cascade.cascade_id,
        )
        self._emit(f"phase {phase.name}: {len(shown)} soundings wait for a human to pick one")
        answer = await ask((self.options.tool_services or ToolServices()).human, request, self._emit)
        if answer.timed_out:
            on_timeout = settings.get("on_timeout", "llm_fallback")
            self._emit(f"phase {phase.name}: no human pick in time; on_timeout: {on_timeout}")
            if on_timeout == "abort":
                raise PhaseFailed(phase.name, "the human evaluation of the soundings timed out")
            if on_timeout == "first":
                return shown[0]
            if on_timeout == "random":
                return random.choice(shown)
            return None  # llm_fallback
        if answer.choice == REJECT_ALL:
            raise PhaseFailed(phase.name, "the human rejected all sounding attempts")
        if answer.choice is None or not answer.choice.isdigit() or int(answer.choice) >= len(shown):
            raise PhaseFailed(phase.name, f"the human's pick {answer.choice or answer.text!r} is no attempt")
        return shown[int(answer.choice)]

    async def _llm_prefilter(
        self, phase: Phase, good: Sequence[Candidate], keep: int, instructions: str
    ) -> list[int]:
        """Positions (0-based, in ``good``) of the ``keep`` attempts the LLM evaluator ranks best."""
        soundings = phase.soundings
        assert soundings is not None
        system = (
            f"{soundings.llm_prefilter_instructions or instructions}\n\nAnswer with the numbers "
            f"(1-{len(good)}) of the best {keep} attempts, best first, separated by commas."
        )
        result = await self._judge_call(phase, "prefilter", system, _listing(good, "Attempt"), str)
        picked: list[int] = []
        for number in re.findall(r"\d+", _to_text(result.output)):
            position = int(number) - 1
            if 0 <= position < len(good) and position not in picked:
                picked.append(position)
        picked = (picked + [i for i in range(len(good)) if i not in picked])[:keep]  # short answer: fill
        self._emit(f"phase {phase.name}: LLM prefilter kept attempts {[good[i].index + 1 for i in picked]}")
        return sorted(picked)
