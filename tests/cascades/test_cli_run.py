"""`airflow-llm run`: the console script against the scripted server through a real connection."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from airflow_llm_provider.testing.openai_server import error, text

CLI = str(Path(sys.executable).with_name("airflow-llm"))

CASCADE = """\
cascade_id: greet
phases:
  - name: greet
    instructions: "Greet {{ input.name }} in one sentence."
    handoffs: [shout]
  - name: shout
    tool: python:string.capwords
    inputs:
      s: "{{ outputs.greet }}"
"""


def _run(tmp_path: Path, llm_server, *args: str, conn: bool = True) -> subprocess.CompletedProcess:
    path = tmp_path / "greet.yaml"
    path.write_text(CASCADE)
    # string.capwords is the standard library's, so the admin allows it explicitly (trust.py).
    env = {**os.environ, "AIRFLOW__LLM_PROVIDER__ALLOWED_PYTHON_TOOLS": "string.capwords"}
    if conn:
        env["AIRFLOW_CONN_PYDANTICAI_DEFAULT"] = json.dumps(llm_server.connection(model="gpt-4o-mini"))
    return subprocess.run(
        [CLI, "run", str(path), *args], capture_output=True, text=True, timeout=120, env=env, check=False
    )


def test_run_prints_the_result_as_json(tmp_path, llm_server):
    llm_server.script(text("hello ada, welcome.", usage=(30, 5)))
    result = _run(tmp_path, llm_server, "--input", '{"name": "Ada"}')
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    assert answer["status"] == "success"
    assert answer["outputs"] == {"greet": "hello ada, welcome.", "shout": "Hello Ada, Welcome."}
    assert answer["final"] == "Hello Ada, Welcome."
    assert answer["usage"]["requests"] == 1
    assert answer["usage"]["input_tokens"] == 30
    assert answer["error"] is None
    assert "phase greet: done" in result.stderr  # progress goes to stderr
    assert llm_server.requests[0].model == "gpt-4o-mini"
    assert llm_server.requests[0].text_of("system") == "Greet Ada in one sentence."


def test_model_flag_overrides_the_connection_model(tmp_path, llm_server):
    llm_server.script(text("hi"))
    result = _run(tmp_path, llm_server, "--model", "openai-chat:gpt-4.1-nano", "--input", '{"name": "B"}')
    assert result.returncode == 0, result.stderr
    assert llm_server.requests[0].model == "gpt-4.1-nano"


def test_failed_run_exits_1_with_the_error(tmp_path, llm_server):
    llm_server.responder = lambda request: error(500, "backend on fire")
    result = _run(tmp_path, llm_server, "--input", '{"name": "Ada"}')
    assert result.returncode == 1
    answer = json.loads(result.stdout)
    assert answer["status"] == "failed"
    assert "backend on fire" in answer["error"]


def test_invalid_cascade_exits_2_with_file_and_line(tmp_path, llm_server):
    path = tmp_path / "bad.yaml"
    path.write_text("cascade_id: x\nphases:\n  - name: a\n    instrucions: hi\n")
    result = subprocess.run([CLI, "run", str(path)], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 2
    assert f"{path}:4: phases[0].instrucions: unknown key" in result.stderr
    assert result.stdout == ""


def test_input_from_a_file_and_bad_input(tmp_path, llm_server):
    llm_server.script(text("hey"))
    (tmp_path / "in.json").write_text('{"name": "Cy"}')
    ok = _run(tmp_path, llm_server, "--input", f"@{tmp_path / 'in.json'}")
    assert ok.returncode == 0, ok.stderr
    assert "Greet Cy" in llm_server.requests[0].text_of("system")
    bad = _run(tmp_path, llm_server, "--input", "[1, 2]")
    assert bad.returncode == 2
    assert "--input must be a JSON object" in bad.stderr


def test_a_missing_input_of_inputs_schema_is_refused_before_any_llm_call(tmp_path, llm_server):
    path = tmp_path / "needs.yaml"
    path.write_text(
        "cascade_id: needs\ninputs_schema:\n  topic: what to write about\n"
        "phases:\n  - {name: a, instructions: 'Write about {{ input.topic }}.'}\n"
    )
    env = {**os.environ, "AIRFLOW_CONN_PYDANTICAI_DEFAULT": json.dumps(llm_server.connection())}
    refused = subprocess.run(
        [CLI, "run", str(path), "--input", "{}"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )
    assert refused.returncode == 2
    assert "cascade needs needs input 'topic' (what to write about)" in refused.stderr
    assert llm_server.requests == []
    llm_server.script(text("ok"))
    allowed = subprocess.run(
        [CLI, "run", str(path), "--input", "{}", "--allow-missing-inputs"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )
    assert allowed.returncode == 0, allowed.stderr
    assert llm_server.requests[0].text_of("system") == "Write about ."  # empty, as Windlass renders it
