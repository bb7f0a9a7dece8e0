"""Windlass's file tools (tools/files.py), confined: writes to the run's own folder, reads from it
and from the cascade's folder tree."""

from __future__ import annotations

import os
from pathlib import Path

import yaml

from airflow_llm_provider.cascades import load_cascade
from airflow_llm_provider.cascades.runner import RunOptions, run_cascade
from airflow_llm_provider.testing.openai_server import text, tool_call
from tests.support.models import server_models


def run_calls(tmp_path: Path, *calls: tuple[str, dict], inputs: dict | None = None) -> list[str]:
    """One deterministic phase per call (``tool: <name>``); the tools' answers in order."""
    folder = tmp_path / "project"
    folder.mkdir()
    (folder / "notes.md").write_text("shipped with the cascade")
    phases = [
        {"name": f"p{i}", "tool": name, "inputs": arguments} for i, (name, arguments) in enumerate(calls)
    ]
    path = folder / "files.yaml"
    path.write_text(yaml.safe_dump({"cascade_id": "files", "phases": phases}))
    result = run_cascade(load_cascade(path), inputs or {}, RunOptions(base_dir=folder))
    assert result.status == "success", result.error
    return [result.outputs[f"p{i}"] for i in range(len(calls))]


def test_write_append_read_list_in_the_runs_folder(tmp_path):
    answers = run_calls(
        tmp_path,
        ("write_file", {"path": "out/report.md", "content": "# Report\n"}),
        ("append_file", {"path": "out/report.md", "content": "- item\n"}),
        ("read_file", {"path": "out/report.md"}),
        ("list_files", {"path": ".", "pattern": "*", "recursive": "true"}),
        ("read_file", {"path": "notes.md"}),
        ("file_info", {"path": "notes.md"}),
    )
    assert answers[0] == "Successfully wrote 9 characters to out/report.md"
    assert answers[2] == "# Report\n- item\n"
    assert "out/report.md" in answers[3] and "Found: 1 directories, 1 files" in answers[3]
    assert answers[4] == "shipped with the cascade"
    assert "Type: File" in answers[5] and "(24 bytes)" in answers[5]
    assert not (tmp_path / "project" / "out").exists()  # the author's folder is read-only


def test_paths_outside_are_refused(tmp_path):
    secret = Path(os.environ["AIRFLOW_HOME"]) / "file-tools-secret.txt"
    secret.write_text("top secret")
    answers = run_calls(
        tmp_path,
        ("read_file", {"path": str(secret)}),
        ("read_file", {"path": "../../" + secret.name}),
        ("write_file", {"path": "/etc/evil", "content": "x"}),
        ("write_file", {"path": "~/.bashrc", "content": "x"}),
        ("list_files", {"path": ".", "pattern": "../*"}),
        ("file_info", {"path": "/etc/passwd"}),
    )
    assert all(answer.startswith("Error:") for answer in answers), answers
    assert not any("top secret" in answer for answer in answers)
    assert not Path("/etc/evil").exists()


def test_writes_are_bounded(tmp_path):
    big = {"path": "big.txt", "content": "{{ input.big }}"}
    (answer,) = run_calls(tmp_path, ("write_file", big), inputs={"big": "x" * 1_000_001})
    assert answer.startswith("Error: content is 1,000,001 characters")


def test_the_model_reads_a_file_shipped_with_the_cascade(tmp_path, llm_server):
    folder = tmp_path / "project"
    folder.mkdir()
    (folder / "notes.md").write_text("shipped with the cascade")
    path = folder / "files.yaml"
    phases = [{"name": "work", "instructions": "Read the notes.", "tackle": ["read_file"]}]
    path.write_text(yaml.safe_dump({"cascade_id": "files", "phases": phases}))
    llm_server.script(tool_call("read_file", {"path": "notes.md"}), text("done"))
    result = run_cascade(
        load_cascade(path), {}, RunOptions(model_factory=server_models(llm_server), base_dir=folder)
    )
    assert result.status == "success", result.error
    assert llm_server.requests[1].messages[-1]["content"] == "shipped with the cascade"
