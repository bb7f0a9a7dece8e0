"""The artifacts family of built-in tools: Windlass's charts, artifacts and ``show_ui``.

- ``create_chart(title, data_points)``: a bar chart of comma-separated numbers;
  ``create_vega_lite(spec_json, width=600, height=400)`` and
  ``create_plotly(spec_json, width=800, height=600)``: a chart from a JSON spec.
  Windlass renders each to ``./chart.png`` (overwritten by the next chart) and injects the image
  into the conversation. Here each chart is stored as an artifact of the run (artifact_store.py)
  and drawn by the "Cascade artifacts" page; the answer is Windlass's JSON ``{content, ...}`` plus
  ``artifact_id`` and ``url``. A Vega-Lite chart is also compiled (a broken spec is refused) and
  rendered to PNG offline when ``vl-convert-python`` is installed (extra ``charts``): the PNG is
  kept with the artifact and written to the run's scratch folder as ``chart.png``, listed under
  ``images`` as Windlass does. Plotly specs are checked with ``plotly`` when installed; no PNG
  (kaleido needs a browser).
- ``create_artifact(html, title, artifact_type="dashboard", description=None, tags=None)`` ->
  ``{created, artifact_id, title, url, html_length}``; ``list_artifacts(cascade_id=None,
  artifact_type=None, tags=None, limit=50)`` -> ``{artifacts, count}`` (summaries, newest first;
  ``tags`` matches any, which Windlass documents but does not do); ``get_artifact(artifact_id)``
  -> the row with its content (bounded; ``{"error": ...}`` when unknown).
- ``show_ui(html, title=None, description=None, collapsible=False)``: Windlass shows the HTML
  inline in its dashboard; here it is stored as an artifact of type ``ui`` and answers
  ``{displayed, title, html_length}`` (plus ``artifact_id``).

Bad input: a model (``tackle:``) gets ``Error: <tool>: <argument> ...`` as the tool's answer, as
Windlass answers a failing tool, so it can correct itself; a ``tool:`` phase fails with that
message (its ``on_error`` applies).
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import math
from collections.abc import Callable
from typing import Any

from airflow_llm_provider.cascades.artifact_store import (
    MAX_CONTENT_BYTES,
    VIEW_URL_PREFIX,
    Artifact,
    ArtifactError,
    ArtifactStore,
    artifact_json,
    is_artifact_id,
    new_artifact_id,
)
from airflow_llm_provider.cascades.tools.builtin import BuiltinTool, ToolContext

log = logging.getLogger(__name__)

MAX_DATA_POINTS = 10_000
MAX_SIDE_PIXELS = 4_000
MAX_ANSWER_CONTENT_CHARS = 20_000
"""``get_artifact`` shows at most this much of an artifact's content to the model."""
_VEGA_COMPOSITE = ("layer", "hconcat", "vconcat", "concat", "facet", "repeat", "spec")
_ERROR_CHARS = 1_500


class ArtifactToolError(ValueError):
    """Bad input to one of these tools; the message starts with the tool's name."""


def view_url(artifact_id: str) -> str:
    """Where the "Cascade artifacts" page shows ``artifact_id`` (relative to the Airflow UI)."""
    return f"{VIEW_URL_PREFIX}/?id={artifact_id}"


def _store(context: ToolContext) -> ArtifactStore:
    return ArtifactStore(context.services.artifacts_dir)


def _answer(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, default=str)


def _guarded(context: ToolContext, function: Callable[..., Any]) -> Callable[..., Any]:
    """Turn bad input into Windlass's ``Error: ...`` answer for a model, a failure for a tool phase."""

    # wraps: the model sees the tool's own signature and docstring (pydantic-ai reads __wrapped__).
    @functools.wraps(function)
    async def call(*args: Any, **kwargs: Any) -> Any:
        try:
            return await function(*args, **kwargs)
        except (ArtifactToolError, ArtifactError) as err:
            if context.deterministic:
                raise
            return f"Error: {err}"

    return call


def _fail(tool: str, message: str) -> ArtifactToolError:
    return ArtifactToolError(f"{tool}: {message}")


def _text(tool: str, name: str, value: Any, *, required: bool = False) -> str:
    if value is None:
        value = ""
    if not isinstance(value, str):
        raise _fail(tool, f"{name} must be text, got {type(value).__name__}")
    if required and not value.strip():
        raise _fail(tool, f"{name} must not be empty")
    return value


def _size(tool: str, name: str, value: Any) -> int:
    if isinstance(value, str):  # a tool phase's rendered input ("{{ ... }}") arrives as text
        try:
            value = float(value.strip())
        except ValueError:
            raise _fail(tool, f"{name} must be a number of pixels, got {value[:40]!r}") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise _fail(tool, f"{name} must be a number of pixels, got {value!r}")
    if not 10 <= value <= MAX_SIDE_PIXELS:
        raise _fail(tool, f"{name} must be between 10 and {MAX_SIDE_PIXELS} pixels, got {value}")
    return int(value)


