"""Slack alerts through apache-airflow-providers-slack's real hooks, to the local receiver."""

from __future__ import annotations

import logging

import pendulum
import pytest

from airflow_llm_provider.costs.ledger import Spend
from airflow_llm_provider.notifications.slack import (
    LLMFailureNotifier,
    budget_text,
    deadline_text,
    post_to_slack,
)
from airflow_llm_provider.testing.openai_server import error


def test_webhook_and_api_connections_both_deliver(slack_receiver):
    assert post_to_slack("slack_test_webhook", "hello from the webhook")
    assert post_to_slack("slack_test_api", "hello from the API", channel="#llm-alerts")
    webhook, api = slack_receiver.posts
    assert webhook.path == "/services/T000/B000/XXXX"
    assert webhook.text == "hello from the webhook"
    assert api.path == "/api/chat.postMessage"
    assert (api.body["channel"], api.text) == ("#llm-alerts", "hello from the API")
    assert api.headers["authorization"] == "Bearer xoxb-local-test"


def test_delivery_failure_is_logged_not_raised(slack_receiver, caplog):
    slack_receiver.fail_with = 500
    with caplog.at_level(logging.WARNING, logger="airflow_llm_provider.notifications.slack"):
        assert post_to_slack("slack_test_webhook", "lost") is False
        assert post_to_slack("no_such_connection", "lost") is False
    assert caplog.text.count("was not delivered") == 2
    assert "no_such_connection" in caplog.text


def test_api_connection_without_channel_is_reported(slack_receiver, caplog):
    assert post_to_slack("slack_test_api", "where to?") is False
    assert "set a channel" in caplog.text
    assert slack_receiver.posts == []


def test_message_texts():
    assert budget_text("DAG nightly on 2026-03-01", spent=8.0, limit=10.0, breached=False) == (
        ":warning: LLM budget for DAG nightly on 2026-03-01 at 80%: $8.00 of $10.00."
    )
    assert "reached: 12,000 tokens spent of 10,000 tokens" in budget_text(
        "run r1", spent=12000, limit=10000, breached=True, unit="tokens"
    )
    assert deadline_text("nightly", "scheduled__2026", "09:00") == (
        ":alarm_clock: DAG *nightly* run `scheduled__2026` missed its deadline (09:00) and is still not done."
    )


def _failing_dag(tmp_path, notifier):
    from airflow.providers.common.compat.sdk import DAG

    from airflow_llm_provider.operators.cascade import CascadeOperator

    with DAG(
        dag_id=f"alert_{tmp_path.name}"[:200],
        schedule=None,
        start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
        catchup=False,
    ) as dag:
        CascadeOperator(
            task_id="summarise",
            cascade={
                "cascade_id": "weekly_summary",
                "phases": [{"name": "draft", "instructions": "Summarise."}],
            },
            llm_conn_id="llm_alerts",
            cache=None,
            on_failure_callback=notifier,
        )
    return dag


@pytest.mark.parametrize("fail_delivery", [False, True])
def test_failure_notifier_reports_cascade_phase_and_error(
    dag_runner, llm_server, airflow_conn, slack_receiver, tmp_path, fail_delivery, monkeypatch
):
    airflow_conn("llm_alerts", llm_server.connection())
    llm_server.responder = lambda request: error(400, "model overloaded: try later")
    monkeypatch.setattr(
        "airflow_llm_provider.notifications.slack._cost_so_far",
        lambda context: Spend(cost_usd=0.0123, tokens=4567, requests=3),
    )
    slack_receiver.fail_with = 500 if fail_delivery else None
    dag = _failing_dag(tmp_path, LLMFailureNotifier(slack_conn_id="slack_test_webhook"))

    result = dag_runner(dag, logical_date=pendulum.datetime(2026, 3, 12, tz="UTC"))

    assert result.state == "failed"
    assert result.task_states["summarise"] == "failed"  # the alert did not change the outcome
    (post,) = slack_receiver.posts
    text = post.text
    assert f"*{dag.dag_id}.summarise* failed" in text
    assert "Cascade: `weekly_summary`, phase `draft`" in text
    assert "model overloaded" in text
    assert "LLM cost so far: $0.0123 (4,567 tokens)" in text
