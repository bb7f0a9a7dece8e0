"""The cost macros in real templates: a task records calls, the next renders what they cost."""

from __future__ import annotations

import pendulum


def record_two_calls(**context) -> None:
    from airflow_llm_provider.costs.ledger import LedgerEntry, configured_ledger

    ti = context["ti"]
    configured_ledger().record(
        [
            LedgerEntry(ti.dag_id, ti.run_id, "llm", -1, 1, "c", "p", "m", cost_usd=cost)
            for cost in (0.25, 0.5)
        ]
    )


def report(cost: str, left: str) -> dict:
    return {"cost": cost, "left": left}


def test_cost_and_budget_left_macros(dag_runner, tmp_path):
    from airflow.providers.common.compat.sdk import DAG
    from airflow.providers.standard.operators.python import PythonOperator

    with DAG(
        dag_id=f"macros_{tmp_path.name}"[:200],
        schedule=None,
        start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
        catchup=False,
    ) as dag:
        spend = PythonOperator(task_id="spend", python_callable=record_two_calls)
        show = PythonOperator(
            task_id="show",
            python_callable=report,
            op_kwargs={
                "cost": "{{ macros.llm_provider.llm_cost(dag.dag_id, run_id) }}",
                "left": "{{ macros.llm_provider.llm_budget_left(1.0, dag.dag_id, run_id) }}",
            },
        )
        spend >> show

    result = dag_runner(dag, logical_date=pendulum.datetime(2026, 3, 20, tz="UTC"))

    assert result.state == "success"
    assert result.xcom("show") == {"cost": "0.75", "left": "0.25"}
