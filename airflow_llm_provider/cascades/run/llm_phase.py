"""LLM phases: the phase cache, the attempts loop (retry feedback), and one model call with its
tools, handoff choice and output schema check."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, cast

from airflow_llm_provider.cascades.cache import CachedPhase, cache_key
from airflow_llm_provider.cascades.run.base import RunnerBase
from airflow_llm_provider.cascades.run.core import DEFAULT_MODEL, _describe
from airflow_llm_provider.cascades.run.results import PhaseFailed
from airflow_llm_provider.cascades.spec import Phase
from airflow_llm_provider.cascades.usage import BudgetExceeded, CallRecord, estimate_tokens

if TYPE_CHECKING:
    from pydantic_ai.settings import ModelSettings


class LlmPhaseMixin(RunnerBase):
    """Runs LLM phases (soundings aside)."""

    async def _run_llm_phase(
        self, phase: Phase, extra: Mapping[str, Any] | None = None, label: str = ""
    ) -> tuple[Any, str | None]:
        system = self.render(phase.instructions or "", extra)
        user = self._user_prompt(phase, extra)
        model_name = self._model_name(phase)
        key = None
        if self.options.cache is not None:
            key = cache_key(
                scope=self.options.cache_scope,
                cascade_hash=self.cascade_hash,
                # A revisited phase (a guarded loop) must not replay its earlier answer.
                phase=f"{phase.name}{label}@{self._visits.get(phase.name, 1)}",
                rendered_inputs={"system": system, "user": user},
                model=model_name,
            )
            hit = await self._cache_get(key)
            if hit is not None:
                self.usage.record_cache_hit(phase.name)
                if self.observer is not None:
                    self.observer.after_call(
                        self.cascade.cascade_id,
                        CallRecord(phase.name, 1, model_name or DEFAULT_MODEL, 0, 0, 0, 0.0, cache_hit=True),
                    )
                self._emit(f"phase {phase.name}{label}: answered from cache (no LLM call)")
                return hit.output["value"], hit.output["route"]

        await self._check_pre_wards(phase)
        if phase.soundings is not None and self._sounding_factor(phase, extra) > 1:
            output, route = await self._run_soundings(phase, system, user, extra, label)
        else:
            output, route = await self._attempts(phase, system, user, model_name, label)

        route = self._llm_route(phase, route)
        if key is not None:
            spent = self.usage.by_phase().get(phase.name)
            await self._cache_put(
                key,
                CachedPhase(
                    output={"value": output, "route": route},
                    model=model_name,
                    usage=spent.as_dict() if spent else {},
                    created_at=time.time(),
                ),
            )
        return output, route

    async def _cache_get(self, key: str) -> CachedPhase | None:
        # Off the event loop: the PostgreSQL backend blocks.
        assert self.options.cache is not None
        return await asyncio.to_thread(
            self.options.cache.get, key, max_age_seconds=self.options.cache_max_age_seconds
        )

    async def _cache_put(self, key: str, entry: CachedPhase) -> None:
        """A cache that cannot store is a lost saving, not a failed phase: log and go on."""
        assert self.options.cache is not None
        try:
            await asyncio.to_thread(self.options.cache.put, key, entry)
        except Exception as err:
            self._emit(f"cache: could not store a result ({_describe(err)}); continuing without it")

    @staticmethod
    def _llm_route(phase: Phase, chosen: str | None) -> str | None:
        if chosen is not None:
            return chosen
        if phase.handoffs:
            return phase.handoffs[0].target
        return None

    async def _attempts(
        self,
        phase: Phase,
        system: str,
        user: str,
        model_name: str | None,
        label: str,
        sounding: int | None = None,
    ) -> tuple[Any, str | None]:
        rules = phase.rules
        max_attempts = rules.max_attempts if rules else 1
        feedback: str | None = None
        for attempt in range(1, max_attempts + 1):
            prompt = user if feedback is None else f"{user}\n\n## Retry\n{feedback}"
            try:
                output, route = await self._call_llm(phase, system, prompt, model_name, attempt, sounding)
            except _AttemptRejected as rejected:
                feedback = rejected.feedback
                self._emit(
                    f"phase {phase.name}{label}: attempt {attempt}/{max_attempts} rejected: {rejected.reason}"
                )
                continue
            verdict = await self._accept(phase, output, attempt, max_attempts)
            if verdict is None:
                return output, route
            feedback = verdict
            self._emit(f"phase {phase.name}{label}: attempt {attempt}/{max_attempts} rejected: {verdict}")
        raise PhaseFailed(phase.name, f"no acceptable output after {max_attempts} attempt(s): {feedback}")

    async def _call_llm(
        self,
        phase: Phase,
        system: str,
        prompt: str,
        model_name: str | None,
        attempt: int,
        sounding: int | None,
    ) -> tuple[Any, str | None]:
        from pydantic_ai import Agent, Tool
        from pydantic_ai.exceptions import UnexpectedModelBehavior
        from pydantic_ai.usage import UsageLimits

        name = model_name or DEFAULT_MODEL
        tools = [self._tackle_tool(tool_name) for tool_name in phase.tackle]
        chosen: dict[str, str] = {}
        targets = phase.handoff_targets
        if len(targets) > 1 or any(h.description for h in phase.handoffs):
            menu = "; ".join(f"{h.target}: {h.description or ''}".strip(": ") for h in phase.handoffs)

            def route_to(target: str) -> str:
                """Choose the next phase."""
                if target not in targets:
                    return f"'{target}' is not a valid target; choose one of {targets}"
                chosen["target"] = target
                return f"routing to {target}"

            route_to.__doc__ = f"Choose which phase runs next. Targets: {menu}"
            tools.append(Tool(route_to, name="route_to"))
        output_type: Any = str
        if phase.output_schema is not None:
            from pydantic_ai import StructuredDict

            output_type = StructuredDict(phase.output_schema, name=f"{phase.name}_output")
        agent = Agent(
            self._model(model_name), output_type=output_type, instructions=system or None, tools=tools
        )
        max_turns = phase.rules.max_turns if phase.rules else 1
        limits = UsageLimits(request_limit=max_turns + 1 + (1 if tools else 0) * max_turns)
        try:
            result = await self._guarded_run(
                agent,
                prompt,
                phase=phase.name,
                label=phase.name,
                model=name,
                estimated_input_tokens=estimate_tokens(system) + estimate_tokens(prompt),
                attempt=attempt,
                sounding=sounding,
                usage_limits=limits,
                model_settings=cast("ModelSettings | None", self.options.model_settings),
            )
        except UnexpectedModelBehavior as err:
            raise _AttemptRejected(str(err), f"Your previous answer was rejected: {err}") from err
        except Exception as err:  # HTTP errors after the client's own retries, limits...
            if isinstance(err, BudgetExceeded):
                raise
            raise PhaseFailed(phase.name, f"LLM call failed: {_describe(err)}") from err
        output = result.output
        if phase.output_schema is not None:
            problem = _schema_problem(output, phase.output_schema)
            if problem:
                raise _AttemptRejected(
                    problem, f"Your answer did not match the required JSON schema: {problem}"
                )
        return output, chosen.get("target")


class _AttemptRejected(Exception):
    def __init__(self, reason: str, feedback: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.feedback = feedback


def _schema_problem(output: Any, schema: Mapping[str, Any]) -> str | None:
    import jsonschema

    try:
        jsonschema.validate(output, schema)
    except jsonschema.ValidationError as err:
        where = "/".join(str(p) for p in err.absolute_path) or "<root>"
        return f"{where}: {err.message}"
    return None
