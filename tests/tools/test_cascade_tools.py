"""Windlass's child-cascade tools (tools/cascades.py): ``map_cascade``, ``spawn_cascade`` and
``windlass_data``, run end to end; LLM phases against the scripted OpenAI-protocol server."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import yaml

from airflow_llm_provider.cascades import load_cascade
from airflow_llm_provider.cascades.errors import CascadeValidationError
from airflow_llm_provider.cascades.limits import Limits
from airflow_llm_provider.cascades.runner import RunOptions, run_cascade
from airflow_llm_provider.testing.openai_server import error, structured, text, tool_call
from tests.support.models import server_models

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


def project(tmp_path: Path, parent_phases: list[dict], child: dict | None = None) -> Path:
    """A Windlass-like checkout: examples/parent.yaml naming tackle/child.yaml from the root."""
    (tmp_path / "tackle").mkdir()
    (tmp_path / "examples").mkdir()
    (tmp_path / "tackle" / "child.yaml").write_text(yaml.safe_dump(child or CHILD))
    parent = tmp_path / "examples" / "parent.yaml"
    parent.write_text(yaml.safe_dump({"cascade_id": "parent", "phases": parent_phases}))
    return parent


def run(path: Path, options: RunOptions | None = None, inputs: dict | None = None):
    options = options or RunOptions()
    options.base_dir = path.parent
    return run_cascade(load_cascade(path), inputs or {}, options)


def test_map_cascade_runs_each_item_as_a_child_and_keeps_item_order(tmp_path):
    path = project(
        tmp_path,
        [
            {
                "name": "fan",
                "tool": "map_cascade",
                # Windlass passes numbers as strings in inputs; the path is relative to the checkout.
                "inputs": {
                    "cascade": "tackle/child.yaml",
                    "map_over": '["pear", "fig", "kiwi"]',
                    "max_parallel": "2",
                },
            }
        ],
    )
    result = run(path)
    assert result.status == "success", result.error
    fan = result.outputs["fan"]
    assert [r["item"] for r in fan["results"]] == ["pear", "fig", "kiwi"]
    assert [r["output"] for r in fan["results"]] == ["PEAR", "FIG", "KIWI"]
    assert (fan["count"], fan["total"], fan["_route"]) == (3, 3, "success")


def test_map_over_a_comma_string_and_failed_items_as_windlass(tmp_path):
    path = project(
        tmp_path,
        [
            {
                "name": "fan",
                "tool": "map_cascade",
                "inputs": {
                    "cascade": "tackle/child.yaml",
                    "map_over": "pear, boom",
                    "on_error": "collect_errors",
                },
            }
        ],
    )
    fan = run(path).outputs["fan"]
    assert fan["count"] == 1 and fan["total"] == 2
    assert fan["errors"][0]["item"] == "boom"
    assert "boom is not a fruit" in fan["errors"][0]["error"]
    assert fan["_route"] == "success"  # continue/collect: the phase goes on, as in Windlass


def test_all_or_nothing_routes_to_error(tmp_path):
    path = project(
        tmp_path,
        [
            {
                "name": "fan",
                "tool": "map_cascade",
                "inputs": {
                    "cascade": "tackle/child.yaml",
                    "map_over": ["boom", "pear"],
                    "mode": "all_or_nothing",
                },
                "routing": {"success": "done", "error": "mend"},
                "handoffs": ["done", "mend"],
            },
            {"name": "done", "tool": "python:tests.tools.helpers_upper.upper", "inputs": {"text": "ok"}},
            {"name": "mend", "tool": "python:tests.tools.helpers_upper.upper", "inputs": {"text": "mended"}},
        ],
    )
    result = run(path)
    assert result.status == "success", result.error
    assert "mend" in result.outputs and "done" not in result.outputs
    assert result.outputs["fan"]["_route"] == "error"


def test_first_valid_returns_the_first_success(tmp_path):
    path = project(
        tmp_path,
        [
            {
                "name": "fan",
                "tool": "map_cascade",
                "inputs": {
                    "cascade": "tackle/child.yaml",
                    "map_over": ["boom", "pear", "fig"],
                    "mode": "first_valid",
                    "max_parallel": 1,
                },
            }
        ],
    )
    fan = run(path).outputs["fan"]
    assert (fan["result"], fan["item"], fan["index"]) == ("PEAR", "pear", 1)


def test_map_items_count_against_the_sub_cascade_run_limit(tmp_path):
    path = project(
        tmp_path,
        [
            {
                "name": "fan",
                "tool": "map_cascade",
                "inputs": {"cascade": "tackle/child.yaml", "map_over": ["a", "b", "c", "d"]},
            }
        ],
    )
    result = run(path, RunOptions(limits=Limits(max_sub_cascade_runs=2)))
    assert result.status == "failed"
    assert "max_sub_cascade_runs" in (result.error or "")


def test_map_cascade_timeout_covers_the_whole_pool(tmp_path):
    slow = {
        **CHILD,
        "phases": [{**CHILD["phases"][0], "tool": "python:tests.tools.helpers_upper.slow_upper"}],
    }
    path = project(
        tmp_path,
        [
            {
                "name": "fan",
                "tool": "map_cascade",
                "inputs": {
                    "cascade": "tackle/child.yaml",
                    "map_over": ["a", "b", "c", "d"],
                    "max_parallel": 1,
                    "timeout": 0.5,
                },
            }
        ],
        child=slow,
    )
    started = time.monotonic()
    fan = run(path).outputs["fan"]
    assert time.monotonic() - started < 3
    assert fan["_route"] == "error" and "timed out after 0.5s" in fan["error"]


def test_spawned_cascades_finish_before_the_run_ends(tmp_path):
    marker_child = {
        "cascade_id": "remember",
        "inputs_schema": {"item": "a word"},
        "phases": [
            {
                "name": "r",
                "tool": "python:tests.tools.helpers_upper.slow_upper",
                "inputs": {"text": "{{ input.item }}"},
            }
        ],
    }
    path = project(
        tmp_path,
        [
            {
                "name": "spawn",
                "tool": "spawn_cascade",
                "inputs": {"cascade_ref": "tackle/child.yaml", "input_data": {"item": "z"}},
            }
        ],
        child=marker_child,
    )
    lines: list[str] = []
    result = run(path, RunOptions(on_event=lines.append))
    assert result.status == "success", result.error
    assert result.outputs["spawn"].startswith("Spawned cascade 'tackle/child.yaml' with Session ID: spawned_")
    # The run's last line comes after the child's: the run waited for it.
    done = next(i for i, line in enumerate(lines) if "spawned cascade tackle/child.yaml: done" in line)
    assert done < len(lines) - 1 and "cascade parent: success" in lines[-1]


def test_a_child_path_that_climbs_out_is_refused(tmp_path):
    path = project(
        tmp_path,
        [
            {
                "name": "fan",
                "tool": "map_cascade",
                "inputs": {"cascade": "../../etc/passwd", "map_over": ["a"]},
            }
        ],
    )
    fan = run(path).outputs["fan"]
    assert fan["count"] == 0
    assert "climbs out" in fan["errors"][0]["error"]


def test_windlass_data_runs_an_inline_llm_phase_with_the_runs_outputs(tmp_path, llm_server):
    cell = yaml.safe_dump(
        {
            "instructions": "Classify {{ outputs.load }} for {{ input.region }}.",
            "output_schema": {
                "type": "array",
                "items": {"type": "object", "properties": {"name": {"type": "string"}}},
            },
        }
    )
    path = project(
        tmp_path,
        [
            {"name": "load", "tool": "python:tests.tools.helpers_upper.upper", "inputs": {"text": "plums"}},
            {"name": "classify", "tool": "windlass_data", "inputs": {"phase_yaml": cell}},
        ],
    )
    # An array schema is asked for under `result` (structured output must be an object).
    llm_server.script(structured({"result": [{"name": "a"}, {"name": "b"}]}))
    result = run(path, RunOptions(model_factory=server_models(llm_server)), {"region": "emea"})
    assert result.status == "success", result.error
    assert "Classify PLUMS for emea." in llm_server.requests[0].text_of("system")
    classify = result.outputs["classify"]
    assert classify["rows"] == [{"name": "a"}, {"name": "b"}]
    assert (classify["columns"], classify["row_count"], classify["_route"]) == (["name"], 2, "success")


def test_a_failed_windlass_data_cell_is_an_error_route(tmp_path, llm_server):
    cell = yaml.safe_dump({"instructions": "Go.", "output_schema": {"type": "object", "properties": {}}})
    path = project(tmp_path, [{"name": "cell", "tool": "windlass_data", "inputs": {"phase_yaml": cell}}])
    llm_server.script(error(400, "model refuses"))
    result = run(path, RunOptions(model_factory=server_models(llm_server)))
    assert result.status == "success", result.error
    assert result.outputs["cell"]["_route"] == "error"
    assert "model refuses" in result.outputs["cell"]["error"]


def test_windlass_data_without_output_schema_is_an_error_route(tmp_path):
    path = project(
        tmp_path,
        [{"name": "classify", "tool": "windlass_data", "inputs": {"phase_yaml": "instructions: hi"}}],
    )
    out = run(path).outputs["classify"]
    assert out["_route"] == "error" and "output_schema" in out["error"]


def test_the_model_maps_a_cascade_through_tackle(tmp_path, llm_server):
    path = project(
        tmp_path, [{"name": "plan", "instructions": "Shout each fruit.", "tackle": ["map_cascade"]}]
    )
    llm_server.script(
        tool_call("map_cascade", {"cascade": "tackle/child.yaml", "map_over": ["fig", "pear"]}), text("done")
    )
    result = run(path, RunOptions(model_factory=server_models(llm_server)))
    assert result.status == "success", result.error
    assert "map_cascade" in llm_server.requests[0].tool_names
    schema = next(t for t in llm_server.requests[0].body["tools"] if t["function"]["name"] == "map_cascade")
    assert schema["function"]["parameters"]["required"] == ["cascade", "map_over"]
    assert '"output":"FIG"' in llm_server.requests[1].messages[-1]["content"]


def test_validate_checks_a_built_in_tools_inputs(tmp_path):
    path = project(
        tmp_path, [{"name": "c", "tool": "map_cascade", "inputs": {"cascade": "x.yaml", "items": "[1]"}}]
    )
    with pytest.raises(CascadeValidationError) as caught:
        load_cascade(path)
    message = str(caught.value)
    assert "parent.yaml:" in message and "phases[0].inputs" in message
    assert "`map_cascade` needs the input `map_over`" in message
    assert "`map_cascade` takes no input `items`" in message


def test_windlass_data_takes_the_notebooks_code_input(tmp_path, llm_server):
    """Windlass's notebooks give every cell's body as `code`; their runner hands it to
    windlass_data as phase_yaml, so a notebook cascade runs here unchanged."""
    cell = yaml.safe_dump({"instructions": "Go.", "output_schema": {"type": "object", "properties": {}}})
    path = project(tmp_path, [{"name": "cell", "tool": "windlass_data", "inputs": {"code": cell}}])
    llm_server.script(structured({"ok": 1}))
    result = run(path, RunOptions(model_factory=server_models(llm_server)))
    assert result.status == "success", result.error
    assert result.outputs["cell"]["result"] == {"ok": 1}


def test_validate_checks_a_python_tools_inputs(tmp_path):
    path = project(
        tmp_path, [{"name": "c", "tool": "python:tests.tools.helpers_upper.upper", "inputs": {"txt": "a"}}]
    )
    with pytest.raises(CascadeValidationError) as caught:
        load_cascade(path)
    message = str(caught.value)
    assert "`python:tests.tools.helpers_upper.upper` needs the input `text`" in message
    assert "takes no input `txt` (it takes: text)" in message
