"""The operators of a cascade rendered as a DAG: one task per phase, plus small helper steps.

- :class:`CascadePhaseOperator` runs one phase with the engine's ``run_phase``. Its XCom return value
  is ``{"phase", "output", "route", "usage"}`` (``PhaseOutcome.to_dict()`` plus ``usage.model`` and
  ``usage.synthetic``). The outputs of the phases it reads are pulled from the XCom of their tasks.
- :class:`CascadeItemsOperator` extracts the list a ``map_over`` phase is mapped over.
- :class:`CascadeCollectOperator` reduces the mapped instances into one output, in item order.
- :class:`CascadeRouteOperator` is the branch step after a phase with several possible successors.
- :class:`CascadeSoundingOperator` runs one sounding attempt of a phase (mapped over the attempts) and
  :class:`CascadeSoundingsJudgeOperator` turns the attempts into the phase's result
  (``CascadeDagConfig(soundings_as_tasks=True)``).

Nothing heavy is imported here: the engine and pydantic-ai load inside ``execute``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow.providers.common.compat.sdk import (
    AirflowException,
    AirflowFailException,
    BaseBranchOperator,
    BaseOperator,
)

from airflow_llm_provider.operators.cascade import (
    CascadeLineageMixin,
    CascadeOperator,
    cascade_source,
    lineage_state,
)
from airflow_llm_provider.operators.cascade_human import HumanInputMixin, refuse_if_unsupported, run_or_park
from airflow_llm_provider.operators.links import CascadeArtifactsLink

if TYPE_CHECKING:
    from airflow_llm_provider.cascades.human import RecordedAnswers
    from airflow_llm_provider.cascades.run.journal import ResponseJournal
    from airflow_llm_provider.cascades.runner import PhaseOutcome
    from airflow_llm_provider.cascades.spec import Cascade
    from airflow_llm_provider.hooks.llm import LLMHook

_LOADED: dict[tuple[str, int, tuple[str, ...]], Cascade] = {}


def load_cascade_cached(source: str | Mapping[str, Any], tools: Sequence[str] | None = None) -> Cascade:
    """Validate a cascade file once per process and modification time (every task of a rendered DAG
    names the same file; parsing the DAG must not validate it once per phase). ``tools`` are the
    names the task registers (default: the standard Airflow tools)."""
    from airflow_llm_provider.cascades import load_cascade
    from airflow_llm_provider.operators.cascade_tools import configured_tool_path, tool_names

    names = list(tools) if tools is not None else tool_names()
    if isinstance(source, Mapping):
        return load_cascade(source, tools=names)
    path = str(Path(source).resolve())
    key = (path, os.stat(path).st_mtime_ns, tuple(names))
    if key not in _LOADED:
        _LOADED[key] = load_cascade(path, tools=names, tool_path=configured_tool_path())
    return _LOADED[key]


def remember_cascade(path: str, cascade: Cascade) -> None:
    """Seed the cache with a cascade that was just validated (by the DAG loader)."""
    from airflow_llm_provider.operators.cascade_tools import tool_names

    resolved = str(Path(path).resolve())
    _LOADED[(resolved, os.stat(resolved).st_mtime_ns, tuple(tool_names()))] = cascade


def run_input(context: Any) -> dict[str, Any]:
    """The cascade input of a rendered DAG: the run's ``params`` overlaid with ``dag_run.conf``."""
    values: dict[str, Any] = {}
    params = context.get("params")
    if params:
        values.update({key: params[key] for key in params})
    dag_run = context.get("dag_run")
    conf = getattr(dag_run, "conf", None)
    if isinstance(conf, Mapping):
        values.update(conf)
    return values


def _output_of(value: Any) -> Any:
    if isinstance(value, Mapping) and "output" in value and "phase" in value:
        return value["output"]
    return value


