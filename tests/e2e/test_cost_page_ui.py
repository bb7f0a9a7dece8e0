"""The LLM-cost page on a running deployment (api-server on Airflow 3, webserver on Airflow 2), its
ledger a SQLite file filled before start (``[llm_provider] ledger_path``).

The JSON API is called as a logged-in user; the page is rendered by headless Chromium (Debian's
``chromium``), which must draw the charts with the ledger's numbers, and a filter in the URL must
change them. Screenshots are kept in the test's tmp dir and in ``test-artifacts/cost-page/``.

Chromium's command line cannot be given a cookie, so the browser talks to a small local reverse
proxy that adds the login cookie a browser holds after logging in (``_token`` JWT on Airflow 3,
the Flask ``session`` of a form login on Airflow 2) and forwards everything else unchanged.
"""

from __future__ import annotations

import html.parser
import os
import re
import shutil
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests

from airflow_llm_provider.costs.ledger import SQLiteLedger
from tests.fixtures.airflow_server import (
    ADMIN_USER,
    REPO_ROOT,
    AirflowServer,
    _drop_database,
    _metadata_database,
    start_airflow_server,
    stop_airflow_server,
)
from tests.test_cost_page import GPT, HAIKU, ROWS

pytestmark = pytest.mark.e2e

ARTIFACTS = REPO_ROOT / "test-artifacts" / "cost-page"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def cost_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AirflowServer]:
    home = tmp_path_factory.mktemp("cost-page")
    ledger_path = home / "llm_cost_ledger.db"
    SQLiteLedger(ledger_path).record(ROWS)
    database = _metadata_database()
    try:
        server = start_airflow_server(
            home / "airflow",
            database_url=database.sqlalchemy_uri if database else None,
            extra_env={"AIRFLOW__LLM_PROVIDER__LEDGER_PATH": str(ledger_path)},
        )
        try:
            yield server
        finally:
            stop_airflow_server(server)
    finally:
        if database is not None:
            _drop_database(database.dbname)


def browser_cookie(server: AirflowServer) -> str:
    """The ``Cookie`` header a browser sends after logging in to this deployment's UI."""
    if server.airflow3:
        response = requests.post(
            f"{server.base_url}/auth/token",
            json={"username": ADMIN_USER, "password": server.password},
            timeout=30,
        )
        response.raise_for_status()
        return f"_token={response.json()['access_token']}"
    session = requests.Session()
    form = session.get(f"{server.base_url}/login/", timeout=30).text
    csrf = re.search(r'name="csrf_token"[^>]*value="([^"]+)"', form)
    assert csrf, form[:2000]
    session.post(
        f"{server.base_url}/login/",
        data={"username": ADMIN_USER, "password": server.password, "csrf_token": csrf.group(1)},
        timeout=30,
    )
    assert session.cookies.get("session"), "the webserver's login form did not log us in"
    return f"session={session.cookies.get('session')}"


def logged_in(server: AirflowServer) -> requests.Session:
    """A requests session carrying the browser's login cookie."""
    session = requests.Session()
    session.headers["Cookie"] = browser_cookie(server)
    return session


# -- the JSON API ----------------------------------------------------------------------------------
def test_api_and_page_refuse_anonymous_callers(cost_server):
    api = requests.get(f"{cost_server.base_url}/llm-costs/api/summary", timeout=30, allow_redirects=False)
    assert api.status_code == 401, api.text
    assert api.json() == {"detail": "Not authenticated"}
    page = requests.get(f"{cost_server.base_url}/llm-costs/", timeout=30, allow_redirects=False)
    assert page.status_code in (302, 307), page.text
    assert "login" in page.headers["location"]


