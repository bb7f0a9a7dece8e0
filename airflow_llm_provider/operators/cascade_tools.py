"""What cascades get from Airflow: SQL connections for the built-in SQL tools (DbApiHook).

The engine knows no Airflow: its built-in ``sql_data``/``sql_query``/... (``cascades/tools/sql.py``)
reach named connections through the ``SqlConnections`` protocol, which :class:`AirflowSqlConnections`
implements; :func:`airflow_tool_services` builds the ``ToolServices`` for a run. ``sql_data`` here is
the plain function, kept for Python callers.
"""

from __future__ import annotations

import datetime as dt
import decimal
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import closing
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from airflow_llm_provider.cascades.tools.builtin import ToolServices

DEFAULT_MAX_ROWS = 10_000


@dataclass(frozen=True)
class SqlRun:
    """One script ``sql_data`` ran, kept in memory for the task's lineage methods (which parse it
    into datasets); the SQL, connection and hook are never logged, emitted or put in XCom."""

    conn_id: str
    sql: str = field(repr=False)
    connection: Any = field(repr=False, compare=False)
    hook: Any = field(repr=False, compare=False)


def sql_data(
    conn_id: str,
    sql: str,
    parameters: Mapping[str, Any] | Sequence[Any] | None = None,
    max_rows: int = DEFAULT_MAX_ROWS,
) -> list[dict[str, Any]]:
    """Run ``sql`` on the Airflow connection ``conn_id``; rows come back as JSON-safe dicts.

    Parameters are passed to the driver (never formatted into the SQL). A statement that returns
    no rows (DDL/DML) is committed and gives ``[]``. More than ``max_rows`` rows is an error rather
    than a silent truncation: add a LIMIT or raise ``max_rows``.
    """
    return _run_sql(conn_id, sql, parameters, max_rows, None)


def _run_sql(
    conn_id: str,
    sql: str,
    parameters: Mapping[str, Any] | Sequence[Any] | None,
    max_rows: int,
    on_run: Callable[[SqlRun], None] | None,
) -> list[dict[str, Any]]:
    columns, rows = _execute(conn_id, sql, parameters, max_rows, on_run)
    return [{name: _json_safe(value) for name, value in zip(columns, row, strict=True)} for row in rows]


def _sql_hook(conn_id: str, prefix: str = "sql_data: ") -> tuple[Any, Any]:
    """The Airflow connection ``conn_id`` and its ``DbApiHook`` (TypeError for a non-SQL type)."""
    from airflow.providers.common.compat.sdk import BaseHook
    from airflow.providers.common.sql.hooks.sql import DbApiHook

    connection = BaseHook.get_connection(conn_id)
    hook = connection.get_hook()
    if not isinstance(hook, DbApiHook):
        raise TypeError(
            f"{prefix}connection '{conn_id}' is of type '{connection.conn_type}', which has no SQL "
            "hook (DbApiHook); use a database connection such as postgres, mysql, sqlite or snowflake"
        )
    return connection, hook


def _execute(
    conn_id: str,
    sql: str,
    parameters: Mapping[str, Any] | Sequence[Any] | None,
    max_rows: int,
    on_run: Callable[[SqlRun], None] | None,
    prefix: str = "sql_data: ",
) -> tuple[list[str], list[tuple[Any, ...]]]:
    """Run ``sql`` on ``conn_id``: column names and raw rows; more than ``max_rows`` is an error
    (messages start with ``prefix``, the tool's name)."""
    connection, hook = _sql_hook(conn_id, prefix)
    if on_run is not None:
        on_run(SqlRun(conn_id=conn_id, sql=sql, connection=connection, hook=hook))
    with closing(hook.get_conn()) as conn, closing(conn.cursor()) as cursor:
        cursor.execute(sql, parameters)
        if cursor.description is None:
            conn.commit()
            return [], []
        names = [str(column[0]) for column in cursor.description]
        rows = cursor.fetchmany(max_rows + 1)
    if len(rows) > max_rows:
        raise ValueError(
            f"{prefix}the query on '{conn_id}' returned more than {max_rows} rows; add a LIMIT "
            "or pass a larger max_rows"
        )
    return names, [tuple(row) for row in rows]


def _json_safe(value: Any) -> Any:
    """Values that XCom, the phase cache and prompts can carry."""
    if isinstance(value, decimal.Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, bytes | memoryview):
        return bytes(value).hex()
    return value


