"""Windlass tools by name, routing, the Quartermaster (``tackle: manifest``), the loop guard,
cascade-level soundings, ``tool_caching`` and model ids, against the scripted OpenAI-protocol
server over real HTTP. Nothing of ours is mocked."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from airflow_llm_provider.cascades import load_cascade
from airflow_llm_provider.cascades.runner import RunOptions, run_cascade
from airflow_llm_provider.cascades.spec import DEFAULT_MAX_PHASE_VISITS, ToolCaching
from airflow_llm_provider.cascades.tool_cache import MISS, ToolCache
from airflow_llm_provider.testing.openai_server import Reply, structured, text, tool_call
from tests.support.models import server_models


def cascade(**body):
    return load_cascade({"cascade_id": "t", **body})


def options(server, **more):
    return RunOptions(model_factory=server_models(server), **more)


SUMMARIZER = """\
cascade_id: summarize_text
description: Summarize a text in one sentence.
inputs_schema:
  text: The text to summarize.
phases:
  - name: summary
    instructions: "Summarize in one sentence: {{ input.text }}"
"""


def tool_folders(tmp_path: Path) -> Path:
    """``flows/`` (the running cascade's folder) and its sibling ``tackle/`` with a tool cascade."""
    (tmp_path / "flows").mkdir()
    (tmp_path / "tackle").mkdir()
    (tmp_path / "tackle" / "summarize.yaml").write_text(SUMMARIZER)
    return tmp_path / "flows"


def tool_schema(request, name: str) -> dict:
    return next(t["function"] for t in request.body["tools"] if t["function"]["name"] == name)


# -- cascades as tools by cascade_id -------------------------------------------------------------


def test_a_cascade_on_the_tool_path_is_a_tool_by_its_cascade_id(llm_server, tmp_path):
    base = tool_folders(tmp_path)
    llm_server.script(
        tool_call("summarize_text", {"text": "the quarterly numbers"}),
        text("Numbers are up.", usage=(30, 4)),  # the child's own call
        text("Summary: Numbers are up."),
    )
    spec = cascade(phases=[{"name": "ask", "instructions": "Help.", "tackle": ["summarize_text"]}])
    result = run_cascade(spec, {}, options(llm_server, base_dir=base))

    assert result.status == "success", result.error
    assert result.final == "Summary: Numbers are up."
    first, child, last = llm_server.requests
    offered = tool_schema(first, "summarize_text")
    assert offered["description"].startswith("Summarize a text in one sentence.")
    assert offered["parameters"]["properties"]["text"]["description"] == "The text to summarize."
    assert offered["parameters"]["required"] == ["text"]
    assert child.text_of("system") == "Summarize in one sentence: the quarterly numbers"
    assert "Numbers are up." in json.dumps(last.messages)
    assert result.usage["requests"] == 3  # the child's call counts in the parent's usage


def test_a_tool_phase_runs_a_cascade_by_id_from_the_configured_tool_path(llm_server, tmp_path, monkeypatch):
    shared = tmp_path / "shared_tools"
    shared.mkdir()
    (shared / "summarize.yaml").write_text(SUMMARIZER)
    (tmp_path / "flows").mkdir()
    monkeypatch.setenv("AIRFLOW_LLM_TOOL_PATH", str(shared))
    llm_server.script(text("Short."))
    spec = cascade(phases=[{"name": "sum", "tool": "summarize_text", "inputs": {"text": "{{ input.doc }}"}}])
    result = run_cascade(spec, {"doc": "a long report"}, options(llm_server, base_dir=tmp_path / "flows"))

    assert result.status == "success", result.error
    assert result.outputs == {"sum": "Short."}
    assert llm_server.requests[0].text_of("system") == "Summarize in one sentence: a long report"


def test_an_unknown_tool_name_still_fails_the_phase(llm_server, tmp_path):
    base = tool_folders(tmp_path)
    spec = cascade(phases=[{"name": "x", "tool": "no_such_tool"}])
    result = run_cascade(spec, {}, options(llm_server, base_dir=base))
    assert result.status == "failed"
    assert "no_such_tool" in result.error
    assert llm_server.requests == []


# -- route_to --------------------------------------------------------------------------------------


def test_route_to_listed_in_tackle_is_the_engines_routing_tool(llm_server):
    llm_server.script(tool_call("route_to", {"target": "nowhere"}), tool_call("route_to", {"target": "b"}))
    llm_server.script(text("routed"), text("b done"))
    spec = cascade(
        phases=[
            {"name": "a", "instructions": "Decide.", "tackle": ["route_to"], "handoffs": ["b"]},
            {"name": "b", "instructions": "B."},
        ]
    )
    result = run_cascade(spec, {}, options(llm_server))

    assert result.status == "success", result.error
    assert llm_server.requests[0].tool_names == ["route_to"]  # one handoff: offered because listed
    refused = json.dumps(llm_server.requests[1].messages)
    assert "'nowhere' is not a valid target" in refused
    assert [t.phase for t in result.trace] == ["a", "b"]


def test_route_to_is_not_offered_for_a_single_plain_handoff_unless_listed(llm_server):
    llm_server.script(text("a done"), text("b done"))
    spec = cascade(
        phases=[{"name": "a", "instructions": "A.", "handoffs": ["b"]}, {"name": "b", "instructions": "B."}]
    )
    assert run_cascade(spec, {}, options(llm_server)).status == "success"
    assert llm_server.requests[0].tool_names == []


# -- tackle: manifest (Quartermaster) --------------------------------------------------------------


def get_weather(city: str) -> str:
    """Current weather of a city.

    Args:
        city: the city
    """
    return f"Sunny in {city}"


def lookup_stock(symbol: str) -> float:
    """Latest price of a stock symbol."""
    return 42.0


def test_manifest_selector_sees_the_catalogue_and_the_phase_gets_only_its_choice(llm_server, tmp_path):
    base = tool_folders(tmp_path)
    llm_server.script(
        structured({"tools": ["get_weather", "invented_tool"]}),  # the selector
        tool_call("get_weather", {"city": "Oslo"}),
        text("It is sunny in Oslo."),
    )
    spec = cascade(
        phases=[
            {"name": "answer", "instructions": "Tell the weather in {{ input.city }}.", "tackle": "manifest"}
        ]
    )
    tools = {"get_weather": get_weather, "lookup_stock": lookup_stock}
    result = run_cascade(spec, {"city": "Oslo"}, options(llm_server, base_dir=base, tools=tools))

    assert result.status == "success", result.error
    selector, phase_call, _ = llm_server.requests
    catalogue = selector.text_of("user")
    assert "- get_weather (function): Current weather of a city." in catalogue
    assert "- lookup_stock (function): Latest price of a stock symbol." in catalogue
    assert "- summarize_text (cascade): Summarize a text in one sentence." in catalogue
    assert "text: The text to summarize." in catalogue
    assert "Tell the weather in Oslo." in catalogue
    assert '"city": "Oslo"' in catalogue
    assert phase_call.tool_names == ["get_weather"]  # the unknown name is ignored
    assert "Sunny in Oslo" in json.dumps(llm_server.requests[2].messages)
    assert result.usage["requests"] == 3  # the selector's call is counted


def test_manifest_reads_a_text_answer_and_none_means_no_tools(llm_server):
    llm_server.script(text('I would pick ["lookup_stock"] here.'), text("42"))
    llm_server.script(text("No tool is needed: []"), text("hello"))
    tools = {"get_weather": get_weather, "lookup_stock": lookup_stock}
    spec = cascade(
        phases=[
            {"name": "a", "instructions": "Price of ACME?", "tackle": ["manifest"], "handoffs": ["b"]},
            {"name": "b", "instructions": "Say hello.", "tackle": "manifest"},
        ]
    )
    result = run_cascade(spec, {}, options(llm_server, tools=tools))
    assert result.status == "success", result.error
    assert llm_server.requests[1].tool_names == ["lookup_stock"]
    assert llm_server.requests[3].tool_names == []


def test_manifest_limit_and_full_context(llm_server):
    llm_server.script(text("Warm and dry."), structured({"tools": []}), text("ok"))
    tools = {"get_weather": get_weather, "lookup_stock": lookup_stock}
    spec = cascade(
        phases=[
            {"name": "first", "instructions": "Describe the climate.", "handoffs": ["pick"]},
            {
                "name": "pick",
                "instructions": "Check the stock price of ACME.",
                "tackle": "manifest",
                "manifest_limit": 1,
                "manifest_context": "full",
            },
        ]
    )
    result = run_cascade(spec, {}, options(llm_server, tools=tools))
    assert result.status == "success", result.error
    catalogue = llm_server.requests[1].text_of("user")
    assert "lookup_stock" in catalogue and "get_weather" not in catalogue  # the closest one only
    assert "Warm and dry." in catalogue  # full: the run's messages so far


# -- loop guard -----------------------------------------------------------------------------------


def test_a_self_loop_routes_back_three_times_then_ends(llm_server):
    calls: list[int] = []

    def poll() -> dict:
        calls.append(1)
        return {"_route": "again" if len(calls) <= 3 else "done", "n": len(calls)}

    spec = cascade(phases=[{"name": "loop", "tool": "poll", "routing": {"again": "loop", "done": "end"}}])
    result = run_cascade(spec, {}, RunOptions(tools={"poll": poll}))
    assert result.status == "success", result.error
    assert result.final == {"_route": "done", "n": 4}
    assert [t.phase for t in result.trace] == ["loop"] * 4


def test_a_runaway_loop_stops_at_the_default_visit_limit(llm_server):
    llm_server.responder = lambda request: text("again")
    spec = cascade(phases=[{"name": "spin", "instructions": "Go.", "handoffs": ["spin"]}])
    result = run_cascade(spec, {}, options(llm_server))
    assert result.status == "failed"
    assert "phase 'spin'" in result.error
    assert f"max_phase_visits={DEFAULT_MAX_PHASE_VISITS}" in result.error
    assert len(llm_server.requests) == DEFAULT_MAX_PHASE_VISITS == 10


# -- cascade-level soundings ----------------------------------------------------------------------


def test_cascade_soundings_run_the_whole_cascade_and_keep_the_judged_winner(llm_server):
    def respond(request):
        system = request.text_of("system")
        if system.startswith("Pick the best plan"):
            return text("2 - the second plan is the clearest")
        if system.startswith("Draft"):
            return text(f"draft {system.split()[-1]}")
        return text(f"polished {request.text_of('system').split(':')[-1].strip()}")

    llm_server.responder = respond
    spec = cascade(
        soundings={"factor": 3, "max_parallel": 2, "evaluator_instructions": "Pick the best plan."},
        phases=[
            {"name": "draft", "instructions": "Draft {{ sounding_index }}"},
            {"name": "polish", "instructions": "Polish: {{ outputs.draft }}"},
        ],
    )
    result = run_cascade(spec, {}, options(llm_server))

    assert result.status == "success", result.error
    assert result.final == "polished draft 1"  # the second run (sounding_index 1)
    assert result.outputs == {"draft": "draft 1", "polish": "polished draft 1"}
    judge = [r for r in llm_server.requests if r.text_of("system").startswith("Pick the best plan")]
    assert len(judge) == 1
    for n in range(3):
        assert f"## Run {n + 1}\npolished draft {n}" in judge[0].text_of("user")
    assert len(llm_server.requests) == 3 * 2 + 1
    assert result.usage["requests"] == 7
    assert [t.phase for t in result.trace] == ["draft", "polish"]


def test_cascade_reforge_hones_the_winning_run_with_whole_refined_runs(llm_server):
    """Windlass's cascade-level reforge: each step runs the whole cascade factor_per_step times
    with ``input._refinement_context`` (goal, current best, honing prompt, a strategy with
    mutate); the override judge picks each round's best, which becomes the result."""

    def respond(request):
        system = request.text_of("system")
        if system.startswith("Pick the best plan"):
            return text("1")
        if system.startswith("Judge refinements"):
            return text("2")  # the second refinement of each round
        return text(f"plan {len(llm_server.requests)}")

    llm_server.responder = respond
    spec = cascade(
        description="Plan the launch",
        soundings={
            "factor": 2,
            "evaluator_instructions": "Pick the best plan.",
            "reforge": {
                "steps": 2,
                "factor_per_step": 2,
                "honing_prompt": "Make it shorter.",
                "mutate": True,
                "evaluator_override": "Judge refinements.",
            },
        },
        phases=[{"name": "plan", "instructions": "Plan. {{ input._refinement_context | default('') }}"}],
    )
    result = run_cascade(spec, {}, options(llm_server))

    assert result.status == "success", result.error
    plans = [r for r in llm_server.requests if r.text_of("system").startswith("Plan.")]
    assert len(plans) == 2 + 2 * 2  # the soundings, then two rounds of two refined runs
    refined = [p.text_of("system") for p in plans[2:]]
    assert all(
        "Original cascade goal: Plan the launch" in text_ and "Make it shorter." in text_ for text_ in refined
    )
    assert all("Variation strategy:" in text_ for text_ in refined)
    judges = [r for r in llm_server.requests if r.text_of("system").startswith("Judge refinements")]
    assert len(judges) == 2
    # Round 2 refines round 1's winner (its second run), and the result is round 2's second run.
    assert judges[0].text_of("user").split("## Run 2\n")[1].split("\n")[0] in refined[2]
    assert result.final == judges[1].text_of("user").split("## Run 2\n")[1].split("\n")[0]


def test_cascade_soundings_aggregate_and_leave_failed_runs_out(llm_server):
    def respond(request):
        system = request.text_of("system")
        if system.startswith("Merge"):
            return text("merged")
        return text(f"idea {system.split()[-1]}")

    llm_server.responder = respond
    calls: list[int] = []

    def gate(i: int) -> str:
        calls.append(i)
        if i == 1:
            raise ValueError("broken run")
        return "ok"

    spec = cascade(
        soundings={"factor": 3, "mode": "aggregate", "aggregator_instructions": "Merge these ideas."},
        phases=[
            {"name": "check", "tool": "gate", "inputs": {"i": "{{ sounding_index }}"}, "handoffs": ["idea"]},
            {"name": "idea", "instructions": "Idea {{ sounding_index }}"},
        ],
    )
    result = run_cascade(spec, {}, options(llm_server, tools={"gate": gate}))

    assert result.status == "success", result.error
    assert result.final == "merged"
    assert sorted(calls) == [0, 1, 2]
    merge = llm_server.requests[-1]
    assert merge.text_of("system") == "Merge these ideas."
    assert "idea 0" in merge.text_of("user") and "idea 2" in merge.text_of("user")
    assert "idea 1" not in merge.text_of("user")


# -- tool_caching ---------------------------------------------------------------------------------


def test_tool_caching_answers_identical_calls_from_the_cache(llm_server):
    runs: list[str] = []
    other: list[str] = []

    def fetch(url: str) -> str:
        """Fetch a page."""
        runs.append(url)
        return f"page {url}"

    def count(url: str) -> str:
        """Not cached."""
        other.append(url)
        return "n"

    calls = [
        ("fetch", {"url": "u1"}),
        ("fetch", {"url": "u1"}),
        ("count", {"url": "u1"}),
        ("count", {"url": "u1"}),
    ]
    llm_server.script(Reply(tool_calls=calls), text("done"))
    events: list[str] = []
    spec = cascade(
        tool_caching={
            "enabled": True,
            "storage": "sqlite",
            "tools": {"fetch": {"hit_message": "fetch: cached"}},
        },
        phases=[
            {"name": "one", "tool": "fetch", "inputs": {"url": "u1"}, "handoffs": ["two"]},
            {"name": "two", "tool": "fetch", "inputs": {"url": "u1"}, "handoffs": ["ask"]},
            {"name": "ask", "instructions": "Read u1.", "tackle": ["fetch", "count"]},
        ],
    )
    tools = {"fetch": fetch, "count": count}
    result = run_cascade(spec, {}, options(llm_server, tools=tools, on_event=events.append))

    assert result.status == "success", result.error
    assert runs == ["u1"]  # two tool phases and two model calls: one real call
    assert other == ["u1", "u1"]  # a tool without a policy is never cached
    assert result.outputs["two"] == "page u1"
    assert events.count("fetch: cached") == 3
    assert any("storage 'sqlite' is kept in this run's memory" in line for line in events)
    assert "page u1" in json.dumps(llm_server.requests[1].messages)


def test_tool_cache_ttl_lru_and_keys():
    now = [0.0]
    config = ToolCaching.model_validate(
        {
            "enabled": True,
            "global_ttl": 10,
            "max_cache_size": 2,
            "tools": {"a": {}, "q": {"key": "query", "ttl": 100}, "off": {"enabled": False}},
        }
    )
    cache = ToolCache(config, clock=lambda: now[0])
    cache.put("a", {"x": 1}, "one")
    assert cache.get("a", {"x": 1}) == "one"
    now[0] = 11.0  # global_ttl applies when the policy sets no ttl
    assert cache.get("a", {"x": 1}) is MISS
    cache.put("q", {"query": "s", "page": 1}, "hits")
    assert cache.get("q", {"query": "s", "page": 2}) == "hits"  # key: the query argument only
    cache.put("a", {"x": 2}, "two")
    cache.put("a", {"x": 3}, "three")  # past max_cache_size: the least recently used goes
    assert cache.get("q", {"query": "s"}) is MISS
    assert cache.get("a", {"x": 3}) == "three"
    cache.put("off", {}, "never")
    assert cache.get("off", {}) is MISS
    assert cache.get("unlisted", {}) is MISS


# -- model ids --------------------------------------------------------------------------------------


def test_reasoning_suffix_becomes_request_settings_and_the_factory_gets_the_bare_id(llm_server):
    asked: list = []
    llm_server.responder = lambda request: text(f"from {request.model}")
    spec = cascade(
        phases=[
            {"name": "think", "instructions": "Think.", "model": "anthropic/claude-sonnet-4::high"},
            {
                "name": "many",
                "instructions": "Try.",
                "soundings": {
                    "factor": 2,
                    "models": ["openai/gpt-4o::1024", "openai/gpt-4o-mini"],
                    "mode": "aggregate",  # joined without a call: only the soundings' models answer
                },
            },
        ]
    )
    result = run_cascade(spec, {}, RunOptions(model_factory=server_models(llm_server, asked)))

    assert result.status == "success", result.error
    assert "anthropic/claude-sonnet-4::high" not in asked
    assert {"anthropic/claude-sonnet-4", "openai/gpt-4o", "openai/gpt-4o-mini"} <= set(asked)
    by_model = {}
    for request in llm_server.requests:
        by_model.setdefault(request.model, []).append(request.body.get("reasoning"))
    assert by_model["anthropic/claude-sonnet-4"] == [{"effort": "high"}]
    assert by_model["openai/gpt-4o"] == [{"max_tokens": 1024}]
    assert set(map(json.dumps, by_model["openai/gpt-4o-mini"])) == {"null"}


def test_an_unresolvable_model_fails_the_run_before_any_call(llm_server):
    good = server_models(llm_server)

    def factory(name):
        if name == "nowhere/model":
            raise ValueError("no provider serves nowhere/model")
        return good(name)

    spec = cascade(
        phases=[
            {"name": "a", "instructions": "A."},
            {
                "name": "b",
                "instructions": "B.",
                "soundings": {"factor": 2, "evaluator_model": "nowhere/model"},
            },
        ]
    )
    result = run_cascade(spec, {}, RunOptions(model_factory=factory))
    assert result.status == "failed"
    assert "phase 'b'" in result.error and "soundings.evaluator_model 'nowhere/model'" in result.error
    assert llm_server.requests == []


@pytest.fixture
def default_llm_conn(llm_server, airflow_conn):
    return airflow_conn("pydanticai_default", llm_server.connection(model="gpt-4o-mini"))


def test_llm_hook_sends_windlass_ids_with_reasoning_and_honours_model_map(
    llm_server, default_llm_conn, monkeypatch
):
    from airflow_llm_provider.hooks.llm import LLMHook

    llm_server.responder = lambda request: text("ok")
    spec = cascade(
        phases=[{"name": "think", "instructions": "Think.", "model": "anthropic/claude-sonnet-4::high"}]
    )
    hook = LLMHook(llm_conn_id=default_llm_conn)
    result = run_cascade(spec, {}, RunOptions(model_factory=hook.model_for))
    assert result.status == "success", result.error
    (request,) = llm_server.requests
    assert request.model == "anthropic/claude-sonnet-4"
    assert request.body["reasoning"] == {"effort": "high"}

    llm_server.reset()
    llm_server.responder = lambda request: text("ok")
    monkeypatch.setenv(
        "AIRFLOW__LLM_PROVIDER__MODEL_MAP", json.dumps({"anthropic/claude-sonnet-4": "openai-chat:gpt-4.1"})
    )
    mapped = run_cascade(spec, {}, RunOptions(model_factory=LLMHook(llm_conn_id=default_llm_conn).model_for))
    assert mapped.status == "success", mapped.error
    (request,) = llm_server.requests
    assert request.model == "gpt-4.1"
    assert request.body["reasoning"] == {"effort": "high"}


def test_a_cascade_with_cascade_soundings_is_not_run_phase_by_phase(llm_server):
    from airflow_llm_provider.cascades.runner import PhaseFailed, run_phase

    spec = cascade(soundings={"factor": 2}, phases=[{"name": "a", "instructions": "A."}])
    with pytest.raises(PhaseFailed, match="cascade-level soundings"):
        run_phase(spec, "a", {}, {}, options(llm_server))
    assert llm_server.requests == []
