"""Acceptance rules: ``loop_until``, pre and post wards, retry instructions, and running a
validator (a tool or an LLM validator) by the ``{valid, reason}`` protocol."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from airflow_llm_provider.cascades.run.base import RunnerBase
from airflow_llm_provider.cascades.run.core import DEFAULT_MODEL, _to_text
from airflow_llm_provider.cascades.run.results import PhaseFailed
from airflow_llm_provider.cascades.spec import Phase, ValidatorRef
from airflow_llm_provider.cascades.tools import call_tool
from airflow_llm_provider.cascades.usage import estimate_tokens


class RulesMixin(RunnerBase):
    """Decides whether an output is accepted, retried or blocks the phase."""

    async def _accept(self, phase: Phase, output: Any, attempt: int, max_attempts: int) -> str | None:
        """None when the output passes loop_until and the post wards; else the retry feedback."""
        rules = phase.rules
        if rules is not None and rules.loop_until:
            valid, reason = await self._validate(rules.loop_until, output)
            if not valid:
                self._state["last_validation_error"] = reason
                return self._retry_text(phase, reason, attempt, max_attempts)
        for ward in phase.wards.post if phase.wards else []:
            valid, reason = await self._validate(ward.validator, output)
            if valid:
                continue
            if ward.mode == "advisory":
                self._emit(f"phase {phase.name}: advisory ward {ward.validator}: {reason}")
            elif ward.mode == "blocking":
                raise PhaseFailed(phase.name, f"blocked by ward {ward.validator}: {reason}")
            else:
                self._state["last_validation_error"] = reason
                return self._retry_text(phase, reason, attempt, max_attempts)
        return None

    async def _check_pre_wards(self, phase: Phase) -> None:
        for ward in phase.wards.pre if phase.wards else []:
            valid, reason = await self._validate(ward.validator, self._input)
            if valid:
                continue
            if ward.mode == "advisory":
                self._emit(f"phase {phase.name}: advisory pre-ward {ward.validator}: {reason}")
            else:
                raise PhaseFailed(phase.name, f"blocked by pre-ward {ward.validator}: {reason}")

    def _retry_text(self, phase: Phase, reason: str, attempt: int, max_attempts: int) -> str:
        template = phase.rules.retry_instructions if phase.rules else None
        if template:
            return self.render(
                template, {"validation_error": reason, "attempt": attempt, "max_attempts": max_attempts}
            )
        return f"Your previous answer was rejected: {reason}. Try again."

    async def _validate(self, validator: ValidatorRef, content: Any) -> tuple[bool, str]:
        """Run a validator by the ``{valid, reason}`` protocol."""
        if not isinstance(validator, str):  # validation refuses these until the engine runs them
            raise PhaseFailed("validator", f"{validator.label} validators are not supported yet")
        spec = self.cascade.validators.get(validator)
        if spec is None:
            function = self.tools.resolve(validator)
            verdict = await call_tool(function, {"content": content})
        else:
            from pydantic import BaseModel
            from pydantic_ai import Agent

            class Verdict(BaseModel):
                valid: bool
                reason: str = ""

            name = spec.model or self.cascade.defaults.model or self.options.model
            agent = Agent(self._model(name), output_type=Verdict, instructions=self.render(spec.instructions))
            result = await self._guarded_run(
                agent,
                "## Content to validate\n" + _to_text(content),
                phase=f"validator {validator}",
                label=f"validator:{validator}",
                model=name or DEFAULT_MODEL,
                estimated_input_tokens=estimate_tokens(spec.instructions)
                + estimate_tokens(_to_text(content)),
            )
            verdict = result.output.model_dump()
        if isinstance(verdict, bool):
            return verdict, "" if verdict else f"{validator} said no"
        if isinstance(verdict, Mapping) and "valid" in verdict:
            return bool(verdict["valid"]), str(verdict.get("reason", ""))
        raise PhaseFailed("validator", f"validator '{validator}' returned {verdict!r}, not {{valid, reason}}")
