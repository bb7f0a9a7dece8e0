"""e2e: a 4-phase cascade whose phase cache lives in PostgreSQL (the connection is kept in Vault).
The test kills the Celery worker running it during phase 3; the retry, on the other worker, must
not ask the LLM again for phases 1 and 2."""

from __future__ import annotations

import pendulum
from airflow.providers.common.compat.sdk import DAG

from airflow_llm_provider.operators.cascade import CascadeOperator

CASCADE = {
    "cascade_id": "resume_after_worker_loss",
    "phases": [
        {"name": "outline", "instructions": "[outline] Outline a note about {{ input.subject }}."},
        {"name": "draft", "instructions": "[draft] Draft from: {{ outputs.outline }}"},
        {"name": "edit", "instructions": "[edit] Edit: {{ outputs.draft }}"},
        {"name": "title", "instructions": "[title] Title for: {{ outputs.edit }}"},
    ],
}

with DAG(
    dag_id="e2e_resume_after_worker_loss",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    tags=["e2e"],
):
    CascadeOperator(
        task_id="write_note",
        cascade=CASCADE,
        inputs={"subject": "{{ dag_run.conf.get('subject', 'rain') }}"},
        llm_conn_id="e2e_resume_llm",
        cache="conn:e2e_phase_cache",
        retries=2,
        retry_delay=pendulum.duration(seconds=2),
    )
