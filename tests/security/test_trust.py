"""What a cascade file or a model may reach (issue 14, item 2): python: tools only from allowed
modules, file references confined to the cascade's folder tree, connections named by the cascade."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from pydantic_ai.messages import ModelResponse, TextPart, ToolCallPart
from pydantic_ai.models.function import FunctionModel

from airflow_llm_provider.cascades.loader import check_cascade, load_cascade
from airflow_llm_provider.cascades.runner import RunOptions, run_cascade

CLI = str(Path(sys.executable).with_name("airflow-llm"))


def _write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_python_os_system_fails_validate_with_its_line_and_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    path = _write(
        tmp_path,
        "evil.yaml",
        f"cascade_id: evil\nphases:\n  - name: a\n    tool: python:os.system\n    inputs:\n"
        f"      command: touch {marker}\n",
    )
    for command in ("validate", "run"):
        done = subprocess.run(
            [CLI, command, str(path)], capture_output=True, text=True, timeout=60, check=False
        )
        output = done.stdout + done.stderr
        assert done.returncode == 2, output
        assert f"{path}:4: phases[0].tool: python:os.system is not allowed" in output
    assert not marker.exists()


def test_a_python_tool_refused_at_run_time_too_when_validation_was_skipped(tmp_path):
    """A cascade given as a mapping (the Python API) is not checked against files; the engine still
    refuses the import before calling anything."""
    marker = tmp_path / "pwned"
    spec = load_cascade(
        {
            "cascade_id": "evil",
            "phases": [{"name": "a", "tool": "python:os.system", "inputs": {"command": f"touch {marker}"}}],
        }
    )
    result = run_cascade(spec, {}, RunOptions(base_dir=tmp_path))
    assert result.status == "failed"
    assert "python:os.system is not allowed" in (result.error or "")
    assert not marker.exists()


def test_modules_in_the_cascade_folder_and_configured_prefixes_are_allowed(tmp_path, monkeypatch):
    _write(tmp_path, "local_tools.py", "def shout(text):\n    return text.upper()\n")
    path = _write(
        tmp_path,
        "ok.yaml",
        "cascade_id: ok\nphases:\n  - name: a\n    tool: python:local_tools.shout\n    inputs: {text: hi}\n"
        "  - name: b\n    tool: python:string.capwords\n    inputs: {s: '{{ outputs.a }}'}\n",
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    issues = [issue.message for issue in check_cascade(path).issues]
    assert len(issues) == 1 and "python:string.capwords is not allowed" in issues[0]
    monkeypatch.setenv("AIRFLOW__LLM_PROVIDER__ALLOWED_PYTHON_TOOLS", "string.capwords")
    assert check_cascade(path).issues == []
    result = run_cascade(load_cascade(path), {}, RunOptions(base_dir=tmp_path))
    assert result.status == "success", result.error
    assert result.outputs["b"] == "Hi"


@pytest.mark.parametrize(
    ("reference", "field", "why"),
    [
        ("tool: sql:../secret.sql", "tool", "climbs out with '..'"),
        ("tool: sql:/etc/passwd", "tool", "outside the cascade's folder tree"),
        ("tool: cascade:../other/child.yaml", "tool", "climbs out with '..'"),
        ("instructions: '@../secret.txt'", "instructions", "climbs out with '..'"),
        ("instructions: '@/etc/passwd'", "instructions", "outside the cascade's folder tree"),
    ],
)
def test_file_references_cannot_leave_the_cascade_folder_tree(tmp_path, reference, field, why):
    _write(tmp_path, "secret.sql", "select 'secret'")
    _write(tmp_path, "secret.txt", "secret")
    folder = tmp_path / "project"
    path = _write(folder, "c.yaml", f"cascade_id: c\nphases:\n  - name: a\n    {reference}\n")
    issues = check_cascade(path).issues
    assert [(issue.line, issue.field) for issue in issues] == [(4, f"phases[0].{field}")], issues
    assert why in issues[0].message


def test_a_symlink_out_of_the_tree_is_refused_at_validate_and_run_time(tmp_path):
    _write(tmp_path, "outside.sql", "select 1")
    folder = tmp_path / "project"
    folder.mkdir()
    (folder / "inside.sql").symlink_to(tmp_path / "outside.sql")
    path = _write(folder, "c.yaml", "cascade_id: c\nphases:\n  - name: a\n    tool: sql:inside.sql\n")
    issues = check_cascade(path).issues
    assert len(issues) == 1 and "outside the cascade's folder tree" in issues[0].message
    spec = load_cascade({"cascade_id": "c", "phases": [{"name": "a", "tool": "sql:inside.sql"}]})
    result = run_cascade(spec, {}, RunOptions(base_dir=folder, tools={"sql_data": lambda **_: []}))
    assert result.status == "failed"
    assert "outside the cascade's folder tree" in (result.error or "")


def _model_querying(conn_id: str) -> FunctionModel:
    """A model that asks the tool for ``conn_id`` once, then answers with what it got."""

    def reply(messages, info):
        if len(messages) == 1:
            return ModelResponse(parts=[ToolCallPart("lookup", {"conn_id": conn_id, "sql": "select 1"})])
        return ModelResponse(parts=[TextPart(str(messages[-1].parts[0].content))])

    return FunctionModel(reply)


CONNECTION_CASCADE = {
    "cascade_id": "conn",
    "phases": [{"name": "ask", "instructions": "Look it up.", "tackle": ["lookup"]}],
}


@pytest.mark.parametrize(
    ("listed", "asked", "reached"),
    [([], "prod_db", False), (["warehouse"], "prod_db", False), (["warehouse"], "warehouse", True)],
)
def test_a_model_only_reaches_connections_the_cascade_names(listed, asked, reached):
    calls: list[str] = []

    def lookup(conn_id: str, sql: str) -> str:
        calls.append(conn_id)
        return f"rows from {conn_id}"

    spec = load_cascade({**CONNECTION_CASCADE, "connections": listed}, tools=["lookup"])
    options = RunOptions(tools={"lookup": lookup}, model_factory=lambda _: _model_querying(asked))
    result = run_cascade(spec, {}, options)
    assert calls == ([asked] if reached else [])
    if not reached:
        text = str(result.outputs.get("ask") or result.error)
        assert "is not a connection this cascade names" in text


def test_a_tool_phase_may_use_the_connection_it_names_but_not_a_templated_other():
    calls: list[str] = []

    def lookup(conn_id: str, sql: str) -> str:
        calls.append(conn_id)
        return "ok"

    phases = [
        {"name": "fixed", "tool": "lookup", "inputs": {"conn_id": "warehouse", "sql": "select 1"}},
        {"name": "chosen", "tool": "lookup", "inputs": {"conn_id": "{{ input.db }}", "sql": "select 1"}},
    ]
    spec = load_cascade({"cascade_id": "t", "phases": phases}, tools=["lookup"])
    result = run_cascade(spec, {"db": "prod_db"}, RunOptions(tools={"lookup": lookup}))
    assert calls == ["warehouse"]
    assert result.status == "failed" and "conn_id='prod_db' is not a connection" in (result.error or "")