def _tags(tool: str, value: Any) -> list[str]:
    """``tags`` as a list of text; a string is a JSON list or comma-separated."""
    if value is None or value == "":
        return []
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            try:
                value = json.loads(text)
            except ValueError as err:
                raise _fail(tool, f"tags is not a valid JSON list ({err})") from None
        else:
            value = [t.strip() for t in text.split(",") if t.strip()]
    if not isinstance(value, (list, tuple)) or not all(isinstance(t, str) for t in value):
        raise _fail(tool, "tags must be a list of text")
    return [t.strip() for t in value if t.strip()]


def _spec(tool: str, spec_json: Any) -> dict[str, Any]:
    """``spec_json`` parsed: a JSON object of bounded size."""
    if isinstance(spec_json, dict):
        spec_json = json.dumps(spec_json)
    if not isinstance(spec_json, str):
        raise _fail(tool, f"spec_json must be a JSON object as text, got {type(spec_json).__name__}")
    size = len(spec_json.encode("utf-8"))
    if size > MAX_CONTENT_BYTES:
        raise _fail(tool, f"spec_json is {size:,} bytes; at most {MAX_CONTENT_BYTES:,}")
    try:
        spec = json.loads(spec_json)
    except ValueError as err:
        raise _fail(tool, f"spec_json is not valid JSON ({err})") from None
    if not isinstance(spec, dict):
        raise _fail(tool, f"spec_json must be a JSON object, got a JSON {type(spec).__name__}")
    return spec


def _short(message: str) -> str:
    message = " ".join(str(message).split())
    return message if len(message) <= _ERROR_CHARS else message[:_ERROR_CHARS] + " ..."


def _save(context: ToolContext, **fields: Any) -> Artifact:
    artifact = Artifact(
        id=new_artifact_id(),
        session_id=context.session_id,
        cascade_id=context.cascade_id,
        phase=context.phase_name,
        **fields,
    )
    return _store(context).add(artifact)


# -- charts ------------------------------------------------------------------------------------------
def _vega_lite_png(tool: str, spec: dict[str, Any]) -> bytes | None:
    """Compile ``spec`` (a broken spec is refused) and render it to PNG; None without vl-convert."""
    try:
        import vl_convert
    except ImportError:
        return None
    try:
        # No data from URLs: rendering on a worker must not fetch what a model named.
        vl_convert.vegalite_to_vega(spec)
        return bytes(vl_convert.vegalite_to_png(spec, allowed_base_urls=[]))
    except Exception as err:  # vl-convert reports every spec problem as a ValueError-like error
        raise _fail(tool, f"spec_json is not a valid Vega-Lite chart: {_short(str(err))}") from None


def _chart_answer(
    context: ToolContext, artifact: Artifact, content: str, png: bytes | None
) -> dict[str, Any]:
    answer: dict[str, Any] = {"content": content}
    if png is not None:
        # Windlass's chart.png, overwritten by the next chart; here in the run's scratch folder.
        with context.session.lock:
            path = context.session.folder / "chart.png"
            path.write_bytes(png)
        answer["images"] = [str(path)]
    answer.update(artifact_id=artifact.id, url=view_url(artifact.id))
    return answer


def _vega_lite(
    context: ToolContext, tool: str, spec: dict[str, Any], title: str, description: str
) -> tuple[Artifact, bytes | None]:
    png = _vega_lite_png(tool, spec)
    artifact = _save(
        context,
        artifact_type="chart",
        format="vega-lite",
        title=title,
        description=description,
        content=json.dumps(spec, ensure_ascii=False),
        image=png,
    )
    return artifact, png


def _spec_title(spec: dict[str, Any], key: str = "title") -> str:
    title = spec.get(key)
    if isinstance(title, dict):
        title = title.get("text")
    if isinstance(title, list):
        title = " ".join(str(t) for t in title)
    return str(title).strip() if title else ""


