"""``CascadeDagConfig(soundings_as_tasks=True)``: a phase's soundings as a task group (a mapped
``attempt`` task and an ``evaluate`` task), and the engine's ``run_sounding``/``judge_soundings``."""

from __future__ import annotations

from pathlib import Path

import pendulum
import pytest
import yaml

from airflow_llm_provider.cascade_dags import CascadeDagConfig, build_cascade_dag, plan_cascade
from airflow_llm_provider.cascades import load_cascade
from airflow_llm_provider.cascades.runner import PhaseFailed, RunOptions, judge_soundings, run_sounding
from airflow_llm_provider.testing.openai_server import error, structured, text
from tests.cascades.test_runner import server_models

HINT_ANGLE = "Take a different angle from the most obvious answer."
HINT_CONCISE = "Be as concise as possible."


def _cascade(**soundings) -> dict:
    return {
        "cascade_id": "soundings_dag",
        "airflow": {"params": {"topic": "rivers"}},
        "phases": [
            {
                "name": "draft",
                "instructions": "Write about {{ input.topic }}.",
                "soundings": {
                    "factor": 3,
                    "mutate": True,
                    # our hints appended to soundings 2 and 3 (no rewrite call per attempt)
                    "mutation_mode": "approach",
                    "mutations": [HINT_ANGLE, HINT_CONCISE],
                    "models": ["openai-chat:gpt-a", "openai-chat:gpt-b"],
                    "evaluator_instructions": "Pick the best draft.",
                    **soundings,
                },
            },
            {"name": "polish", "instructions": "Polish: {{ outputs.draft }}"},
        ],
    }


def _write(tmp_path: Path, body: dict) -> Path:
    path = tmp_path / "soundings.yaml"
    path.write_text(yaml.safe_dump(body, sort_keys=False))
    return path


def _config(tmp_path: Path, **kwargs) -> CascadeDagConfig:
    return CascadeDagConfig(llm_conn_id="llm_test", cache=f"dir:{tmp_path / 'cache'}", **kwargs)


def _is_evaluator(request) -> bool:
    return "final_result" in request.tool_names and "Pick the best draft." in request.text_of("system")


def _is_draft(request) -> bool:
    return request.text_of("system").startswith("Write about")


def _draft_text(request) -> str:
    """A distinct draft per sounding: the model and the mutation hint (index 0 has none)."""
    system = request.text_of("system")
    hint = system.split("\n\n", 1)[1] if "\n\n" in system else "plain"
    return f"draft {request.model} / {hint}"


def _responder(fail_concise: bool = False, fail_all: bool = False, winner: int = 2):
    def respond(request):
        if _is_evaluator(request):
            return structured({"winner": winner, "reason": "best"})
        if _is_draft(request):
            if fail_all or (fail_concise and HINT_CONCISE in request.text_of("system")):
                return error(500, "scripted outage")
            return text(_draft_text(request))
        return text("polished: " + request.text_of("system"))

    return respond


# -- the task graph -----------------------------------------------------------------------------


def test_soundings_render_as_a_group_with_a_mapped_attempt_and_an_evaluate_task(tmp_path):
    dag = build_cascade_dag(_write(tmp_path, _cascade()), _config(tmp_path, soundings_as_tasks=True))

    assert {t.task_id: set(t.upstream_task_ids) for t in dag.tasks} == {
        "draft.attempt": set(),
        "draft.evaluate": {"draft.attempt"},
        "polish": {"draft.evaluate"},
    }
    assert "draft" in dag.task_group.children
    attempt = dag.task_dict["draft.attempt"]
    assert type(attempt).__name__ == "MappedOperator"
    assert attempt.expand_input.value["sounding"] == [0, 1, 2]
    assert attempt.task_group.group_id == "draft"
    evaluate = dag.task_dict["draft.evaluate"]
    assert type(evaluate).__name__ == "CascadeSoundingsJudgeOperator"
    assert evaluate.task_group.group_id == "draft"
    assert dag.task_dict["polish"].pulls == {"draft": "draft.evaluate"}


