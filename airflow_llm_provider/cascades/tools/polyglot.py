"""The polyglot family of built-in tools: Windlass's ``python_data``, ``js_data`` and
``clojure_data`` (``bash.py`` builds ``bash_data`` on the same child protocol; the child-side
programs are in ``_polyglot_harness.py``).

Each runs a snippet of another language over the run's data: earlier phases' outputs
(``data``), the run's ``state`` and ``input``. A result with rows becomes, in a ``tool:`` phase,
the session table ``_<phase>`` that later ``sql_data`` queries join (``session_db.py``).

Where the code runs (never in the worker's process, unlike Windlass's in-process ``exec``):

- code the cascade's author wrote (a ``tool:`` phase, ``context.deterministic``) is as trusted as
  a DAG file: a child process, in bubblewrap when it works here, else a plain limited subprocess
  (``sandbox.run_sandboxed(isolation="best_effort")``);
- code a model wrote (the tool offered through ``tackle:``) runs only in bubblewrap
  (``isolation="required"``), unless ``[llm_provider] allow_unsandboxed_code`` is set; without a
  working bubblewrap the call answers an error saying so.

Always: an environment built from scratch (no worker secrets), wall-clock, CPU, memory, file-size
and process limits, and bounded output. The data goes to the child as JSON on stdin; the child
prints whatever the code prints, then a protocol line (a random marker), then the result as JSON.

A model's call sees the same ``data`` as a ``tool:`` phase (Windlass injects nothing into a
model's call, so its ``data`` is empty there), but stores no session table (as in Windlass).

As in Windlass, failures are answered, not raised: ``{"_route": "error", "error": ...}`` (routing
``error: <phase>`` reacts to them); bad arguments too, with the tool and argument named.

Bounds (Windlass keeps everything): a result's ``rows`` are cut at :data:`MAX_RETURNED_ROWS`
(``row_count`` is the full count and the session table holds every row); printed output and
errors are cut at a few thousand characters; a result larger than :data:`MAX_RESULT_BYTES`
is an error.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import secrets
import shutil
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow_llm_provider.cascades.tools._polyglot_harness import CLOJURE_HARNESS, JS_HARNESS, PYTHON_HARNESS
from airflow_llm_provider.cascades.tools.builtin import BuiltinTool, ToolContext, ToolServices

if TYPE_CHECKING:
    from airflow_llm_provider.cascades.sandbox import Isolation, Limits, SandboxResult

PYTHON_DATA = "python_data"
JS_DATA = "js_data"
CLOJURE_DATA = "clojure_data"

MAX_RETURNED_ROWS = 1000
"""Rows a result carries (Windlass's cap for its polyglot tools); the session table has all."""
MAX_RESULT_BYTES = 64 * 1024 * 1024
"""Largest result (as JSON) a child may send back."""
MAX_PAYLOAD_BYTES = 128 * 1024 * 1024
"""Largest context (earlier outputs, state, input as JSON) sent to a child."""
MAX_TABLE_ROWS = 1_000_000
"""Most rows read from one session table for a child (more is an error, never a silent cut)."""
MAX_TEXT = 8000
"""Characters kept of printed output, stderr and tracebacks."""
MAX_SECONDS = 3600.0
"""Longest ``timeout`` a call may ask for."""
PYTHON_SECONDS = 300.0
"""``python_data`` has no ``timeout`` argument (Windlass has no limit at all): its wall clock."""
MEMORY_BYTES = 2 * 1024 * 1024 * 1024
"""Address space of a child (node and pandas need well over the validators' 512 MiB)."""
FILE_BYTES = 256 * 1024 * 1024
"""Largest file a child may write (stdout included)."""

# One BLAS/OpenMP thread: the process limit counts threads, and numpy would start one per core.
_THREAD_ENV = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _error(tool: str, message: str, **extra: Any) -> dict[str, Any]:
    """Windlass's error answer, the message starting with the tool's name."""
    if not message.startswith(f"{tool}:"):
        message = f"{tool}: {message}"
    return {"_route": "error", "error": message, **{k: v for k, v in extra.items() if v}}


def _cut(text: str, limit: int = MAX_TEXT) -> str:
    """The end of ``text`` when it is long (errors and tracebacks say the most at their end)."""
    text = text.strip()
    if len(text) <= limit:
        return text
    return f"[... {len(text) - limit} characters cut]\n" + text[-limit:]


def _head(text: str, limit: int = MAX_TEXT) -> str:
    text = text.strip()
    if len(text) <= limit:
        return text
    return text[:limit] + f"\n[... {len(text) - limit} characters cut]"


def _jsonable(value: Any, depth: int = 0) -> Any:
    """``value`` made of JSON types only: NaN and infinities become null, dates ISO text,
    decimals numbers, anything else its text."""
    if depth > 64:
        return str(value)
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_jsonable(v, depth + 1) for v in value]
    if hasattr(value, "isoformat"):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    item = getattr(value, "item", None)  # numpy scalars
    if callable(item):
        try:
            return _jsonable(item(), depth + 1)
        except (TypeError, ValueError):
            pass
    try:
        number = float(value)  # Decimal and friends
    except (TypeError, ValueError):
        return str(value)
    return number if math.isfinite(number) else None


