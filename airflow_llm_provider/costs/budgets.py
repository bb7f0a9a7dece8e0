"""Budgets above a task, and the accounting that writes every LLM call to the cost ledger.

A cascade's own ``budget:`` caps one run. The budgets here are shared: per DAG run, per DAG per
(UTC) day, per tag per day, so several tasks, mapped or concurrent, draw from one amount. Before
each call the ledger is summed for every scope; a scope at or over its limit refuses the call. A
scope can therefore overshoot by at most the calls already in flight when it filled, one per
concurrent task (``max_concurrency=1``) at most. At ``warn_at`` of a limit an alert goes out once
per scope (the first task to see it claims it in the ledger), and once more when it is reached.

Pure Python plus the ledger; the Airflow adapter (``operators/cascade.py``) builds it per task.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Literal

from airflow_llm_provider.cascades.budget import BudgetExceeded
from airflow_llm_provider.cascades.usage import CallRecord, SharedRemainder
from airflow_llm_provider.costs.ledger import Ledger, LedgerEntry, LedgerUnavailable, Scope, Spend

if TYPE_CHECKING:
    from airflow_llm_provider.cascades.spec import Cascade

log = logging.getLogger(__name__)

BudgetScope = Literal["dag_run", "dag_day", "tag_day"]
SCOPES: tuple[str, ...] = ("dag_run", "dag_day", "tag_day")


@dataclass(frozen=True)
class SharedBudget:
    """A limit on what every call in a scope may spend together."""

    scope: BudgetScope
    max_cost_usd: float | None = None
    max_tokens: int | None = None
    warn_at: float = 0.8
    """Fraction of a limit at which a (soft) alert goes out; 0 disables it."""
    tag: str | None = None
    """The tag (team) a ``tag_day`` budget counts; the task's DAG must carry it."""

    @classmethod
    def parse(cls, value: Mapping[str, Any], where: str = "budgets") -> SharedBudget:
        """One budget from its dict form, with an error naming the field that is wrong."""
        if not isinstance(value, Mapping):
            raise ValueError(
                f"{where}: each budget is a mapping like {{'scope': 'dag_day', 'max_cost_usd': 5}}"
            )
        unknown = sorted(set(value) - {"scope", "max_cost_usd", "max_tokens", "warn_at", "tag"})
        if unknown:
            raise ValueError(f"{where}: unknown budget field(s) {unknown}")
        scope = value.get("scope")
        if scope not in SCOPES:
            raise ValueError(f"{where}.scope: must be one of {', '.join(SCOPES)}, got {scope!r}")
        if value.get("max_cost_usd") is None and value.get("max_tokens") is None:
            raise ValueError(f"{where}: set max_cost_usd or max_tokens (or both)")
        for name in ("max_cost_usd", "max_tokens"):
            limit = value.get(name)
            if limit is not None and (
                isinstance(limit, bool)
                or not isinstance(limit, int | float)
                or not math.isfinite(limit)
                or limit <= 0
            ):
                raise ValueError(f"{where}.{name}: must be a number > 0, got {limit!r}")
        warn_at = value.get("warn_at", 0.8)
        if isinstance(warn_at, bool) or not isinstance(warn_at, int | float) or not 0 <= warn_at < 1:
            raise ValueError(f"{where}.warn_at: must be a fraction in [0, 1), got {warn_at!r}")
        tag = value.get("tag")
        if scope == "tag_day" and not (isinstance(tag, str) and tag.strip()):
            raise ValueError(f"{where}.tag: a tag_day budget names the tag (team) it counts")
        return cls(
            scope=scope,
            max_cost_usd=float(value["max_cost_usd"]) if value.get("max_cost_usd") is not None else None,
            max_tokens=int(value["max_tokens"]) if value.get("max_tokens") is not None else None,
            warn_at=float(warn_at),
            tag=tag.strip() if isinstance(tag, str) else None,
        )


