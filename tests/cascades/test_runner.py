"""The cascade engine against the scripted OpenAI-protocol server (real HTTP) and pydantic-ai's
FunctionModel (pure logic). Nothing of ours is mocked."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest

from airflow_llm_provider.cascades import load_cascade
from airflow_llm_provider.cascades.cache import LocalDirectoryCache
from airflow_llm_provider.cascades.runner import RunOptions, run_cascade
from airflow_llm_provider.cascades.usage import ModelPrice
from airflow_llm_provider.testing.openai_server import error, structured, text
from tests.support.models import server_models


def cascade(**body):
    return load_cascade({"cascade_id": "t", **body})


# -- control flow ---------------------------------------------------------------------------


def test_outputs_flow_into_later_templates_along_handoffs(llm_server):
    llm_server.script(text("Paris"), text("Population: about 2.1 million"))
    spec = cascade(
        phases=[
            {
                "name": "capital",
                "instructions": "Name the capital of {{ input.country }}.",
                "handoffs": ["facts"],
            },
            {
                "name": "facts",
                "instructions": "Give one fact about {{ outputs.capital }}.",
                "handoffs": ["end"],
            },
        ]
    )
    result = run_cascade(spec, {"country": "France"}, RunOptions(model_factory=server_models(llm_server)))

    assert result.status == "success", result.error
    assert result.outputs == {"capital": "Paris", "facts": "Population: about 2.1 million"}
    assert result.final == "Population: about 2.1 million"
    first, second = llm_server.requests
    assert first.text_of("system") == "Name the capital of France."
    assert '"country": "France"' in first.text_of("user")
    assert second.text_of("system") == "Give one fact about Paris."
    assert result.usage["requests"] == 2


def test_independent_phases_run_concurrently(llm_server):
    llm_server.latency = 0.5
    llm_server.responder = lambda request: text(f"done: {request.text_of('system')}")
    spec = cascade(
        phases=[
            {"name": "a", "instructions": "A"},
            {"name": "b", "instructions": "B"},
            {"name": "c", "instructions": "C"},
            {"name": "merge", "instructions": "{{ outputs.a }} {{ outputs.b }} {{ outputs.c }}"},
        ]
    )
    started = time.monotonic()
    result = run_cascade(spec, {}, RunOptions(model_factory=server_models(llm_server)))
    elapsed = time.monotonic() - started

    assert result.status == "success", result.error
    arrivals = sorted(r.arrived_at for r in llm_server.requests[:3])
    assert arrivals[-1] - arrivals[0] < 0.3, "a, b and c should start together"
    assert llm_server.requests[3].arrived_at - arrivals[0] >= 0.5, "merge waits for its inputs"
    assert elapsed < 1.6  # 2 x latency, not 4 x
    assert result.final == "done: done: A done: B done: C"


def test_soundings_run_in_parallel_and_the_evaluator_picks_the_winner(llm_server):
    llm_server.latency = 0.4
    counter = iter(range(1, 100))

    def respond(request):
        if "final_result" in " ".join(request.tool_names):
            return structured({"winner": 2, "reason": "most precise"})
        return text(f"draft {next(counter)}")

    llm_server.responder = respond
    spec = cascade(
        phases=[
            {
                "name": "write",
                "instructions": "Write a tagline.",
                "soundings": {
                    "factor": 3,
                    "max_parallel": 3,
                    "mutate": False,  # no rewrite calls: three drafts and the evaluator only
                    "evaluator_instructions": "Pick the best tagline.",
                },
            }
        ]
    )
    started = time.monotonic()
    result = run_cascade(spec, {}, RunOptions(model_factory=server_models(llm_server)))
    elapsed = time.monotonic() - started

    assert result.status == "success", result.error
    drafts = [r for r in llm_server.requests if not r.tool_names]
    assert len(drafts) == 3
    assert max(r.arrived_at for r in drafts) - min(r.arrived_at for r in drafts) < 0.3
    assert elapsed < 0.4 * 1.2 * 2 + 0.3  # soundings wall ~ one call, plus the evaluator call
    evaluator = llm_server.requests[-1]
    assert "Pick the best tagline." in evaluator.text_of("system")
    assert "## Attempt 3" in evaluator.text_of("user")
    # The evaluator answered 2: the winner is exactly what it was shown as attempt 2.
    shown = re.search(r"## Attempt 2\n(.*)", evaluator.text_of("user")).group(1)
    assert result.final == shown
    assert result.usage["requests"] == 4


def test_state_machine_follows_tool_routing_and_on_error():
    spec = cascade(
        max_phase_visits=3,
        phases=[
            {
                "name": "check",
                "tool": "check",
                "inputs": {"n": "{{ input.n }}"},
                "routing": {"big": "big", "small": "small"},
            },
            {"name": "big", "tool": "explode", "on_error": "recover"},
            {"name": "small", "tool": "label", "inputs": {"text": "small"}, "handoffs": ["end"]},
            {
                "name": "recover",
                "tool": "label",
                "inputs": {"text": "{{ state.last_deterministic_error }}"},
                "handoffs": ["end"],
            },
        ],
    )

    def explode():
        raise RuntimeError("disk full")

    tools = {
        "check": lambda n: {"_route": "big" if n > 10 else "small"},
        "explode": explode,
        "label": lambda text: f"label={text}",
    }
    big = run_cascade(spec, {"n": 50}, RunOptions(tools=tools))
    assert big.status == "success", big.error
    assert [t.phase for t in big.trace] == ["check", "big", "recover"]
    assert big.final == "label=RuntimeError: disk full"
    small = run_cascade(spec, {"n": 3}, RunOptions(tools=tools))
    assert [t.phase for t in small.trace] == ["check", "small"]


def test_tool_retry_with_backoff_then_success():
    calls = []

    def flaky():
        calls.append(time.monotonic())
        if len(calls) < 3:
            raise ConnectionError("try again")
        return {"rows": 3}

    spec = cascade(
        phases=[
            {
                "name": "fetch",
                "tool": "flaky",
                "retry": {"max_attempts": 3, "backoff": "linear", "backoff_base_seconds": 0.1},
            }
        ]
    )
    result = run_cascade(spec, {}, RunOptions(tools={"flaky": flaky}))
    assert result.final == {"rows": 3}
    assert len(calls) == 3
    assert calls[2] - calls[1] >= 0.19  # linear: 0.1 then 0.2


def test_loop_guard_stops_a_runaway_cycle():
    spec = cascade(
        max_phase_visits=2,
        phases=[{"name": "again", "tool": "noop", "routing": {"success": "again"}}],
    )
    result = run_cascade(spec, {}, RunOptions(tools={"noop": lambda: "x"}))
    assert result.status == "failed"
    assert "max_phase_visits=2" in result.error
    assert [t.phase for t in result.trace] == ["again", "again"]  # the third visit is refused, not run


# -- validation of outputs ------------------------------------------------------------------

SCHEMA = {
    "type": "object",
    "properties": {
        "sentiment": {"type": "string", "enum": ["positive", "negative"]},
        "score": {"type": "number"},
    },
    "required": ["sentiment", "score"],
}


def test_output_schema_gives_parsed_objects(llm_server):
    llm_server.script(structured({"sentiment": "positive", "score": 0.9}))
    spec = cascade(phases=[{"name": "rate", "instructions": "Rate it.", "output_schema": SCHEMA}])
    result = run_cascade(spec, {"review": "great"}, RunOptions(model_factory=server_models(llm_server)))
    assert result.status == "success", result.error
    assert result.final == {"sentiment": "positive", "score": 0.9}
    assert llm_server.requests[0].tool_names == ["final_result"]


def test_output_off_schema_is_retried_then_fails_clearly(llm_server):
    llm_server.responder = lambda request: structured({"sentiment": "meh", "score": 1})
    spec = cascade(
        phases=[
            {
                "name": "rate",
                "instructions": "Rate it.",
                "output_schema": SCHEMA,
                "rules": {"max_attempts": 2},
            }
        ]
    )
    result = run_cascade(spec, {}, RunOptions(model_factory=server_models(llm_server)))
    assert result.status == "failed"
    assert "phase 'rate'" in result.error
    assert "no acceptable output after 2 attempt(s)" in result.error
    assert "'meh' is not one of" in result.error
    retry = llm_server.requests[-1]
    assert "## Retry" in retry.text_of("user")


def test_post_ward_in_retry_mode_feeds_the_reason_back(llm_server):
    llm_server.script(text("short"), text("a sufficiently long answer"))
    spec = cascade(
        phases=[
            {
                "name": "answer",
                "instructions": "Answer.",
                "rules": {
                    "max_attempts": 3,
                    "retry_instructions": "Attempt {{ attempt }}: {{ validation_error }}",
                },
                "wards": {
                    "post": [{"validator": "python:tests.cascades.validators.long_enough", "mode": "retry"}]
                },
            }
        ]
    )
    result = run_cascade(spec, {}, RunOptions(model_factory=server_models(llm_server)))
    assert result.final == "a sufficiently long answer"
    assert "Attempt 1: too short" in llm_server.requests[1].text_of("user")


def test_blocking_ward_fails_the_cascade(llm_server):
    llm_server.script(text("forbidden words"))
    spec = cascade(
        phases=[
            {
                "name": "answer",
                "instructions": "Answer.",
                "wards": {
                    "post": [{"validator": "python:tests.cascades.validators.clean", "mode": "blocking"}]
                },
            },
            {"name": "after", "instructions": "{{ outputs.answer }}"},
        ]
    )
    result = run_cascade(spec, {}, RunOptions(model_factory=server_models(llm_server)))
    assert result.status == "failed"
    assert "blocked by ward python:tests.cascades.validators.clean: profanity" in result.error
    assert len(llm_server.requests) == 1


def test_validator_that_cannot_be_found_is_an_error_not_a_pass(llm_server):
    llm_server.script(text("anything"))
    spec = cascade(
        phases=[
            {"name": "a", "instructions": "x", "wards": {"post": [{"validator": "python:nowhere.check"}]}}
        ]
    )
    result = run_cascade(spec, {}, RunOptions(model_factory=server_models(llm_server)))
    assert result.status == "failed"
    assert "cannot import module 'nowhere'" in result.error


# -- cost, budget, cache, transport ---------------------------------------------------------


def test_usage_and_declared_price(llm_server):
    llm_server.script(text("one", usage=(1_000_000, 0)), text("two", usage=(0, 500_000)))
    spec = cascade(
        phases=[{"name": "a", "instructions": "x"}, {"name": "b", "instructions": "{{ outputs.a }}"}]
    )
    result = run_cascade(
        spec,
        {},
        RunOptions(
            model_factory=server_models(llm_server),
            declared_price=ModelPrice(input_per_mtok=0.15, output_per_mtok=0.6),
        ),
    )
    assert result.usage["requests"] == 2
    assert result.usage["input_tokens"] == 1_000_000
    assert result.usage["output_tokens"] == 500_000
    assert result.usage["cost_usd"] == pytest.approx(0.45)


def test_budget_stops_before_the_call_that_would_exceed_it(llm_server):
    llm_server.responder = lambda request: text("ok", usage=(900, 50))
    spec = cascade(
        budget={"max_tokens": 1000},  # a: 950 spent; b: ~55 more projected -> refused
        phases=[
            {"name": "a", "instructions": "first"},
            {"name": "b", "instructions": "{{ outputs.a }} second"},
            {"name": "c", "instructions": "{{ outputs.b }} third"},
        ],
    )
    result = run_cascade(spec, {}, RunOptions(model_factory=server_models(llm_server)))
    assert result.status == "failed"
    assert result.budget_exceeded is True
    assert "max_tokens" in result.error
    assert len(llm_server.requests) == 1  # b was stopped before it was sent
    assert result.outputs == {"a": "ok"}


def test_cache_resumes_after_a_failure_without_repaying_finished_phases(llm_server, tmp_path: Path):
    llm_server.responder = lambda request: text(f"answer to: {request.text_of('system')}")
    flag = tmp_path / "fail-once"
    flag.write_text("x")

    def publish(report):
        if flag.exists():
            flag.unlink()
            raise OSError("storage unavailable")
        return {"published": report}

    spec = cascade(
        phases=[
            {"name": "p1", "instructions": "one"},
            {"name": "p2", "instructions": "two {{ outputs.p1 }}"},
            {"name": "p3", "instructions": "three {{ outputs.p2 }}"},
            {"name": "p4", "tool": "publish", "inputs": {"report": "{{ outputs.p3 }}"}},
            {"name": "p5", "instructions": "five {{ outputs.p4 }}"},
        ]
    )
    options = RunOptions(
        model_factory=server_models(llm_server),
        tools={"publish": publish},
        cache=LocalDirectoryCache(tmp_path / "cache"),
        cache_scope="dag_run_1",
    )
    first = run_cascade(spec, {}, options)
    assert first.status == "failed"
    assert "storage unavailable" in first.error
    assert len(llm_server.requests) == 3

    second = run_cascade(spec, {}, options)  # the task retry
    assert second.status == "success", second.error
    assert len(llm_server.requests) == 4  # only p5 was asked; p1-p3 came from the cache
    assert second.usage["cache_hits"] == 3
    assert second.outputs["p3"] == first.outputs["p3"]


def test_429_with_retry_after_is_honoured_by_the_engine(llm_server):
    llm_server.script(error(429, "slow down", retry_after=1), text("fine"))
    spec = cascade(phases=[{"name": "a", "instructions": "x"}])
    result = run_cascade(spec, {}, RunOptions(model_factory=server_models(llm_server)))
    assert result.final == "fine"
    assert llm_server.requests[1].arrived_at - llm_server.requests[0].arrived_at >= 0.95


def test_server_down_fails_the_phase_with_the_cause(llm_server):
    llm_server.responder = lambda request: error(500, "model overloaded")
    spec = cascade(phases=[{"name": "a", "instructions": "x"}])
    result = run_cascade(spec, {}, RunOptions(model_factory=server_models(llm_server)))
    assert result.status == "failed"
    assert "LLM call failed" in result.error
    assert "model overloaded" in result.error


# -- templates are a sandbox ----------------------------------------------------------------

SSTI_PAYLOADS = [
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ input.__class__.__init__.__globals__ }}",
    "{{ cycler.__init__.__globals__.os.popen('id').read() }}",
    "{{ self.__init__.__globals__.__builtins__ }}",
    "{% for c in [].__class__.__base__.__subclasses__() %}{{ c }}{% endfor %}",
    "{{ lipsum.__globals__['os'].system('touch /tmp/alp-pwned') }}",
    "{{ config.items() }}",
]


@pytest.mark.parametrize("payload", SSTI_PAYLOADS)
def test_template_injection_cannot_reach_python_internals(payload, llm_server):
    spec = cascade(phases=[{"name": "a", "instructions": payload}])
    result = run_cascade(spec, {"q": "x"}, RunOptions(model_factory=server_models(llm_server)))
    assert result.status == "failed"
    assert "phase 'a'" in result.error
    assert llm_server.requests == []
    assert not Path("/tmp/alp-pwned").exists()


def test_function_model_for_pure_unit_tests():
    """pydantic-ai's FunctionModel scripts turns without any server."""
    from pydantic_ai.messages import ModelResponse, TextPart
    from pydantic_ai.models.function import FunctionModel

    seen = []

    def answer(messages, info):
        seen.append(messages)
        return ModelResponse(parts=[TextPart("scripted")])

    spec = cascade(phases=[{"name": "a", "instructions": "Say hi to {{ input.name }}."}])
    result = run_cascade(spec, {"name": "Ada"}, RunOptions(model_factory=lambda name: FunctionModel(answer)))
    assert result.final == "scripted"
    assert "Say hi to Ada." in str(seen[0])


