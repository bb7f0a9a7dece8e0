"""The runner's shared core: its state, template rendering, model resolution, the guarded LLM
call with its budget check and usage record, progress lines, and small helpers every concern uses."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow_llm_provider.cascades.cache import content_hash
from airflow_llm_provider.cascades.run.results import PhaseRun, RunOptions
from airflow_llm_provider.cascades.spec import Cascade, Phase
from airflow_llm_provider.cascades.templates import is_template, sandboxed_environment
from airflow_llm_provider.cascades.tools import ToolRegistry
from airflow_llm_provider.cascades.usage import (
    BudgetGuard,
    CallObserver,
    CallRecord,
    ModelPrice,
    UsageTracker,
    price_call,
)

if TYPE_CHECKING:
    from pydantic_ai.models import Model

# The engine's progress lines keep the logger name they had before the engine was split up.
log = logging.getLogger("airflow_llm_provider.cascades.runner")

_SINGLE_EXPRESSION = re.compile(r"^\s*\{\{((?:(?!\}\}|\{\{).)*)\}\}\s*$", re.DOTALL)

DEFAULT_MODEL = "test"


class RunnerCore:
    """State shared by every concern of the runner, and the services they all use."""

    def __init__(
        self,
        cascade: Cascade,
        options: RunOptions | None = None,
        *,
        parent: RunnerCore | None = None,
        base_dir: Path | None = None,
    ) -> None:
        self.cascade = cascade
        self.options = options or RunOptions()
        tools = self.options.tools
        self.tools = tools if isinstance(tools, ToolRegistry) else ToolRegistry(tools)
        # A sub-cascade spends from its parent's usage and budget, and resolves its own files
        # (sql:, cascade:) relative to its own folder.
        self.depth: int = parent.depth + 1 if parent else 0
        self.base_dir = base_dir or self.options.base_dir
        self.usage: UsageTracker = parent.usage if parent else UsageTracker()
        self.budget: BudgetGuard = (
            parent.budget
            if parent
            else BudgetGuard.from_budget(self.options.budget or cascade.budget, self.usage)
        )
        self.observer: CallObserver | None = parent.observer if parent else self.options.call_observer
        self.record = self.options.record
        if self.record is not None and parent is None:
            self.record.usage = self.usage
        self.cascade_hash = content_hash(cascade.model_dump(mode="json", by_alias=True))
        self._models: dict[str | None, Model] = {}
        self._env = sandboxed_environment()
        self._templates: dict[str, Any] = {}
        self._expressions: dict[str, Any] = {}
        self._outputs: dict[str, Any] = {}
        self._state: dict[str, Any] = {}
        self._trace: list[PhaseRun] = []
        self._visits: dict[str, int] = {}
        self._input: dict[str, Any] = {}
        self._slots = asyncio.Semaphore(max(1, self.options.max_concurrency))
        self._one_at_a_time: asyncio.Lock = parent._one_at_a_time if parent else asyncio.Lock()

    def _variables(self, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
        variables = dict(self.options.template_context)
        variables.update({"input": self._input, "outputs": dict(self._outputs), "state": dict(self._state)})
        variables.update(extra or {})
        return variables

    def render(self, text: str, extra: Mapping[str, Any] | None = None) -> str:
        if not is_template(text):
            return text
        template = self._templates.get(text)
        if template is None:  # compile each template once per run, not once per render
            template = self._templates[text] = self._env.from_string(text)
        return template.render(self._variables(extra))

    def _render_value(self, value: Any, extra: Mapping[str, Any] | None) -> Any:
        """Render tool inputs. A value that is one ``{{ expression }}`` keeps its native type
        (numbers, lists, dicts); other rendered text that looks like JSON is decoded (Windlass rule)."""
        if isinstance(value, str):
            if not is_template(value):
                return value
            single = _SINGLE_EXPRESSION.match(value)
            if single is not None:
                expression = self._expressions.get(value)
                if expression is None:
                    expression = self._expressions[value] = self._env.compile_expression(single.group(1))
                return expression(**self._variables(extra))
            rendered = self.render(value, extra)
            if rendered[:1] in '{["' or rendered in ("true", "false", "null"):
                try:
                    return json.loads(rendered)
                except ValueError:
                    return rendered
            return rendered
        if isinstance(value, dict):
            return {k: self._render_value(v, extra) for k, v in value.items()}
        if isinstance(value, list):
            return [self._render_value(v, extra) for v in value]
        return value

    def _model_name(self, phase: Phase, override: str | None = None) -> str | None:
        return override or self.options.model or phase.model or self.cascade.defaults.model

    def _model(self, name: str | None) -> Model:
        if name not in self._models:
            if self.options.model_factory is not None:
                self._models[name] = self.options.model_factory(name)
            else:
                from pydantic_ai.models import infer_model

                self._models[name] = infer_model(name or DEFAULT_MODEL)
        model = self._models[name]
        if self.record is not None:
            system, model_name = getattr(model, "system", None), getattr(model, "model_name", None)
            label = f"{system}:{model_name}" if system and model_name else str(model_name or name)
            if label not in self.record.models:
                self.record.models.append(label)
        return model

    async def _guarded_run(
        self,
        agent: Any,
        prompt: str,
        *,
        phase: str,
        label: str,
        model: str,
        estimated_input_tokens: int,
        attempt: int = 1,
        sounding: int | None = None,
        **run_kwargs: Any,
    ) -> Any:
        """One LLM call holding a concurrency slot from the budget check to the usage record, so a
        call that waited for its slot is checked against what the calls before it really spent
        (otherwise parallel phases or soundings would all pass the check before any of them ran)."""
        async with self._slots:
            # Near a shared budget's limit, this task's calls go one at a time, so each is checked
            # against everything spent before it: the overshoot stays within one call.
            serial = self._one_at_a_time if self.observer and self.observer.near_limit() else None
            async with serial or contextlib.nullcontext():
                self._before_call(
                    phase,
                    model=model,
                    estimated_input_tokens=estimated_input_tokens,
                    declared=self.options.declared_price,
                )
                started = time.monotonic()
                result = await agent.run(prompt, **run_kwargs)
                self._record(label, model, result, attempt=attempt, sounding=sounding, started=started)
        return result

    def _before_call(
        self,
        phase: str,
        *,
        model: str,
        estimated_input_tokens: int,
        declared: ModelPrice | None = None,
    ) -> None:
        """The run's own budget, then whoever else counts (raises BudgetExceeded to stop the call)."""
        self.budget.check_before_call(
            phase, model=model, estimated_input_tokens=estimated_input_tokens, declared=declared
        )
        if self.observer is not None:
            self.observer.before_call(phase, model)

    def _record(
        self,
        label: str,
        model: str,
        result: Any,
        *,
        attempt: int = 1,
        sounding: int | None = None,
        started: float | None = None,
    ) -> None:
        """Count one agent run's requests, tokens and dollars."""
        usage = result.usage if hasattr(result.usage, "requests") else result.usage()  # a method before
        input_tokens, output_tokens = usage.input_tokens or 0, usage.output_tokens or 0
        record = CallRecord(
            phase=label,
            attempt=attempt,
            model=model,
            requests=usage.requests,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            cost_usd=price_call(model, input_tokens, output_tokens, declared=self.options.declared_price),
            sounding=sounding,
            duration_s=time.monotonic() - started if started is not None else 0.0,
        )
        self.usage.record(record)
        if self.observer is not None:
            self.observer.after_call(self.cascade.cascade_id, record)

    def _emit(self, line: str) -> None:
        if self.options.on_event is not None:
            self.options.on_event(line)
        else:
            log.info("%s", line)


def _to_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, indent=2, default=str, ensure_ascii=False)


def _describe(err: BaseException | None) -> str:
    if err is None:
        return "unknown error"
    if isinstance(err, TimeoutError | asyncio.TimeoutError):
        return "timed out"
    return f"{type(err).__name__}: {err}"
