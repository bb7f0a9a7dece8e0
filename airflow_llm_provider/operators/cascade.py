"""CascadeOperator: run a whole cascade in one Airflow task.

The cascade file is validated when the DAG is parsed (a broken file is a DAG import error naming
file, line and field) and run by the pure engine in ``execute``. ``inputs`` is templated by Airflow;
the cascade body never is: its own ``{{ }}`` templates belong to the engine and are rendered there,
once, in a sandbox, with Airflow's ``ds``, ``data_interval_start``/``end`` and ``params`` available.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow.providers.common.compat.sdk import AirflowException, AirflowFailException, BaseOperator

from airflow_llm_provider.cascades.templates import AIRFLOW_VARIABLES
from airflow_llm_provider.operators.cascade_human import HumanInputMixin, refuse_if_unsupported, run_or_park
from airflow_llm_provider.operators.links import CascadeArtifactsLink

if TYPE_CHECKING:
    from airflow.providers.openlineage.extractors import OperatorLineage

    from airflow_llm_provider.cascades.human import HumanChannel, RecordedAnswers
    from airflow_llm_provider.cascades.run.journal import ResponseJournal
    from airflow_llm_provider.cascades.runner import CascadeResult, RunOptions, RunRecord
    from airflow_llm_provider.cascades.spec import Cascade
    from airflow_llm_provider.hooks.llm import LLMHook
    from airflow_llm_provider.operators.cascade_tools import SqlRun


class CascadeRunState:
    """What a cascade task's OpenLineage methods need from ``execute``: kept on the operator
    instance (the OpenLineage provider's pattern), never in XCom. Set by :func:`run_options_for`."""

    def __init__(self, cascade: Cascade, record: RunRecord) -> None:
        self.cascade = cascade
        self.record = record
        self.sql_runs: list[SqlRun] = []
        self.status: str | None = None
        self.error: str | None = None
        self.budget_exceeded = False

    def fail(self, error: BaseException | str, *, budget_exceeded: bool = False) -> None:
        from airflow_llm_provider.cascades.redact import redact

        # This text becomes OpenLineage's errorMessage facet: no registered secret in it.
        self.status, self.error = "failed", redact(str(error))
        self.budget_exceeded = self.budget_exceeded or budget_exceeded

    def __repr__(self) -> str:  # SQL and errors stay out of logs and full task info
        return f"CascadeRunState(cascade={self.cascade.cascade_id!r}, status={self.status!r})"


class CascadeLineageMixin:
    """``get_openlineage_facets_on_start/complete/failure`` for cascade tasks.

    OpenLineage is imported inside the methods only: it stays an optional dependency and importing
    an operator costs nothing more. The one implementation is
    :func:`airflow_llm_provider.lineage.cascade.cascade_lineage`; the extractors in
    :mod:`airflow_llm_provider.lineage.extractors` call these same methods.
    """

    _lineage_state: CascadeRunState | None = None

    def get_openlineage_facets_on_start(self) -> OperatorLineage:
        from airflow_llm_provider.lineage.cascade import cascade_lineage

        return cascade_lineage(self, "start")

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> OperatorLineage:
        from airflow_llm_provider.lineage.cascade import cascade_lineage

        return cascade_lineage(self, "complete", task_instance)

    def get_openlineage_facets_on_failure(self, task_instance: Any) -> OperatorLineage:
        from airflow_llm_provider.lineage.cascade import cascade_lineage

        return cascade_lineage(self, "failure", task_instance)


class CascadeOperator(HumanInputMixin, CascadeLineageMixin, BaseOperator):
    """
    Run an LLM cascade (YAML/JSON file or dict) as one task.

    :param cascade: path to a cascade file (absolute, or relative to the DAG file's folder), or the
        cascade as a dict.
    :param inputs: the cascade's input (templated).
    :param llm_conn_id: ``pydanticai`` connection; default: the cascade's ``defaults.llm_conn_id``,
        then ``[llm_provider] default_llm_conn_id``.
    :param model: model for every phase, overriding the cascade (templated).
    :param budget: ``{"max_tokens": ..., "max_cost_usd": ...}`` overriding the cascade's budget.
        A run stopped by its budget fails without Airflow retries: retrying would spend again.
    :param cache: phase-result cache: ``"local"`` (default), ``"dir:/path"``, ``"postgresql://..."``,
        ``"conn:<postgres conn id>"`` or ``None``. A task retry resumes after the last finished phase.
    :param cache_ttl_seconds: opt in to reusing answers across runs (backfills, reruns) for this long;
        by default answers are only reused within the same DAG run, task and map index.
    :param tools: registered tools (name -> callable) the cascade may use.
    :param max_concurrency: LLM calls in flight at once within the task.
    :param budgets: shared budgets above this task, e.g.
        ``[{"scope": "dag_day", "max_cost_usd": 5, "warn_at": 0.8}]`` (scopes ``dag_run``,
        ``dag_day``, ``tag_day`` with a ``tag``); checked against the cost ledger before each call.
    :param alert_slack_conn_id: Slack connection (webhook or API) for budget alerts; default
        ``[llm_provider] alert_slack_conn_id``. ``alert_slack_channel`` for API connections. The
        same connection hears when a question to a human waits (Airflow 3.3+), with a link.
    :param human_assignees: who may answer the cascade's questions to a human, as Airflow users
        ``[{"id": ..., "name": ...}]`` (default: anyone allowed to act on the DAG).
    """

    template_fields: Sequence[str] = ("inputs", "llm_conn_id", "model")
    template_fields_renderers = {"inputs": "json"}
    ui_color = "#e8f0fe"
    operator_extra_links = (CascadeArtifactsLink(),)

    def __init__(
        self,
        *,
        cascade: str | os.PathLike[str] | Mapping[str, Any],
        inputs: Mapping[str, Any] | None = None,
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
        self.budgets = list(budgets or [])
        self.alert_slack_conn_id = alert_slack_conn_id
        self.alert_slack_channel = alert_slack_channel
        self.cascade = cascade if isinstance(cascade, Mapping) else os.fspath(cascade)
        self.inputs = dict(inputs or {})
        self.llm_conn_id = llm_conn_id
        self.model = model
        self.budget = dict(budget) if budget else None
        self.cache = cache
        self.cache_ttl_seconds = cache_ttl_seconds
        self.tools = dict(tools or {})
        self.max_concurrency = max_concurrency
        # Validate while the DAG is parsed: a broken cascade is an import error, not a failed run.
        refuse_if_unsupported(self._load())

    def _cascade_source(self) -> str | Mapping[str, Any]:
        return cascade_source(self)

    def _load(self) -> Cascade:
        from airflow_llm_provider.cascades import load_cascade
        from airflow_llm_provider.operators.cascade_tools import configured_tool_path, tool_names

        return load_cascade(
            self._cascade_source(), tools=tool_names(self.tools), tool_path=configured_tool_path()
        )

    def execute(self, context: Any) -> dict[str, Any]:
        return self._run(context, {})

    def _run(self, context: Any, carried: Mapping[str, Any]) -> dict[str, Any]:
        """Run the cascade with the human answers and paid responses ``carried`` from before a
        question (empty on the first run); a new question parks the task (cascade_human.py)."""
        from airflow_llm_provider.cascades.runner import run_cascade

        cascade = self._load()
        missing = cascade.missing_inputs(self.inputs)
        if missing:  # before any LLM call; a retry would not bring the input
            raise AirflowFailException(f"{missing}; set it in the task's `inputs`")

        def run(human: RecordedAnswers, journal: ResponseJournal) -> tuple[CascadeResult, LLMHook]:
            options, hook = run_options_for(self, cascade, context, human=human, journal=journal)
            return run_cascade(cascade, self.inputs, options), hook

        result, hook = run_or_park(self, context, carried, run)
        summary = result.to_dict()
        summary["usage"]["model"] = hook.model_name
        summary["usage"]["synthetic"] = hook.synthetic
        if result.status != "success":
            # The exception text reaches the task log, the UI and failure callbacks (Slack).
            message = f"cascade {cascade.cascade_id} failed: {summary['error']}"
            lineage_state(self).fail(message, budget_exceeded=result.budget_exceeded)
            if result.budget_exceeded:
                raise AirflowFailException(message)  # retrying would spend the same money again
            raise AirflowException(message)
        lineage_state(self).status = "success"
        return summary


def lineage_state(task: Any) -> CascadeRunState:
    """The task's :class:`CascadeRunState` (set by :func:`run_options_for`)."""
    state = task._lineage_state
    assert state is not None, "run_options_for() sets the lineage state before a cascade runs"
    return state


def cascade_source(task: Any) -> str | Mapping[str, Any]:
    """A task's cascade: the dict as given, or the file path, relative paths resolved against the
    folder of the DAG file the task belongs to."""
    if isinstance(task.cascade, Mapping):
        return task.cascade
    path = Path(task.cascade)
    if not path.is_absolute() and task.has_dag() and getattr(task.dag, "fileloc", None):
        path = Path(task.dag.fileloc).parent / path
    return str(path)


def run_options_for(
    task: Any,
    cascade: Cascade,
    context: Any,
    *,
    human: HumanChannel | None = None,
    journal: ResponseJournal | None = None,
) -> tuple[RunOptions, LLMHook]:
    """How a task runs (part of) a cascade: models and prices from its LLM connection, Airflow's
    run variables for templates, its budget, and a phase cache scoped to this task instance (or
    shared across runs when ``cache_ttl_seconds`` opts in)."""
    from airflow_llm_provider.cascades.cache import open_cache
    from airflow_llm_provider.cascades.runner import RunOptions, RunRecord
    from airflow_llm_provider.cascades.spec import Budget
    from airflow_llm_provider.cascades.trust import connection_ids
    from airflow_llm_provider.hooks.llm import LLMHook
    from airflow_llm_provider.operators.cascade_signals import AirflowSignalBus
    from airflow_llm_provider.operators.cascade_tools import (
        airflow_tool_services,
        airflow_tools,
        configured_tool_path,
    )

    source = task._cascade_source()
    # What the OpenLineage methods read after execute: usage, models, winners, SQL run.
    state = CascadeRunState(cascade, RunRecord())
    task._lineage_state = state
    hook = LLMHook(llm_conn_id=task.llm_conn_id or cascade.defaults.llm_conn_id, model=task.model)
    task.log.info("Cascade %s with %s", cascade.cascade_id, hook.describe())
    options = RunOptions(
        model_factory=hook.model_for,
        model=task.model,
        tools=airflow_tools(task.tools),
        tool_services=airflow_tool_services(
            on_sql=state.sql_runs.append,
            conn_ids=connection_ids(cascade),
            human=human,
            signals=AirflowSignalBus(),  # await_signal defers the task, fire_signal writes Variables
        ),
        journal=journal,
        session_id=session_id_of(context),
        record=state.record,
        template_context=template_context(context),
        base_dir=None if isinstance(source, Mapping) else Path(source).parent,  # sql:, tools by name
        tool_path=configured_tool_path(),
        max_concurrency=task.max_concurrency,
        budget=Budget(**task.budget) if task.budget else None,
        declared_price=hook.declared_price(),
        cache=open_cache(task.cache),
        cache_scope="shared" if task.cache_ttl_seconds else run_scope(context),
        cache_max_age_seconds=task.cache_ttl_seconds,
        on_event=lambda line: task.log.info("%s", line),
        call_observer=ledger_accounting_for(task, context, cascade),
    )
    return options, hook


def session_id_of(context: Any) -> str | None:
    """The run's session id for this task instance (its scratch folder, session database and the
    artifacts it stores; the task's "Cascade artifacts" link filters by it). None outside a task."""
    from airflow_llm_provider.operators.links import session_id_for

    ti = context.get("ti") if isinstance(context, Mapping) else None
    if ti is None:
        return None
    return session_id_for(ti.dag_id, ti.run_id, ti.task_id, getattr(ti, "map_index", -1))


def _int_or(value: Any, default: int) -> int:
    return default if value is None else int(value)


def ledger_accounting_for(task: Any, context: Any, cascade: Cascade | None = None) -> Any:
    """The cost ledger and shared budgets for this task instance (None when the ledger is off and
    no budget is declared). Budgets come from the task (``budgets=``, also via ``default_args``),
    the cascade file (``budgets:``) and ``[llm_provider] budgets``; alerts go to
    ``alert_slack_conn_id`` or the config's. One implementation for every entry point:
    :func:`airflow_llm_provider.costs.budgets.configured_accounting`."""
    from airflow_llm_provider.costs.budgets import TaskIdentity, configured_accounting

    ti = context.get("ti") or context.get("task_instance")
    dag = context.get("dag")
    identity = TaskIdentity(
        dag_id=getattr(ti, "dag_id", task.dag_id),
        run_id=getattr(ti, "run_id", None) or str(context.get("run_id", "manual")),
        task_id=getattr(ti, "task_id", task.task_id),
        map_index=_int_or(getattr(ti, "map_index", None), -1),
        try_number=_int_or(getattr(ti, "try_number", None), 1),
        tags=tuple(sorted(getattr(dag, "tags", None) or ())),
    )
    try:
        return configured_accounting(
            identity,
            budgets=getattr(task, "budgets", None),
            cascade_budgets=[b.model_dump() for b in (cascade.budgets if cascade is not None else [])],
            alert_slack_conn_id=getattr(task, "alert_slack_conn_id", None),
            alert_slack_channel=getattr(task, "alert_slack_channel", None),
        )
    except ValueError as err:
        raise AirflowFailException(f"invalid LLM budget: {err}") from None


def template_context(context: Any) -> dict[str, Any]:
    """Airflow's run variables for cascade templates; absent ones (e.g. no logical date on a
    REST-triggered Airflow 3 run) are left out rather than failing."""
    values: dict[str, Any] = {}
    for name in AIRFLOW_VARIABLES:
        value = context.get(name) if hasattr(context, "get") else None
        if value is None:
            continue
        if name == "params":
            values[name] = dict(value)
        else:
            values[name] = value.isoformat() if hasattr(value, "isoformat") else value
    return values


def run_scope(context: Any) -> str:
    """Cache scope of one task instance: a retry finds its earlier phases, another run does not."""
    ti = context.get("ti") or context.get("task_instance")
    dag_id = getattr(ti, "dag_id", "dag")
    run_id = getattr(ti, "run_id", None) or context.get("run_id", "run")
    task_id = getattr(ti, "task_id", "task")
    map_index = getattr(ti, "map_index", -1)
    return f"{dag_id}/{run_id}/{task_id}/{map_index}"