class CascadePhaseOperator(HumanInputMixin, CascadeLineageMixin, BaseOperator):
    """
    Run one phase of a cascade (a task of a cascade rendered as a DAG).

    :param cascade: path to the cascade file (absolute, or relative to the DAG file), or a dict.
    :param phase: the phase to run.
    :param pulls: phase name -> task id whose XCom carries that phase's output; pulled before the
        phase runs. A task that did not run (a skipped branch) is left out, as in the engine.
    :param inputs: the cascade input (templated); default: the run's ``params`` overlaid with
        ``dag_run.conf``.
    :param map_item: the item of a ``map_over`` phase (set by ``.expand(map_item=...)``); the map
        index is the item index.
    :param mapped: whether this task is one instance of a mapped phase.
    :param llm_conn_id: ``pydanticai`` connection; default: the cascade's ``defaults.llm_conn_id``.
    :param model: model for every phase, overriding the cascade (templated).
    :param budget: overrides the cascade's budget; it applies to this task alone.
    :param cache: phase cache as for ``CascadeOperator``; the key is scoped to the task instance.
    :param cache_ttl_seconds: opt in to sharing answers across runs for this long.
    :param tools: registered tools (name -> callable) the phase may use.
    :param max_concurrency: LLM calls in flight at once within the task (soundings).
    """

    template_fields: Sequence[str] = ("inputs", "llm_conn_id", "model")
    template_fields_renderers = {"inputs": "json"}
    ui_color = "#e8f0fe"
    operator_extra_links = (CascadeArtifactsLink(),)

    def __init__(
        self,
        *,
        cascade: str | os.PathLike[str] | Mapping[str, Any],
        phase: str,
        pulls: Mapping[str, str] | None = None,
        inputs: Mapping[str, Any] | None = None,
        map_item: Any = None,
        mapped: bool = False,
        llm_conn_id: str | None = None,
        model: str | None = None,
        budget: Mapping[str, Any] | None = None,
        cache: str | None = "local",
        cache_ttl_seconds: float | None = None,
        tools: Mapping[str, Callable[..., Any]] | None = None,
        max_concurrency: int = 5,
        budgets: Sequence[Mapping[str, Any]] | None = None,
        alert_slack_conn_id: str | None = None,
        alert_slack_channel: str | None = None,
        human_assignees: Sequence[Mapping[str, str]] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.human_assignees = [dict(user) for user in human_assignees or ()]
        # Shared budgets and their alerts: as on CascadeOperator (see ledger_accounting_for).
        self.budgets = list(budgets or [])
        self.alert_slack_conn_id = alert_slack_conn_id
        self.alert_slack_channel = alert_slack_channel
        self.cascade = cascade if isinstance(cascade, Mapping) else os.fspath(cascade)
        self.phase = phase
        self.pulls = dict(pulls or {})
        self.inputs = dict(inputs) if inputs is not None else None
        self.map_item = map_item
        self.mapped = mapped
        self.llm_conn_id = llm_conn_id
        self.model = model
        self.budget = dict(budget) if budget else None
        self.cache = cache
        self.cache_ttl_seconds = cache_ttl_seconds
        self.tools = dict(tools or {})
        self.max_concurrency = max_concurrency
        # Parse time: a broken file, an unknown phase, a human step on old Airflow are import errors.
        loaded = self._load()
        loaded.phase(phase)
        refuse_if_unsupported(loaded, [phase])

    def _cascade_source(self) -> str | Mapping[str, Any]:
        return cascade_source(self)

    def _load(self) -> Cascade:
        from airflow_llm_provider.operators.cascade_tools import tool_names

        return load_cascade_cached(self._cascade_source(), tool_names(self.tools))

    def _pulled_outputs(self, context: Any) -> dict[str, Any]:
        outputs: dict[str, Any] = {}
        for name, task_id in self.pulls.items():
            value = context["ti"].xcom_pull(task_ids=task_id, map_indexes=-1)
            if value is not None:
                outputs[name] = _output_of(value)
        return outputs

    def _pulled_state(self, context: Any) -> dict[str, Any]:
        """The run's state as the upstream phases left it (each outcome carries the state it was
        given plus its own ``set_state`` writes), merged in pull order."""
        state: dict[str, Any] = {}
        for task_id in self.pulls.values():
            value = context["ti"].xcom_pull(task_ids=task_id, map_indexes=-1)
            if isinstance(value, Mapping) and isinstance(value.get("state"), Mapping):
                state.update(value["state"])
        return state

    def execute(self, context: Any) -> dict[str, Any]:
        return self._run(context, {})

    def _run(self, context: Any, carried: Mapping[str, Any]) -> dict[str, Any]:
        """Run the phase with the human answers ``carried`` from before a question (empty on the
        first run); a question parks the task as its own human-in-the-loop step."""
        from airflow_llm_provider.cascades.budget import BudgetExceeded
        from airflow_llm_provider.cascades.runner import PhaseFailed, run_phase
        from airflow_llm_provider.operators.cascade import run_options_for

        cascade = self._load()
        ti = context["ti"]
        outputs = self._pulled_outputs(context)
        inputs = self.inputs if self.inputs is not None else run_input(context)
        item_index = getattr(ti, "map_index", -1) if self.mapped else None
        if item_index is not None:
            self.log.info("Phase %s, item %s", self.phase, item_index)

        def run(human: RecordedAnswers, journal: ResponseJournal) -> tuple[PhaseOutcome, LLMHook]:
            options, hook = run_options_for(self, cascade, context, human=human, journal=journal)
            outcome = run_phase(
                cascade,
                self.phase,
                inputs,
                outputs,
                options,
                item=self.map_item if self.mapped else None,
                item_index=item_index,
                state=self._pulled_state(context),
            )
            return outcome, hook

        try:
            outcome, hook = run_or_park(self, context, carried, run)
        except BudgetExceeded as err:
            lineage_state(self).fail(f"cascade {cascade.cascade_id}: {err}", budget_exceeded=True)
            raise AirflowFailException(f"cascade {cascade.cascade_id}: {err}") from err
        except PhaseFailed as err:
            lineage_state(self).fail(f"cascade {cascade.cascade_id}: {err}")
            raise AirflowException(f"cascade {cascade.cascade_id}: {err}") from err
        lineage_state(self).status = "success"
        result = outcome.to_dict()
        result["usage"]["model"] = hook.model_name
        result["usage"]["synthetic"] = hook.synthetic
        return result


class CascadeSoundingOperator(CascadePhaseOperator):
    """One sounding attempt of a phase (``CascadeDagConfig(soundings_as_tasks=True)``), mapped with
    ``.expand(sounding=[0, 1, ...])``; runs the engine's ``run_sounding``.

    A failed attempt (:class:`PhaseFailed`: rejected answers, LLM errors after the client's
    retries) does not fail the task: it returns ``{"phase", "sounding", "error", "output": None,
    "route": None, "usage"}`` so the evaluate task judges the attempts that succeeded. A budget
    stop still fails the task (and so the phase).

    :param sounding: the attempt's index (0-based); it decides the attempt's model (as
        ``soundings.models``/``model_strategy`` assign them), its ``sounding_index`` in the
        instructions and its prompt mutation (``mutate``, on by default as in Windlass).
    """

    def __init__(self, *, sounding: int = 0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.sounding = sounding

    def _run(self, context: Any, carried: Mapping[str, Any]) -> dict[str, Any]:
        from airflow_llm_provider.cascades.budget import BudgetExceeded
        from airflow_llm_provider.cascades.runner import PhaseFailed, run_sounding
        from airflow_llm_provider.operators.cascade import run_options_for

        cascade = self._load()
        outputs = self._pulled_outputs(context)
        inputs = self.inputs if self.inputs is not None else run_input(context)
        index = int(self.sounding)
        self.log.info("Phase %s, sounding %d", self.phase, index + 1)

        def run(human: RecordedAnswers, journal: ResponseJournal) -> tuple[PhaseOutcome, LLMHook]:
            options, hook = run_options_for(self, cascade, context, human=human, journal=journal)
            state = self._pulled_state(context)
            return run_sounding(cascade, self.phase, index, inputs, outputs, options, state), hook

        hook = None
        try:
            outcome, hook = run_or_park(self, context, carried, run)
        except BudgetExceeded as err:
            lineage_state(self).fail(f"cascade {cascade.cascade_id}: {err}", budget_exceeded=True)
            raise AirflowFailException(f"cascade {cascade.cascade_id}: {err}") from err
        except PhaseFailed as err:
            # The attempt failed, the task does not: its lineage says so in the usage facet.
            lineage_state(self).status = "failed_attempt"
            self.log.warning("Sounding %d of phase %s failed: %s", index + 1, self.phase, err)
            return {
                "phase": self.phase,
                "sounding": index,
                "error": str(err),
                "output": None,
                "route": None,
                "usage": {
                    "model": getattr(hook, "model_name", None),
                    "synthetic": getattr(hook, "synthetic", None),
                },
            }
        lineage_state(self).status = "success"
        result = outcome.to_dict()
        result["sounding"] = index
        result["usage"]["model"] = hook.model_name
        result["usage"]["synthetic"] = hook.synthetic
        return result


class CascadeSoundingsJudgeOperator(CascadePhaseOperator):
    """The result of a phase whose soundings ran as mapped tasks: the evaluator's choice among the
    attempts that succeeded (``mode: aggregate``: their merge), with the engine's
    ``judge_soundings``. Its XCom is the phase's ``{"phase", "output", "route", "usage"}``; the
    usage sums the attempts' and the evaluator's. Fails when every attempt failed.

    :param results: the attempt tasks' XCom values (the mapped task's ``.output``).
    """

    template_fields: Sequence[str] = (*CascadePhaseOperator.template_fields, "results")

    def __init__(self, *, results: Any = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.results = results

    def _run(self, context: Any, carried: Mapping[str, Any]) -> dict[str, Any]:
        from airflow_llm_provider.cascades.budget import BudgetExceeded
        from airflow_llm_provider.cascades.runner import PhaseFailed, judge_soundings
        from airflow_llm_provider.operators.cascade import run_options_for

        cascade = self._load()
        attempts = [r for r in (self.results or []) if isinstance(r, Mapping)]
        attempts.sort(key=lambda r: int(r.get("sounding", 0)))
        failed = [r for r in attempts if r.get("error")]
        for result in failed:
            self.log.warning("Sounding %s failed: %s", int(result.get("sounding", 0)) + 1, result["error"])
        candidates = [
            (int(r.get("sounding", 0)), r.get("output"), r.get("route"))
            for r in attempts
            if not r.get("error")
        ]
        if not candidates:
            raise AirflowException(
                f"cascade {cascade.cascade_id}: phase '{self.phase}': all {len(attempts)} soundings failed"
                + (f": {failed[0]['error']}" if failed else "")
            )
        self.log.info("Phase %s: judging %d of %d soundings", self.phase, len(candidates), len(attempts))
        outputs = self._pulled_outputs(context)
        inputs = self.inputs if self.inputs is not None else run_input(context)

        def run(human: RecordedAnswers, journal: ResponseJournal) -> tuple[PhaseOutcome, LLMHook]:
            # A human-judged phase (evaluator: human) asks here: this task is the human step.
            options, hook = run_options_for(self, cascade, context, human=human, journal=journal)
            state = self._pulled_state(context)
            return judge_soundings(cascade, self.phase, candidates, inputs, outputs, options, state), hook

        try:
            outcome, hook = run_or_park(self, context, carried, run)
        except BudgetExceeded as err:
            lineage_state(self).fail(f"cascade {cascade.cascade_id}: {err}", budget_exceeded=True)
            raise AirflowFailException(f"cascade {cascade.cascade_id}: {err}") from err
        except PhaseFailed as err:
            lineage_state(self).fail(f"cascade {cascade.cascade_id}: {err}")
            raise AirflowException(f"cascade {cascade.cascade_id}: {err}") from err
        lineage_state(self).status = "success"
        result = outcome.to_dict()
        result["usage"] = sum_usage([*(r.get("usage") or {} for r in attempts), result["usage"]])
        result["usage"]["model"] = hook.model_name
        result["usage"]["synthetic"] = hook.synthetic
        return result


def sum_usage(usages: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Usage dicts added up: numbers are summed, other values (model names) keep the first seen."""
    total: dict[str, Any] = {}
    for usage in usages:
        for key, value in usage.items():
            if isinstance(value, bool) or not isinstance(value, int | float):
                total.setdefault(key, value)
            else:
                total[key] = total.get(key, 0) + value
    return total


class CascadeWholeRunOperator(CascadeOperator):
    """``CascadeOperator`` whose input defaults to the run's ``params`` overlaid with
    ``dag_run.conf``: a cascade that cannot be a DAG (a loop) rendered as one task."""

    def execute(self, context: Any) -> dict[str, Any]:
        self.inputs = {**run_input(context), **self.inputs}
        return super().execute(context)


class _XComOnlyLineageMixin:
    """OpenLineage methods of the plumbing steps (items, collect, route). They read and write only
    XCom and call no model, so their events carry just the task's declared inlets/outlets: no
    usage facet, which would count the phase tasks' calls twice."""

    def get_openlineage_facets_on_start(self) -> Any:
        return _declared_lineage(self)

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> Any:
        return _declared_lineage(self)

    def get_openlineage_facets_on_failure(self, task_instance: Any) -> Any:
        return _declared_lineage(self)


def _declared_lineage(task: Any) -> Any:
    from airflow.providers.openlineage.extractors import OperatorLineage

    from airflow_llm_provider.lineage.cascade import declared_datasets

    inputs, outputs = declared_datasets(task)
    return OperatorLineage(inputs=inputs, outputs=outputs)


class CascadeItemsOperator(_XComOnlyLineageMixin, BaseOperator):
    """The list a ``map_over: phase[.key.path]`` phase is mapped over, from that phase's XCom."""

    ui_color = "#f1f3f4"

    def __init__(self, *, source_task_id: str, map_over: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.source_task_id = source_task_id
        self.map_over = map_over

    def execute(self, context: Any) -> list[Any]:
        items: Any = _output_of(context["ti"].xcom_pull(task_ids=self.source_task_id, map_indexes=-1))
        _, _, key_path = self.map_over.partition(".")
        for key in filter(None, key_path.split(".")):
            items = items.get(key) if isinstance(items, Mapping) else None
        if not isinstance(items, list):
            raise AirflowException(f"map_over '{self.map_over}' is {type(items).__name__}, not a list")
        self.log.info("map_over %s: %d items", self.map_over, len(items))
        return items


class CascadeCollectOperator(_XComOnlyLineageMixin, BaseOperator):
    """The reduce step of a mapped phase: the outputs of its instances as one list, in item order."""

    template_fields: Sequence[str] = ("results",)
    ui_color = "#f1f3f4"

    def __init__(self, *, phase: str, results: Any, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.phase = phase
        self.results = results

    def execute(self, context: Any) -> dict[str, Any]:
        results = list(self.results or [])
        usage = sum_usage([result.get("usage") or {} for result in results])
        return {
            "phase": self.phase,
            "output": [_output_of(result) for result in results],
            "route": None,
            "usage": usage,
        }


class CascadeRouteOperator(_XComOnlyLineageMixin, BaseBranchOperator):
    """Follow the route a phase chose: only the chosen successor runs, the others are skipped.

    :param phase_task_id: the task whose XCom holds the phase's ``route``.
    :param targets: phase name -> the task id that starts it.
    :param fallthrough: the phase that runs when the phase chose no route (the next in the list),
        or ``end``.
    """

    ui_color = "#fff4e5"

    def __init__(
        self, *, phase_task_id: str, targets: Mapping[str, str], fallthrough: str, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.phase_task_id = phase_task_id
        self.targets = dict(targets)
        self.fallthrough = fallthrough

    def choose_branch(self, context: Any) -> list[str]:
        outcome = context["ti"].xcom_pull(task_ids=self.phase_task_id, map_indexes=-1)
        route = outcome.get("route") if isinstance(outcome, Mapping) else None
        chosen = route or self.fallthrough
        if chosen not in self.targets:
            self.log.info("Route %s: the cascade ends here", chosen)
            return []
        self.log.info("Route %s -> task %s", chosen, self.targets[chosen])
        return [self.targets[chosen]]
