"""Windlass's signal tools (tools/signals.py, cascades/signals.py), the Airflow side without a server
(operators/cascade_signals.py over an in-memory Variable store) and SignalTrigger; LLM phases
against the scripted OpenAI-protocol server over real HTTP. The real deployment is
tests/e2e/test_signals.py."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from airflow_llm_provider.cascades import load_cascade
from airflow_llm_provider.cascades.human import HumanAnswer, HumanInputNeeded, HumanRequest, RecordedAnswers
from airflow_llm_provider.cascades.run.journal import ResponseJournal
from airflow_llm_provider.cascades.runner import RunOptions, run_cascade
from airflow_llm_provider.cascades.signals import LocalSignalBus, check_name, local_bus, parse_timeout
from airflow_llm_provider.cascades.tools.builtin import ToolServices
from airflow_llm_provider.testing.openai_server import text, tool_call
from tests.support.models import server_models

CLI = str(Path(sys.executable).with_name("airflow-llm"))


def waiting_cascade(tackle: list[str] | None = None) -> Any:
    return load_cascade(
        {
            "cascade_id": "waits",
            "phases": [
                {
                    "name": "wait",
                    "instructions": "Wait for the data, then report it.",
                    "tackle": tackle or ["await_signal"],
                }
            ],
        }
    )


def options(server, **services: Any) -> RunOptions:
    journal = services.pop("journal", None)
    return RunOptions(
        model_factory=server_models(server), tool_services=ToolServices(**services), journal=journal
    )


def wait_until_waiting(bus: Any, name: str, count: int = 1, timeout: float = 20) -> list[dict]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = bus.waiting(name)
        if len(found) >= count:
            return found
        time.sleep(0.02)
    raise AssertionError(f"nobody waits for {name}")


# -- Windlass's rules ------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("given", "seconds"),
    [
        ("30s", 30),
        ("5m", 300),
        ("4h", 14400),
        ("1d", 86400),
        ("2H", 7200),
        ("", 3600),
        (None, 3600),
        ("soon", 3600),
        ("30", 3600),  # Windlass: the last character is the unit; "0" is none
        ("5w", 3600),
        ("-5m", -300),  # a past deadline: times out at once
        (12, 12),  # a number, which Windlass would reject: seconds
    ],
)
def test_timeouts_read_as_windlass_reads_them(given, seconds):
    assert parse_timeout(given) == seconds


@pytest.mark.parametrize("name", ["", "a b", "x/y", "é", "a" * 129, None])
def test_signal_names_must_fit_in_a_variable_key(name):
    with pytest.raises(ValueError, match="is not allowed"):
        check_name(name)


def test_signal_tools_are_no_longer_refused():
    from airflow_llm_provider.cascades.refused import REFUSED_TOOLS
    from airflow_llm_provider.cascades.tools.builtin import builtin_names

    assert {"await_signal", "fire_signal", "list_signals"} <= builtin_names()
    assert not {"await_signal", "fire_signal", "list_signals"} & set(REFUSED_TOOLS)


# -- in one process (airflow-llm run) --------------------------------------------------------
def test_a_signal_fired_in_the_process_wakes_the_waiting_phase_with_its_payload(llm_server):
    bus = LocalSignalBus()
    llm_server.script(
        tool_call("await_signal", {"signal_name": "data_ready", "timeout": "1m", "description": "ETL"}),
        text("42 rows arrived."),
    )
    fired: list[int] = []

    def fire() -> None:
        waiting = wait_until_waiting(bus, "data_ready")
        assert waiting[0]["description"] == "ETL" and waiting[0]["phase_name"] == "wait"
        fired.append(bus.fire("data_ready", {"rows": 42}, None, "test"))

    firer = threading.Thread(target=fire)
    firer.start()
    result = run_cascade(waiting_cascade(), {}, options(llm_server, signals=bus))
    firer.join()
    assert result.status == "success", result.error
    assert fired == [1]
    assert json.loads(llm_server.requests[1].text_of("tool")) == {
        "status": "fired",
        "payload": {"rows": 42},
        "_route": "fired",
    }
    assert bus.waiting() == []


def test_without_a_bus_the_run_uses_the_process_bus(llm_server):
    llm_server.script(tool_call("await_signal", {"signal_name": "process_default"}), text("ok"))
    firer = threading.Thread(
        target=lambda: (
            wait_until_waiting(local_bus(), "process_default"),
            local_bus().fire("process_default", None, None, "test"),
        )
    )
    firer.start()
    result = run_cascade(waiting_cascade(), {}, options(llm_server))
    firer.join()
    assert result.status == "success", result.error
    assert json.loads(llm_server.requests[1].text_of("tool"))["status"] == "fired"


def test_a_wait_times_out_as_windlass_does(llm_server):
    llm_server.script(tool_call("await_signal", {"signal_name": "never", "timeout": "1s"}), text("gave up"))
    started = time.monotonic()
    result = run_cascade(waiting_cascade(), {}, options(llm_server, signals=LocalSignalBus()))
    assert result.status == "success", result.error
    assert 1 <= time.monotonic() - started < 10
    assert json.loads(llm_server.requests[1].text_of("tool")) == {
        "status": "timeout",
        "error": "Signal 'never' timed out after 1s",
        "_route": "timeout",
    }


def test_fire_signal_counts_the_waiters_of_the_session_it_names(llm_server):
    bus = LocalSignalBus()
    answers: dict[str, HumanAnswer] = {}

    def wait(session: str) -> None:
        request = HumanRequest(key=session, phase="p", kind="signal", question="go", timeout_seconds=30)
        answers[session] = bus.wait(request, session)

    waiters = [threading.Thread(target=wait, args=(s,)) for s in ("s1", "s2")]
    for waiter in waiters:
        waiter.start()
    wait_until_waiting(bus, "go", count=2)
    llm_server.script(tool_call("list_signals", {"signal_name": "go"}), text("two wait"))
    spec = load_cascade(
        {
            "cascade_id": "fires",
            "phases": [
                {
                    "name": "look",
                    "instructions": "Who waits?",
                    "tackle": ["list_signals"],
                    "handoffs": ["to_s2"],
                },
                {
                    "name": "to_s2",
                    "tool": "fire_signal",
                    "inputs": {"signal_name": "go", "payload": {"n": 1}, "session_id": "s2"},
                    "handoffs": ["to_nobody"],
                },
                {
                    "name": "to_nobody",
                    "tool": "fire_signal",
                    "inputs": {"signal_name": "go", "session_id": "x"},
                    "handoffs": ["to_all"],
                },
                {
                    "name": "to_all",
                    "tool": "fire_signal",
                    "inputs": {"signal_name": "go", "payload": {"n": 2}},
                },
            ],
        }
    )
    result = run_cascade(spec, {}, options(llm_server, signals=bus))
    for waiter in waiters:
        waiter.join()
    assert result.status == "success", result.error
    listed = json.loads(llm_server.requests[1].text_of("tool"))
    assert listed["count"] == 2
    assert {s["session_id"] for s in listed["signals"]} == {"s1", "s2"}
    assert {s["status"] for s in listed["signals"]} == {"waiting"}
    assert [result.outputs[name] for name in ("to_s2", "to_nobody", "to_all")] == [
        {"status": "success", "fired_count": 1, "signal_name": "go", "_route": "success"},
        {"status": "success", "fired_count": 0, "signal_name": "go", "_route": "no_waiters"},
        {"status": "success", "fired_count": 1, "signal_name": "go", "_route": "success"},
    ]
    assert answers == {"s2": HumanAnswer(text='{"n": 1}'), "s1": HumanAnswer(text='{"n": 2}')}


def test_cli_run_carries_a_signal_between_phases_of_the_run(llm_server, tmp_path):
    """``airflow-llm run``: no Airflow to defer to; a phase waits in a thread while a parallel
    phase fires (the fire's reply is delayed 2 s so the wait has begun)."""

    def reply(request):
        tools = [m["content"] for m in request.messages if m.get("role") == "tool"]
        if "Wait" in request.text_of("system"):
            if not tools:
                return tool_call("await_signal", {"signal_name": "cli_go", "timeout": "30s"})
            return text(tools[-1])
        if not tools:
            return tool_call("fire_signal", {"signal_name": "cli_go", "payload": {"n": 5}}, delay=2)
        return text(tools[-1])

    llm_server.responder = reply
    path = tmp_path / "pair.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "cascade_id": "pair",
                "phases": [
                    {"name": "wait", "instructions": "Wait.", "tackle": ["await_signal"]},
                    {"name": "fire", "instructions": "Fire.", "tackle": ["fire_signal"]},
                ],
            }
        )
    )
    env = {**os.environ, "AIRFLOW_CONN_PYDANTICAI_DEFAULT": json.dumps(llm_server.connection())}
    result = subprocess.run(
        [CLI, "run", str(path)], capture_output=True, text=True, timeout=120, env=env, check=False
    )
    assert result.returncode == 0, result.stderr
    outputs = json.loads(result.stdout)["outputs"]
    assert json.loads(outputs["wait"]) == {"status": "fired", "payload": {"n": 5}, "_route": "fired"}
    assert json.loads(outputs["fire"])["fired_count"] == 1


