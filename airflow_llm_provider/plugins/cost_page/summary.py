"""What the LLM-cost page shows, as one JSON document built from the cost ledger.

Both web adapters (FastAPI on Airflow 3, a Flask-AppBuilder view on Airflow 2) call
:func:`build_summary` with the same filters and return its result unchanged, so the page and any
script reading ``/llm-costs/api/summary`` see the same shape on both lines.

The ledger is read through its grouped sums only (never the Airflow metadata DB). Every sum is
grouped by ``dag_id`` too, so a caller allowed to see only some DAGs gets totals over those DAGs.

Budgets: the page shows usage of whatever budgets :func:`known_budgets` returns. Budget code
registers a source with :func:`register_budget_source` (a callable returning :class:`BudgetSpec`
values); adapters may also pass ``budgets=`` explicitly.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from airflow_llm_provider.costs.ledger import Ledger

log = logging.getLogger(__name__)

MAX_FILLED_DAYS = 400
"""Longest date range whose missing days are filled with zeros (a longer one lists data days only)."""
TOP_TASKS = 10


class InvalidFilter(ValueError):
    """A query parameter the API cannot use; the message says which and why (HTTP 400)."""


class DagNotPermitted(PermissionError):
    """The ``dag_id`` filter names a DAG the caller may not read (HTTP 403)."""


@dataclass(frozen=True)
class Filters:
    """The page's filters: one DAG (or all) and an inclusive UTC day range (``YYYY-MM-DD``)."""

    dag_id: str | None = None
    since: str | None = None
    until: str | None = None


def _parse_day(name: str, value: str | None) -> str | None:
    if value is None or not value.strip():
        return None
    text = value.strip()
    try:
        return dt.date.fromisoformat(text).isoformat()
    except ValueError:
        raise InvalidFilter(f"{name} must be a day as YYYY-MM-DD, got {text!r}") from None


def parse_filters(params: Mapping[str, Any]) -> Filters:
    """``dag_id``, ``since`` and ``until`` from query parameters; empty values do not filter."""
    dag_id = (params.get("dag_id") or "").strip() or None
    since = _parse_day("since", params.get("since"))
    until = _parse_day("until", params.get("until"))
    if since and until and since > until:
        raise InvalidFilter(f"since ({since}) is after until ({until})")
    return Filters(dag_id=dag_id, since=since, until=until)


# -- budgets -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BudgetSpec:
    """A budget the page reports usage of.

    ``period="day"``: spend of the current UTC day in the scope (a DAG, a tag, or, with neither,
    the whole deployment). ``period="run"``: spend of the DAG's most recent run (needs ``dag_id``).
    ``soft_ratio``: the share of the limit at which the budget shows as a warning.
    """

    name: str
    limit_usd: float
    period: Literal["day", "run"] = "day"
    dag_id: str | None = None
    tag: str | None = None
    soft_ratio: float | None = 0.8
    source: str = ""
    """Where the budget was declared (a DAG, a cascade, provider config), shown on the page."""


BudgetSource = Callable[[], Iterable[BudgetSpec]]
_budget_sources: list[BudgetSource] = []


def register_budget_source(source: BudgetSource) -> BudgetSource:
    """Add a callable that lists budgets for the page (usable as a decorator); idempotent."""
    if source not in _budget_sources:
        _budget_sources.append(source)
    return source


@register_budget_source
def budgets_declared_by_tasks() -> list[BudgetSpec]:
    """The shared budgets tasks ran under (``budgets=`` or ``[llm_provider] budgets``), which
    :class:`~airflow_llm_provider.costs.budgets.LedgerAccounting` records in the ledger: the
    api-server cannot read DAG files, the ledger it can. Dollar limits only (the page is in USD)."""
    from airflow_llm_provider.costs.ledger import configured_ledger

    specs = []
    for declared in configured_ledger().declared_budgets():
        if declared.get("max_cost_usd") is None:
            continue
        scope, dag_id, tag = declared.get("scope"), declared.get("dag_id"), declared.get("tag")
        name = {
            "dag_run": f"{dag_id} per run",
            "dag_day": f"{dag_id} per day",
            "tag_day": f"tag {tag} per day",
        }.get(str(scope))
        if name is None:
            continue
        specs.append(
            BudgetSpec(
                name=name,
                limit_usd=float(declared["max_cost_usd"]),
                period="run" if scope == "dag_run" else "day",
                dag_id=dag_id,
                tag=tag,
                soft_ratio=declared.get("warn_at") or None,
                source=f"declared by task {declared.get('declared_by')}",
            )
        )
    return specs


