"""The runner's shared core: its state, template rendering, model resolution, the guarded LLM
call with its budget check and usage record, progress lines, and small helpers every concern uses."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow_llm_provider.cascades.budget import BudgetGuard, CallAccount
from airflow_llm_provider.cascades.cache import content_hash
from airflow_llm_provider.cascades.human import QuestionCounter
from airflow_llm_provider.cascades.limits import Tally
from airflow_llm_provider.cascades.run.budgeted_model import budgeted_model
from airflow_llm_provider.cascades.run.results import PhaseFailed, PhaseRun, RunOptions
from airflow_llm_provider.cascades.spec import Cascade, Phase
from airflow_llm_provider.cascades.templates import is_template, sandboxed_environment
from airflow_llm_provider.cascades.tools import ToolRegistry
from airflow_llm_provider.cascades.tools.builtin import RunSession, ToolServices
from airflow_llm_provider.cascades.trust import python_tool_policy
from airflow_llm_provider.cascades.usage import (
    CallObserver,
    CallRecord,
    UsageTracker,
    estimate_tokens,
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
        # A sub-cascade spends from its parent's usage and budget, and resolves its own files
        # (sql:, cascade:) relative to its own folder.
        self.depth: int = parent.depth + 1 if parent else 0
        self.base_dir = base_dir or self.options.base_dir
        # The top cascade's folder: its children (in subfolders) may name files anywhere under it.
        self.root_dir: Path | None = parent.root_dir if parent else self.base_dir
        tools = self.options.tools
        registry = tools if isinstance(tools, ToolRegistry) else ToolRegistry(tools)
        self.tools = registry.with_policy(python_tool_policy(self.root_dir))
        self.usage: UsageTracker = parent.usage if parent else UsageTracker()
        # Child cascade runs of the whole run tree, against limits.max_sub_cascade_runs (children.py).
        self.sub_runs: Tally = parent.sub_runs if parent else Tally()
        # Numbers the questions to humans, so a run resumed after an answer finds it (human.py).
        self.questions: QuestionCounter = parent.questions if parent else QuestionCounter()
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
        # What an LLM phase may see of the run so far (context.py): Windlass's echo history and
        # lineage, each phase's conversation and state keys; async children the root run awaits.
        self._history: list[dict[str, Any]] = []
        self._lineage: list[dict[str, Any]] = []
        self._conversations: dict[str, list[dict[str, Any]]] = {}
        self._state_keys: dict[str, list[str]] = {}
        self._snapshots: dict[str, Any] = {}
        self._background: list[asyncio.Task[Any]] = parent._background if parent else []
        # Built-in tools' per-run resources (session database, scratch folder). A child cascade
        # gets its own session, as in Windlass (it does not see its parent's session tables), under
        # the same id (its artifacts are the task's); the run tree's sessions are closed together
        # when the top run ends (runner.py).
        session_id: str = parent.session.session_id if parent else self.options.session_id or uuid.uuid4().hex
        self.session: RunSession = RunSession(
            session_id,
            (self.options.tool_services or ToolServices()).scratch_root,
        )
        self._sessions: list[RunSession] = parent._sessions if parent else []
        self._sessions.append(self.session)

    def _variables(self, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
        # Outside a sounding, Windlass renders sounding_index 0, sounding_factor 1, is_sounding
        # false; a sounding passes its own in ``extra`` (soundings.py).
        variables: dict[str, Any] = {"sounding_index": 0, "sounding_factor": 1, "is_sounding": False}
        variables.update(self.options.template_context)
        variables.update({"input": self._input, "outputs": dict(self._outputs), "state": dict(self._state)})
        variables.update({"history": list(self._history), "lineage": self._lineage_view()})
        variables.update(extra or {})
        return variables

    def render(self, text: str, extra: Mapping[str, Any] | None = None) -> str:
        """Render a cascade template; ``@path`` renders the template in that file (Windlass's rule,
        for every rendered prompt)."""
        template = self._templates.get(text)
        if template is None:  # compile each template once per run, not once per render
            source = self._template_file(text[1:]) if _is_file_reference(text) else text
            if not is_template(source):
                return source
            template = self._templates[text] = self._env.from_string(source)
        return template.render(self._variables(extra))

    def _template_file(self, relative: str) -> str:
        from airflow_llm_provider.cascades.references import find_relative_file

        path = find_relative_file(relative.strip(), self.base_dir or Path.cwd())
        if path is None:
            raise FileNotFoundError(f"template file '{relative.strip()}' not found from {self.base_dir}")
        return path.read_text(encoding="utf-8")

    def close_sessions(self) -> None:
        """Remove the scratch folders and session databases of this run and its children."""
        for session in self._sessions:
            session.close()

    def _tool_folders(self) -> list[Path]:
        """Where cascades usable as tools by ``cascade_id`` are looked up (see references.py)."""
        from airflow_llm_provider.cascades.references import tool_path_of_folder

        return tool_path_of_folder(self.base_dir, self.options.tool_path)

    def _cascade_path(self, relative: str) -> Path:
        """A file a cascade names (``sql:``, ``cascade:``, a sub-cascade ``ref``), relative to its
        folder and confined to the run's folder tree or the tool path (``trust.py``)."""
        from airflow_llm_provider.cascades.trust import confined_path

        here = self.base_dir or Path.cwd()
        path, why = confined_path(relative.strip(), here, [self.root_dir or here, *self._tool_folders()])
        if path is None:
            raise PermissionError(f"cascade file reference refused: {why}")
        return path

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
        model = self._resolve_model(name)
        if self.record is not None:
            system, model_name = getattr(model, "system", None), getattr(model, "model_name", None)
            label = f"{system}:{model_name}" if system and model_name else str(model_name or name)
            if label not in self.record.models:
                self.record.models.append(label)
        return model

    def _resolve_model(self, name: str | None) -> Model:
        """The model for a cascade's model id: the factory gets the id without its Windlass
        ``::reasoning`` suffix (that suffix becomes request settings, see ``_guarded_run``)."""
        from airflow_llm_provider.cascades.models import parse_model_id

        key = parse_model_id(name).name if name else None
        if key not in self._models:
            if self.options.model_factory is not None:
                self._models[key] = self.options.model_factory(key)
            else:
                from pydantic_ai.models import infer_model

                self._models[key] = infer_model(key or DEFAULT_MODEL)
        return self._models[key]

    def _check_models(self) -> None:
        """Resolve every model the cascade names before the first phase runs, so a model that
        cannot be had fails the run before any call is paid for."""
        first = self.cascade.phases[0].name
        named: list[tuple[str, str, str | None]] = []
        for phase in self.cascade.phases:
            if phase.kind == "llm":
                named.append((phase.name, "model", self._model_name(phase)))
            elif phase.on_error_inline is not None:
                named.append((phase.name, "on_error.model", phase.on_error_inline.get("model")))
            soundings = phase.soundings if phase.kind == "llm" else None
            for sounding_model in soundings.model_names if soundings else []:
                named.append((phase.name, "soundings.models", sounding_model))
            for key in ("evaluator_model", "aggregator_model"):
                named.append((phase.name, f"soundings.{key}", getattr(soundings, key, None)))
        for key in ("evaluator_model", "aggregator_model"):
            named.append((first, f"cascade soundings.{key}", getattr(self.cascade.soundings, key, None)))
        for name, spec in self.cascade.validators.items():
            named.append((first, f"validators.{name}.model", spec.model))
        for phase_name, where, model_id in named:
            if where != "model" and model_id is None:
                continue  # an optional model left out: the phase's own is used
            try:
                self._resolve_model(model_id)
            except Exception as err:
                raise PhaseFailed(
                    phase_name, f"{where} '{model_id or DEFAULT_MODEL}' cannot be used: {_describe(err)}"
                ) from err

    async def _ask(
        self,
        model: str | None,
        instructions: str,
        prompt: str,
        *,
        phase: str,
        label: str,
        output_type: Any = str,
        **run_kwargs: Any,
    ) -> Any:
        """One auxiliary LLM call (a judge, a rewrite, a selector, a summary...): an agent on
        ``model`` with ``instructions``, run through :meth:`_guarded_run` so it is budgeted and
        counted like a phase's own calls. Returns the agent run's result."""
        from pydantic_ai import Agent

        agent = Agent(self._model(model), output_type=output_type, instructions=instructions)
        return await self._guarded_run(
            agent,
            prompt,
            phase=phase,
            label=label,
            model=model or DEFAULT_MODEL,
            estimated_input_tokens=estimate_tokens(instructions) + estimate_tokens(prompt),
            **run_kwargs,
        )

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
        (otherwise parallel phases or soundings would all pass the check before any of them ran).

        Every model request of the call goes through ``budgeted_model``: it reserves its worst
        case in the run's budget before it is sent, with an output cap (``max_tokens``) sized to
        what the budgets have left, and settles with the usage the server reported. A call that
        fails still records what its answered requests spent. ``estimated_input_tokens`` is the
        caller's estimate of the prompt, a floor for the first request's own estimate."""
        async with self._slots:
            # Near a shared budget's limit, this task's calls go one at a time, so each is checked
            # against everything spent before it: the overshoot stays within one call.
            serial = self._one_at_a_time if self.observer and self.observer.near_limit() else None
            async with serial or contextlib.nullcontext():
                self._before_call(phase, model=model)
                account = CallAccount(
                    self.budget,
                    phase,
                    model,
                    declared=self.options.declared_price,
                    shared=getattr(self.observer, "remaining", None),
                    minimum_input_estimate=estimated_input_tokens,
                )
                kwargs = _with_model_id_settings(model, run_kwargs)
                kwargs["model"] = budgeted_model(
                    kwargs.get("model") or agent.model,
                    account,
                    self.options.journal,
                    # Parallel calls with equal prompts (soundings) each replay their own replies.
                    journal_scope=f"{self.cascade.cascade_id}:{label}#{sounding}#{attempt}",
                )
                started = time.monotonic()
                try:
                    result = await agent.run(prompt, **kwargs)
                except BaseException:
                    self._record_unfinished(
                        label, account, attempt=attempt, sounding=sounding, started=started
                    )
                    raise
                self._record(
                    label, model, result, attempt=attempt, sounding=sounding, started=started, account=account
                )
        if label == phase and sounding is None:  # the phase's own call: its conversation (context.py)
            self._conversations[phase] = conversation_of(result)
        return result

    def _before_call(self, phase: str, *, model: str) -> None:
        """Whoever counts beyond the run (shared budgets) may refuse the call (BudgetExceeded); the
        run's own budget is checked per request, by the call's :class:`CallAccount`."""
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
        account: CallAccount | None = None,
    ) -> None:
        """Count one agent run's requests, tokens and dollars (releasing what its requests held)."""
        usage = result.usage if hasattr(result.usage, "requests") else result.usage()  # a method before
        input_tokens, output_tokens = usage.input_tokens or 0, usage.output_tokens or 0
        record = CallRecord(
            phase=label,
            attempt=attempt,
            model=model,
            requests=usage.requests - (account.replayed if account is not None else 0),
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            cost_usd=price_call(model, input_tokens, output_tokens, declared=self.options.declared_price),
            sounding=sounding,
            duration_s=time.monotonic() - started if started is not None else 0.0,
        )
        self.usage.record(record, held=account.held if account is not None else (0, 0.0))
        if self.observer is not None:
            self.observer.after_call(self.cascade.cascade_id, record)

    def _record_unfinished(
        self, label: str, account: CallAccount, *, attempt: int, sounding: int | None, started: float
    ) -> None:
        """A call that raised (budget stop, HTTP error, rejected output, cancellation) after some
        of its requests answered: what they spent is real and must reach the run's usage and the
        ledger, or a failing call could spend again and again unseen."""
        if account.requests == 0:
            return
        record = CallRecord(
            phase=label,
            attempt=attempt,
            model=account.model,
            requests=account.requests,
            input_tokens=account.input_tokens,
            output_tokens=account.output_tokens,
            cost_usd=price_call(
                account.model, account.input_tokens, account.output_tokens, declared=account.declared
            ),
            sounding=sounding,
            duration_s=time.monotonic() - started,
        )
        self.usage.record(record, held=account.held)
        if self.observer is not None:
            try:
                self.observer.after_call(self.cascade.cascade_id, record)
            except Exception as err:  # the call's own error is the one to report
                log.warning("the spend of failed call %s was not written to the ledger: %s", label, err)

    def _lineage_view(self) -> list[dict[str, Any]]:
        """``lineage``: ``{phase, output}`` in the order phases finished; outputs handed in from
        outside (a phase run alone as an Airflow task) come first."""
        seen = {entry["phase"] for entry in self._lineage}
        given = [{"phase": name, "output": out} for name, out in self._outputs.items() if name not in seen]
        return given + [dict(entry) for entry in self._lineage]

    def _emit(self, line: str) -> None:
        if self.options.on_event is not None:
            self.options.on_event(line)
        else:
            log.info("%s", line)