def test_plan_keeps_templated_factors_and_the_option_off_in_one_task(tmp_path):
    spec = load_cascade(_cascade())
    assert [t.task_id for t in plan_cascade(spec).tasks] == ["draft", "polish"]
    plan = plan_cascade(spec, soundings_as_tasks=True)
    assert [(t.task_id, t.kind, t.soundings) for t in plan.tasks] == [
        ("draft.attempt", "sounding", 3),
        ("draft.evaluate", "judge", 3),
        ("polish", "phase", None),
    ]
    templated = load_cascade(_cascade(factor="{{ 3 }}"))
    assert [t.task_id for t in plan_cascade(templated, soundings_as_tasks=True).tasks] == ["draft", "polish"]


def test_option_off_renders_the_phase_as_one_task_as_before(tmp_path):
    dag = build_cascade_dag(_write(tmp_path, _cascade()), _config(tmp_path))
    assert {t.task_id: set(t.upstream_task_ids) for t in dag.tasks} == {"draft": set(), "polish": {"draft"}}
    assert type(dag.task_dict["draft"]).__name__ == "CascadePhaseOperator"
    assert dag.task_dict["polish"].pulls == {"draft": "draft"}


def test_a_route_into_a_sounding_phase_targets_its_attempt_task():
    spec = load_cascade(
        {
            "cascade_id": "routed",
            "phases": [
                {
                    "name": "classify",
                    "tool": "python:json.dumps",
                    "routing": {"a": "draft", "default": "other"},
                },
                {
                    "name": "draft",
                    "instructions": "Write.",
                    "soundings": {"factor": 2, "evaluator_instructions": "Pick."},
                },
                {"name": "other", "instructions": "Other."},
            ],
        }
    )
    plan = plan_cascade(spec, soundings_as_tasks=True)
    assert plan.task("classify__route").targets == {"draft": "draft.attempt", "other": "other"}
    assert plan.task("draft.attempt").upstream == ["classify__route"]


# -- runs ---------------------------------------------------------------------------------------


def test_attempts_run_as_mapped_tasks_and_the_evaluator_choice_flows_downstream(
    dag_runner, llm_server, airflow_conn, tmp_path
):
    airflow_conn("llm_test", llm_server.connection())
    llm_server.responder = _responder()
    dag = build_cascade_dag(_write(tmp_path, _cascade()), _config(tmp_path, soundings_as_tasks=True))

    result = dag_runner(dag, logical_date=pendulum.datetime(2026, 5, 1, tz="UTC"))

    assert result.state == "success", result.task_states
    drafts = [r for r in llm_server.requests if _is_draft(r)]
    assert len(drafts) == 3
    assert sorted(r.model for r in drafts) == ["gpt-a", "gpt-a", "gpt-b"]  # round robin a, b, a
    expected = {
        0: "draft gpt-a / plain",
        1: "draft gpt-b / Take a different angle from the most obvious answer.",
        2: f"draft gpt-a / {HINT_CONCISE}",
    }
    for index, draft in expected.items():
        assert result.xcom("draft.attempt", map_index=index)["output"] == draft
    (evaluator,) = [r for r in llm_server.requests if _is_evaluator(r)]
    assert "## Attempt 3" in evaluator.text_of("user")
    evaluated = result.xcom("draft.evaluate")
    assert evaluated["phase"] == "draft" and evaluated["output"] == expected[1] and evaluated["route"] is None
    assert evaluated["usage"]["requests"] == 4  # three drafts and the evaluator
    (polish,) = [r for r in llm_server.requests if r.text_of("system").startswith("Polish")]
    assert polish.text_of("system") == f"Polish: {expected[1]}"
    assert result.xcom("polish")["output"] == f"polished: Polish: {expected[1]}"


