"""LLM phases: the phase cache, the attempts loop (retry feedback), and one model call with its
tools, handoff choice and output schema check."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, cast

from airflow_llm_provider.cascades.budget import BudgetExceeded
from airflow_llm_provider.cascades.cache import CachedPhase, cache_key
from airflow_llm_provider.cascades.run.base import RunnerBase
from airflow_llm_provider.cascades.run.core import DEFAULT_MODEL, _describe, _to_text
from airflow_llm_provider.cascades.run.results import PhaseFailed
from airflow_llm_provider.cascades.spec import Phase
from airflow_llm_provider.cascades.tools.state import recording_state_writes
from airflow_llm_provider.cascades.usage import CallRecord, estimate_tokens

if TYPE_CHECKING:
    from pydantic_ai.settings import ModelSettings


class LlmPhaseMixin(RunnerBase):
    """Runs LLM phases (soundings aside)."""

    async def _run_llm_phase(
        self, phase: Phase, extra: Mapping[str, Any] | None = None, label: str = ""
    ) -> tuple[Any, str | None]:
        """The phase (one item of a mapped phase) within its wall-clock limit: its own ``timeout``,
        else ``llm_phase_timeout``; a silent model must not hold a worker for hours."""
        from airflow_llm_provider.cascades.spec import parse_duration

        if phase.timeout is not None:
            seconds, source = parse_duration(phase.timeout), f"the phase's timeout {phase.timeout!r}"
        else:
            seconds = self.options.limits.llm_phase_timeout
            source = f"llm_phase_timeout={seconds:g}, the default of LLM phases without `timeout`"
        deadline = asyncio.timeout(seconds)
        try:
            async with deadline:
                return await self._llm_phase(phase, extra, label)
        except TimeoutError as err:
            if not deadline.expired():
                raise  # a timeout of something inside, reported as such
            raise PhaseFailed(phase.name, f"timed out after {seconds:g}s ({source})") from err

    async def _llm_phase(
        self, phase: Phase, extra: Mapping[str, Any] | None, label: str
    ) -> tuple[Any, str | None]:
        # Context, token budget, then sub-cascades/on_start async cascades (context.py).
        system, user = await self._phase_prompts(phase, extra)
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
                self._state.update(hit.output.get("state") or {})  # its set_state writes (tools/state.py)
                self._after_accept(phase, hit.output["value"])
                return hit.output["value"], hit.output["route"]

        with recording_state_writes(self._state) as written:  # kept with a cached answer
            await self._check_pre_wards(phase)
            if phase.soundings is not None and self._sounding_factor(phase, extra) > 1:
                output, route = await self._run_soundings(phase, system, user, extra, label)
            else:
                output, route = await self._attempts(phase, system, user, model_name, label)
            self._after_accept(phase, output)

        route = self._llm_route(phase, route)
        if key is not None:
            spent = self.usage.by_phase().get(phase.name)
            await self._cache_put(
                key,
                CachedPhase(
                    output={"value": output, "route": route, "state": written},
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
        settings: Mapping[str, Any] | None = None,
    ) -> tuple[Any, str | None]:
        """Up to ``rules.max_attempts`` fresh conversations; a rejected one feeds its reason into
        the next (``retry_instructions``). ``settings``: model settings of this call over the run's
        (a sounding's model from ``soundings.models`` with its temperature/max_tokens)."""
        rules = phase.rules
        max_attempts = rules.max_attempts if rules else 1
        system = self._with_validation_goal(phase, system)
        feedback: str | None = None
        for attempt in range(1, max_attempts + 1):
            prompt = user if feedback is None else f"{user}\n\n## Retry\n{feedback}"
            try:
                output, route, passed = await self._call_llm(
                    phase, system, prompt, model_name, attempt, sounding, settings
                )
            except _AttemptRejected as rejected:
                if rejected.schema:
                    self._state["last_schema_error"] = rejected.reason
                if rules is not None and rules.retry_instructions:
                    feedback = self._retry_text(phase, rejected.reason, attempt, max_attempts)
                else:
                    feedback = rejected.feedback
                self._emit(
                    f"phase {phase.name}{label}: attempt {attempt}/{max_attempts} rejected: {rejected.reason}"
                )
                continue
            verdict = await self._accept(phase, output, attempt, max_attempts, loop_until_passed=passed)
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
        settings: Mapping[str, Any] | None = None,
    ) -> tuple[Any, str | None, bool]:
        """One attempt: up to ``rules.max_turns`` turns in one conversation. Turn 1 sends the
        task, later turns the ``turn_prompt``; ``loop_until`` passing after a turn ends the loop.
        Returns the last output, the chosen handoff and whether ``loop_until`` already passed."""
        from pydantic_ai import Agent
        from pydantic_ai.exceptions import UnexpectedModelBehavior
        from pydantic_ai.usage import UsageLimits

        name = model_name or DEFAULT_MODEL
        # tackle (incl. manifest, cascades by id, tool_caching) and route_to: tackle.py
        tools, chosen = await self._phase_tools(phase, system)
        output_type: Any = str
        wrapped = False
        if phase.output_schema is not None:
            from pydantic_ai import StructuredDict

            schema, wrapped = _object_schema(phase.output_schema)
            output_type = StructuredDict(schema, name=f"{phase.name}_output")
        agent = Agent(
            self._model(model_name),
            output_type=output_type,
            instructions=system or None,
            tools=tools,
            capabilities=self._history_processors(phase) or None,  # intra_context (context.py)
        )
        max_turns = phase.rules.max_turns if phase.rules else 1
        # Per turn: the answer, one round of tool results, one output retry.
        limits = UsageLimits(request_limit=2 + (1 if tools else 0))
        history: list[Any] | None = None
        estimated = estimate_tokens(system)
        output: Any = None
        passed = False
        for turn in range(1, max_turns + 1):
            message = prompt if turn == 1 else self._turn_prompt(phase, turn, max_turns)
            estimated += estimate_tokens(message)
            try:
                result = await self._guarded_run(
                    agent,
                    message,
                    phase=phase.name,
                    label=phase.name,
                    model=name,
                    estimated_input_tokens=estimated,
                    attempt=attempt,
                    sounding=sounding,
                    usage_limits=limits,
                    model_settings=cast(
                        "ModelSettings | None",
                        {**(self.options.model_settings or {}), **settings}
                        if settings
                        else self.options.model_settings,
                    ),
                    message_history=history,
                )
            except UnexpectedModelBehavior as err:
                raise _AttemptRejected(str(err), f"Your previous answer was rejected: {err}") from err
            except Exception as err:  # HTTP errors after the client's own retries, limits...
                if isinstance(err, BudgetExceeded):
                    raise
                raise PhaseFailed(phase.name, f"LLM call failed: {_describe(err)}") from err
            output = result.output
            if wrapped and isinstance(output, dict):
                output = output.get(WRAPPED_KEY)
            history = result.all_messages()
            estimated += estimate_tokens(_to_text(output))
            if await self._turn_passes(phase, output, turn, max_turns):
                passed = True
                break
        if phase.output_schema is not None:
            problem = _schema_problem(output, phase.output_schema)
            if problem:
                raise _AttemptRejected(
                    problem, f"Your answer did not match the required JSON schema: {problem}", schema=True
                )
        return output, chosen.get("target"), passed

    async def _run_on_error_fallback(
        self,
        phase: Phase,
        error: BaseException | None,
        inputs: Mapping[str, Any],
        extra: Mapping[str, Any] | None = None,
    ) -> Any:
        """``on_error: {instructions, ...}`` of a tool phase whose tool failed after its retries:
        the body runs as a nameless LLM phase (``<phase>_on_error``) that sees the error in
        ``state.last_deterministic_error`` and in its prompt; its output is the phase's output."""
        fallback = Phase.model_validate({"name": f"{phase.name}_on_error", **(phase.on_error_inline or {})})
        message = _describe(error)
        self._state["last_deterministic_error"] = {
            "phase": phase.name,
            "tool": phase.tool,
            "error": message,
            "inputs": dict(inputs),
        }
        self._emit(f"phase {phase.name}: failed ({message}); on_error -> LLM fallback {fallback.name}")
        system = self.render(fallback.instructions or "", extra)
        # context.from resolves relative to the tool phase's place in the cascade.
        user = self._user_prompt(fallback.model_copy(update={"name": phase.name}), extra)
        failure = f"## Error\nThe tool `{phase.tool}` of phase {phase.name} failed: {message}"
        user = failure if user == "Begin." else f"{user}\n\n{failure}"
        await self._check_pre_wards(fallback)
        output, _ = await self._attempts(fallback, system, user, self._model_name(fallback), "")
        self._after_accept(fallback, output)
        return output


class _AttemptRejected(Exception):
    def __init__(self, reason: str, feedback: str, *, schema: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.feedback = feedback
        self.schema = schema


def _schema_problem(output: Any, schema: Mapping[str, Any]) -> str | None:
    import jsonschema

    try:
        jsonschema.validate(output, schema)
    except jsonschema.ValidationError as err:
        where = "/".join(str(p) for p in err.absolute_path) or "<root>"
        return f"{where}: {err.message}"
    return None


WRAPPED_KEY = "result"


def _object_schema(schema: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """Structured output must be an object for the model's tool/JSON modes; Windlass also allows
    an array or a scalar (e.g. ``windlass_data`` rows), which is asked for under ``result`` and
    unwrapped from it. Returns the schema to ask for and whether it was wrapped."""
    kind = schema.get("type")
    if kind == "object" or (kind is None and "properties" in schema):
        return schema, False
    return {"type": "object", "properties": {WRAPPED_KEY: schema}, "required": [WRAPPED_KEY]}, True
