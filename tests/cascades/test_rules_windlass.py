"""Windlass's rules of an LLM phase and its validators, against the scripted OpenAI-protocol server
over real HTTP: turns (``max_turns``, ``turn_prompt``, per-turn ``loop_until``), the validation
goal told to the model, validators resolved by name (including validator cascades), inline code
validators run out of process, ``output_extraction``, ``validated_output`` and the inline
``on_error`` fallback. Nothing of ours is mocked."""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from pathlib import Path

import pytest

from airflow_llm_provider.cascades import load_cascade
from airflow_llm_provider.cascades.errors import CascadeValidationError
from airflow_llm_provider.cascades.runner import RunOptions, run_cascade
from airflow_llm_provider.cascades.sandbox import run_validator_code
from airflow_llm_provider.testing.openai_server import structured, text
from tests.support.models import server_models


def cascade(**body):
    return load_cascade({"cascade_id": "t", **body})


def run(spec, server, inputs=None, **options):
    return run_cascade(spec, inputs or {}, RunOptions(model_factory=server_models(server), **options))


def roles(request) -> list[str]:
    return [message["role"] for message in request.messages]


def contains_42(content: str) -> dict:
    """The answer must mention 42."""
    return {"valid": "42" in content, "reason": "the answer does not mention 42"}


# -- turns ----------------------------------------------------------------------------------


def test_one_turn_is_one_request_with_the_instructions_alone(llm_server):
    llm_server.script(text("done"))
    spec = cascade(phases=[{"name": "a", "instructions": "Do it.", "rules": {"max_turns": 1}}])
    result = run(spec, llm_server)
    assert result.status == "success", result.error
    (request,) = llm_server.requests
    assert request.text_of("system") == "Do it."
    assert roles(request) == ["system", "user"]


def test_turns_continue_one_conversation_with_the_turn_prompt(llm_server):
    llm_server.script(text("draft one"), text("draft two"), text("draft three"))
    spec = cascade(
        phases=[
            {
                "name": "write",
                "instructions": "Write about {{ input.topic }}.",
                "rules": {"max_turns": 3, "turn_prompt": "Turn {{ turn }} of {{ max_turns }}: sharpen it."},
            }
        ]
    )
    result = run(spec, llm_server, {"topic": "tides"})
    assert result.status == "success", result.error
    assert result.final == "draft three"
    first, second, third = llm_server.requests
    assert roles(first) == ["system", "user"]
    # Turn 2 carries turn 1 (the task and the answer) and then the turn prompt.
    assert roles(second) == ["system", "user", "assistant", "user"]
    assert second.messages[2]["content"] == "draft one"
    assert second.messages[3]["content"] == "Turn 2 of 3: sharpen it."
    assert third.messages[-1]["content"] == "Turn 3 of 3: sharpen it."
    assert "draft two" in [m.get("content") for m in third.messages]
    assert result.usage["requests"] == 3


def test_default_turn_prompt_when_none_is_set(llm_server):
    llm_server.script(text("one"), text("two"))
    spec = cascade(phases=[{"name": "a", "instructions": "Go.", "rules": {"max_turns": 2}}])
    result = run(spec, llm_server)
    assert result.final == "two"
    assert llm_server.requests[1].messages[-1]["content"].startswith("Continue")


def test_loop_until_passing_after_a_turn_ends_the_turns_early(llm_server):
    llm_server.script(text("maybe 41"), text("it is 42"), text("never asked"))
    spec = cascade(
        phases=[
            {
                "name": "a",
                "instructions": "Find the answer.",
                "rules": {"max_turns": 3, "loop_until": "contains_42"},
            }
        ]
    )
    result = run(spec, llm_server, tools={"contains_42": contains_42})
    assert result.status == "success", result.error
    assert result.final == "it is 42"
    assert len(llm_server.requests) == 2
    assert llm_server.pending == 1


def test_structured_output_over_several_turns(llm_server):
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    llm_server.script(structured({"n": 1}), structured({"n": 2}))
    spec = cascade(
        phases=[
            {
                "name": "count",
                "instructions": "Count.",
                "output_schema": schema,
                "rules": {"max_turns": 2},
                "handoffs": ["use"],
            },
            {"name": "use", "instructions": "Got {{ state.validated_output.n }}."},
        ]
    )
    llm_server.script(text("ok"))
    result = run(spec, llm_server)
    assert result.status == "success", result.error
    assert result.outputs["count"] == {"n": 2}
    assert llm_server.requests[2].text_of("system") == "Got 2."