def parse_budgets(
    values: Iterable[Mapping[str, Any] | SharedBudget] | None, where: str = "budgets"
) -> list[SharedBudget]:
    return [
        v if isinstance(v, SharedBudget) else SharedBudget.parse(v, f"{where}[{i}]")
        for i, v in enumerate(values or [])
    ]


class SharedBudgetExceeded(BudgetExceeded):
    """A shared budget (per DAG run, DAG day or tag day) is spent: the call was not made."""

    def __init__(self, *, what: str, limit: str, maximum: float, spent: float, phase: str) -> None:
        RuntimeError.__init__(
            self,
            f"LLM budget for {what} is spent ({limit}: {_shown(limit, spent)} of {_shown(limit, maximum)}); "
            f"phase {phase!r} was not called. A budget stop is not retried: raise the budget in the "
            "DAG or [llm_provider] config, or wait for the next day for a daily budget.",
        )
        self.limit, self.maximum, self.spent, self.estimate, self.phase = limit, maximum, spent, 0.0, phase
        self.scope: str | None = what


def _shown(limit: str, value: float) -> str:
    return f"${value:,.4f}" if limit == "max_cost_usd" else f"{int(value):,} tokens"


@dataclass(frozen=True)
class TaskIdentity:
    """Where a call happens, as the ledger records it."""

    dag_id: str
    run_id: str
    task_id: str
    map_index: int = -1
    try_number: int = 1
    tags: tuple[str, ...] = ()