def _seconds(tool: str, value: Any, default: float) -> float:
    """A ``timeout`` argument: seconds as a number or text (``"30"``, ``"30s"``, ``"5m"``, ``"1h"``)."""
    if value is None or value == "":
        return default
    if isinstance(value, bool):
        raise ValueError(f"{tool}: timeout must be a duration like 30, '30s' or '5m', not {value!r}")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smh]?)\s*", str(value))
        if match is None:
            raise ValueError(f"{tool}: timeout must be a duration like 30, '30s' or '5m', not {value!r}")
        seconds = float(match.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[match.group(2)]
    if not 0 < seconds <= MAX_SECONDS:
        raise ValueError(f"{tool}: timeout must be more than 0 and at most {MAX_SECONDS:g} seconds")
    return seconds


def _limits(seconds: float) -> Limits:
    from airflow_llm_provider.cascades.sandbox import DEFAULT_LIMITS

    return replace(
        DEFAULT_LIMITS,
        wall_seconds=seconds,
        cpu_seconds=max(1, math.ceil(seconds)),
        memory_bytes=MEMORY_BYTES,
        file_bytes=FILE_BYTES,
        output_bytes=MAX_RESULT_BYTES + 1024 * 1024,
    )


def _isolation(context: ToolContext) -> Isolation:
    """The trust rule: the author's code as a DAG file, a model's only in the real sandbox."""
    if context.deterministic or context.services.allow_unsandboxed_code:
        return "best_effort"
    return "required"


async def _run(
    tool: str,
    context: ToolContext,
    argv: list[str],
    *,
    workdir: Path,
    stdin: str,
    env: dict[str, str],
    seconds: float,
) -> SandboxResult | dict[str, Any]:
    """Run a child; an error answer when the sandbox cannot be had."""
    from airflow_llm_provider.cascades.sandbox import SandboxError, run_sandboxed

    try:
        return await run_sandboxed(
            argv,
            workdir=workdir,
            stdin=stdin,
            env=env,
            limits=_limits(seconds),
            isolation=_isolation(context),
        )
    except SandboxError as err:  # SandboxUnavailable: a model's code and no bubblewrap here
        return _error(tool, str(err))


# --- The data a child sees -------------------------------------------------------------------


def _rows_of(output: Any) -> list[Any] | None:
    if isinstance(output, Mapping) and isinstance(output.get("rows"), list):
        return output["rows"]
    return None


def _full_output(context: ToolContext, name: str, output: Any) -> Any:
    """``output`` with all its rows when it carries fewer than its ``row_count`` (the rows were cut
    at :data:`MAX_RETURNED_ROWS`) and its session table has them."""
    rows = _rows_of(output)
    count = output.get("row_count") if isinstance(output, Mapping) else None
    if rows is None or not isinstance(count, int) or count <= len(rows):
        return output
    table = _table_rows(context, name)
    return output if table is None else {**output, "rows": table}


def _table_rows(context: ToolContext, phase: str) -> list[dict[str, Any]] | None:
    """The rows of the session table ``_<phase>``, or None when there is no such table. Tables
    of earlier outputs that came from elsewhere (XCom, a phase run as its own task) are built
    first (``session_db.ensure_output_tables``). More than :data:`MAX_TABLE_ROWS` rows is a
    ``ValueError``."""
    from airflow_llm_provider.cascades.tools import session_db

    try:
        session_db.ensure_output_tables(context)
        rows = session_db.read_table(context, phase, limit=MAX_TABLE_ROWS + 1)
    except Exception:  # no such table, or no usable session database: the caller falls back
        return None
    if len(rows) > MAX_TABLE_ROWS:
        raise ValueError(
            f"the session table _{phase} has more than {MAX_TABLE_ROWS} rows, too many to hand over"
        )
    return rows


def _mentioned(code: str, name: str) -> bool:
    return re.search(rf"(?<![\w-]){re.escape(name)}(?![\w-])", code) is not None


def _python_data_values(context: ToolContext, code: str) -> dict[str, Any]:
    """Earlier outputs for ``python_data``'s ``data``, plus the session tables the code names
    (``data.x``, ``data["x"]``) that no output holds (Windlass reads those from ``_x``)."""
    values = {
        name: (_full_output(context, name, output) if _mentioned(code, name) else output)
        for name, output in context.outputs.items()
    }
    for match in re.finditer(r"\bdata(?:\.(\w+)|\[\s*[\"'](\w+)[\"']\s*\])", code):
        name = match.group(1) or match.group(2)
        if name not in values and not name.startswith("_"):
            rows = _table_rows(context, name)
            if rows is not None:
                values[name] = {
                    "rows": rows,
                    "columns": list(rows[0]) if rows else [],
                    "row_count": len(rows),
                }
    return values


def _polyglot_values(context: ToolContext, code: str, *, kebab: bool = False) -> dict[str, Any]:
    """Earlier outputs as Windlass hands them to JavaScript and Clojure: the rows of a table, else
    the ``result``, else the output itself (Clojure: names with ``-`` for ``_``)."""
    values: dict[str, Any] = {}
    for name, output in context.outputs.items():
        key = name.replace("_", "-") if kebab else name
        if _mentioned(code, key):
            output = _full_output(context, name, output)
        if _rows_of(output) is not None:
            values[key] = output["rows"]
        elif isinstance(output, Mapping) and "result" in output:
            values[key] = output["result"]
        else:
            values[key] = output
    return values


def _payload(tool: str, code: str, data: Mapping[str, Any], context: ToolContext, mark: str) -> str:
    text = json.dumps(
        {
            "code": code,
            "mark": mark,
            "data": _jsonable(data),
            "state": _jsonable(context.state),
            "input": _jsonable(context.input),
            "max_bytes": MAX_RESULT_BYTES,
        }
    )
    if len(text) > MAX_PAYLOAD_BYTES:
        raise ValueError(
            f"{tool}: the run's data is {len(text) // 2**20} MiB as JSON, more than the "
            f"{MAX_PAYLOAD_BYTES // 2**20} MiB a child is given"
        )
    return text


# --- Results ---------------------------------------------------------------------------------


def _read_child(tool: str, result: SandboxResult, mark: str, seconds: float) -> dict[str, Any]:
    """The child's answer: what it printed, then the marker line, then the JSON answer."""
    separator = f"\n{mark}\n"
    printed, found, answer = result.stdout.rpartition(separator)
    if result.timed_out:
        return _error(tool, f"the code ran longer than {seconds:g} seconds and was stopped")
    if not found:
        detail = _cut(result.stderr) or _cut(result.stdout)
        reason = (
            "it was killed (out of memory or over a limit?)"
            if result.returncode < 0
            else f"exit code {result.returncode}"
        )
        return _error(tool, f"the code did not finish ({reason})", stderr=detail)
    try:
        message = json.loads(answer)
    except ValueError:
        return _error(tool, f"the result is larger than {MAX_RESULT_BYTES // 2**20} MiB or not JSON")
    if not isinstance(message, dict):
        return _error(tool, "the child answered something unexpected")
    extra = {"stdout": _head(printed) or None, "stderr": _cut(result.stderr) or None}
    if "error" in message:
        return _error(tool, str(message["error"]), traceback=message.get("traceback"), **extra)
    return {**message, **{k: v for k, v in extra.items() if v}}


_STORED = ("dataframe", "dict")
"""Result types stored as session tables (Windlass: a table, or a dict's scalars and nested
tables)."""


def _shape(value: Any) -> dict[str, Any]:
    """Windlass's polyglot result format: a list of objects is a table, anything else a value."""
    if isinstance(value, list) and value and isinstance(value[0], Mapping):
        columns: list[str] = []
        for row in value:
            if isinstance(row, Mapping):
                columns += [str(k) for k in row if str(k) not in columns]
        return {"rows": value, "columns": columns, "row_count": len(value), "type": "dataframe"}
    kind = "list" if isinstance(value, list) else "dict" if isinstance(value, Mapping) else "scalar"
    return {"result": value, "type": kind}


async def _finish(context: ToolContext, tool: str, answer: dict[str, Any], *, store: bool) -> dict[str, Any]:
    """Store the answer as the phase's session tables when ``store`` in a ``tool:`` phase (a model's
    call stores nothing, as in Windlass), then cut the rows returned at :data:`MAX_RETURNED_ROWS`."""
    if store and context.deterministic and context.phase_name:
        from airflow_llm_provider.cascades.tools import session_db

        # Windlass's tables: the rows as _<phase>; a dict's scalars and nested tables.
        stored = (
            answer["result"]
            if answer.get("type") == "dict"
            else {"rows": answer.get("rows"), "columns": answer.get("columns")}
        )
        try:
            await asyncio.to_thread(session_db.materialize, context, context.phase_name, stored)
        except Exception as err:
            return _error(tool, f"could not store the result as a session table: {err}")
    rows = _rows_of(answer)
    if rows is not None and len(rows) > MAX_RETURNED_ROWS:
        answer["rows"] = rows[:MAX_RETURNED_ROWS]
    answer.setdefault("_route", "success")
    return answer


def _workdir(context: ToolContext, tool: str) -> Path:
    """A fresh folder for one call, in the run's scratch folder (removed by the caller)."""
    parent = context.session.folder / "polyglot"
    parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f"{tool}-", dir=parent))


