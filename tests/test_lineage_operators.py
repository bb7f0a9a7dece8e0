"""OpenLineage events of our cascade operators from a real ``airflow dags test`` (file transport),
on both Airflow lines: datasets and facets field by field, FAIL with the error, no secret or
prompt text anywhere in the raw events. Plus the extractors registered through the config."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from airflow_llm_provider.testing.openai_server import ScriptedOpenAIServer, structured, text
from tests.fixtures.lineage import LineageCapture

LLM_KEY = "sk-ol-SECRET-7c1f0d"
PG_PASSWORD = "pg-SECRET-93ad51"  # the test server trusts loopback: sent nowhere, must leak nowhere
PROMPT_MARK = "PROMPT-SECRET-4411"
INPUT_MARK = "INPUT-SECRET-5522"
EVALUATOR_PROMPT = "Pick the best draft."
SQL_FRAGMENT = "sum(amount)"  # SQL text is parsed into datasets, never emitted

REPORT = f"""\
cascade_id: ol_report
budget:
  max_tokens: 100000
phases:
  - name: load
    tool: sql:queries/load.sql
    inputs:
      conn_id: ol_pg
  - name: totals
    tool: sql_data
    inputs:
      conn_id: ol_pg
      sql: >-
        WITH t AS (SELECT region, amount FROM deals)
        SELECT region, count(*) AS n FROM t WHERE region = %(r)s GROUP BY region
      parameters:
        r: "{{{{ input.region }}}}"
  - name: draft
    instructions: >-
      {PROMPT_MARK} Write the report for {{{{ input.region }}}}:
      {{{{ outputs.totals | tojson }}}}
    soundings:
      factor: 2
      mutate: false  # no prompt-rewrite calls: two soundings and the evaluator
      evaluator_instructions: "{EVALUATOR_PROMPT}"
"""
LOAD_SQL = (
    "CREATE TABLE IF NOT EXISTS mart.daily_totals (region text, total numeric);\n"
    f"INSERT INTO mart.daily_totals SELECT region, {SQL_FRAGMENT} FROM deals GROUP BY region;"
)
BREAKS = f"""\
cascade_id: ol_breaks
phases:
  - name: think
    instructions: "{PROMPT_MARK} think about {{{{ input.region }}}}"
  - name: store
    tool: explode
    inputs:
      thought: "{{{{ outputs.think }}}}"
"""
DAG_FILE = f"""\
import pendulum

from airflow.providers.common.compat.assets import Asset
from airflow.providers.common.compat.sdk import DAG, task

from airflow_llm_provider.operators.cascade import CascadeOperator
from airflow_llm_provider.operators.cascade_phase import CascadePhaseOperator

START = pendulum.datetime(2026, 1, 1, tz="UTC")


def explode(**kwargs):
    raise RuntimeError("warehouse offline")


with DAG("ol_cascade", schedule=None, start_date=START, catchup=False):
    report = CascadeOperator(
        task_id="report",
        cascade="report.yaml",
        llm_conn_id="llm_ol",
        inputs={{"region": "emea", "note": "{INPUT_MARK}"}},
        inlets=[Asset("file:///data/raw/tickets.json")],
        outlets=[Asset("file:///data/reports/daily.md")],
        cache=None,
    )
    totals = CascadePhaseOperator(
        task_id="phase_totals",
        cascade="report.yaml",
        phase="totals",
        llm_conn_id="llm_ol",
        inputs={{"region": "apac"}},
        cache=None,
    )

    @task.cascade(cascade="breaks.yaml", llm_conn_id="llm_ol", cache=None, tools={{"explode": explode}})
    def decorated():
        return {{"region": "{INPUT_MARK}"}}

    report >> totals >> decorated()


with DAG("ol_cascade_fail", schedule=None, start_date=START, catchup=False):
    CascadeOperator(
        task_id="breaks",
        cascade="breaks.yaml",
        llm_conn_id="llm_ol",
        inputs={{"region": "{INPUT_MARK}"}},
        tools={{"explode": explode}},
        budget={{"max_cost_usd": 5}},
        cache=None,
        retries=0,
    )
