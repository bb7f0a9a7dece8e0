"""
### Human review of an LLM draft (Airflow 3.3+)

The cascade `cascades/release_note_review.yaml` rendered as a DAG, one task per phase. The `review`
task asks a human (Windlass's `ask_human` tool): it waits in **Browse → Required Actions** (state
`awaiting_input`, holding no worker or pool slot) until someone answers there or through
`PATCH /api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/review/-1/hitlDetails`. The answer then
goes back to the model, and `finish` rewrites the draft with it.

Trigger it with `{"change": "..."}` as the run's configuration. Without an LLM connection the
offline test model answers: its text is synthetic (the task log says so) and it calls the tool with
a synthetic question (`a`). Set `AIRFLOW_CONN_PYDANTICAI_DEFAULT` to a real model for a real one.

Airflow 2.11 has no human-in-the-loop, so this file defines no DAG there.
"""

from __future__ import annotations

from pathlib import Path

from airflow_llm_provider.cascade_dags import CascadeDagConfig, build_cascade_dag
from airflow_llm_provider.operators.cascade_human import human_input_unsupported

if human_input_unsupported() is None:
    release_note_review = build_cascade_dag(
        Path(__file__).parent / "cascades" / "release_note_review.yaml",
        CascadeDagConfig(dag_id_prefix="example_", tags=["llm-provider", "example"]),
    )
    release_note_review.doc_md = __doc__
