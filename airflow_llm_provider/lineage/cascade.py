"""OpenLineage metadata of a cascade task: the one implementation behind the operators'
``get_openlineage_facets_on_start/complete/failure`` and behind our extractors.

Imported only from those methods (it imports the OpenLineage provider and client). What a task
emits:

- **inputs/outputs**: the tables of every script ``sql_data`` ran (``sql_data`` phases, ``sql:``
  files and a model's own ``sql_data`` calls), parsed with
  :func:`~airflow_llm_provider.lineage.sql.parse_sql_lineage` and named the way the OpenLineage
  provider names SQL datasets (namespace ``<scheme>://<host>:<port>`` from the hook's
  ``get_openlineage_database_info``, name ``<database>.<schema>.<table>``); plus the task's
  ``inlets``/``outlets`` (Assets, ``File``, ``Table``). On start only inlets/outlets are known.
- **run facet** ``airflowLlm_usage`` (complete/failure): what this task spent (its own calls only,
  so summing tasks never double counts), the models that answered, soundings winners, budget.
- **job facet** ``airflowLlm_cascade``: the phase graph and content hash (``phase`` for a task of
  a rendered DAG).
- **failure**: ``errorMessage`` (OpenLineage's ``ErrorMessageRunFacet``, message only) and the
  usage spent until the failure.

No prompt text, SQL text, connection field or secret goes into any of it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from airflow.providers.openlineage.extractors import OperatorLineage
    from openlineage.client.event_v2 import Dataset

    from airflow_llm_provider.operators.cascade import CascadeRunState
    from airflow_llm_provider.operators.cascade_tools import SqlRun

log = logging.getLogger(__name__)

Moment = Literal["start", "complete", "failure"]


def cascade_lineage(task: Any, moment: Moment, task_instance: Any = None) -> OperatorLineage:
    """``OperatorLineage`` of a cascade task (``CascadeOperator``, ``@task.cascade``, a phase task)
    at ``moment``; reads what ``execute`` left in ``task._lineage_state``."""
    from airflow.providers.openlineage.extractors import OperatorLineage
    from openlineage.client.facet_v2 import error_message_run

    from airflow_llm_provider.lineage.facets import cascade_facets

    state: CascadeRunState | None = getattr(task, "_lineage_state", None)
    cascade = state.cascade if state is not None else task._load()
    phase = getattr(task, "phase", None)
    inputs: list[Dataset] = []
    outputs: list[Dataset] = []
    usage: dict[str, Any] | None = None
    models: list[str] | None = None
    winners: dict[str, int] | None = None
    if moment != "start" and state is not None:
        inputs, outputs = sql_datasets(state.sql_runs)
        tracker = state.record.usage
        usage = tracker.totals().as_dict() if tracker is not None else {}
        models = list(state.record.models)
        winners = dict(state.record.soundings_winners)
    elif moment == "failure":
        usage = {}  # failed before the cascade started: nothing spent
    declared_in, declared_out = declared_datasets(task)
    status = None
    if moment != "start":
        status = (state.status if state is not None else None) or (
            "failed" if moment == "failure" else "success"
        )
    run_facets, job_facets = cascade_facets(
        cascade,
        usage=usage,
        models=models,
        soundings_winners=winners,
        budget_exceeded=bool(state and state.budget_exceeded),
        status=status,
        phases=[phase] if phase else None,
        budget_limits=getattr(task, "budget", None) or None,
        task_phase=phase,
    )
    if moment == "failure":
        message = state.error if state is not None and state.error else None
        if message:
            run_facets["errorMessage"] = error_message_run.ErrorMessageRunFacet(
                message=message, programmingLanguage="python"
            )
    return OperatorLineage(
        inputs=_unique([*inputs, *declared_in]),
        outputs=_unique([*outputs, *declared_out]),
        run_facets=run_facets,
        job_facets=job_facets,
    )


def declared_datasets(task: Any) -> tuple[list[Dataset], list[Dataset]]:
    """The task's ``inlets``/``outlets`` (Assets, ``File``, ``Table``, OpenLineage datasets) as
    datasets, converted the way the provider converts them. Needed because the provider reads them
    only when an operator's own methods report no dataset at all."""
    from airflow.providers.openlineage.extractors.manager import ExtractorManager

    def convert(objects: Iterable[Any]) -> list[Dataset]:
        found: list[Dataset] = []
        for obj in objects or ():
            try:
                dataset = ExtractorManager.convert_to_ol_dataset(obj)
            except Exception:
                log.warning("OpenLineage: cannot convert %r to a dataset", obj, exc_info=True)
                continue
            if dataset is not None:
                found.append(dataset)
        return found

    return convert(getattr(task, "inlets", ())), convert(getattr(task, "outlets", ()))


def sql_datasets(runs: Iterable[SqlRun]) -> tuple[list[Dataset], list[Dataset]]:
    """Input and output datasets of the scripts ``sql_data`` ran, one parse per script."""
    from openlineage.client.event_v2 import Dataset

    from airflow_llm_provider.lineage.sql import parse_sql_lineage

    inputs: list[Dataset] = []
    outputs: list[Dataset] = []
    targets: dict[str, _Target] = {}
    for run in runs:
        if run.conn_id not in targets:
            targets[run.conn_id] = _Target.of(run)
        target = targets[run.conn_id]
        lineage = parse_sql_lineage(run.sql, dialect=target.dialect, default_schema=target.default_schema)
        inputs.extend(Dataset(namespace=target.namespace, name=target.name(t)) for t in lineage.inputs)
        outputs.extend(Dataset(namespace=target.namespace, name=target.name(t)) for t in lineage.outputs)
    return _unique(inputs), _unique(outputs)


class _Target:
    """Where a connection's tables live, as the OpenLineage provider names them."""

    def __init__(self, namespace: str, database: str | None, dialect: str, default_schema: str | None):
        self.namespace = namespace
        self.database = database
        self.dialect = dialect
        self.default_schema = default_schema

    def name(self, table: str) -> str:
        # parse_sql_lineage gives [database.]schema.table; the provider prefixes the database.
        if self.database and table.count(".") < 2:
            return f"{self.database}.{table}"
        return table

    @classmethod
    def of(cls, run: SqlRun) -> _Target:
        from airflow.providers.openlineage.sqlparser import SQLParser

        hook, connection = run.hook, run.connection
        info = None
        try:
            info = hook.get_openlineage_database_info(connection)
        except Exception:
            log.debug("OpenLineage: no database info from %s", type(hook).__name__, exc_info=True)
        if info is not None:
            namespace = SQLParser.create_namespace(info)
            database = info.database
        else:  # a hook without OpenLineage support: the same shape from the connection
            host = connection.host or ""
            authority = f"{host}:{connection.port}" if host and connection.port else host
            namespace = f"{connection.conn_type}://{authority}" if authority else str(connection.conn_type)
            database = connection.schema or None
        dialect = "generic"
        try:
            dialect = hook.get_openlineage_database_dialect(connection) or "generic"
        except Exception:
            log.debug("OpenLineage: no dialect from %s", type(hook).__name__, exc_info=True)
        default_schema = None
        try:
            default_schema = hook.get_openlineage_default_schema()
        except Exception:
            log.debug("OpenLineage: no default schema from %s", type(hook).__name__, exc_info=True)
        return cls(namespace, database, dialect, default_schema)


def _unique(datasets: Iterable[Dataset]) -> list[Dataset]:
    seen: set[tuple[str, str]] = set()
    found: list[Dataset] = []
    for dataset in datasets:
        key = (dataset.namespace, dataset.name)
        if key not in seen:
            seen.add(key)
            found.append(dataset)
    return found
