"""e2e: cascades that ask a human, as whole-cascade tasks: the question waits in Airflow's
human-in-the-loop (Airflow 3.3+; on older Airflow these DAGs are not defined, the operator would
refuse them)."""

from __future__ import annotations

from pathlib import Path

import pendulum
from airflow.providers.common.compat.sdk import DAG

from airflow_llm_provider.cascade_dags import CascadeDagConfig, build_cascade_dag
from airflow_llm_provider.operators.cascade import CascadeOperator
from airflow_llm_provider.operators.cascade_human import human_input_unsupported

ASK = {
    "cascade_id": "reviewed_note",
    "inputs_schema": {"topic": "what to write about"},
    "phases": [
        {"name": "draft", "instructions": "Write one line about {{ input.topic }}."},
        {
            "name": "review",
            "instructions": "Ask the human whether '{{ outputs.draft }}' is fine, then apply their answer.",
            "tackle": ["ask_human"],
        },
    ],
}

DECIDE = {
    "cascade_id": "quick_decision",
    "phases": [
        {"name": "decide", "instructions": "Ask the human to pick a region.", "tackle": ["request_decision"]}
    ],
}

JUDGED = {
    "cascade_id": "judged_tagline",
    "phases": [
        {
            "name": "tagline",
            "instructions": "Write a tagline.",
            "soundings": {"factor": 3, "mutate": False, "evaluator": "human"},
        }
    ],
}

if human_input_unsupported() is None:
    for dag_id, cascade in (
        ("e2e_human_ask", ASK),
        ("e2e_human_timeout", DECIDE),
        ("e2e_human_judged", JUDGED),
    ):
        with DAG(
            dag_id=dag_id,
            schedule=None,
            start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
            catchup=False,
            tags=["e2e"],
        ):
            CascadeOperator(
                task_id="cascade",
                cascade=cascade,
                inputs={"topic": "tea"} if cascade is ASK else {},
                llm_conn_id="e2e_human_llm",
                alert_slack_conn_id="e2e_human_slack" if cascade is ASK else None,
                human_assignees=[{"id": "admin", "name": "admin"}] if cascade is ASK else None,
            )

    # The shipped example cascade rendered as a DAG: `review` is its own human-in-the-loop task.
    e2e_human_rendered = build_cascade_dag(
        Path(__file__).parent / "cascades" / "release_note_review.yaml",
        CascadeDagConfig(dag_id_prefix="e2e_rendered_", llm_conn_id="e2e_human_llm", tags=["e2e"]),
    )