def test_run_phase_alone_with_outputs_from_elsewhere(llm_server):
    """What a per-phase Airflow task does: earlier outputs come in (from XCom), one phase runs."""
    from airflow_llm_provider.cascades.runner import run_phase

    llm_server.script(text("summary of item 2"))
    spec = cascade(
        phases=[
            {"name": "load", "tool": "python:json.loads", "inputs": {"s": "[1, 2, 3]"}},
            {
                "name": "summarize",
                "instructions": "Summarize item {{ item }} of {{ outputs.load | length }}.",
                "map_over": "load",
            },
        ]
    )
    outcome = run_phase(
        spec,
        "summarize",
        {},
        {"load": [1, 2, 3]},
        RunOptions(model_factory=server_models(llm_server)),
        item=2,
        item_index=1,
    )
    assert outcome.output == "summary of item 2"
    assert outcome.usage["requests"] == 1
    assert llm_server.requests[0].text_of("system") == "Summarize item 2 of 3."
    assert "## Item\n2" in llm_server.requests[0].text_of("user")


def test_malformed_json_from_the_model_is_retried_then_fails_clearly(llm_server):
    llm_server.responder = lambda request: structured('{"sentiment": "positive", "score": ')
    spec = cascade(
        phases=[
            {
                "name": "rate",
                "instructions": "Rate it.",
                "output_schema": SCHEMA,
                "rules": {"max_attempts": 2},
            }
        ]
    )
    result = run_cascade(spec, {}, RunOptions(model_factory=server_models(llm_server)))
    assert result.status == "failed"
    assert "no acceptable output after 2 attempt(s)" in result.error
    # pydantic-ai asks again within an attempt (output retries), and we retry the attempt.
    assert len(llm_server.requests) >= 4


