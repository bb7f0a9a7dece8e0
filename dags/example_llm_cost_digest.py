"""
### LLM cost digest: yesterday's LLM spending, per DAG and per model, to Slack

Reads the cost ledger (`[llm_provider] ledger_conn_id`, or the local SQLite ledger) for the run's
day and posts a short digest through the Slack connection named in the `slack_conn_id` param
(a `slackwebhook` or `slack` connection; `channel` for the latter). Without that connection the
digest is only written to the task log. Safe to backfill: each run reads only its own day.
"""

from __future__ import annotations

import logging

import pendulum
from airflow.providers.common.compat.sdk import dag, task

log = logging.getLogger(__name__)


@dag(
    dag_id="example_llm_cost_digest",
    schedule="@daily",
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    tags=["llm-provider", "example", "costs"],
    doc_md=__doc__,
    params={"slack_conn_id": "slack_llm_alerts", "channel": ""},
)
def example_llm_cost_digest():
    @task
    def digest(**context) -> dict:
        # Imported here: DAG files are parsed often and must stay cheap.
        from airflow_llm_provider.costs.ledger import configured_ledger
        from airflow_llm_provider.notifications.slack import post_to_slack

        day = context["data_interval_start"].to_date_string()
        ledger = configured_ledger()
        per_dag = ledger.grouped(["dag_id"], since=day, until=day, order_by_cost=True)
        per_model = ledger.grouped(["model"], since=day, until=day, order_by_cost=True)
        total = round(sum(row["cost_usd"] for row in per_dag), 6)
        lines = [
            f":bar_chart: LLM spending on {day}: ${total:,.4f} over {sum(r['calls'] for r in per_dag)} calls"
        ]
        lines += [f"• {r['dag_id']}: ${r['cost_usd']:,.4f} ({r['calls']} calls)" for r in per_dag[:10]]
        if per_model:
            lines.append("Models: " + ", ".join(f"{r['model']} ${r['cost_usd']:,.4f}" for r in per_model[:5]))
        text = "\n".join(lines)
        log.info("%s", text)
        params = context["params"]
        posted = post_to_slack(params["slack_conn_id"], text, channel=params.get("channel") or None)
        return {"day": day, "total_usd": total, "dags": len(per_dag), "posted": posted}

    digest()


example_llm_cost_digest()
