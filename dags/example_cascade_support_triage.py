"""
### Support triage cascade

Runs `cascades/support_triage.yaml` for each ticket passed in the run's params:

1. **classify**: category, urgency and summary, as structured output.
2. **draft_reply**: three drafts written in parallel (soundings); an evaluator picks the best one. A
   ward rejects drafts that still contain placeholders and asks for a retry.

One mapped task per ticket (`CascadeOperator.partial().expand()`). Token usage and cost are in each
task's XCom. The run fails without retrying if the cascade's budget ($0.25) would be exceeded.

**No LLM configured?** pydantic-ai's offline *test model* answers with synthetic text, and the task
log says so. Set `AIRFLOW_CONN_PYDANTICAI_DEFAULT` to use a real model.
"""

from __future__ import annotations

import pendulum
from airflow.providers.common.compat.sdk import DAG, Param, task

from airflow_llm_provider.operators.cascade import CascadeOperator

with DAG(
    dag_id="example_cascade_support_triage",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    tags=["llm-provider", "example", "cascade"],
    doc_md=__doc__,
    params={
        "tickets": Param(
            [
                {"customer": "Ada", "ticket": "I was charged twice for my March invoice."},
                {"customer": "Linus", "ticket": "The export button does nothing in Firefox."},
            ],
            type="array",
            description="Tickets to triage: objects with `customer` and `ticket`.",
        )
    },
) as dag:

    @task
    def tickets(**context) -> list[dict]:
        """The tickets of this run (from params), one mapped cascade each."""
        return [dict(ticket) for ticket in context["params"]["tickets"]]

    CascadeOperator.partial(
        task_id="triage",
        cascade="cascades/support_triage.yaml",
        max_active_tis_per_dag=4,
    ).expand(inputs=tickets())
