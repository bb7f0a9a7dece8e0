"""The cascade engine: runs a validated :class:`Cascade` in-process, asynchronously.

No Airflow here. The Airflow adapters (operator, CLI) hand in what depends on Airflow: how to get a
pydantic-ai model for a model string (the ``pydanticai`` connection), the registered tools, and the
run's template variables (``ds``, ``params``...).

Control flow follows the cascade: when any phase has handoffs, routing or ``on_error`` the phases
form a state machine walked from ``phases[0]`` (with a visit limit); otherwise they form a data-flow
graph and every phase starts as soon as the phases it reads have finished, up to
``max_concurrency`` at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast

from airflow_llm_provider.cascades.cache import CachedPhase, PhaseCache, cache_key, content_hash
from airflow_llm_provider.cascades.graph import (
    context_sources,
    is_state_machine,
    next_in_list,
    phase_dependencies,
)
from airflow_llm_provider.cascades.spec import END, Budget, Cascade, Phase
from airflow_llm_provider.cascades.templates import is_template, sandboxed_environment
from airflow_llm_provider.cascades.tools import ToolRegistry, call_tool
from airflow_llm_provider.cascades.usage import (
    BudgetExceeded,
    BudgetGuard,
    CallObserver,
    CallRecord,
    ModelPrice,
    UsageTracker,
    estimate_tokens,
    price_call,
)

if TYPE_CHECKING:
    from pydantic_ai.models import Model
    from pydantic_ai.settings import ModelSettings

log = logging.getLogger(__name__)

_SINGLE_EXPRESSION = re.compile(r"^\s*\{\{((?:(?!\}\}|\{\{).)*)\}\}\s*$", re.DOTALL)

ModelFactory = Callable[[str | None], "Model"]
"""Model string (None = the default) -> a pydantic-ai Model."""

DEFAULT_MODEL = "test"
SQL_PREFIX = "sql:"
# `soundings.mutate: true`: attempt 1 keeps the prompt; later attempts append one of these.
MUTATIONS = (
    "Take a different angle from the most obvious answer.",
    "Be as concise as possible.",
    "Reason step by step before you answer, then give only the answer.",
    "Prefer concrete examples and specifics over generalities.",
    "Write for a reader who is new to the subject.",
)
SQL_TOOL_ARGUMENTS = ("conn_id", "parameters", "max_rows")
CASCADE_PREFIX = "cascade:"
MAX_CASCADE_DEPTH = 5


class PhaseFailed(RuntimeError):
    """A phase could not produce an acceptable output; the cascade fails with this message."""

    def __init__(self, phase: str, message: str) -> None:
        super().__init__(f"phase '{phase}': {message}")
        self.phase = phase


@dataclass
class RunOptions:
    """How to run a cascade. Every field has a default that works offline."""

    model_factory: ModelFactory | None = None
    model: str | None = None
    """Overrides every phase's model (``--model`` on the CLI)."""
    tools: ToolRegistry | Mapping[str, Callable[..., Any]] | None = None
    template_context: Mapping[str, Any] = field(default_factory=dict)
    """Extra template variables, e.g. Airflow's ``ds``, ``data_interval_start``, ``params``."""
    max_concurrency: int = 5
    budget: Budget | None = None
    """Overrides the cascade's own ``budget``."""
    declared_price: ModelPrice | None = None
    """Price of a self-hosted model (the connection's ``extra.price``)."""
    cache: PhaseCache | None = None
    cache_scope: str = "run"
    """Key scope: a run id lets a task retry resume; ``shared`` reuses answers across runs."""
    cache_max_age_seconds: float | None = None
    model_settings: Mapping[str, Any] | None = None
    base_dir: Path | None = None
    """Folder of the cascade file: ``sql:`` tool files are read relative to it."""
    on_event: Callable[[str], None] | None = None
    """Progress lines (the operator writes them to the task log)."""
    record: RunRecord | None = None
    """Filled in while the run goes (the operators' OpenLineage methods read it)."""
    call_observer: CallObserver | None = None
    """Told before and after every LLM call (the Airflow adapter's cost ledger and shared budgets)."""


@dataclass
class RunRecord:
    """A live view of one run for whoever started it: the usage tracker (so a run that raised still
    tells what it spent), the models that answered (``system:model_name`` of the resolved model)
    and the winning sounding per phase. Filled in as the run goes; no prompt text in it."""

    usage: UsageTracker | None = None
    models: list[str] = field(default_factory=list)
    soundings_winners: dict[str, int] = field(default_factory=dict)


