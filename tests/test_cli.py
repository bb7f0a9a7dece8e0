"""The `airflow-llm` console script, run as users run it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

CLI = str(Path(sys.executable).with_name("airflow-llm"))


def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([CLI, *args], capture_output=True, text=True, timeout=120, env=env, check=False)


def test_console_script_is_installed():
    assert shutil.which(CLI), "pyproject's [project.scripts] entry is not installed"


def test_help_answers_without_importing_airflow():
    result = _run("--help")
    assert result.returncode == 0
    assert "usage: airflow-llm" in result.stdout
    assert "info" in result.stdout


def test_unknown_command_is_a_usage_error():
    result = _run("frobnicate")
    assert result.returncode == 2
    assert "invalid choice" in result.stderr


@pytest.mark.parametrize("with_connection", [True, False])
def test_info_reports_the_resolved_model_without_calling_it(llm_server, with_connection):
    env = dict(os.environ)
    if with_connection:
        env["AIRFLOW_CONN_PYDANTICAI_DEFAULT"] = json.dumps(llm_server.connection(model="gpt-4o-mini"))
    result = _run("info", env=env)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["llm_conn_id"] == "pydanticai_default"
    if with_connection:
        assert report["llm"] == "Model resolved: openai-chat:gpt-4o-mini via connection 'pydanticai_default'"
    else:
        assert "offline test model" in report["llm"]
    assert llm_server.requests == []  # resolving a model spends no tokens
