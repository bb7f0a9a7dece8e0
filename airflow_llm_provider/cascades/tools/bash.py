"""The bash family of built-in tools: Windlass's ``bash_data`` — a bash script over a table.

stdin is an earlier phase's rows as CSV (``input_table``, by default the last earlier output with
rows); stdout (CSV, JSON or JSON lines) becomes rows and, in a ``tool:`` phase, the session table
``_<phase>``. The script runs in the run's ``bash`` folder with ``SESSION_DIR``, ``SESSION_ID`` and
``PHASE_NAME`` set; with ``persist_session`` its exports, functions and working directory carry
over to the next call of the run (saved to a state file when the shell exits, sourced at the next
start: no long-lived process). Where and how it runs (sandbox, limits, errors as answers) is the
polyglot family's rule (``polyglot.py``), whose child runner this module shares.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import re
import shlex
import shutil
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from airflow_llm_provider.cascades.tools.builtin import BuiltinTool, ToolContext, ToolServices
from airflow_llm_provider.cascades.tools.polyglot import (  # the shared child protocol
    MAX_RESULT_BYTES,
    _cut,
    _error,
    _finish,
    _head,
    _jsonable,
    _limits,
    _rows_of,
    _run,
    _seconds,
    _table_rows,
)

BASH_DATA = "bash_data"
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_RESERVED_ENV = frozenset({"PATH", "HOME", "LANG", "TMPDIR", "SESSION_ID", "SESSION_DIR", "PHASE_NAME"})

_BASH_STATE = ".bash_data_session.sh"
"""In the bash folder: the exports, functions and working directory the next call restores."""

# Runs as ``bash -c WRAPPER <phase> <state file> <persist> <script>``: restore the session, set
# this call's variables, save the session when the shell exits (however the script ends), run
# the script in this shell (so its exports, functions and cd are what gets saved).
_BASH_WRAPPER = r"""
__bash_data_state=$1
__bash_data_persist=$2
__bash_data_script=$3
set --
if [ "$__bash_data_persist" = 1 ] && [ -f "$__bash_data_state" ]; then
  . "$__bash_data_state"
