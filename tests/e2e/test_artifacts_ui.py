"""The "Cascade artifacts" page on a running deployment (api-server on Airflow 3, webserver on
Airflow 2), its store an SQLite file the artifact tools wrote (``AIRFLOW_LLM_ARTIFACTS_DIR``).

Artifacts are made by running a cascade whose scripted model calls ``create_vega_lite``,
``create_plotly`` and ``create_artifact``; the page is rendered by headless Chromium (Debian's
``chromium``), which must list them, draw the charts with the local chart libraries (no CDN: the
machine has no internet) and keep a hostile HTML artifact's script away from the page.

Chromium's command line cannot be given a cookie, so the browser talks to the cost page test's
reverse proxy, which adds the login cookie of a logged-in browser.
"""

from __future__ import annotations

import html.parser
import json
import os
import shutil
import struct
import subprocess
import threading
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import ThreadingHTTPServer
from pathlib import Path

import pytest
import requests

from airflow_llm_provider.cascades import load_cascade
from airflow_llm_provider.cascades.artifact_store import ArtifactStore
from airflow_llm_provider.cascades.runner import RunOptions, run_cascade
from airflow_llm_provider.cascades.tools.builtin import ToolServices
from airflow_llm_provider.testing.openai_server import Reply, ScriptedOpenAIServer, text
from tests.e2e.test_cost_page_ui import _CookieProxy, browser_cookie, logged_in
from tests.fixtures.airflow_server import (
    REPO_ROOT,
    AirflowServer,
    _drop_database,
    _metadata_database,
    start_airflow_server,
    stop_airflow_server,
)
from tests.support.models import server_models

pytestmark = pytest.mark.e2e

ARTIFACTS = REPO_ROOT / "test-artifacts" / "artifacts-page"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

VEGA_SPEC = {
    "title": "Sales by region",
    "data": {"values": [{"region": r, "sales": s} for r, s in (("emea", 3), ("apac", 5), ("amer", 4))]},
    "mark": "bar",
    "encoding": {
        "x": {"field": "region", "type": "nominal"},
        "y": {"field": "sales", "type": "quantitative"},
    },
    "transform": [{"calculate": "datum.sales * 2", "as": "double"}],  # needs the expression interpreter
}
PLOTLY_FIGURE = {
    "data": [{"type": "bar", "x": ["mon", "tue", "wed", "thu"], "y": [4, 1, 3, 2]}],
    "layout": {"title": {"text": "Calls per day"}},
}
MAGENTA, GREEN = (255, 0, 255), (0, 255, 0)
# Paints its frame magenta when it ran and every attempt on the page failed, green if one worked.
HOSTILE_HTML = """<style>html, body { margin: 0; height: 100%; background: #ffffff; }</style>
<h1 style="display:none">hostile</h1>
<script>
var reached = [];
try { window.parent.document.body.setAttribute("data-pwned", "dom"); reached.push("dom"); } catch (e) {}
try { window.top.document.title = "pwned"; reached.push("title"); } catch (e) {}
try { window.parent.localStorage.setItem("pwned", "1"); reached.push("storage"); } catch (e) {}
try {
  if (/_token|session/.test(document.cookie)) reached.push("cookie");
} catch (e) {}
function paint(colour) {
  document.documentElement.style.background = colour;
  document.body.style.background = colour;
}
paint(reached.length ? "#00ff00" : "#ff00ff");
try {
  var fetched = fetch("../api/artifacts", { credentials: "include" });
  fetched.then(function () { paint("#00ff00"); }, function () {});
} catch (e) {}
try { window.top.location.href = "about:blank#pwned"; } catch (e) {}
</script>"""


@dataclass
class Seeded:
    chart: str
    plotly: str
    hostile: str
    session_id: str


