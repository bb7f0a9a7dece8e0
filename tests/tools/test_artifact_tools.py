"""The artifacts family (tools/artifacts.py) and its store (artifact_store.py): charts and HTML
artifacts created by a scripted model through ``tackle`` and by ``tool:`` phases, run end to end
through ``run_cascade``, then read back from the real SQLite store."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from airflow_llm_provider.cascades import load_cascade
from airflow_llm_provider.cascades.artifact_store import (
    MAX_CONTENT_BYTES,
    Artifact,
    ArtifactError,
    ArtifactStore,
    default_artifacts_dir,
    new_artifact_id,
)
from airflow_llm_provider.cascades.loader import check_cascade
from airflow_llm_provider.cascades.runner import RunOptions, run_cascade
from airflow_llm_provider.cascades.tools.builtin import ToolServices
from airflow_llm_provider.testing.openai_server import Reply, text, tool_call
from tests.support.models import server_models

BAR_SPEC = {
    "title": "Sales by region",
    "data": {"values": [{"region": "emea", "sales": 3}, {"region": "apac", "sales": 5}]},
    "mark": "bar",
    "encoding": {
        "x": {"field": "region", "type": "nominal"},
        "y": {"field": "sales", "type": "quantitative"},
    },
}


def options(server, artifacts: Path, **kwargs) -> RunOptions:
    return RunOptions(
        model_factory=server_models(server),
        tool_services=ToolServices(artifacts_dir=artifacts, scratch_root=artifacts.parent / "scratch"),
        **kwargs,
    )


def cascade(phases: list[dict], cascade_id: str = "artifact_demo") -> object:
    return load_cascade({"cascade_id": cascade_id, "phases": phases})


def calls(*pairs: tuple[str, dict]) -> Reply:
    """One reply asking for several tool calls at once (one round of tool results)."""
    return Reply(tool_calls=list(pairs))


def tool_answers(request) -> list[str]:
    """The tool results the model was sent back in ``request``."""
    return [m["content"] for m in request.messages if m.get("role") == "tool"]


def test_the_model_creates_a_vega_lite_chart_and_an_artifact(llm_server, tmp_path: Path):
    artifacts = tmp_path / "artifacts"
    spec = cascade(
        [
            {
                "name": "analyse",
                "instructions": "Chart the sales, then publish a dashboard.",
                "tackle": ["create_vega_lite", "create_artifact"],
            },
            {
                "name": "review",
                "instructions": "Find the dashboard: {{ outputs.analyse }}",
                "tackle": ["list_artifacts"],
            },
        ]
    )
    llm_server.script(
        calls(
            ("create_vega_lite", {"spec_json": json.dumps(BAR_SPEC), "width": 500}),
            (
                "create_artifact",
                {
                    "html": "<h1>Sales</h1><p>apac leads</p>",
                    "title": "Sales dashboard",
                    "description": "Weekly sales",
                    "tags": ["sales", "weekly"],
                },
            ),
        ),
        text("published"),
        tool_call("list_artifacts", {"cascade_id": "artifact_demo", "tags": ["weekly"]}),
        text("found"),
    )
    result = run_cascade(spec, {}, options(llm_server, artifacts, session_id="run-42"))
    assert result.status == "success", result.error
    assert result.outputs["analyse"] == "published"

    first = llm_server.requests[0]
    schemas = {t["function"]["name"]: t["function"]["parameters"] for t in first.body["tools"]}
    assert schemas["create_vega_lite"]["required"] == ["spec_json"]
    assert set(schemas["create_artifact"]["properties"]) == {
        "html",
        "title",
        "artifact_type",
        "description",
        "tags",
    }

    chart_text, created_text = tool_answers(llm_server.requests[1])
    chart_answer = json.loads(chart_text)
    assert chart_answer["content"] == "Created Vega-Lite bar chart (500x400px)"
    assert chart_answer["artifact_id"].startswith("artifact_") and len(chart_answer["artifact_id"]) == 21
    assert chart_answer["url"] == f"/cascade-artifacts/?id={chart_answer['artifact_id']}"
    # vl-convert (extra "charts", installed here) rendered a PNG, Windlass's chart.png.
    assert chart_answer["images"][0].endswith("chart.png")

    created = json.loads(created_text)
    assert created["created"] is True and created["html_length"] == len("<h1>Sales</h1><p>apac leads</p>")
    listed = json.loads(tool_answers(llm_server.requests[3])[-1])
    assert listed["count"] == 1  # only the dashboard has the tag
    assert listed["artifacts"][0]["id"] == created["artifact_id"]
    assert "content" not in listed["artifacts"][0]

    # The store holds both, with the run's ids, readable by another process's store object.
    store = ArtifactStore(artifacts)
    chart = store.get(chart_answer["artifact_id"])
    assert chart is not None
    assert (chart.session_id, chart.cascade_id, chart.phase) == ("run-42", "artifact_demo", "analyse")
    assert (chart.artifact_type, chart.format, chart.title) == ("chart", "vega-lite", "Sales by region")
    stored_spec = json.loads(chart.content)
    assert (stored_spec["width"], stored_spec["height"]) == (500, 400)
    assert chart.image is not None and chart.image.startswith(b"\x89PNG")
    dashboard = store.get(created["artifact_id"])
    assert dashboard is not None
    assert (dashboard.format, dashboard.artifact_type, dashboard.tags) == (
        "html",
        "dashboard",
        ["sales", "weekly"],
    )
    assert dashboard.content == "<h1>Sales</h1><p>apac leads</p>"
    assert {a["id"] for a in store.summaries(session_id="run-42")} == {dashboard.id, chart.id}


def test_a_bad_spec_is_answered_with_a_clear_error_the_model_can_correct(llm_server, tmp_path: Path):
    artifacts = tmp_path / "artifacts"
    spec = cascade([{"name": "chart", "instructions": "Chart it.", "tackle": ["create_vega_lite"]}])
    llm_server.script(
        calls(
            ("create_vega_lite", {"spec_json": "{'mark': 'bar'"}),
            ("create_vega_lite", {"spec_json": json.dumps({"mark": "nonsense", "data": {"values": []}})}),
            ("create_vega_lite", {"spec_json": json.dumps(BAR_SPEC)}),
        ),
        text("done"),
    )
    result = run_cascade(spec, {}, options(llm_server, artifacts))
    assert result.status == "success", result.error
    not_json, invalid, good = tool_answers(llm_server.requests[1])
    assert not_json.startswith("Error: create_vega_lite: spec_json is not valid JSON")
    assert invalid.startswith("Error: create_vega_lite: spec_json is not a valid Vega-Lite chart")
    assert "Traceback" not in invalid and len(invalid) < 2000
    assert "artifact_id" in json.loads(good)
    assert len(ArtifactStore(artifacts).summaries()) == 1  # the refused specs were not stored


def test_tool_phases_chart_plotly_and_show_ui(llm_server, tmp_path: Path):
    artifacts = tmp_path / "artifacts"
    plotly_figure = {
        "data": [{"type": "scatter", "x": [1, 2, 3], "y": [2, 1, 3]}],
        "layout": {"title": "Trend"},
    }
    spec = cascade(
        [
            {"name": "bars", "tool": "create_chart", "inputs": {"title": "Counts", "data_points": "3, 5,2"}},
            {
                "name": "trend",
                "tool": "create_plotly",
                "inputs": {"spec_json": json.dumps(plotly_figure), "width": "{{ 700 }}"},
            },
            {"name": "card", "tool": "show_ui", "inputs": {"html": "<b>ok</b>", "title": "Status"}},
        ],
        cascade_id="ui_demo",
    )
    result = run_cascade(spec, {}, options(llm_server, artifacts))
    assert result.status == "success", result.error
    bars = json.loads(result.outputs["bars"])
    assert bars["content"] == "I have generated the chart 'Counts' with data 3, 5,2."
    trend = json.loads(result.outputs["trend"])
    assert trend["content"] == "Created Plotly chart: 'Trend' (scatter) (700x600px)"
    assert "images" not in trend  # no kaleido: the page draws Plotly charts
    card = json.loads(result.outputs["card"])
    assert (card["displayed"], card["title"], card["html_length"]) == (True, "Status", 9)
    store = ArtifactStore(artifacts)
    plotted = store.get(trend["artifact_id"])
    assert plotted is not None and plotted.format == "plotly"
    assert json.loads(plotted.content)["layout"] == {"title": "Trend", "width": 700, "height": 600}
    chart = store.get(bars["artifact_id"])
    assert chart is not None
    values = json.loads(chart.content)["data"]["values"]
    assert [v["value"] for v in values] == [3.0, 5.0, 2.0]
    ui = store.get(card["artifact_id"])
    assert ui is not None and (ui.artifact_type, ui.format, ui.content) == ("ui", "html", "<b>ok</b>")


def test_get_artifact_returns_the_row_bounded_or_an_error(llm_server, tmp_path: Path):
    artifacts = tmp_path / "artifacts"
    big = ArtifactStore(artifacts).add(artifact(content="<p>" + "z" * 30_000 + "</p>", title="Big"))
    spec = cascade(
        [
            {"name": "found", "tool": "get_artifact", "inputs": {"artifact_id": big.id}},
            {"name": "missing", "tool": "get_artifact", "inputs": {"artifact_id": "artifact_000000000000"}},
        ]
    )
    result = run_cascade(spec, {}, options(llm_server, artifacts))
    assert result.status == "success", result.error
    found = json.loads(result.outputs["found"])
    assert (found["id"], found["title"], found["format"]) == (big.id, "Big", "html")
    assert found["content_truncated"] is True and found["content_chars"] == 30_007
    assert len(found["content"]) == 20_000 and found["html_content"] == found["content"]
    assert json.loads(result.outputs["missing"]) == {"error": "Artifact not found: artifact_000000000000"}

    spec = cascade([{"name": "bad", "tool": "get_artifact", "inputs": {"artifact_id": "../../etc/passwd"}}])
    result = run_cascade(spec, {}, options(llm_server, artifacts))
    assert "get_artifact: artifact_id must look like artifact_<12 hex digits>" in str(result.error)


def test_a_tool_phase_with_bad_input_fails_naming_tool_and_argument(llm_server, tmp_path: Path):
    spec = cascade(
        [{"name": "bars", "tool": "create_chart", "inputs": {"title": "x", "data_points": "1, two"}}]
    )
    result = run_cascade(spec, {}, options(llm_server, tmp_path / "artifacts"))
    assert result.status != "success"
    assert "create_chart: data_points must be comma-separated numbers" in str(result.error)
    assert "Traceback" not in str(result.error)

    spec = cascade([{"name": "p", "tool": "create_plotly", "inputs": {"spec_json": '{"data": []}'}}])
    result = run_cascade(spec, {}, options(llm_server, tmp_path / "artifacts"))
    assert "create_plotly: spec_json must include 'data': a non-empty list of traces" in str(result.error)

    spec = cascade(
        [
            {
                "name": "v",
                "tool": "create_vega_lite",
                "inputs": {"spec_json": json.dumps(BAR_SPEC), "width": "wide"},
            }
        ]
    )
    result = run_cascade(spec, {}, options(llm_server, tmp_path / "artifacts"))
    assert "create_vega_lite: width must be a number of pixels, got 'wide'" in str(result.error)

    bad_trace = json.dumps({"data": [{"type": "scatter", "bogusprop": 1}]})
    spec = cascade([{"name": "p", "tool": "create_plotly", "inputs": {"spec_json": bad_trace}}])
    result = run_cascade(spec, {}, options(llm_server, tmp_path / "artifacts"))
    assert "create_plotly: spec_json is not a valid Plotly figure" in str(result.error)
    assert "bogusprop" in str(result.error)


def test_an_artifact_over_the_size_bound_is_refused(llm_server, tmp_path: Path):
    artifacts = tmp_path / "artifacts"
    huge = "<p>" + "x" * MAX_CONTENT_BYTES + "</p>"
    spec = cascade([{"name": "publish", "instructions": "Publish.", "tackle": ["create_artifact"]}])
    llm_server.script(tool_call("create_artifact", {"html": huge, "title": "Too big"}), text("gave up"))
    result = run_cascade(spec, {}, options(llm_server, artifacts))
    assert result.status == "success", result.error
    answer = tool_answers(llm_server.requests[1])[-1]
    assert answer.startswith(
        "Error: content is 5,242,887 bytes; an artifact may hold at most 5,242,880 bytes"
    )
    assert ArtifactStore(artifacts).summaries() == []

    too_big_spec = json.dumps({**BAR_SPEC, "description": "y" * MAX_CONTENT_BYTES})
    spec = cascade([{"name": "c", "tool": "create_vega_lite", "inputs": {"spec_json": too_big_spec}}])
    result = run_cascade(spec, {}, options(llm_server, artifacts))
    assert "create_vega_lite: spec_json is 5,243," in str(result.error)


def test_vega_lite_data_from_a_url_is_refused(llm_server, tmp_path: Path):
    fetched = {**BAR_SPEC, "data": {"url": "http://127.0.0.1:9/secret.csv"}}
    spec = cascade([{"name": "c", "tool": "create_vega_lite", "inputs": {"spec_json": json.dumps(fetched)}}])
    result = run_cascade(spec, {}, options(llm_server, tmp_path / "artifacts"))
    assert "create_vega_lite: spec_json data must be inline" in str(result.error)


def test_validation_accepts_the_artifact_tools(tmp_path: Path):
    path = tmp_path / "charts.yaml"
    path.write_text(
        "cascade_id: c\nphases:\n"
        "  - {name: a, instructions: go, tackle: [create_chart, create_vega_lite, create_plotly, show_ui]}\n"
        "  - {name: b, tool: create_artifact, inputs: {html: '<p>x</p>', title: t}}\n"
        "  - {name: c, tool: list_artifacts, inputs: {}}\n"
    )
    assert [issue.message for issue in check_cascade(path).issues] == []


# -- the store alone ------------------------------------------------------------------------------
def artifact(**fields) -> Artifact:
    values = {
        "id": new_artifact_id(),
        "session_id": "s1",
        "cascade_id": "c1",
        "phase": "p",
        "artifact_type": "dashboard",
        "format": "html",
        "title": "T",
        "content": "<p>hi</p>",
    }
    values.update(fields)
    return Artifact(**values)


def test_store_round_trip_filters_and_bounds(tmp_path: Path):
    store = ArtifactStore(tmp_path / "a")
    assert store.summaries() == [] and store.get(new_artifact_id()) is None  # no file yet
    assert not (tmp_path / "a").exists()  # reading creates nothing
    first = store.add(artifact(tags=["x"], created_at=1.0))
    second = store.add(artifact(cascade_id="c2", session_id="s2", artifact_type="ui", created_at=2.0))
    third = store.add(
        artifact(format="plotly", artifact_type="chart", content='{"data": []}', created_at=3.0)
    )

    again = ArtifactStore(tmp_path / "a").get(first.id)
    assert again == first
    assert [a["id"] for a in store.summaries()] == [third.id, second.id, first.id]
    assert [a["id"] for a in store.summaries(cascade_id="c2")] == [second.id]
    assert [a["id"] for a in store.summaries(session_id="s1", artifact_type="chart")] == [third.id]
    assert [a["id"] for a in store.summaries(tags=["nope", "x"])] == [first.id]
    assert [a["id"] for a in store.summaries(limit=1)] == [third.id]
    assert store.summaries()[0]["content_bytes"] == len('{"data": []}')
    assert store.facets() == {"cascades": ["c1", "c2"], "sessions": ["s1", "s2"]}
    assert store.get("artifact_'; DROP TABLE artifacts; --") is None

    with pytest.raises(ArtifactError, match="at most 5,242,880 bytes"):
        store.add(artifact(content="x" * (MAX_CONTENT_BYTES + 1)))
    with pytest.raises(ArtifactError, match="format 'svg' is not one of"):
        store.add(artifact(format="svg"))
    with pytest.raises(ArtifactError, match="artifact_type must be"):
        store.add(artifact(artifact_type="<script>"))
    with pytest.raises(ArtifactError, match="title is 501 characters"):
        store.add(artifact(title="t" * 501))
    rows = sqlite3.connect(store.path).execute("SELECT count(*) FROM artifacts").fetchone()
    assert rows == (3,)


def test_default_location_is_next_to_the_phase_cache(monkeypatch, tmp_path: Path):
    monkeypatch.delenv("AIRFLOW_LLM_ARTIFACTS_DIR", raising=False)
    monkeypatch.setenv("AIRFLOW_LLM_CACHE_DIR", str(tmp_path / "cache" / "phases"))
    assert default_artifacts_dir() == tmp_path / "cache" / "artifacts"
    assert ArtifactStore().path == tmp_path / "cache" / "artifacts" / "artifacts.db"
    monkeypatch.setenv("AIRFLOW_LLM_ARTIFACTS_DIR", str(tmp_path / "elsewhere"))
    assert default_artifacts_dir() == tmp_path / "elsewhere"


# -- the page's data layer (plugins/artifacts_page/data.py; the web adapters are in the e2e) -------
def test_page_data_lists_filters_and_serves_local_chart_libraries(tmp_path: Path):
    from airflow_llm_provider.plugins.artifacts_page.data import (
        BadRequest,
        artifact_payload,
        library,
        list_payload,
    )
    from airflow_llm_provider.plugins.artifacts_page.page import page_html

    store = ArtifactStore(tmp_path / "a")
    one = store.add(artifact(cascade_id="c1", image=b"\x89PNG..."))
    store.add(artifact(cascade_id="c2"))
    data = list_payload(store, {"cascade_id": "c1", "limit": "10"})
    assert [a["id"] for a in data["artifacts"]] == [one.id] and data["count"] == 1
    assert data["filters"] == {"cascade_id": "c1"}
    assert set(data["choices"]["cascades"]) == {"c1", "c2"}
    assert data["libraries"] == {
        "plotly": True,
        "vega": True,
        "install": "pip install 'airflow-llm-provider[charts]'",
    }
    with pytest.raises(BadRequest, match="limit must be between 1 and 500"):
        list_payload(store, {"limit": "0"})
    with pytest.raises(BadRequest, match="artifact id must look like"):
        artifact_payload(store, "../x")
    row = artifact_payload(store, one.id)
    assert row is not None and row["content"] == "<p>hi</p>" and "image" not in row and row["has_image"]
    assert artifact_payload(store, new_artifact_id()) is None

    plotly_js = library("plotly.min.js")
    assert plotly_js is not None and len(plotly_js) > 1_000_000 and b"Plotly" in plotly_js[:5000]
    vega_js = library("vega-bundle.js")
    assert vega_js is not None and b"window.vegaEmbed" in vega_js
    assert library("../../etc/passwd") is None

    page = page_html()
    assert 'FRAME_SANDBOX = "allow-scripts"' in page and "allow-same-origin" not in page
    assert "connect-src 'none'" in page and "innerHTML" not in page
