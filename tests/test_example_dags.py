"""The DAGs we ship in dags/: they import cleanly and run under dag.test()."""

from __future__ import annotations

import pendulum

from airflow_llm_provider.testing.openai_server import text
from tests.dag_loading import REPO_DAGS, dag_bag, load_dag


def test_dags_folder_has_no_import_errors():
    bag = dag_bag(REPO_DAGS)
    assert bag.import_errors == {}
    assert "example_llm_hello" in bag.dags
    for dag in bag.dags.values():
        assert "example" in dag.tags and dag.doc_md, dag.dag_id


def test_example_answers_from_the_configured_llm(dag_runner, llm_server, airflow_conn):
    airflow_conn("pydanticai_default", llm_server.connection(model="gpt-4o-mini"))
    llm_server.script(text("4 March 2026 is a Wednesday.", usage=(40, 9)))

    result = dag_runner(load_dag("example_llm_hello"), logical_date=pendulum.datetime(2026, 3, 4, tz="UTC"))

    assert result.state == "success"
    assert result.xcom("ask_llm") == {
        "day": "2026-03-04",
        "answer": "4 March 2026 is a Wednesday.",
        "model": "openai-chat:gpt-4o-mini",
        "synthetic": False,
        "requests": 1,
        "input_tokens": 40,
        "output_tokens": 9,
    }
    (request,) = llm_server.requests
    assert "2026-03-04" in request.text_of("user")


def test_example_without_llm_uses_the_test_model_and_marks_it(dag_runner):
    result = dag_runner(load_dag("example_llm_hello"), logical_date=pendulum.datetime(2026, 3, 5, tz="UTC"))
    assert result.state == "success"
    answer = result.xcom("ask_llm")
    assert answer["synthetic"] is True
    assert answer["model"] == "test"


def _triage_responder(request):
    from airflow_llm_provider.testing.openai_server import structured, text

    system = request.text_of("system")
    if "triage support tickets" in system:
        return structured({"category": "billing", "urgency": "high", "summary": "charged twice"})
    if "Pick the reply" in system:
        return structured({"winner": 1, "reason": "clearest"})
    return text(f"Dear customer, we are on it. The Support Team (draft {request.index})")


def test_support_triage_maps_one_cascade_per_ticket(dag_runner, llm_server, airflow_conn):
    airflow_conn("pydanticai_default", llm_server.connection(model="gpt-4o-mini"))
    llm_server.responder = _triage_responder

    result = dag_runner(load_dag("example_cascade_support_triage"))

    assert result.state == "success", result.task_states
    for map_index, customer in enumerate(["Ada", "Linus"]):
        answer = result.xcom("triage", map_index=map_index)
        assert answer["status"] == "success"
        assert answer["outputs"]["classify"]["category"] == "billing"
        assert answer["final"].startswith("Dear customer")
        assert answer["usage"]["requests"] == 5  # classify + 3 drafts + evaluator
        drafts = [r for r in llm_server.requests if f"reply to {customer}" in r.text_of("system")]
        assert len(drafts) == 3
