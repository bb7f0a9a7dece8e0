"""The LLM-cost page without a server: the summary builder against a SQLite ledger with known rows
(every number asserted), the plugin's registration on this Airflow line, and, on Airflow 3, the
FastAPI app in process (authentication, filters, error answers)."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
from typing import Any

import pytest

from airflow_llm_provider.costs.ledger import LedgerEntry, SQLiteLedger
from airflow_llm_provider.plugins.cost_page import summary as summary_module
from airflow_llm_provider.plugins.cost_page.page import page_html
from airflow_llm_provider.plugins.cost_page.summary import (
    BudgetSpec,
    DagNotPermitted,
    Filters,
    InvalidFilter,
    build_summary,
    known_budgets,
    parse_filters,
    register_budget_source,
)
from airflow_llm_provider.version_compat import AIRFLOW_V_3_0_PLUS

GPT = "openai-chat:gpt-4o-mini"
HAIKU = "anthropic:claude-haiku"


def at(day: int, hour: int = 10) -> dt.datetime:
    return dt.datetime(2026, 3, day, hour, tzinfo=dt.UTC)


def entry(**overrides: Any) -> LedgerEntry:
    values: dict[str, Any] = dict(
        dag_id="daily",
        run_id="r1",
        task_id="summarize",
        map_index=-1,
        try_number=1,
        cascade_id="c",
        phase="p1",
        model=GPT,
        input_tokens=1000,
        output_tokens=200,
        cost_usd=0.10,
        recorded_at=at(1),
    )
    values.update(overrides)
    return LedgerEntry(**values)


def hit(**overrides) -> LedgerEntry:
    return entry(cache_hit=True, requests=0, input_tokens=0, output_tokens=0, cost_usd=0.0, **overrides)


ROWS = [
    entry(),
    hit(),
    entry(task_id="classify", phase="p2", model=HAIKU, input_tokens=500, output_tokens=100, cost_usd=0.30),
    entry(run_id="r2", input_tokens=2000, output_tokens=400, cost_usd=0.20, recorded_at=at(2)),
    entry(
        dag_id="weekly",
        run_id="w1",
        task_id="report",
        phase="p",
        model=HAIKU,
        input_tokens=5000,
        output_tokens=1000,
        cost_usd=1.00,
        recorded_at=at(2, 12),
        tags=("team-a",),
    ),
    entry(
        dag_id="weekly",
        run_id="w2",
        task_id="report",
        phase="p",
        model=HAIKU,
        input_tokens=2500,
        output_tokens=500,
        cost_usd=0.50,
        recorded_at=at(4),
        tags=("team-a",),
    ),
    hit(dag_id="weekly", run_id="w2", task_id="report", phase="p", model=HAIKU, recorded_at=at(4, 11)),
]


@pytest.fixture
def ledger(tmp_path):
    ledger = SQLiteLedger(tmp_path / "ledger.db")
    ledger.record(ROWS)
    return ledger


def costs(rows, key):
    return {row[key]: row["cost_usd"] for row in rows}


def test_summary_of_everything(ledger):
    s = build_summary(ledger, budgets=[])
    assert s["totals"] == {
        "cost_usd": 2.1,
        "input_tokens": 11000,
        "output_tokens": 2200,
        "requests": 5,
        "calls": 7,
        "cache_hits": 2,
        "tokens": 13200,
        "cache_savings_usd": 0.9,
        "dag_count": 2,
        "day_count": 3,
    }
    # Every day of the range, the one without calls too.
    assert [(d["day"], d["cost_usd"], d["by_dag"]) for d in s["per_day"]] == [
        ("2026-03-01", 0.4, {"daily": 0.4}),
        ("2026-03-02", 1.2, {"daily": 0.2, "weekly": 1.0}),
        ("2026-03-03", 0.0, {}),
        ("2026-03-04", 0.5, {"weekly": 0.5}),
    ]
    assert [(d["dag_id"], round(d["cost_usd"], 6), d["calls"], d["share"]) for d in s["per_dag"]] == [
        ("weekly", 1.5, 3, 0.7143),
        ("daily", 0.6, 4, 0.2857),
    ]
    assert [(m["model"], m["cost_usd"], m["calls"], m["cache_hits"], m["share"]) for m in s["per_model"]] == [
        (HAIKU, 1.8, 4, 1, 0.8571),
        (GPT, 0.3, 3, 1, 0.1429),
    ]
    assert [(t["dag_id"], t["task_id"], t["cost_usd"], t["calls"]) for t in s["top_tasks"]] == [
        ("weekly", "report", 1.5, 3),
        ("daily", "classify", 0.3, 1),
        ("daily", "summarize", 0.3, 3),
    ]
    # Each hit priced like the paid calls of its task/phase/model: 0.30/2 and 1.50/2.
    assert s["cache"] == {
        "hits": 2,
        "calls": 7,
        "hit_rate": 0.2857,
        "savings_usd": 0.9,
        "savings_by_model": [{"model": HAIKU, "savings_usd": 0.75}, {"model": GPT, "savings_usd": 0.15}],
    }
    assert s["dags"] == ["daily", "weekly"]
    assert s["filters"] == {"dag_id": None, "since": None, "until": None}
    assert s["ledger"] == f"sqlite:///{ledger.path}"
    json.dumps(s)  # the API returns it as is


def test_filters_change_the_numbers(ledger):
    daily = build_summary(ledger, Filters(dag_id="daily"), budgets=[])
    assert (daily["totals"]["cost_usd"], daily["totals"]["calls"], daily["totals"]["cache_savings_usd"]) == (
        0.6,
        4,
        0.15,
    )
    assert [d["day"] for d in daily["per_day"]] == ["2026-03-01", "2026-03-02"]
    assert costs(daily["per_model"], "model") == {GPT: 0.3, HAIKU: 0.3}
    assert daily["dags"] == ["daily", "weekly"]  # the DAG menu still offers every DAG

    window = build_summary(ledger, Filters(since="2026-03-02", until="2026-03-03"), budgets=[])
    assert window["totals"]["cost_usd"] == 1.2
    assert [(d["day"], d["cost_usd"]) for d in window["per_day"]] == [
        ("2026-03-02", 1.2),
        ("2026-03-03", 0.0),
    ]
    assert window["cache"]["savings_usd"] == 0  # no hit in the window

    last = build_summary(ledger, Filters(since="2026-03-04"), budgets=[])
    assert (last["totals"]["cost_usd"], last["cache"]["hits"], last["cache"]["savings_usd"]) == (0.5, 1, 0.5)

    nothing = build_summary(ledger, Filters(dag_id="unknown"), budgets=[])
    assert nothing["totals"]["cost_usd"] == 0
    assert nothing["per_day"] == nothing["top_tasks"] == nothing["per_model"] == []


def test_top_tasks_limit_and_empty_ledger(ledger, tmp_path):
    assert len(build_summary(ledger, top=1, budgets=[])["top_tasks"]) == 1
    empty = build_summary(SQLiteLedger(tmp_path / "empty.db"), budgets=[])
    assert empty["totals"]["cost_usd"] == 0 and empty["per_day"] == [] and empty["dags"] == []
    assert empty["cache"]["hit_rate"] == 0


def test_savings_fall_back_to_the_model_average(tmp_path):
    ledger = SQLiteLedger(tmp_path / "l.db")
    # A phase answered only from the cache: priced like the model's paid calls elsewhere.
    ledger.record([entry(cost_usd=0.4), entry(task_id="other", cost_usd=0.2), hit(task_id="cached-only")])
    assert build_summary(ledger, budgets=[])["cache"]["savings_usd"] == pytest.approx(0.3)


def test_only_permitted_dags_are_summed(ledger):
    only_daily = build_summary(ledger, permitted_dags=lambda ids: ids & {"daily"}, budgets=[])
    assert only_daily["dags"] == ["daily"]
    assert only_daily["totals"]["cost_usd"] == 0.6
    assert [t["dag_id"] for t in only_daily["top_tasks"]] == ["daily", "daily"]
    assert costs(only_daily["per_model"], "model") == {GPT: 0.3, HAIKU: 0.3}
    with pytest.raises(DagNotPermitted, match="weekly"):
        build_summary(ledger, Filters(dag_id="weekly"), permitted_dags=lambda ids: ids & {"daily"})


BUDGETS = [
    BudgetSpec(name="weekly per day", limit_usd=0.6, dag_id="weekly", source="dag weekly"),
    BudgetSpec(name="team-a per day", limit_usd=0.4, tag="team-a", soft_ratio=None),
    BudgetSpec(name="daily per run", limit_usd=1.0, period="run", dag_id="daily"),
]


def test_budget_usage(ledger):
    s = build_summary(ledger, budgets=BUDGETS, today=dt.date(2026, 3, 4))
    assert [
        (b["name"], b["spent_usd"], b["limit_usd"], b["ratio"], b["state"], b["window"]) for b in s["budgets"]
    ] == [
        ("weekly per day", 0.5, 0.6, 0.8333, "warning", "2026-03-04"),
        ("team-a per day", 0.5, 0.4, 1.25, "over", "2026-03-04"),
        ("daily per run", 0.2, 1.0, 0.2, "ok", "run r2"),
    ]
    assert s["budgets"][0]["source"] == "dag weekly"
    # A DAG filter keeps that DAG's budgets and the ones above DAGs.
    names = [b["name"] for b in build_summary(ledger, Filters(dag_id="daily"), budgets=BUDGETS)["budgets"]]
    assert names == ["team-a per day", "daily per run"]
    # Someone who may read only "daily" sees neither weekly's budget nor sums that include weekly.
    limited = build_summary(ledger, budgets=BUDGETS, permitted_dags=lambda ids: ids & {"daily"})
    assert [b["name"] for b in limited["budgets"]] == ["daily per run"]


def test_budget_sources_are_the_hook(ledger, monkeypatch):
    monkeypatch.setattr(summary_module, "_budget_sources", [])
    assert known_budgets() == []

    @register_budget_source
    def declared():
        return [BUDGETS[0]]

    def broken():
        raise RuntimeError("config unreadable")

    register_budget_source(broken)
    register_budget_source(declared)  # registering twice is harmless
    assert known_budgets() == [BUDGETS[0]]
    s = build_summary(ledger, today=dt.date(2026, 3, 4))
    assert [b["name"] for b in s["budgets"]] == ["weekly per day"]


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({}, Filters()),
        ({"dag_id": " daily ", "since": "2026-03-01", "until": ""}, Filters("daily", "2026-03-01", None)),
        ({"dag_id": "", "until": "2026-03-09"}, Filters(None, None, "2026-03-09")),
    ],
)
def test_parse_filters(params, expected):
    assert parse_filters(params) == expected


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"since": "yesterday"}, "since must be a day"),
        ({"until": "2026-13-01"}, "until must be a day"),
        ({"since": "2026-03-05", "until": "2026-03-01"}, "is after until"),
    ],
)
def test_parse_filters_refuses(params, message):
    with pytest.raises(InvalidFilter, match=message):
        parse_filters(params)


def test_page_is_self_contained():
    html = page_html()
    assert "/*__CSS__*/" not in html and "/*__JS__*/" not in html
    assert "api/summary" in html and "<svg" not in html  # charts are drawn by the script
    for external in ('src="http', 'href="http', "//cdn", "@import"):
        assert external not in html
    assert ".innerHTML" not in html  # names from users never become markup


def test_importing_the_plugin_imports_no_web_framework():
    code = (
        "import sys; import airflow_llm_provider.plugins.llm_plugin as p; "
        "print(','.join(m for m in ('fastapi', 'flask', 'flask_appbuilder') if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert result.stdout.strip().splitlines()[-1:] in ([], [""]), result.stdout


def test_plugin_registers_the_page_for_this_airflow_line():
    from airflow_llm_provider.plugins.llm_plugin import LLMProviderPlugin

    if AIRFLOW_V_3_0_PLUS:
        (app,) = [a for a in LLMProviderPlugin.fastapi_apps if a["url_prefix"] == "/llm-costs"]
        assert app["name"] == "LLM costs"
        assert LLMProviderPlugin().fastapi_apps is LLMProviderPlugin.fastapi_apps  # built once
        (view,) = [v for v in LLMProviderPlugin.external_views if v["name"] == "LLM costs"]
        assert view["href"] == "llm-costs/" and view["destination"] == "nav" and view["url_route"]
        assert LLMProviderPlugin.appbuilder_views == []
    else:
        assert LLMProviderPlugin.fastapi_apps == []
        (view,) = [v for v in LLMProviderPlugin.appbuilder_views if v["name"] == "LLM costs"]
        assert view["category"] == "Browse"
        assert view["view"].route_base == "/llm-costs"
    assert LLMProviderPlugin.macros


# -- Airflow 3: the FastAPI app in process ---------------------------------------------------------
@pytest.fixture
def api(ledger, monkeypatch):
    if not AIRFLOW_V_3_0_PLUS:
        pytest.skip("the FastAPI app is Airflow 3's; Airflow 2's view is tested end to end")
    from airflow.api_fastapi.core_api.security import get_user
    from fastapi.testclient import TestClient

    from airflow_llm_provider.plugins.cost_page import fastapi_app

    class AuthManager:
        def filter_authorized_dag_ids(self, *, dag_ids, user, method="GET"):
            assert (user, method) == ("reader", "GET")
            return dag_ids & {"daily", "weekly"}

        def get_url_login(self, **kwargs):
            return "/auth/login?next=" + kwargs["next_url"]

    monkeypatch.setenv("AIRFLOW__LLM_PROVIDER__LEDGER_PATH", str(ledger.path))
    monkeypatch.setattr(fastapi_app, "get_auth_manager", AuthManager)
    app = fastapi_app.create_app()
    anonymous = TestClient(app)
    app_with_user = fastapi_app.create_app()
    app_with_user.dependency_overrides[get_user] = lambda: "reader"
    return anonymous, TestClient(app_with_user)


def test_fastapi_app_requires_a_user(api):
    anonymous, _ = api
    response = anonymous.get("/api/summary")
    assert response.status_code == 401 and response.json() == {"detail": "Not authenticated"}
    page = anonymous.get("/?dag_id=daily", follow_redirects=False)
    assert page.status_code == 307
    assert page.headers["location"].startswith("/auth/login?next=")


def test_fastapi_app_serves_page_and_summary(api):
    _, client = api
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "frame-ancestors 'self'" in page.headers["content-security-policy"]
    assert page.text == page_html()
    everything = client.get("/api/summary").json()
    assert everything["totals"]["cost_usd"] == 2.1
    filtered = client.get("/api/summary", params={"dag_id": "daily", "since": "2026-03-02"}).json()
    assert (filtered["totals"]["cost_usd"], filtered["filters"]["since"]) == (0.2, "2026-03-02")
    bad = client.get("/api/summary", params={"since": "soon"})
    assert bad.status_code == 400 and "since must be a day" in bad.json()["detail"]
    assert client.get("/api/summary", params={"dag_id": "secret"}).status_code == 403
