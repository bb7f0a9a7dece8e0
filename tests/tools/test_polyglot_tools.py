"""The polyglot data tools (tools/polyglot.py) run end to end through ``run_cascade``: real
child processes, real bubblewrap, real Node.js and bash, the real session DuckDB, and the scripted
OpenAI-protocol server for the model's calls."""

from __future__ import annotations

import itertools
import json
import shutil
import time
from pathlib import Path
from typing import Any

import pytest

from airflow_llm_provider.cascades import load_cascade, sandbox
from airflow_llm_provider.cascades.loader import check_cascade
from airflow_llm_provider.cascades.runner import RunOptions, run_cascade
from airflow_llm_provider.cascades.tools.builtin import ToolServices, unavailable_reason
from airflow_llm_provider.cascades.tools.polyglot import MAX_RETURNED_ROWS, MAX_TEXT
from airflow_llm_provider.testing.openai_server import text, tool_call
from tests.support.models import server_models

needs_bwrap = pytest.mark.skipif(not sandbox.bubblewrap_available(), reason="bubblewrap cannot run here")
needs_node = pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")


def chain(*phases: dict[str, Any]) -> Any:
    """A cascade whose phases run in the order given (each hands off to the next)."""
    listed = [dict(phase) for phase in phases]
    for phase, following in itertools.pairwise(listed):
        phase.setdefault("handoffs", [following["name"]])
    return load_cascade({"cascade_id": "polyglot_demo", "phases": listed})


def run(spec: Any, tmp_path: Path, inputs: dict[str, Any] | None = None, **options: Any) -> Any:
    result = run_cascade(spec, inputs or {}, RunOptions(base_dir=tmp_path, **options))
    assert result.status == "success", result.error
    return result


def tool_answer(request: Any) -> Any:
    """What the tool answered, as the model was sent it in ``request``."""
    (message,) = [m for m in request.messages if m.get("role") == "tool"]
    return json.loads(message["content"])


SALES = {
    "name": "raw",
    "tool": "sql_data",
    "inputs": {
        "query": "SELECT * FROM (VALUES (1, 'laptop', 1200.5, 3), (2, 'phone', 800.0, 5), "
        "(3, 'lamp', 75.25, 15)) AS t(id, product, price, quantity)"
    },
}


@needs_node
def test_sql_python_js_bash_chain_hands_tables_along(tmp_path: Path):
    spec = chain(
        SALES,
        {
            "name": "enrich",
            "tool": "python_data",
            "inputs": {
                "code": (
                    "df = data.raw\n"
                    "print('rows in:', len(df), type(df).__name__)\n"
                    "df['revenue'] = df['price'] * df['quantity']\n"
                    "result = df\n"
                )
            },
        },
        {
            "name": "classify",
            "tool": "js_data",
            "inputs": {
                "code": (
                    "console.log('classifying', data.enrich.length);\n"
                    "result = data.enrich.map(r => ({ ...r, tier: r.revenue >= 3600 ? 'high' : 'low' }));"
                )
            },
        },
        {
            "name": "shout",
            "tool": "bash_data",
            "inputs": {
                "script": 'awk -F, \'NR == 1 { print $0 ",loud" } NR > 1 { print $0 "," toupper($2) }\''
            },
        },
        {
            "name": "report",
            "tool": "sql_data",
            "inputs": {
                "query": "SELECT tier, count(*) AS n, sum(revenue) AS total FROM _shout GROUP BY 1 ORDER BY 1"
            },
        },
    )
    outputs = run(spec, tmp_path).outputs

    enrich = outputs["enrich"]
    assert enrich["type"] == "dataframe" and enrich["_route"] == "success"
    assert enrich["columns"] == ["id", "product", "price", "quantity", "revenue"]
    assert [row["revenue"] for row in enrich["rows"]] == [3601.5, 4000.0, 1128.75]
    assert enrich["stdout"] == "rows in: 3 DataFrame"  # print() kept apart from the result

    classify = outputs["classify"]
    assert classify["type"] == "dataframe" and classify["stdout"] == "classifying 3"
    assert [row["tier"] for row in classify["rows"]] == ["high", "high", "low"]

    shout = outputs["shout"]  # the classify rows arrived on stdin as CSV
    assert shout["columns"] == ["id", "product", "price", "quantity", "revenue", "tier", "loud"]
    assert [row["loud"] for row in shout["rows"]] == ["LAPTOP", "PHONE", "LAMP"]
    assert shout["row_count"] == 3 and shout["stderr"] is None and shout["duration"] >= 0

    assert outputs["report"]["rows"] == [
        {"tier": "high", "n": 2, "total": 7601.5},
        {"tier": "low", "n": 1, "total": 1128.75},
    ]


