"""The discovery example (dags/cascades/discovery_fanout.yaml): a first task finds the work at run
time, the next one fans out over it with dynamic task mapping, bounded by the plan's schema."""

from __future__ import annotations

import pendulum
import pytest

from airflow_llm_provider.testing.openai_server import structured, text
from tests.dag_loading import load_dag

DAG_ID = "example_cascade_discovery"
SUBQUESTIONS = [
    "Which workflows should run first?",
    "How are LLM connections and secrets managed?",
    "How are costs kept under control?",
]


def _kind(request) -> str:
    system = request.text_of("system")
    if system.startswith("You plan research."):
        return "plan"
    if system.startswith("Answer this sub-question"):
        return "answer"
    if "using these answers to its" in system:
        return "synthesize"
    raise AssertionError(f"unexpected request: {system[:80]!r}")


def _responder(subquestions: list[str]):
    def respond(request):
        kind = _kind(request)
        if kind == "plan":
            return structured({"subquestions": subquestions})
        if kind == "answer":
            (asked,) = [q for q in subquestions if q in request.text_of("system")]
            return text(f"ANSWER<{asked}>")
        return text("Start with one workflow, keep keys in connections, set budgets.")

    return respond


@pytest.fixture(autouse=True)
def _cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("AIRFLOW_LLM_CACHE_DIR", str(tmp_path / "cache"))


def test_discovery_dag_renders_plan_fanout_synthesize():
    dag = load_dag(DAG_ID)

    upstream = {task.task_id: sorted(task.upstream_task_ids) for task in dag.tasks}
    assert upstream == {
        "plan": [],
        "answer__items": ["plan"],
        "answer": ["answer__items"],
        "answer__results": ["answer"],
        "synthesize": ["answer__results"],
    }
    assert type(dag.get_task("answer")).__name__ == "MappedOperator"
    assert {"llm-provider", "example", "cascade"} <= set(dag.tags)
    assert dag.params["question"] == "How should a small team adopt Airflow for LLM workflows?"
    assert "offline test model" in dag.description


def test_discovery_fans_out_once_per_discovered_subquestion(dag_runner, llm_server, airflow_conn):
    airflow_conn("pydanticai_default", llm_server.connection(model="gpt-4o-mini"))
    llm_server.responder = _responder(SUBQUESTIONS)

    result = dag_runner(load_dag(DAG_ID), logical_date=pendulum.datetime(2026, 5, 1, tz="UTC"))

    assert result.state == "success", result.task_states
    kinds = [_kind(r) for r in llm_server.requests]
    assert kinds.count("plan") == 1 and kinds.count("synthesize") == 1
    answers = [r for r in llm_server.requests if _kind(r) == "answer"]
    assert len(answers) == 3
    asked = sorted(q for r in answers for q in SUBQUESTIONS if q in r.text_of("system"))
    assert asked == sorted(SUBQUESTIONS)  # one request per sub-question, none asked twice
    assert "Airflow for LLM workflows" in llm_server.requests[0].text_of("system")

    expected = [f"ANSWER<{q}>" for q in SUBQUESTIONS]
    assert result.xcom("answer__results")["output"] == expected
    (synthesize,) = [r for r in llm_server.requests if _kind(r) == "synthesize"]
    system = synthesize.text_of("system")
    assert "How should a small team adopt Airflow for LLM workflows?" in system
    positions = [system.index(answer) for answer in expected]
    assert positions == sorted(positions)  # all three answers, in the plan's order
    assert result.xcom("synthesize")["output"].startswith("Start with one workflow")


def test_a_plan_longer_than_the_bound_fails_instead_of_fanning_out(dag_runner, llm_server, airflow_conn):
    airflow_conn("pydanticai_default", llm_server.connection(model="gpt-4o-mini"))
    too_many = [f"Sub-question {n}?" for n in range(1, 7)]  # 6 > maxItems 5
    llm_server.responder = _responder(too_many)

    result = dag_runner(load_dag(DAG_ID), logical_date=pendulum.datetime(2026, 5, 2, tz="UTC"))

    assert result.state == "failed"
    assert result.task_states["plan"] == "failed"
    assert result.task_states["answer__items"] == "upstream_failed"
    assert result.task_states["synthesize"] == "upstream_failed"
    assert {_kind(r) for r in llm_server.requests} == {"plan"}  # no answer was ever requested