def make_create_chart(context: ToolContext) -> Callable[..., Any]:
    async def create_chart(title: str, data_points: str) -> str:
        """Create a simple bar chart of comma-separated numbers (data_points, e.g. "3, 5, 2")."""
        tool = "create_chart"
        title = _text(tool, "title", title, required=True)
        text = _text(tool, "data_points", data_points, required=True)
        try:
            values = [float(x.strip()) for x in text.split(",")]
        except ValueError:
            raise _fail(
                tool, f"data_points must be comma-separated numbers, got {_short(text)[:200]!r}"
            ) from None
        if len(values) > MAX_DATA_POINTS:
            raise _fail(tool, f"data_points has {len(values)} numbers; at most {MAX_DATA_POINTS}")
        if not all(math.isfinite(v) for v in values):
            raise _fail(tool, "data_points must be finite numbers")
        spec = {
            "$schema": "https://vega.github.io/schema/vega-lite/v5.json",
            "title": title,
            "width": 600,
            "height": 400,
            "data": {"values": [{"item": i + 1, "value": v} for i, v in enumerate(values)]},
            "mark": "bar",
            "encoding": {
                "x": {"field": "item", "type": "ordinal", "title": "Items"},
                "y": {"field": "value", "type": "quantitative", "title": "Values"},
            },
        }
        artifact, png = await asyncio.to_thread(_vega_lite, context, tool, spec, title, "")
        content = f"I have generated the chart '{title}' with data {_short(text)[:500]}."
        return _answer(_chart_answer(context, artifact, content, png))

    return _guarded(context, create_chart)


def make_create_vega_lite(context: ToolContext) -> Callable[..., Any]:
    async def create_vega_lite(spec_json: str, width: int = 600, height: int = 400) -> str:
        """Create a chart from a Vega-Lite specification (a JSON object as text, with inline
        "data": {"values": [...]} and a "mark"); width and height in pixels unless the spec sets them."""
        tool = "create_vega_lite"
        spec = _spec(tool, spec_json)
        width, height = _size(tool, "width", width), _size(tool, "height", height)
        data = spec.get("data")
        if not isinstance(data, dict) and "datasets" not in spec:
            raise _fail(tool, "spec_json must include 'data' with 'values' (the chart's rows)")
        if isinstance(data, dict) and "url" in data:
            raise _fail(tool, "spec_json data must be inline ('values'), not fetched from a 'url'")
        if "mark" not in spec and not any(k in spec for k in _VEGA_COMPOSITE):
            raise _fail(tool, "spec_json must include 'mark' (e.g. 'bar', 'line', 'point')")
        spec.setdefault("width", width)
        spec.setdefault("height", height)
        title = _spec_title(spec) or "Vega-Lite chart"
        description = str(spec.get("description") or "")[:1000]
        artifact, png = await asyncio.to_thread(_vega_lite, context, tool, spec, title[:500], description)
        mark = spec.get("mark")
        if isinstance(mark, dict):
            mark = mark.get("type")
        content = f"Created Vega-Lite {mark or 'composite'} chart ({spec['width']}x{spec['height']}px)"
        return _answer(_chart_answer(context, artifact, content, png))

    return _guarded(context, create_vega_lite)


def _check_plotly(tool: str, spec: dict[str, Any]) -> None:
    try:
        import plotly.graph_objects as go
    except ImportError:
        return
    try:
        go.Figure(spec)
    except Exception as err:  # plotly reports unknown properties and bad values as ValueError
        # Its message names the culprit first, then lists every valid property: keep the start.
        first = str(err).strip().split("\n\n")[0]
        raise _fail(tool, f"spec_json is not a valid Plotly figure: {_short(first)[:500]}") from None


def make_create_plotly(context: ToolContext) -> Callable[..., Any]:
    async def create_plotly(spec_json: str, width: int = 800, height: int = 600) -> str:
        """Create a chart from a Plotly figure (a JSON object as text: {"data": [traces],
        "layout": {...}}); width and height in pixels."""
        tool = "create_plotly"
        spec = _spec(tool, spec_json)
        width, height = _size(tool, "width", width), _size(tool, "height", height)
        traces = spec.get("data")
        if not isinstance(traces, list) or not traces:
            raise _fail(tool, "spec_json must include 'data': a non-empty list of traces")
        if not all(isinstance(t, dict) for t in traces):
            raise _fail(tool, "every trace in spec_json 'data' must be a JSON object")
        layout = spec.get("layout")
        if layout is None:
            layout = spec["layout"] = {}
        if not isinstance(layout, dict):
            raise _fail(tool, "spec_json 'layout' must be a JSON object")
        layout.update(width=width, height=height)
        await asyncio.to_thread(_check_plotly, tool, spec)
        title = _spec_title(layout)
        kinds = ", ".join(sorted({str(t.get("type", "scatter")) for t in traces}))
        artifact = await asyncio.to_thread(
            _save,
            context,
            artifact_type="chart",
            format="plotly",
            title=(title or "Plotly chart")[:500],
            content=json.dumps(spec, ensure_ascii=False),
        )
        named = f": '{title}'" if title else ""
        content = f"Created Plotly chart{named} ({kinds}) ({width}x{height}px)"
        return _answer(_chart_answer(context, artifact, content, None))

    return _guarded(context, create_plotly)


