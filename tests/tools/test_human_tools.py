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
