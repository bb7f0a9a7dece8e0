"""Shared budgets and ledger accounting (the engine's CallObserver), on a real SQLite ledger."""

from __future__ import annotations

import datetime as dt

import pytest

from airflow_llm_provider.cascades.usage import CallRecord
from airflow_llm_provider.costs.budgets import (
    LedgerAccounting,
    SharedBudget,
    SharedBudgetExceeded,
    TaskIdentity,
    parse_budgets,
)
from airflow_llm_provider.costs.ledger import Scope, SQLiteLedger

NOW = dt.datetime(2026, 4, 1, 12, tzinfo=dt.UTC)


def call(cost: float, tokens: tuple[int, int] = (100, 10)) -> CallRecord:
    return CallRecord("draft", 1, "openai-chat:gpt-4o-mini", 1, tokens[0], tokens[1], cost)


@pytest.fixture
def ledger(tmp_path) -> SQLiteLedger:
    return SQLiteLedger(tmp_path / "ledger.db")


def accounting(ledger, budgets, alerts=None, **task) -> LedgerAccounting:
    identity = TaskIdentity(**{"dag_id": "nightly", "run_id": "r1", "task_id": "t", **task})
    sink = alerts.append if alerts is not None else None
    return LedgerAccounting(ledger, identity, parse_budgets(budgets), alert=sink, now=lambda: NOW)


def test_every_call_is_written_with_its_task(ledger):
    acc = accounting(ledger, [], map_index=3, try_number=2, tags=("team-a",))
    acc.after_call("summary", call(0.01))
    (row,) = ledger.entries()
    assert (row["dag_id"], row["run_id"], row["task_id"], row["map_index"], row["try_number"]) == (
        "nightly",
        "r1",
        "t",
        3,
        2,
    )
    assert (row["cascade_id"], row["phase"], row["cost_usd"], row["tags"], row["day"]) == (
        "summary",
        "draft",
        0.01,
        ",team-a,",
        "2026-04-01",
    )


def test_threshold_alert_then_breach_stops_the_call(ledger):
    alerts: list[str] = []
    acc = accounting(ledger, [{"scope": "dag_run", "max_cost_usd": 0.3, "warn_at": 0.5}], alerts)
    acc.before_call("draft", "m")
    acc.after_call("c", call(0.1))
    assert alerts == []
    acc.before_call("draft", "m")
    acc.after_call("c", call(0.1))  # 0.2 >= 0.5 * 0.3: the soft threshold
    assert alerts == [":warning: LLM budget for DAG nightly run r1 at 67%: $0.2000 of $0.3000."]
    acc.before_call("draft", "m")
    acc.after_call("c", call(0.1))  # 0.3: reached
    with pytest.raises(SharedBudgetExceeded, match=r"DAG nightly run r1 is spent .*\$0.3000 of \$0.3000"):
        acc.before_call("title", "m")
    assert len(alerts) == 2
    assert alerts[1].startswith(":no_entry: LLM budget for DAG nightly run r1 reached")


def test_alerts_are_sent_once_per_scope_across_tasks(ledger):
    alerts: list[str] = []
    budget = [{"scope": "dag_day", "max_tokens": 1000, "warn_at": 0.5}]
    first = accounting(ledger, budget, alerts, task_id="a")
    second = accounting(ledger, budget, alerts, task_id="b", run_id="r2")
    first.after_call("c", call(0.0, (500, 100)))
    second.after_call("c", call(0.0, (100, 10)))
    assert len(alerts) == 1
    assert "DAG nightly on 2026-04-01 at 60%: 600 tokens of 1,000 tokens" in alerts[0]


def test_daily_and_tag_budgets_count_other_dags_and_runs(ledger):
    other = accounting(ledger, [], dag_id="other", tags=("team-a",))
    other.after_call("c", call(0.5))
    mine = accounting(ledger, [{"scope": "tag_day", "tag": "team-a", "max_cost_usd": 0.5}], tags=("team-a",))
    with pytest.raises(SharedBudgetExceeded, match="tag team-a on 2026-04-01"):
        mine.before_call("draft", "m")
    # A DAG without the tag is not bound by that team's budget.
    untagged = accounting(ledger, [{"scope": "tag_day", "tag": "team-a", "max_cost_usd": 0.5}])
    untagged.before_call("draft", "m")
    assert ledger.spent(Scope(tag="team-a", day="2026-04-01")).cost_usd == pytest.approx(0.5)


@pytest.mark.parametrize(
    ("budget", "message"),
    [
        (
            {"scope": "week", "max_cost_usd": 1},
            r"budgets\[0\].scope: must be one of dag_run, dag_day, tag_day",
        ),
        ({"scope": "dag_run"}, r"set max_cost_usd or max_tokens"),
        ({"scope": "dag_run", "max_cost_usd": -1}, r"budgets\[0\].max_cost_usd: must be a number > 0"),
        ({"scope": "tag_day", "max_cost_usd": 1}, r"budgets\[0\].tag: a tag_day budget names"),
        ({"scope": "dag_run", "max_tokens": 5, "warn_at": 2}, r"warn_at: must be a fraction"),
        ({"scope": "dag_run", "max_tokens": 5, "limit": 2}, r"unknown budget field\(s\) \['limit'\]"),
    ],
)
def test_budget_errors_name_the_field(budget, message):
    with pytest.raises(ValueError, match=message):
        parse_budgets([budget])


def test_parse_keeps_values():
    assert parse_budgets([{"scope": "dag_day", "max_cost_usd": 5, "warn_at": 0}]) == [
        SharedBudget(scope="dag_day", max_cost_usd=5.0, warn_at=0.0)
    ]


def test_budgets_are_declared_in_the_ledger_for_the_cost_page(ledger, monkeypatch):
    acc = accounting(
        ledger,
        [{"scope": "dag_day", "max_cost_usd": 5}, {"scope": "tag_day", "tag": "team-a", "max_cost_usd": 9}],
        tags=("team-a",),
    )
    acc.before_call("draft", "m")
    acc.before_call("title", "m")  # declared once per task, not per call
    declared = ledger.declared_budgets()
    assert [(d["scope"], d["dag_id"], d["tag"], d["max_cost_usd"]) for d in declared] == [
        ("dag_day", "nightly", None, 5.0),
        ("tag_day", None, "team-a", 9.0),
    ]

    from airflow_llm_provider.plugins.cost_page import summary

    monkeypatch.setattr("airflow_llm_provider.costs.ledger.configured_ledger", lambda: ledger)
    specs = summary.budgets_declared_by_tasks()
    assert [(s.name, s.period, s.dag_id, s.tag, s.limit_usd) for s in specs] == [
        ("nightly per day", "day", "nightly", None, 5.0),
        ("tag team-a per day", "day", None, "team-a", 9.0),
    ]