# -- artifacts and UI --------------------------------------------------------------------------------
def make_create_artifact(context: ToolContext) -> Callable[..., Any]:
    async def create_artifact(
        html: str,
        title: str,
        artifact_type: str = "dashboard",
        description: str | None = None,
        tags: list[str] | None = None,
    ) -> str:
        """Save an HTML page (a dashboard, report, chart...) as a lasting artifact of this run,
        viewable on the Cascade artifacts page. Returns its artifact_id and url."""
        tool = "create_artifact"
        html = _text(tool, "html", html, required=True)
        title = _text(tool, "title", title, required=True)
        kind = _text(tool, "artifact_type", artifact_type) or "dashboard"
        artifact = await asyncio.to_thread(
            _save,
            context,
            artifact_type=kind,
            format="html",
            title=title,
            description=_text(tool, "description", description),
            tags=_tags(tool, tags),
            content=html,
        )
        return _answer(
            {
                "created": True,
                "artifact_id": artifact.id,
                "title": title,
                "url": view_url(artifact.id),
                "html_length": len(html),
            }
        )

    return _guarded(context, create_artifact)


def make_list_artifacts(context: ToolContext) -> Callable[..., Any]:
    async def list_artifacts(
        cascade_id: str | None = None,
        artifact_type: str | None = None,
        tags: list[str] | None = None,
        limit: int = 50,
    ) -> str:
        """List saved artifacts, newest first, optionally of one cascade, of one type, or having
        any of the given tags (at most `limit`, up to 500). Content is not included."""
        tool = "list_artifacts"
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise _fail(tool, f"limit must be a positive whole number, got {limit!r}")
        rows = await asyncio.to_thread(
            _store(context).summaries,
            cascade_id=_text(tool, "cascade_id", cascade_id) or None,
            artifact_type=_text(tool, "artifact_type", artifact_type) or None,
            tags=_tags(tool, tags),
            limit=limit,
        )
        for row in rows:
            row["url"] = view_url(row["id"])
        return _answer({"artifacts": rows, "count": len(rows)})

    return _guarded(context, list_artifacts)


def make_get_artifact(context: ToolContext) -> Callable[..., Any]:
    async def get_artifact(artifact_id: str) -> str:
        """The saved artifact `artifact_id` with its content (HTML or chart spec)."""
        tool = "get_artifact"
        artifact_id = _text(tool, "artifact_id", artifact_id, required=True).strip()
        if not is_artifact_id(artifact_id):
            raise _fail(
                tool, f"artifact_id must look like artifact_<12 hex digits>, got {artifact_id[:80]!r}"
            )
        artifact = await asyncio.to_thread(_store(context).get, artifact_id)
        if artifact is None:
            return _answer({"error": f"Artifact not found: {artifact_id}"})
        row = artifact_json(artifact)
        row["url"] = view_url(artifact.id)
        if len(artifact.content) > MAX_ANSWER_CONTENT_CHARS:
            row["content"] = artifact.content[:MAX_ANSWER_CONTENT_CHARS]
            row["content_truncated"] = True
            row["content_chars"] = len(artifact.content)
        if artifact.format == "html":
            row["html_content"] = row["content"]  # Windlass's column name
        return _answer(row)

    return _guarded(context, get_artifact)


def make_show_ui(context: ToolContext) -> Callable[..., Any]:
    async def show_ui(
        html: str, title: str | None = None, description: str | None = None, collapsible: bool = False
    ) -> str:
        """Show an HTML snippet (a table, a status card...) to the people following this run,
        without waiting for an answer."""
        tool = "show_ui"
        html = _text(tool, "html", html, required=True)
        shown_title = _text(tool, "title", title).strip()
        artifact = await asyncio.to_thread(
            _save,
            context,
            artifact_type="ui",
            format="html",
            title=shown_title or "UI",
            description=_text(tool, "description", description),
            tags=["collapsible"] if collapsible else [],
            content=html,
        )
        return _answer(
            {"displayed": True, "title": title, "html_length": len(html), "artifact_id": artifact.id}
        )

    return _guarded(context, show_ui)


TOOLS = (
    BuiltinTool(
        "create_chart", make=make_create_chart, description="Create a bar chart of comma-separated numbers."
    ),
    BuiltinTool(
        "create_vega_lite", make=make_create_vega_lite, description="Create a chart from a Vega-Lite spec."
    ),
    BuiltinTool("create_plotly", make=make_create_plotly, description="Create a chart from a Plotly figure."),
    BuiltinTool(
        "create_artifact",
        make=make_create_artifact,
        description="Save an HTML page as a lasting artifact of the run.",
    ),
    BuiltinTool("list_artifacts", make=make_list_artifacts, description="List saved artifacts."),
    BuiltinTool("get_artifact", make=make_get_artifact, description="Get one saved artifact."),
    BuiltinTool("show_ui", make=make_show_ui, description="Show an HTML snippet to the run's viewers."),
)
"""The artifacts family (``builtin.py``). None needs an optional package: without the ``charts``
extra, charts are stored unchecked by vl-convert/plotly and without a PNG."""
