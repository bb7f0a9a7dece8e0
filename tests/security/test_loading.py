"""Hostile cascade files: every bound of loading holds in milliseconds, with a file:line error, and
one bad file never stops the others (issue 14, item 1)."""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import pytest

from airflow_llm_provider.cascades.loader import check_cascade

CLI = str(Path(sys.executable).with_name("airflow-llm"))

VALID = "cascade_id: fine\nphases:\n  - name: a\n    instructions: hello\n"


def _alias_bomb() -> str:
    """The 398-byte "billion laughs": 9 levels of 9 aliases, ~387 million strings expanded."""
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    previous = "a"
    for name in "bcdefghi":
        lines.append(f"{name}: &{name} [" + ",".join(["*" + previous] * 9) + "]")
        previous = name
    return "cascade_id: bomb\nphases:\n  - name: x\n    instructions: hi\n" + "\n".join(lines) + "\n"


HOSTILE = {
    "bomb.yaml": (_alias_bomb(), 5, "once YAML aliases are expanded"),
    "deep.json": (
        '{"cascade_id": "deep", "phases": [{"name": "x", "instructions": "hi", "output_schema": '
        + "[" * 5000
        + "]" * 5000
        + "}]}",
        1,
        "nested deeper than 64 levels",
    ),
    "deep.yaml": ("cascade_id: deep\nphases:\n" + "  " + "[" * 3000 + "]" * 3000 + "\n", 3, "nested deeper"),
    "bigint.yaml": (VALID + "    max_turns: " + "9" * 5000 + "\n", 5, "a number of 5,000 digits"),
    "huge_string.yaml": (
        "cascade_id: s\nphases:\n  - name: a\n    instructions: " + "x" * 300_000 + "\n",
        4,
        "over the limit of 262,144",
    ),
    "many_phases.yaml": (
        "cascade_id: many\nphases:\n"
        + "".join(f"  - {{name: p{i}, instructions: hi}}\n" for i in range(1000)),
        2,
        "1,000 phases, over the limit of 500",
    ),
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_a_hostile_file_is_refused_with_its_line_quickly_and_in_little_memory(tmp_path, name):
    text, line, message = HOSTILE[name]
    path = tmp_path / name
    path.write_text(text)
    tracemalloc.start()
    started = time.perf_counter()
    result = check_cascade(path)
    elapsed = time.perf_counter() - started
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert result.cascade is None
    assert [issue.line for issue in result.issues] == [line], result.issues
    assert message in result.issues[0].message
    assert elapsed < 10.0, f"{name}: {elapsed:.2f}s"  # under tracemalloc, on a loaded CI machine
    assert peak < 64 * 2**20, f"{name}: {peak / 2**20:.0f} MiB"


def test_an_oversized_file_is_refused_unread_and_the_limit_is_configurable(tmp_path, monkeypatch):
    path = tmp_path / "big.yaml"
    path.write_text(VALID + "# " + "x" * 2_000_000 + "\n")
    result = check_cascade(path)
    assert result.cascade is None
    assert "over the limit of 1,048,576" in result.issues[0].message
    assert "max_cascade_file_bytes" in result.issues[0].message
    monkeypatch.setenv("AIRFLOW__LLM_PROVIDER__MAX_CASCADE_FILE_BYTES", "4000000")
    assert check_cascade(path).cascade is not None


@pytest.mark.parametrize("name", ["bomb.yaml", "deep.json", "bigint.yaml", "many_phases.yaml"])
def test_validate_run_and_render_exit_2_without_a_traceback(tmp_path, name):
    text, line, message = HOSTILE[name]
    path = tmp_path / name
    path.write_text(text)
    for command in ("validate", "run", "render"):
        started = time.perf_counter()
        done = subprocess.run(
            [CLI, command, str(path)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_AS, (2 * 2**30, 2 * 2**30)),
        )
        output = done.stdout + done.stderr
        assert done.returncode == 2, (command, output)
        assert f"{path}:{line}:" in output and message in output, (command, output)
        assert "Traceback" not in output
        assert time.perf_counter() - started < 30


def test_one_hostile_file_does_not_hide_the_valid_cascades_of_its_folder(tmp_path):
    from airflow_llm_provider.cascade_dags import CascadeDagConfig, CascadeDagImportError, load_cascade_dags

    folder = tmp_path / "cascades"
    folder.mkdir()
    (folder / "bomb.yaml").write_text(_alias_bomb())
    (folder / "fine.yaml").write_text(VALID)
    namespace: dict = {"__file__": str(tmp_path / "dag.py")}
    started = time.perf_counter()
    with pytest.raises(CascadeDagImportError) as raised:
        load_cascade_dags("cascades", namespace, CascadeDagConfig(select="all", on_error="raise"))
    assert time.perf_counter() - started < 5
    assert "bomb.yaml:5" in str(raised.value)
    namespace = {"__file__": str(tmp_path / "dag.py")}
    dags = load_cascade_dags("cascades", namespace, CascadeDagConfig(select="all"))
    assert list(dags) == ["cascade_fine"]
    with pytest.raises(CascadeDagImportError, match=r"bomb\.yaml:5"):
        namespace["cascade_dag_import_errors__"].validate()  # how Airflow records the import error


def test_deeply_nested_or_huge_input_json_is_a_clean_error(tmp_path):
    path = tmp_path / "fine.yaml"
    path.write_text(VALID)
    for raw, message in [
        ('{"a":' * 3000 + "1" + "}" * 3000, "nested deeper than 64 levels"),
        ('{"a": ' + "9" * 5000 + "}", "a number of 5,000 digits"),
    ]:
        done = subprocess.run(
            [CLI, "run", str(path), "--input", raw], capture_output=True, text=True, timeout=60, check=False
        )
        assert done.returncode == 2, done.stderr
        assert message in done.stderr and "Traceback" not in done.stderr


def test_a_long_chain_of_phases_renders_without_recursion(tmp_path):
    """The DAG renderer's cycle check walks iteratively (500 phases, the default maximum)."""
    phases = [{"name": f"p{i}", "instructions": "hi", "handoffs": [f"p{i + 1}"]} for i in range(499)]
    phases.append({"name": "p499", "instructions": "hi"})
    path = tmp_path / "chain.json"
    path.write_text(json.dumps({"cascade_id": "chain", "phases": phases}))
    done = subprocess.run(
        [CLI, "render", str(path)], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "p499 [phase, llm] <- p498" in done.stdout


def test_every_load_limit_is_a_registered_setting_with_its_default():
    import dataclasses

    from airflow_llm_provider.cascades.limits import LoadLimits
    from airflow_llm_provider.get_provider_info import LOAD_LIMIT_OPTIONS

    fields = {spec.name: str(spec.default) for spec in dataclasses.fields(LoadLimits)}
    assert fields == {name: option["default"] for name, option in LOAD_LIMIT_OPTIONS.items()}