def _make_artifacts(directory: Path) -> Seeded:
    """Run a cascade whose scripted model creates the artifacts, as a worker would."""
    with ScriptedOpenAIServer() as server:
        server.script(
            Reply(
                tool_calls=[
                    ("create_vega_lite", {"spec_json": json.dumps(VEGA_SPEC)}),
                    ("create_plotly", {"spec_json": json.dumps(PLOTLY_FIGURE), "width": 700, "height": 420}),
                    (
                        "create_artifact",
                        {"html": HOSTILE_HTML, "title": "Hostile dashboard", "tags": ["e2e"]},
                    ),
                ]
            ),
            text("done"),
        )
        cascade = load_cascade(
            {
                "cascade_id": "ui_report",
                "phases": [
                    {
                        "name": "publish",
                        "instructions": "Publish the charts.",
                        "tackle": ["create_vega_lite", "create_plotly", "create_artifact"],
                    }
                ],
            }
        )
        options = RunOptions(
            model_factory=server_models(server),
            tool_services=ToolServices(artifacts_dir=directory),
            session_id="e2e-run-1",
        )
        result = run_cascade(cascade, {}, options)
        assert result.status == "success", result.error
        answers = [json.loads(m["content"]) for m in server.requests[1].messages if m.get("role") == "tool"]
    chart, plotly, hostile = (a["artifact_id"] for a in answers)
    # Another cascade's artifact, for the filters.
    other = load_cascade(
        {"cascade_id": "other", "phases": [{"name": "x", "tool": "show_ui", "inputs": {"html": "<p>x</p>"}}]}
    )
    assert (
        run_cascade(other, {}, RunOptions(tool_services=ToolServices(artifacts_dir=directory))).status
        == "success"
    )
    return Seeded(chart=chart, plotly=plotly, hostile=hostile, session_id="e2e-run-1")


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[AirflowServer, Seeded]]:
    home = tmp_path_factory.mktemp("artifacts-page")
    store_dir = home / "artifacts"
    seeded = _make_artifacts(store_dir)
    database = _metadata_database()
    try:
        server = start_airflow_server(
            home / "airflow",
            database_url=database.sqlalchemy_uri if database else None,
            extra_env={"AIRFLOW_LLM_ARTIFACTS_DIR": str(store_dir)},
        )
        try:
            yield server, seeded
        finally:
            stop_airflow_server(server)
    finally:
        if database is not None:
            _drop_database(database.dbname)


@pytest.fixture(scope="module")
def browser_url(deployment) -> Iterator[str]:
    server, _ = deployment
    handler = type("Proxy", (_CookieProxy,), {"upstream": server.base_url, "cookie": browser_cookie(server)})
    proxy = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=proxy.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{proxy.server_address[1]}"
    finally:
        proxy.shutdown()


# -- the JSON API ----------------------------------------------------------------------------------
def test_api_refuses_anonymous_callers_and_lists_for_a_user(deployment):
    server, seeded = deployment
    base = f"{server.base_url}/cascade-artifacts"
    anonymous = requests.get(f"{base}/api/artifacts", timeout=30, allow_redirects=False)
    assert anonymous.status_code == 401, anonymous.text
    page = requests.get(f"{base}/", timeout=30, allow_redirects=False)
    assert page.status_code in (302, 307) and "login" in page.headers["location"]
    library = requests.get(f"{base}/static/plotly.min.js", timeout=30, allow_redirects=False)
    assert library.status_code in (302, 307, 401)

    session = logged_in(server)
    listed = session.get(f"{base}/api/artifacts", params={"cascade_id": "ui_report"}, timeout=30)
    assert listed.status_code == 200, listed.text
    data = listed.json()
    assert {a["id"] for a in data["artifacts"]} == {seeded.chart, seeded.plotly, seeded.hostile}
    assert set(data["choices"]["cascades"]) == {"ui_report", "other"}
    assert data["libraries"]["plotly"] and data["libraries"]["vega"]
    # JSON only, never a document of this origin.
    one = session.get(f"{base}/api/artifacts/{seeded.hostile}", timeout=30)
    assert one.status_code == 200 and one.headers["content-type"].startswith("application/json")
    assert "sandbox" in one.headers["content-security-policy"]
    assert one.json()["content"] == HOSTILE_HTML
    assert session.get(f"{base}/api/artifacts/artifact_000000000000", timeout=30).status_code == 404
    bad = session.get(f"{base}/api/artifacts", params={"limit": "many"}, timeout=30)
    assert bad.status_code == 400 and "limit must be a whole number" in bad.json()["detail"]
    script = session.get(f"{base}/static/vega-bundle.js", timeout=60)
    assert script.status_code == 200 and "vegaEmbed" in script.text
    assert script.headers["content-type"].startswith("text/javascript")


