"""The example DAG under a real scheduler: triggered through the REST API as the UI does, then
backfilled over three days with Airflow's own backfill command."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.e2e

DAG_ID = "example_llm_hello"


def test_example_dag_visible_and_clean(airflow_server):
    dag = airflow_server.wait_for_dag(DAG_ID)
    assert dag["dag_id"] == DAG_ID
    assert "llm-provider" in [t["name"] if isinstance(t, dict) else t for t in dag["tags"]]
    assert airflow_server.import_errors() == []


def test_trigger_through_rest_api_runs_to_success(airflow_server):
    airflow_server.wait_for_dag(DAG_ID)
    airflow_server.unpause(DAG_ID)
    run_id = airflow_server.trigger(DAG_ID, logical_date="2026-02-10T00:00:00Z")
    run = airflow_server.wait_for_run(DAG_ID, run_id)
    assert run["state"] == "success", airflow_server.log_tail("scheduler")

    (instance,) = airflow_server.task_instances(DAG_ID, run_id)
    assert (instance["task_id"], instance["state"]) == ("ask_llm", "success")
    answer = airflow_server.xcom(DAG_ID, run_id, "ask_llm")
    # No LLM connection on this server: the offline test model answered, and says so.
    assert answer["day"] == "2026-02-10"
    assert answer["synthetic"] is True
    assert answer["model"] == "test"
    log = airflow_server.task_log(DAG_ID, run_id, "ask_llm")
    assert "offline test model" in log


def test_three_day_backfill_completes(airflow_server):
    airflow_server.wait_for_dag(DAG_ID)
    airflow_server.unpause(DAG_ID)
    days = ["2026-01-05", "2026-01-06", "2026-01-07"]
    if airflow_server.airflow3:
        airflow_server.cli(
            "backfill", "create", "--dag-id", DAG_ID, "--from-date", days[0], "--to-date", days[-1]
        )
    else:
        airflow_server.cli("dags", "backfill", "--start-date", days[0], "--end-date", days[-1], DAG_ID)

    def backfill_runs() -> list[dict]:
        return [r for r in airflow_server.dag_runs(DAG_ID) if r["logical_date"][:10] in days]

    runs = backfill_runs()
    assert len(runs) == 3, runs
    for run in runs:
        finished = airflow_server.wait_for_run(DAG_ID, run["dag_run_id"])
        assert finished["state"] == "success"
        assert finished["run_type"] == "backfill"
        assert (
            airflow_server.xcom(DAG_ID, run["dag_run_id"], "ask_llm")["day"] == finished["logical_date"][:10]
        )