# -- the validation goal told to the model ------------------------------------------------------


def test_loop_until_goal_is_added_to_the_instructions(llm_server):
    llm_server.script(text("42"))
    spec = cascade(
        phases=[
            {
                "name": "a",
                "instructions": "Answer.",
                "rules": {"loop_until": "contains_42", "max_attempts": 3},
            }
        ]
    )
    run(spec, llm_server, tools={"contains_42": contains_42})
    system = llm_server.requests[0].text_of("system")
    assert system.startswith("Answer.\n\n")
    assert "contains_42" in system
    assert "The answer must mention 42." in system  # the validator's own description
    assert "3 attempt(s)" in system


def test_loop_until_prompt_replaces_the_goal_and_silent_hides_it(llm_server):
    llm_server.script(text("42"), text("42"))
    spec = cascade(
        phases=[
            {
                "name": "a",
                "instructions": "Answer.",
                "rules": {"loop_until": "contains_42", "loop_until_prompt": "Mention {{ input.n }}."},
                "handoffs": ["b"],
            },
            {
                "name": "b",
                "instructions": "Again.",
                "rules": {"loop_until": "contains_42", "loop_until_silent": True},
            },
        ]
    )
    result = run(spec, llm_server, {"n": 42}, tools={"contains_42": contains_42})
    assert result.status == "success", result.error
    first, second = llm_server.requests
    assert "Mention 42." in first.text_of("system")
    assert "contains_42" not in first.text_of("system")
    assert second.text_of("system") == "Again."


# -- retries and validators by name ---------------------------------------------------------


def test_retry_instructions_and_last_validation_error_still_feed_back(llm_server):
    llm_server.script(text("41"), text("42"))
    spec = cascade(
        phases=[
            {
                "name": "a",
                "instructions": "Answer. {{ state.last_validation_error }}",
                "rules": {
                    "loop_until": "contains_42",
                    "max_attempts": 2,
                    "retry_instructions": "Attempt {{ attempt }} failed: {{ validation_error }}",
                    "loop_until_silent": True,
                },
            }
        ]
    )
    result = run(spec, llm_server, tools={"contains_42": contains_42})
    assert result.final == "42"
    assert "Attempt 1 failed: the answer does not mention 42" in llm_server.requests[1].text_of("user")


def test_unresolvable_validator_fails_the_phase_never_passes(llm_server):
    llm_server.script(text("anything"))
    spec = cascade(phases=[{"name": "a", "instructions": "Go.", "rules": {"loop_until": "no_such_check"}}])
    result = run(spec, llm_server)
    assert result.status == "failed"
    assert "no_such_check" in result.error


def _validator_cascade(folder: Path) -> None:
    folder.mkdir(parents=True)
    (folder / "checker.yaml").write_text(
        "cascade_id: grammar_check\n"
        "description: Checks that the text is one complete sentence.\n"
        "inputs_schema:\n  content: text to check\n  original_input: the run's input\n"
        "phases:\n"
        "  - name: judge\n"
        "    instructions: 'Judge the text for {{ input.original_input.topic }}.'\n"
    )


def test_validator_cascade_on_the_tool_path_drives_retries(llm_server, tmp_path):
    _validator_cascade(tmp_path / "tackle")
    main = tmp_path / "flows"
    main.mkdir()
    (main / "main.yaml").write_text(
        "cascade_id: main\n"
        "phases:\n"
        "  - name: write\n"
        "    instructions: Write one sentence.\n"
        "    rules: {loop_until: grammar_check, max_attempts: 2}\n"
    )
    verdicts = iter(
        [
            'Sure.\n```json\n{"valid": false, "reason": "not a sentence"}\n```',
            'Verdict: {"valid": true, "reason": "fine"} -- done',
        ]
    )
    answers = iter(["half a", "A whole sentence."])

    def responder(request):
        if request.text_of("system").startswith("Judge"):
            return text(next(verdicts))
        return text(next(answers))

    llm_server.responder = responder
    spec = load_cascade(main / "main.yaml")
    result = run(spec, llm_server, {"topic": "tides"}, base_dir=main)
    assert result.status == "success", result.error
    assert result.final == "A whole sentence."
    systems = [r.text_of("system") for r in llm_server.requests]
    assert systems[1] == "Judge the text for tides."
    # The validator cascade received {content, original_input}.
    assert '"content": "half a"' in llm_server.requests[1].text_of("user")
    assert "Checks that the text is one complete sentence." in systems[0]  # its description
    assert "not a sentence" in llm_server.requests[2].text_of("user")  # the retry feedback
    assert len(llm_server.requests) == 4
    assert result.usage["requests"] == 4  # the child's calls count in the parent's usage


