"""``human_input`` and ``decision_points`` (run/human_steps.py): a human after an LLM phase's
output, with Windlass's meaning; the LLM phases against the scripted OpenAI-protocol server."""

from __future__ import annotations

import json

import pytest

from airflow_llm_provider.cascades import load_cascade
from airflow_llm_provider.cascades.human import (
    HumanAnswer,
    HumanInputNeeded,
    RecordedAnswers,
    ScriptedAnswers,
)
from airflow_llm_provider.cascades.runner import RunOptions, run_cascade
from airflow_llm_provider.cascades.tools.builtin import ToolServices
from airflow_llm_provider.testing.openai_server import text
from tests.support.models import server_models

DECISION = (
    "I cannot map the field uid.\n"
    '<decision>{"question": "How should I handle uid?", "options": ['
    '{"id": "rename", "label": "Rename to user_id"}, {"id": "fixup", "label": "Repair it"}, '
    '{"id": "stop", "label": "Stop", "action": "abort"}]}</decision>'
)


def run(server, cascade: dict, human, inputs: dict | None = None):
    options = RunOptions(model_factory=server_models(server), tool_services=ToolServices(human=human))
    return run_cascade(load_cascade(cascade), inputs or {}, options)


def state_machine(**decision_points) -> dict:
    return {
        "cascade_id": "mapper",
        "phases": [
            {
                "name": "map",
                "instructions": "Map the fields.",
                "decision_points": decision_points or {"enabled": True},
                "handoffs": ["apply", "repair"],
            },
            {
                "name": "apply",
                "instructions": "Apply. Decision: {{ state._decision_map.label }}",
                "handoffs": [],
            },
            {"name": "repair", "instructions": "Repair the field."},
        ],
    }


def test_a_decision_block_asks_and_keeps_the_choice_in_state(llm_server):
    llm_server.script(text(DECISION), text("applied"), text("repaired"))
    result = run(llm_server, state_machine(), ScriptedAnswers({"map": "rename"}, source="answers"))
    assert result.status == "success", result.error
    # No action and no routing: the route is the phase's own (here its first handoff, `apply`).
    assert [t.phase for t in result.trace][:2] == ["map", "apply"]
    assert "Decision: Rename to user_id" in llm_server.requests[1].text_of("system")


def test_decision_routing_sends_the_run_to_the_named_phase(llm_server):
    llm_server.script(text(DECISION), text("repaired"), text("applied"))
    cascade = state_machine(routing={"fixup": "repair", "_continue": "next"})
    result = run(llm_server, cascade, ScriptedAnswers({"map": "fixup"}, source="answers"))
    assert result.status == "success", result.error
    assert [t.phase for t in result.trace][:2] == ["map", "repair"]


def test_an_abort_action_fails_the_phase_naming_the_choice(llm_server):
    llm_server.script(text(DECISION))
    result = run(llm_server, state_machine(), ScriptedAnswers({"map": "Stop"}, source="answers"))
    assert result.status == "failed"
    assert "Decision aborted: Stop" in result.error


def test_the_decision_question_shows_the_text_before_the_block(llm_server):
    llm_server.script(text(DECISION))
    with pytest.raises(HumanInputNeeded) as asked:
        run(llm_server, state_machine(), RecordedAnswers())
    request = asked.value.request
    assert request.question == "How should I handle uid?"
    assert request.context == "I cannot map the field uid."
    assert [o.id for o in request.options] == ["rename", "fixup", "stop"]
    assert request.allow_custom and request.timeout_seconds == 3600


def human_input_cascade(config) -> dict:
    return {
        "cascade_id": "reviewed",
        "phases": [
            {"name": "draft", "instructions": "Draft it.", "human_input": config},
            {
                "name": "final",
                "instructions": "Finish it.",
                "context": {"from": [{"phase": "draft", "include": ["messages"]}]},
            },
        ],
    }


def test_human_input_true_asks_for_a_confirmation_and_the_answer_goes_to_history(llm_server):
    llm_server.script(text("the draft"), text("final"))
    result = run(llm_server, human_input_cascade(True), ScriptedAnswers({"draft": "yes"}, source="answers"))
    assert result.status == "success", result.error
    later = json.dumps(llm_server.requests[1].body["messages"])
    assert 'Human response: {\\"confirmed\\": true}' in later
    assert "_decision_draft" not in json.dumps(result.outputs)


def test_human_input_condition_is_a_sandboxed_expression(llm_server):
    llm_server.script(text("short"), text("final"))
    config = {"type": "text", "condition": "output | length > 100"}
    result = run(llm_server, human_input_cascade(config), RecordedAnswers())  # would raise if asked
    assert result.status == "success", result.error


@pytest.mark.parametrize(
    ("on_timeout", "status"), [("abort", "failed"), ("continue", "success"), ("default", "success")]
)
def test_human_input_timeout_follows_on_timeout(llm_server, on_timeout, status):
    llm_server.responder = lambda request: text(f"reply {request.index}")
    config = {"type": "rating", "timeout_seconds": 30, "on_timeout": on_timeout, "default_value": 3}
    recorded = RecordedAnswers()
    cascade = human_input_cascade(config)
    with pytest.raises(HumanInputNeeded) as asked:
        run(llm_server, cascade, recorded)
    assert [o.id for o in asked.value.request.options] == ["1", "2", "3", "4", "5"]
    recorded.answers[asked.value.request.key] = HumanAnswer(timed_out=True)
    result = run(llm_server, cascade, recorded)
    assert result.status == status, result.error
    if on_timeout == "default":
        assert '{\\"value\\": 3, \\"timed_out\\": true}' in json.dumps(
            llm_server.requests[-1].body["messages"]
        )


def test_human_input_and_decision_points_are_accepted_by_validate(tmp_path):
    from airflow_llm_provider.cascades.loader import check_cascade

    result = check_cascade(human_input_cascade({"type": "choice", "options": [{"label": "A", "value": "a"}]}))
    assert result.cascade is not None, result.issues
    bad = check_cascade(human_input_cascade({"type": "telepathy"}))
    assert bad.cascade is None and "human_input" in str(bad.issues[0])
