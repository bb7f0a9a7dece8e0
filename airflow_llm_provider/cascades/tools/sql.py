"""The SQL family of built-in tools: Windlass's ``sql_data``, ``sql_query``,
``list_sql_connections``, ``smart_sql_run`` and ``sql_search``.

Where they run:

- without a connection, on the run's session DuckDB (``session_db.py``), where each data phase's
  result is the table ``_<phase>``;
- with a connection, on a named SQL connection the host lends (``ToolServices.sql``: in Airflow,
  a connection's ``DbApiHook``). Which names a cascade may use is the trust rule of ``trust.py``:
  the ones it lists in ``connections:`` or names literally in a tool phase. The runner refuses a
  call naming any other (``run/tackle.py``), and these tools list and search only those.

Like Windlass, ``sql_data`` answers errors as ``{"_route": "error", "error": ...}`` (a tool phase
routes on ``_route``) and the JSON tools answer ``{"error": ...}`` text; only our older
``sql_data(conn_id, sql, ...)`` form raises, as it always did. Unlike Windlass, more rows than
``limit`` is an error rather than a silent cut (a cut table changes every later join).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow_llm_provider.cascades.tools import session_db
from airflow_llm_provider.cascades.tools.builtin import BuiltinTool, ToolContext, ToolServices

if TYPE_CHECKING:
    from airflow_llm_provider.cascades.tools.builtin import SqlConnections

DEFAULT_LIMIT = 10_000
QUERY_DEFAULT_LIMIT = 200
MAX_LIMIT = 100_000
"""No call may ask for more rows than this (results are kept in outputs, XCom and prompts)."""
MAX_SCHEMA_ROWS = 20_000
"""Columns read from one connection's catalog by ``sql_search``."""
MAX_SEARCH_RESULTS = 50
MAX_COLUMNS_SHOWN = 60
OLD_ARGUMENTS = ("conn_id", "sql", "parameters", "max_rows")


def _message(tool: str, err: BaseException) -> str:
    """``err`` as text starting with the tool's name."""
    text = str(err) or type(err).__name__
    return text if text.startswith(f"{tool}:") else f"{tool}: {text}"


def _int_argument(tool: str, name: str, value: Any, *, most: int = MAX_LIMIT) -> int:
    """An integer argument (Windlass inputs arrive as text), between 1 and ``most``."""
    try:
        number = int(str(value).strip()) if not isinstance(value, int) else value
    except ValueError:
        raise ValueError(f"{tool}: {name} must be a whole number, got {value!r}") from None
    if isinstance(value, bool) or not 1 <= number <= most:
        raise ValueError(f"{tool}: {name} must be between 1 and {most}, got {value!r}")
    return number


