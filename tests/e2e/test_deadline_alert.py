"""An Airflow 3.3 Deadline Alert under the real scheduler and triggerer: the run outlives its 5 s
deadline and our callback posts to Slack (through a connection kept in Vault) while it runs."""

from __future__ import annotations

import time

import pytest

pytestmark = pytest.mark.e2e

DAG_ID = "e2e_deadline"


def test_missed_deadline_posts_to_slack_while_the_run_goes_on(airflow_server, slack_receiver):
    if not airflow_server.airflow3:
        pytest.skip("Deadline Alerts are Airflow 3.1+; Airflow 2 has sla_miss_callback")
    airflow_server.put_vault_secret("connection", "e2e_slack", **slack_receiver.webhook_connection())
    airflow_server.wait_for_dag(DAG_ID)
    airflow_server.unpause(DAG_ID)
    run_id = airflow_server.trigger(DAG_ID)

    deadline = time.monotonic() + 90
    while not slack_receiver.posts and time.monotonic() < deadline:
        airflow_server.check_alive()
        time.sleep(1)
    assert slack_receiver.posts, airflow_server.log_tail("triggerer")
    (post,) = slack_receiver.posts
    assert post.text.startswith(f":alarm_clock: DAG *{DAG_ID}* run `{run_id}` missed its deadline (")
    assert airflow_server.dag_run(DAG_ID, run_id)["state"] == "running"  # alerted before the end
    assert airflow_server.wait_for_run(DAG_ID, run_id, timeout=120)["state"] == "success"
