"""What an LLM phase sees and the cascades it starts, with Windlass's meaning: context sources,
history/lineage, sub and async cascades, memory banks, token budgets, auto context and
intra-phase masking. Against the scripted OpenAI-protocol server over real HTTP."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from airflow_llm_provider.cascades import load_cascade
from airflow_llm_provider.cascades.errors import CascadeValidationError
from airflow_llm_provider.cascades.memory import LocalMemoryStore, PostgresMemoryStore, open_memory
from airflow_llm_provider.cascades.runner import RunOptions, run_cascade
from airflow_llm_provider.testing.openai_server import structured, text, tool_call
from tests.support.models import server_models


def cascade(**body):
    return load_cascade({"cascade_id": "t", **body})


def options(server, **more):
    return RunOptions(model_factory=server_models(server), **more)


def write(path: Path, body: dict) -> Path:
    path.write_text(json.dumps(body))
    return path


# -- context.from objects -----------------------------------------------------------------------


def test_context_source_objects_output_messages_state_role_and_condition(llm_server):
    spec = cascade(
        phases=[
            {"name": "a", "instructions": "Research {{ input.topic }}.", "handoffs": ["b"]},
            {"name": "b", "instructions": "Draft.", "handoffs": ["c"]},
            {
                "name": "c",
                "instructions": "Decide.",
                "context": {
                    "include_input": False,
                    "from": [
                        {"phase": "a", "include": ["output", "messages", "images"], "as_role": "system"},
                        {"phase": "b", "include": ["state"], "condition": "{{ input.show_b }}"},
                    ],
                },
            },
        ]
    )
    llm_server.script(text("A-result"), text("B-result"), text("C1"))
    result = run_cascade(spec, {"topic": "owls", "show_b": True}, options(llm_server))
    assert result.status == "success", result.error
    last = llm_server.requests[2]
    system, user = last.text_of("system"), last.text_of("user")
    assert system.startswith("Decide.")
    assert "## Output of a\nA-result" in system
    assert "## Conversation of a\n[system] Research owls." in system
    assert "[assistant] A-result" in system
    assert "A-result" not in user  # as_role: system keeps it out of the user message
    assert '## State of b\n{\n  "output_b": "B-result"\n}' in user
    assert "owls" not in user  # include_input: false

    llm_server.requests.clear()
    llm_server.script(text("A"), text("B"), text("C2"))
    result = run_cascade(spec, {"topic": "owls", "show_b": False}, options(llm_server))
    assert result.status == "success", result.error
    assert "State of b" not in llm_server.requests[2].text_of("user")  # condition false: left out


def test_messages_filter_last_turn_and_assistant_only(llm_server):
    spec = cascade(
        phases=[
            {"name": "a", "instructions": "Look up.", "tackle": ["lookup"]},
            {
                "name": "b",
                "instructions": "Use it.",
                "context": {
                    "from": [{"phase": "a", "include": ["messages"], "messages_filter": "assistant_only"}]
                },
            },
        ]
    )
    llm_server.script(tool_call("lookup", {"q": "x"}), text("final answer"), text("done"))
    result = run_cascade(spec, {}, options(llm_server, tools={"lookup": lambda q: f"found {q}"}))
    assert result.status == "success", result.error
    user = llm_server.requests[2].text_of("user")
    assert "[assistant] [tool call] lookup" in user and "[assistant] final answer" in user
    assert "[tool]" not in user and "[user]" not in user


# -- history and lineage ----------------------------------------------------------------------------


def test_history_and_lineage_template_variables(llm_server):
    spec = cascade(
        phases=[
            {"name": "first", "instructions": "Say hi."},
            {
                "name": "second",
                "instructions": (
                    "{% for e in lineage %}{{ e.phase }}={{ e.output }};{% endfor %}"
                    "|{% for m in history %}{{ m.phase }}:{{ m.role }};{% endfor %}"
                ),
                "context": {"from": ["previous"]},
            },
        ]
    )
    llm_server.script(text("hello"), text("ok"))
    result = run_cascade(spec, {}, options(llm_server))
    assert result.status == "success", result.error
    assert llm_server.requests[1].text_of("system") == "first=hello;|first:system;first:user;first:assistant;"


# -- sub_cascades -----------------------------------------------------------------------------


def test_sub_cascade_runs_before_the_llm_turns_with_context_in_and_out(llm_server, tmp_path):
    write(
        tmp_path / "child.json",
        {
            "cascade_id": "child",
            "phases": [{"name": "inner", "instructions": "Child: {{ input.topic }} / {{ input.loud }}."}],
        },
    )
    parent = tmp_path / "parent.json"
    write(
        parent,
        {
            "cascade_id": "parent",
            "phases": [
                {
                    "name": "outer",
                    "instructions": "Parent about {{ input.topic }}.",
                    "handoffs": ["after"],
                    "sub_cascades": [
                        {"ref": "child.json", "input_map": {"loud": "{{ input.topic | upper }}"}}
                    ],
                },
                # state.get: validation checks state.output_X against the parent's own phases
                {"name": "after", "instructions": "Child said {{ state.get('output_inner') }}."},
            ],
        },
    )
    llm_server.script(text("from child"), text("from parent"), text("end"))
    result = run_cascade(load_cascade(parent), {"topic": "owls"}, options(llm_server, base_dir=tmp_path))
    assert result.status == "success", result.error
    child, outer, after = llm_server.requests
    assert child.text_of("system") == "Child: owls / OWLS."
    assert outer.text_of("system") == "Parent about owls."
    assert after.text_of("system") == "Child said from child."  # context_out merged the state
    assert result.outputs["inner"] == "from child"
    assert result.usage["requests"] == 3


def test_sub_cascade_without_context_in_or_out(llm_server, tmp_path):
    write(
        tmp_path / "child.json",
        {
            "cascade_id": "child",
            "phases": [{"name": "inner", "instructions": "[{{ input.topic }}|{{ input.x }}]"}],
        },
    )
    spec = load_cascade(
        write(
            tmp_path / "p.json",
            {
                "cascade_id": "p",
                "phases": [
                    {
                        "name": "outer",
                        "instructions": "P {{ state.get('output_inner') }}",
                        "sub_cascades": [
                            {
                                "ref": "child.json",
                                "context_in": False,
                                "context_out": False,
                                "input_map": {"x": "lit"},
                            }
                        ],
                    }
                ],
            },
        )
    )
    llm_server.script(text("c"), text("p"))
    result = run_cascade(spec, {"topic": "owls"}, options(llm_server, base_dir=tmp_path))
    assert result.status == "success", result.error
    assert llm_server.requests[0].text_of("system") == "[|lit]"
    assert "inner" not in result.outputs


# -- async_cascades ---------------------------------------------------------------------------------


def test_async_cascades_run_in_the_background_and_the_run_waits(llm_server, tmp_path):
    write(
        tmp_path / "bg.json",
        {
            "cascade_id": "bg",
            "phases": [{"name": "note", "instructions": "Background for {{ input.topic }}."}],
        },
    )
    write(
        tmp_path / "broken.json",
        {"cascade_id": "broken", "phases": [{"name": "x", "tool": "no_such_tool"}]},
    )
    spec = load_cascade(
        write(
            tmp_path / "p.json",
            {
                "cascade_id": "p",
                "phases": [
                    {
                        "name": "main",
                        "instructions": "Main.",
                        "async_cascades": [
                            {"ref": "bg.json", "trigger": "on_end"},
                            {"ref": "broken.json"},
                        ],
                    }
                ],
            },
        ),
        tools={"no_such_tool"},
    )
    llm_server.responder = lambda request: text(f"re: {request.text_of('system')}", delay=0.2)
    events: list[str] = []
    result = run_cascade(
        spec, {"topic": "owls"}, options(llm_server, base_dir=tmp_path, on_event=events.append)
    )
    assert result.status == "success", result.error
    assert result.final == "re: Main."
    systems = [r.text_of("system") for r in llm_server.requests]
    assert systems == ["Main.", "Background for owls."]  # on_end: after the phase
    assert result.usage["requests"] == 2  # the background call counts
    assert any("background cascade broken.json failed (ignored)" in e for e in events)
    assert any("background cascade bg: done" in e for e in events)


# -- memory -------------------------------------------------------------------------------------------


def _memory_cascade():
    return cascade(
        memory="customers",
        phases=[{"name": "chat", "instructions": "Talk.", "tackle": ["customers"]}],
    )


def _two_runs(llm_server, store):
    llm_server.script(text("Noted: the customer's favourite colour is teal."))
    first = run_cascade(_memory_cascade(), {}, options(llm_server, memory=store))
    assert first.status == "success", first.error
    llm_server.requests.clear()
    llm_server.script(tool_call("customers", {"query": "favourite colour"}), text("It is teal."))
    second = run_cascade(_memory_cascade(), {}, options(llm_server, memory=store))
    assert second.status == "success", second.error
    assert "customers" in llm_server.requests[0].tool_names
    tool_answer = [m for m in llm_server.requests[1].messages if m.get("role") == "tool"]
    assert tool_answer and "favourite colour is teal" in tool_answer[0]["content"]


def test_memory_bank_carries_over_between_runs_local(llm_server, tmp_path):
    _two_runs(llm_server, LocalMemoryStore(tmp_path / "mem"))


def test_memory_bank_carries_over_between_runs_postgres(llm_server, postgres):
    store = open_memory(postgres.uri)
    assert isinstance(store, PostgresMemoryStore)
    _two_runs(llm_server, store)
    with postgres.connect() as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM llm_memory WHERE bank = 'customers'")
        assert cur.fetchone()[0] >= 4  # both runs' messages
    store.close()


def test_memory_bank_name_is_a_known_tool_for_validation(tmp_path):
    path = write(
        tmp_path / "m.json",
        {
            "cascade_id": "m",
            "memory": "notes",
            "phases": [{"name": "p", "instructions": "x", "tackle": ["notes"]}],
        },
    )
    assert load_cascade(path).memory == "notes"


# -- token_budget --------------------------------------------------------------------------------------


def _budget_cascade(strategy: str, **extra):
    return cascade(
        token_budget={"max_total": 120, "reserve_for_output": 20, "strategy": strategy, **extra},
        phases=[
            {"name": "a", "instructions": "A.", "handoffs": ["b"]},  # sequential: scripted order
            {"name": "b", "instructions": "B.", "handoffs": ["c"]},
            {"name": "c", "instructions": "C.", "context": {"from": ["all"], "include_input": False}},
        ],
    )


def test_token_budget_sliding_window_drops_the_oldest_blocks(llm_server):
    llm_server.script(text("alpha " * 60), text("beta " * 30), text("ok"))
    events: list[str] = []
    result = run_cascade(_budget_cascade("sliding_window"), {}, options(llm_server, on_event=events.append))
    assert result.status == "success", result.error
    user = llm_server.requests[2].text_of("user")
    assert "## Output of b" in user and "alpha" not in user
    assert any("sliding_window dropped 1 block(s)" in e for e in events)


def test_token_budget_fail_strategy_fails_the_phase(llm_server):
    llm_server.script(text("alpha " * 60), text("beta " * 30))
    result = run_cascade(_budget_cascade("fail"), {}, options(llm_server))
    assert result.status == "failed"
    assert "phase 'c'" in result.error and "token_budget" in result.error
    assert len(llm_server.requests) == 2  # c never called the model


def test_token_budget_summarize_asks_the_model_for_a_summary(llm_server):
    llm_server.script(text("alpha " * 60), text("beta " * 30), text("alpha was long"), text("ok"))
    result = run_cascade(_budget_cascade("summarize"), {}, options(llm_server))
    assert result.status == "success", result.error
    summarizer, final = llm_server.requests[2], llm_server.requests[3]
    assert "alpha alpha" in summarizer.text_of("user")
    assert "## Summary of earlier context\nalpha was long" in final.text_of("user")
    assert result.usage["requests"] == 4


def test_token_budget_phase_override(llm_server):
    spec = _budget_cascade("fail", phase_overrides={"c": 10000})
    llm_server.script(text("alpha " * 60), text("beta " * 30), text("ok"))
    result = run_cascade(spec, {}, options(llm_server))
    assert result.status == "success", result.error
    assert "alpha" in llm_server.requests[2].text_of("user")


# -- context.mode: auto ------------------------------------------------------------------------------


def _auto_cascade(strategy: str, notes: int = 2, max_messages: int = 1):
    phases = [
        {"name": f"n{i}", "instructions": f"Note {i}.", "handoffs": [f"n{i + 1}"]} for i in range(notes)
    ]
    phases[-1]["handoffs"] = ["write"]  # sequential: replies come in script order
    phases.append(
        {
            "name": "write",
            "instructions": "Write about volcano eruptions.",
            "context": {
                "mode": "auto",
                "anchors": {"from_phases": [], "include": []},
                "selection": {"strategy": strategy, "max_messages": max_messages},
            },
        }
    )
    return cascade(phases=phases)


def test_auto_context_heuristic_picks_by_keywords(llm_server):
    llm_server.script(text("Zebras graze on savannas."), text("Volcano eruptions spread ash."), text("ok"))
    result = run_cascade(_auto_cascade("heuristic"), {}, options(llm_server))
    assert result.status == "success", result.error
    user = llm_server.requests[2].text_of("user")
    assert "Earlier message (assistant in n1)\nVolcano eruptions spread ash." in user
    assert "Zebras" not in user


def test_auto_context_anchors_are_always_included(llm_server):
    spec = cascade(
        phases=[
            {"name": "a", "instructions": "A."},
            {
                "name": "b",
                "instructions": "B.",
                "context": {"mode": "auto", "selection": {"strategy": "heuristic"}},
            },
        ]
    )
    llm_server.script(text("unrelated words"), text("ok"))
    result = run_cascade(spec, {"q": 1}, options(llm_server))
    assert result.status == "success", result.error
    user = llm_server.requests[1].text_of("user")
    assert "## Input\n" in user and "## Output of a\nunrelated words" in user


def test_auto_context_hybrid_lets_a_cheap_call_pick(llm_server):
    facts = {"Note 0.": "lava", "Note 1.": "ash", "Note 2.": "moss", "Note 3.": "rock"}

    def respond(request):
        user = request.text_of("user")
        if "Earlier messages, by id" in user:
            ident = re.search(r"\[(\w{8})\] assistant in n2", user).group(1)
            return structured({"selected": [ident]})
        if request.text_of("system") in facts:
            return text("fact: " + facts[request.text_of("system")])
        return text("written")

    llm_server.responder = respond
    result = run_cascade(_auto_cascade("hybrid", notes=4, max_messages=10), {}, options(llm_server))
    assert result.status == "success", result.error
    picker, final = llm_server.requests[4], llm_server.requests[5]
    assert "Earlier messages, by id" in picker.text_of("user")
    assert "Earlier message (assistant in n2)\nfact: moss" in final.text_of("user")
    assert "lava" not in final.text_of("user")
    assert result.usage["requests"] == 6


def test_semantic_selection_is_refused_by_name():
    with pytest.raises(CascadeValidationError, match="semantic"):
        _auto_cascade("semantic")


# -- intra_context --------------------------------------------------------------------------------


def test_intra_context_masks_old_tool_results(llm_server):
    spec = cascade(
        phases=[
            {
                "name": "dig",
                "instructions": "Dig.",
                "tackle": ["lookup"],
                "intra_context": {"mask_observations_after": 1, "min_masked_size": 50},
            }
        ]
    )
    llm_server.script(tool_call("lookup", {"q": "one"}), tool_call("lookup", {"q": "two"}), text("done"))
    result = run_cascade(spec, {}, options(llm_server, tools={"lookup": lambda q: f"{q}: " + "data " * 30}))
    assert result.status == "success", result.error
    tools_seen = [m["content"] for m in llm_server.requests[2].messages if m.get("role") == "tool"]
    assert tools_seen[0].startswith("[lookup result hidden:")
    assert tools_seen[1].startswith("two: data")
    # without intra_context both results go out whole
    llm_server.requests.clear()
    plain = cascade(phases=[{**spec.phases[0].model_dump(exclude={"intra_context"}, exclude_unset=True)}])
    llm_server.script(tool_call("lookup", {"q": "one"}), tool_call("lookup", {"q": "two"}), text("done"))
    run_cascade(plain, {}, options(llm_server, tools={"lookup": lambda q: f"{q}: " + "data " * 30}))
    assert all("hidden" not in (m.get("content") or "") for m in llm_server.requests[2].messages)
