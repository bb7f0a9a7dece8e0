"""A cascade that asks a human, under a real Airflow 3.3 (scheduler, api-server, dag-processor):
the task waits in ``awaiting_input`` holding no slot, the test answers through the REST API as the
UI does, and the cascade finishes with the answer, paying for no model request twice."""

from __future__ import annotations

import json
import time

import pytest

from airflow_llm_provider.testing.openai_server import text, tool_call

pytestmark = pytest.mark.e2e


@pytest.fixture
def airflow3_server(airflow_server):
    if not airflow_server.airflow3:
        pytest.skip("Airflow 2 has no human-in-the-loop (the operator refuses such cascades there)")
    return airflow_server


def _wait_for_state(server, dag_id: str, run_id: str, wanted: str, timeout: float = 180) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        (ti,) = server.task_instances(dag_id, run_id)
        if ti["state"] == wanted:
            return ti
        if ti["state"] in ("failed", "upstream_failed", "success"):
            break
        time.sleep(1)
    raise AssertionError(f"task is {ti['state']}, not {wanted}\n{server.task_log(dag_id, run_id, 'cascade')}")


def _wait_until_reported(server, dag_id: str, run_id: str, task_id: str = "cascade") -> None:
    """Answer only once the scheduler has heard that the parked run ended. Airflow 3.3.2 races an
    answer that comes first: the late executor event ("finished with state success, but the task
    instance's state attribute is queued") fails the resumed task. Humans are slower than that."""
    wanted = f"TaskInstanceKey(dag_id='{dag_id}', task_id='{task_id}', run_id='{run_id}'"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        tail = server.log_tail("scheduler", lines=2000)
        if any("Received executor event" in line and wanted in line for line in tail.splitlines()):
            return
        time.sleep(0.5)


def _hitl_path(dag_id: str, run_id: str) -> str:
    return f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/cascade/-1/hitlDetails"


def test_question_waits_without_a_slot_and_the_rest_answer_resumes_the_cascade(
    airflow3_server, llm_server, slack_receiver
):
    server = airflow3_server
    server.put_vault_secret("connection", "e2e_human_slack", **slack_receiver.webhook_connection())
    llm_server.script(
        text("Tea is a leaf."),
        tool_call("ask_human", {"question": "Is 'Tea is a leaf.' fine?", "context": "first draft"}),
        text("Shipped as the reviewer said."),
    )
    server.put_vault_secret("connection", "e2e_human_llm", **llm_server.connection())
    server.wait_for_dag("e2e_human_ask")
    server.unpause("e2e_human_ask")
    run_id = server.trigger("e2e_human_ask")

    _wait_for_state(server, "e2e_human_ask", run_id, "awaiting_input")
    pool = server.request("GET", "/pools/default_pool")
    assert pool["running_slots"] == 0 and pool["occupied_slots"] == 0, pool  # nothing holds a slot
    waiting = server.request("GET", "/dags/~/dagRuns/~/hitlDetails", params={"response_received": False})
    (detail,) = [d for d in waiting["hitl_details"] if d["task_instance"]["dag_id"] == "e2e_human_ask"]
    assert "Is 'Tea is a leaf.' fine?" in detail["subject"]
    assert "first draft" in detail["body"]
    assert detail["options"] == ["Submit"]
    assert [user["id"] for user in detail["assigned_users"]] == ["admin"]
    assert len(llm_server.requests) == 2
    # The Slack connection heard of the question, with a link to the task's Required Actions.
    (post,) = [p for p in slack_receiver.posts if "Waiting for an answer" in p.text]
    assert "Is 'Tea is a leaf.' fine?" in post.text
    assert f"/dags/e2e_human_ask/runs/{run_id}/tasks/cascade/required_actions" in post.text

    _wait_until_reported(server, "e2e_human_ask", run_id)
    server.request(
        "PATCH",
        _hitl_path("e2e_human_ask", run_id),
        json={"chosen_options": ["Submit"], "params_input": {"answer": "yes, ship it"}},
    )
    run = server.wait_for_run("e2e_human_ask", run_id)
    assert run["state"] == "success", server.task_log("e2e_human_ask", run_id, "cascade")
    result = server.xcom("e2e_human_ask", run_id, "cascade")
    assert result["final"] == "Shipped as the reviewer said."
    # Three model requests in all: the resumed try replayed the two paid before the question.
    assert len(llm_server.requests) == 3
    assert "yes, ship it" in llm_server.requests[2].text_of("tool")
    (ti,) = server.task_instances("e2e_human_ask", run_id)
    assert ti["try_number"] == 1