def test_a_tool_phase_routes_on_the_wait_outcome():
    spec = load_cascade(
        {
            "cascade_id": "routes",
            "phases": [
                {
                    "name": "wait",
                    "tool": "await_signal",
                    "inputs": {"signal_name": "approval", "timeout": "1s"},
                    "routing": {"fired": "go", "timeout": "stop"},
                    "handoffs": ["go", "stop"],
                },
                {"name": "go", "tool": "set_state", "inputs": {"key": "how", "value": "fired"}},
                {"name": "stop", "tool": "set_state", "inputs": {"key": "how", "value": "timed out"}},
            ],
        }
    )
    result = run_cascade(spec, {}, RunOptions(tool_services=ToolServices(signals=LocalSignalBus())))
    assert result.status == "success", result.error
    assert result.outputs["wait"]["_route"] == "timeout"
    assert "stop" in result.outputs and "go" not in result.outputs


# -- a host that defers the wait (the Airflow operators) -------------------------------------
class RecordingBus:
    """A bus that does not wait here (as the Airflow one); counts fires."""

    waits_in_process = False

    def __init__(self) -> None:
        self.fires: list[tuple[str, Any, str | None, str]] = []

    def wait(self, request, session_id):
        raise AssertionError("a deferring host never waits in the bus")

    def fire(self, signal_name, payload, session_id, source):
        self.fires.append((signal_name, payload, session_id, source))
        return 1

    def waiting(self, signal_name=None):
        return []


