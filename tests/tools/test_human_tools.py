"""Windlass's human tools (tools/human.py) and resuming a run after a human answered (human.py,
run/journal.py); LLM phases against the scripted OpenAI-protocol server over real HTTP."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from airflow_llm_provider.cascades import load_cascade
from airflow_llm_provider.cascades.human import (
    HumanAnswer,
    HumanInputNeeded,
    RecordedAnswers,
    ScriptedAnswers,
    TerminalChannel,
)
from airflow_llm_provider.cascades.run.journal import ResponseJournal
from airflow_llm_provider.cascades.runner import RunOptions, run_cascade
from airflow_llm_provider.cascades.tools.builtin import ToolServices
from airflow_llm_provider.testing.openai_server import text, tool_call
from tests.support.models import server_models

CLI = str(Path(sys.executable).with_name("airflow-llm"))

CASCADE = {
    "cascade_id": "ask_demo",
    "inputs_schema": {"topic": "the topic"},
    "phases": [
        {"name": "draft", "instructions": "Write one line about {{ input.topic }}."},
        {
            "name": "review",
            "instructions": "Ask the human if the draft '{{ outputs.draft }}' is fine; report the answer.",
            "tackle": ["ask_human"],
        },
        {
            "name": "decide",
            "instructions": "Ask the human to pick a colour. Reviewer said: {{ state.review }}",
            "tackle": ["request_decision"],
        },
    ],
}

DECISION = {
    "question": "Which colour?",
    "options": [{"id": "red", "label": "Red"}, {"id": "blue", "label": "Blue", "description": "calm"}],
}


def script_all(server) -> None:
    server.script(
        text("Tea is a leaf."),
        tool_call("ask_human", {"question": "Is 'Tea is a leaf.' fine?", "context": "draft 1"}),
        text("The reviewer answered."),
        tool_call("request_decision", DECISION),
        text("Colour chosen."),
    )


def write_cascade(tmp_path: Path) -> Path:
    path = tmp_path / "ask.yaml"
    path.write_text(yaml.safe_dump(CASCADE))
    return path


def options(server, human, journal: ResponseJournal | None = None) -> RunOptions:
    return RunOptions(
        model_factory=server_models(server), tool_services=ToolServices(human=human), journal=journal
    )


def test_answers_reach_the_model_and_the_state(llm_server, tmp_path):
    script_all(llm_server)
    human = ScriptedAnswers({"review": "yes, ship it", "decide": "Blue"}, source="answers.yaml")
    result = run_cascade(load_cascade(write_cascade(tmp_path)), {"topic": "tea"}, options(llm_server, human))
    assert result.status == "success", result.error
    # The tool results the model got back: the human's words, then the chosen option's id.
    assert "yes, ship it" in llm_server.requests[2].text_of("tool")
    assert json.loads(llm_server.requests[4].text_of("tool")) == {"selected": "blue"}
    # Windlass keeps the answer in state under the phase's name; later prompts read it.
    assert "Reviewer said: yes, ship it" in llm_server.requests[3].text_of("system")
    assert result.final == "Colour chosen."


def test_a_question_without_an_answer_stops_the_run_and_the_resumed_run_pays_nothing_twice(
    llm_server, tmp_path
):
    cascade = load_cascade(write_cascade(tmp_path))
    script_all(llm_server)
    recorded = RecordedAnswers()
    journal = ResponseJournal()
    with pytest.raises(HumanInputNeeded) as asked:
        run_cascade(cascade, {"topic": "tea"}, options(llm_server, recorded, journal))
    request = asked.value.request
    assert (request.phase, request.kind, request.question) == ("review", "text", "Is 'Tea is a leaf.' fine?")
    assert request.context == "draft 1"
    assert len(llm_server.requests) == 2  # draft, and review's turn that asked

    # Resumed with the answer: the two paid replies come from the journal, nothing is re-sent.
    recorded.answers[request.key] = HumanAnswer(text="looks good")
    journal = ResponseJournal(journal.entries())
    with pytest.raises(HumanInputNeeded) as asked_again:
        run_cascade(cascade, {"topic": "tea"}, options(llm_server, recorded, journal))
    decision = asked_again.value.request
    assert decision.kind == "decision" and [o.id for o in decision.options] == ["red", "blue"]
    assert len(llm_server.requests) == 4  # + review's last turn and decide's first: no repeat
    assert journal.replayed == 2

    recorded.answers[decision.key] = HumanAnswer(choice="red")
    journal = ResponseJournal(journal.entries())
    result = run_cascade(cascade, {"topic": "tea"}, options(llm_server, recorded, journal))
    assert result.status == "success", result.error
    assert len(llm_server.requests) == 5
    assert journal.replayed == 4
    assert result.usage["requests"] == 1  # the resumed run counts what it paid for, only
    assert json.loads(llm_server.requests[4].text_of("tool")) == {"selected": "red"}


def test_a_timed_out_question_answers_as_windlass_does(llm_server, tmp_path):
    script_all(llm_server)
    human = RecordedAnswers()
    journal = ResponseJournal()
    cascade = load_cascade(write_cascade(tmp_path))
    with pytest.raises(HumanInputNeeded) as asked:
        run_cascade(cascade, {"topic": "tea"}, options(llm_server, human, journal))
    human.answers[asked.value.request.key] = HumanAnswer(timed_out=True)
    journal = ResponseJournal(journal.entries())
    with pytest.raises(HumanInputNeeded) as asked:
        run_cascade(cascade, {"topic": "tea"}, options(llm_server, human, journal))
    assert "[No response from human]" in llm_server.requests[2].text_of("tool")
    human.answers[asked.value.request.key] = HumanAnswer(timed_out=True)
    journal = ResponseJournal(journal.entries())
    result = run_cascade(cascade, {"topic": "tea"}, options(llm_server, human, journal))
    assert result.status == "success", result.error
    assert json.loads(llm_server.requests[-1].text_of("tool")) == {"selected": None, "timeout": True}


def test_an_answer_that_is_not_an_option_fails_clearly(llm_server, tmp_path):
    script_all(llm_server)
    human = ScriptedAnswers({"review": "ok", "decide": "green"}, source="answers.yaml")
    result = run_cascade(load_cascade(write_cascade(tmp_path)), {"topic": "tea"}, options(llm_server, human))
    # allow_custom defaults to true (Windlass): free text is a custom answer.
    assert result.status == "success", result.error
    assert json.loads(llm_server.requests[4].text_of("tool")) == {
        "selected": "custom",
        "custom_text": "green",
    }


def test_terminal_channel_reasks_until_an_option_is_given(tmp_path):
    typed = iter(["purple", "2", "blue"])
    shown: list[str] = []
    channel = TerminalChannel(read=lambda prompt: next(typed), write=shown.append)
    from airflow_llm_provider.cascades.human import HumanOption, HumanRequest

    request = HumanRequest(
        key="k", phase="p", kind="decision", question="Which?", options=(HumanOption("blue", "Blue"),)
    )
    assert channel.ask(request) == HumanAnswer(choice="blue")
    assert sum("not one of the options" in line for line in shown) == 2


def _cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [CLI, *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        stdin=subprocess.DEVNULL,
        check=False,
    )


def test_cli_run_takes_answers_from_a_file(llm_server, tmp_path):
    script_all(llm_server)
    answers = tmp_path / "answers.yaml"
    answers.write_text("review: fine by me\ndecide: red\n")
    env = {**os.environ, "AIRFLOW_CONN_PYDANTICAI_DEFAULT": json.dumps(llm_server.connection())}
    path = write_cascade(tmp_path)
    result = _cli("run", str(path), "--input", '{"topic": "tea"}', "--answers", str(answers), env=env)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["status"] == "success"
    assert "fine by me" in llm_server.requests[2].text_of("tool")


def test_cli_run_without_a_terminal_or_answers_fails_naming_the_fix(llm_server, tmp_path):
    script_all(llm_server)
    env = {**os.environ, "AIRFLOW_CONN_PYDANTICAI_DEFAULT": json.dumps(llm_server.connection())}
    result = _cli("run", str(write_cascade(tmp_path)), "--input", '{"topic": "tea"}', env=env)
    assert result.returncode == 1
    error = json.loads(result.stdout)["error"]
    assert "phase 'review'" in error and "--answers FILE" in error
    assert "Traceback" not in result.stderr


def test_cli_rejects_an_answers_file_that_is_not_a_mapping(tmp_path):
    answers = tmp_path / "answers.yaml"
    answers.write_text("- yes\n")
    result = _cli(
        "run",
        str(write_cascade(tmp_path)),
        "--input",
        '{"topic": "tea"}',
        "--answers",
        str(answers),
        env=dict(os.environ),
    )
    assert result.returncode == 2
    assert "--answers" in result.stderr and "mapping" in result.stderr


def test_operator_refuses_human_input_where_airflow_has_none():
    """Airflow 2.11 has no human-in-the-loop: the DAG fails to parse, naming the version needed."""
    from airflow.providers.common.compat.sdk import AirflowException

    from airflow_llm_provider.operators.cascade import CascadeOperator
    from airflow_llm_provider.operators.cascade_human import human_input_unsupported

    if human_input_unsupported() is None:
        CascadeOperator(task_id="asks", cascade=CASCADE)  # accepted: Airflow 3.3 parks the question
        return
    with pytest.raises(AirflowException, match=r"phases review, decide: .*needs Airflow 3\.3 or later"):
        CascadeOperator(task_id="asks", cascade=CASCADE)


def judged_cascade(tmp_path: Path, **human_eval) -> Path:
    soundings = {"factor": 3, "mutate": False, "evaluator": "human"}
    if human_eval:
        soundings["human_eval"] = human_eval
    cascade = {
        "cascade_id": "judged",
        "phases": [{"name": "tagline", "instructions": "A tagline.", "soundings": soundings}],
    }
    path = tmp_path / "judged.yaml"
    path.write_text(yaml.safe_dump(cascade))
    return path


def numbered(request):
    return text(f"tagline number {request.index}")


def _attempts(context: str) -> list[str]:
    return [part.split("\n\n", 1)[1].strip() for part in context.split("### Attempt ")[1:]]


def test_a_human_picks_the_winning_sounding_and_the_resumed_run_keeps_each_attempt(llm_server, tmp_path):
    llm_server.responder = numbered
    cascade = load_cascade(judged_cascade(tmp_path))
    recorded, journal = RecordedAnswers(), ResponseJournal()
    with pytest.raises(HumanInputNeeded) as asked:
        run_cascade(cascade, {}, options(llm_server, recorded, journal))
    request = asked.value.request
    assert [o.label for o in request.options] == ["Attempt 1", "Attempt 2", "Attempt 3", "Reject all"]
    shown = _attempts(request.context)
    assert sorted(shown) == [f"tagline number {i}" for i in range(3)]

    recorded.answers[request.key] = HumanAnswer(choice="1")  # "Attempt 2"
    journal = ResponseJournal(journal.entries())
    result = run_cascade(cascade, {}, options(llm_server, recorded, journal))
    assert result.status == "success", result.error
    assert result.final == shown[1]  # each attempt replayed its own reply: the pick is what was shown
    assert len(llm_server.requests) == 3 and journal.replayed == 3


@pytest.mark.parametrize(
    ("on_timeout", "outcome"),
    [("first", "first"), ("abort", "timed out"), ("llm_fallback", "evaluator")],
)
def test_an_unanswered_sounding_evaluation_follows_on_timeout(llm_server, tmp_path, on_timeout, outcome):
    def reply(request):
        if "best" in request.text_of("system"):  # the LLM evaluator, after the fallback
            return text("3")
        return text(f"tagline number {request.index}")

    llm_server.responder = reply
    cascade = load_cascade(judged_cascade(tmp_path, on_timeout=on_timeout, timeout_seconds=60))
    human = RecordedAnswers()
    journal = ResponseJournal()
    with pytest.raises(HumanInputNeeded) as asked:
        run_cascade(cascade, {}, options(llm_server, human, journal))
    shown = _attempts(asked.value.request.context)
    assert asked.value.request.timeout_seconds == 60
    human.answers[asked.value.request.key] = HumanAnswer(timed_out=True)
    result = run_cascade(cascade, {}, options(llm_server, human, ResponseJournal(journal.entries())))
    if outcome == "timed out":
        assert result.status == "failed" and "human evaluation of the soundings timed out" in result.error
    elif outcome == "first":
        assert result.final == shown[0]
    else:
        assert result.final == shown[2]  # the evaluator answered "3"


def test_rejecting_every_sounding_fails_the_phase(llm_server, tmp_path):
    llm_server.responder = numbered
    human = ScriptedAnswers({"tagline": "reject_all"}, source="answers.yaml")
    result = run_cascade(load_cascade(judged_cascade(tmp_path)), {}, options(llm_server, human))
    assert result.status == "failed"
    assert "rejected all sounding attempts" in result.error


def test_hybrid_shows_the_human_only_the_llm_prefiltered_attempts(llm_server, tmp_path):
    def reply(request):
        if "best 2 attempts" in request.text_of("system"):
            return text("3, 1")
        return text(f"tagline number {request.index}")

    llm_server.responder = reply
    path = tmp_path / "hybrid.yaml"
    soundings = {"factor": 3, "mutate": False, "evaluator": "hybrid", "llm_prefilter": 2}
    path.write_text(
        yaml.safe_dump(
            {"cascade_id": "h", "phases": [{"name": "t", "instructions": "x", "soundings": soundings}]}
        )
    )
    recorded = RecordedAnswers()
    with pytest.raises(HumanInputNeeded) as asked:
        run_cascade(load_cascade(path), {}, options(llm_server, recorded, ResponseJournal()))
    request = asked.value.request
    assert [o.label for o in request.options] == ["Attempt 1", "Attempt 2", "Reject all"]
    assert len(_attempts(request.context)) == 2


def test_a_tool_listed_twice_in_tackle_is_offered_once(llm_server, tmp_path):
    """Windlass's artifact_workflow_demo lists request_decision twice; it is one tool."""
    cascade = {
        "cascade_id": "twice",
        "phases": [{"name": "p", "instructions": "x", "tackle": ["ask_human", "ask_human"]}],
    }
    llm_server.script(text("done"))
    result = run_cascade(load_cascade(cascade), {}, options(llm_server, RecordedAnswers()))
    assert result.status == "success", result.error
    assert llm_server.requests[0].tool_names == ["ask_human"]
