"""The SQL family of built-in tools (cascades/tools/sql.py, session_db.py): the run's session
DuckDB, Windlass's ``sql_data`` on it and on a real PostgreSQL through an Airflow connection, the
older ``sql_data(conn_id, sql)`` form, a model calling the tools through the scripted server, and
the connection rule of trust.py."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

from airflow_llm_provider.cascades import load_cascade
from airflow_llm_provider.cascades.runner import RunOptions, run_cascade, run_phase
from airflow_llm_provider.cascades.tools import session_db
from airflow_llm_provider.cascades.tools.builtin import RunSession, ToolContext, ToolServices
from airflow_llm_provider.cascades.tools.sql import (
    list_sql_connections_function,
    smart_sql_run_function,
    sql_data_function,
    sql_query_function,
    sql_search_function,
)
from airflow_llm_provider.cascades.trust import connection_ids
from airflow_llm_provider.operators.cascade_tools import AirflowSqlConnections, airflow_tool_services
from airflow_llm_provider.testing.openai_server import text, tool_call
from tests.support.models import server_models

NUMBERS = "SELECT * FROM (VALUES (1, 'one'), (2, 'two'), (3, 'three')) AS t(n, word)"


def files_under(root: str) -> list[str]:
    """A ``python:`` tool: the file names under ``root`` while the run is going."""
    return sorted(path.name for path in Path(root).rglob("*") if path.is_file())


def cascade(phases: list[dict[str, Any]], **fields: Any) -> Any:
    return load_cascade({"cascade_id": "sql_demo", "phases": phases, **fields})


def context_for(tmp_path: Path, **kwargs: Any) -> ToolContext:
    """A call site as the runner makes one, for the tools' own functions."""
    session = RunSession("unit", tmp_path / "scratch")

    async def no_children(*args: Any, **kw: Any) -> Any:
        raise AssertionError("no child runs here")

    fields: dict[str, Any] = {
        "phase_name": "p",
        "cascade_id": "c",
        "session": session,
        "state": {},
        "outputs": {},
        "input": {},
        "base_dir": tmp_path,
        "services": ToolServices(),
        "emit": lambda line: None,
        "run_cascade": no_children,
        "start_background": lambda coroutine: coroutine.close(),
        "deterministic": True,
    }
    fields.update(kwargs)
    return ToolContext(**fields)


@pytest.fixture
def sales_db(postgres, airflow_conn):
    with postgres.connect() as conn, conn.cursor() as cur:
        cur.execute("CREATE TABLE deals (id serial, region text, amount numeric(10,2), closed_on date)")
        cur.execute(
            "INSERT INTO deals (region, amount, closed_on) VALUES "
            "('emea', 1200.50, '2026-01-05'), ('emea', 800, '2026-01-06'), ('apac', 300, '2026-01-06')"
        )
        cur.execute("CREATE TABLE secrets (token text)")
    return airflow_conn("sales_db", postgres.airflow_connection())


# --- the session database across phases -----------------------------------------------------


def test_tool_phases_join_session_tables_and_the_session_folder_goes_at_the_end(tmp_path: Path):
    # Handoffs make the order explicit, as Windlass's data cascades do (the data-flow graph does
    # not yet see `FROM _numbers` as reading `numbers`).
    scratch = tmp_path / "scratch"
    spec = cascade(
        [
            {"name": "numbers", "tool": "sql_data", "inputs": {"query": NUMBERS}, "handoffs": ["squares"]},
            {
                "name": "squares",
                "tool": "sql_data",
                "inputs": {"query": "SELECT n, n * n AS sq FROM _numbers WHERE n > 1 ORDER BY n"},
                "handoffs": ["joined"],
            },
            {
                "name": "joined",
                "handoffs": ["files"],
                "tool": "sql_data",
                "inputs": {
                    "query": "SELECT s.sq, w.word FROM _squares s JOIN _numbers w USING (n) ORDER BY s.sq",
                    "limit": "10",
                },
            },
            {
                "name": "files",
                "tool": "python:tests.tools.test_sql_tools.files_under",
                "inputs": {"root": str(scratch)},
            },
        ]
    )
    result = run_cascade(spec, {}, RunOptions(tool_services=ToolServices(scratch_root=scratch)))
    assert result.status == "success", result.error
    assert result.outputs["numbers"]["columns"] == ["n", "word"]
    assert result.outputs["numbers"]["row_count"] == 3
    assert result.outputs["joined"] == {
        "rows": [{"sq": 4, "word": "two"}, {"sq": 9, "word": "three"}],
        "columns": ["sq", "word"],
        "row_count": 2,
        "_route": "success",
    }
    assert "session.duckdb" in result.outputs["files"]  # the tables lived in the session folder...
    assert list(scratch.iterdir()) == []  # ...which is gone once the run ends


