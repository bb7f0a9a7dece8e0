"""The cost digest example DAG under dag.test, reading the ledger and posting to the Slack receiver."""

from __future__ import annotations

import datetime as dt

import pendulum

from airflow_llm_provider.costs.ledger import LedgerEntry, configured_ledger
from tests.dag_loading import load_dag


def test_digest_posts_the_days_spending(dag_runner, slack_receiver):
    from airflow_llm_provider.version_compat import AIRFLOW_V_3_0_PLUS

    # The day a manual run at 2026-05-05 covers: its own on Airflow 3, the one before on 2.x.
    day = dt.datetime(2026, 5, 5 if AIRFLOW_V_3_0_PLUS else 4, 15, tzinfo=dt.UTC)
    configured_ledger().record(
        [
            LedgerEntry(
                "digest_a", "r1", "t", -1, 1, "c", "p", "openai:gpt-4o-mini", cost_usd=0.3, recorded_at=day
            ),
            LedgerEntry(
                "digest_b", "r1", "t", -1, 1, "c", "p", "openai:gpt-4o-mini", cost_usd=0.1, recorded_at=day
            ),
            LedgerEntry(
                "digest_a",
                "r0",
                "t",
                -1,
                1,
                "c",
                "p",
                "openai:gpt-4o",
                cost_usd=9.0,
                recorded_at=day - dt.timedelta(days=1),
            ),
        ]
    )
    dag = load_dag("example_llm_cost_digest")

    result = dag_runner(
        dag,
        logical_date=pendulum.datetime(2026, 5, 5, tz="UTC"),
        conf={"slack_conn_id": "slack_test_webhook"},
    )

    assert result.state == "success"
    summary = result.xcom("digest")
    assert summary["posted"] is True
    (post,) = slack_receiver.posts
    assert "• digest_a: $0.3000 (1 calls)" in post.text
    assert "• digest_b: $0.1000 (1 calls)" in post.text
    assert "gpt-4o $9" not in post.text  # the day before is not counted