def recording_sql_data(on_run: Callable[[SqlRun], None]) -> Callable[..., list[dict[str, Any]]]:
    """``sql_data`` that also reports each script it runs to ``on_run`` (for lineage); same
    signature and docstring, so a model calling it as a tool sees no difference."""

    def sql_data(
        conn_id: str,
        sql: str,
        parameters: Mapping[str, Any] | Sequence[Any] | None = None,
        max_rows: int = DEFAULT_MAX_ROWS,
    ) -> list[dict[str, Any]]:
        return _run_sql(conn_id, sql, parameters, max_rows, on_run)

    sql_data.__doc__ = _plain_sql_data.__doc__
    return sql_data


_plain_sql_data = sql_data


class AirflowSqlConnections:
    """The engine's ``SqlConnections`` (``cascades/tools/builtin.py``) over Airflow connections:
    each query runs through the connection's ``DbApiHook``, with driver parameters.

    :param conn_ids: the connections :meth:`list` shows (the ones the cascade names:
        ``trust.connection_ids``). Listing every Airflow connection would read the metadata
        database, which task code must not do; resolving one id by name does not.
    :param on_run: called with a :class:`SqlRun` for every script run (the task's lineage).
    """

    def __init__(self, conn_ids: Iterable[str] = (), on_run: Callable[[SqlRun], None] | None = None) -> None:
        self.conn_ids = tuple(dict.fromkeys(conn_ids))
        self.on_run = on_run

    def run(
        self, conn_id: str, sql: str, parameters: Any = None, max_rows: int = DEFAULT_MAX_ROWS
    ) -> tuple[list[str], list[tuple[Any, ...]]]:
        """Run ``sql`` on the Airflow connection ``conn_id``; column names and at most ``max_rows``
        raw rows (more is an error). A statement with no result (DDL/DML) is committed: ``([], [])``."""
        # No tool name in the messages: the engine's SQL tools put their own in front.
        return _execute(conn_id, sql, parameters, max_rows, self.on_run, prefix="")

    def list(self) -> list[dict[str, Any]]:
        """``{"name", "type", "description"}`` of each of ``conn_ids`` that exists and has a SQL
        hook; the others are left out."""
        found = []
        for conn_id in self.conn_ids:
            try:
                connection, hook = _sql_hook(conn_id, prefix="")
            except Exception:  # missing, or not a database: not usable from SQL tools
                continue
            found.append(
                {
                    "name": conn_id,
                    "type": connection.conn_type,
                    "description": getattr(connection, "description", None) or type(hook).__name__,
                }
            )
        return found


def airflow_tool_services(
    on_sql: Callable[[SqlRun], None] | None = None, *, conn_ids: Iterable[str] = (), **services: Any
) -> ToolServices:
    """What the built-in tools get inside Airflow: the Airflow connections as SQL connections.

    :param on_sql: called with a :class:`SqlRun` for every script a SQL tool runs (lineage).
    :param conn_ids: the connections ``list_sql_connections``/``sql_search`` may show; pass the
        cascade's ``trust.connection_ids(cascade)``.
    :param services: other :class:`ToolServices` fields (``scratch_root``, ``artifacts_dir``...).
    """
    from airflow_llm_provider.cascades.tools.builtin import ToolServices

    return ToolServices(sql=AirflowSqlConnections(conn_ids, on_run=on_sql), **services)


def airflow_tools(
    user_tools: Mapping[str, Callable[..., Any]] | None = None,
    *,
    on_sql: Callable[[SqlRun], None] | None = None,
) -> dict[str, Callable[..., Any]]:
    """The tools a cascade gets inside Airflow besides the built-ins: the user's own.

    ``sql_data`` is now the engine's built-in (``cascades/tools/sql.py``), which reaches Airflow
    connections through :func:`airflow_tool_services`; ``on_sql`` is accepted for callers not yet
    moved and ignored (lineage comes from ``airflow_tool_services(on_sql=...)``).
    """
    del on_sql
    return dict(user_tools or {})


def tool_names(user_tools: Mapping[str, Callable[..., Any]] | None = None) -> list[str]:
    """The names :func:`airflow_tools` will register, for validating a cascade before it runs."""
    from airflow_llm_provider.cascades.tools import STANDARD_TOOLS

    return [*STANDARD_TOOLS, *(user_tools or {})]


def configured_tool_path() -> list[str]:
    """``[llm_provider] tool_path``: more folders with tool and validator cascades."""
    import os

    from airflow.providers.common.compat.sdk import conf

    raw = conf.get("llm_provider", "tool_path", fallback="") or ""
    return [part for part in raw.split(os.pathsep) if part.strip()]