"""


def _respond(request: Any) -> Any:
    if "final_result" in request.tool_names and EVALUATOR_PROMPT in request.text_of("system"):
        return structured({"winner": 2, "reason": "second is better"}, usage=(30, 5))
    return text("A calm quarter.", usage=(100, 20))


@dataclass
class OlRun:
    events: list[dict[str, Any]]
    raw: str
    outputs: dict[str, str]
    pg_host: str
    pg_port: int
    pg_db: str

    def task_events(self, job: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["job"]["name"] == job]

    def event(self, job: str, event_type: str) -> dict[str, Any]:
        (found,) = [e for e in self.task_events(job) if e["eventType"] == event_type]
        return found


def _airflow_env(home: Path, dags: Path, capture: LineageCapture, extra: dict[str, str]) -> dict[str, str]:
    from tests.fixtures.airflow_server import clean_airflow_env

    env = clean_airflow_env()
    env.update(
        {
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home}/airflow.db",
            "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW_LLM_CACHE_DIR": str(home / "llm-cache"),
            **capture.env,
            **extra,
        }
    )
    return env


@pytest.fixture(scope="module")
def ol_run(
    postgres_server: tuple[str, int, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OlRun]:
    """Both DAGs run once with ``airflow dags test``; the failing one with our extractors
    registered through ``[openlineage] extractors`` (the success one through the methods)."""
    import psycopg2

    from tests.fixtures.postgres import _admin_connection

    host, port, user = postgres_server
    dbname = f"alp_ol_{uuid.uuid4().hex[:10]}"
    admin = _admin_connection()
    with admin.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{dbname}"')
    root = tmp_path_factory.mktemp("ol")
    dags = root / "dags"
    (dags / "queries").mkdir(parents=True)
    (dags / "report.yaml").write_text(REPORT)
    (dags / "breaks.yaml").write_text(BREAKS)
    (dags / "queries" / "load.sql").write_text(LOAD_SQL)
    (dags / "ol_dags.py").write_text(DAG_FILE)
    capture = LineageCapture(path=root / "openlineage.jsonl")
    try:
        conn = psycopg2.connect(host=host, port=port, user=user, dbname=dbname)
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("CREATE SCHEMA mart")
            cur.execute("CREATE TABLE deals (region text, amount numeric)")
            cur.execute("INSERT INTO deals VALUES ('emea', 10), ('apac', 5)")
        conn.close()
        with ScriptedOpenAIServer() as server:
            server.responder = _respond
            llm = server.connection(api_key=LLM_KEY)
            llm["extra"]["price"] = {"input_per_mtok": 1.0, "output_per_mtok": 2.0}
            connections = {
                "AIRFLOW_CONN_LLM_OL": json.dumps(llm),
                "AIRFLOW_CONN_OL_PG": json.dumps(
                    {
                        "conn_type": "postgres",
                        "host": host,
                        "port": port,
                        "login": user,
                        "password": PG_PASSWORD,
                        "schema": dbname,
                    }
                ),
            }
            airflow = [sys.executable, "-m", "airflow"]
            env = _airflow_env(root, dags, capture, connections)
            subprocess.run([*airflow, "db", "migrate"], env=env, check=True, capture_output=True, timeout=300)
            outputs = {}
            module = "airflow_llm_provider.lineage.extractors"
            registered = f"{module}.CascadeExtractor;{module}.CascadePhaseExtractor"
            extractors = {"AIRFLOW__OPENLINEAGE__EXTRACTORS": registered}
            for dag_id, extra in (("ol_cascade", {}), ("ol_cascade_fail", extractors)):
                result = subprocess.run(
                    [*airflow, "dags", "test", dag_id, "2026-03-04"],
                    env={**env, **extra},
                    capture_output=True,
                    text=True,
                    timeout=300,
                )
                outputs[dag_id] = result.stdout[-6000:] + result.stderr[-6000:]
        raw = capture.path.read_text() if capture.path.exists() else ""
        yield OlRun(capture.events(), raw, outputs, host, port, dbname)
    finally:
        with admin.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')
        admin.close()


def _facet(event: dict[str, Any], kind: str, name: str) -> dict[str, Any]:
    facets = event["run" if kind == "run" else "job"]["facets"]
    assert name in facets, (name, sorted(facets))
    return facets[name]


def _datasets(event: dict[str, Any], key: str) -> list[tuple[str, str]]:
    return [(d["namespace"], d["name"]) for d in event[key]]


def test_whole_cascade_start_and_complete(ol_run: OlRun) -> None:
    from airflow_llm_provider.lineage.facets import PRODUCER

    events = ol_run.task_events("ol_cascade.report")
    assert [e["eventType"] for e in events] == ["START", "COMPLETE"], ol_run.outputs["ol_cascade"]
    start, complete = events
    assert start["run"]["runId"] == complete["run"]["runId"]
    assert start["job"]["namespace"] == "alp-tests"

    # START: what is known before the run, i.e. the declared inlets/outlets and the job facet.
    assert _datasets(start, "inputs") == [("file", "/data/raw/tickets.json")]
    assert _datasets(start, "outputs") == [("file", "/data/reports/daily.md")]
    assert "airflowLlm_usage" not in start["run"]["facets"]

    # COMPLETE: SQL datasets named as the OpenLineage provider names Postgres tables, then inlets.
    pg = f"postgres://{ol_run.pg_host}:{ol_run.pg_port}"
    db = ol_run.pg_db
    # `deals` is read by load.sql and by the CTE query of `totals` (bare name + default schema:
    # the case openlineage-sql drops).
    assert _datasets(complete, "inputs") == [(pg, f"{db}.public.deals"), ("file", "/data/raw/tickets.json")]
    assert _datasets(complete, "outputs") == [
        (pg, f"{db}.mart.daily_totals"),  # CREATE TABLE + INSERT ... SELECT of load.sql
        ("file", "/data/reports/daily.md"),
    ]

    usage = _facet(complete, "run", "airflowLlm_usage")
    assert usage == {
        "_producer": PRODUCER,
        "_schemaURL": usage["_schemaURL"],
        "models": ["openai:gpt-4o-mini"],
        "providers": ["openai"],
        "requests": 3,  # two soundings and the evaluator
        "inputTokens": 230,
        "outputTokens": 45,
        "costUsd": 0.00032,  # (230 * $1 + 45 * $2) per million, the connection's declared price
        "unpricedCalls": 0,
        "cacheHits": 0,
        "soundingsWinners": {"draft": 1},  # the evaluator answered 2 (1-based)
        "budget": {"maxTokens": 100000, "exceeded": False},
        "status": "success",
    }
    assert usage["_schemaURL"].endswith("LlmUsageRunFacet.json#/$defs/LlmUsageRunFacet")

    for event in (start, complete):
        job = _facet(event, "job", "airflowLlm_cascade")
        assert job["cascadeId"] == "ol_report"
        assert job["contentHash"].startswith("sha256:") and len(job["contentHash"]) == 71
        assert "phase" not in job
        assert [(p["name"], p["kind"], p["dependsOn"]) for p in job["phases"]] == [
            ("load", "tool", []),
            ("totals", "tool", []),
            ("draft", "llm", ["totals"]),
        ]
        load, totals, draft = job["phases"]
        assert load["tool"] == "sql:queries/load.sql" and totals["tool"] == "sql_data"
        assert draft["soundings"] == {"factor": 2, "mode": "evaluate"}
        assert draft["instructionsHash"].startswith("sha256:")
    assert _facet(start, "job", "airflowLlm_cascade") == _facet(complete, "job", "airflowLlm_cascade")


def test_phase_task_of_a_rendered_dag(ol_run: OlRun) -> None:
    events = ol_run.task_events("ol_cascade.phase_totals")
    assert [e["eventType"] for e in events] == ["START", "COMPLETE"], ol_run.outputs["ol_cascade"]
    start, complete = events
    assert start["inputs"] == [] and start["outputs"] == []
    pg = f"postgres://{ol_run.pg_host}:{ol_run.pg_port}"
    assert _datasets(complete, "inputs") == [(pg, f"{ol_run.pg_db}.public.deals")]
    assert complete["outputs"] == []
    usage = _facet(complete, "run", "airflowLlm_usage")
    assert (usage["models"], usage["requests"], usage["inputTokens"]) == ([], 0, 0)
    assert usage["status"] == "success"
    assert "budget" in usage and usage["budget"] == {"maxTokens": 100000, "exceeded": False}
    job = _facet(complete, "job", "airflowLlm_cascade")
    assert job["phase"] == "totals"
    report = _facet(ol_run.event("ol_cascade.report", "COMPLETE"), "job", "airflowLlm_cascade")
    assert job["contentHash"] == report["contentHash"]  # same cascade, same hash


def test_failed_cascade_emits_fail_with_error_and_usage_so_far(ol_run: OlRun) -> None:
    """The failing DAG ran with our extractors registered through ``[openlineage] extractors``."""
    events = ol_run.task_events("ol_cascade_fail.breaks")
    assert [e["eventType"] for e in events] == ["START", "FAIL"], ol_run.outputs["ol_cascade_fail"]
    fail = events[1]
    error = _facet(fail, "run", "errorMessage")
    assert "warehouse offline" in error["message"]
    assert "cascade ol_breaks failed: phase 'store'" in error["message"]
    assert error["programmingLanguage"] == "python"
    usage = _facet(fail, "run", "airflowLlm_usage")
    assert usage["status"] == "failed"
    assert (usage["requests"], usage["inputTokens"], usage["outputTokens"]) == (1, 100, 20)
    assert usage["models"] == ["openai:gpt-4o-mini"]
    assert usage["budget"] == {"maxCostUsd": 5, "exceeded": False}
    assert usage["costUsd"] == pytest.approx(0.00014)
    assert _facet(fail, "job", "airflowLlm_cascade")["cascadeId"] == "ol_breaks"


def test_decorated_task_fails_with_its_error(ol_run: OlRun) -> None:
    events = ol_run.task_events("ol_cascade.decorated")
    assert [e["eventType"] for e in events] == ["START", "FAIL"], ol_run.outputs["ol_cascade"]
    assert "warehouse offline" in _facet(events[1], "run", "errorMessage")["message"]
    assert _facet(events[1], "run", "airflowLlm_usage")["requests"] == 1


def test_no_secret_prompt_input_or_sql_text_in_any_event(ol_run: OlRun) -> None:
    assert len(ol_run.events) >= 10
    for forbidden in (LLM_KEY, PG_PASSWORD, PROMPT_MARK, INPUT_MARK, EVALUATOR_PROMPT, SQL_FRAGMENT):
        assert forbidden not in ol_run.raw, forbidden
    assert "think about" not in ol_run.raw and "Write the report" not in ol_run.raw


# -- extractors registered through the config -------------------------------------------------


@pytest.fixture
def registered_extractors(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    from airflow.providers.openlineage import conf

    monkeypatch.setenv(
        "AIRFLOW__OPENLINEAGE__EXTRACTORS",
        "airflow_llm_provider.lineage.extractors.CascadeExtractor; "
        "airflow_llm_provider.lineage.extractors.CascadePhaseExtractor",
    )
    clear = getattr(conf.custom_extractors, "cache_clear", lambda: None)  # cached outside unit tests
    clear()
    yield
    clear()


def test_extractors_registered_through_the_config_call_the_operator_methods(
    registered_extractors: None, tmp_path: Path
) -> None:
    from airflow.providers.common.compat.sdk import DAG
    from airflow.providers.openlineage.extractors.manager import ExtractorManager

    from airflow_llm_provider.lineage.extractors import CascadeExtractor, CascadePhaseExtractor
    from airflow_llm_provider.operators.cascade import CascadeOperator
    from airflow_llm_provider.operators.cascade_phase import (
        CascadePhaseOperator,
        CascadeSoundingOperator,
        CascadeWholeRunOperator,
    )

    cascade = {"cascade_id": "x", "phases": [{"name": "a", "instructions": "hi {{ input.q }}"}]}
    with DAG("ol_extractors", schedule=None):
        whole = CascadeOperator(task_id="whole", cascade=cascade)
        loop = CascadeWholeRunOperator(task_id="loop", cascade=cascade)
        phase = CascadePhaseOperator(task_id="phase", cascade=cascade, phase="a")
        sounding = CascadeSoundingOperator(task_id="sounding", cascade=cascade, phase="a")

    manager = ExtractorManager()
    assert manager.get_extractor_class(whole) is CascadeExtractor
    assert manager.get_extractor_class(loop) is CascadeExtractor
    assert manager.get_extractor_class(phase) is CascadePhaseExtractor
    assert manager.get_extractor_class(sounding) is CascadePhaseExtractor

    for task in (whole, phase):
        extractor = manager.get_extractor_class(task)(task)  # type: ignore[misc]
        on_start = extractor.extract()
        assert on_start is not None
        assert on_start == task.get_openlineage_facets_on_start()
        assert on_start.job_facets["airflowLlm_cascade"].cascadeId == "x"
        failed = extractor.extract_on_failure(None)
        assert failed is not None
        assert failed.run_facets["airflowLlm_usage"].status == "failed"  # nothing ran: no spend
        assert failed.run_facets["airflowLlm_usage"].requests == 0
    assert manager.extractors["_CascadeDecoratedOperator"] is CascadeExtractor


def test_operator_modules_do_not_import_openlineage() -> None:
    # (Airflow's ProvidersManager itself reads airflow.providers.openlineage.get_provider_info.)
    heavy = (
        "openlineage",
        "airflow.providers.openlineage.extractors",
        "airflow.providers.openlineage.plugins",
        "airflow.providers.openlineage.sqlparser",
        "sqlglot",
        "airflow_llm_provider.lineage",
    )
    code = (
        "import sys, airflow_llm_provider.operators.cascade_phase, airflow_llm_provider.decorators.cascade; "
        f"print(sorted(m for m in sys.modules if m.startswith({heavy!r})))"
    )
    env = {**os.environ, "AIRFLOW__OPENLINEAGE__DISABLED": "True"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert result.stdout.strip().splitlines()[-1] == "[]"


def test_dag_file_is_valid_python() -> None:
    compile(textwrap.dedent(DAG_FILE), "ol_dags.py", "exec")


def test_own_failure_facets_budget_stop_in_process(llm_server: Any, airflow_conn: Any) -> None:
    """Our on_failure facets without the listener: the error message (no stack trace), the usage
    spent until the budget stop, and the operator's budget (it overrides the cascade's)."""
    from airflow.providers.common.compat.sdk import AirflowFailException

    from airflow_llm_provider.operators.cascade import CascadeOperator

    airflow_conn("llm_unit", llm_server.connection())
    llm_server.responder = lambda request: text("x", usage=(5000, 10))
    operator = CascadeOperator(
        task_id="t",
        cascade={
            "cascade_id": "spend",
            "budget": {"max_tokens": 1_000_000},
            "phases": [
                {"name": "a", "instructions": f"{PROMPT_MARK} a"},
                {"name": "b", "instructions": "b {{ outputs.a }}"},
            ],
        },
        llm_conn_id="llm_unit",
        budget={"max_tokens": 5015},
        cache=None,
    )
    with pytest.raises(AirflowFailException):
        operator.execute({})
    lineage = operator.get_openlineage_facets_on_failure(None)
    error = lineage.run_facets["errorMessage"]
    assert error.message.startswith("cascade spend failed: Cascade budget max_tokens=5015 would be exceeded")
    assert error.stackTrace is None and error.programmingLanguage == "python"
    usage = lineage.run_facets["airflowLlm_usage"]
    assert (usage.requests, usage.inputTokens, usage.outputTokens) == (1, 5000, 10)
    assert usage.budget == {"maxTokens": 5015, "maxCostUsd": None, "exceeded": True}
    assert usage.status == "failed" and usage.models == ["openai:gpt-4o-mini"]
    assert lineage.inputs == [] and lineage.outputs == []
    assert PROMPT_MARK not in repr(operator._lineage_state)


def test_plumbing_steps_report_only_their_declared_datasets():
    from airflow.providers.common.compat.assets import Asset

    from airflow_llm_provider.operators.cascade_phase import (
        CascadeCollectOperator,
        CascadeItemsOperator,
        CascadeRouteOperator,
    )

    steps = [
        CascadeItemsOperator(task_id="items", source_task_id="a", map_over="a"),
        CascadeCollectOperator(
            task_id="collect", phase="p", results=[], outlets=[Asset("file:///out/x.json")]
        ),
        CascadeRouteOperator(task_id="route", phase_task_id="a", targets={}, fallthrough="end"),
    ]
    for step in steps:
        for lineage in (
            step.get_openlineage_facets_on_start(),
            step.get_openlineage_facets_on_complete(None),
            step.get_openlineage_facets_on_failure(None),
        ):
            assert lineage.run_facets == {}  # no usage facet: the phase tasks report the calls
            assert lineage.inputs == []
            expected = ["/out/x.json"] if step.task_id == "collect" else []
            assert [d.name for d in lineage.outputs] == expected
