"""Windlass's ``for_each_row`` (run/rows.py): one child run per row of a session table, a child
cascade or an inline LLM phase, with ``result_table`` and ``on_error``."""

from __future__ import annotations

from pathlib import Path

import yaml

from airflow_llm_provider.cascades import load_cascade
from airflow_llm_provider.cascades.graph import phase_dependencies
from airflow_llm_provider.cascades.limits import Limits
from airflow_llm_provider.cascades.runner import RunOptions, run_cascade
from airflow_llm_provider.testing.openai_server import text
from tests.support.models import server_models

CUSTOMERS = {
    "name": "customers",
    "tool": "sql_data",
    "inputs": {"query": "SELECT * FROM (VALUES ('ann', 3), ('bob', 5), ('boom', 1)) AS t(name, orders)"},
}
CHILD = {
    "cascade_id": "shout",
    "inputs_schema": {"item": "a word"},
    "phases": [
        {
            "name": "shout",
            "tool": "python:tests.tools.helpers_upper.upper",
            "inputs": {"text": "{{ input.item }}"},
        }
    ],
}


def write(tmp_path: Path, phases: list[dict]) -> Path:
    (tmp_path / "tackle").mkdir(exist_ok=True)
    (tmp_path / "tackle" / "child.yaml").write_text(yaml.safe_dump(CHILD))
    path = tmp_path / "rows.yaml"
    path.write_text(yaml.safe_dump({"cascade_id": "rows", "phases": phases}))
    return path


def test_a_child_cascade_per_row_with_a_result_table(tmp_path):
    path = write(
        tmp_path,
        [
            CUSTOMERS,
            {
                "name": "each",
                "for_each_row": {
                    "table": "_customers",
                    "cascade": "tackle/child.yaml",
                    "inputs": {"item": "{{ row.name }}-{{ index }}/{{ total }}"},
                    "max_parallel": 2,
                    "result_table": "_shouted",
                    "on_error": "collect_errors",
                },
            },
            {
                "name": "check",
                "tool": "sql_data",
                "inputs": {"query": "SELECT _index, name, result FROM _shouted ORDER BY _index"},
            },
        ],
    )
    cascade = load_cascade(path)
    assert phase_dependencies(cascade)["each"] == {"customers"}
    result = run_cascade(cascade, {}, RunOptions(base_dir=tmp_path))
    assert result.status == "success", result.error
    each = result.outputs["each"]
    assert each["results"] == ["ANN-0/3", "BOB-1/3", "BOOM-2/3"]
    assert (each["count"], each["total"], each["_route"]) == (3, 3, "success")
    assert result.outputs["check"]["rows"] == [
        {"_index": 0, "name": "ann", "result": "ANN-0/3"},
        {"_index": 1, "name": "bob", "result": "BOB-1/3"},
        {"_index": 2, "name": "boom", "result": "BOOM-2/3"},
    ]


def test_failed_rows_are_collected_or_fail_fast(tmp_path):
    phases = [
        CUSTOMERS,
        {
            "name": "each",
            "for_each_row": {
                "table": "_customers",
                "cascade": "tackle/child.yaml",
                "inputs": {"item": "{{ row.name }}"},
                "on_error": "collect_errors",
            },
        },
    ]
    result = run_cascade(load_cascade(write(tmp_path, phases)), {}, RunOptions(base_dir=tmp_path))
    each = result.outputs["each"]
    assert each["count"] == 2 and [e["row"]["name"] for e in each["errors"]] == ["boom"]
    phases[1]["for_each_row"]["on_error"] = "fail_fast"
    result = run_cascade(load_cascade(write(tmp_path, phases)), {}, RunOptions(base_dir=tmp_path))
    assert result.status == "failed" and "row 2 failed" in (result.error or "")


def test_an_llm_phase_per_row_sees_row_data_as_text(tmp_path, llm_server):
    phases = [
        {
            "name": "people",
            "tool": "sql_data",
            "inputs": {"query": "SELECT * FROM (VALUES ('ann'), ('{' || '{ 7 * 7 }' || '}')) AS t(name)"},
        },
        {
            "name": "greet",
            "for_each_row": {
                "table": "_people",
                "instructions": "Greet {{ row.name }} ({{ index + 1 }} of {{ total }}).",
            },
        },
    ]
    llm_server.responder = lambda request: text("hi " + request.text_of("system"))
    options = RunOptions(model_factory=server_models(llm_server), base_dir=tmp_path)
    result = run_cascade(load_cascade(write(tmp_path, phases)), {}, options)
    assert result.status == "success", result.error
    prompts = sorted(r.text_of("system") for r in llm_server.requests)
    assert prompts == ["Greet ann (1 of 2).", "Greet {{ 7 * 7 }} (2 of 2)."]  # row text is never rendered
    assert result.outputs["greet"]["count"] == 2


def test_a_missing_table_is_an_error_route_and_rows_are_bounded(tmp_path):
    phases = [{"name": "each", "for_each_row": {"table": "_nothing", "cascade": "tackle/child.yaml"}}]
    result = run_cascade(load_cascade(write(tmp_path, phases)), {}, RunOptions(base_dir=tmp_path))
    assert result.outputs["each"]["_route"] == "error"
    assert "Failed to read table _nothing" in result.outputs["each"]["error"]
    phases = [
        CUSTOMERS,
        {"name": "each", "for_each_row": {"table": "_customers", "cascade": "tackle/child.yaml"}},
    ]
    result = run_cascade(
        load_cascade(write(tmp_path, phases)),
        {},
        RunOptions(base_dir=tmp_path, limits=Limits(max_map_items=2)),
    )
    assert result.status == "failed" and "more than 2 rows" in (result.error or "")
