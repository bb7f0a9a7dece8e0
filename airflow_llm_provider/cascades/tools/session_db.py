"""The run's session database: one DuckDB file per run where data phases leave their results.

As in Windlass, a data tool's result becomes a real table ``_<phase>`` that later SQL can join
(``SELECT ... FROM _customers``). The file is ``<session folder>/session.duckdb``; its one
connection is kept in ``context.session.resources["duckdb"]`` (closed, and the folder removed, when
the run ends) and is only used under ``context.session.lock``.

The database is a cache of the phases' outputs, never the only copy: a phase run as its own
Airflow task receives earlier outputs through XCom, and :func:`ensure_output_tables` rebuilds the
``_<phase>`` tables from them. So tables are always built from the JSON-safe rows the outputs hold
(dates and times as ISO text, decimals as numbers), and the same SQL gives the same answer whether
the earlier phase ran in this process or another.

SQL run here cannot reach the file system beyond the session folder: external access is disabled
(no ``read_csv('/etc/passwd')``, no ``COPY ... TO`` elsewhere, no ``ATTACH``, no extension
downloads) and the configuration is locked, so the SQL cannot turn it back on. A query is
interrupted after :data:`QUERY_TIMEOUT_SECONDS`.
"""

from __future__ import annotations

import datetime as dt
import decimal
import json
import math
import threading
import uuid
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from airflow_llm_provider.cascades.tools.builtin import ToolContext

DB_FILE = "session.duckdb"
RESOURCE = "duckdb"
QUERY_TIMEOUT_SECONDS = 300.0
MEMORY_LIMIT = "2GB"
MAX_TABLES_REBUILT = 200
"""At most this many earlier outputs are turned into tables for one query (bounded work)."""


def quote(name: str) -> str:
    """A DuckDB identifier for any text (phase names are user text): double-quoted, quotes doubled."""
    return '"' + name.replace('"', '""') + '"'


def table_name(table: str) -> str:
    """The session table of phase ``table``: ``_<table>``, as Windlass names it."""
    return f"_{table}"


def open_connection(path: Path | str, allowed: Iterable[Path] = ()) -> Any:
    """A DuckDB connection to ``path`` (or ``:memory:``) that can reach no file outside ``allowed``
    (and the database itself), loads no extension from outside, and cannot be reconfigured."""
    try:
        import duckdb
    except ImportError as err:
        raise RuntimeError(
            "the session database needs the duckdb package: pip install 'airflow-llm-provider[data]'"
        ) from err

    conn = duckdb.connect(
        str(path), config={"autoinstall_known_extensions": False, "autoload_known_extensions": False}
    )
    try:
        folders = [str(folder.resolve()) for folder in allowed]
        if folders:
            # Settable only once the database runs, and only before external access is disabled.
            conn.execute("SET allowed_directories = ?", [folders])
            conn.execute("SET temp_directory = ?", [str(Path(folders[0]) / "duckdb.tmp")])
        conn.execute(f"SET memory_limit = '{MEMORY_LIMIT}'")
        conn.execute("SET enable_external_access = false")
        conn.execute("SET lock_configuration = true")
    except BaseException:
        conn.close()
        raise
    return conn


def connection(context: ToolContext) -> Any:
    """The session's DuckDB connection, opened on first use. Callers hold ``context.session.lock``."""
    session = context.session
    with session.lock:
        conn = session.resources.get(RESOURCE)
        if conn is None:
            folder = session.folder
            conn = open_connection(folder / DB_FILE, allowed=[folder])
            session.resources[RESOURCE] = conn
        return conn


def execute(conn: Any, sql: str, parameters: Sequence[Any] | None = None) -> Any:
    """``conn.execute`` interrupted after :data:`QUERY_TIMEOUT_SECONDS` (a runaway query must not
    hold the run; a phase ``timeout`` cannot stop a thread)."""
    timer = threading.Timer(QUERY_TIMEOUT_SECONDS, conn.interrupt)
    timer.daemon = True
    timer.start()
    try:
        return conn.execute(sql, parameters) if parameters is not None else conn.execute(sql)
    except Exception as err:
        if not timer.is_alive():
            raise TimeoutError(
                f"the query ran longer than {QUERY_TIMEOUT_SECONDS:g}s and was stopped"
            ) from err
        raise
    finally:
        timer.cancel()


def fetch(conn: Any, sql: str, limit: int) -> tuple[list[str], list[tuple[Any, ...]]]:
    """Run ``sql`` on ``conn``: column names and at most ``limit`` JSON-safe rows (ask for one
    more than you keep to tell a cut result). A statement without a result gives ``([], [])``."""
    cursor = execute(conn, sql)
    if cursor.description is None:
        return [], []
    columns = unique_names(str(column[0]) for column in cursor.description)
    rows = cursor.fetchmany(limit)
    return columns, [tuple(json_safe(value) for value in row) for row in rows]