@pytest.mark.parametrize("auth", ["api client", "browser session"])
def test_summary_api_with_filters(cost_server, auth):
    # The API client as scripts use it (JWT from /auth/token, or basic auth on Airflow 2), and the
    # browser's login cookie, as the page uses it.
    session = cost_server.session if auth == "api client" else logged_in(cost_server)

    def summary(**params: str) -> dict:
        response = session.get(f"{cost_server.base_url}/llm-costs/api/summary", params=params, timeout=30)
        assert response.status_code == 200, response.text
        return response.json()

    everything = summary()
    assert everything["totals"]["cost_usd"] == 2.1
    assert everything["totals"]["cache_savings_usd"] == 0.9
    assert [d["day"] for d in everything["per_day"]] == [
        "2026-03-01",
        "2026-03-02",
        "2026-03-03",
        "2026-03-04",
    ]
    assert {m["model"]: m["cost_usd"] for m in everything["per_model"]} == {HAIKU: 1.8, GPT: 0.3}
    assert everything["dags"] == ["daily", "weekly"]
    assert everything["budgets"] == []

    daily = summary(dag_id="daily")
    assert (daily["totals"]["cost_usd"], daily["totals"]["calls"]) == (0.6, 4)
    window = summary(since="2026-03-02", until="2026-03-03")
    assert window["totals"]["cost_usd"] == 1.2
    assert [(d["day"], d["by_dag"]) for d in window["per_day"]] == [
        ("2026-03-02", {"daily": 0.2, "weekly": 1.0}),
        ("2026-03-03", {}),
    ]
    bad = session.get(f"{cost_server.base_url}/llm-costs/api/summary", params={"since": "soon"}, timeout=30)
    assert bad.status_code == 400 and "since must be a day" in bad.json()["detail"]


def test_page_is_in_the_navigation(cost_server):
    if cost_server.airflow3:
        plugins = {p["name"]: p for p in cost_server.request("GET", "/plugins")["plugins"]}
        ours = plugins["llm_provider"]
        assert "/llm-costs" in [a["url_prefix"] for a in ours["fastapi_apps"]]
        (view,) = [v for v in ours["external_views"] if v["name"] == "LLM costs"]
        assert (view["href"], view["destination"], view["url_route"]) == ("llm-costs/", "nav", "llm-costs")
    else:
        home = logged_in(cost_server).get(f"{cost_server.base_url}/home", timeout=30)
        assert home.status_code == 200
        menu = re.search(r'<a[^>]*href="(/llm-costs/?)"[^>]*>\s*(?:<[^>]+>\s*)*LLM costs', home.text)
        assert menu, "no 'LLM costs' entry in the webserver's menu"


# -- the page in a browser -------------------------------------------------------------------------
class _CookieProxy(BaseHTTPRequestHandler):
    upstream = ""
    cookie = ""

    def do_GET(self) -> None:
        headers = {
            k: v for k, v in self.headers.items() if k.lower() not in ("host", "cookie", "accept-encoding")
        }
        headers["Cookie"] = self.cookie
        upstream = requests.get(self.upstream + self.path, headers=headers, timeout=60, allow_redirects=False)
        self.send_response(upstream.status_code)
        for name, value in upstream.headers.items():
            if name.lower() not in ("content-length", "content-encoding", "transfer-encoding", "connection"):
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(upstream.content)))
        self.end_headers()
        self.wfile.write(upstream.content)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def browser_url(cost_server) -> Iterator[str]:
    handler = type(
        "Proxy", (_CookieProxy,), {"upstream": cost_server.base_url, "cookie": browser_cookie(cost_server)}
    )
    proxy = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=proxy.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{proxy.server_address[1]}"
    finally:
        proxy.shutdown()


def chromium(url: str, tmp_path: Path, *, screenshot: str | None = None) -> str:
    """The DOM after the page's scripts ran (and optionally a screenshot of it)."""
    if CHROMIUM is None:
        message = "headless Chromium is needed for the cost page e2e: apt-get install -y chromium"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(message)  # CI machines install it (.ci/run)
        pytest.skip(message)
    profile = tmp_path / "chromium-profile"
    base = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--hide-scrollbars",
        "--no-first-run",
        f"--user-data-dir={profile}",
        "--window-size=1400,1500",
        "--virtual-time-budget=15000",
    ]
    dom = subprocess.run([*base, "--dump-dom", url], capture_output=True, text=True, timeout=120, check=False)
    assert dom.returncode == 0 and dom.stdout.strip(), dom.stderr[-3000:]
    if screenshot:
        target = tmp_path / screenshot
        shot = subprocess.run(
            [*base, f"--screenshot={target}", url], capture_output=True, text=True, timeout=120, check=False
        )
        assert shot.returncode == 0 and target.is_file() and target.stat().st_size > 10_000, shot.stderr[
            -3000:
        ]
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        shutil.copy(target, ARTIFACTS / target.name)
    return dom.stdout


@dataclass
class Node:
    tag: str
    attrs: dict[str, str]
    text: list[str] = field(default_factory=list)