class LedgerAccounting:
    """The engine's :class:`~airflow_llm_provider.cascades.usage.CallObserver` for one task: checks
    the shared budgets before each call and writes each call to the ledger after it.

    :param alert: called with a message for threshold and breach alerts (e.g. Slack); its failures
        are the caller's to swallow (``post_to_slack`` never raises).
    """

    def __init__(
        self,
        ledger: Ledger,
        task: TaskIdentity,
        budgets: Sequence[SharedBudget] = (),
        *,
        alert: Callable[[str], Any] | None = None,
        now: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
    ) -> None:
        self.ledger = ledger
        self.task = task
        self.budgets = list(budgets)
        self.alert = alert
        self.now = now
        self._ledger_warned = False
        self._declared = False
        self._near = False
        # What each budget had left at its latest ledger sum: the engine keeps every request's
        # output cap within it (budget index -> (tokens left, dollars left, scope)).
        self._left: dict[int, tuple[float | None, float | None, str]] = {}
        missing = [b.tag for b in self.budgets if b.scope == "tag_day" and b.tag not in task.tags]
        if missing:
            log.info("tag_day budgets for %s do not apply: the DAG has no such tag", missing)
        self.budgets = [b for b in self.budgets if b.scope != "tag_day" or b.tag in task.tags]

    # -- scopes --------------------------------------------------------------------------------
    def _scope(self, budget: SharedBudget) -> tuple[Scope, str, str]:
        """(ledger scope, human description, alert key stem) of a budget right now."""
        day = self.now().date().isoformat()
        if budget.scope == "dag_run":
            return (
                Scope(dag_id=self.task.dag_id, run_id=self.task.run_id),
                f"DAG {self.task.dag_id} run {self.task.run_id}",
                f"dag_run:{self.task.dag_id}:{self.task.run_id}",
            )
        if budget.scope == "dag_day":
            return (
                Scope(dag_id=self.task.dag_id, day=day),
                f"DAG {self.task.dag_id} on {day}",
                f"dag_day:{self.task.dag_id}:{day}",
            )
        return Scope(tag=budget.tag, day=day), f"tag {budget.tag} on {day}", f"tag_day:{budget.tag}:{day}"

    @staticmethod
    def _limits(budget: SharedBudget, spend: Spend) -> Iterable[tuple[str, float, float]]:
        if budget.max_cost_usd is not None:
            yield "max_cost_usd", budget.max_cost_usd, spend.cost_usd
        if budget.max_tokens is not None:
            yield "max_tokens", float(budget.max_tokens), float(spend.tokens)

    # -- CallObserver ----------------------------------------------------------------------------
    def _declare(self) -> None:
        """Record the budgets this task runs under, once, for the cost page."""
        self._declared = True
        for budget in self.budgets:
            dag_id = None if budget.scope == "tag_day" else self.task.dag_id
            key = f"{budget.scope}:{dag_id or ''}:{budget.tag or ''}"
            declaration = {**asdict(budget), "dag_id": dag_id, "declared_by": self.task.task_id}
            try:
                self.ledger.declare_budget(key, declaration)
            except LedgerUnavailable as err:
                log.warning("budget declaration not recorded for the cost page: %s", err)

    def before_call(self, phase: str, model: str) -> None:
        if not self._declared:
            self._declare()
        for index, budget in enumerate(self.budgets):
            scope, what, key = self._scope(budget)
            try:
                spend = self.ledger.spent(scope)
            except LedgerUnavailable as err:
                # A budget that cannot be checked must not be silently ignored.
                raise SharedBudgetExceeded(
                    what=f"{what} (unknown: {err})", limit="max_cost_usd", maximum=0, spent=0, phase=phase
                ) from err
            self._remember(index, budget, spend, what)
            for limit, maximum, spent in self._limits(budget, spend):
                if spent >= maximum:
                    self._send_once(f"breach:{key}:{limit}", what, spent, maximum, limit, breached=True)
                    raise SharedBudgetExceeded(
                        what=what, limit=limit, maximum=maximum, spent=spent, phase=phase
                    )

    def after_call(self, cascade_id: str, record: CallRecord) -> None:
        entry = LedgerEntry(
            dag_id=self.task.dag_id,
            run_id=self.task.run_id,
            task_id=self.task.task_id,
            map_index=self.task.map_index,
            try_number=self.task.try_number,
            cascade_id=cascade_id,
            phase=record.phase,
            model=record.model,
            attempt=record.attempt,
            sounding=record.sounding,
            requests=record.requests,
            input_tokens=record.input_tokens,
            output_tokens=record.output_tokens,
            cost_usd=record.cost_usd,
            cache_hit=record.cache_hit,
            duration_s=record.duration_s,
            tags=self.task.tags,
            recorded_at=self.now(),
        )
        try:
            self.ledger.record(entry)
        except LedgerUnavailable as err:
            if self.budgets:
                raise  # spending that cannot be counted would let a shared budget overrun unseen
            if not self._ledger_warned:
                log.warning("LLM calls are not being recorded in the cost ledger: %s", err)
                self._ledger_warned = True
            return
        for index, budget in enumerate(self.budgets):
            scope, what, key = self._scope(budget)
            spend = self.ledger.spent(scope)
            self._remember(index, budget, spend, what)
            for limit, maximum, spent in self._limits(budget, spend):
                self._note(budget, spent, maximum)
                if not budget.warn_at:
                    continue
                if budget.warn_at * maximum <= spent < maximum:
                    self._send_once(f"warn:{key}:{limit}", what, spent, maximum, limit, breached=False)
                elif spent >= maximum:
                    self._send_once(f"breach:{key}:{limit}", what, spent, maximum, limit, breached=True)

    def near_limit(self) -> bool:
        return self._near

    def remaining(self) -> SharedRemainder | None:
        """The least any budget had left at its latest ledger sum, in tokens and in dollars. Calls
        of other tasks in flight since that sum are not in it (the documented cross-task bound)."""
        tokens = [(left, what) for left, _, what in self._left.values() if left is not None]
        costs = [(left, what) for _, left, what in self._left.values() if left is not None]
        if not tokens and not costs:
            return None
        least_tokens = min(tokens, key=lambda item: item[0]) if tokens else None
        least_cost = min(costs, key=lambda item: item[0]) if costs else None
        scopes = dict.fromkeys(item[1] for item in (least_tokens, least_cost) if item is not None)
        return SharedRemainder(
            tokens=int(least_tokens[0]) if least_tokens else None,
            cost_usd=least_cost[0] if least_cost else None,
            scope=" / ".join(scopes),
        )

    def _remember(self, index: int, budget: SharedBudget, spend: Spend, what: str) -> None:
        self._left[index] = (
            budget.max_tokens - spend.tokens if budget.max_tokens is not None else None,
            budget.max_cost_usd - spend.cost_usd if budget.max_cost_usd is not None else None,
            what,
        )

    def _note(self, budget: SharedBudget, spent: float, maximum: float) -> None:
        # Past half of a limit (or its warning threshold, if lower) calls go one at a time.
        if spent >= min(0.5, budget.warn_at or 0.5) * maximum:
            self._near = True

    def _send_once(
        self, key: str, what: str, spent: float, maximum: float, limit: str, *, breached: bool
    ) -> None:
        from airflow_llm_provider.notifications.slack import budget_text

        text = budget_text(
            what,
            spent=spent,
            limit=maximum,
            breached=breached,
            unit="usd" if limit == "max_cost_usd" else "tokens",
        )
        log.warning("%s", text)
        if self.alert is None:
            return
        try:
            first = self.ledger.claim_alert(key)
        except LedgerUnavailable as err:
            log.warning("budget alert not deduplicated (%s); sending it anyway", err)
            first = True
        if first:
            self.alert(text)