def test_the_wait_stops_the_run_and_the_resumed_run_pays_and_fires_nothing_twice(llm_server, tmp_path):
    """Fire in one phase, wait in the next (the usual layout): the resumed run takes the first
    phase from the phase cache and replays the waiting phase's paid reply."""
    from airflow_llm_provider.cascades.cache import open_cache

    llm_server.script(
        tool_call("fire_signal", {"signal_name": "request_review", "payload": {"doc": 7}}),
        text("Review requested."),
        tool_call("await_signal", {"signal_name": "review_done", "timeout": "2h", "description": "reviewer"}),
        text("The reviewer approved doc 7."),
    )
    cascade = load_cascade(
        {
            "cascade_id": "review_loop",
            "phases": [
                {
                    "name": "ask",
                    "instructions": "Ask for a review.",
                    "tackle": ["fire_signal"],
                    "handoffs": ["wait"],
                },
                {"name": "wait", "instructions": "Wait for the review.", "tackle": ["await_signal"]},
            ],
        }
    )
    bus, recorded, journal = RecordingBus(), RecordedAnswers(), ResponseJournal()

    def run(journal: ResponseJournal) -> Any:
        run_options = options(llm_server, human=recorded, signals=bus, journal=journal)
        run_options.cache = open_cache(f"dir:{tmp_path / 'cache'}")
        return run_cascade(cascade, {}, run_options)

    with pytest.raises(HumanInputNeeded) as asked:
        run(journal)
    request = asked.value.request
    assert (request.kind, request.question, request.context) == ("signal", "review_done", "reviewer")
    assert request.timeout_seconds == 7200 and request.phase == "wait" and request.cascade_id == "review_loop"
    assert len(llm_server.requests) == 3
    assert bus.fires == [("request_review", {"doc": 7}, None, "cascade_tool")]

    recorded.answers[request.key] = HumanAnswer(text=json.dumps({"approved": True}))
    journal = ResponseJournal(journal.entries())
    result = run(journal)
    assert result.status == "success", result.error
    assert len(llm_server.requests) == 4 and journal.replayed == 1
    assert len(bus.fires) == 1
    assert json.loads(llm_server.requests[3].text_of("tool")) == {
        "status": "fired",
        "payload": {"approved": True},
        "_route": "fired",
    }