def test_mutate_varies_the_prompt_of_later_soundings_only(llm_server):
    def respond(request):
        if "final_result" in request.tool_names:
            return structured({"winner": 1})
        return text("draft")

    llm_server.responder = respond
    spec = cascade(
        phases=[
            {
                "name": "write",
                "instructions": "Write a tagline.",
                # approach: a strategy appended (the default rewrite mode costs an LLM call)
                "soundings": {
                    "factor": 3,
                    "mutate": True,
                    "mutation_mode": "approach",
                    "evaluator_instructions": "Pick one.",
                },
            }
        ]
    )
    run_cascade(spec, {}, RunOptions(model_factory=server_models(llm_server)))
    prompts = sorted(r.text_of("system") for r in llm_server.requests if not r.tool_names)
    assert len(prompts) == 3
    assert prompts[0] == "Write a tagline."
    assert len(set(prompts)) == 3
    assert all(p.startswith("Write a tagline.") for p in prompts)


def test_without_mutate_all_soundings_share_the_prompt(llm_server):
    def respond(request):
        if "final_result" in request.tool_names:
            return structured({"winner": 1})
        return text("draft")

    llm_server.responder = respond
    spec = cascade(
        phases=[
            {
                "name": "w",
                "instructions": "Write.",
                "soundings": {"factor": 3, "evaluator_instructions": "Pick.", "mutate": False},
            }
        ]
    )
    run_cascade(spec, {}, RunOptions(model_factory=server_models(llm_server)))
    assert {r.text_of("system") for r in llm_server.requests if not r.tool_names} == {"Write."}


