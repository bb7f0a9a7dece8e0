"""The engine's built-in ``set_state`` (tools/state.py) against the scripted OpenAI-protocol
server: called by the model (``tackle``), by a tool phase, kept with a cached answer, and accepted
by validation."""

from __future__ import annotations

import json
from pathlib import Path

from airflow_llm_provider.cascades import load_cascade
from airflow_llm_provider.cascades.cache import LocalDirectoryCache
from airflow_llm_provider.cascades.loader import check_cascade
from airflow_llm_provider.cascades.runner import RunOptions, run_cascade
from airflow_llm_provider.testing.openai_server import text, tool_call
from tests.support.models import server_models


def options(server, **kwargs) -> RunOptions:
    return RunOptions(model_factory=server_models(server), **kwargs)


def cascade(phases: list[dict]) -> object:
    return load_cascade({"cascade_id": "state_demo", "phases": phases})


def test_the_model_sets_state_and_later_phases_render_it(llm_server):
    spec = cascade(
        [
            {"name": "judge", "instructions": "Judge the draft.", "tackle": ["set_state"]},
            {"name": "report", "instructions": "The verdict was {{ state.verdict }}."},
        ]
    )
    llm_server.script(
        tool_call("set_state", {"key": "verdict", "value": "approve"}), text("judged"), text("ok")
    )
    result = run_cascade(spec, {}, options(llm_server))
    assert result.status == "success", result.error
    first, after_tool, report = llm_server.requests
    assert first.tool_names == ["set_state"]
    tool_schema = first.body["tools"][0]["function"]["parameters"]
    assert tool_schema["required"] == ["key", "value"]
    assert "State updated: verdict = approve" in json.dumps(after_tool.messages)
    assert report.text_of("system").startswith("The verdict was approve.")
    assert result.outputs["judge"] == "judged"


def test_a_value_that_is_not_text_is_kept_as_the_model_sent_it(llm_server):
    spec = cascade(
        [
            {"name": "score", "instructions": "Score it.", "tackle": ["set_state"]},
            {"name": "use", "instructions": "Score {{ state.card.points + 1 }} of {{ state.card.of }}."},
        ]
    )
    llm_server.script(
        tool_call("set_state", {"key": "card", "value": {"points": 7, "of": 10}}), text("scored"), text("ok")
    )
    result = run_cascade(spec, {}, options(llm_server))
    assert result.status == "success", result.error
    assert llm_server.requests[2].text_of("system").startswith("Score 8 of 10.")


def test_set_state_as_a_tool_phase_and_context_from_include_state(llm_server):
    spec = cascade(
        [
            {
                "name": "remember",
                "tool": "set_state",
                "inputs": {"key": "region", "value": "{{ input.region }}"},
            },
            {"name": "other", "tool": "set_state", "inputs": {"key": "unrelated", "value": "x"}},
            {
                "name": "write",
                "instructions": "Write for {{ state.region }}.",
                "context": {"from": [{"phase": "remember", "include": ["state"]}]},
            },
        ]
    )
    llm_server.script(text("written"))
    result = run_cascade(spec, {"region": "emea"}, options(llm_server))
    assert result.status == "success", result.error
    assert result.outputs["remember"] == "State updated: region = emea"
    (request,) = llm_server.requests
    assert request.text_of("system").startswith("Write for emea.")
    user = request.text_of("user")
    assert '"region": "emea"' in user  # the state keys the remember phase set
    assert "unrelated" not in user  # set by another phase


def test_state_set_by_a_cached_phase_is_restored_on_a_retry(llm_server, tmp_path: Path):
    spec = cascade(
        [
            {"name": "judge", "instructions": "Judge.", "tackle": ["set_state"]},
            # A tool phase is never cached: it renders the state the retry restored.
            {"name": "echo", "tool": "set_state", "inputs": {"key": "seen", "value": "{{ state.verdict }}"}},
        ]
    )
    cache = LocalDirectoryCache(tmp_path / "cache")
    llm_server.script(tool_call("set_state", {"key": "verdict", "value": "reject"}), text("judged"))
    first = run_cascade(spec, {}, options(llm_server, cache=cache, cache_scope="run-1"))
    assert first.status == "success", first.error
    assert first.final == "State updated: seen = reject"
    assert len(llm_server.requests) == 2

    llm_server.requests.clear()
    retry = run_cascade(spec, {}, options(llm_server, cache=cache, cache_scope="run-1"))
    assert retry.status == "success", retry.error
    assert llm_server.requests == []  # judge answered from the cache
    assert retry.usage["cache_hits"] == 1
    assert retry.final == "State updated: seen = reject"


def test_a_registered_tool_named_set_state_is_used_instead(llm_server):
    calls: list[tuple[str, str]] = []

    def set_state(key: str, value: str) -> str:
        calls.append((key, value))
        return "mine"

    spec = cascade([{"name": "a", "tool": "set_state", "inputs": {"key": "k", "value": "v"}}])
    result = run_cascade(spec, {}, options(llm_server, tools={"set_state": set_state}))
    assert result.status == "success", result.error
    assert result.final == "mine" and calls == [("k", "v")]


def test_validation_accepts_set_state_in_tackle_and_as_a_tool(tmp_path: Path):
    path = tmp_path / "state.yaml"
    path.write_text(
        "cascade_id: s\nphases:\n"
        "  - {name: a, instructions: go, tackle: [set_state]}\n"
        "  - {name: b, tool: set_state, inputs: {key: k, value: v}}\n"
    )
    result = check_cascade(path)
    assert [issue.message for issue in result.issues] == []


def test_a_phase_reading_written_state_waits_for_the_phases_listed_before_it():
    from airflow_llm_provider.cascades.graph import phase_dependencies

    spec = cascade(
        [
            {"name": "a", "instructions": "First.", "tackle": ["set_state"]},
            {"name": "b", "instructions": "Only {{ state.output_a }}."},
            {"name": "c", "instructions": "Uses {{ state.verdict }}."},
            {"name": "d", "instructions": "Independent."},
        ]
    )
    needs = phase_dependencies(spec)
    assert needs["b"] == {"a"}  # state.output_<phase> names its phase
    assert needs["c"] == {"a", "b"}  # any earlier phase may have set `verdict`
    assert needs["d"] == set()