def test_a_phase_run_as_its_own_task_rebuilds_earlier_tables_from_their_outputs(tmp_path: Path):
    """Airflow runs each phase as a task; earlier outputs come through XCom, not the session DB."""
    spec = cascade(
        [
            {"name": "numbers", "tool": "sql_data", "inputs": {"query": NUMBERS}},
            {"name": "old_rows", "tool": "sql_data", "inputs": {"conn_id": "x", "sql": "SELECT 1 AS id"}},
            {
                "name": "total",
                "tool": "sql_data",
                "inputs": {
                    "query": "SELECT sum(n) AS total, max(word) AS last, "
                    "(SELECT count(*) FROM _old_rows) AS k FROM _numbers"
                },
            },
        ]
    )
    earlier = {
        "numbers": {"rows": [{"n": 5, "word": "five"}, {"n": 7, "word": "seven"}], "columns": ["n", "word"]},
        "old_rows": [{"id": 1}],  # the older sql_data's list of rows is a table too
    }
    outcome = run_phase(spec, "total", {}, earlier, RunOptions())
    assert outcome.output["rows"] == [{"total": 12, "last": "seven", "k": 1}]
    assert outcome.route is None


def test_an_error_comes_back_as_a_route_and_routing_follows_it(tmp_path: Path):
    spec = cascade(
        [
            {
                "name": "load",
                "tool": "sql_data",
                "inputs": {"query": "SELECT * FROM no_such_table"},
                "routing": {"success": "done", "error": "recover"},
                "handoffs": ["done", "recover"],
            },
            {"name": "done", "tool": "sql_data", "inputs": {"query": "SELECT 'done' AS how"}},
            {"name": "recover", "tool": "sql_data", "inputs": {"query": "SELECT 'recovered' AS how"}},
        ]
    )
    result = run_cascade(spec, {}, RunOptions())
    assert result.status == "success", result.error
    assert result.outputs["load"]["_route"] == "error"
    assert "no_such_table" in result.outputs["load"]["error"]
    assert result.outputs["load"]["error"].startswith("sql_data: ")
    assert "done" not in result.outputs
    assert result.outputs["recover"]["rows"] == [{"how": "recovered"}]


def test_bad_arguments_and_too_many_rows_are_error_routes_naming_the_argument(tmp_path: Path):
    run = sql_data_function(context_for(tmp_path))
    assert run(query="SELECT 1", limit="many") == {
        "_route": "error",
        "error": "sql_data: limit must be a whole number, got 'many'",
    }
    too_many = run(query="SELECT * FROM range(5)", limit=3)
    assert too_many["_route"] == "error" and "more than 3 rows" in too_many["error"]
    assert run(query="  ")["error"] == "sql_data: query must be a non-empty SQL text, got str"


