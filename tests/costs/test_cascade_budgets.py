"""Shared budgets declared in the cascade file: validated with file:line:field, enforced in Airflow."""

from __future__ import annotations

import pendulum
import pytest

from airflow_llm_provider.cascades import CascadeValidationError, load_cascade
from airflow_llm_provider.testing.openai_server import text

CASCADE = """\
cascade_id: budgeted
budgets:
  - scope: dag_run
    max_cost_usd: 0.15
phases:
  - name: one
    instructions: "First."
  - name: two
    instructions: "Second."
  - name: three
    instructions: "Third."
"""


def test_bad_shared_budget_names_file_line_and_field(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(CASCADE.replace("scope: dag_run", "scope: weekly"))
    with pytest.raises(CascadeValidationError) as err:
        load_cascade(path)
    assert "bad.yaml:3" in str(err.value)
    assert "budgets[0].scope" in str(err.value) or "budgets.0.scope" in str(err.value)


def test_cascade_budget_stops_the_run_in_airflow(dag_runner, llm_server, airflow_conn, tmp_path):
    from airflow.providers.common.compat.sdk import DAG

    from airflow_llm_provider.operators.cascade import CascadeOperator

    connection = llm_server.connection()
    connection["extra"]["price"] = {"input_per_mtok": 1000, "output_per_mtok": 0}
    airflow_conn("llm_budgeted", connection)
    llm_server.responder = lambda request: text("ok", usage=(100, 0))  # $0.10 a call
    (tmp_path / "budgeted.yaml").write_text(CASCADE)
    with DAG(
        dag_id=f"cascade_budget_{tmp_path.name}"[:200],
        schedule=None,
        start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
        catchup=False,
    ) as dag:
        CascadeOperator(
            task_id="run",
            cascade=str(tmp_path / "budgeted.yaml"),
            llm_conn_id="llm_budgeted",
            cache=None,
            max_concurrency=1,  # the three phases are independent: one call in flight at a time
            retries=2,
        )

    result = dag_runner(dag, logical_date=pendulum.datetime(2026, 3, 21, tz="UTC"))

    assert result.state == "failed"
    assert result.task_states["run"] == "failed"  # final: a budget stop is not retried
    assert len(llm_server.requests) == 2  # $0.20 spent >= $0.15: the third call was refused
