"""A per-run budget shared by two mapped tasks running concurrently under a real scheduler: the
PostgreSQL cost ledger is summed before each call, a threshold alert and a breach alert reach
Slack once each, and the budget is overshot by at most one call per task."""

from __future__ import annotations

import pytest

from airflow_llm_provider.costs.ledger import PostgresLedger, Scope
from airflow_llm_provider.testing.openai_server import text

pytestmark = pytest.mark.e2e

DAG_ID = "e2e_shared_budget"
CALL_COST = 0.1  # 100 input tokens at the declared $1,000 per million


@pytest.mark.parametrize("slack_down", [False, True])
def test_budget_threshold_then_breach_across_concurrent_mapped_tasks(
    airflow_server, llm_server, slack_receiver, slack_down
):
    if airflow_server.ledger_uri is None:
        pytest.skip("needs PostgreSQL for the ledger")
    llm_server.responder = lambda request: text("done", usage=(100, 0), delay=0.4)
    connection = llm_server.connection()
    connection["extra"]["price"] = {"input_per_mtok": 1000, "output_per_mtok": 0}
    airflow_server.put_vault_secret("connection", "e2e_budget_llm", **connection)
    airflow_server.put_vault_secret("connection", "e2e_slack", **slack_receiver.webhook_connection())
    slack_receiver.fail_with = 500 if slack_down else None

    airflow_server.wait_for_dag(DAG_ID)
    airflow_server.unpause(DAG_ID)
    run_id = airflow_server.trigger(DAG_ID)
    run = airflow_server.wait_for_run(DAG_ID, run_id, timeout=300)

    assert run["state"] == "failed"  # the budget stopped the work
    tis = airflow_server.task_instances(DAG_ID, run_id)
    assert sorted(ti["state"] for ti in tis) == ["failed", "failed"]
    assert all(ti["try_number"] == 1 for ti in tis)  # a budget stop is not retried

    # Calls go on while the run has spent less than $0.45: after 4 calls ($0.40) each task may
    # start one more, so 5 or 6 calls, never the 10 the two cascades would need.
    calls = len(llm_server.requests)
    assert 5 <= calls <= 6, calls
    spent = PostgresLedger(airflow_server.ledger_uri).spent(Scope(dag_id=DAG_ID, run_id=run_id))
    assert spent.requests == calls
    assert spent.cost_usd == pytest.approx(calls * CALL_COST)
    mapped = {
        row["map_index"] for row in PostgresLedger(airflow_server.ledger_uri).entries(Scope(run_id=run_id))
    }
    assert mapped == {0, 1}

    texts = [post.text for post in slack_receiver.posts]
    # One warning and one breach alert for the run, however many tasks saw the thresholds.
    assert len([t for t in texts if t.startswith(":warning:")]) == 1
    assert len([t for t in texts if t.startswith(":no_entry:")]) == 1
    warning = next(t for t in texts if t.startswith(":warning:"))
    assert f"LLM budget for DAG {DAG_ID} run {run_id} at" in warning
    assert "of $0.4500" in warning
    if slack_down:
        # Delivery failed, yet the tasks failed for the budget only (checked above).
        assert all(post.path.startswith("/services/") for post in slack_receiver.posts)
