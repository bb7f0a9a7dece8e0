"""Tools that cascades get from Airflow: ``sql_data`` over any SQL connection (DbApiHook).

The engine itself knows no Airflow; the operators register these next to the user's own tools.
"""

from __future__ import annotations

import datetime as dt
import decimal
import uuid
from collections.abc import Callable, Mapping, Sequence
from contextlib import closing
from dataclasses import dataclass, field
from typing import Any

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
    from airflow.providers.common.compat.sdk import BaseHook
    from airflow.providers.common.sql.hooks.sql import DbApiHook

    connection = BaseHook.get_connection(conn_id)
    hook = connection.get_hook()
    if not isinstance(hook, DbApiHook):
        raise TypeError(
            f"sql_data: connection '{conn_id}' is of type '{connection.conn_type}', which has no SQL "
            "hook (DbApiHook); use a database connection such as postgres, mysql, sqlite or snowflake"
        )
    if on_run is not None:
        on_run(SqlRun(conn_id=conn_id, sql=sql, connection=connection, hook=hook))
    with closing(hook.get_conn()) as conn, closing(conn.cursor()) as cursor:
        cursor.execute(sql, parameters)
        if cursor.description is None:
            conn.commit()
            return []
        names = [column[0] for column in cursor.description]
        rows = cursor.fetchmany(max_rows + 1)
    if len(rows) > max_rows:
        raise ValueError(
            f"sql_data: the query on '{conn_id}' returned more than {max_rows} rows; add a LIMIT "
            "or pass a larger max_rows"
        )
    return [{name: _json_safe(value) for name, value in zip(names, row, strict=True)} for row in rows]


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


def airflow_tools(
    user_tools: Mapping[str, Callable[..., Any]] | None = None,
    *,
    on_sql: Callable[[SqlRun], None] | None = None,
) -> dict[str, Callable[..., Any]]:
    """The tools a cascade gets inside Airflow: ours first, the user's own override them.

    :param on_sql: called with a :class:`SqlRun` for every script ``sql_data`` runs (lineage).
    """
    tool = sql_data if on_sql is None else recording_sql_data(on_sql)
    return {"sql_data": tool, **(user_tools or {})}


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