def test_a_failed_attempt_leaves_the_others_to_the_evaluator(dag_runner, llm_server, airflow_conn, tmp_path):
    airflow_conn("llm_test", llm_server.connection())
    llm_server.responder = _responder(fail_concise=True, winner=2)
    dag = build_cascade_dag(_write(tmp_path, _cascade()), _config(tmp_path, soundings_as_tasks=True))

    result = dag_runner(dag, logical_date=pendulum.datetime(2026, 5, 2, tz="UTC"))

    assert result.state == "success", result.task_states
    failed = result.xcom("draft.attempt", map_index=2)
    assert failed["sounding"] == 2 and "scripted outage" in failed["error"]
    (evaluator,) = [r for r in llm_server.requests if _is_evaluator(r)]
    assert "## Attempt 2" in evaluator.text_of("user") and "## Attempt 3" not in evaluator.text_of("user")
    chosen = "draft gpt-b / Take a different angle from the most obvious answer."
    assert result.xcom("draft.evaluate")["output"] == chosen
    assert result.xcom("polish")["output"] == f"polished: Polish: {chosen}"


def test_every_attempt_failing_fails_the_evaluate_task(dag_runner, llm_server, airflow_conn, tmp_path):
    airflow_conn("llm_test", llm_server.connection())
    llm_server.responder = _responder(fail_all=True)
    dag = build_cascade_dag(
        _write(tmp_path, _cascade(factor=2, models=None, mutate=False)),
        _config(tmp_path, soundings_as_tasks=True),
    )

    result = dag_runner(dag, logical_date=pendulum.datetime(2026, 5, 3, tz="UTC"))

    assert result.state == "failed"
    assert result.task_states["draft.evaluate"] == "failed"
    assert result.task_states["polish"] == "upstream_failed"
    assert not any(_is_evaluator(r) for r in llm_server.requests)


# -- the engine functions -----------------------------------------------------------------------


def test_run_sounding_and_judge_soundings_reuse_the_engine(llm_server):
    llm_server.responder = _responder()
    spec = load_cascade(_cascade())
    options = RunOptions(model_factory=server_models(llm_server))
    inputs = {"topic": "rivers"}

    outcomes = [run_sounding(spec, "draft", i, inputs, {}, options) for i in range(3)]
    assert [o.output for o in outcomes] == [
        "draft gpt-a / plain",
        "draft gpt-b / Take a different angle from the most obvious answer.",
        f"draft gpt-a / {HINT_CONCISE}",
    ]
    assert all(o.usage["requests"] == 1 for o in outcomes)

    candidates = [(2, outcomes[2].output, None), (0, outcomes[0].output, None)]
    judged = judge_soundings(spec, "draft", candidates, inputs, {}, options)
    assert judged.output == outcomes[2].output  # winner 2 of the index-ordered [0, 2]
    assert judged.usage["requests"] == 1

    alone = judge_soundings(spec, "draft", [(1, "only", None)], inputs, {}, options)
    assert alone.output == "only" and alone.usage["requests"] == 0  # no evaluator call
    with pytest.raises(PhaseFailed, match="all soundings failed"):
        judge_soundings(spec, "draft", [], inputs, {}, options)

    merged = judge_soundings(
        load_cascade(_cascade(mode="aggregate")), "draft", [(1, "B", None), (0, "A", None)], inputs
    )
    assert merged.output == "A\n\nB"


def test_the_engine_still_runs_soundings_in_one_phase(llm_server):
    from airflow_llm_provider.cascades.runner import run_cascade

    llm_server.responder = _responder(fail_concise=True)
    result = run_cascade(
        load_cascade(_cascade()), {"topic": "rivers"}, RunOptions(model_factory=server_models(llm_server))
    )

    assert result.status == "success", result.error
    chosen = "draft gpt-b / Take a different angle from the most obvious answer."
    assert result.outputs["draft"] == chosen
    assert result.final == f"polished: Polish: {chosen}"