# --- python_data -----------------------------------------------------------------------------


def _python_data(context: ToolContext) -> Callable[..., Any]:
    async def python_data(code: str) -> dict[str, Any]:
        """Run Python over the run's data and return the value the code assigns to ``result``.

        In scope: ``data`` (earlier phases: ``data.<phase>`` or ``data["phase"]`` is a pandas
        DataFrame of that phase's rows, else its value), ``state``, ``input``, ``pd`` (pandas),
        ``np`` (numpy) and ``json``. Set ``result`` to a DataFrame (returned as rows), a dict, a
        list, a number or text, or a Plotly figure. Errors come back as ``_route: error`` with
        the traceback. The code runs in a separate, sandboxed process without network access.
        """
        return await run_python_data(context, code)

    return python_data


async def run_python_data(context: ToolContext, code: str) -> dict[str, Any]:
    """``python_data(code)`` for ``context`` (see the module docstring for where it runs)."""
    from airflow_llm_provider.cascades.sandbox import python_executable

    if not isinstance(code, str) or not code.strip():
        return _error(PYTHON_DATA, "`code` must be Python source text that sets `result`")
    mark = f"@@python_data:{secrets.token_hex(16)}@@"
    workdir = _workdir(context, PYTHON_DATA)
    try:
        try:
            # Off the event loop: reading session tables waits for the session database.
            stdin = await asyncio.to_thread(
                lambda: _payload(PYTHON_DATA, code, _python_data_values(context, code), context, mark)
            )
        except ValueError as err:
            return _error(PYTHON_DATA, str(err))
        (workdir / "harness.py").write_text(PYTHON_HARNESS)
        ran = await _run(
            PYTHON_DATA,
            context,
            [python_executable(), "-I", "harness.py"],
            workdir=workdir,
            stdin=stdin,
            env=dict(_THREAD_ENV),
            seconds=PYTHON_SECONDS,
        )
        if isinstance(ran, dict):
            return ran
        answer = _read_child(PYTHON_DATA, ran, mark, PYTHON_SECONDS)
        if answer.get("_route") == "error":
            return answer
        return await _finish(context, PYTHON_DATA, answer, store=answer.get("type") in _STORED)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