def test_sql_run_on_the_session_database_cannot_reach_other_files(tmp_path: Path):
    (tmp_path / "private.csv").write_text("secret\nhunter2\n")
    run = sql_data_function(context_for(tmp_path))
    for sql in (
        f"SELECT * FROM read_csv('{tmp_path / 'private.csv'}')",
        "SELECT * FROM read_text('/etc/passwd')",
        f"COPY (SELECT 1) TO '{tmp_path / 'out.csv'}'",
        f"ATTACH '{tmp_path / 'other.duckdb'}' AS other",
        "SET enable_external_access = true",
    ):
        answer = run(query=sql)
        assert answer["_route"] == "error", sql
    assert not (tmp_path / "out.csv").exists() and not (tmp_path / "other.duckdb").exists()


def test_materialize_quotes_user_names_and_splits_dicts_like_windlass(tmp_path: Path):
    context = context_for(tmp_path)
    odd = 'weird "phase"; DROP TABLE x'
    assert session_db.materialize(context, odd, [{"a b": 1, 'c"d': "x"}, {"a b": 2}]) == [f"_{odd}"]
    assert session_db.read_table(context, odd) == [{"a b": 1, 'c"d': "x"}, {"a b": 2, 'c"d': None}]
    made = session_db.materialize(
        context,
        "report",
        {"title": "Q1", "total": 3.5, "items": [{"sku": "a", "qty": 2}], "meta": {"v": 1}, "tags": ["x"]},
    )
    assert made == ["_report", "_report_items", "_report_meta"]
    assert session_db.read_table(context, "report") == [{"title": "Q1", "total": 3.5}]
    assert session_db.read_table(context, "report_items", limit=1) == [{"sku": "a", "qty": 2}]
    arrays = session_db.materialize(context, "grid", {"rows": [[1, None], [2, "b"]], "columns": ["n", "s"]})
    assert arrays == ["_grid"]
    assert session_db.query(context, 'SELECT n, s FROM "_grid" ORDER BY n', 10) == (
        ["n", "s"],
        [(1, None), (2, "b")],
    )
    with pytest.raises(LookupError, match="no table _missing"):
        session_db.read_table(context, "missing")
    # An exact table name (for_each_row's result_table), and query() giving the first `limit` rows.
    name = 'my "results"'
    assert session_db.create_table(context, name, [{"i": 1}, {"i": 2}, {"i": 3}]) == name
    sql = "SELECT i FROM " + session_db.quote(name) + " ORDER BY i"
    assert session_db.query(context, sql, 2) == (["i"], [(1,), (2,)])
    context.session.close()


# --- a real PostgreSQL through an Airflow connection ---------------------------------------


def test_a_connection_result_is_materialized_and_joined_in_the_session(sales_db, tmp_path: Path):
    spec = cascade(
        [
            {
                "name": "deals",
                "tool": "sql_data",
                "inputs": {
                    "connection": "sales_db",
                    "query": "SELECT region, amount, closed_on FROM deals ORDER BY id",
                },
                "handoffs": ["regions"],
            },
            {
                "name": "regions",
                "tool": "sql_data",
                "inputs": {
                    "query": "SELECT * FROM (VALUES ('emea', 'Europe'), ('apac', 'Asia')) t(region, label)"
                },
            },
            {
                "name": "by_label",
                "tool": "sql_data",
                "inputs": {
                    "query": "SELECT r.label, sum(d.amount) AS total, min(d.closed_on) AS first "
                    "FROM _deals d JOIN _regions r USING (region) GROUP BY r.label ORDER BY r.label"
                },
            },
        ]
    )
    runs: list[Any] = []
    services = airflow_tool_services(on_sql=runs.append, conn_ids=connection_ids(spec))
    result = run_cascade(spec, {}, RunOptions(tool_services=services))
    assert result.status == "success", result.error
    assert result.outputs["deals"]["rows"][0] == {
        "region": "emea",
        "amount": 1200.5,
        "closed_on": "2026-01-05",
    }
    assert result.outputs["by_label"]["rows"] == [
        {"label": "Asia", "total": 300.0, "first": "2026-01-06"},
        {"label": "Europe", "total": 2000.5, "first": "2026-01-05"},
    ]
    assert [run.conn_id for run in runs] == ["sales_db"]  # lineage sees the one PostgreSQL query