def fire_then_wait(request) -> Any:
    """The model of a phase that fires, then waits, then reports (answers by the last tool result)."""
    tools = [m for m in request.messages if m.get("role") == "tool"]
    if not tools:
        return tool_call("fire_signal", {"signal_name": "request_review", "payload": {"doc": 7}})
    if "fired_count" in tools[-1]["content"]:
        return tool_call("await_signal", {"signal_name": "review_done"})
    return text("Reviewed: " + tools[-1]["content"])


def test_a_fire_before_the_wait_in_the_same_phase_is_not_repeated_on_resume(llm_server):
    llm_server.responder = fire_then_wait
    bus, recorded, journal = RecordingBus(), RecordedAnswers(), ResponseJournal()
    cascade = waiting_cascade(["fire_signal", "await_signal"])
    with pytest.raises(HumanInputNeeded) as asked:
        run_cascade(cascade, {}, options(llm_server, human=recorded, signals=bus, journal=journal))
    assert len(bus.fires) == 1
    recorded.answers[asked.value.request.key] = HumanAnswer(text='"approved"')
    result = run_cascade(
        cascade,
        {},
        options(llm_server, human=recorded, signals=bus, journal=ResponseJournal(journal.entries())),
    )
    assert result.status == "success", result.error
    assert len(bus.fires) == 1  # the replayed call got the recorded result
    assert result.final == 'Reviewed: {"status":"fired","payload":"approved","_route":"fired"}'


def test_a_phase_that_fires_then_waits_pays_nothing_twice(llm_server):
    llm_server.responder = fire_then_wait
    recorded, journal = RecordedAnswers(), ResponseJournal()
    cascade = waiting_cascade(["fire_signal", "await_signal"])
    with pytest.raises(HumanInputNeeded) as asked:
        run_cascade(cascade, {}, options(llm_server, human=recorded, signals=RecordingBus(), journal=journal))
    recorded.answers[asked.value.request.key] = HumanAnswer(text='"approved"')
    journal = ResponseJournal(journal.entries())
    run_cascade(cascade, {}, options(llm_server, human=recorded, signals=RecordingBus(), journal=journal))
    assert journal.replayed == 2 and len(llm_server.requests) == 3


def test_a_host_that_can_neither_wait_nor_defer_fails_the_phase_saying_so(llm_server):
    """A bus that does not wait in the process, and no channel to defer through."""
    llm_server.script(tool_call("await_signal", {"signal_name": "x"}))
    result = run_cascade(waiting_cascade(), {}, options(llm_server, signals=RecordingBus()))
    assert result.status == "failed"
    assert "waits for the signal 'x', and nothing here can wait for it" in str(result.error)