def known_budgets() -> list[BudgetSpec]:
    """Every registered source's budgets; a failing source is logged and skipped, never fatal."""
    found: list[BudgetSpec] = []
    for source in list(_budget_sources):
        try:
            found.extend(source())
        except Exception:
            log.exception("budget source %r failed; the cost page shows the others", source)
    return found


def _budget_usage(
    ledger: Ledger,
    budgets: Iterable[BudgetSpec],
    *,
    today: str,
    dag_filter: str | None,
    visible: Callable[[str], bool],
    sees_everything: bool,
) -> list[dict[str, Any]]:
    from airflow_llm_provider.costs.ledger import Scope

    usage = []
    for budget in budgets:
        if dag_filter is not None and budget.dag_id not in (None, dag_filter):
            continue
        if budget.dag_id is not None and not visible(budget.dag_id):
            continue
        if budget.dag_id is None and not sees_everything:
            continue  # a tag or deployment-wide sum would include DAGs the caller may not read
        window: str
        if budget.period == "run":
            if budget.dag_id is None:
                log.warning("budget %r is per run but names no DAG; skipped", budget.name)
                continue
            newest = ledger.entries(Scope(dag_id=budget.dag_id), limit=1)
            run_id = newest[0]["run_id"] if newest else None
            spent = ledger.spent(Scope(dag_id=budget.dag_id, run_id=run_id)).cost_usd if run_id else 0.0
            window = f"run {run_id}" if run_id else "no run yet"
        else:
            spent = ledger.spent(Scope(dag_id=budget.dag_id, tag=budget.tag, day=today)).cost_usd
            window = today
        limit = float(budget.limit_usd)
        ratio = spent / limit if limit > 0 else (1.0 if spent > 0 else 0.0)
        if ratio >= 1:
            state = "over"
        elif budget.soft_ratio is not None and ratio >= budget.soft_ratio:
            state = "warning"
        else:
            state = "ok"
        usage.append(
            {
                **{k: v for k, v in asdict(budget).items() if k != "limit_usd"},
                "limit_usd": round(limit, 6),
                "spent_usd": round(spent, 6),
                "ratio": round(ratio, 4),
                "window": window,
                "state": state,
            }
        )
    return usage


# -- the summary ---------------------------------------------------------------------------------
def _days_between(first: str, last: str) -> list[str]:
    start, end = dt.date.fromisoformat(first), dt.date.fromisoformat(last)
    if (end - start).days > MAX_FILLED_DAYS:
        return []
    return [(start + dt.timedelta(days=n)).isoformat() for n in range((end - start).days + 1)]


def _money(value: float) -> float:
    return round(value, 6)