@dataclass
class PhaseRun:
    phase: str
    status: Literal["success", "failed", "cached"]
    duration_s: float
    attempts: int = 0
    route: str | None = None
    error: str | None = None


@dataclass
class CascadeResult:
    cascade_id: str
    status: Literal["success", "failed"]
    outputs: dict[str, Any]
    final: Any
    usage: dict[str, Any]
    error: str | None = None
    budget_exceeded: bool = False
    trace: list[PhaseRun] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """The JSON shape of ``airflow-llm run`` and the operator's XCom."""
        return {
            "status": self.status,
            "outputs": self.outputs,
            "final": self.final,
            "usage": self.usage,
            "error": self.error,
        }


@dataclass
class PhaseOutcome:
    """One phase run on its own (a task of a cascade rendered as a DAG)."""

    phase: str
    output: Any
    route: str | None
    usage: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"phase": self.phase, "output": self.output, "route": self.route, "usage": self.usage}


def run_cascade(
    cascade: Cascade, inputs: Mapping[str, Any] | None = None, options: RunOptions | None = None
) -> CascadeResult:
    """Run ``cascade`` to completion from synchronous code (a new event loop)."""
    return asyncio.run(CascadeRunner(cascade, options).run(inputs or {}))


def run_phase(
    cascade: Cascade,
    phase: str,
    inputs: Mapping[str, Any] | None = None,
    outputs: Mapping[str, Any] | None = None,
    options: RunOptions | None = None,
    *,
    item: Any = None,
    item_index: int | None = None,
) -> PhaseOutcome:
    """Run one phase given the outputs of the phases before it (e.g. pulled from XCom).

    With ``item``/``item_index`` it runs one element of a ``map_over`` phase. Raises
    :class:`PhaseFailed` or :class:`BudgetExceeded`.
    """
    runner = CascadeRunner(cascade, options)
    return asyncio.run(runner.run_one(phase, inputs or {}, outputs or {}, item=item, item_index=item_index))


def run_sounding(
    cascade: Cascade,
    phase: str,
    index: int,
    inputs: Mapping[str, Any] | None = None,
    outputs: Mapping[str, Any] | None = None,
    options: RunOptions | None = None,
) -> PhaseOutcome:
    """Run sounding ``index`` (0-based) of an LLM phase with soundings, alone: the phase's prompt
    (with ``mutate``, the engine's hint for that index), the model ``soundings.models`` gives that
    index (round robin), and the phase's pre wards, attempts and post wards. The outcome's
    ``route`` is the route the model chose, if any. Raises :class:`PhaseFailed` or
    :class:`BudgetExceeded`. :func:`judge_soundings` turns the attempts into the phase result."""
    runner = CascadeRunner(cascade, options)
    return asyncio.run(runner.run_sounding(phase, index, inputs or {}, outputs or {}))


def judge_soundings(
    cascade: Cascade,
    phase: str,
    candidates: Sequence[tuple[int, Any, str | None]],
    inputs: Mapping[str, Any] | None = None,
    outputs: Mapping[str, Any] | None = None,
    options: RunOptions | None = None,
) -> PhaseOutcome:
    """The result of a phase whose soundings ran apart (:func:`run_sounding`): ``candidates`` are
    the successful ones as ``(index, output, route)``. As in the engine: a single candidate wins
    alone, else the evaluator picks one (``mode: aggregate``: the aggregator merges them). The
    usage is that of the evaluator/aggregator call only. No candidate: :class:`PhaseFailed`."""
    runner = CascadeRunner(cascade, options)
    return asyncio.run(runner.judge_soundings(phase, candidates, inputs or {}, outputs or {}))