def test_a_deferred_wait_that_timed_out_answers_the_timeout(llm_server):
    llm_server.script(tool_call("await_signal", {"signal_name": "late"}), text("no signal"))
    recorded, journal = RecordedAnswers(), ResponseJournal()
    with pytest.raises(HumanInputNeeded) as asked:
        run_cascade(waiting_cascade(), {}, options(llm_server, human=recorded, journal=journal))
    assert asked.value.request.timeout_seconds == 3600  # Windlass's default "1h"
    recorded.answers[asked.value.request.key] = HumanAnswer(timed_out=True)
    journal = ResponseJournal(journal.entries())
    result = run_cascade(waiting_cascade(), {}, options(llm_server, human=recorded, journal=journal))
    assert result.status == "success", result.error
    assert json.loads(llm_server.requests[1].text_of("tool")) == {
        "status": "timeout",
        "error": "Signal 'late' timed out after 1h",
        "_route": "timeout",
    }


# -- the Airflow bus over an in-memory Variable store ----------------------------------------
@pytest.fixture
def variables(monkeypatch) -> dict[str, str]:
    """operators/cascade_signals.py's Variable access, backed by a dict."""
    from airflow_llm_provider.operators import cascade_signals

    store: dict[str, str] = {}

    def delete(key: str) -> None:
        store.pop(key, None)

    monkeypatch.setattr(cascade_signals, "read_variable", store.get)
    monkeypatch.setattr(cascade_signals, "write_variable", store.__setitem__)
    monkeypatch.setattr(cascade_signals, "delete_variable", delete)
    monkeypatch.setattr(
        cascade_signals, "variable_keys", lambda p: [k for k in list(store) if k.startswith(p)]
    )
    return store


class FakeTI:
    dag_id, run_id, task_id, map_index, try_number = "waiter_dag", "manual__1", "cascade", -1, 1


class FakeTask:
    def __init__(self) -> None:
        import logging

        self.log = logging.getLogger("fake-task")
        self.deferred: dict[str, Any] = {}

    def defer(self, **kwargs: Any) -> None:
        self.deferred = kwargs
        raise RuntimeError("deferred")


def defer(request: HumanRequest) -> tuple[FakeTask, Any]:
    from airflow_llm_provider.operators.cascade_signals import defer_for_signal

    task = FakeTask()
    with pytest.raises(RuntimeError, match="deferred"):
        defer_for_signal(task, {"ti": FakeTI()}, request, {"answers": {}, "journal": {}})
    return task, task.deferred["trigger"]


def signal_request(name: str = "data_ready", timeout: float = 60, key: str = "k/0") -> HumanRequest:
    return HumanRequest(
        key=key,
        phase="wait",
        kind="signal",
        question=name,
        context="the ETL",
        timeout_seconds=timeout,
        cascade_id="waits",
    )


def test_a_deferred_wait_registers_a_variable_and_a_fire_rewrites_it(variables):
    from airflow_llm_provider.operators.cascade_signals import fire_signal, waiting_signals
    from airflow_llm_provider.triggers.signal import SignalTrigger

    task, trigger = defer(signal_request())
    assert isinstance(trigger, SignalTrigger)
    assert task.deferred["method_name"] == "resume_after_human"
    assert task.deferred["timeout"] is None  # the trigger ends the wait, returning a timeout
    assert task.deferred["kwargs"]["pending"]["kind"] == "signal"
    (key,) = variables
    assert key == trigger.key and key.startswith("llm_signal__data_ready__sig_")
    record = json.loads(variables[key])
    assert record["status"] == "waiting" and record["session_id"] == "waiter_dag__manual__1__cascade"
    assert (record["dag_id"], record["task_id"], record["description"]) == (
        "waiter_dag",
        "cascade",
        "the ETL",
    )
    assert 59 <= trigger.timeout_at - time.time() <= 61

    # The same question of the same task instance registers under the same key (a retried try).
    defer(signal_request())
    assert list(variables) == [key]
    assert [r["signal_id"] for r in waiting_signals("data_ready")] == [record["signal_id"]]

    assert fire_signal("data_ready", {"rows": 3}, session_id="someone_else") == 0
    assert fire_signal("data_ready_2", {"rows": 3}) == 0  # a name that shares the prefix
    assert fire_signal("data_ready", {"rows": 3}) == 1
    fired = json.loads(variables[key])
    assert (fired["status"], fired["payload"], fired["source"]) == ("fired", {"rows": 3}, "airflow")
    assert fire_signal("data_ready", {"rows": 4}) == 0  # nobody waits any more: lost
    assert waiting_signals() == []


