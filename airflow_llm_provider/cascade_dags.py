"""Cascades as DAGs: every cascade file of a folder becomes an Airflow DAG, one task per phase.

In a file of the dags folder::

    from airflow_llm_provider.cascade_dags import CascadeDagConfig, load_cascade_dags

    load_cascade_dags("cascades/", globals(), CascadeDagConfig(llm_conn_id="my_llm"))

Two steps, like the engine: :func:`plan_cascade` turns a validated cascade into a :class:`DagPlan`
(tasks, kinds, upstream tasks, mapping, pools, retries; no Airflow import, used by
``airflow-llm render``), and :func:`build_cascade_dag` turns the plan into a DAG.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from airflow_llm_provider.cascades.graph import (
    is_state_machine,
    next_in_list,
    phase_dependencies,
    templated_fields,
)
from airflow_llm_provider.cascades.spec import END, Cascade, Phase, parse_duration
from airflow_llm_provider.cascades.templates import reads_state_beyond_outputs

if TYPE_CHECKING:
    from airflow.providers.common.compat.sdk import DAG

TaskKind = Literal["phase", "mapped", "items", "collect", "route", "cascade", "sounding", "judge"]
JOIN_TRIGGER_RULE = "none_failed_min_one_success"
DEFAULT_START_DATE = datetime(2024, 1, 1)


@dataclass(frozen=True)
class CascadeDagConfig:
    """Defaults for the DAGs rendered from cascade files.

    :param select: ``"airflow"`` (default) renders only cascades with an ``airflow:`` block, so a
        folder can also hold cascades run by ``CascadeOperator``; ``"all"`` renders every file.
        Broken files are reported either way.
    :param pattern: glob of the file names to consider (``*.yaml``, ``*.yml``, ``*.json`` only).
    :param llm_conn_id: connection for every phase (default: the cascade's ``defaults.llm_conn_id``).
    :param budget: overrides each cascade's ``budget``; applies per task (see the docs).
    :param tags: added to every DAG (plus ``cascade`` and the cascade's own tags).
    :param default_args: under the cascade's ``airflow.default_args``.
    :param start_date: when the cascade sets none (default 2024-01-01 UTC).
    :param on_error: ``"import_error"`` (default): valid cascades are registered and the broken
        files are one import error of the loader file; ``"raise"``: the loader raises (no DAG of
        the folder is registered).
    :param soundings_as_tasks: render an LLM phase with soundings (an integer ``factor`` > 1) as a
        task group ``<phase>``: ``<phase>.attempt`` mapped over the sounding indexes (one attempt
        per task) and ``<phase>.evaluate`` (the evaluator or aggregator), whose XCom is the phase's.
    """

    select: Literal["airflow", "all"] = "airflow"
    pattern: str = "*"
    llm_conn_id: str | None = None
    model: str | None = None
    cache: str | None = "local"
    cache_ttl_seconds: float | None = None
    budget: Mapping[str, Any] | None = None
    max_concurrency: int = 5
    tags: Sequence[str] = ()
    default_args: Mapping[str, Any] = field(default_factory=dict)
    start_date: datetime | None = None
    dag_id_prefix: str = "cascade_"
    on_error: Literal["import_error", "raise"] = "import_error"
    soundings_as_tasks: bool = False


@dataclass
class TaskPlan:
    """One task of a rendered cascade."""

    task_id: str
    kind: TaskKind
    phase: str | None = None
    upstream: list[str] = field(default_factory=list)
    trigger_rule: str = "all_success"
    pulls: dict[str, str] = field(default_factory=dict)
    """Phase -> task id whose XCom carries its output."""
    map_over: str | None = None
    expand_from: str | None = None
    """Mapped tasks: the task whose list they expand over."""
    targets: dict[str, str] = field(default_factory=dict)
    """Route tasks: phase -> the task that starts it."""
    fallthrough: str | None = None
    pool: str | None = None
    retries: int | None = None
    execution_timeout: float | None = None
    group: str | None = None
    """The task group the task is in (its task id is then ``<group>.<name>``)."""
    soundings: int | None = None
    """Sounding tasks: the number of attempts (the ``factor``)."""


@dataclass
class DagPlan:
    """How a cascade is rendered: its DAG id, the mode and the tasks."""

    dag_id: str
    cascade_id: str
    mode: Literal["dataflow", "branching", "single"]
    tasks: list[TaskPlan]
    note: str = ""
    unreachable: list[str] = field(default_factory=list)

    def task(self, task_id: str) -> TaskPlan:
        for task in self.tasks:
            if task.task_id == task_id:
                return task
        raise KeyError(task_id)


class CascadeDagImportError(ValueError):
    """Broken cascade files of a folder loaded by :func:`load_cascade_dags`, one issue per line."""


# -- planning (no Airflow) ----------------------------------------------------------------------


def dag_id_for(cascade: Cascade, prefix: str = "cascade_") -> str:
    """``airflow.dag_id``, else ``cascade_<cascade_id>`` with characters Airflow refuses replaced."""
    if cascade.airflow is not None and cascade.airflow.dag_id:
        return cascade.airflow.dag_id
    return prefix + re.sub(r"[^A-Za-z0-9_.\-]", "_", cascade.cascade_id)


def successors(cascade: Cascade, phase: Phase) -> list[str]:
    """The phases (or ``end``) that may run after ``phase`` in a state-machine cascade, as the
    engine decides: chosen handoff, routed target, ``on_error``, else the next phase in the list."""
    fallthrough = next_in_list(cascade, phase) or END
    found: list[str]
    if phase.map_over is not None:
        found = [fallthrough]
    elif phase.kind == "llm":
        found = phase.handoff_targets or [fallthrough]
    else:
        if phase.routing:
            found = list(phase.routing.values())
        elif len(phase.handoffs) == 1:
            found = [phase.handoffs[0].target]
        else:
            found = [fallthrough]
        if phase.on_error_target:
            found.append(phase.on_error_target)
    return list(dict.fromkeys(found))


def _reachable(cascade: Cascade) -> list[str]:
    seen: list[str] = []
    todo = [cascade.phases[0].name]
    while todo:
        name = todo.pop()
        if name == END or name in seen:
            continue
        seen.append(name)
        todo.extend(successors(cascade, cascade.phase(name)))
    order = [p.name for p in cascade.phases]
    return sorted(seen, key=order.index)


def _has_cycle(cascade: Cascade, names: list[str]) -> bool:
    # graphlib walks iteratively: a long chain of phases must not hit Python's recursion limit.
    import graphlib

    graph = {name: [nxt for nxt in successors(cascade, cascade.phase(name)) if nxt != END] for name in names}
    try:
        graphlib.TopologicalSorter(graph).prepare()
    except graphlib.CycleError:
        return True
    return False


def _phase_args(phase: Phase) -> dict[str, Any]:
    timeout = phase.execution_timeout
    return {
        "pool": phase.pool,
        "retries": phase.retries,
        "execution_timeout": parse_duration(timeout) if timeout is not None else None,
    }


def sounding_factor(phase: Phase) -> int | None:
    """The factor of a phase whose soundings can be rendered as tasks: an LLM phase, not mapped,
    with an integer ``factor`` > 1 (a templated factor is only known when the phase runs)."""
    soundings = phase.soundings
    if phase.kind != "llm" or phase.map_over is not None or soundings is None:
        return None
    factor = soundings.factor
    # Cost-aware and Pareto picks need each attempt's cost, which only one task running them all
    # has (reforge, the pre-filter and mutations work in the evaluate/attempt tasks).
    judged_by_cost = (soundings.cost_aware_evaluation, soundings.pareto_frontier)
    if any(option is not None and option.enabled for option in judged_by_cost):
        return None
    if isinstance(factor, int) and factor > 1 and isinstance(soundings.models, dict):
        factor = sum(config.factor for config in soundings.models.values())  # as the engine counts
    return factor if isinstance(factor, int) and factor > 1 else None


def _reads_state(phase: Phase) -> bool:
    return any(reads_state_beyond_outputs(text) for _, text in templated_fields(phase))


def _runs_as_one(cascade: Cascade) -> str | None:
    """Why the cascade cannot be split into one task per phase, or None. Tasks hand each other
    phase outputs through XCom, not the run's state, memory or whole-run judgement."""
    soundings = cascade.soundings
    if soundings is not None and (isinstance(soundings.factor, str) or soundings.factor > 1):
        return "it has cascade-level soundings (the whole cascade runs several times and is judged)"
    for phase in cascade.phases:
        if phase.output_extraction is not None:
            return f"phase {phase.name} stores `output_extraction` in the run's state"
        if any(ref.context_out for ref in phase.sub_cascades):
            return f"phase {phase.name} merges a sub-cascade's state into the run's (`context_out`)"
    return None


def plan_cascade(cascade: Cascade, dag_id: str | None = None, *, soundings_as_tasks: bool = False) -> DagPlan:
    """The task graph a cascade renders to.

    - Data-flow cascades (no handoffs/routing/on_error): one task per phase, upstream = the phases
      it reads (``graph.phase_dependencies``), so independent phases run in parallel.
    - State machines without cycles: one task per reachable phase along the control edges; a phase
      with several possible successors is followed by a ``<phase>__route`` branch task, and a phase
      reached from several places joins with ``none_failed_min_one_success``.
    - State machines with cycles: one ``CascadeOperator`` task (a DAG cannot loop).
    - ``map_over``: ``<phase>__items`` (the list) -> ``<phase>`` mapped over it -> ``<phase>__results``
      (the outputs in item order, read by the phases downstream).
    - ``soundings_as_tasks``: a phase with soundings is the group ``<phase>``: ``<phase>.attempt``
      mapped over the attempts -> ``<phase>.evaluate`` (read by the phases downstream).
    """
    dag_id = dag_id or dag_id_for(cascade)
    whole = _runs_as_one(cascade)
    if whole is not None:
        note = f"{whole}, so the whole cascade runs in one CascadeOperator task"
        return DagPlan(
            dag_id, cascade.cascade_id, "single", [TaskPlan(task_id="cascade", kind="cascade")], note
        )
    needs = phase_dependencies(cascade)
    state_machine = is_state_machine(cascade)
    names = [p.name for p in cascade.phases]
    unreachable: list[str] = []
    if state_machine:
        reachable = _reachable(cascade)
        if _has_cycle(cascade, reachable):
            task = TaskPlan(task_id="cascade", kind="cascade")
            note = (
                "its handoffs/routing form a cycle (guarded by max_phase_visits) and a DAG cannot "
                "loop, so the whole cascade runs in one CascadeOperator task"
            )
            return DagPlan(dag_id, cascade.cascade_id, "single", [task], note)
        unreachable = [n for n in names if n not in reachable]
        names = reachable

    entry: dict[str, str] = {}
    exit_: dict[str, str] = {}
    grouped: dict[str, int] = {}
    for name in names:
        mapped = cascade.phase(name).map_over is not None
        factor = sounding_factor(cascade.phase(name)) if soundings_as_tasks else None
        if factor is not None:
            grouped[name] = factor
            entry[name], exit_[name] = f"{name}.attempt", f"{name}.evaluate"
            continue
        entry[name] = f"{name}__items" if mapped else name
        exit_[name] = f"{name}__results" if mapped else name

    # Upstream of each phase's entry task, and the phases whose outputs it may read.
    upstream: dict[str, list[str]] = {name: [] for name in names}
    readable: dict[str, set[str]] = {}
    route_tasks: list[TaskPlan] = []
    if state_machine:
        preds: dict[str, list[str]] = {name: [] for name in names}
        for name in names:
            phase = cascade.phase(name)
            nexts = successors(cascade, phase)
            following = [n for n in nexts if n != END]
            if len(nexts) > 1:
                route = TaskPlan(
                    task_id=f"{name}__route",
                    kind="route",
                    phase=name,
                    upstream=[exit_[name]],
                    targets={n: entry[n] for n in following},
                    fallthrough=next_in_list(cascade, phase) or END,
                )
                route_tasks.append(route)
                for n in following:
                    upstream[n].append(route.task_id)
            else:
                for n in following:
                    upstream[n].append(exit_[name])
            for n in following:
                preds[n].append(name)
        for name in names:  # ancestors along control edges: the phases that ran before this one
            seen: set[str] = set()
            todo = list(preds[name])
            while todo:
                current = todo.pop()
                if current not in seen:
                    seen.add(current)
                    todo.extend(preds[current])
            readable[name] = seen
    else:
        for name in names:
            upstream[name] = [exit_[n] for n in sorted(needs[name], key=names.index)]
            readable[name] = set(needs[name])

    tasks: list[TaskPlan] = []
    for name in names:
        phase = cascade.phase(name)
        # A phase reading the run's state (``state.x``) pulls every phase that ran before it: the
        # outcomes in XCom carry the state each left (set_state), merged in order.
        wanted = needs[name] | readable[name] if _reads_state(phase) else needs[name]
        pulls = {n: exit_[n] for n in sorted(wanted & readable[name], key=names.index)}
        rule = JOIN_TRIGGER_RULE if len(upstream[name]) > 1 and state_machine else "all_success"
        if phase.map_over is not None:
            source = phase.map_over.split(".", 1)[0]
            tasks.append(
                TaskPlan(
                    task_id=entry[name],
                    kind="items",
                    phase=name,
                    upstream=upstream[name],
                    trigger_rule=rule,
                    pulls={source: exit_[source]} if source in exit_ else {},
                    map_over=phase.map_over,
                )
            )
            tasks.append(
                TaskPlan(
                    task_id=name,
                    kind="mapped",
                    phase=name,
                    upstream=[entry[name]],
                    pulls=pulls,
                    map_over=phase.map_over,
                    expand_from=entry[name],
                    **_phase_args(phase),
                )
            )
            tasks.append(TaskPlan(task_id=exit_[name], kind="collect", phase=name, upstream=[name]))
        elif name in grouped:
            args = _phase_args(phase)
            tasks.append(
                TaskPlan(
                    task_id=entry[name],
                    kind="sounding",
                    phase=name,
                    upstream=upstream[name],
                    trigger_rule=rule,
                    pulls=pulls,
                    group=name,
                    soundings=grouped[name],
                    **args,
                )
            )
            tasks.append(
                TaskPlan(
                    task_id=exit_[name],
                    kind="judge",
                    phase=name,
                    upstream=[entry[name]],
                    pulls=pulls,
                    group=name,
                    soundings=grouped[name],
                    **args,
                )
            )
        else:
            tasks.append(
                TaskPlan(
                    task_id=name,
                    kind="phase",
                    phase=name,
                    upstream=upstream[name],
                    trigger_rule=rule,
                    pulls=pulls,
                    **_phase_args(phase),
                )
            )
        tasks.extend(r for r in route_tasks if r.phase == name)
    ids = [t.task_id for t in tasks]
    clash = sorted({i for i in ids if ids.count(i) > 1})
    if clash:
        raise ValueError(f"task ids clash when rendering cascade {cascade.cascade_id}: {clash}")
    mode: Literal["dataflow", "branching"] = "branching" if state_machine else "dataflow"
    note = f"phases never reached from {cascade.phases[0].name}: {unreachable}" if unreachable else ""
    return DagPlan(dag_id, cascade.cascade_id, mode, tasks, note, unreachable)


def _schedule(cascade: Cascade) -> tuple[Any, dict[str, Any]]:
    """``airflow.schedule``, else the first enabled Windlass cron trigger (in its timezone, with
    its ``inputs`` as the DAG's default params, which become the cascade input)."""
    settings = cascade.airflow
    if settings is not None and settings.schedule is not None:
        return settings.schedule, {}
    trigger = cascade.cron_trigger()
    if trigger is None:
        return None, {}
    if trigger.timezone.upper() == "UTC":
        return trigger.schedule, dict(trigger.inputs or {})
    from airflow_llm_provider.version_compat import AIRFLOW_V_3_0_PLUS

    timetable: Any
    if AIRFLOW_V_3_0_PLUS:  # DAGs take the task SDK's timetable on Airflow 3
        from airflow.sdk import CronTriggerTimetable

        timetable = CronTriggerTimetable(trigger.schedule, timezone=trigger.timezone)
    else:
        from airflow.timetables.trigger import CronTriggerTimetable as CoreCronTriggerTimetable

        timetable = CoreCronTriggerTimetable(trigger.schedule, timezone=trigger.timezone)
    return timetable, dict(trigger.inputs or {})


def _schedule_text(cascade: Cascade) -> str | None:
    if cascade.airflow is not None and cascade.airflow.schedule is not None:
        return cascade.airflow.schedule
    trigger = cascade.cron_trigger()
    if trigger is None:
        return None
    return f"{trigger.schedule} ({trigger.timezone}, from trigger {trigger.name!r})"


def describe_plan(plan: DagPlan, cascade: Cascade) -> str:
    """The plan as text, one task per line (``airflow-llm render``)."""
    lines = [
        f"DAG {plan.dag_id} (cascade {plan.cascade_id}): {plan.mode}, {len(plan.tasks)} tasks",
        f"  schedule: {_schedule_text(cascade)}",
    ]
    if plan.note:
        lines.append(f"  note: {plan.note}")
    for task in plan.tasks:
        details = [task.kind]
        if task.kind in ("phase", "mapped", "sounding", "judge"):
            details.append(cascade.phase(task.phase).kind)  # type: ignore[arg-type]
        line = f"  {task.task_id} [{', '.join(details)}]"
        line += f" <- {', '.join(task.upstream)}" if task.upstream else " <- (start)"
        extras: list[str] = []
        if task.expand_from:
            extras.append(f"mapped over {task.expand_from} (map_over: {task.map_over})")
        if task.kind == "sounding":
            extras.append(f"mapped over {task.soundings} soundings")
        if task.kind == "route":
            extras.append(
                "branch to "
                + ", ".join(f"{p} -> {t}" for p, t in task.targets.items())
                + f"; no route -> {task.fallthrough}"
            )
        if task.trigger_rule != "all_success":
            extras.append(f"trigger_rule={task.trigger_rule}")
        if task.pulls:
            extras.append("reads " + ", ".join(p if p == t else f"{p} ({t})" for p, t in task.pulls.items()))
        if task.pool:
            extras.append(f"pool={task.pool}")
        if task.retries is not None:
            extras.append(f"retries={task.retries}")
        if task.execution_timeout is not None:
            extras.append(f"execution_timeout={task.execution_timeout:g}s")
        lines.append(line + ("; " + "; ".join(extras) if extras else ""))
    return "\n".join(lines)


# -- building (Airflow) -------------------------------------------------------------------------


def _start_date(value: datetime | date | None) -> datetime:
    import pendulum

    value = value or DEFAULT_START_DATE
    if not isinstance(value, datetime):
        value = datetime(value.year, value.month, value.day)
    if value.tzinfo is None:
        return pendulum.instance(value, tz="UTC")
    return pendulum.instance(value)


def build_cascade_dag(
    path: str | Path, config: CascadeDagConfig | None = None, cascade: Cascade | None = None
) -> DAG:
    """The DAG of one cascade file (validated here unless ``cascade`` is given)."""
    from airflow.providers.common.compat.sdk import DAG

    from airflow_llm_provider.operators.cascade_phase import load_cascade_cached, remember_cascade

    config = config or CascadeDagConfig()
    path = str(Path(path).resolve())
    if cascade is None:
        cascade = load_cascade_cached(path)
    else:
        remember_cascade(path, cascade)
    plan = plan_cascade(
        cascade, dag_id_for(cascade, config.dag_id_prefix), soundings_as_tasks=config.soundings_as_tasks
    )
    settings = cascade.airflow
    tags = list(dict.fromkeys([*config.tags, *(settings.tags if settings else []), "cascade"]))
    schedule, trigger_params = _schedule(cascade)
    kwargs: dict[str, Any] = {
        "dag_id": plan.dag_id,
        "start_date": _start_date((settings.start_date if settings else None) or config.start_date),
        "catchup": settings.catchup if settings else False,
        "tags": tags,
        "default_args": {**config.default_args, **(settings.default_args if settings else {})},
        "params": {**trigger_params, **(settings.params if settings else {})},
        "description": cascade.description,
        "doc_md": _dag_doc(cascade, plan, path),
    }
    if settings is not None and settings.max_active_runs is not None:
        kwargs["max_active_runs"] = settings.max_active_runs
    with DAG(schedule=schedule, **kwargs) as dag:
        _build_tasks(plan, cascade, path, config)
    return dag


def _dag_doc(cascade: Cascade, plan: DagPlan, path: str) -> str:
    lines = [f"Cascade `{cascade.cascade_id}` from `{Path(path).name}`, rendered as a {plan.mode} DAG."]
    if cascade.description:
        lines.append("\n" + cascade.description)
    lines.append(
        "\nThe cascade input is the run's `params` overlaid with `dag_run.conf`. Each phase task "
        "returns `{phase, output, route, usage}` as XCom."
    )
    if plan.note:
        lines.append(f"\nNote: {plan.note}.")
    return "\n".join(lines)


def _build_tasks(plan: DagPlan, cascade: Cascade, path: str, config: CascadeDagConfig) -> None:
    from airflow.providers.common.compat.sdk import TaskGroup

    from airflow_llm_provider.operators.cascade_phase import (
        CascadeCollectOperator,
        CascadeItemsOperator,
        CascadePhaseOperator,
        CascadeRouteOperator,
        CascadeSoundingOperator,
        CascadeSoundingsJudgeOperator,
    )

    common: dict[str, Any] = {
        "cascade": path,
        "llm_conn_id": config.llm_conn_id,
        "model": config.model,
        "budget": dict(config.budget) if config.budget else None,
        "cache": config.cache,
        "cache_ttl_seconds": config.cache_ttl_seconds,
        "max_concurrency": config.max_concurrency,
    }
    if plan.mode == "single":
        from airflow_llm_provider.operators.cascade_phase import CascadeWholeRunOperator

        CascadeWholeRunOperator(
            task_id="cascade",
            doc_md=f"The whole cascade `{cascade.cascade_id}` in one task: {plan.note}.",
            **common,
        )
        return
    made: dict[str, Any] = {}
    groups: dict[str, Any] = {}
    for task in plan.tasks:
        if task.group is not None:
            if task.group not in groups:
                groups[task.group] = TaskGroup(
                    group_id=task.group, tooltip=f"Phase {task.group}: its soundings as tasks"
                )
            with groups[task.group]:
                made[task.task_id] = _grouped_task(
                    task, cascade, made, common, CascadeSoundingOperator, CascadeSoundingsJudgeOperator
                )
            continue
        args: dict[str, Any] = {"task_id": task.task_id, "trigger_rule": task.trigger_rule}
        for key in ("pool", "retries"):
            if getattr(task, key) is not None:
                args[key] = getattr(task, key)
        if task.execution_timeout is not None:
            args["execution_timeout"] = timedelta(seconds=task.execution_timeout)
        phase = cascade.phase(task.phase) if task.phase else None
        name = task.phase or ""
        if task.kind == "phase":
            made[task.task_id] = CascadePhaseOperator(
                phase=name, pulls=task.pulls, doc_md=_task_doc(phase), **args, **common
            )
        elif task.kind == "items":
            (source,) = task.pulls.values()
            made[task.task_id] = CascadeItemsOperator(
                source_task_id=source, map_over=task.map_over or "", **args
            )
        elif task.kind == "mapped":
            made[task.task_id] = CascadePhaseOperator.partial(
                phase=name, pulls=task.pulls, mapped=True, doc_md=_task_doc(phase), **args, **common
            ).expand(map_item=made[task.expand_from].output)  # type: ignore[index]
        elif task.kind == "collect":
            (mapped_id,) = task.upstream
            made[task.task_id] = CascadeCollectOperator(phase=name, results=made[mapped_id].output, **args)
        elif task.kind == "route":
            made[task.task_id] = CascadeRouteOperator(
                phase_task_id=task.upstream[0],
                targets=task.targets,
                fallthrough=task.fallthrough or END,
                **args,
            )
    for task in plan.tasks:
        for up in task.upstream:
            made[up] >> made[task.task_id]


def _task_args(task: TaskPlan, task_id: str) -> dict[str, Any]:
    args: dict[str, Any] = {"task_id": task_id, "trigger_rule": task.trigger_rule}
    for key in ("pool", "retries"):
        if getattr(task, key) is not None:
            args[key] = getattr(task, key)
    if task.execution_timeout is not None:
        args["execution_timeout"] = timedelta(seconds=task.execution_timeout)
    return args


def _grouped_task(
    task: TaskPlan,
    cascade: Cascade,
    made: Mapping[str, Any],
    common: Mapping[str, Any],
    attempt_class: Any,
    judge_class: Any,
) -> Any:
    """A task of a sounding group, created inside the group (which prefixes its id)."""
    name = task.phase or ""
    args = _task_args(task, task.task_id.rpartition(".")[2])
    if task.kind == "sounding":
        doc = f"One sounding attempt of phase `{name}` per mapped task (map index = sounding index)."
        return attempt_class.partial(phase=name, pulls=task.pulls, doc_md=doc, **args, **common).expand(
            sounding=list(range(task.soundings or 1))
        )
    (attempt_id,) = task.upstream
    doc = f"The evaluator (or aggregator) of phase `{name}`: the phase's result."
    return judge_class(
        phase=name,
        pulls=task.pulls,
        results=made[attempt_id].output,
        doc_md=doc,
        **args,
        **common,
    )


def _task_doc(phase: Phase | None) -> str | None:
    if phase is None:
        return None
    text = phase.description or f"Phase `{phase.name}` ({phase.kind})."
    if phase.soundings is not None:
        text += "\n\nSoundings run inside this task, concurrently."
    return text


# -- loading a folder ---------------------------------------------------------------------------


def load_cascade_dags(
    folder: str | Path,
    namespace: MutableMapping[str, Any],
    config: CascadeDagConfig | None = None,
) -> dict[str, DAG]:
    """Render every cascade file of ``folder`` as a DAG and put it into ``namespace`` (the calling
    DAG file's ``globals()``), where Airflow finds it.

    ``folder`` is relative to the calling file (``namespace["__file__"]``). Broken files are
    collected; by default they become one DAG import error of the calling file, each issue as
    ``file:line: field: message``, while the valid cascades are still registered.
    """
    from airflow_llm_provider.cascades.loader import CASCADE_SUFFIXES, check_cascade
    from airflow_llm_provider.operators.cascade_tools import configured_tool_path

    config = config or CascadeDagConfig()
    tool_path = configured_tool_path()
    base = Path(str(namespace.get("__file__") or "")).parent if namespace.get("__file__") else Path.cwd()
    directory = Path(folder)
    if not directory.is_absolute():
        directory = base / directory
    problems: list[str] = []
    dags: dict[str, DAG] = {}
    files = sorted(
        p for p in directory.glob(config.pattern) if p.is_file() and p.suffix.lower() in CASCADE_SUFFIXES
    )
    if not directory.is_dir():
        problems.append(f"{directory}: not a directory")
    for path in files:
        try:
            result = check_cascade(path, tool_path=tool_path)
        except Exception as err:  # a bug of ours must not hide the other cascades
            problems.append(f"{path}: <document>: internal error while validating: {err!r}")
            continue
        if result.cascade is None:
            problems.extend(str(issue) for issue in result.issues)
            continue
        if config.select == "airflow" and result.cascade.airflow is None:
            continue
        try:
            dag = build_cascade_dag(path, config, result.cascade)
        except Exception as err:
            problems.append(f"{path}: <document>: cannot render as a DAG: {err}")
            continue
        if dag.dag_id in dags:
            problems.append(f"{path}: airflow.dag_id: DAG id '{dag.dag_id}' is used by another cascade")
            continue
        dags[dag.dag_id] = dag
    message = ""
    if problems:
        message = f"{len(problems)} problem(s) in cascade folder {directory}:\n" + "\n".join(problems)
        if config.on_error == "raise":
            raise CascadeDagImportError(message)
    for dag_id, dag in dags.items():
        namespace[f"cascade_dag__{dag_id}"] = dag
    if message:
        namespace["cascade_dag_import_errors__"] = _import_error_dag(message, dags)
    return dags


def _import_error_dag(message: str, dags: Mapping[str, Any]) -> Any:
    """A placeholder DAG whose validation fails with ``message``: Airflow's DagBag records it as an
    import error of the loader file and still keeps the other DAGs of that file."""
    from airflow.providers.common.compat.sdk import DAG

    class _BrokenCascades(DAG):  # type: ignore[misc, valid-type]
        def validate(self) -> None:  # type: ignore[override]
            raise CascadeDagImportError(message)

    dag_id = "cascade_import_errors"
    while dag_id in dags:
        dag_id += "_"
    return _BrokenCascades(dag_id=dag_id, schedule=None, start_date=_start_date(None))