def test_a_dict_result_becomes_tables_that_python_data_reads_back(tmp_path: Path):
    spec = chain(
        {
            "name": "stats",
            "tool": "python_data",
            "inputs": {"code": "result = {'total': 6, 'items': [{'k': 'a', 'v': 1}, {'k': 'b', 'v': 5}]}"},
        },
        {
            "name": "check",
            "tool": "sql_data",
            "inputs": {"query": "SELECT s.total, i.k FROM _stats s, _stats_items i WHERE i.v = 5"},
        },
        {
            # No phase is called stats_items: data.stats_items comes from the session table.
            "name": "reread",
            "tool": "python_data",
            "inputs": {
                "code": "result = {'n': len(data.stats_items), 'kind': type(data.stats_items).__name__}"
            },
        },
    )
    outputs = run(spec, tmp_path).outputs
    assert outputs["stats"] == {
        "result": {"total": 6, "items": [{"k": "a", "v": 1}, {"k": "b", "v": 5}]},
        "type": "dict",
        "_route": "success",
    }
    assert outputs["check"]["rows"] == [{"total": 6, "k": "b"}]
    assert outputs["reread"]["result"] == {"n": 2, "kind": "DataFrame"}


def test_scalars_lists_and_plotly_figures_come_back_by_type(tmp_path: Path):
    spec = chain(
        {"name": "number", "tool": "python_data", "inputs": {"code": "result = np.int64(41) + 1"}},
        {"name": "listed", "tool": "python_data", "inputs": {"code": "result = [1, float('nan'), 'x']"}},
        {
            "name": "figure",
            "tool": "python_data",
            "inputs": {
                "code": "import plotly.graph_objects as go\nresult = go.Figure(go.Bar(x=['a'], y=[3]))"
            },
        },
    )
    outputs = run(spec, tmp_path).outputs
    assert outputs["number"] == {"result": 42, "type": "scalar", "_route": "success"}
    assert outputs["listed"]["result"] == [1, None, "x"] and outputs["listed"]["type"] == "list"
    figure = outputs["figure"]
    assert figure["type"] == "plotly" and figure["data"][0]["type"] == "bar"
    assert figure["data"][0]["y"] == [3] and "layout" in figure


def test_an_error_routes_to_the_error_handoff_with_the_users_traceback(tmp_path: Path):
    spec = load_cascade(
        {
            "cascade_id": "errors",
            "phases": [
                {
                    "name": "divide",
                    "tool": "python_data",
                    "inputs": {"code": "x = 1\n\ndef f():\n    return x / 0\n\nresult = f()\n"},
                    "routing": {"success": "done", "error": "recover"},
                    "handoffs": ["done", "recover"],
                },
                {"name": "done", "tool": "python_data", "inputs": {"code": "result = 'fine'"}},
                {"name": "recover", "tool": "python_data", "inputs": {"code": "result = 'recovered'"}},
            ],
        }
    )
    result = run(spec, tmp_path)
    failed = result.outputs["divide"]
    assert failed["_route"] == "error"
    assert failed["error"] == "python_data: ZeroDivisionError: division by zero"
    trace = failed["traceback"]
    assert 'File "<python_data>", line 6' in trace and "return x / 0" in trace
    assert "harness" not in trace and "exec(" not in trace  # only the user's frames
    assert result.outputs["recover"]["result"] == "recovered"
    assert "done" not in result.outputs


