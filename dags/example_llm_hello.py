"""
### LLM hello: the smallest DAG that uses airflow-llm-provider

Each run asks the LLM behind the connection `pydanticai_default` for one sentence about the run's
date and returns the answer with its token usage (see the task's XCom).

**No LLM configured?** Then pydantic-ai's offline *test model* answers: its text is synthetic, not
from a language model, and the task log says so in a WARNING. Set `AIRFLOW_CONN_PYDANTICAI_DEFAULT`
(OpenAI, Anthropic, Ollama, vLLM, ...) to use a real model, e.g.
`{"conn_type": "pydanticai", "password": "<api key>", "extra": {"model": "openai:gpt-4o-mini"}}`.

Safe to backfill: each run only depends on its own date.
"""

from __future__ import annotations

import logging

import pendulum
from airflow.providers.common.compat.sdk import dag, task

log = logging.getLogger(__name__)


@dag(
    dag_id="example_llm_hello",
    schedule="@daily",
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=3,
    tags=["llm-provider", "example"],
    doc_md=__doc__,
    default_args={"retries": 1, "retry_delay": pendulum.duration(seconds=10)},
)
def example_llm_hello():
    @task
    def ask_llm(**context) -> dict:
        # Imported here, not at the top: DAG files are parsed often and must stay cheap.
        from airflow_llm_provider.hooks.llm import LLMHook

        day = context.get("ds") or pendulum.now("UTC").to_date_string()
        hook = LLMHook()
        result = hook.run_prompt(
            f"In one sentence, tell me something worth knowing about the date {day}.",
            instructions="You are concise. Answer in one sentence.",
        )
        log.info("Answered by %s", hook.describe())
        return {"day": day, "answer": result.output, **result.summary()}

    ask_llm()


example_llm_hello()