def test_the_older_form_keeps_working_for_tool_and_sql_file_phases(sales_db, tmp_path: Path):
    (tmp_path / "emea.sql").write_text("SELECT amount FROM deals WHERE region = %(region)s ORDER BY id")
    spec = cascade(
        [
            {
                "name": "count",
                "tool": "sql_data",
                "inputs": {"conn_id": "sales_db", "sql": "SELECT count(*) AS n FROM deals"},
                "handoffs": ["emea"],
            },
            {
                "name": "emea",
                "tool": "sql:emea.sql",
                "inputs": {"conn_id": "sales_db", "parameters": {"region": "emea"}},
                "handoffs": ["sum"],
            },
            {"name": "sum", "tool": "sql_data", "inputs": {"query": "SELECT sum(amount) AS s FROM _emea"}},
        ]
    )
    services = airflow_tool_services(conn_ids=connection_ids(spec))
    result = run_cascade(spec, {}, RunOptions(tool_services=services, base_dir=tmp_path))
    assert result.status == "success", result.error
    assert result.outputs["count"] == [{"n": 3}]
    assert result.outputs["emea"] == [{"amount": 1200.5}, {"amount": 800}]
    assert result.outputs["sum"]["rows"] == [{"s": 2000.5}]


def test_the_older_form_still_raises_and_a_mix_of_forms_is_refused(sales_db, tmp_path: Path):
    context = context_for(tmp_path, services=airflow_tool_services(conn_ids=["sales_db"]))
    run = sql_data_function(context)
    with pytest.raises(ValueError, match=r"^sql_data: the query on 'sales_db' returned more than 2 rows"):
        run(conn_id="sales_db", sql="SELECT * FROM deals", max_rows="2")
    with pytest.raises(ValueError, match=r"give either .* not both \(got limit, conn_id, sql\)"):
        run(limit=5, conn_id="sales_db", sql="SELECT 1")
    answer = json.loads(sql_query_function(context)("SELECT * FROM deals", "sales_db", limit=1))
    assert answer["error"].startswith("sql_query: the query on 'sales_db' returned more than 1 rows")
    assert answer["rows"] == [] and answer["row_count"] == 0
    with pytest.raises(ValueError, match=r"give either query/connection .* or conn_id/sql"):
        run(query="SELECT 1", conn_id="sales_db", sql="SELECT 1")
    no_services = sql_data_function(context_for(tmp_path))
    with pytest.raises(RuntimeError, match="no SQL connections are available here"):
        no_services(conn_id="sales_db", sql="SELECT 1")
    assert no_services(query="SELECT 1", connection="sales_db")["error"].startswith(
        "sql_data: no SQL connections are available here"
    )


def test_a_connection_the_cascade_does_not_name_is_refused(sales_db, airflow_conn, postgres, tmp_path: Path):
    airflow_conn("other_db", postgres.airflow_connection())
    spec = cascade(
        [
            {
                "name": "sneak",
                "tool": "sql_data",
                "inputs": {"connection": "{{ input.which }}", "query": "SELECT token FROM secrets"},
            }
        ],
        connections=["sales_db"],
    )
    runs: list[Any] = []
    services = airflow_tool_services(on_sql=runs.append, conn_ids=connection_ids(spec))
    result = run_cascade(spec, {"which": "other_db"}, RunOptions(tool_services=services))
    assert result.status == "failed"
    assert "connection='other_db' is not a connection this cascade names (listed: sales_db)" in str(
        result.error
    )
    assert runs == []  # nothing reached the database
    # Inside the tool too, when the runner tells it the cascade's connections.
    guarded = sql_data_function(context_for(tmp_path, services=services, extra={"connections": {"sales_db"}}))
    answer = guarded(query="SELECT 1", connection="other_db")
    assert answer["_route"] == "error" and "not a connection this cascade names" in answer["error"]
    assert runs == []