@needs_node
def test_missing_result_syntax_errors_and_js_errors_are_answers(tmp_path: Path):
    spec = chain(
        {"name": "noresult", "tool": "python_data", "inputs": {"code": "x = 1"}},
        {"name": "syntax", "tool": "python_data", "inputs": {"code": "result = (1 +"}},
        {
            "name": "js_throw",
            "tool": "js_data",
            "inputs": {"code": "const rows = [];\nthrow new Error('nope');"},
        },
        {"name": "js_let", "tool": "js_data", "inputs": {"code": "let result = Promise.resolve({ok: 1});"}},
        {"name": "js_none", "tool": "js_data", "inputs": {"code": "const x = 1;"}},
    )
    outputs = run(spec, tmp_path).outputs
    assert "must set a 'result'" in outputs["noresult"]["error"]
    assert outputs["syntax"]["error"].startswith("python_data: SyntaxError")
    assert "<python_data>" in outputs["syntax"]["traceback"]
    assert outputs["js_throw"]["error"] == "js_data: Error: nope"
    assert "<js_data>:2" in outputs["js_throw"]["traceback"]
    assert "harness" not in outputs["js_throw"]["traceback"]
    assert outputs["js_let"] == {"result": {"ok": 1}, "type": "dict", "_route": "success"}
    assert "must set a 'result'" in outputs["js_none"]["error"]


@needs_node
def test_timeouts_stop_the_code(tmp_path: Path):
    spec = chain(
        {"name": "spin", "tool": "js_data", "inputs": {"code": "while (true) {}", "timeout": "1"}},
        {"name": "sleepy", "tool": "bash_data", "inputs": {"script": "sleep 20", "timeout": "1s"}},
    )
    outputs = run(spec, tmp_path).outputs
    assert outputs["spin"]["_route"] == "error"
    assert "longer than 1 seconds" in outputs["spin"]["error"]
    assert outputs["sleepy"]["_route"] == "error"
    assert outputs["sleepy"]["error"] == "bash_data: Bash script timed out after 1s"


@needs_node
def test_state_input_and_require_are_in_scope(tmp_path: Path):
    spec = chain(
        {"name": "remember", "tool": "set_state", "inputs": {"key": "unit", "value": "kg"}},
        {
            "name": "py",
            "tool": "python_data",
            "inputs": {
                "code": "result = {'unit': state['unit'], 'region': input['region'], 'json': json.dumps([1])}"
            },
        },
        {
            "name": "js",
            "tool": "js_data",
            "inputs": {
                "code": "const os = require('os');\n"
                "result = [state.unit, input.region, typeof os.cpus, data.py.unit, data.remember];"
            },
        },
    )
    outputs = run(spec, tmp_path, {"region": "emea"}).outputs
    assert outputs["py"]["result"] == {"unit": "kg", "region": "emea", "json": "[1]"}
    assert outputs["js"]["result"] == ["kg", "emea", "function", "kg", "State updated: unit = kg"]
    assert outputs["js"]["type"] == "list"


def test_a_phase_timeout_kills_python_data(tmp_path: Path):
    spec = load_cascade(
        {
            "cascade_id": "slow",
            "phases": [
                {
                    "name": "slow",
                    "tool": "python_data",
                    "timeout": "2s",
                    "inputs": {"code": "import time\ntime.sleep(60)\nresult = 1"},
                }
            ],
        }
    )
    started = time.monotonic()
    result = run_cascade(spec, {}, RunOptions(base_dir=tmp_path))
    assert result.status == "failed" and "slow" in (result.error or "")
    assert time.monotonic() - started < 30


def test_bash_session_persists_exports_functions_and_cwd_across_phases(tmp_path: Path):
    spec = chain(
        {
            "name": "setup",
            "tool": "bash_data",
            "inputs": {
                "script": (
                    "export PROJECT=demo\n"
                    'greet() { echo "hi $1"; }\n'
                    "mkdir -p work/data && cd work/data\n"
                    "echo 'step,value'; echo 'setup,ok'\n"
                ),
                "env": {"EXTRA": "given"},
            },
        },
        {
            "name": "check",
            "tool": "bash_data",
            "inputs": {
                "script": (
                    "echo 'project,dir,greeting,phase,extra,session_dir'\n"
                    'echo "$PROJECT,$(basename "$PWD"),$(greet you),$PHASE_NAME,$EXTRA,'
                    '$(basename "$SESSION_DIR")"\n'
                ),
                "output_format": "csv",
            },
        },
        {
            "name": "oneshot",
            "tool": "bash_data",
            "inputs": {
                "script": (
                    'echo \'{"project": "\'"${PROJECT:-unset}"\'", "dir": "\'"$(basename "$PWD")"\'"}\''
                ),
                "persist_session": "false",
            },
        },
    )
    outputs = run(spec, tmp_path).outputs
    assert outputs["setup"]["rows"] == [{"step": "setup", "value": "ok"}]
    assert outputs["check"]["rows"] == [
        {
            "project": "demo",
            "dir": "data",
            "greeting": "hi you",
            "phase": "check",
            "extra": "given",
            "session_dir": "bash",
        }
    ]
    # Without persistence: a fresh shell in the session's bash folder (JSON output detected).
    assert outputs["oneshot"]["rows"] == [{"project": "unset", "dir": "bash"}]