# --- js_data ---------------------------------------------------------------------------------


def _js_data(context: ToolContext) -> Callable[..., Any]:
    async def js_data(code: str, timeout: int = 30) -> dict[str, Any]:
        """Run JavaScript (Node.js) over the run's data; the code must set ``result``.

        In scope: ``data`` (earlier phases: ``data.<phase>`` is that phase's rows as an array of
        objects, else its value), ``state`` and ``input``. An array of objects comes back as
        rows; anything else as ``result``. ``timeout`` is in seconds. Errors come back as
        ``_route: error``.
        """
        return await run_js_data(context, code, timeout)

    return js_data


async def run_js_data(context: ToolContext, code: str, timeout: Any = 30) -> dict[str, Any]:
    """``js_data(code, timeout)`` for ``context``."""
    return await _run_script(context, _JS_SCRIPT, code, timeout)


# --- clojure_data ----------------------------------------------------------------------------


def _clojure_data(context: ToolContext) -> Callable[..., Any]:
    async def clojure_data(code: str, timeout: int = 30) -> dict[str, Any]:
        """Run Clojure (Babashka) over the run's data; the value of the last expression is the
        result.

        In scope: ``data`` (earlier phases under keywords with ``-`` for ``_``, e.g.
        ``(:raw-customers data)``: rows as a vector of maps), ``state`` and ``input``. A sequence
        of maps comes back as rows; anything else as ``result``. ``timeout`` is in seconds.
        """
        return await run_clojure_data(context, code, timeout)

    return clojure_data


