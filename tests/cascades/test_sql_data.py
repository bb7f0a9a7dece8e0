"""`sql_data` and `sql:` files against the real PostgreSQL, through Airflow connections."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pendulum
import pytest

from airflow_llm_provider.cascades import load_cascade
from airflow_llm_provider.cascades.runner import RunOptions, run_cascade
from airflow_llm_provider.cascades.trust import connection_ids
from airflow_llm_provider.operators.cascade_tools import airflow_tool_services, airflow_tools, sql_data
from airflow_llm_provider.testing.openai_server import text


@pytest.fixture
def sales_db(postgres, airflow_conn):
    with postgres.connect() as conn, conn.cursor() as cur:
        cur.execute("CREATE TABLE deals (id serial, region text, amount numeric(10,2), closed_on date)")
        cur.execute(
            "INSERT INTO deals (region, amount, closed_on) VALUES "
            "('emea', 1200.50, '2026-01-05'), ('emea', 800, '2026-01-06'), ('apac', 300, '2026-01-06')"
        )
    return airflow_conn("sales_db", postgres.airflow_connection())


def test_sql_data_returns_json_safe_rows_and_binds_parameters(sales_db):
    rows = sql_data(
        sales_db,
        "SELECT region, amount, closed_on FROM deals WHERE region = %(region)s ORDER BY id",
        {"region": "emea"},
    )
    assert rows == [
        {"region": "emea", "amount": 1200.5, "closed_on": "2026-01-05"},
        {"region": "emea", "amount": 800, "closed_on": "2026-01-06"},
    ]
    json.dumps(rows)
    # A value is a parameter, never SQL: this finds nothing instead of every row.
    assert sql_data(sales_db, "SELECT id FROM deals WHERE region = %(r)s", {"r": "x' OR '1'='1"}) == []


def test_sql_data_refuses_to_truncate_silently(sales_db):
    with pytest.raises(ValueError, match="returned more than 2 rows"):
        sql_data(sales_db, "SELECT * FROM deals", max_rows=2)


def test_sql_data_needs_a_database_connection(airflow_conn):
    conn_id = airflow_conn("not_sql", {"conn_type": "slackwebhook", "password": "http://127.0.0.1:1/x"})
    with pytest.raises(TypeError, match="no SQL hook"):
        sql_data(conn_id, "SELECT 1")


def test_cascade_reads_rows_then_summarizes(sales_db, llm_server, tmp_path: Path):
    from tests.cascades.test_runner import server_models

    (tmp_path / "queries").mkdir()
    (tmp_path / "queries" / "by_region.sql").write_text(
        "SELECT region, sum(amount) AS total FROM deals\n"
        "{% if inputs.region %}WHERE region = %(region)s{% endif %}\n"
        "GROUP BY region ORDER BY region"
    )
    spec = load_cascade(
        {
            "cascade_id": "sales",
            "phases": [
                {
                    "name": "totals",
                    "tool": "sql:queries/by_region.sql",
                    "inputs": {
                        "conn_id": "sales_db",
                        "parameters": {"region": "{{ input.region }}"},
                        "region": "{{ input.region }}",
                    },
                },
                {
                    "name": "count",
                    "tool": "sql_data",
                    "inputs": {"conn_id": "sales_db", "sql": "SELECT count(*) AS n FROM deals"},
                },
                {
                    "name": "report",
                    "instructions": "Totals: {{ outputs.totals | tojson }}; deals: {{ outputs.count[0].n }}",
                },
            ],
        }
    )
    llm_server.script(text("EMEA leads."))
    result = run_cascade(
        spec,
        {"region": "emea"},
        RunOptions(
            model_factory=server_models(llm_server),
            tools=airflow_tools(),
            tool_services=airflow_tool_services(conn_ids=connection_ids(spec)),
            base_dir=tmp_path,
        ),
    )
    assert result.status == "success", result.error
    assert result.outputs["totals"] == [{"region": "emea", "total": 2000.5}]
    assert (
        llm_server.requests[0].text_of("system") == 'Totals: [{"region": "emea", "total": 2000.5}]; deals: 3'
    )


def test_missing_sql_file_fails_the_phase_clearly(sales_db, tmp_path: Path):
    spec = load_cascade(
        {
            "cascade_id": "x",
            "phases": [{"name": "q", "tool": "sql:nope.sql", "inputs": {"conn_id": "sales_db"}}],
        }
    )
    result = run_cascade(spec, {}, RunOptions(tools=airflow_tools(), base_dir=tmp_path))
    assert result.status == "failed"
    assert "sql file 'nope.sql' not found" in str(result.error)


def test_operator_gets_sql_data_and_reads_sql_files_next_to_the_cascade(
    sales_db, dag_runner, llm_server, airflow_conn, tmp_path: Path
):
    from airflow.providers.common.compat.sdk import DAG

    from airflow_llm_provider.operators.cascade import CascadeOperator

    (tmp_path / "top.sql").write_text("SELECT region FROM deals WHERE closed_on = %(day)s ORDER BY id")
    (tmp_path / "c.yaml").write_text(
        "cascade_id: daily\n"
        "phases:\n"
        "  - name: rows\n"
        "    tool: sql:top.sql\n"
        "    inputs: {conn_id: sales_db, parameters: {day: '{{ ds }}'}}\n"
        "  - name: note\n"
        "    instructions: 'Regions on {{ ds }}: "
        '{{ outputs.rows | map(attribute="region") | join(", ") }}\'\n'
    )
    airflow_conn("pydanticai_default", llm_server.connection())
    llm_server.script(text("ok"))
    with DAG("sql_cascade", schedule=None, start_date=pendulum.datetime(2026, 1, 1, tz="UTC")) as dag:
        CascadeOperator(task_id="run", cascade=str(tmp_path / "c.yaml"), cache=None)
    result = dag_runner(dag, logical_date=pendulum.datetime(2026, 1, 6, tz="UTC"))
    assert result.state == "success"
    assert llm_server.requests[0].text_of("system") == "Regions on 2026-01-06: emea, apac"


def test_cli_run_has_sql_data(sales_db, postgres, tmp_path: Path):
    (tmp_path / "c.yaml").write_text(
        "cascade_id: cli_sql\nphases:\n  - name: n\n    tool: sql_data\n"
        "    inputs: {conn_id: sales_db, sql: 'SELECT count(*) AS n FROM deals'}\n"
    )
    env = dict(os.environ, AIRFLOW_CONN_SALES_DB=json.dumps(postgres.airflow_connection()))
    result = subprocess.run(
        [str(Path(sys.executable).with_name("airflow-llm")), "run", str(tmp_path / "c.yaml")],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["final"] == [{"n": 3}]
