"""@task.cascade, registered through the provider's task-decorators, on both Airflow lines."""

from __future__ import annotations

import pendulum

from airflow_llm_provider.testing.openai_server import text

CASCADE = """\
cascade_id: shout
phases:
  - name: answer
    instructions: "Reply to {{ input.name }}: {{ input.message }}"
"""


def test_task_cascade_is_registered_and_runs(dag_runner, llm_server, airflow_conn, tmp_path):
    from airflow.providers.common.compat.sdk import DAG, task

    (tmp_path / "shout.yaml").write_text(CASCADE)
    airflow_conn("pydanticai_default", llm_server.connection())
    llm_server.script(text("Hello Ada!"))

    with DAG("decorated_cascade", schedule=None, start_date=pendulum.datetime(2026, 1, 1, tz="UTC")) as dag:

        @task.cascade(cascade=str(tmp_path / "shout.yaml"), cache=None)
        def reply(name: str) -> dict:
            # Data with braces must reach the engine as data, not as a template.
            return {"name": name, "message": "{{ not a template }}"}

        reply("Ada")

    result = dag_runner(dag, logical_date=pendulum.datetime(2026, 3, 1, tz="UTC"))

    assert result.state == "success"
    assert result.xcom("reply")["final"] == "Hello Ada!"
    assert llm_server.requests[0].text_of("system") == "Reply to Ada: {{ not a template }}"


def test_decorated_function_must_return_a_dict(dag_runner, tmp_path):
    from airflow.providers.common.compat.sdk import DAG, task

    (tmp_path / "shout.yaml").write_text(CASCADE)
    with DAG(
        "decorated_cascade_bad", schedule=None, start_date=pendulum.datetime(2026, 1, 1, tz="UTC")
    ) as dag:

        @task.cascade(cascade=str(tmp_path / "shout.yaml"), cache=None)
        def reply() -> str:
            return "not a dict"

        reply()

    result = dag_runner(dag, logical_date=pendulum.datetime(2026, 3, 2, tz="UTC"))
    assert result.state == "failed"


def test_no_name_clash_with_common_ai():
    from airflow.providers.common.ai.get_provider_info import get_provider_info as common_ai_info

    from airflow_llm_provider.get_provider_info import get_provider_info

    ours = {d["name"] for d in get_provider_info()["task-decorators"]}
    theirs = {d["name"] for d in common_ai_info().get("task-decorators", [])}
    assert ours == {"cascade"}
    assert not ours & theirs