def test_bash_input_table_output_formats_and_bad_arguments(tmp_path: Path):
    spec = chain(
        SALES,
        {"name": "other", "tool": "python_data", "inputs": {"code": "result = pd.DataFrame({'z': [9]})"}},
        {
            "name": "named",
            "tool": "bash_data",
            "inputs": {"script": 'tail -n +2 | cut -d, -f2 | sed \'s/.*/{"p": "&"}/\'', "input_table": "raw"},
        },
        {"name": "badformat", "tool": "bash_data", "inputs": {"script": "echo 1", "output_format": "xml"}},
        {"name": "badtimeout", "tool": "bash_data", "inputs": {"script": "echo 1", "timeout": "soon"}},
        {"name": "badtable", "tool": "bash_data", "inputs": {"script": "cat", "input_table": "nowhere"}},
        {"name": "badenv", "tool": "bash_data", "inputs": {"script": "true", "env": "{{ input.region }}"}},
        {"name": "reserved", "tool": "bash_data", "inputs": {"script": "true", "env": {"PHASE_NAME": "x"}}},
        {"name": "failing", "tool": "bash_data", "inputs": {"script": "echo oops >&2; exit 3"}},
        {
            "name": "unparsable",
            "tool": "bash_data",
            "inputs": {"script": "echo '[1,'", "output_format": "json"},
        },
    )
    outputs = run(spec, tmp_path, {"region": "emea"}).outputs
    assert outputs["named"]["rows"] == [{"p": "laptop"}, {"p": "phone"}, {"p": "lamp"}]
    assert outputs["badformat"]["error"] == (
        "bash_data: `output_format` must be csv, json, jsonl or auto, not 'xml'"
    )
    assert outputs["badtimeout"]["error"].startswith("bash_data: timeout must be a duration")
    assert "input_table 'nowhere'" in outputs["badtable"]["error"]
    assert (
        outputs["badenv"]["error"] == "bash_data: env must be a mapping of variable names to values, not str"
    )
    assert outputs["reserved"]["error"] == "bash_data: env: PHASE_NAME is set by bash_data itself"
    failing = outputs["failing"]
    assert failing["exit_code"] == 3 and failing["stderr"] == "oops" and failing["_route"] == "error"
    assert "failed to parse the output as json" in outputs["unparsable"]["error"]


def test_outputs_are_bounded_and_the_table_keeps_every_row(tmp_path: Path):
    spec = chain(
        {
            "name": "many",
            "tool": "python_data",
            "inputs": {"code": "print('x' * 100_000)\nresult = pd.DataFrame({'n': range(5000)})"},
        },
        {
            "name": "count",
            "tool": "sql_data",
            "inputs": {"query": "SELECT count(*) AS c, max(n) AS m FROM _many"},
        },
        {"name": "again", "tool": "python_data", "inputs": {"code": "result = int(data.many['n'].count())"}},
        {
            "name": "hungry",
            "tool": "python_data",
            "inputs": {"code": "block = bytearray(3 * 1024**3)\nresult = 1"},
        },
    )
    outputs = run(spec, tmp_path).outputs
    many = outputs["many"]
    assert len(many["rows"]) == MAX_RETURNED_ROWS and many["row_count"] == 5000
    assert len(many["stdout"]) < MAX_TEXT + 100
    assert outputs["count"]["rows"] == [{"c": 5000, "m": 4999}]
    assert outputs["again"]["result"] == 5000  # read from the full table, not the cut rows
    assert outputs["hungry"]["error"] == "python_data: MemoryError"  # the memory limit held


