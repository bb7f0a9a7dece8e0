"""Acceptance rules of an LLM phase: the ``loop_until`` goal told to the model, the per-turn early
exit, ``loop_until`` and the post wards after an attempt, pre wards, retry instructions, follow-up
turn prompts and ``output_extraction``. Validators themselves run in ``validators.py``."""

from __future__ import annotations

import json
import re
from typing import Any

from airflow_llm_provider.cascades.run.core import _to_text
from airflow_llm_provider.cascades.run.results import PhaseFailed
from airflow_llm_provider.cascades.run.validators import ValidatorsMixin
from airflow_llm_provider.cascades.spec import Phase, validator_label

DEFAULT_TURN_PROMPT = "Continue: review your previous answer, then improve or complete it."
"""Turns 2+ of an attempt when the phase sets no ``rules.turn_prompt``."""

_CODE_FENCE = re.compile(r"```(?:\w+)?\n(.*?)```", re.DOTALL)


class RulesMixin(ValidatorsMixin):
    """Decides whether an output is accepted, retried or blocks the phase."""

    async def _accept(
        self, phase: Phase, output: Any, attempt: int, max_attempts: int, loop_until_passed: bool = False
    ) -> str | None:
        """None when the output passes loop_until and the post wards; else the retry feedback.
        ``loop_until_passed``: the turn loop already saw it pass (Windlass does not run it twice)."""
        rules = phase.rules
        if rules is not None and rules.loop_until is not None and not loop_until_passed:
            valid, reason = await self._validate(rules.loop_until, output)
            if not valid:
                self._state["last_validation_error"] = reason
                return self._retry_text(phase, reason, attempt, max_attempts)
        for ward in phase.wards.post if phase.wards else []:
            valid, reason = await self._validate(ward.validator, output)
            if valid:
                continue
            label = validator_label(ward.validator)
            if ward.mode == "advisory":
                self._emit(f"phase {phase.name}: advisory ward {label}: {reason}")
            elif ward.mode == "blocking":
                raise PhaseFailed(phase.name, f"blocked by ward {label}: {reason}")
            else:
                self._state["last_validation_error"] = reason
                return self._retry_text(phase, reason, attempt, max_attempts)
        return None

    async def _check_pre_wards(self, phase: Phase) -> None:
        for ward in phase.wards.pre if phase.wards else []:
            valid, reason = await self._validate(ward.validator, self._input)
            if valid:
                continue
            label = validator_label(ward.validator)
            if ward.mode == "advisory":
                self._emit(f"phase {phase.name}: advisory pre-ward {label}: {reason}")
            else:
                raise PhaseFailed(phase.name, f"blocked by pre-ward {label}: {reason}")

    def _retry_text(self, phase: Phase, reason: str, attempt: int, max_attempts: int) -> str:
        template = phase.rules.retry_instructions if phase.rules else None
        if template:
            return self.render(
                template, {"validation_error": reason, "attempt": attempt, "max_attempts": max_attempts}
            )
        return f"Your previous answer was rejected: {reason}. Try again."

    def _with_validation_goal(self, phase: Phase, system: str) -> str:
        """The system prompt told what ``loop_until`` checks (as Windlass does), unless
        ``loop_until_silent``; ``loop_until_prompt`` replaces our description of the check."""
        rules = phase.rules
        if rules is None or rules.loop_until is None or rules.loop_until_silent:
            return system
        if rules.loop_until_prompt:
            goal = self.render(rules.loop_until_prompt)
        else:
            label = validator_label(rules.loop_until)
            description = self._validator_description(rules.loop_until)
            goal = f"Before your answer is accepted, the validator '{label}' checks it" + (
                f": {description}" if description else "."
            )
        block = f"## Acceptance check\n{goal}\nYou have {rules.max_attempts} attempt(s) to pass this check."
        return f"{system}\n\n{block}" if system else block

    async def _turn_passes(self, phase: Phase, output: Any, turn: int, max_turns: int) -> bool:
        """After a turn that is not the last: whether ``loop_until`` already passes, which ends the
        turn loop early (the attempt is then accepted without running it again)."""
        rules = phase.rules
        if rules is None or rules.loop_until is None or turn >= max_turns:
            return False
        valid, _ = await self._validate(rules.loop_until, output)
        if valid:
            self._emit(f"phase {phase.name}: loop_until passed after turn {turn}/{max_turns}")
        return valid

    def _turn_prompt(self, phase: Phase, turn: int, max_turns: int) -> str:
        """The user message of turn ``turn`` (2+), rendered with ``turn`` and ``max_turns``."""
        template = phase.rules.turn_prompt if phase.rules else None
        if not template:
            return DEFAULT_TURN_PROMPT
        return self.render(template, {"turn": turn, "max_turns": max_turns})

    def _after_accept(self, phase: Phase, output: Any) -> None:
        """State an accepted output leaves behind: ``validated_output`` when the phase has an
        ``output_schema`` (Windlass stores the parsed object there), and ``output_extraction``."""
        if phase.output_schema is not None:
            self._state["validated_output"] = output
        spec = phase.output_extraction
        if spec is None:
            return
        match = re.search(spec.pattern, _to_text(output), re.DOTALL | re.IGNORECASE)
        if match is None:
            if spec.required:
                raise PhaseFailed(
                    phase.name,
                    f"output_extraction: required pattern {spec.pattern!r} not found in the output",
                )
            return
        value: Any = (match.group(1) if match.groups() else match.group(0)) or ""
        value = value.strip()
        if spec.format == "json":
            try:
                value = json.loads(value)
            except ValueError as err:
                if spec.required:
                    raise PhaseFailed(
                        phase.name, f"output_extraction: '{spec.store_as}' is not valid JSON: {err}"
                    ) from err
        elif spec.format == "code":
            fence = _CODE_FENCE.search(value)
            if fence is not None:
                value = fence.group(1)
        self._state[spec.store_as] = value