def test_page_is_in_the_navigation(deployment):
    server, _ = deployment
    if server.airflow3:
        plugins = {p["name"]: p for p in server.request("GET", "/plugins")["plugins"]}
        ours = plugins["llm_provider"]
        assert "/cascade-artifacts" in [a["url_prefix"] for a in ours["fastapi_apps"]]
        (view,) = [v for v in ours["external_views"] if v["name"] == "Cascade artifacts"]
        assert (view["href"], view["destination"]) == ("cascade-artifacts/", "nav")
    else:
        home = logged_in(server).get(f"{server.base_url}/home", timeout=30)
        assert home.status_code == 200
        assert 'href="/cascade-artifacts/"' in home.text or 'href="/cascade-artifacts"' in home.text
        assert "Cascade artifacts" in home.text


# -- the page in a browser -------------------------------------------------------------------------
def chromium(url: str, tmp_path: Path, *, screenshot: str | None = None) -> str:
    """The DOM after the page's scripts ran (and optionally a screenshot, kept in test-artifacts/)."""
    if CHROMIUM is None:
        message = "headless Chromium is needed for the artifacts page e2e: apt-get install -y chromium"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(message)
        pytest.skip(message)
    base = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--hide-scrollbars",
        "--no-first-run",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
        "--window-size=1200,1000",
        "--virtual-time-budget=20000",
    ]
    dom = subprocess.run([*base, "--dump-dom", url], capture_output=True, text=True, timeout=180, check=False)
    assert dom.returncode == 0 and dom.stdout.strip(), dom.stderr[-3000:]
    if screenshot:
        target = tmp_path / screenshot
        shot = subprocess.run(
            [*base, f"--screenshot={target}", url], capture_output=True, text=True, timeout=180, check=False
        )
        assert shot.returncode == 0 and target.is_file(), shot.stderr[-3000:]
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        shutil.copy(target, ARTIFACTS / target.name)
    return dom.stdout


@dataclass
class Node:
    tag: str
    attrs: dict[str, str]
    ancestors: list[str]
    """ids of the elements this one is inside."""
    text: list[str] = field(default_factory=list)


class _Collect(html.parser.HTMLParser):
    VOID = {"rect", "line", "circle", "path", "input", "br", "meta", "img", "link", "hr"}

    def __init__(self) -> None:
        super().__init__()
        self.nodes: list[Node] = []
        self._open: list[Node] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        node = Node(
            tag, {k: v or "" for k, v in attrs}, [n.attrs["id"] for n in self._open if "id" in n.attrs]
        )
        self.nodes.append(node)
        if tag not in self.VOID:
            self._open.append(node)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.nodes.append(
            Node(tag, {k: v or "" for k, v in attrs}, [n.attrs["id"] for n in self._open if "id" in n.attrs])
        )

    def handle_endtag(self, tag: str) -> None:
        # A closing tag of an element never opened (</path> after a void <path>) closes nothing.
        if any(n.tag == tag for n in self._open):
            while self._open.pop().tag != tag:
                pass

    def handle_data(self, data: str) -> None:
        if self._open and data.strip():
            self._open[-1].text.append(data.strip())


def parse(dom: str) -> list[Node]:
    collector = _Collect()
    collector.feed(dom)
    return collector.nodes


def find(nodes: list[Node], tag: str | None = None, **attrs: str) -> list[Node]:
    wanted = {k.replace("_", "-"): v for k, v in attrs.items()}
    return [
        n
        for n in nodes
        if (tag is None or n.tag == tag) and all(n.attrs.get(k) == v for k, v in wanted.items())
    ]


def classes(node: Node) -> set[str]:
    return set(node.attrs.get("class", "").split())


def ready(nodes: list[Node]) -> None:
    (body,) = find(nodes, "body")
    assert body.attrs.get("data-state") == "ready", [n.text for n in find(nodes, "div", id="error")]


