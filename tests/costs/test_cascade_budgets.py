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


def test_parallel_phases_go_one_at_a_time_near_the_limit(dag_runner, llm_server, airflow_conn, tmp_path):
    """8 independent phases, 2 calls in flight, $0.10 a call, a $0.45 run budget: in parallel
    while far from the limit, one at a time past half of it, so the 6th call is refused and the
    overshoot is one call ($0.50), not the two that parallel calls near the limit would make."""
    from airflow.providers.common.compat.sdk import DAG

    from airflow_llm_provider.operators.cascade import CascadeOperator

    connection = llm_server.connection()
    connection["extra"]["price"] = {"input_per_mtok": 1000, "output_per_mtok": 0}
    airflow_conn("llm_parallel", connection)
    llm_server.responder = lambda request: text("ok", usage=(100, 0), delay=0.3)
    cascade = {
        "cascade_id": "parallel_budgeted",
        "budgets": [{"scope": "dag_run", "max_cost_usd": 0.45, "warn_at": 0.5}],
        "phases": [{"name": f"p{i}", "instructions": f"Part {i}."} for i in range(8)],
    }
    with DAG(
        dag_id=f"parallel_budget_{tmp_path.name}"[:200],
        schedule=None,
        start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
        catchup=False,
    ) as dag:
        CascadeOperator(
            task_id="run", cascade=cascade, llm_conn_id="llm_parallel", cache=None, max_concurrency=2
        )

    result = dag_runner(dag, logical_date=pendulum.datetime(2026, 3, 22, tz="UTC"))

    assert result.state == "failed"
    assert len(llm_server.requests) == 5
    starts = sorted(r.arrived_at for r in llm_server.requests)
    assert starts[1] - starts[0] < 0.2  # the first two calls did run in parallel