fi
__bash_data_save() {
  { export -p; declare -f; printf 'cd -- %q 2>/dev/null || true\n' "$PWD"; } > "$__bash_data_state.new" \
    && mv -f -- "$__bash_data_state.new" "$__bash_data_state"
}
if [ "$__bash_data_persist" = 1 ]; then trap __bash_data_save EXIT; fi
"""


def _bash_data(context: ToolContext) -> Callable[..., Any]:
    async def bash_data(
        script: str,
        input_table: str | None = None,
        output_format: str = "auto",
        timeout: str = "5m",
        env: dict[str, str] | None = None,
        persist_session: bool = True,
    ) -> dict[str, Any]:
        """Run a bash script as a data step: its stdin is a table as CSV, its stdout (CSV, JSON or
        JSON lines) becomes rows.

        ``input_table``: the earlier phase whose rows are the input (default: the last one with
        rows). ``output_format``: ``csv``, ``json``, ``jsonl`` or ``auto``. ``timeout`` like
        ``30s`` or ``5m``. ``env``: extra environment variables. With ``persist_session``,
        exported variables, functions and the working directory carry over to the next call in
        this run. ``$SESSION_DIR`` is the working folder, ``$SESSION_ID`` and ``$PHASE_NAME`` are
        set.
        """
        return await run_bash_data(context, script, input_table, output_format, timeout, env, persist_session)

    return bash_data


async def run_bash_data(
    context: ToolContext,
    script: str,
    input_table: str | None = None,
    output_format: str = "auto",
    timeout: Any = "5m",
    env: Any = None,
    persist_session: Any = True,
) -> dict[str, Any]:
    """``bash_data(...)`` for ``context``: see :func:`_bash_data`."""
    tool = BASH_DATA
    if not isinstance(script, str) or not script.strip():
        return _error(tool, "`script` must be the bash script to run")
    output_format = str(output_format or "auto").strip().lower()
    if output_format not in ("auto", "csv", "json", "jsonl"):
        return _error(tool, f"`output_format` must be csv, json, jsonl or auto, not {output_format!r}")
    try:
        seconds = _seconds(tool, timeout, 300.0)
        extra_env = _bash_env(env)
        persist = _flag(persist_session)
    except ValueError as err:
        return _error(tool, str(err))
    if shutil.which("bash") is None:
        return _error(tool, "needs `bash`, which is not on PATH here")
    try:
        stdin = await asyncio.to_thread(_input_csv, context, input_table)
    except (LookupError, ValueError) as err:
        return _error(tool, str(err))
    with context.session.lock:
        folder = context.session.folder / "bash"
        folder.mkdir(parents=True, exist_ok=True)
    fresh = {
        "SESSION_ID": context.session_id,
        "SESSION_DIR": str(folder.resolve()),
        "PHASE_NAME": context.phase_name,
        **extra_env,
    }
    # Set after the restore, so this call's values win over the saved session's.
    exports = "".join(f"export {name}={shlex.quote(value)}\n" for name, value in fresh.items())
    wrapper = _BASH_WRAPPER + exports + 'eval "$__bash_data_script"\n'
    argv = [
        "bash",
        "--noprofile",
        "--norc",
        "-c",
        wrapper,
        context.phase_name or tool,
        str(folder.resolve() / _BASH_STATE),
        "1" if persist else "0",
        script,
    ]
    started = time.monotonic()
    ran = await _run(tool, context, argv, workdir=folder, stdin=stdin, env=fresh, seconds=seconds)
    duration = round(time.monotonic() - started, 3)
    if isinstance(ran, dict):
        return ran
    if ran.timed_out:
        return _error(tool, f"Bash script timed out after {seconds:g}s", stderr=_cut(ran.stderr))
    if ran.returncode != 0:
        return {
            "_route": "error",
            "error": f"{tool}: Bash script failed with exit code {ran.returncode}",
            "stderr": _cut(ran.stderr),
            "stdout": _head(ran.stdout, 500),
            "exit_code": ran.returncode,
        }
    if len(ran.stdout.encode()) >= _limits(seconds).output_bytes:
        return _error(tool, f"the script printed more than {MAX_RESULT_BYTES // 2**20} MiB")
    try:
        rows, columns = _parse_output(ran.stdout, output_format)
    except ValueError as err:
        return _error(tool, str(err), stderr=_cut(ran.stderr))
    answer: dict[str, Any] = {
        "rows": rows,
        "columns": columns,
        "row_count": len(rows),
        "duration": duration,
        "stderr": _cut(ran.stderr) or None,
    }
    return await _finish(context, tool, answer, store=bool(rows))


def _flag(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0", "yes", "no"):
        return value.strip().lower() in ("true", "1", "yes")
    raise ValueError(f"persist_session must be true or false, not {value!r}")


def _bash_env(env: Any) -> dict[str, str]:
    if env is None or env == "":
        return {}
    if not isinstance(env, Mapping):
        raise ValueError(f"env must be a mapping of variable names to values, not {type(env).__name__}")
    result: dict[str, str] = {}
    for name, value in env.items():
        if not isinstance(name, str) or not _ENV_NAME.match(name):
            raise ValueError(f"env: {name!r} is not a valid variable name")
        if name in _RESERVED_ENV:
            raise ValueError(f"env: {name} is set by bash_data itself")
        result[name] = value if isinstance(value, str) else json.dumps(_jsonable(value))
    return result


def _input_csv(context: ToolContext, input_table: Any) -> str:
    """The input table as CSV text ('' when there is none): ``input_table`` names an earlier phase
    (or its table ``_<phase>``); by default the last earlier output with rows."""
    if input_table is None or input_table == "":
        for name, output in reversed(list(context.outputs.items())):
            if isinstance(output, Mapping) and ("rows" in output or "row_count" in output):
                input_table = name
                break
        else:
            return ""
    if not isinstance(input_table, str):
        raise LookupError(f"`input_table` must be a phase name, not {input_table!r}")
    name = input_table.strip()
    phase = name[1:] if name.startswith("_") and name[1:] in context.outputs else name
    rows = _table_rows(context, phase)
    if rows is None:
        rows = _rows_of(context.outputs.get(phase))
    if rows is None:
        raise LookupError(
            f"input_table {input_table!r} is neither an earlier phase with rows nor a session table"
        )
    return _to_csv(rows)


def _to_csv(rows: list[Any]) -> str:
    columns: list[str] = []
    for row in rows:
        if isinstance(row, Mapping):
            columns += [str(k) for k in row if str(k) not in columns]
    if not columns:
        return ""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        if isinstance(row, Mapping):
            writer.writerow([_csv_cell(row.get(column)) for column in columns])
    return buffer.getvalue()


def _csv_cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, Mapping | list):
        return json.dumps(_jsonable(value))
    return _jsonable(value)


def _detect_format(text: str) -> str:
    """Windlass's guess: a JSON document, else JSON lines, else CSV."""
    if text[:1] in "[{":
        try:
            json.loads(text)
            return "json"
        except ValueError:
            pass
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if lines and all(line.startswith("{") and line.endswith("}") for line in lines):
        try:
            for line in lines[:5]:
                json.loads(line)
            return "jsonl"
        except ValueError:
            pass
    return "csv"