def test_page_lists_the_artifacts_and_filters_them(deployment, browser_url, tmp_path):
    _, seeded = deployment
    nodes = parse(chromium(f"{browser_url}/cascade-artifacts/", tmp_path, screenshot="list.png"))
    ready(nodes)
    rows = {
        n.attrs["data-artifact-id"]: n.attrs["data-format"]
        for n in find(nodes, "tr")
        if "data-artifact-id" in n.attrs
    }
    assert {
        seeded.chart: "vega-lite",
        seeded.plotly: "plotly",
        seeded.hostile: "html",
    }.items() <= rows.items()
    assert len(rows) == 4  # and the other cascade's show_ui
    titles = [" ".join(n.text) for n in find(nodes, "a") if n.attrs.get("href", "").startswith("?id=")]
    assert {"Sales by region", "Calls per day", "Hostile dashboard", "UI"} == set(titles)
    assert find(nodes, "div", id="notice")[0].attrs.get("hidden") is not None  # libraries are installed

    nodes = parse(chromium(f"{browser_url}/cascade-artifacts/?cascade_id=other", tmp_path))
    ready(nodes)
    rows = [n for n in find(nodes, "tr") if "data-artifact-id" in n.attrs]
    assert len(rows) == 1 and rows[0].attrs["data-format"] == "html"
    selected = [o for o in find(nodes, "option") if "selected" in o.attrs]
    assert any(o.attrs.get("value") == "other" for o in selected) or find(nodes, "select", id="f-cascade")


def test_vega_lite_chart_is_drawn_from_the_local_bundle(deployment, browser_url, tmp_path):
    _, seeded = deployment
    url = f"{browser_url}/cascade-artifacts/?id={seeded.chart}"
    nodes = parse(chromium(url, tmp_path, screenshot="vega-lite.png"))
    ready(nodes)
    (viewer,) = find(nodes, "section", id="viewer")
    assert viewer.attrs["data-drawn"] == "true" and viewer.attrs["data-format"] == "vega-lite"
    svgs = [n for n in find(nodes, "svg") if "chart" in n.ancestors]
    assert svgs, "vega-embed drew no svg in the chart container"
    bars = [
        n
        for n in find(nodes, "path")
        if "chart" in n.ancestors and n.attrs.get("aria-roledescription") == "bar"
    ]
    assert len(bars) == 3, [n.attrs for n in find(nodes, "path") if "chart" in n.ancestors][:5]
    assert [" ".join(n.text) for n in find(nodes, "h2", id="viewer-title")] == ["Sales by region"]


def test_plotly_chart_is_drawn_from_the_local_library(deployment, browser_url, tmp_path):
    _, seeded = deployment
    nodes = parse(
        chromium(f"{browser_url}/cascade-artifacts/?id={seeded.plotly}", tmp_path, screenshot="plotly.png")
    )
    ready(nodes)
    assert find(nodes, "section", id="viewer")[0].attrs["data-drawn"] == "true"
    in_chart = [n for n in nodes if "chart" in n.ancestors]
    assert any(n.tag == "svg" and "main-svg" in classes(n) for n in in_chart), "plotly drew no svg"
    points = [n for n in in_chart if n.tag == "g" and "point" in classes(n)]
    assert len(points) == 4  # one bar per day