def test_names_that_share_a_prefix_are_kept_apart(variables):
    from airflow_llm_provider.operators.cascade_signals import fire_signal, waiting_signals

    defer(signal_request("a", key="k1"))
    defer(signal_request("a__b", key="k2"))
    assert [r["signal_name"] for r in waiting_signals("a")] == ["a"]
    assert len(waiting_signals()) == 2
    assert fire_signal("a") == 1
    assert [r["signal_name"] for r in waiting_signals()] == ["a__b"]


def test_records_long_past_their_timeout_are_dropped(variables):
    from airflow_llm_provider.operators.cascade_signals import GRACE_SECONDS, fire_signal

    defer(signal_request())
    ((key, raw),) = variables.items()
    stale = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=GRACE_SECONDS + 5)
    variables[key] = json.dumps({**json.loads(raw), "timeout_at": stale.isoformat()})
    assert fire_signal("data_ready") == 0
    assert variables == {}


def test_the_event_becomes_the_answer_and_the_record_goes(variables):
    from airflow_llm_provider.operators.cascade_signals import signal_answer_from_event

    request = signal_request()
    variables["k"] = "{}"
    assert signal_answer_from_event(request, {"status": "fired", "payload": [1], "key": "k"}) == HumanAnswer(
        text="[1]"
    )
    assert variables == {}
    assert signal_answer_from_event(request, {"status": "timeout", "key": "k"}).timed_out
    assert signal_answer_from_event(request, {"status": "cancelled", "key": "k"}).timed_out
    with pytest.raises(RuntimeError, match="waiting for the signal 'data_ready' failed: boom"):
        signal_answer_from_event(request, {"status": "error", "error": "boom", "key": "k"})


def test_the_airflow_bus_serves_the_tools(variables, llm_server):
    from airflow_llm_provider.operators.cascade_signals import AirflowSignalBus

    defer(signal_request("ping"))
    llm_server.script(
        tool_call("list_signals", {}),
        tool_call("fire_signal", {"signal_name": "ping", "payload": {"ok": True}}),
        text("fired"),
    )
    spec = load_cascade(
        {
            "cascade_id": "firer",
            "phases": [{"name": "fire", "instructions": "Fire.", "tackle": ["list_signals", "fire_signal"]}],
        }
    )
    result = run_cascade(spec, {}, options(llm_server, signals=AirflowSignalBus()))
    assert result.status == "success", result.error
    listed = json.loads(llm_server.requests[1].text_of("tool"))
    assert listed["count"] == 1 and listed["signals"][0]["signal_name"] == "ping"
    assert json.loads(llm_server.requests[2].messages[-1]["content"])["fired_count"] == 1
    (record,) = (json.loads(v) for v in variables.values())
    assert (record["status"], record["payload"], record["source"]) == ("fired", {"ok": True}, "cascade_tool")


# -- SignalTrigger ---------------------------------------------------------------------------
def events(trigger) -> list[dict]:
    async def collect() -> list[dict]:
        return [event.payload async for event in trigger.run()]

    return asyncio.run(collect())


def test_the_trigger_serializes_to_what_it_was_built_with():
    from airflow_llm_provider.triggers.signal import SignalTrigger

    trigger = SignalTrigger(key="llm_signal__x__sig_1", signal_name="x", timeout_at=123.5, poll_interval=2)
    path, kwargs = trigger.serialize()
    assert path == "airflow_llm_provider.triggers.signal.SignalTrigger"
    assert SignalTrigger(**kwargs).serialize() == (path, kwargs)