def test_listing_and_search_show_only_the_named_connections(sales_db, airflow_conn, postgres, tmp_path: Path):
    airflow_conn("other_db", postgres.airflow_connection())
    airflow_conn("not_sql", {"conn_type": "slackwebhook", "password": "http://127.0.0.1:1/x"})
    assert [entry["name"] for entry in AirflowSqlConnections(["sales_db", "not_sql", "nope"]).list()] == [
        "sales_db"
    ]
    services = airflow_tool_services(conn_ids=["sales_db", "other_db"])
    context = context_for(tmp_path, services=services, extra={"connections": {"sales_db"}})
    session_db.materialize(context, "deal_notes", [{"deal_id": 1, "note": "big"}])
    listed = json.loads(list_sql_connections_function(context)())
    assert [entry["name"] for entry in listed["connections"]] == ["sales_db"]
    assert listed["connections"][0]["type"] == "postgres"
    assert listed["session_tables"] == ["_deal_notes"]
    found = json.loads(sql_search_function(context)("which tables hold deals and amounts?", k=5))
    names = [table["qualified_name"] for table in found["tables"]]
    assert names[0] == "sales_db.public.deals"
    assert "_deal_notes" in names and not any(name.startswith("other_db") for name in names)
    assert {"name": "amount", "type": "numeric"} in found["tables"][0]["columns"]
    smaller = json.loads(sql_search_function(context)("deal notes", k=5, min_row_count=2))
    assert "_deal_notes" not in [table["qualified_name"] for table in smaller["tables"]]
    nothing = json.loads(list_sql_connections_function(context_for(tmp_path, extra={"connections": set()}))())
    assert nothing["connections"] == [] and "names no connections" in nothing["hint"]
    context.session.close()


# --- a model calling the tools --------------------------------------------------------------


def test_a_model_queries_session_tables_and_a_named_connection(sales_db, llm_server, tmp_path: Path):
    spec = cascade(
        [
            {"name": "numbers", "tool": "sql_data", "inputs": {"query": NUMBERS}, "handoffs": ["ask"]},
            {
                "name": "ask",
                "instructions": "Add up the numbers.",
                "tackle": ["sql_data", "sql_query"],
                "handoffs": ["left"],
            },
            {
                "name": "left",
                "tool": "sql_data",
                "inputs": {
                    "query": "SELECT count(*) AS n FROM information_schema.tables WHERE table_name = '_ask'"
                },
            },
        ],
        connections=["sales_db"],
    )
    llm_server.script(
        tool_call("sql_data", {"query": "SELECT sum(n) AS total FROM _numbers"}),
        tool_call("sql_query", {"sql": "SELECT count(*) AS n FROM deals", "connection": "sales_db"}),
        text("six, and three deals"),
    )
    services = airflow_tool_services(conn_ids=connection_ids(spec))
    result = run_cascade(
        spec, {}, RunOptions(model_factory=server_models(llm_server), tool_services=services)
    )
    assert result.status == "success", result.error
    first, _, after_sql_query = llm_server.requests
    schema = next(
        t["function"]["parameters"] for t in first.body["tools"] if t["function"]["name"] == "sql_data"
    )
    assert schema["required"] == ["query"]
    assert sorted(schema["properties"]) == ["connection", "limit", "materialize", "query"]
    tool_results = [m["content"] for m in after_sql_query.messages if m.get("role") == "tool"]
    assert json.loads(tool_results[0])["rows"] == [{"total": 6}]
    assert json.loads(tool_results[1])["results"] == [{"n": 3}]
    assert result.outputs["ask"] == "six, and three deals"
    assert result.outputs["left"]["rows"] == [{"n": 0}]  # a model's query leaves no table


