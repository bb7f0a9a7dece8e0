"""Signals under a real Airflow (scheduler, triggerer, api-server/webserver): a cascade waits for a
signal (``await_signal``: the task defers, holding no slot, and a trigger polls its Variable) and
resumes when a second DAG fires it, from a cascade or a plain task, or when the REST API does; the
scripted model's request log proves no phase was paid twice. A wait nobody answers times out."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from airflow_llm_provider.testing.openai_server import text, tool_call
from tests.fixtures.airflow_server import ADMIN_USER

pytestmark = pytest.mark.e2e

CONN_ID = "e2e_signal_llm"
WAIT = "Wait for the signal"


def model(request: Any) -> Any:
    """The cascades' model, answering by the phase it is asked in: runs of several DAGs share the
    server, so replies cannot come from one queue in order."""
    system = request.text_of("system")
    tools = [m["content"] for m in request.messages if m.get("role") == "tool"]
    if "Write one line" in system:
        return text("Data check drafted.")
    if WAIT in system:
        if not tools:
            found = re.search(r"Wait for the signal (\S+) \(timeout (\S+)\)", system)
            assert found, system
            name, timeout = found.groups()
            return tool_call("await_signal", {"signal_name": name, "timeout": timeout, "description": "ETL"})
        return text(f"Signal result: {tools[-1]}")
    found = re.search(r"Fire the signal (\S+) for", system)
    assert found, system
    if not tools:
        return tool_call("list_signals", {"signal_name": found.group(1)})
    if len(tools) == 1:
        return tool_call("fire_signal", {"signal_name": found.group(1), "payload": {"rows": 42}})
    return text(f"Fired: {tools[-1]}")


def phase_requests(llm_server: Any, marker: str) -> list[Any]:
    return [r for r in llm_server.requests if marker in r.text_of("system")]


def _state(server: Any, dag_id: str, run_id: str) -> str:
    (ti,) = server.task_instances(dag_id, run_id)
    return ti["state"]


def wait_for_state(server: Any, dag_id: str, run_id: str, wanted: str, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    state = None
    while time.monotonic() < deadline:
        state = _state(server, dag_id, run_id)
        if state == wanted:
            return
        if state in ("failed", "upstream_failed", "success"):
            break
        time.sleep(1)
    raise AssertionError(f"task is {state}, not {wanted}\n{server.task_log(dag_id, run_id, 'cascade')}")


def signal_variables(server: Any, name: str) -> dict[str, dict]:
    """The signal Variables of ``name`` as the REST API lists them (key -> record)."""
    if server.airflow3:
        found = server.request(
            "GET", "/variables", params={"variable_key_prefix_pattern": f"llm_signal__{name}__", "limit": 100}
        )
    else:  # /api/v1 has no key filter
        found = server.request("GET", "/variables", params={"limit": 100})
    records = {v["key"]: json.loads(v["value"]) for v in found["variables"]}
    return {key: record for key, record in records.items() if record.get("signal_name") == name}


@pytest.fixture
def signals(airflow_server, llm_server):
    llm_server.responder = model
    airflow_server.put_vault_secret("connection", CONN_ID, **llm_server.connection())
    for dag_id in ("e2e_signal_wait", "e2e_signal_fire", "e2e_signal_fire_from_task"):
        airflow_server.wait_for_dag(dag_id)
        airflow_server.unpause(dag_id)
    return airflow_server


def start_waiting(server: Any, name: str, **conf: str) -> str:
    run_id = server.trigger("e2e_signal_wait", conf={"signal": name, **conf})
    wait_for_state(server, "e2e_signal_wait", run_id, "deferred")
    return run_id


def test_a_signal_fired_by_a_cascade_in_another_dag_resumes_the_waiting_cascade(signals, llm_server):
    server, name = signals, "e2e_ready_cascade"
    run_id = start_waiting(server, name)
    pool = server.request("GET", "/pools/default_pool")
    assert pool["running_slots"] == 0 and pool["occupied_slots"] == 0, pool  # the wait holds no slot
    ((key, record),) = signal_variables(server, name).items()
    assert key == f"llm_signal__{name}__{record['signal_id']}"
    assert record["status"] == "waiting" and record["dag_id"] == "e2e_signal_wait"
    assert record["session_id"] == f"e2e_signal_wait__{run_id}__cascade"
    assert (record["phase_name"], record["description"]) == ("wait", "ETL")
    assert len(llm_server.requests) == 2  # draft, and the wait's first turn

    fire_run = server.trigger("e2e_signal_fire", conf={"signal": name})
    fired = server.wait_for_run("e2e_signal_fire", fire_run)
    assert fired["state"] == "success", server.task_log("e2e_signal_fire", fire_run, "cascade")
    fire_requests = phase_requests(llm_server, "Fire the signal")
    listed = json.loads(fire_requests[1].messages[-1]["content"])
    assert listed["count"] == 1 and listed["signals"][0]["signal_id"] == record["signal_id"]
    assert json.loads(fire_requests[2].messages[-1]["content"]) == {
        "status": "success",
        "fired_count": 1,
        "signal_name": name,
        "_route": "success",
    }

    run = server.wait_for_run("e2e_signal_wait", run_id)
    assert run["state"] == "success", server.task_log("e2e_signal_wait", run_id, "cascade")
    result = server.xcom("e2e_signal_wait", run_id, "cascade")
    assert json.loads(result["final"].removeprefix("Signal result: ")) == {
        "status": "fired",
        "payload": {"rows": 42},
        "_route": "fired",
    }
    # Six model requests in all, none repeated: the waiter's draft and first wait turn were paid
    # once (the resumed try took them from the phase cache and the journal), the firer's three,
    # and the waiter's one turn after the signal.
    assert len(llm_server.requests) == 6
    assert len(phase_requests(llm_server, "Write one line")) == 1
    assert len(phase_requests(llm_server, WAIT)) == 2
    (ti,) = server.task_instances("e2e_signal_wait", run_id)
    assert ti["try_number"] == 1
    assert signal_variables(server, name) == {}  # the resumed task removed its record


def test_a_plain_task_fires_with_the_python_helper(signals, llm_server):
    server, name = signals, "e2e_ready_task"
    run_id = start_waiting(server, name)
    fire_run = server.trigger("e2e_signal_fire_from_task", conf={"signal": name})
    assert server.wait_for_run("e2e_signal_fire_from_task", fire_run)["state"] == "success"
    assert server.xcom("e2e_signal_fire_from_task", fire_run, "fire") == 1
    run = server.wait_for_run("e2e_signal_wait", run_id)
    assert run["state"] == "success", server.task_log("e2e_signal_wait", run_id, "cascade")
    final = server.xcom("e2e_signal_wait", run_id, "cascade")["final"]
    assert json.loads(final.removeprefix("Signal result: "))["payload"] == {"by": "a plain task"}
    assert len(llm_server.requests) == 3


def documented_rest_fire() -> str:
    """The bash block of docs/cascade-tools.md that fires a signal through the REST API."""
    doc = (Path(__file__).resolve().parents[2] / "docs" / "cascade-tools.md").read_text()
    (block,) = [b for b in re.findall(r"```bash\n(.*?)```", doc, re.S) if "variables" in b]
    return block


def test_the_rest_api_fires_by_rewriting_the_waiters_variables(signals, llm_server):
    """What docs/cascade-tools.md tells an external system to do: list the waiting Variables of
    the signal, then PATCH each with ``{"status": "fired", "payload": ...}``. On Airflow 3 the
    documented shell commands run as written; /api/v1 (Airflow 2) takes the value as text."""
    server, name = signals, "e2e_ready_rest"
    run_id = start_waiting(server, name)
    other = start_waiting(server, f"{name}_eu")  # shares the prefix: must not be fired
    if server.airflow3:
        env = {
            **os.environ,
            "AIRFLOW": server.base_url,
            "API_USER": ADMIN_USER,
            "API_PASSWORD": server.password,
            "SIGNAL": name,
            "PAYLOAD": '{"from": "curl"}',
        }
        fired = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", documented_rest_fire()],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert fired.returncode == 0, fired.stderr
        assert fired.stdout.count("fired llm_signal__") == 1, fired.stdout
    else:
        waiting = {k: r for k, r in signal_variables(server, name).items() if r["status"] == "waiting"}
        assert len(waiting) == 1
        for key in waiting:
            value = json.dumps({"status": "fired", "payload": {"from": "curl"}})
            server.request("PATCH", f"/variables/{key}", json={"key": key, "value": value})
    run = server.wait_for_run("e2e_signal_wait", run_id)
    assert run["state"] == "success", server.task_log("e2e_signal_wait", run_id, "cascade")
    final = server.xcom("e2e_signal_wait", run_id, "cascade")["final"]
    assert json.loads(final.removeprefix("Signal result: "))["payload"] == {"from": "curl"}
    assert _state(server, "e2e_signal_wait", other) == "deferred"
    # Deleting the other waiter's Variable cancels its wait: it answers as a timeout.
    ((key, _),) = signal_variables(server, f"{name}_eu").items()
    server.session.delete(f"{server.api_url}/variables/{key}", timeout=30).raise_for_status()
    run = server.wait_for_run("e2e_signal_wait", other)
    assert run["state"] == "success", server.task_log("e2e_signal_wait", other, "cascade")
    final = server.xcom("e2e_signal_wait", other, "cascade")["final"]
    assert json.loads(final.removeprefix("Signal result: "))["status"] == "timeout"
    assert len(llm_server.requests) == 6  # each waiter: draft, the wait, the turn after it


def test_a_wait_nobody_answers_times_out_as_windlass_does(signals, llm_server):
    server, name = signals, "e2e_never"
    run_id = start_waiting(server, name, timeout="8s")
    started = time.monotonic()
    run = server.wait_for_run("e2e_signal_wait", run_id, timeout=120)
    assert run["state"] == "success", server.task_log("e2e_signal_wait", run_id, "cascade")
    assert time.monotonic() - started < 60
    final = server.xcom("e2e_signal_wait", run_id, "cascade")["final"]
    assert json.loads(final.removeprefix("Signal result: ")) == {
        "status": "timeout",
        "error": f"Signal '{name}' timed out after 8s",
        "_route": "timeout",
    }
    assert len(llm_server.requests) == 3  # draft, the wait, the turn after the timeout
    assert signal_variables(server, name) == {}