class _Collect(html.parser.HTMLParser):
    """Every element with its attributes and own text: enough to find the charts' marks."""

    def __init__(self) -> None:
        super().__init__()
        self.nodes: list[Node] = []
        self._open: list[Node] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        node = Node(tag, {k: v or "" for k, v in attrs})
        self.nodes.append(node)
        if tag not in ("rect", "line", "circle", "path", "input", "br", "meta"):
            self._open.append(node)

    def handle_endtag(self, tag: str) -> None:
        while self._open and self._open.pop().tag != tag:
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


def line_name(server: AirflowServer) -> str:
    return "airflow3" if server.airflow3 else "airflow2"


def test_page_renders_charts_and_filters_change_them(cost_server, browser_url, tmp_path):
    line = line_name(cost_server)
    nodes = parse(chromium(f"{browser_url}/llm-costs/", tmp_path, screenshot=f"{line}-all.png"))
    (body,) = find(nodes, "body")
    assert body.attrs["data-state"] == "ready", [n.text for n in find(nodes, "div", id="error")]

    # Totals and the stacked bars per day per DAG, with the ledger's numbers.
    (total,) = find(nodes, "div", data_kpi="total-cost")
    assert total.attrs["data-value"] == "2.1"
    assert find(nodes, "div", data_kpi="cache-savings")[0].attrs["data-value"] == "0.9"
    bars = {
        (n.attrs["data-day"], n.attrs["data-dag"]): n.attrs["data-cost"]
        for n in find(nodes, "rect")
        if "data-day" in n.attrs
    }
    assert bars == {
        ("2026-03-01", "daily"): "0.4",
        ("2026-03-02", "daily"): "0.2",
        ("2026-03-02", "weekly"): "1",
        ("2026-03-04", "weekly"): "0.5",
    }
    assert find(nodes, "text", data_day_total="2026-03-02")[0].text == ["$1.20"]
    # Cost per model (donut), cache, top tasks.
    slices = {n.attrs["data-model"]: n.attrs["data-cost"] for n in nodes if "data-model" in n.attrs}
    assert slices == {HAIKU: "1.8", GPT: "0.3"}
    assert find(nodes, "text", id="models-total")[0].text == ["$2.10"]
    assert find(nodes, "text", id="cache-rate")[0].text == ["28.6%"]
    assert find(nodes, "text", data_cache_label="saved")[0].text == ["$0.90"]
    tasks = [
        (n.attrs["data-dag"], n.attrs["data-task"], n.attrs["data-cost"])
        for n in find(nodes, "tr")
        if "data-task" in n.attrs
    ]
    assert tasks == [("weekly", "report", "1.5"), ("daily", "classify", "0.3"), ("daily", "summarize", "0.3")]
    assert [o.attrs.get("value") for o in find(nodes, "option")] == ["", "daily", "weekly"]

    # A DAG filter in the URL: only that DAG's numbers.
    nodes = parse(
        chromium(f"{browser_url}/llm-costs/?dag_id=daily", tmp_path, screenshot=f"{line}-dag-daily.png")
    )
    assert find(nodes, "body")[0].attrs["data-state"] == "ready"
    assert find(nodes, "div", data_kpi="total-cost")[0].attrs["data-value"] == "0.6"
    dags = {n.attrs["data-dag"] for n in find(nodes, "rect") if "data-day" in n.attrs}
    assert dags == {"daily"}
    assert "DAG daily" in " ".join(find(nodes, "span", id="subtitle")[0].text)

    # A date range in the URL.
    nodes = parse(chromium(f"{browser_url}/llm-costs/?since=2026-03-04&until=2026-03-04", tmp_path))
    assert find(nodes, "div", data_kpi="total-cost")[0].attrs["data-value"] == "0.5"
    assert find(nodes, "text", id="cache-rate")[0].text == ["50%"]


def test_page_inside_the_airflow_ui(cost_server, browser_url, tmp_path):
    """Airflow 3 shows the page inside its own UI (the navigation entry's route, in an iframe)."""
    if not cost_server.airflow3:
        pytest.skip("Airflow 2 opens the page from its Browse menu (test_page_is_in_the_navigation)")
    dom = chromium(f"{browser_url}/plugin/llm-costs", tmp_path, screenshot="airflow3-in-ui.png")
    frames = find(parse(dom), "iframe", title="LLM costs")
    assert frames, dom[-3000:]
    assert frames[0].attrs["src"].rstrip("/").endswith("llm-costs")