def test_a_model_cannot_query_a_connection_the_cascade_does_not_name(
    sales_db, airflow_conn, postgres, llm_server, tmp_path: Path
):
    airflow_conn("other_db", postgres.airflow_connection())
    spec = cascade(
        [{"name": "ask", "instructions": "Find the token.", "tackle": ["sql_query"]}],
        connections=["sales_db"],
    )
    llm_server.script(
        tool_call("sql_query", {"sql": "SELECT token FROM secrets", "connection": "other_db"}),
        text("no luck"),
    )
    runs: list[Any] = []
    services = airflow_tool_services(on_sql=runs.append, conn_ids=connection_ids(spec))
    result = run_cascade(
        spec, {}, RunOptions(model_factory=server_models(llm_server), tool_services=services)
    )
    assert runs == []
    assert "not a connection this cascade names" in (
        result.error or json.dumps(llm_server.requests[-1].messages)
    )


# --- smart_sql_run --------------------------------------------------------------------------


def test_smart_sql_run_in_memory_or_in_the_session_folder_only(tmp_path: Path):
    context = context_for(tmp_path, deterministic=False)
    run = smart_sql_run_function(context)
    (tmp_path / "crew.csv").write_text("name,role\nAda,captain\nBo,cook\n")
    assert json.loads(run(f"SELECT role FROM '{tmp_path / 'crew.csv'}' ORDER BY name")) == [
        {"role": "captain"},
        {"role": "cook"},
    ]
    assert json.loads(run("CREATE TABLE t AS SELECT 42 AS x; SELECT x FROM t", db_path="work.duckdb")) == [
        {"x": 42}
    ]
    assert json.loads(run("SELECT x FROM t", db_path="work.duckdb")) == [{"x": 42}]  # a kept file
    refused = run("SELECT 1", db_path=str(tmp_path / "elsewhere.duckdb"))
    assert refused.startswith("Error: smart_sql_run: db_path") and "refused" in refused
    assert run("SELECT 1", db_path="../up.duckdb").startswith("Error: smart_sql_run: db_path")
    assert run("SELECT 1", db_path=session_db.DB_FILE).startswith("Error: smart_sql_run: db_path")
    assert "file system operations are disabled" in run("SELECT * FROM read_text('/etc/passwd')")
    with pytest.raises(RuntimeError, match="smart_sql_run: db_path"):
        smart_sql_run_function(context_for(tmp_path))("SELECT 1", db_path="/tmp/x.duckdb")
    context.session.close()


def test_a_runaway_session_query_is_stopped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(session_db, "QUERY_TIMEOUT_SECONDS", 0.5)
    answer = sql_data_function(context_for(tmp_path))(query="SELECT count(*) FROM range(100000000000)")
    assert answer == {
        "_route": "error",
        "error": "sql_data: the query ran longer than 0.5s and was stopped",
    }


_TOLD_CONNECTIONS = "connections" in {f.name for f in dataclasses.fields(ToolContext)}


@pytest.mark.skipif(
    not _TOLD_CONNECTIONS, reason="the runner does not yet tell tools the cascade's connections"
)
def test_a_model_lists_and_searches_only_the_connections_the_cascade_names(
    sales_db, airflow_conn, postgres, llm_server
):
    airflow_conn("other_db", postgres.airflow_connection())
    spec = cascade(
        [{"name": "ask", "instructions": "Look around.", "tackle": ["list_sql_connections", "sql_search"]}],
        connections=["sales_db"],
    )
    llm_server.script(
        tool_call("list_sql_connections", {}), tool_call("sql_search", {"query": "deals amount"}), text("ok")
    )
    services = airflow_tool_services(conn_ids=["sales_db", "other_db"])  # the host lends more
    result = run_cascade(
        spec, {}, RunOptions(model_factory=server_models(llm_server), tool_services=services)
    )
    assert result.status == "success", result.error
    listed, found = [m["content"] for m in llm_server.requests[2].messages if m.get("role") == "tool"]
    assert [entry["name"] for entry in json.loads(listed)["connections"]] == ["sales_db"]
    assert {table["connection"] for table in json.loads(found)["tables"]} == {"sales_db"}