CHILD = """\
cascade_id: summarize_text
description: Summarize a text in one sentence.
inputs_schema:
  text: The text to summarize.
phases:
  - name: summary
    instructions: "Summarize in one sentence: {{ input.text }}"
"""


def test_sub_cascade_as_a_tool_phase_shares_usage_and_budget(llm_server, tmp_path: Path):
    (tmp_path / "children").mkdir()
    (tmp_path / "children" / "summarize.yaml").write_text(CHILD)
    llm_server.script(text("A short summary.", usage=(40, 5)), text("Final.", usage=(10, 2)))
    spec = cascade(
        phases=[
            {
                "name": "child",
                "tool": "cascade:children/summarize.yaml",
                "inputs": {"text": "{{ input.doc }}"},
            },
            {"name": "wrap", "instructions": "Wrap: {{ outputs.child }}"},
        ]
    )
    result = run_cascade(
        spec, {"doc": "long document"}, RunOptions(model_factory=server_models(llm_server), base_dir=tmp_path)
    )
    assert result.status == "success", result.error
    assert result.outputs["child"] == "A short summary."
    assert llm_server.requests[0].text_of("system") == "Summarize in one sentence: long document"
    assert result.usage["requests"] == 2
    assert result.usage["input_tokens"] == 50  # the child's tokens count in the parent's usage

    # The parent's budget covers the child's calls too.
    llm_server.reset()
    llm_server.responder = lambda request: text("x", usage=(5000, 10))
    limited = cascade(
        budget={"max_tokens": 100},
        phases=[
            {
                "name": "child",
                "tool": "cascade:children/summarize.yaml",
                "inputs": {"text": "t"},
                "retry": {"max_attempts": 3, "backoff": "none"},
            }
        ],
    )
    stopped = run_cascade(limited, {}, RunOptions(model_factory=server_models(llm_server), base_dir=tmp_path))
    assert stopped.budget_exceeded is True
    assert len(llm_server.requests) == 0  # the estimate alone exceeds 100 tokens; never retried


