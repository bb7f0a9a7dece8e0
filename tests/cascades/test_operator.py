"""CascadeOperator under dag.test() on both Airflow lines, against the scripted server."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pendulum
import pytest

from airflow_llm_provider.cascades import CascadeValidationError
from airflow_llm_provider.operators.cascade import CascadeOperator
from airflow_llm_provider.testing.openai_server import text

CASCADE = """\
cascade_id: daily_note
phases:
  - name: draft
    instructions: "Write a note for {{ ds }} about {{ input.topic }}."
  - name: publish
    tool: python:tests.cascades.test_operator.publish
    inputs:
      note: "{{ outputs.draft }}"
      flag: "{{ input.flag }}"
  - name: title
    instructions: "Title for: {{ outputs.publish.note }}"
"""


def publish(note: str, flag: str) -> dict:
    """Fails once while the flag file exists: an injected failure after an LLM phase."""
    marker = Path(flag)
    if marker.exists():
        marker.unlink()
        raise OSError("object store unavailable")
    return {"note": note}


def _dag(tmp_path: Path, **operator_kwargs):
    from airflow.providers.common.compat.sdk import DAG

    (tmp_path / "daily_note.yaml").write_text(CASCADE)
    with DAG(
        dag_id=f"cascade_op_{tmp_path.name}"[:200],
        schedule=None,
        start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
        catchup=False,
    ) as dag:
        CascadeOperator(
            task_id="run",
            cascade=str(tmp_path / "daily_note.yaml"),
            llm_conn_id="llm_test",
            cache=f"dir:{tmp_path / 'cache'}",
            **operator_kwargs,
        )
    return dag


def test_runs_a_cascade_with_airflow_templates(dag_runner, llm_server, airflow_conn, tmp_path):
    airflow_conn("llm_test", llm_server.connection(model="gpt-4o-mini"))
    llm_server.script(text("Markets were calm.", usage=(50, 5)), text("Calm Markets", usage=(20, 3)))
    dag = _dag(
        tmp_path,
        inputs={"topic": "{{ params.topic }}", "flag": str(tmp_path / "none")},
        params={"topic": "markets"},
    )

    result = dag_runner(dag, logical_date=pendulum.datetime(2026, 3, 9, tz="UTC"))

    assert result.state == "success"
    xcom = result.xcom("run")
    assert xcom["status"] == "success"
    assert xcom["final"] == "Calm Markets"
    assert xcom["outputs"]["publish"] == {"note": "Markets were calm."}
    assert xcom["usage"]["requests"] == 2
    assert xcom["usage"]["input_tokens"] == 70
    assert xcom["usage"]["model"] == "openai-chat:gpt-4o-mini"
    assert llm_server.requests[0].text_of("system") == "Write a note for 2026-03-09 about markets."


def test_task_retry_resumes_after_the_last_finished_phase(dag_runner, llm_server, airflow_conn, tmp_path):
    airflow_conn("llm_test", llm_server.connection())
    llm_server.responder = lambda request: text(f"answer: {request.text_of('system')[:30]}")
    flag = tmp_path / "fail-once"
    flag.write_text("x")
    dag = _dag(
        tmp_path, inputs={"topic": "rates", "flag": str(flag)}, retries=1, retry_delay=timedelta(seconds=0)
    )

    result = dag_runner(dag, logical_date=pendulum.datetime(2026, 3, 10, tz="UTC"))

    assert result.state == "success"
    assert not flag.exists()  # the first try did fail in `publish`
    # draft was paid once: the retry took it from the phase cache, then asked only for the title.
    assert len(llm_server.requests) == 2
    assert result.xcom("run")["usage"]["cache_hits"] == 1


def test_budget_stop_fails_without_retrying(dag_runner, llm_server, airflow_conn, tmp_path):
    airflow_conn("llm_test", llm_server.connection())
    llm_server.responder = lambda request: text("x", usage=(5000, 10))
    dag = _dag(
        tmp_path,
        inputs={"topic": "t", "flag": str(tmp_path / "none")},
        budget={"max_tokens": 5015},
        retries=3,
        retry_delay=timedelta(seconds=0),
    )

    result = dag_runner(dag, logical_date=pendulum.datetime(2026, 3, 11, tz="UTC"))

    assert result.state == "failed"
    assert result.task_states["run"] == "failed"  # not up_for_retry: a budget stop is final
    assert len(llm_server.requests) == 1


def test_broken_cascade_is_a_parse_time_error(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("cascade_id: x\nphases:\n  - name: a\n    instructions: hi\n    handoffs: [nowhere]\n")
    with pytest.raises(
        CascadeValidationError, match=r"bad\.yaml:5: phases\[0\]\.handoffs\[0\]: unknown phase"
    ):
        CascadeOperator(task_id="t", cascade=str(bad))


def test_cascade_body_is_not_an_airflow_template_field():
    assert "cascade" not in CascadeOperator.template_fields
    assert "inputs" in CascadeOperator.template_fields