def configured_accounting(
    task: TaskIdentity,
    *,
    budgets: Iterable[Mapping[str, Any] | SharedBudget] | None = None,
    cascade_budgets: Iterable[Mapping[str, Any]] = (),
    alert_slack_conn_id: str | None = None,
    alert_slack_channel: str | None = None,
) -> LedgerAccounting | None:
    """The cost ledger and shared budgets a run draws from, as the deployment configures them:
    ``budgets`` (a task's ``budgets=``), the cascade file's ``budgets:`` and ``[llm_provider]
    budgets``, the ledger of ``[llm_provider] ledger_conn_id`` / ``ledger_path``, and budget alerts
    to ``alert_slack_conn_id`` (default: the config's). ``None`` when the ledger is off and no
    budget is declared. Used by the operators and by ``airflow-llm run`` alike; it reads the
    Airflow config (and the ledger's connection), never the Airflow metadata DB.

    :raises ValueError: a budget is invalid (the message names which one and its field).
    """
    import json

    from airflow.providers.common.compat.sdk import conf

    from airflow_llm_provider.costs.ledger import configured_ledger

    configured = (conf.get("llm_provider", "budgets", fallback="") or "").strip()
    try:
        declared = (
            parse_budgets(budgets, "budgets")
            + parse_budgets(cascade_budgets, "cascade budgets")
            + parse_budgets(json.loads(configured) if configured else [], "[llm_provider] budgets")
        )
    except TypeError as err:
        raise ValueError(str(err)) from None
    if not declared and not conf.getboolean("llm_provider", "ledger_enabled", fallback=True):
        return None
    slack_conn_id = alert_slack_conn_id or conf.get("llm_provider", "alert_slack_conn_id", fallback="")
    channel = alert_slack_channel or conf.get("llm_provider", "alert_slack_channel", fallback="")
    alert = None
    if slack_conn_id:
        from airflow_llm_provider.notifications.slack import post_to_slack

        def alert(text: str) -> None:
            post_to_slack(slack_conn_id, text, channel=channel or None)

    return LedgerAccounting(configured_ledger(), task, declared, alert=alert)


def command_line_identity(cascade: Cascade, *, now: dt.datetime | None = None) -> TaskIdentity:
    """Who a run of ``airflow-llm run`` is in the ledger: the DAG the cascade renders to (so it
    draws from that DAG's ``dag_day`` budget), a run of its own, and the tags that DAG carries (so
    ``tag_day`` budgets of those teams count it)."""
    from airflow_llm_provider.cascade_dags import dag_id_for

    started = (now or dt.datetime.now(dt.UTC)).astimezone(dt.UTC)
    tags = [*(cascade.airflow.tags if cascade.airflow is not None else []), "cascade"]
    return TaskIdentity(
        dag_id=dag_id_for(cascade),
        run_id=f"cli__{started.isoformat()}",
        task_id="airflow-llm-run",
        tags=tuple(sorted(dict.fromkeys(tags))),
    )