async def run_clojure_data(context: ToolContext, code: str, timeout: Any = 30) -> dict[str, Any]:
    """``clojure_data(code, timeout)`` for ``context``."""
    return await _run_script(context, _CLOJURE_SCRIPT, code, timeout)


@dataclass(frozen=True)
class _Script:
    """How one script tool runs: its runtime on PATH, the harness file it runs, and the argv."""

    tool: str
    runtime: str
    harness_name: str
    harness: str
    argv: Callable[[str], list[str]]
    """The command line, given the runtime's path."""
    kebab: bool
    """Data keys with ``-`` for ``_`` (Clojure keywords)."""


_JS_SCRIPT = _Script(
    JS_DATA,
    "node",
    "harness.js",
    JS_HARNESS,
    lambda node: [node, "--max-old-space-size=1024", "--stack-size=4000", "harness.js"],
    kebab=False,
)
_CLOJURE_SCRIPT = _Script(
    CLOJURE_DATA, "bb", "harness.clj", CLOJURE_HARNESS, lambda bb: [bb, "harness.clj"], kebab=True
)


async def _run_script(context: ToolContext, script: _Script, code: str, timeout: Any) -> dict[str, Any]:
    tool, kebab = script.tool, script.kebab
    if not isinstance(code, str) or not code.strip():
        return _error(tool, "`code` must be source text that produces the result")
    try:
        seconds = _seconds(tool, timeout, 30.0)
    except ValueError as err:
        return _error(tool, str(err))
    program = shutil.which(script.runtime)
    if program is None:
        return _error(tool, _missing(script.runtime))
    mark = f"@@{tool}:{secrets.token_hex(16)}@@"
    workdir = _workdir(context, tool)
    try:
        try:
            stdin = await asyncio.to_thread(
                lambda: _payload(tool, code, _polyglot_values(context, code, kebab=kebab), context, mark)
            )
        except ValueError as err:
            return _error(tool, str(err))
        (workdir / script.harness_name).write_text(script.harness)
        ran = await _run(
            tool, context, script.argv(program), workdir=workdir, stdin=stdin, env={}, seconds=seconds
        )
        if isinstance(ran, dict):
            return ran
        answer = _read_child(tool, ran, mark, seconds)
        if answer.get("_route") == "error":
            return answer
        shaped = _shape(answer.pop("result", None)) | {k: v for k, v in answer.items() if k != "result"}
        return await _finish(context, tool, shaped, store=shaped["type"] in _STORED)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _missing(runtime: str) -> str:
    if runtime == "bb":
        return "needs Babashka (`bb`), which is not on PATH here; install it to run Clojure code"
    return "needs Node.js (`node`), which is not on PATH here; install it to run JavaScript code"


def _needs(runtime: str) -> Callable[[ToolServices | None], str | None]:
    def unavailable(services: ToolServices | None) -> str | None:
        if shutil.which(runtime) is not None:
            return None
        tool = CLOJURE_DATA if runtime == "bb" else JS_DATA
        return f"{tool} {_missing(runtime)}"

    return unavailable


TOOLS = (
    BuiltinTool(
        PYTHON_DATA,
        make=_python_data,
        description=(
            "Run Python (pandas as pd, numpy as np) over earlier phases' data: data.<phase> is a "
            "DataFrame of that phase's rows. Set `result` to the answer (a DataFrame, dict, list or "
            "value). Runs sandboxed, without network."
        ),
    ),
    BuiltinTool(
        JS_DATA,
        make=_js_data,
        description=(
            "Run JavaScript (Node.js) over earlier phases' data: data.<phase> is that phase's rows. "
            "Set `result` to the answer. Runs sandboxed, without network."
        ),
        unavailable=_needs("node"),
    ),
    BuiltinTool(
        CLOJURE_DATA,
        make=_clojure_data,
        description=(
            "Run Clojure (Babashka) over earlier phases' data: (:phase-name data) is that phase's "
            "rows. The last expression is the answer. Runs sandboxed, without network."
        ),
        unavailable=_needs("bb"),
    ),
)
"""The polyglot family (``builtin.py``)."""