def test_an_unanswered_decision_times_out_as_windlass_does(airflow3_server, llm_server):
    server = airflow3_server
    decision = {
        "question": "Which region?",
        "options": [{"id": "emea", "label": "EMEA"}, {"id": "apac", "label": "APAC"}],
        # Airflow 3.3.2 races a sweep that comes before the executor reported the parked run
        # (seen with 4 s: "finished with state success, but ... is queued" fails the task).
        "timeout_seconds": 20,
    }
    llm_server.script(tool_call("request_decision", decision), text("No decision; keeping the default."))
    server.put_vault_secret("connection", "e2e_human_llm", **llm_server.connection())
    server.wait_for_dag("e2e_human_timeout")
    server.unpause("e2e_human_timeout")
    run_id = server.trigger("e2e_human_timeout")

    _wait_for_state(server, "e2e_human_timeout", run_id, "awaiting_input")
    detail = server.request("GET", _hitl_path("e2e_human_timeout", run_id))
    assert detail["options"] == ["EMEA", "APAC", "Other (write it below)"]
    # Nobody answers: the scheduler's timeout sweep resumes the task with a timeout.
    run = server.wait_for_run("e2e_human_timeout", run_id, timeout=120)
    assert run["state"] == "success", server.task_log("e2e_human_timeout", run_id, "cascade")
    assert len(llm_server.requests) == 2
    assert json.loads(llm_server.requests[1].text_of("tool")) == {"selected": None, "timeout": True}


def test_rendered_dag_asks_from_its_own_task_and_later_phases_use_the_answer(airflow3_server, llm_server):
    server, dag_id = airflow3_server, "e2e_rendered_release_note_review"
    llm_server.script(
        text("Search is faster now."),
        tool_call("ask_human", {"question": "Is the note right?"}),
        text("Reviewer: mention the 2x speed-up."),
        text("Search is now twice as fast."),
    )
    server.put_vault_secret("connection", "e2e_human_llm", **llm_server.connection())
    server.wait_for_dag(dag_id)
    server.unpause(dag_id)
    run_id = server.trigger(dag_id, conf={"change": "faster search"})

    deadline = time.monotonic() + 180
    states: dict = {}
    while time.monotonic() < deadline and states.get("review") != "awaiting_input":
        states = {ti["task_id"]: ti["state"] for ti in server.task_instances(dag_id, run_id)}
        assert "failed" not in states.values(), states
        time.sleep(1)
    assert states == {"draft": "success", "review": "awaiting_input", "finish": None}, states

    _wait_until_reported(server, dag_id, run_id, "review")
    server.request(
        "PATCH",
        f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/review/-1/hitlDetails",
        json={"chosen_options": ["Submit"], "params_input": {"answer": "mention the 2x speed-up"}},
    )
    run = server.wait_for_run(dag_id, run_id)
    assert run["state"] == "success", server.task_log(dag_id, run_id, "review")
    assert len(llm_server.requests) == 4  # draft, the asking turn, review's answer, finish
    assert "mention the 2x speed-up" in llm_server.requests[2].text_of("tool")
    # The answer reached `finish` through the run's state, carried in XCom between the tasks.
    assert "Review: mention the 2x speed-up" in llm_server.requests[3].text_of("system")
    assert server.xcom(dag_id, run_id, "finish")["output"] == "Search is now twice as fast."


def test_a_human_judges_the_soundings_through_the_rest_api(airflow3_server, llm_server):
    server, dag_id = airflow3_server, "e2e_human_judged"
    llm_server.responder = lambda request: text(f"tagline number {request.index}")
    server.put_vault_secret("connection", "e2e_human_llm", **llm_server.connection())
    server.wait_for_dag(dag_id)
    server.unpause(dag_id)
    run_id = server.trigger(dag_id)

    _wait_for_state(server, dag_id, run_id, "awaiting_input")
    detail = server.request("GET", _hitl_path(dag_id, run_id))
    assert detail["options"] == ["Attempt 1", "Attempt 2", "Attempt 3", "Reject all"]
    shown = [
        part.split("\n\n", 1)[1].split("\n\n", 1)[0].strip()
        for part in detail["body"].split("### Attempt ")[1:]
    ]
    assert sorted(shown) == ["tagline number 0", "tagline number 1", "tagline number 2"]

    _wait_until_reported(server, dag_id, run_id)
    server.request(
        "PATCH", _hitl_path(dag_id, run_id), json={"chosen_options": ["Attempt 3"], "params_input": {}}
    )
    run = server.wait_for_run(dag_id, run_id)
    assert run["state"] == "success", server.task_log(dag_id, run_id, "cascade")
    assert server.xcom(dag_id, run_id, "cascade")["final"] == shown[2]
    assert len(llm_server.requests) == 3  # the three attempts, none paid again after the pick
