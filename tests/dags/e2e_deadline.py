"""e2e: a run that outlives its deadline; the Deadline Alert posts to Slack from the triggerer
(Airflow 3.1+). On Airflow 2 the DAG still parses (no deadline)."""

from __future__ import annotations

import time
from datetime import timedelta

import pendulum
from airflow.providers.common.compat.sdk import DAG, task

try:
    from airflow.sdk.definitions.deadline import AsyncCallback, DeadlineAlert, DeadlineReference

    from airflow_llm_provider.notifications.slack import slack_deadline_alert

    DEADLINE = DeadlineAlert(
        reference=DeadlineReference.DAGRUN_QUEUED_AT,
        interval=timedelta(seconds=5),
        callback=AsyncCallback(slack_deadline_alert, kwargs={"slack_conn_id": "e2e_slack"}),
    )
    extra = {"deadline": DEADLINE}
except ImportError:  # Airflow 2.x
    extra = {}

with DAG(
    dag_id="e2e_deadline",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    tags=["e2e"],
    **extra,
):

    @task
    def slow() -> str:
        time.sleep(30)
        return "late"

    slow()