@needs_bwrap
def test_the_model_calls_python_data_in_the_sandbox(llm_server, tmp_path: Path, monkeypatch):
    monkeypatch.setenv("POLYGLOT_TEST_SECRET", "hunter2")
    secret_file = Path.home() / ".polyglot-test-secret"
    secret_file.write_text("hunter2")
    try:
        spec = chain(
            {
                "name": "raw",
                "tool": "python_data",
                "inputs": {"code": "result = pd.DataFrame({'v': [2, 3]})"},
            },
            {
                "name": "author",
                "tool": "python_data",
                "inputs": {"code": "import pandas\nresult = {'pandas': pandas.__name__, 'n': len(data.raw)}"},
            },
            {"name": "analyst", "instructions": "Sum the values.", "tackle": ["python_data"]},
        )
        model_code = (
            "import os\n"
            f"secret_file = {str(secret_file)!r}\n"
            "result = {'env': os.environ.get('POLYGLOT_TEST_SECRET'),\n"
            "          'file': os.path.exists(secret_file),\n"
            "          'sum': int(data.raw['v'].sum())}\n"
        )
        llm_server.script(tool_call("python_data", {"code": model_code}), text("the sum is 5"))
        result = run(spec, tmp_path, model_factory=server_models(llm_server))
    finally:
        secret_file.unlink()
    assert result.outputs["author"]["result"] == {"pandas": "pandas", "n": 2}
    first, after_tool = llm_server.requests
    assert first.tool_names == ["python_data"]
    assert first.body["tools"][0]["function"]["parameters"]["required"] == ["code"]
    answered = tool_answer(after_tool)
    assert answered["result"] == {"env": None, "file": False, "sum": 5}  # no secret reached it
    assert answered["_route"] == "success"
    assert result.outputs["analyst"] == "the sum is 5"


def test_without_bubblewrap_only_the_authors_code_runs(llm_server, tmp_path: Path, monkeypatch):
    # This machine without a working bubblewrap (the sandbox probes it once per process).
    monkeypatch.setattr(sandbox, "_BWRAP_WORKS", False)
    spec = chain(
        {"name": "author", "tool": "python_data", "inputs": {"code": "result = 'author ran'"}},
        {"name": "analyst", "instructions": "Compute.", "tackle": ["python_data"]},
    )
    llm_server.script(tool_call("python_data", {"code": "result = 1"}), text("could not"))
    result = run(spec, tmp_path, model_factory=server_models(llm_server))
    assert result.outputs["author"]["result"] == "author ran"
    refused = tool_answer(llm_server.requests[1])
    assert refused["_route"] == "error"
    assert "bubblewrap" in refused["error"] and "allow_unsandboxed_code" in refused["error"]

    llm_server.requests.clear()
    llm_server.script(tool_call("python_data", {"code": "result = 1 + 1"}), text("two"))
    allowed = run(
        spec,
        tmp_path,
        model_factory=server_models(llm_server),
        tool_services=ToolServices(allow_unsandboxed_code=True),
    )
    assert allowed.outputs["analyst"] == "two"
    assert tool_answer(llm_server.requests[1])["result"] == 2


@pytest.mark.skipif(shutil.which("bb") is not None, reason="Babashka is installed here")
def test_clojure_data_is_refused_by_validation_without_babashka(tmp_path: Path):
    reason = unavailable_reason("clojure_data")
    assert reason is not None and "Babashka (`bb`)" in reason
    path = tmp_path / "clj.yaml"
    path.write_text("cascade_id: c\nphases:\n  - {name: a, tool: clojure_data, inputs: {code: '(+ 1 2)'}}\n")
    messages = [issue.message for issue in check_cascade(path).issues]
    assert any("clojure_data" in message and "bb" in message for message in messages), messages


@pytest.mark.skipif(shutil.which("bb") is None, reason="Babashka (bb) is not installed")
def test_clojure_data_with_babashka(tmp_path: Path):
    spec = chain(
        SALES,
        {
            "name": "by_product",
            "tool": "clojure_data",
            "inputs": {
                "code": (
                    "(vec (for [r (:raw data)] {:product (:product r) :total (* (:price r) (:quantity r))}))"
                )
            },
        },
        {"name": "broken", "tool": "clojure_data", "inputs": {"code": "(/ 1 0)"}},
    )
    outputs = run(spec, tmp_path).outputs
    assert outputs["by_product"]["type"] == "dataframe"
    assert [row["product"] for row in outputs["by_product"]["rows"]] == ["laptop", "phone", "lamp"]
    assert outputs["broken"]["_route"] == "error" and "Divide by zero" in outputs["broken"]["error"]


def test_js_data_is_available_where_node_is():
    assert (unavailable_reason("js_data") is None) == (shutil.which("node") is not None)
    assert unavailable_reason("python_data") is None and unavailable_reason("bash_data") is None
