"""e2e: two mapped cascade tasks, running at once, draw from one per-run budget kept in the
PostgreSQL cost ledger; alerts go to Slack through a connection kept in Vault."""

from __future__ import annotations

import pendulum
from airflow.providers.common.compat.sdk import DAG

from airflow_llm_provider.operators.cascade import CascadeOperator

PHASES = ["p1", "p2", "p3", "p4", "p5"]
CASCADE = {
    "cascade_id": "budgeted_report",
    "phases": [{"name": p, "instructions": f"[{p}] Work on {{{{ input.topic }}}}."} for p in PHASES],
}

with DAG(
    dag_id="e2e_shared_budget",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    tags=["e2e", "team-e2e"],
):
    CascadeOperator.partial(
        task_id="report",
        cascade=CASCADE,
        llm_conn_id="e2e_budget_llm",
        cache=None,
        max_concurrency=1,
        budgets=[{"scope": "dag_run", "max_cost_usd": 0.45, "warn_at": 0.5}],
        alert_slack_conn_id="e2e_slack",
    ).expand(inputs=[{"topic": "north"}, {"topic": "south"}])
