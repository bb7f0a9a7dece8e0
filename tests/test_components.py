"""Each test-bed component does the real thing: if the component misbehaved, these would fail."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


def test_postgres_through_an_airflow_connection(postgres, airflow_conn):
    from airflow.providers.postgres.hooks.postgres import PostgresHook

    conn_id = airflow_conn("pg_test", postgres.airflow_connection())
    hook = PostgresHook(postgres_conn_id=conn_id)
    hook.run("CREATE TABLE ledger (id serial PRIMARY KEY, cost numeric(12, 6))")
    hook.insert_rows("ledger", [(0.25,), (0.5,)], target_fields=["cost"])
    assert hook.get_first("SELECT current_database(), sum(cost) FROM ledger") == (postgres.dbname, 0.75)


def test_postgres_databases_are_isolated(postgres):
    with postgres.connect() as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'")
        assert cur.fetchone() == (0,)


def test_vault_serves_kv_and_audits_every_request(vault):
    client = vault.client()
    before = vault.request_count("secret/")
    client.secrets.kv.v2.create_or_update_secret(path="connections/x", secret={"conn_uri": "postgres://h/db"})
    read = client.secrets.kv.v2.read_secret_version(path="connections/x", raise_on_deleted_version=True)
    assert read["data"]["data"] == {"conn_uri": "postgres://h/db"}
    assert vault.request_count("secret/") - before == 2
    assert vault.request_count("secret/data/connections/x", operation="read") >= 1


def test_vault_rejects_a_wrong_token(vault):
    import hvac

    with pytest.raises(hvac.exceptions.Forbidden):
        vault.client(token="not-the-token").secrets.kv.v2.read_secret_version(path="anything")


def test_slack_webhook_connection_reaches_the_receiver(slack_receiver):
    from airflow.providers.slack.hooks.slack_webhook import SlackWebhookHook

    SlackWebhookHook(slack_webhook_conn_id="slack_test_webhook").send(text="budget 80% used")
    (post,) = slack_receiver.posts
    assert post.path == "/services/T000/B000/XXXX"
    assert post.text == "budget 80% used"


def test_slack_api_connection_reaches_the_receiver(slack_receiver):
    from airflow.providers.slack.hooks.slack import SlackHook

    SlackHook(slack_conn_id="slack_test_api").call("chat.postMessage", json={"channel": "#llm", "text": "hi"})
    (post,) = slack_receiver.posts
    assert post.path == "/api/chat.postMessage"
    assert post.headers["authorization"] == "Bearer xoxb-local-test"
    assert post.body == {"channel": "#llm", "text": "hi"}


def test_slack_delivery_failure_is_visible(slack_receiver):
    from airflow.providers.slack.hooks.slack_webhook import SlackWebhookHook

    slack_receiver.fail_with = 500
    with pytest.raises(Exception, match="Status Code: 500"):  # AirflowException; its module differs by line
        SlackWebhookHook(slack_webhook_conn_id="slack_test_webhook").send(text="x")
    assert len(slack_receiver.posts) == 1


def test_lineage_events_from_a_real_dags_test(lineage_events, tmp_path):
    """`airflow dags test` with OpenLineage's file transport emits START and COMPLETE for our task."""
    import os

    from tests.fixtures.airflow_server import clean_airflow_env

    env = clean_airflow_env()
    env.update(
        {
            "AIRFLOW_HOME": str(tmp_path),
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{tmp_path}/airflow.db",
            "AIRFLOW__CORE__DAGS_FOLDER": os.environ["AIRFLOW__CORE__DAGS_FOLDER"],
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            **lineage_events.env,
        }
    )
    airflow = [sys.executable, "-m", "airflow"]
    subprocess.run([*airflow, "db", "migrate"], env=env, check=True, capture_output=True, timeout=300)
    result = subprocess.run(
        [*airflow, "dags", "test", "example_llm_hello", "2026-03-04"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    task_events = lineage_events.for_job("example_llm_hello.ask_llm")
    assert [e["eventType"] for e in task_events] == ["START", "COMPLETE"]
    assert all(e["job"]["namespace"] == "alp-tests" for e in task_events)
    assert task_events[0]["run"]["runId"] == task_events[1]["run"]["runId"]
    assert "COMPLETE" in lineage_events.event_types("example_llm_hello")
    assert "sk-" not in json.dumps(lineage_events.events())
