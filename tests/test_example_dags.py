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
    from airflow_llm_provider.cascades.run.mutations import REWRITER
    from airflow_llm_provider.testing.openai_server import structured, text

    system = request.text_of("system")
    if system == REWRITER:  # soundings' `mutate` (on by default, as in Windlass) rewrites drafts 2-3
        prompt = request.text_of("user").split("## The prompt\n", 1)[1].split("\n\n## How to rewrite", 1)[0]
        return text(f"{prompt}\nOpen with a warm greeting.")
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
        assert answer["usage"]["requests"] == 7  # classify + 2 prompt rewrites + 3 drafts + evaluator
        drafts = [r for r in llm_server.requests if f"reply to {customer}" in r.text_of("system")]
        assert len(drafts) == 3


def _transcript_responder(request):
    from airflow_llm_provider.testing.openai_server import structured

    system = request.text_of("system")
    if "You analyse B2B sales calls" in system:
        return structured(
            {
                "topic": "pricing",
                "concerns": ["billing cadence"],
                "next_step": "send a quote",
                "sentiment": "positive",
            }
        )
    return structured({"score": 72, "reason": "clear next step"})


def test_transcript_insights_daily_batch(dag_runner, llm_server, airflow_conn, tmp_path, monkeypatch):
    import json

    monkeypatch.setenv("ALP_REPORTS_DIR", str(tmp_path))
    monkeypatch.setenv("AIRFLOW_LLM_CACHE_DIR", str(tmp_path / "cache"))
    airflow_conn("pydanticai_default", llm_server.connection(model="gpt-4o-mini"))
    llm_server.responder = _transcript_responder

    result = dag_runner(
        load_dag("example_transcript_insights"), logical_date=pendulum.datetime(2026, 1, 4, tz="UTC")
    )

    from airflow_llm_provider.version_compat import AIRFLOW_V_3_0_PLUS

    assert result.state == "success", result.task_states
    # A manual run's data interval: Airflow 3 starts it at the logical date (the DAG then covers
    # that day); Airflow 2 infers the schedule interval that ends there (the day before).
    day = "2026-01-04" if AIRFLOW_V_3_0_PLUS else "2026-01-03"
    assert [p.name for p in (tmp_path / "transcript_insights").iterdir()] == [f"{day}.json"]
    report = json.loads((tmp_path / "transcript_insights" / f"{day}.json").read_text())
    assert report["calls"] == 3
    assert [row["id"] for row in report["rows"]] == [f"call-{day}-{n}" for n in (1, 2, 3)]
    assert report["average_score"] == 72
    assert report["synthetic"] is False
    assert len(llm_server.requests) == 6  # 3 calls x (extract + score)
    customers = {row["customer"] for row in report["rows"]}
    extracts = [
        r.text_of("system")
        for r in llm_server.requests
        if "You analyse B2B sales calls" in r.text_of("system")
    ]
    assert len(extracts) == 3
    assert all(any(customer in text for text in extracts) for customer in customers)


def test_research_brief_is_rendered_with_parallel_phases(dag_runner, llm_server, airflow_conn):
    airflow_conn("pydanticai_default", llm_server.connection(model="gpt-4o-mini"))
    llm_server.responder = lambda request: text(f"answer to: {request.text_of('system')[:40]}")

    dag = load_dag("example_cascade_research_brief")
    upstream = {task.task_id: sorted(task.upstream_task_ids) for task in dag.tasks}
    assert upstream["benefits"] == [] and upstream["risks"] == []
    assert upstream["brief"] == ["benefits", "risks"]

    result = dag_runner(dag, conf={"topic": "district heating"})

    assert result.state == "success", result.task_states
    brief = llm_server.requests[-1].text_of("system")
    assert "district heating" in brief
    assert "answer to: List the three strongest benefits" in brief
    assert "answer to: List the three biggest risks" in brief