def test_llm_validator_instructions_see_the_content_as_input(llm_server):
    llm_server.script(text("draft"), structured({"valid": True, "reason": "ok"}))
    spec = cascade(
        validators={"polite": {"instructions": "Is '{{ input.content }}' polite?"}},
        phases=[{"name": "a", "instructions": "Write.", "rules": {"loop_until": "polite"}}],
    )
    result = run(spec, llm_server)
    assert result.status == "success", result.error
    assert llm_server.requests[1].text_of("system") == "Is 'draft' polite?"


# -- inline code validators --------------------------------------------------------------------


PY_42 = "result = {'valid': '42' in content, 'reason': 'no 42 in ' + content}"


def test_inline_python_validator_failing_then_passing_drives_retries(llm_server):
    llm_server.script(text("41"), text("42"))
    spec = cascade(
        phases=[
            {
                "name": "a",
                "instructions": "Answer.",
                "rules": {"loop_until": {"python": PY_42}, "max_attempts": 2},
            }
        ]
    )
    result = run(spec, llm_server)
    assert result.status == "success", result.error
    assert result.final == "42"
    assert len(llm_server.requests) == 2
    assert "no 42 in 41" in llm_server.requests[1].text_of("user")


def test_inline_python_post_ward_blocks(llm_server):
    llm_server.script(text("41"))
    spec = cascade(
        phases=[
            {"name": "a", "instructions": "Answer.", "wards": {"post": [{"validator": {"python": PY_42}}]}}
        ]
    )
    result = run(spec, llm_server)
    assert result.status == "failed"
    assert "blocked by ward inline python validator: no 42 in 41" in result.error