def _bool_argument(tool: str, name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1", "yes", "on"):
        return True
    if text in ("false", "0", "no", "off", "none", ""):
        return False
    raise ValueError(f"{tool}: {name} must be true or false, got {value!r}")


def _text_argument(tool: str, name: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{tool}: {name} must be a non-empty SQL text, got {type(value).__name__}")
    return value


def allowed_connections(context: ToolContext) -> frozenset[str] | None:
    """The connection ids the cascade names (``trust.connection_ids``), when the runner tells the
    tools (``ToolContext.connections``, or ``extra["connections"]``); None when it does not."""
    allowed = getattr(context, "connections", None)
    if allowed is None:
        allowed = context.extra.get("connections")
    return frozenset(allowed) if allowed is not None else None


def _refusal(tool: str, connection: str, context: ToolContext) -> str | None:
    """The trust rule again inside the tool (the runner checks it before the call too)."""
    allowed = allowed_connections(context)
    if allowed is not None and connection not in allowed:
        listed = ", ".join(sorted(allowed)) or "none"
        return (
            f"connection={connection!r} is not a connection this cascade names (listed: {listed}); "
            "add it to the cascade's `connections:` to allow it"
        )
    return None


def _connections(tool: str, context: ToolContext) -> SqlConnections:
    if context.services.sql is None:
        raise RuntimeError(
            f"{tool}: no SQL connections are available here (only the session database); run the "
            "cascade in Airflow or with `airflow-llm run`, which lend the Airflow connections"
        )
    return context.services.sql


def _run_on_connection(
    tool: str, context: ToolContext, connection: str, sql: str, parameters: Any, limit: int
) -> tuple[list[str], list[tuple[Any, ...]]]:
    refusal = _refusal(tool, connection, context)
    if refusal is not None:
        raise PermissionError(f"{tool}: {refusal}")
    columns, rows = _connections(tool, context).run(connection, sql, parameters, limit)
    columns = session_db.unique_names(str(column) for column in columns)
    return columns, [tuple(session_db.json_safe(value) for value in row) for row in rows]


def _records(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[dict[str, Any]]:
    return [dict(zip(columns, row, strict=True)) for row in rows]


# --- sql_data -------------------------------------------------------------------------------

_SQL_DATA_DESCRIPTION = (
    "Run a SQL query and get its rows. Without `connection` it runs on this run's DuckDB session "
    "database, where earlier data phases' results are tables named _<phase> (e.g. SELECT * FROM "
    "_customers). With `connection` it runs on that named database connection (see "
    "list_sql_connections). Returns {rows, columns, row_count}; more rows than `limit` is an error."
)
_SQL_DATA_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "query": {"type": "string", "description": "The SQL to run."},
        "connection": {
            "type": "string",
            "description": "Name of a database connection; omit to query the session database.",
        },
        "limit": {"type": "integer", "description": "Most rows to return (default 10000)."},
        "materialize": {
            "type": "boolean",
            "description": "Keep the result as the table _<phase> (tool phases only; default true).",
        },
    },
    "required": ["query"],
}


def sql_data_function(context: ToolContext) -> Callable[..., Any]:
    """``sql_data`` for one call site. Two forms, told apart by their arguments:

    - Windlass's ``sql_data(query, connection=None, limit=10000, materialize=True)``: the session
      database (after :func:`session_db.ensure_output_tables`) or the named connection; returns
      ``{rows, columns, row_count, _route: "success"}`` or ``{_route: "error", error}``. In a tool
      phase (``context.deterministic``) the result also becomes the table ``_<phase>``;
    - ours before, ``sql_data(conn_id, sql, parameters=None, max_rows=10000)`` (``sql:`` file
      phases use it): the named connection with driver parameters; returns the rows as dicts and
      raises on errors.
    """

    def sql_data(
        query: str | None = None,
        connection: str | None = None,
        limit: int = DEFAULT_LIMIT,
        materialize: bool = True,
        *,
        conn_id: str | None = None,
        sql: str | None = None,
        parameters: Mapping[str, Any] | Sequence[Any] | None = None,
        max_rows: int | None = None,
    ) -> Any:
        """Run a SQL query on the session database, or on the named `connection`."""
        old = {"conn_id": conn_id, "sql": sql, "parameters": parameters, "max_rows": max_rows}
        given_old = [name for name, value in old.items() if value is not None]
        if given_old:
            new = {
                "query": query is not None,
                "connection": connection is not None,
                "limit": limit != DEFAULT_LIMIT,
                "materialize": materialize is not True,
            }
            given_new = [name for name, given in new.items() if given]
            if given_new:
                raise ValueError(
                    f"sql_data: give either query/connection (Windlass's form) or conn_id/sql (the "
                    f"older form), not both (got {', '.join(given_new + given_old)})"
                )
            if conn_id is None or sql is None:
                raise ValueError("sql_data: the older form needs both conn_id and sql")
            return _old_sql_data(context, conn_id, sql, parameters, max_rows)
        return _windlass_sql_data(context, query, connection, limit, materialize)

    sql_data.__doc__ = _SQL_DATA_DESCRIPTION
    return sql_data


def _old_sql_data(
    context: ToolContext, conn_id: str, sql: str, parameters: Any, max_rows: int | None
) -> list[dict[str, Any]]:
    most = _int_argument("sql_data", "max_rows", max_rows if max_rows is not None else DEFAULT_LIMIT)
    _text_argument("sql_data", "sql", sql)
    try:
        columns, rows = _run_on_connection("sql_data", context, str(conn_id), sql, parameters, most)
    except (ValueError, TypeError) as err:  # ours (too many rows, not a SQL connection): name the tool
        raise type(err)(_message("sql_data", err)) from err
    return _records(columns, rows)


def _windlass_sql_data(
    context: ToolContext, query: Any, connection: Any, limit: Any, materialize: Any
) -> dict[str, Any]:
    try:
        sql = _text_argument("sql_data", "query", query)
        most = _int_argument("sql_data", "limit", limit)
        keep = _bool_argument("sql_data", "materialize", materialize)
        if connection:
            columns, rows = _run_on_connection("sql_data", context, str(connection), sql, None, most)
        else:
            session_db.ensure_output_tables(context)
            columns, rows = session_db.query(context, sql, most + 1)
            if len(rows) > most:
                raise ValueError(f"the query returned more than {most} rows; add a LIMIT or raise the limit")
        records = _records(columns, rows)
        # Windlass injects materialize=True only into tool phases; a model's call leaves no table.
        if keep and context.deterministic and context.phase_name:
            session_db.materialize(context, context.phase_name, {"rows": records, "columns": columns})
        return {"rows": records, "columns": columns, "row_count": len(records), "_route": "success"}
    except Exception as err:  # Windlass answers every failure as a route, never raises
        return {"_route": "error", "error": _message("sql_data", err)}


# --- sql_query, list_sql_connections ---------------------------------------------------------


def sql_query_function(context: ToolContext) -> Callable[..., Any]:
    def sql_query(sql: str, connection: str, limit: int = QUERY_DEFAULT_LIMIT) -> str:
        """Run SQL on a named database connection (see list_sql_connections). Returns JSON:
        {sql, connection, row_count, columns, results: [records], rows: [arrays]}, or {error}.
        More rows than `limit` (default 200) is an error: add a LIMIT."""
        try:
            text = _text_argument("sql_query", "sql", sql)
            if not isinstance(connection, str) or not connection:
                raise ValueError("sql_query: connection must name a database connection")
            most = _int_argument("sql_query", "limit", limit)
            columns, rows = _run_on_connection("sql_query", context, connection, text, None, most)
        except Exception as err:
            return json.dumps(
                {
                    "error": _message("sql_query", err),
                    "sql": sql,
                    "connection": connection,
                    "columns": [],
                    "rows": [],
                    "results": [],
                    "row_count": 0,
                },
                default=str,
            )
        return json.dumps(
            {
                "sql": text,
                "connection": connection,
                "row_count": len(rows),
                "columns": columns,
                "results": _records(columns, rows),
                "rows": [list(row) for row in rows],
            },
            default=str,
        )

    return sql_query


def _visible_connections(context: ToolContext) -> tuple[list[dict[str, Any]], str | None]:
    """The host's connections this cascade may use, and a note when that is none."""
    allowed = allowed_connections(context)
    if allowed is not None and not allowed:
        return [], "this cascade names no connections; list them under `connections:` to use them"
    if context.services.sql is None:
        return [], "no database connections are available here, only the session database"
    listed = [dict(entry) for entry in context.services.sql.list()]
    if allowed is not None:
        listed = [entry for entry in listed if str(entry.get("name")) in allowed]
    return sorted(listed, key=lambda entry: str(entry.get("name"))), None


def list_sql_connections_function(context: ToolContext) -> Callable[..., Any]:
    def list_sql_connections() -> str:
        """List the database connections this cascade may query, as JSON: {connections: [{name,
        type, description}], session_tables: [...]} (session tables are queried with sql_data
        and no connection)."""
        try:
            connections, note = _visible_connections(context)
            tables = session_db.session_tables(context)
        except Exception as err:
            return json.dumps({"error": _message("list_sql_connections", err), "connections": []})
        answer: dict[str, Any] = {"connections": connections, "session_tables": tables}
        if note:
            answer["hint"] = note
        return json.dumps(answer, default=str)

    return list_sql_connections


# --- smart_sql_run ---------------------------------------------------------------------------


def smart_sql_run_function(context: ToolContext) -> Callable[..., Any]:
    def smart_sql_run(query: str, db_path: str = ":memory:") -> str:
        """Run SQL with DuckDB and get the rows as a JSON array of records. `db_path` is
        ':memory:' (default) or a DuckDB file in this run's session folder. DuckDB may read files
        (e.g. SELECT * FROM '<absolute path>.csv') only inside the cascade's folder and the
        session folder."""
        try:
            return _smart_sql_run(context, query, db_path)
        except Exception as err:
            message = _message("smart_sql_run", err)
            if context.deterministic:
                raise RuntimeError(message) from err  # a tool phase fails (retry, on_error) as in Windlass
            return f"Error: {message}"  # what Windlass shows a model whose tool call failed

    return smart_sql_run


def _smart_sql_run(context: ToolContext, query: str, db_path: str) -> str:
    sql = _text_argument("smart_sql_run", "query", query)
    folder = context.session.folder.resolve()
    if db_path == ":memory:":
        target: Path | str = ":memory:"
    else:
        candidate = Path(str(db_path))
        candidate = (candidate if candidate.is_absolute() else folder / candidate).resolve()
        if not candidate.is_relative_to(folder) or candidate.name == session_db.DB_FILE:
            raise PermissionError(
                f"smart_sql_run: db_path {str(db_path)!r} is refused; use ':memory:' or a DuckDB file "
                "inside this run's session folder (the session database itself is reached with sql_data)"
            )
        target = candidate
    allowed = [folder] + ([context.base_dir] if context.base_dir is not None else [])
    conn = session_db.open_connection(target, allowed=allowed)
    try:
        columns, rows = session_db.fetch_all(conn, sql, DEFAULT_LIMIT)
    finally:
        conn.close()
    return json.dumps(_records(columns, rows), default=str)


# --- sql_search ------------------------------------------------------------------------------

_INFORMATION_SCHEMA = (
    "SELECT table_schema, table_name, column_name, data_type FROM information_schema.columns "
    "WHERE table_schema NOT IN ('information_schema', 'pg_catalog', 'sys', 'mysql', "
    "'performance_schema') ORDER BY table_schema, table_name, ordinal_position"
)
_SQLITE_SCHEMA = (
    "SELECT 'main', m.name, p.name, p.type FROM sqlite_master m JOIN pragma_table_info(m.name) p "
    "WHERE m.type IN ('table', 'view') AND m.name NOT LIKE 'sqlite_%' ORDER BY m.name, p.cid"
)
_WORD = re.compile(r"[a-z0-9]+")
_STOP = frozenset(
    [
        "a",
        "an",
        "and",
        "any",
        "are",
        "as",
        "at",
        "by",
        "data",
        "find",
        "for",
        "from",
        "in",
        "is",
        "me",
        "of",
        "on",
        "or",
        "show",
        "table",
        "tables",
        "the",
        "to",
        "what",
        "which",
        "with",
    ]
)


def _tokens(text: str) -> set[str]:
    words = set(_WORD.findall(text.lower()))
    # Crude stemming so "customers" finds "customer" and "sales" finds "sale".
    return {word[:-1] if len(word) > 3 and word.endswith("s") else word for word in words} - _STOP


def _catalog(connections: SqlConnections, entry: Mapping[str, Any]) -> list[tuple[Any, ...]]:
    kind = str(entry.get("type") or "").lower()
    sql = _SQLITE_SCHEMA if "sqlite" in kind else _INFORMATION_SCHEMA
    _, rows = connections.run(str(entry["name"]), sql, None, MAX_SCHEMA_ROWS)
    return list(rows)


def _session_catalog(context: ToolContext) -> tuple[list[tuple[Any, ...]], dict[str, int]]:
    with context.session.lock:
        conn = session_db.connection(context)
        cursor = session_db.execute(
            conn,
            "SELECT table_schema, table_name, column_name, data_type FROM information_schema.columns "
            "WHERE table_schema = 'main' ORDER BY table_name, ordinal_position",
        )
        rows = cursor.fetchall()
        counts = {}
        for table in {row[1] for row in rows}:
            quoted = session_db.quote(str(table))
            counts[table] = session_db.execute(conn, f"SELECT count(*) FROM {quoted}").fetchone()[0]
    return rows, counts


def sql_search_function(context: ToolContext) -> Callable[..., Any]:
    def sql_search(query: str, k: int = 10, min_row_count: int | None = None) -> str:
        """Find tables by what they hold: ranks the tables and columns of the database
        connections this cascade may use, and of the session database, by the words they share
        with `query`. Returns JSON {query, total_results, tables: [{qualified_name, connection,
        schema, table_name, row_count, columns, match_score}]}."""
        try:
            return json.dumps(_sql_search(context, query, k, min_row_count), default=str)
        except Exception as err:
            return json.dumps(
                {"error": _message("sql_search", err), "query": query, "tables": []}, default=str
            )

    return sql_search


def _sql_search(context: ToolContext, query: str, k: Any, min_row_count: Any) -> dict[str, Any]:
    """Not Windlass's search: Windlass searches an Elasticsearch/ClickHouse index of sampled schemas
    built by ``windlass sql chart``. This reads the live catalogs (``information_schema``, SQLite's
    ``sqlite_master``) of the connections the cascade names plus the session tables, and ranks each
    table by the query words found in its name (3 each), in its columns' names (1 per matching
    column, at most 3), in its schema or connection name (1 each), plus 2 for each query word it
    covers anywhere. Session tables are named as queried (``_<phase>``). Row counts are known for
    session tables only, so ``min_row_count`` drops only session tables that are smaller."""
    wanted = _tokens(_text_argument("sql_search", "query", query))
    most = _int_argument("sql_search", "k", k, most=MAX_SEARCH_RESULTS)
    least = None if min_row_count in (None, "") else int(str(min_row_count))
    tables: dict[tuple[str, str, str], dict[str, Any]] = {}
    errors: dict[str, str] = {}

    def add(connection: str, rows: list[tuple[Any, ...]], counts: Mapping[str, int] | None) -> None:
        for schema, table, column, data_type in rows:
            key = (connection, str(schema), str(table))
            entry = tables.setdefault(
                key,
                {
                    "qualified_name": ".".join(key) if connection else str(table),
                    "connection": connection or None,
                    "schema": str(schema),
                    "table_name": str(table),
                    "row_count": counts.get(str(table)) if counts is not None else None,
                    "columns": [],
                },
            )
            entry["columns"].append({"name": str(column), "type": str(data_type)})

    connections, _ = _visible_connections(context)
    for entry in connections:
        try:
            add(str(entry["name"]), _catalog(_connections("sql_search", context), entry), None)
        except Exception as err:  # one unreachable database must not hide the others
            errors[str(entry["name"])] = str(err)[:300]
    session_rows, counts = _session_catalog(context)
    add("", session_rows, counts)

    ranked = []
    for entry in tables.values():
        if least is not None and entry["row_count"] is not None and entry["row_count"] < least:
            continue
        column_words = [_tokens(column["name"]) for column in entry["columns"]]
        column_hits = sum(1 for words in column_words if wanted & words)
        place = _tokens(f"{entry['schema']} {entry['connection'] or ''}")
        covered = wanted & set().union(_tokens(entry["table_name"]), place, *column_words)
        score = 3 * len(wanted & _tokens(entry["table_name"])) + min(column_hits, 3)
        score += len(wanted & place) + 2 * len(covered)
        if score:
            shown = dict(entry, match_score=score)
            if len(entry["columns"]) > MAX_COLUMNS_SHOWN:
                shown["columns"] = entry["columns"][:MAX_COLUMNS_SHOWN]
                shown["columns_omitted"] = len(entry["columns"]) - MAX_COLUMNS_SHOWN
            ranked.append(shown)
    ranked.sort(key=lambda entry: (-entry["match_score"], entry["qualified_name"]))
    answer: dict[str, Any] = {
        "query": query,
        "source": "information_schema",
        "total_results": min(len(ranked), most),
        "tables": ranked[:most],
        "note": "Session tables (connection null) are queried with sql_data and no connection; "
        "others with sql_query or sql_data and their connection.",
    }
    if errors:
        answer["errors"] = errors
    return answer


def _needs_duckdb(services: ToolServices | None) -> str | None:
    import importlib.util

    if importlib.util.find_spec("duckdb") is None:
        return "needs the duckdb package (pip install 'airflow-llm-provider[data]')"
    return None


TOOLS: tuple[BuiltinTool, ...] = (
    BuiltinTool(
        "sql_data",
        make=sql_data_function,
        description=_SQL_DATA_DESCRIPTION,
        json_schema=_SQL_DATA_SCHEMA,
    ),
    BuiltinTool(
        "sql_query",
        make=sql_query_function,
        description="Run SQL on a named database connection; JSON with the rows (default at most 200).",
    ),
    BuiltinTool(
        "list_sql_connections",
        make=list_sql_connections_function,
        description="List the database connections this cascade may query, and the session tables.",
    ),
    BuiltinTool(
        "smart_sql_run",
        make=smart_sql_run_function,
        description="Run SQL with DuckDB (in memory, or a DuckDB file in the session folder).",
        unavailable=_needs_duckdb,
    ),
    BuiltinTool(
        "sql_search",
        make=sql_search_function,
        description="Find tables and columns whose names match the words of a question.",
    ),
)
"""The SQL family (``builtin.py``). ``sql_data`` shows the model Windlass's four arguments (its
callable also takes the older ``conn_id``/``sql``/``parameters``/``max_rows`` keywords)."""