class CascadeRunner:
    def __init__(
        self,
        cascade: Cascade,
        options: RunOptions | None = None,
        *,
        parent: CascadeRunner | None = None,
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

    # -- public -----------------------------------------------------------------------------
    async def run(self, inputs: Mapping[str, Any]) -> CascadeResult:
        self._emit(f"cascade {self.cascade.cascade_id}: {len(self.cascade.phases)} phases")
        error: str | None = None
        budget_exceeded = False
        try:
            final = await self.execute(inputs)
        except BudgetExceeded as err:
            error, budget_exceeded, final = str(err), True, None
        except PhaseFailed as err:
            error, final = str(err), None
        status: Literal["success", "failed"] = "failed" if error else "success"
        usage = self.usage.totals().as_dict()
        self._emit(
            f"cascade {self.cascade.cascade_id}: {status}; {usage['requests']} requests, "
            f"{usage['input_tokens'] + usage['output_tokens']} tokens, ${usage['cost_usd']:.6f}, "
            f"{usage['cache_hits']} cache hits" + (f"; error: {error}" if error else "")
        )
        return CascadeResult(
            cascade_id=self.cascade.cascade_id,
            status=status,
            outputs=dict(self._outputs),
            final=final,
            usage=usage,
            error=error,
            budget_exceeded=budget_exceeded,
            trace=list(self._trace),
        )

    async def execute(self, inputs: Mapping[str, Any]) -> Any:
        """Run every phase and return the final output; raises PhaseFailed or BudgetExceeded."""
        self._input = dict(inputs)
        if is_state_machine(self.cascade):
            return await self._run_state_machine()
        return await self._run_dataflow()

    async def run_one(
        self,
        name: str,
        inputs: Mapping[str, Any],
        outputs: Mapping[str, Any],
        *,
        item: Any = None,
        item_index: int | None = None,
    ) -> PhaseOutcome:
        self._prepare(inputs, outputs)
        phase = self.cascade.phase(name)
        if item_index is None:
            output, route = await self._run_phase(phase)
        else:
            extra = {"item": item, "item_index": item_index}
            self._visits[name] = 1
            try:
                if phase.kind == "tool":
                    output, route = await self._run_tool_phase(phase, extra)
                else:
                    output, route = await self._run_llm_phase(phase, extra, label=f"[{item_index}]")
            except (PhaseFailed, BudgetExceeded):
                raise
            except Exception as err:
                raise PhaseFailed(name, _describe(err)) from err
        return PhaseOutcome(phase=name, output=output, route=route, usage=self.usage.totals().as_dict())

    def _prepare(self, inputs: Mapping[str, Any], outputs: Mapping[str, Any]) -> None:
        self._input = dict(inputs)
        for source, output in outputs.items():
            self._store(source, output)

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

    # -- control flow -----------------------------------------------------------------------
    async def _run_state_machine(self) -> Any:
        visits: dict[str, int] = {}
        limit = self.cascade.max_phase_visits
        current: str | None = self.cascade.phases[0].name
        last: Any = None
        while current is not None and current != END:
            visits[current] = visits.get(current, 0) + 1
            if limit is not None and visits[current] > limit:
                raise PhaseFailed(current, f"visited more than max_phase_visits={limit} times (loop guard)")
            if limit is None and visits[current] > 1:
                raise PhaseFailed(current, "visited twice without max_phase_visits (loop guard)")
            phase = self.cascade.phase(current)
            output, route = await self._run_phase(phase)
            last = output
            current = route if route is not None else next_in_list(self.cascade, phase)
        return last

    async def _run_dataflow(self) -> Any:
        needs = phase_dependencies(self.cascade)
        done: set[str] = set()
        running: dict[str, asyncio.Task[Any]] = {}
        pending = [p.name for p in self.cascade.phases]
        while pending or running:
            for name in [n for n in pending if needs[n] <= done]:
                pending.remove(name)
                running[name] = asyncio.create_task(self._run_phase(self.cascade.phase(name)))
            if not running:
                raise PhaseFailed(
                    pending[0], f"waits on phases that never ran: {sorted(needs[pending[0]] - done)}"
                )
            finished, _ = await asyncio.wait(running.values(), return_when=asyncio.FIRST_COMPLETED)
            for name, task in list(running.items()):
                if task in finished:
                    del running[name]
                    if task.exception() is not None:
                        for other in running.values():
                            other.cancel()
                        raise task.exception()  # type: ignore[misc]
                    done.add(name)
        return self._outputs.get(self.cascade.phases[-1].name)

    # -- one phase --------------------------------------------------------------------------
    async def _run_phase(self, phase: Phase) -> tuple[Any, str | None]:
        started = time.monotonic()
        self._visits[phase.name] = self._visits.get(phase.name, 0) + 1
        self._emit(f"phase {phase.name}: started ({phase.kind})")
        try:
            if phase.map_over is not None:
                output, route = await self._run_mapped(phase), None
            elif phase.kind == "tool":
                output, route = await self._run_tool_phase(phase)
            else:
                output, route = await self._run_llm_phase(phase)
        except (PhaseFailed, BudgetExceeded) as err:
            self._trace.append(PhaseRun(phase.name, "failed", time.monotonic() - started, error=str(err)))
            self._emit(f"phase {phase.name}: failed: {err}")
            raise
        except Exception as err:  # templates (incl. sandbox violations), unknown tools, bad data
            failure = PhaseFailed(phase.name, _describe(err))
            self._trace.append(PhaseRun(phase.name, "failed", time.monotonic() - started, error=str(failure)))
            self._emit(f"phase {phase.name}: failed: {failure}")
            raise failure from err
        self._store(phase.name, output)
        self._trace.append(PhaseRun(phase.name, "success", time.monotonic() - started, route=route))
        self._emit(
            f"phase {phase.name}: done in {time.monotonic() - started:.2f}s"
            + (f" -> {route}" if route else "")
        )
        return output, route

    def _store(self, name: str, output: Any) -> None:
        self._outputs[name] = output
        self._state[f"output_{name}"] = output

    async def _run_mapped(self, phase: Phase) -> list[Any]:
        source, _, key_path = phase.map_over.partition(".")  # type: ignore[union-attr]
        items: Any = self._outputs.get(source)
        for key in filter(None, key_path.split(".")):
            items = items.get(key) if isinstance(items, Mapping) else None
        if not isinstance(items, list):
            raise PhaseFailed(
                phase.name, f"map_over '{phase.map_over}' is {type(items).__name__}, not a list"
            )

        async def one(index: int, item: Any) -> Any:
            extra = {"item": item, "item_index": index}
            if phase.kind == "tool":
                output, _ = await self._run_tool_phase(phase, extra)
            else:
                output, _ = await self._run_llm_phase(phase, extra, label=f"[{index}]")
            return output

        return list(await asyncio.gather(*(one(i, item) for i, item in enumerate(items))))

    # -- templates --------------------------------------------------------------------------
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

    # -- deterministic phases ---------------------------------------------------------------
    async def _run_tool_phase(
        self, phase: Phase, extra: Mapping[str, Any] | None = None
    ) -> tuple[Any, str | None]:
        from airflow_llm_provider.cascades.spec import parse_duration

        arguments = self._render_value(phase.inputs or {}, extra)
        tool = phase.tool or ""
        function: Callable[..., Any]
        if tool.startswith(CASCADE_PREFIX):

            async def function(**child_input: Any) -> Any:
                return await self._run_sub_cascade(tool, child_input)

        elif tool.startswith(SQL_PREFIX):
            # Other inputs are variables of the SQL template (``inputs.x``), not tool arguments.
            sql = self._sql_file(phase, arguments, extra)
            arguments = {k: v for k, v in arguments.items() if k in SQL_TOOL_ARGUMENTS} | {"sql": sql}
            function = self.tools.resolve("sql_data")
        else:
            function = self.tools.resolve(tool)
        retry = phase.retry
        attempts = retry.max_attempts if retry else 1
        timeout = parse_duration(phase.timeout) if phase.timeout is not None else None
        last_error: BaseException | None = None
        for attempt in range(1, attempts + 1):
            try:
                call = call_tool(function, arguments)
                result = await (asyncio.wait_for(call, timeout) if timeout else call)
                return result, self._route_of(phase, result)
            except BudgetExceeded:
                raise  # spending limits are final, never a tool failure to retry
            except Exception as err:  # a tool's own failure: retried, then on_error or a failed phase
                last_error = err
                if attempt < attempts and retry is not None:
                    delay = _backoff(retry.backoff, retry.backoff_base_seconds, attempt)
                    failure = _describe(err)
                    self._emit(
                        f"phase {phase.name}: attempt {attempt} failed ({failure}); retry in {delay:g}s"
                    )
                    await asyncio.sleep(delay)
        message = _describe(last_error)
        if phase.on_error:
            self._state["last_deterministic_error"] = message
            self._emit(f"phase {phase.name}: failed ({message}); on_error -> {phase.on_error}")
            return {"error": message}, phase.on_error
        raise PhaseFailed(phase.name, f"tool '{phase.tool}' failed after {attempts} attempt(s): {message}")

    async def _run_sub_cascade(self, reference: str, inputs: Mapping[str, Any]) -> Any:
        """Run the cascade file ``reference`` names; its final output is the tool's result."""
        from airflow_llm_provider.cascades.loader import load_cascade

        if self.depth >= MAX_CASCADE_DEPTH:
            raise RecursionError(f"sub-cascades nest deeper than {MAX_CASCADE_DEPTH} levels at '{reference}'")
        path = (self.base_dir or Path.cwd()) / reference[len(CASCADE_PREFIX) :].strip()
        child = CascadeRunner(load_cascade(path), self.options, parent=self, base_dir=path.parent)
        self._emit(f"sub-cascade {child.cascade.cascade_id} ({path.name}): started")
        try:
            return await child.execute(inputs)  # a budget stop propagates as BudgetExceeded
        except PhaseFailed as err:
            raise RuntimeError(f"sub-cascade {child.cascade.cascade_id} failed: {err}") from err

    def _sql_file(self, phase: Phase, arguments: Mapping[str, Any], extra: Mapping[str, Any] | None) -> str:
        """``sql:path.sql``: the file, relative to the cascade's folder, rendered in the sandbox
        with the run's variables and the phase's rendered inputs (values still go as parameters)."""
        relative = phase.tool[len(SQL_PREFIX) :]  # type: ignore[index]
        path = (self.base_dir or Path.cwd()) / relative
        if not path.is_file():
            raise FileNotFoundError(f"sql file '{relative}' not found at {path}")
        return self.render(path.read_text(), {**(extra or {}), "inputs": dict(arguments)})

    @staticmethod
    def _route_of(phase: Phase, result: Any) -> str | None:
        if phase.routing:
            key = None
            if isinstance(result, Mapping):
                key = result.get("_route", result.get("status"))
            key = "success" if key is None else str(key)
            if key in phase.routing:
                return phase.routing[key]
            if "default" in phase.routing:
                return phase.routing["default"]
            raise PhaseFailed(
                phase.name, f"result route '{key}' matches no routing entry and there is no default"
            )
        if len(phase.handoffs) == 1:
            return phase.handoffs[0].target
        return None

    # -- LLM phases -------------------------------------------------------------------------
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

    def _user_prompt(self, phase: Phase, extra: Mapping[str, Any] | None) -> str:
        """The user message: the cascade input and the outputs ``context.from`` selects."""
        parts: list[str] = []
        include_input = phase.context.include_input if phase.context is not None else True
        if include_input and self._input:
            parts.append("## Input\n" + _to_text(self._input))
        if extra and "item" in extra:
            parts.append("## Item\n" + _to_text(extra["item"]))
        for source in context_sources(self.cascade, phase):
            if source in self._outputs:
                parts.append(f"## Output of {source}\n" + _to_text(self._outputs[source]))
        return "\n\n".join(parts) or "Begin."

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

    def _tackle_tool(self, reference: str) -> Any:
        """A tool the model may call: a registered callable, python:..., or a sub-cascade."""
        from pydantic_ai import Tool

        if not reference.startswith(CASCADE_PREFIX):
            return Tool(self.tools.resolve(reference), name=reference.split(":")[-1].split(".")[-1])
        from airflow_llm_provider.cascades.loader import load_cascade

        child = load_cascade((self.base_dir or Path.cwd()) / reference[len(CASCADE_PREFIX) :].strip())

        async def run_cascade_tool(input: dict[str, Any]) -> Any:
            return await self._run_sub_cascade(reference, input)

        description = (child.description or f"Run the cascade {child.cascade_id}.").strip()
        if child.inputs_schema:
            fields = ", ".join(f"{name}: {text}" for name, text in child.inputs_schema.items())
            description += f" Input fields: {fields}."
        return Tool(run_cascade_tool, name=child.cascade_id, description=description)

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

    async def _validate(self, validator: str, content: Any) -> tuple[bool, str]:
        """Run a validator by the ``{valid, reason}`` protocol."""
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

    # -- soundings --------------------------------------------------------------------------
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
        models = phase.soundings.models if phase.soundings else None
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


def _backoff(kind: str, base: float, attempt: int) -> float:
    if kind == "none":
        return 0.0
    if kind == "exponential":
        return base * (2 ** (attempt - 1))
    return base * attempt
