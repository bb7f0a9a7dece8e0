"""Windlass's declarative ``*.tool.json``/``*.tool.yaml`` tools (tools/declarative.py): found by
``tool_id`` on the tool path, offered to the model with their ``inputs_schema``, run as shell (in
the bubblewrap sandbox), python or composite tools; http/gradio refused at validate time."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml

from airflow_llm_provider.cascades import load_cascade
from airflow_llm_provider.cascades.errors import CascadeValidationError
from airflow_llm_provider.cascades.runner import RunOptions, run_cascade
from airflow_llm_provider.cascades.sandbox import bubblewrap_available
from airflow_llm_provider.testing.openai_server import text, tool_call
from tests.support.models import server_models

needs_bwrap = pytest.mark.skipif(not bubblewrap_available(), reason="bubblewrap cannot run here")


def project(tmp_path: Path, tools: dict[str, dict], phases: list[dict]) -> Path:
    (tmp_path / "tackle").mkdir()
    (tmp_path / "examples").mkdir()
    for name, definition in tools.items():
        (tmp_path / "tackle" / name).write_text(
            json.dumps(definition) if name.endswith(".json") else yaml.safe_dump(definition)
        )
    path = tmp_path / "examples" / "uses_tools.yaml"
    path.write_text(yaml.safe_dump({"cascade_id": "uses_tools", "phases": phases}))
    return path


def run(path: Path, options: RunOptions | None = None):
    options = options or RunOptions()
    options.base_dir = path.parent
    return run_cascade(load_cascade(path), {}, options)


WORD_COUNT = {
    "tool_id": "word_count",
    "description": "Count the words of a text.",
    "inputs_schema": {"text": "the text"},
    "type": "shell",
    "command": "printf '%s' {{ text | tojson }} | wc -w",
}


@needs_bwrap
def test_the_model_calls_a_shell_tool_file_in_the_sandbox(tmp_path, llm_server):
    path = project(
        tmp_path,
        {"word_count.tool.json": WORD_COUNT},
        [{"name": "ask", "instructions": "Count.", "tackle": ["word_count"]}],
    )
    llm_server.script(tool_call("word_count", {"text": "three little words"}), text("done"))
    result = run(path, RunOptions(model_factory=server_models(llm_server)))
    assert result.status == "success", result.error
    first = llm_server.requests[0]
    offered = next(t["function"] for t in first.body["tools"] if t["function"]["name"] == "word_count")
    assert offered["description"] == "Count the words of a text."
    assert offered["parameters"]["required"] == ["text"]
    assert llm_server.requests[1].messages[-1]["content"].strip() == "3"


@needs_bwrap
def test_a_models_arguments_cannot_leave_the_sandbox(tmp_path, llm_server, monkeypatch):
    monkeypatch.setenv("DECLARED_TOOL_SECRET", "hunter2")
    secret_file = Path(os.environ["AIRFLOW_HOME"]) / "declared-tool-secret.txt"
    secret_file.write_text("top secret")
    echo = {**WORD_COUNT, "tool_id": "echo", "command": "echo {{ text }}"}
    path = project(
        tmp_path, {"echo.tool.yaml": echo}, [{"name": "ask", "instructions": "Echo.", "tackle": ["echo"]}]
    )
    injected = f"x; cat {secret_file}; echo env=$DECLARED_TOOL_SECRET; touch {tmp_path}/escaped"
    llm_server.script(tool_call("echo", {"text": injected}), text("done"))
    result = run(path, RunOptions(model_factory=server_models(llm_server)))
    assert result.status == "success", result.error
    answer = llm_server.requests[1].messages[-1]["content"]
    assert "top secret" not in answer and "hunter2" not in answer
    assert "env=" in answer  # the injected commands ran, inside the sandbox
    assert not (tmp_path / "escaped").exists()


def test_python_and_composite_tool_files(tmp_path):
    tools = {
        "shout.tool.yaml": {
            "tool_id": "shout",
            "description": "Upper-case.",
            "inputs_schema": {"text": "text"},
            "type": "python",
            "import_path": "tests.tools.helpers_upper.upper",
        },
        "shout_twice.tool.yaml": {
            "tool_id": "shout_twice",
            "description": "Upper-case, then once more with a suffix.",
            "inputs_schema": {"text": "text"},
            "type": "composite",
            "steps": [
                {"tool": "shout", "args": {"text": "{{ input.text }}"}},
                {"tool": "python:tests.tools.helpers_upper.upper", "args": {"text": "{{ steps.shout }}!"}},
                {"tool": "shout", "args": {"text": "never"}, "condition": "{{ input.text == 'nope' }}"},
            ],
        },
    }
    path = project(tmp_path, tools, [{"name": "go", "tool": "shout_twice", "inputs": {"text": "pear"}}])
    result = run(path)
    assert result.status == "success", result.error
    assert result.outputs["go"] == "PEAR!"


@pytest.mark.parametrize(
    ("definition", "message"),
    [
        ({"type": "http", "method": "GET", "url": "http://x"}, "`type: http` tools are refused"),
        ({"type": "shell", "command": "ls", "working_dir": "/etc"}, "`working_dir` is refused"),
        ({"type": "shell"}, "a shell tool needs `command`"),
        ({"type": "python", "import_path": "os.system"}, "os.system is not allowed"),
    ],
)
def test_unusable_tool_files_are_refused_before_the_run(tmp_path, definition, message):
    tool = {"tool_id": "bad", "description": "d", **definition}
    path = project(tmp_path, {"bad.tool.yaml": tool}, [{"name": "go", "tool": "bad", "inputs": {}}])
    with pytest.raises(CascadeValidationError) as caught:
        load_cascade(path)
    assert "uses_tools.yaml:" in str(caught.value) and message in str(caught.value)


def test_a_shell_script_tool_phase_as_windlass(tmp_path):
    """``tool: shell:<script>``: ``bash <script>`` with inputs as ``WINDLASS_<KEY>``, answering
    ``{stdout, stderr, returncode, _route}``; a failing script routes ``error``."""
    (tmp_path / "scripts").mkdir()
    (tmp_path / "scripts" / "greet.sh").write_text(
        'echo "hello $WINDLASS_NAME"\nexit "${WINDLASS_CODE:-0}"\n'
    )
    phases = [
        {"name": "ok", "tool": "shell:scripts/greet.sh", "inputs": {"name": "pear"}},
        {
            "name": "bad",
            "tool": "shell:scripts/greet.sh",
            "inputs": {"name": "fig", "code": "3"},
            "routing": {"error": "mend", "success": "done"},
            "handoffs": ["mend", "done"],
        },
        {"name": "done", "tool": "python:tests.tools.helpers_upper.upper", "inputs": {"text": "x"}},
        {"name": "mend", "tool": "python:tests.tools.helpers_upper.upper", "inputs": {"text": "y"}},
    ]
    path = tmp_path / "shell.yaml"
    path.write_text(yaml.safe_dump({"cascade_id": "shell", "phases": phases}))
    result = run(path)
    assert result.status == "success", result.error
    assert result.outputs["ok"] == {
        "stdout": "hello pear",
        "stderr": "",
        "returncode": 0,
        "_route": "success",
    }
    assert (
        result.outputs["bad"]["returncode"] == 3 and "mend" in result.outputs and "done" not in result.outputs
    )


def test_a_missing_shell_script_is_a_validate_error(tmp_path):
    path = tmp_path / "shell.yaml"
    path.write_text(
        yaml.safe_dump({"cascade_id": "shell", "phases": [{"name": "s", "tool": "shell:nope.sh"}]})
    )
    with pytest.raises(CascadeValidationError) as caught:
        load_cascade(path)
    assert "shell.yaml:" in str(caught.value) and "shell script 'nope.sh' not found" in str(caught.value)