def _png_pixels(path: Path) -> tuple[int, int, int, bytes]:
    """(width, height, bytes per pixel, raw pixels) of an 8-bit RGB/RGBA PNG (Chromium's screenshots)."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, header = 8, b"", b""
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, chunk = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            header = chunk
        elif kind == b"IDAT":
            idat += chunk
        pos += 12 + length
    width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", header)
    assert depth == 8 and colour in (2, 6) and interlace == 0, (depth, colour, interlace)
    bpp = 3 if colour == 2 else 4
    raw = zlib.decompress(idat)
    stride = width * bpp
    out = bytearray(height * stride)
    previous = bytearray(stride)
    for y in range(height):
        kind = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1 : (y + 1) * (stride + 1)])
        if kind == 1:
            for i in range(bpp, stride):
                line[i] = (line[i] + line[i - bpp]) & 0xFF
        elif kind == 2:
            line = bytearray((a + b) & 0xFF for a, b in zip(line, previous, strict=True))
        elif kind == 3:
            for i in range(stride):
                left = line[i - bpp] if i >= bpp else 0
                line[i] = (line[i] + ((left + previous[i]) >> 1)) & 0xFF
        elif kind == 4:
            for i in range(stride):
                a = line[i - bpp] if i >= bpp else 0
                b, c = previous[i], previous[i - bpp] if i >= bpp else 0
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 0xFF
        out[y * stride : (y + 1) * stride] = line
        previous = line
    return width, height, bpp, bytes(out)


def _count(pixels: tuple[int, int, int, bytes], colour: tuple[int, int, int]) -> int:
    _, _, bpp, raw = pixels
    wanted = bytes(colour)
    return sum(1 for i in range(0, len(raw), bpp) if raw[i : i + 3] == wanted)


def test_an_html_artifact_runs_sandboxed_and_cannot_touch_the_page(deployment, browser_url, tmp_path):
    _, seeded = deployment
    url = f"{browser_url}/cascade-artifacts/?id={seeded.hostile}"
    dom = chromium(url, tmp_path, screenshot="hostile.png")
    nodes = parse(dom)
    ready(nodes)  # the page is still there: the frame could not navigate it away
    (body,) = find(nodes, "body")
    assert "data-pwned" not in body.attrs
    assert find(nodes, "title")[0].text == ["Cascade artifacts"]
    (frame,) = find(nodes, "iframe", id="artifact-frame")
    assert frame.attrs["sandbox"] == "allow-scripts"  # no allow-same-origin: an opaque origin
    assert "connect-src 'none'" in frame.attrs["srcdoc"]
    assert "data-pwned" in frame.attrs["srcdoc"]  # the artifact is in the frame, not in the page
    assert not find(nodes, "h1", style="display:none")  # its markup never reached the page's DOM

    # The frame's script ran (magenta) and none of its attempts on the page worked (no green).
    # The screenshot is a second browser run; on a loaded machine it can be taken before the
    # frame has painted, so it is taken again (at most twice more) until the frame has painted.
    for attempt in range(3):
        if attempt:
            (tmp_path / f"retry-{attempt}").mkdir()
            chromium(url, tmp_path / f"retry-{attempt}", screenshot="hostile.png")
        shot = tmp_path / (f"retry-{attempt}" if attempt else "") / "hostile.png"
        pixels = _png_pixels(shot)
        assert _count(pixels, GREEN) == 0, "the artifact's script reached the page"
        if _count(pixels, MAGENTA) > 50_000:
            break
    else:
        pytest.fail("the artifact's script did not run in its frame (3 screenshots)")


def test_an_artifact_made_after_start_shows_up(deployment, browser_url, tmp_path):
    """The server reads the store the workers keep writing (no cache between them)."""
    server, _ = deployment
    store = ArtifactStore(Path(server.env["AIRFLOW_LLM_ARTIFACTS_DIR"]))
    late = load_cascade(
        {
            "cascade_id": "late",
            "phases": [
                {"name": "x", "tool": "create_chart", "inputs": {"title": "Late", "data_points": "1,2"}}
            ],
        }
    )
    result = run_cascade(late, {}, RunOptions(tool_services=ToolServices(artifacts_dir=store.directory)))
    assert result.status == "success", result.error
    artifact_id = json.loads(result.final)["artifact_id"]
    nodes = parse(chromium(f"{browser_url}/cascade-artifacts/?cascade_id=late&id={artifact_id}", tmp_path))
    ready(nodes)
    assert [n.attrs["data-artifact-id"] for n in find(nodes, "tr") if "data-artifact-id" in n.attrs] == [
        artifact_id
    ]
    assert [n for n in find(nodes, "svg") if "chart" in n.ancestors]


def test_page_inside_the_airflow_ui(deployment, browser_url, tmp_path):
    """Airflow 3 shows the page inside its own UI (the navigation entry's route, in an iframe)."""
    server, _ = deployment
    if not server.airflow3:
        pytest.skip("Airflow 2 opens the page from its Browse menu (test_page_is_in_the_navigation)")
    dom = chromium(f"{browser_url}/plugin/cascade-artifacts", tmp_path, screenshot="in-airflow-ui.png")
    frames = find(parse(dom), "iframe", title="Cascade artifacts")
    assert frames, dom[-3000:]
    assert frames[0].attrs["src"].rstrip("/").endswith("cascade-artifacts")