def test_sub_cascade_as_a_tool_the_model_calls(llm_server, tmp_path: Path):
    from airflow_llm_provider.testing.openai_server import tool_call

    (tmp_path / "summarize.yaml").write_text(CHILD)
    llm_server.script(
        tool_call("summarize_text", {"input": {"text": "the quarterly numbers"}}),
        text("Numbers are up."),  # the child's own LLM call
        text("Here is the summary: Numbers are up."),
    )
    spec = cascade(
        phases=[{"name": "ask", "instructions": "Help the user.", "tackle": ["cascade:summarize.yaml"]}]
    )
    result = run_cascade(spec, {}, RunOptions(model_factory=server_models(llm_server), base_dir=tmp_path))
    assert result.status == "success", result.error
    assert result.final == "Here is the summary: Numbers are up."
    assert llm_server.requests[0].tool_names == ["summarize_text"]
    assert llm_server.requests[1].text_of("system") == "Summarize in one sentence: the quarterly numbers"
    assert "Numbers are up." in json.dumps(llm_server.requests[2].messages)


def test_sub_cascades_cannot_recurse_forever(tmp_path: Path):
    (tmp_path / "loop.yaml").write_text(
        "cascade_id: loop\nphases:\n  - name: again\n    tool: cascade:loop.yaml\n"
    )
    from airflow_llm_provider.cascades import load_cascade as load

    result = run_cascade(load(tmp_path / "loop.yaml"), {}, RunOptions(base_dir=tmp_path))
    assert result.status == "failed"
    assert "nest deeper than 5 levels" in result.error


def test_aggregate_mode_merges_soundings_and_counts_the_aggregator(llm_server):
    def respond(request):
        if "Merge the drafts" in request.text_of("system"):
            return text("merged", usage=(100, 10))
        return text(f"draft {request.index}", usage=(10, 1))

    llm_server.responder = respond
    spec = cascade(
        phases=[
            {
                "name": "w",
                "instructions": "Write.",
                "soundings": {
                    "factor": 2,
                    "mode": "aggregate",
                    "mutate": False,  # no rewrite call: two drafts and the aggregator only
                    "aggregator_instructions": "Merge the drafts.",
                },
            }
        ]
    )
    result = run_cascade(spec, {}, RunOptions(model_factory=server_models(llm_server)))
    assert result.final == "merged"
    assert "## Attempt 2" in llm_server.requests[-1].text_of("user")
    assert result.usage["requests"] == 3
    assert result.usage["input_tokens"] == 120  # two drafts and the aggregator
