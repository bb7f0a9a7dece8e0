"""`airflow-llm validate`, run as the installed console script."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

CLI = str(Path(sys.executable).with_name("airflow-llm"))
FIXTURES = Path(__file__).parent / "fixtures"


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([CLI, *args], capture_output=True, text=True, timeout=120, check=False)


def test_valid_directory_exits_0():
    result = _run("validate", str(FIXTURES / "valid"))
    count = len([p for p in (FIXTURES / "valid").iterdir() if p.is_file()])
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == f"ok: {count} cascades"


def test_invalid_file_exits_2_with_file_line_field_lines():
    path = FIXTURES / "invalid" / "unknown_handoff.yaml"
    result = _run("validate", str(path), str(FIXTURES / "valid"))
    assert result.returncode == 2
    assert result.stdout.splitlines() == [
        f"{path}:8: phases[0].handoffs[1]: unknown phase 'clasify' (did you mean 'classify'?)"
    ]
    assert "invalid: 1 of" in result.stderr
    assert "Traceback" not in result.stderr


def test_whole_invalid_directory_never_tracebacks():
    result = _run("validate", str(FIXTURES / "invalid"))
    assert result.returncode == 2
    assert "Traceback" not in result.stdout + result.stderr
    assert "internal error" not in result.stdout
    files = {line.split(":", 1)[0] for line in result.stdout.splitlines()}
    assert len(files) == len(list((FIXTURES / "invalid").iterdir()))


def test_missing_path_and_empty_directory(tmp_path):
    missing = _run("validate", str(tmp_path / "nope.yaml"))
    assert missing.returncode == 2
    assert "cannot read file" in missing.stdout
    empty = _run("validate", str(tmp_path))
    assert empty.returncode == 2
    assert "no cascade files" in empty.stderr


def test_help_lists_validate():
    result = _run("--help")
    assert result.returncode == 0
    assert "validate" in result.stdout