def build_summary(
    ledger: Ledger,
    filters: Filters = Filters(),
    *,
    permitted_dags: Callable[[set[str]], set[str]] | None = None,
    budgets: Iterable[BudgetSpec] | None = None,
    today: dt.date | None = None,
    top: int = TOP_TASKS,
) -> dict[str, Any]:
    """The page's data: totals, cost per day per DAG, per DAG, per model, top tasks, cache hits
    and their estimated savings, and budget usage.

    ``permitted_dags`` narrows a set of DAG ids to those the caller may read (the auth manager's
    answer); ``None`` means every DAG. ``budgets`` defaults to :func:`known_budgets`.
    Cache savings are an estimate: each cache hit is priced at the average cost of the paid calls
    of the same DAG, task, phase and model (else of the same model; else zero).
    """
    from airflow_llm_provider.costs.ledger import Scope

    day_today = (today or dt.datetime.now(dt.UTC).date()).isoformat()
    every_dag = {row["dag_id"] for row in ledger.grouped(["dag_id"])}
    allowed = set(every_dag) if permitted_dags is None else set(permitted_dags(set(every_dag)))
    if filters.dag_id is not None and permitted_dags is not None and not permitted_dags({filters.dag_id}):
        raise DagNotPermitted(f"you may not read the costs of DAG {filters.dag_id!r}")

    def visible(dag_id: str) -> bool:
        return dag_id in allowed or (permitted_dags is not None and bool(permitted_dags({dag_id})))

    scope = Scope(dag_id=filters.dag_id)

    def rows(by: list[str]) -> list[dict[str, Any]]:
        grouped = ledger.grouped(["dag_id", *by], scope=scope, since=filters.since, until=filters.until)
        return [r for r in grouped if r["dag_id"] in allowed]

    by_day_dag = rows(["day"])
    by_model_dag = rows(["model"])
    by_task = rows(["task_id"])
    by_phase = rows(["task_id", "phase", "model"])

    totals = {
        "cost_usd": 0.0,
        "input_tokens": 0,
        "output_tokens": 0,
        "requests": 0,
        "calls": 0,
        "cache_hits": 0,
    }
    per_dag: dict[str, dict[str, Any]] = {}
    per_day: dict[str, dict[str, Any]] = {}
    for row in by_day_dag:
        for key in totals:
            totals[key] += row[key]
        dag = per_dag.setdefault(row["dag_id"], {"dag_id": row["dag_id"], **dict.fromkeys(totals, 0)})
        for key in totals:
            dag[key] += row[key]
        day = per_day.setdefault(row["day"], {"day": row["day"], "cost_usd": 0.0, "calls": 0, "by_dag": {}})
        day["cost_usd"] += row["cost_usd"]
        day["calls"] += row["calls"]
        day["by_dag"][row["dag_id"]] = _money(day["by_dag"].get(row["dag_id"], 0.0) + row["cost_usd"])

    models: dict[str, dict[str, Any]] = {}
    for row in by_model_dag:
        model = models.setdefault(row["model"], {"model": row["model"], **dict.fromkeys(totals, 0)})
        for key in totals:
            model[key] += row[key]

    # Cache savings: price each hit like the paid calls it stood in for.
    model_average = {
        name: m["cost_usd"] / (m["calls"] - m["cache_hits"])
        for name, m in models.items()
        if m["calls"] > m["cache_hits"]
    }
    savings_by_model: dict[str, float] = defaultdict(float)
    for row in by_phase:
        if not row["cache_hits"]:
            continue
        paid = row["calls"] - row["cache_hits"]
        average = row["cost_usd"] / paid if paid > 0 else model_average.get(row["model"], 0.0)
        savings_by_model[row["model"]] += row["cache_hits"] * average
    savings = sum(savings_by_model.values())

    if filters.since and filters.until:
        first, last = filters.since, filters.until
    elif per_day:
        first, last = filters.since or min(per_day), filters.until or max(per_day)
    else:
        first = last = ""
    days = _days_between(first, last) if first and last and first <= last else []
    days = days or sorted(per_day)

    dag_order = sorted(per_dag.values(), key=lambda d: (-d["cost_usd"], d["dag_id"]))
    model_order = sorted(models.values(), key=lambda m: (-m["cost_usd"], m["model"]))
    task_order = sorted(by_task, key=lambda t: (-t["cost_usd"], t["dag_id"], t["task_id"]))
    total_cost = totals["cost_usd"]

    def share(cost: float) -> float:
        return round(cost / total_cost, 4) if total_cost > 0 else 0.0

    budget_list = known_budgets() if budgets is None else list(budgets)
    return {
        "filters": asdict(filters),
        "generated_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "today": day_today,
        "currency": "USD",
        "ledger": ledger.where,
        "dags": sorted(allowed),
        "totals": {
            **{k: (_money(v) if k == "cost_usd" else v) for k, v in totals.items()},
            "tokens": totals["input_tokens"] + totals["output_tokens"],
            "cache_savings_usd": _money(savings),
            "dag_count": len(per_dag),
            "day_count": len(per_day),
        },
        "per_day": [
            {
                "day": day,
                "cost_usd": _money(per_day[day]["cost_usd"]) if day in per_day else 0.0,
                "calls": per_day[day]["calls"] if day in per_day else 0,
                "by_dag": per_day[day]["by_dag"] if day in per_day else {},
            }
            for day in days
        ],
        "per_dag": [
            {**d, "cost_usd": _money(d["cost_usd"]), "share": share(d["cost_usd"])} for d in dag_order
        ],
        "per_model": [
            {**m, "cost_usd": _money(m["cost_usd"]), "share": share(m["cost_usd"])} for m in model_order
        ],
        "top_tasks": [
            {
                "dag_id": t["dag_id"],
                "task_id": t["task_id"],
                "cost_usd": t["cost_usd"],
                "input_tokens": t["input_tokens"],
                "output_tokens": t["output_tokens"],
                "requests": t["requests"],
                "calls": t["calls"],
                "cache_hits": t["cache_hits"],
                "share": share(t["cost_usd"]),
            }
            for t in task_order[: max(0, top)]
        ],
        "cache": {
            "hits": totals["cache_hits"],
            "calls": totals["calls"],
            "hit_rate": round(totals["cache_hits"] / totals["calls"], 4) if totals["calls"] else 0.0,
            "savings_usd": _money(savings),
            "savings_by_model": [
                {"model": name, "savings_usd": _money(value)}
                for name, value in sorted(savings_by_model.items(), key=lambda kv: (-kv[1], kv[0]))
            ],
        },
        "budgets": _budget_usage(
            ledger,
            budget_list,
            today=day_today,
            dag_filter=filters.dag_id,
            visible=visible,
            sees_everything=allowed >= every_dag,
        ),
    }