def test_inline_validator_sees_original_input_not_the_workers_secrets(llm_server, monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_WAREHOUSE", "postgres://admin:s3cr3t@db/prod")
    code = (
        "import os\n"
        "leaked = [k for k, v in os.environ.items() if 's3cr3t' in v]\n"
        "result = {'valid': not leaked and original_input['n'] == 7, 'reason': 'saw ' + repr(leaked)}\n"
    )
    llm_server.script(text("x"))
    spec = cascade(phases=[{"name": "a", "instructions": "Go.", "rules": {"loop_until": {"python": code}}}])
    result = run(spec, llm_server, {"n": 7})
    assert result.status == "success", result.error


def test_inline_validator_that_never_ends_is_killed(llm_server, monkeypatch):
    monkeypatch.setenv("AIRFLOW_LLM_VALIDATOR_TIMEOUT", "1.5")
    llm_server.script(text("x"))
    spec = cascade(
        phases=[
            {"name": "a", "instructions": "Go.", "rules": {"loop_until": {"python": "while True:\n    pass"}}}
        ]
    )
    started = time.monotonic()
    result = run(spec, llm_server)
    assert time.monotonic() - started < 8
    assert result.status == "failed"
    assert "inline python validator" in result.error
    assert "timed out" in result.error or "limit" in result.error


def test_sandbox_kills_a_sleeping_program_at_the_wall_clock_limit():
    from airflow_llm_provider.cascades.sandbox import Limits

    started = time.monotonic()
    ran = asyncio.run(run_validator_code("bash", "sleep 30; echo late", "", {}, Limits(wall_seconds=1)))
    assert ran.timed_out
    assert "late" not in ran.stdout
    assert time.monotonic() - started < 5


def test_inline_bash_validator_reads_content_from_the_environment(llm_server, monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_WAREHOUSE", "s3cr3t")
    script = (
        'if [ -n "$AIRFLOW_CONN_WAREHOUSE" ]; then echo \'{"valid": false, "reason": "secret visible"}\'; '
        'elif [[ "$CONTENT" == *42* ]]; then echo \'{"valid": true, "reason": "ok"}\'; '
        'else echo "{\\"valid\\": false, \\"reason\\": \\"no 42, input $ORIGINAL_INPUT\\"}"; fi'
    )
    llm_server.script(text("41"), text("42"))
    spec = cascade(
        phases=[
            {"name": "a", "instructions": "Go.", "rules": {"loop_until": {"bash": script}, "max_attempts": 2}}
        ]
    )
    result = run(spec, llm_server, {"n": 1})
    assert result.status == "success", result.error
    assert 'no 42, input {"n": 1}' in llm_server.requests[1].text_of("user")


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_inline_javascript_validator(llm_server):
    llm_server.script(text("41"), text("42"))
    code = "result = {valid: content.includes('42'), reason: 'want 42, n=' + original_input.n};"
    spec = cascade(
        phases=[
            {
                "name": "a",
                "instructions": "Go.",
                "rules": {"loop_until": {"javascript": code}, "max_attempts": 2},
            }
        ]
    )
    result = run(spec, llm_server, {"n": 3})
    assert result.status == "success", result.error
    assert "want 42, n=3" in llm_server.requests[1].text_of("user")


def test_inline_tool_validator_gets_its_rendered_inputs(llm_server):
    seen = []

    def length_at_least(text: str, minimum: int) -> dict:
        seen.append((text, minimum))
        return {"valid": len(text) >= minimum, "reason": f"shorter than {minimum}"}

    llm_server.script(text("tiny"), text("long enough now"))
    spec = cascade(
        phases=[
            {
                "name": "a",
                "instructions": "Go.",
                "rules": {
                    "loop_until": {
                        "tool": "length_at_least",
                        "inputs": {"text": "{{ content }}", "minimum": "{{ input.n }}"},
                    },
                    "max_attempts": 2,
                },
            }
        ]
    )
    result = run(spec, llm_server, {"n": 10}, tools={"length_at_least": length_at_least})
    assert result.status == "success", result.error
    assert seen == [("tiny", 10), ("long enough now", 10)]


def test_clojure_inline_validators_stay_refused_by_name():
    with pytest.raises(CascadeValidationError) as raised:
        cascade(phases=[{"name": "a", "instructions": "Go.", "rules": {"loop_until": {"clojure": "x"}}}])
    assert "inline `clojure` validators are not supported" in str(raised.value)


SQL_42 = (
    "SELECT content LIKE '%42%' AS valid, 'no 42 in ' || content AS reason FROM _validation "
    "UNION ALL SELECT false, 'never' WHERE false"
)


def test_inline_sql_validator_judges_over_the_session_database(llm_server):
    """``{sql: ...}``: the first row's valid/reason; ``_validation`` holds what is judged and the
    earlier phases' session tables are there to join."""
    llm_server.script(text("41"), text("42"))
    spec = cascade(
        phases=[
            {"name": "limits", "tool": "sql_data", "inputs": {"query": "SELECT 42 AS answer"}},
            {
                "name": "a",
                "instructions": "Answer.",
                "handoffs": ["done"],
                "rules": {
                    "loop_until": {"sql": SQL_42 + " UNION ALL SELECT false, 'x' FROM _limits WHERE false"},
                    "max_attempts": 2,
                },
            },
            {"name": "done", "tool": "set_state", "inputs": {"key": "k", "value": "v"}},
        ]
    )
    result = run(spec, llm_server)
    assert result.status == "success", result.error
    assert result.outputs["a"] == "42"
    assert "no 42 in 41" in llm_server.requests[1].text_of("user")


# -- output_extraction and validated_output ---------------------------------------------------------


def test_output_extraction_stores_text_json_and_code(llm_server):
    llm_server.script(
        text("thinking...\n<ANSWER> Paris </answer>"),
        text('data: <json>{"k": [1, 2]}</json>'),
        text("Here:\n```python\nprint(1)\n```\nbye"),
        text("done"),
    )
    spec = cascade(
        phases=[
            {
                "name": "a",
                "instructions": "A",
                "handoffs": ["b"],
                "output_extraction": {"pattern": "<answer>(.*?)</answer>", "store_as": "city"},
            },
            {
                "name": "b",
                "instructions": "B",
                "handoffs": ["c"],
                "output_extraction": {"pattern": "<json>(.*?)</json>", "store_as": "data", "format": "json"},
            },
            {
                "name": "c",
                "instructions": "C",
                "handoffs": ["d"],
                "output_extraction": {"pattern": "```.*```", "store_as": "snippet", "format": "code"},
            },
            {
                "name": "d",
                "instructions": "{{ state.city }}|{{ state.data.k[1] }}|{{ state.snippet }}",
            },
        ]
    )
    result = run(spec, llm_server)
    assert result.status == "success", result.error
    assert result.outputs["a"] == "thinking...\n<ANSWER> Paris </answer>"  # the output is unchanged
    assert llm_server.requests[3].text_of("system") == "Paris|2|print(1)"


def test_required_output_extraction_without_a_match_fails_the_phase(llm_server):
    llm_server.script(text("no tags here"))
    spec = cascade(
        phases=[
            {
                "name": "a",
                "instructions": "A",
                "rules": {"max_attempts": 3},
                "output_extraction": {"pattern": "<x>(.*)</x>", "store_as": "x", "required": True},
            }
        ]
    )
    result = run(spec, llm_server)
    assert result.status == "failed"
    assert "output_extraction" in result.error
    assert len(llm_server.requests) == 1  # Windlass fails the phase; it does not retry


# -- on_error inline fallback -----------------------------------------------------------------


def test_inline_on_error_fallback_answers_for_the_failed_tool(llm_server):
    def fetch(url: str) -> str:
        raise ConnectionError(f"cannot reach {url}")

    llm_server.script(text("fallback summary"), text("final"))
    spec = cascade(
        phases=[
            {
                "name": "fetch",
                "tool": "fetch",
                "inputs": {"url": "http://example.invalid"},
                "on_error": {
                    "instructions": "Explain: {{ state.last_deterministic_error.error }}",
                    "model": "fallback-model",
                },
                "handoffs": ["report"],
            },
            {"name": "report", "instructions": "Report on {{ outputs.fetch }}."},
        ]
    )
    result = run(spec, llm_server, tools={"fetch": fetch})
    assert result.status == "success", result.error
    assert result.outputs["fetch"] == "fallback summary"
    fallback, report = llm_server.requests
    assert fallback.model == "fallback-model"
    assert fallback.text_of("system") == "Explain: ConnectionError: cannot reach http://example.invalid"
    assert "cannot reach http://example.invalid" in fallback.text_of("user")
    assert report.text_of("system") == "Report on fallback summary."
    assert result.usage["requests"] == 2


def test_windlass_rules_keys_are_accepted():
    spec = cascade(
        phases=[
            {
                "name": "a",
                "instructions": "Go.",
                "rules": {
                    "max_turns": 2,
                    "turn_prompt": "Turn {{ turn }}",
                    "loop_until": {"python": "result = {'valid': True}"},
                    "loop_until_prompt": "Be right.",
                    "loop_until_silent": False,
                },
                "output_extraction": {"pattern": "(.*)", "store_as": "all"},
            }
        ]
    )
    assert spec.phases[0].rules.turn_prompt == "Turn {{ turn }}"


def test_with_bubblewrap_inline_code_has_no_network_and_a_read_only_root():
    from airflow_llm_provider.cascades.sandbox import bubblewrap_available

    if not bubblewrap_available():
        pytest.skip("bwrap is not installed or cannot sandbox here")
    import errno
    import os
    import socket

    # On the read-only root and never under /tmp (the sandbox has a private one), wherever the
    # checkout lives.
    target = Path("/var/tmp") / f"alp_bwrap_probe_{os.getpid()}.txt"
    # A listener on this machine's loopback: reachable from here, not from the sandbox's own
    # network namespace. No traffic leaves the machine.
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    port = listener.getsockname()[1]
    code = (
        "import socket\n"
        "try:\n"
        f"    socket.create_connection(('127.0.0.1', {port}), timeout=2)\n"
        "    net = 'connected'\n"
        "except OSError as err:\n"
        "    net = str(err.errno)\n"
        "try:\n"
        f"    open({str(target)!r}, 'w').write('x')\n"
        "    disk = 'wrote'\n"
        "except OSError as err:\n"
        "    disk = str(err.errno)\n"
        "result = {'valid': True, 'reason': net + ' ' + disk}\n"
    )
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()  # the control: reachable here
        ran = asyncio.run(run_validator_code("python", code, "", {}))
        net, disk = json.loads(ran.stdout)["result"]["reason"].split()
        assert net != "connected" and int(net) in (errno.ECONNREFUSED, errno.ENETUNREACH)
        assert int(disk) == errno.EROFS
    finally:
        listener.close()
        target.unlink(missing_ok=True)
    assert not target.exists()


def test_javascript_validator_without_node_is_an_error_naming_it(llm_server, monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    llm_server.script(text("x"))
    spec = cascade(
        phases=[
            {
                "name": "a",
                "instructions": "Go.",
                "rules": {"loop_until": {"javascript": "result = {valid: true}"}},
            }
        ]
    )
    result = run(spec, llm_server)
    assert result.status == "failed"
    assert "`node`" in result.error