def _parse_output(stdout: str, output_format: str) -> tuple[list[dict[str, Any]], list[str]]:
    """Rows and columns of a script's stdout."""
    text = stdout.strip()
    if not text:
        return [], []
    if output_format == "auto":
        output_format = _detect_format(text)
    try:
        if output_format == "csv":
            import pandas as pd

            frame = pd.read_csv(io.StringIO(text))
            frame.columns = [str(c) for c in frame.columns]
            records = [dict(zip(frame.columns, row, strict=True)) for row in frame.itertuples(index=False)]
            return _jsonable(records), list(frame.columns)
        if output_format == "json":
            document = json.loads(text)
            records = document if isinstance(document, list) else [document]
        else:
            records = [json.loads(line) for line in text.splitlines() if line.strip()]
    except Exception as err:
        raise ValueError(
            f"failed to parse the output as {output_format}: {err}\n\nOutput preview:\n{text[:500]}\n\n"
            "Hint: check what the script prints, or set output_format explicitly"
        ) from err
    rows = [dict(r) if isinstance(r, Mapping) else {"value": r} for r in records]
    columns: list[str] = []
    for row in rows:
        columns += [str(k) for k in row if str(k) not in columns]
    return _jsonable(rows), columns


# --- The family ------------------------------------------------------------------------------


SHELL_SCRIPT_SECONDS = 300.0
"""Windlass's timeout for ``tool: shell:<script>``."""


async def run_shell_script(context: ToolContext, script: Path, inputs: Mapping[str, Any]) -> dict[str, Any]:
    """Windlass's ``tool: shell:<script>``: ``bash <script>`` with each input as the environment
    variable ``WINDLASS_<KEY>``, answering ``{stdout, stderr, returncode, _route}`` (``success``
    when it exits 0, else ``error``). The script is the cascade author's file: it runs as a copy in
    the run's ``shell`` folder, in bubblewrap when it works (``best_effort``), with an environment
    built from scratch and the polyglot limits; 300 s, as in Windlass."""
    from airflow_llm_provider.cascades.sandbox import run_sandboxed

    workdir = context.session.folder / "shell"
    workdir.mkdir(parents=True, exist_ok=True)
    copy = workdir / f".script-{script.name}"
    shutil.copyfile(script, copy)  # the script's folder may be hidden in the sandbox (dags folder)
    env = {
        f"WINDLASS_{str(key).upper()}": value if isinstance(value, str) else json.dumps(_jsonable(value))
        for key, value in inputs.items()
        if _ENV_NAME.match(f"WINDLASS_{str(key).upper()}")
    }
    result = await run_sandboxed(
        ["bash", str(copy)],
        workdir=workdir,
        env=env,
        limits=_limits(SHELL_SCRIPT_SECONDS),
        isolation="best_effort",
    )
    answer: dict[str, Any] = {
        "stdout": _cut(result.stdout),
        "stderr": _cut(result.stderr),
        "returncode": result.returncode,
        "_route": "success" if result.returncode == 0 and not result.timed_out else "error",
    }
    if result.timed_out:
        answer["error"] = f"shell:{script.name} timed out after {SHELL_SCRIPT_SECONDS:g}s"
    return answer


def _bash_missing(services: ToolServices | None) -> str | None:
    return None if shutil.which("bash") else "bash_data needs `bash`, which is not on PATH here"


TOOLS = (
    BuiltinTool(
        BASH_DATA,
        make=_bash_data,
        description=(
            "Run a bash script over a table: stdin is an earlier phase's rows as CSV, stdout "
            "(CSV, JSON or JSON lines) becomes rows. Exports and the working directory carry over "
            "between calls. Runs sandboxed, without network."
        ),
        unavailable=_bash_missing,
    ),
)
"""The bash family (``builtin.py``)."""