def fetch_all(conn: Any, sql: str, most: int) -> tuple[list[str], list[tuple[Any, ...]]]:
    """:func:`fetch`, but more than ``most`` rows is an error, never a silent truncation (a cut
    table would change every later join)."""
    columns, rows = fetch(conn, sql, most + 1)
    if len(rows) > most:
        raise ValueError(f"the query returned more than {most} rows; add a LIMIT or raise the limit")
    return columns, rows


def query(context: ToolContext, sql: str, limit: int) -> tuple[list[str], list[tuple[Any, ...]]]:
    """Run ``sql`` on the session database: column names and the first ``limit`` rows, JSON-safe
    (ask for one more than you keep to tell a cut result). A statement without a result (DDL)
    gives ``([], [])``."""
    with context.session.lock:
        return fetch(connection(context), sql, limit)


def json_safe(value: Any) -> Any:
    """What XCom, the phase cache and prompts can carry: decimals as numbers, dates and times as
    ISO text, UUIDs as text, bytes as hex, NaN and infinities as null; lists and maps recursively."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return None if math.isnan(value) or math.isinf(value) else value
    if isinstance(value, decimal.Decimal):
        if not value.is_finite():
            return None
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).hex()
    if isinstance(value, Mapping):
        return {str(key): json_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [json_safe(item) for item in value]
    item = getattr(value, "item", None)  # numpy scalars
    if callable(item):
        return json_safe(item())
    return str(value)


def unique_names(names: Iterable[str]) -> list[str]:
    """Column names DuckDB accepts: empty ones named ``column``, repeats suffixed ``_1``, ``_2``..."""
    seen: set[str] = set()
    result: list[str] = []
    for raw in names:
        name = raw or "column"
        candidate, n = name, 0
        while candidate.lower() in seen:  # DuckDB column names are case-insensitive
            n += 1
            candidate = f"{name}_{n}"
        seen.add(candidate.lower())
        result.append(candidate)
    return result


def _column_type(values: list[Any]) -> str:
    """The DuckDB type of a column of JSON values (mixed kinds fall back to text)."""
    kinds = {type(value) for value in values if value is not None}
    if not kinds:
        return "VARCHAR"
    if kinds == {bool}:
        return "BOOLEAN"
    if kinds == {int}:
        return (
            "BIGINT" if all(-(2**63) <= value < 2**63 for value in values if value is not None) else "HUGEINT"
        )
    if kinds <= {int, float}:
        return "DOUBLE"
    if kinds <= {dict, list}:
        return "JSON"
    return "VARCHAR"


def _cell(value: Any, column_type: str) -> Any:
    if value is None:
        return None
    if column_type == "JSON":
        return json.dumps(value, default=str)
    if column_type == "VARCHAR" and not isinstance(value, str):
        return json.dumps(value, default=str) if isinstance(value, dict | list) else str(value)
    return value


def _row_dicts(rows: Sequence[Any], columns: Sequence[str] | None) -> tuple[list[str], list[list[Any]]]:
    """Columns and rows (as lists of JSON-safe values) of ``rows``: dicts, or arrays with ``columns``."""
    if columns is not None and all(not isinstance(row, Mapping) for row in rows):
        names = [str(column) for column in columns]
        body = []
        for row in rows:
            values = list(row) if isinstance(row, list | tuple) else [row]
            body.append(
                [json_safe(value) for value in values[: len(names)]] + [None] * (len(names) - len(values))
            )
        return names, body
    keys: dict[str, None] = {str(column): None for column in columns or ()}
    for row in rows:
        if isinstance(row, Mapping):
            keys.update((str(key), None) for key in row)
    names = list(keys)
    body = []
    for row in rows:
        mapping = {str(key): value for key, value in row.items()} if isinstance(row, Mapping) else {}
        body.append([json_safe(mapping.get(name)) for name in names])
    return names, body


def _create_table(conn: Any, name: str, columns: list[str], rows: list[list[Any]]) -> None:
    """``CREATE OR REPLACE TABLE name`` holding ``rows``; column types inferred from the values.
    Rows go in as one typed list per column (``unnest``): fast and never formatted into SQL."""
    names = unique_names(columns) or ["column"]
    if not columns:
        rows = [[None] for _ in rows]
    by_column = [list(values) for values in zip(*rows, strict=True)] if rows else [[] for _ in names]
    types = [_column_type(values) for values in by_column]
    definition = ", ".join(f"{quote(n)} {t}" for n, t in zip(names, types, strict=True))
    execute(conn, f"CREATE OR REPLACE TABLE {quote(name)} ({definition})")
    if rows:
        unnests = ", ".join(f"unnest(?::{t}[])" for t in types)
        cells = [[_cell(value, t) for value in values] for values, t in zip(by_column, types, strict=True)]
        execute(conn, f"INSERT INTO {quote(name)} SELECT {unnests}", cells)


def create_table(
    context: ToolContext, name: str, rows: Sequence[Any], columns: Sequence[str] | None = None
) -> str:
    """``CREATE OR REPLACE TABLE <name>`` (the name exactly as given, quoted) holding ``rows``:
    dicts, or arrays with ``columns``. Column types come from the values. Returns ``name``."""
    names, body = _row_dicts(rows, columns)
    with context.session.lock:
        _create_table(connection(context), name, names, body)
    return name


def _is_row_list(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(row, Mapping) for row in value)


def _is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, str | int | float | bool)


def tables_of(table: str, result: Any) -> list[tuple[str, list[str], list[list[Any]]]]:
    """What :func:`materialize` would create for ``result``: ``(name, columns, rows)`` each."""
    base = table_name(table)
    if isinstance(result, Mapping) and "rows" in result:  # the rows form, even when it has none
        rows, columns = result["rows"], result.get("columns")
        if not isinstance(rows, list):
            return []
        return [(base, *_row_dicts(rows, columns if isinstance(columns, list) else None))]
    if _is_row_list(result):
        return [(base, *_row_dicts(result, None))]
    if not isinstance(result, Mapping):
        return []
    found: list[tuple[str, list[str], list[list[Any]]]] = []
    scalars = {str(key): value for key, value in result.items() if _is_scalar(value)}
    for key, value in result.items():
        if _is_row_list(value):
            found.append((f"{base}_{key}", *_row_dicts(value, None)))
        elif isinstance(value, Mapping):
            found.append((f"{base}_{key}", *_row_dicts([value], None)))
    if scalars:
        found.insert(0, (base, *_row_dicts([scalars], None)))
    return found


def materialize(context: ToolContext, table: str, result: Any) -> list[str]:
    """Windlass's materialization of a data tool's ``result`` for phase ``table``; the names of
    the tables created (replaced when they exist).

    - ``{"rows": [dicts]}`` or ``{"rows": [arrays], "columns": [...]}``, or a bare list of dicts:
      the table ``_<table>`` (a dict whose ``rows`` is not a list makes nothing);
    - any other dict: its scalar values as the one row of ``_<table>``, each value that is a list
      of dicts as ``_<table>_<key>``, each dict value as the one row of ``_<table>_<key>``;
    - anything else: nothing.
    """
    found = tables_of(table, result)
    if not found:
        return []
    with context.session.lock:
        conn = connection(context)
        for name, columns, rows in found:
            _create_table(conn, name, columns, rows)
    return [name for name, _, _ in found]


def read_table(context: ToolContext, table: str, limit: int | None = None) -> list[dict[str, Any]]:
    """The rows of the session table of phase ``table`` (``_<table>``) as JSON-safe dicts;
    at most ``limit`` of them (all when None). A missing table is a ``LookupError``."""
    name = table_name(table)
    with context.session.lock:
        conn = connection(context)
        if name not in session_tables(context):
            raise LookupError(f"the session database has no table {name}")
        sql = f"SELECT * FROM {quote(name)}"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        cursor = execute(conn, sql)
        columns = unique_names(str(column[0]) for column in cursor.description)
        return [
            {column: json_safe(value) for column, value in zip(columns, row, strict=True)}
            for row in cursor.fetchall()
        ]


def session_tables(context: ToolContext) -> list[str]:
    """The tables of the session database, by name."""
    with context.session.lock:
        cursor = execute(
            connection(context),
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'main' ORDER BY 1",
        )
        return [row[0] for row in cursor.fetchall()]


def output_rows(output: Any) -> Any:
    """The part of a phase output that becomes tables, or None: a dict with ``rows``, a list of
    row dicts (``sql_data``'s old form, ``sql:`` phases), or a polyglot ``{"result": ...}``."""
    if isinstance(output, Mapping):
        if isinstance(output.get("rows"), list):
            return output
        inner = output.get("result")
        if _is_row_list(inner) or (isinstance(inner, Mapping) and inner):
            return inner
        return None
    return output if _is_row_list(output) else None


def ensure_output_tables(context: ToolContext) -> list[str]:
    """Create ``_<phase>`` (and its ``_<phase>_<key>`` tables) for every earlier output in
    ``context.outputs`` that carries rows and has no table yet; the names created. A phase run as
    its own Airflow task gets earlier outputs through XCom and can still ``SELECT ... FROM _x``."""
    created: list[str] = []
    with context.session.lock:
        existing = {name.lower() for name in session_tables(context)}
        for phase, output in list(context.outputs.items())[-MAX_TABLES_REBUILT:]:
            rows = output_rows(output)
            if rows is None or table_name(str(phase)).lower() in existing:
                continue
            created += materialize(context, str(phase), rows)
    return created