def test_the_trigger_fires_on_the_fired_record(variables):
    from airflow_llm_provider.triggers.signal import SignalTrigger

    key = "llm_signal__x__sig_1"
    variables[key] = json.dumps({"status": "waiting", "signal_name": "x"})

    def fire_later() -> None:
        time.sleep(0.3)
        variables[key] = json.dumps({"status": "fired", "payload": {"a": 1}, "source": "api"})

    threading.Thread(target=fire_later).start()
    trigger = SignalTrigger(key=key, signal_name="x", timeout_at=time.time() + 30, poll_interval=0.05)
    (event,) = events(trigger)
    assert event == {"status": "fired", "key": key, "payload": {"a": 1}, "fired_at": None, "source": "api"}


def test_the_trigger_times_out_and_marks_the_record(variables):
    from airflow_llm_provider.triggers.signal import SignalTrigger

    key = "llm_signal__x__sig_2"
    variables[key] = json.dumps({"status": "waiting", "signal_name": "x"})
    trigger = SignalTrigger(key=key, signal_name="x", timeout_at=time.time() + 0.2, poll_interval=0.05)
    assert events(trigger) == [{"status": "timeout", "key": key}]
    assert json.loads(variables[key])["status"] == "timeout"  # no longer fired nor listed
    assert events(trigger) == [{"status": "timeout", "key": key}]  # a restarted trigger agrees


def test_a_deleted_record_cancels_and_a_bad_one_fails(variables):
    from airflow_llm_provider.triggers.signal import SignalTrigger

    trigger = SignalTrigger(key="gone", signal_name="x", timeout_at=time.time() + 30, poll_interval=0.05)
    (event,) = events(trigger)
    assert event["status"] == "cancelled"
    variables["bad"] = "not json"
    trigger = SignalTrigger(key="bad", signal_name="x", timeout_at=time.time() + 30, poll_interval=0.05)
    (event,) = events(trigger)
    assert event["status"] == "error" and '{"status": "fired", "payload": ...}' in event["error"]


def test_the_trigger_fails_after_repeated_read_errors(monkeypatch):
    from airflow_llm_provider.operators import cascade_signals
    from airflow_llm_provider.triggers.signal import SignalTrigger

    def broken(key: str) -> str:
        raise ConnectionError("api-server down")

    monkeypatch.setattr(cascade_signals, "read_variable", broken)
    trigger = SignalTrigger(
        key="k", signal_name="x", timeout_at=time.time() + 30, poll_interval=0.01, max_errors=3
    )
    (event,) = events(trigger)
    assert event["status"] == "error" and "api-server down" in event["error"]


# -- real Variables (Airflow 2: the ORM; Airflow 3 reaches them only inside a task: e2e) -----
def test_variables_round_trip_on_airflow_2(airflow_db):
    from airflow_llm_provider.operators import cascade_signals
    from airflow_llm_provider.version_compat import AIRFLOW_V_3_0_PLUS

    if AIRFLOW_V_3_0_PLUS:
        pytest.skip("the Task SDK reaches Variables only inside a task (tests/e2e/test_signals.py)")
    defer(signal_request("orm_signal", key="orm"))
    defer(signal_request("orm_signal_2", key="orm2"))
    keys = cascade_signals.variable_keys("llm_signal__orm_signal__")
    assert len(keys) == 1 and cascade_signals.read_variable(keys[0]) is not None
    assert cascade_signals.variable_keys("llm_signal%") == []  # LIKE wildcards are literal
    assert cascade_signals.fire_signal("orm_signal", {"x": 1}) == 1
    assert json.loads(cascade_signals.read_variable(keys[0]) or "{}")["payload"] == {"x": 1}
    cascade_signals.delete_variable(keys[0])
    assert cascade_signals.read_variable(keys[0]) is None