def _with_model_id_settings(model: str, run_kwargs: dict[str, Any]) -> dict[str, Any]:
    """``run_kwargs`` with the request settings a Windlass ``::reasoning`` suffix of ``model``
    asks for merged into ``model_settings`` (its ``extra_body`` merged key by key)."""
    from airflow_llm_provider.cascades.models import parse_model_id

    wanted = parse_model_id(model).model_settings() if "::" in model else {}
    if not wanted:
        return run_kwargs
    settings = dict(run_kwargs.get("model_settings") or {})
    settings["extra_body"] = {**(settings.get("extra_body") or {}), **wanted["extra_body"]}
    return {**run_kwargs, "model_settings": settings}


def conversation_of(result: Any) -> list[dict[str, Any]]:
    """An agent run's messages as ``{role, content}`` texts (system, user, assistant, tool)."""
    from pydantic_ai import messages as m

    out: list[dict[str, Any]] = []
    for message in result.all_messages():
        if isinstance(message, m.ModelRequest):
            # Instructions repeat on every request of a run: keep their first occurrence.
            if message.instructions and not any(msg["role"] == "system" for msg in out):
                out.append({"role": "system", "content": message.instructions})
            for part in message.parts:
                if isinstance(part, m.UserPromptPart) and isinstance(part.content, str):
                    out.append({"role": "user", "content": part.content})
                elif isinstance(part, m.ToolReturnPart):
                    out.append({"role": "tool", "content": _to_text(part.content), "tool": part.tool_name})
        else:
            for part in message.parts:
                if isinstance(part, m.TextPart) and part.content:
                    out.append({"role": "assistant", "content": part.content})
                elif isinstance(part, m.ToolCallPart):
                    call = f"[tool call] {part.tool_name}({part.args_as_json_str()})"
                    out.append({"role": "assistant", "content": call, "tool": part.tool_name})
    return out


def _to_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, indent=2, default=str, ensure_ascii=False)


def _describe(err: BaseException | None) -> str:
    """An exception as one line for errors, progress lines and fallback prompts; registered
    secrets scrubbed, since an upstream error body may quote the credential it was sent."""
    if err is None:
        return "unknown error"
    if isinstance(err, TimeoutError | asyncio.TimeoutError):
        return "timed out"
    from airflow_llm_provider.cascades.redact import redact

    return redact(f"{type(err).__name__}: {err}")


def _is_file_reference(text: str) -> bool:
    """``@prompts/x.j2``: one line, no Jinja."""
    return text.startswith("@") and "\n" not in text.strip() and not is_template(text)
