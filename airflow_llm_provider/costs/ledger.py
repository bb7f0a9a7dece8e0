"""The cost ledger: one row per LLM call of every cascade, in PostgreSQL or a local SQLite file.

Budgets above a task (per DAG run, per DAG per day, per tag per day) are sums over this table,
taken before each call; the cost page and the macros read the same sums. One SQL dialect
difference (the parameter style) is handled here, so callers never write SQL.

No Airflow import at module top: workers write rows through their own connection (never the
Airflow metadata DB), and ``conn:<id>`` is resolved lazily through the postgres provider.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import sqlite3
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from airflow_llm_provider.cascades.cache import _describe_dsn, normalise_postgres_uri

TABLE = "llm_cost_ledger"
ALERTS_TABLE = "llm_budget_alerts"
BUDGETS_TABLE = "llm_budgets"
DEFAULT_SQLITE_NAME = "llm_cost_ledger.db"


class LedgerUnavailable(RuntimeError):
    """The ledger's database cannot be reached or written; the message names it (no password)."""


@dataclass(frozen=True)
class LedgerEntry:
    """One LLM call (or a phase answered from the cache) as the ledger stores it."""

    dag_id: str
    run_id: str
    task_id: str
    map_index: int
    try_number: int
    cascade_id: str
    phase: str
    model: str
    attempt: int = 1
    sounding: int | None = None
    requests: int = 1
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float | None = None
    cache_hit: bool = False
    duration_s: float = 0.0
    tags: tuple[str, ...] = ()
    recorded_at: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.UTC))

    @property
    def day(self) -> str:
        """The UTC day the call was made: the unit of daily budgets."""
        return self.recorded_at.astimezone(dt.UTC).date().isoformat()


@dataclass(frozen=True)
class Spend:
    """What a scope has spent so far."""

    cost_usd: float = 0.0
    tokens: int = 0
    requests: int = 0


@dataclass(frozen=True)
class Scope:
    """Which rows a sum covers; ``None`` fields do not filter."""

    dag_id: str | None = None
    run_id: str | None = None
    day: str | None = None
    tag: str | None = None
    task_id: str | None = None

    def describe(self) -> str:
        parts = [f"{name}={value}" for name, value in asdict(self).items() if value is not None]
        return ", ".join(parts) or "everything"


_COLUMNS = (
    "recorded_at",
    "day",
    "dag_id",
    "run_id",
    "task_id",
    "map_index",
    "try_number",
    "cascade_id",
    "phase",
    "attempt",
    "sounding",
    "model",
    "requests",
    "input_tokens",
    "output_tokens",
    "cost_usd",
    "cache_hit",
    "duration_s",
    "tags",
)


_LIKE_ESCAPE = "!"
"""Not a backslash: PostgreSQL and SQLite would disagree on how to quote it in the SQL text."""


def like_literal(value: str) -> str:
    """``value`` for a LIKE pattern that matches it literally (with ``ESCAPE '!'``)."""
    for char in (_LIKE_ESCAPE, "%", "_"):
        value = value.replace(char, _LIKE_ESCAPE + char)
    return value


def _tags_column(tags: Iterable[str]) -> str:
    # ",team-a,nightly," so that one LIKE '%,tag,%' finds a tag exactly, in both databases.
    cleaned = [t.strip() for t in tags if t and t.strip()]
    return "," + ",".join(cleaned) + "," if cleaned else ""


def _row(entry: LedgerEntry) -> tuple[Any, ...]:
    return (
        entry.recorded_at.astimezone(dt.UTC).isoformat(),
        entry.day,
        entry.dag_id,
        entry.run_id,
        entry.task_id,
        entry.map_index,
        entry.try_number,
        entry.cascade_id,
        entry.phase,
        entry.attempt,
        entry.sounding,
        entry.model,
        entry.requests,
        entry.input_tokens,
        entry.output_tokens,
        entry.cost_usd,
        entry.cache_hit,
        entry.duration_s,
        _tags_column(entry.tags),
    )


class Ledger:
    """Shared logic of both databases; subclasses supply connections and the parameter marker."""

    marker = "?"
    where = "ledger"

    # -- to implement --------------------------------------------------------------------------
    def _execute(self, sql: str, params: Sequence[Any] = (), *, many: bool = False) -> list[tuple]:
        raise NotImplementedError

    def _create_table_sql(self) -> list[str]:
        raise NotImplementedError

    # -- writing -------------------------------------------------------------------------------
    def record(self, entries: LedgerEntry | Iterable[LedgerEntry]) -> None:
        """Append rows (one transaction)."""
        batch = [entries] if isinstance(entries, LedgerEntry) else list(entries)
        if not batch:
            return
        placeholders = ", ".join([self.marker] * len(_COLUMNS))
        sql = f"INSERT INTO {TABLE} ({', '.join(_COLUMNS)}) VALUES ({placeholders})"
        self._execute(sql, [_row(e) for e in batch], many=True)

    def claim_alert(self, key: str) -> bool:
        """True for the first caller with ``key`` across every process sharing the ledger: an alert
        about a scope is sent once, however many tasks see the threshold crossed."""
        sql = (
            f"INSERT INTO {ALERTS_TABLE} (key, created_at) VALUES ({self.marker}, {self.marker}) "
            "ON CONFLICT (key) DO NOTHING RETURNING key"
        )
        return bool(self._execute(sql, (key, dt.datetime.now(dt.UTC).isoformat())))

    def declare_budget(self, key: str, declaration: Mapping[str, Any]) -> None:
        """Remember a budget a task runs under (latest declaration wins), so that the cost page,
        which cannot see DAG files, can show its usage."""
        now = dt.datetime.now(dt.UTC).isoformat()
        body = json.dumps(dict(declaration), sort_keys=True)
        sql = (
            f"INSERT INTO {BUDGETS_TABLE} (key, declaration, updated_at) VALUES "
            f"({self.marker}, {self.marker}, {self.marker}) ON CONFLICT (key) DO UPDATE SET "
            "declaration = excluded.declaration, updated_at = excluded.updated_at"
        )
        self._execute(sql, (key, body, now))

    def declared_budgets(self) -> list[dict[str, Any]]:
        """Every budget tasks declared, as :meth:`declare_budget` stored it."""
        rows = self._execute(f"SELECT declaration FROM {BUDGETS_TABLE} ORDER BY key")
        return [json.loads(row[0]) for row in rows]

    # -- reading -------------------------------------------------------------------------------
    def _filters(self, scope: Scope) -> tuple[str, list[Any]]:
        clauses, params = [], []
        for name in ("dag_id", "run_id", "day", "task_id"):
            value = getattr(scope, name)
            if value is not None:
                clauses.append(f"{name} = {self.marker}")
                params.append(value)
        if scope.tag is not None:
            # The tag is matched literally: "_" and "%" in it are escaped, else team_a would also
            # count team-a's (or any teamXa's) calls against its budget.
            clauses.append(f"tags LIKE {self.marker} ESCAPE '{_LIKE_ESCAPE}'")
            params.append(f"%,{like_literal(scope.tag)},%")
        return (" WHERE " + " AND ".join(clauses)) if clauses else "", params

    def spent(self, scope: Scope) -> Spend:
        """Cost, tokens and requests of the calls in ``scope`` (cache hits cost nothing)."""
        where, params = self._filters(scope)
        sql = (
            f"SELECT COALESCE(SUM(cost_usd), 0), COALESCE(SUM(input_tokens + output_tokens), 0), "
            f"COALESCE(SUM(requests), 0) FROM {TABLE}{where}"
        )
        cost, tokens, requests = self._execute(sql, params)[0]
        return Spend(cost_usd=float(cost), tokens=int(tokens), requests=int(requests))

    def entries(self, scope: Scope = Scope(), limit: int = 1000) -> list[dict[str, Any]]:
        """The newest rows of ``scope`` as dicts (tests, the page's detail table)."""
        where, params = self._filters(scope)
        sql = f"SELECT {', '.join(_COLUMNS)} FROM {TABLE}{where} ORDER BY recorded_at DESC LIMIT {int(limit)}"
        return [dict(zip(_COLUMNS, row, strict=True)) for row in self._execute(sql, params)]

    def grouped(
        self,
        by: Sequence[str],
        *,
        scope: Scope = Scope(),
        since: str | None = None,
        until: str | None = None,
        order_by_cost: bool = False,
        limit: int | None = None,
    ) -> list[dict[str, Any]]:
        """Sums per group: ``by`` is a subset of day, dag_id, run_id, task_id, model, cascade_id,
        phase. ``since``/``until`` bound the day (inclusive, ``YYYY-MM-DD``)."""
        allowed = {"day", "dag_id", "run_id", "task_id", "model", "cascade_id", "phase"}
        unknown = sorted(set(by) - allowed)
        if unknown or not by:
            raise ValueError(f"cannot group the ledger by {unknown or by}; use some of {sorted(allowed)}")
        where, params = self._filters(scope)
        for bound, op in ((since, ">="), (until, "<=")):
            if bound is not None:
                where += (" AND " if where else " WHERE ") + f"day {op} {self.marker}"
                params.append(bound)
        keys = ", ".join(by)
        order = "cost_usd DESC" if order_by_cost else keys
        sql = (
            f"SELECT {keys}, COALESCE(SUM(cost_usd), 0) AS cost_usd, "
            f"COALESCE(SUM(input_tokens), 0), COALESCE(SUM(output_tokens), 0), "
            f"COALESCE(SUM(requests), 0), "
            f"SUM(CASE WHEN cache_hit THEN 1 ELSE 0 END), COUNT(*) "
            f"FROM {TABLE}{where} GROUP BY {keys} ORDER BY {order}"
        )
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        result = []
        for row in self._execute(sql, params):
            values = dict(zip(by, row[: len(by)], strict=True))
            cost, tokens_in, tokens_out, requests, hits, calls = row[len(by) :]
            values.update(
                cost_usd=round(float(cost), 6),
                input_tokens=int(tokens_in),
                output_tokens=int(tokens_out),
                requests=int(requests),
                cache_hits=int(hits or 0),
                calls=int(calls),
            )
            result.append({k: (str(v) if k == "day" else v) for k, v in values.items()})
        return result


class SQLiteLedger(Ledger):
    """A file on this machine, for single-machine deployments (LocalExecutor, ``make up``)."""

    marker = "?"

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path).expanduser()
        self.where = f"sqlite:///{self.path}"
        self._setup_lock = threading.Lock()
        self._ready = False

    def __repr__(self) -> str:
        return f"SQLiteLedger({str(self.path)!r})"

    def _create_table_sql(self) -> list[str]:
        columns = (
            "id INTEGER PRIMARY KEY AUTOINCREMENT, recorded_at TEXT NOT NULL, day TEXT NOT NULL, "
            "dag_id TEXT, run_id TEXT, task_id TEXT, map_index INTEGER, try_number INTEGER, "
            "cascade_id TEXT, phase TEXT, attempt INTEGER, sounding INTEGER, model TEXT, "
            "requests INTEGER, input_tokens INTEGER, output_tokens INTEGER, cost_usd REAL, "
            "cache_hit INTEGER, duration_s REAL, tags TEXT"
        )
        return [f"CREATE TABLE IF NOT EXISTS {TABLE} ({columns})", *_INDEXES, _ALERTS_DDL, _BUDGETS_DDL]

    def _execute(self, sql: str, params: Sequence[Any] = (), *, many: bool = False) -> list[tuple]:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # A connection per call: SQLite connections are not shareable across threads/forks,
            # and opening one costs microseconds. WAL lets the page read while tasks write.
            if not self._ready:
                self._set_up()
            conn = sqlite3.connect(self.path, timeout=30)
            try:
                with conn:
                    cursor = conn.executemany(sql, params) if many else conn.execute(sql, params)
                    return cursor.fetchall()
            finally:
                conn.close()
        except sqlite3.Error as err:
            raise LedgerUnavailable(f"cost ledger {self.where} is unavailable: {err}") from err

    def _set_up(self) -> None:
        """WAL and the tables, once per process. Switching the journal mode takes an exclusive
        lock that SQLite's busy timeout does not wait for, so threads must not race to do it."""
        with self._setup_lock:
            if self._ready:
                return
            conn = sqlite3.connect(self.path, timeout=30)
            try:
                conn.execute("PRAGMA journal_mode=WAL")
                with conn:
                    for statement in self._create_table_sql():
                        conn.execute(statement)
            finally:
                conn.close()
            self._ready = True


class PostgresLedger(Ledger):
    """A table every worker writes to: the ledger of a distributed deployment."""

    marker = "%s"

    def __init__(self, dsn: str, *, connect_timeout: int = 10) -> None:
        self._dsn = normalise_postgres_uri(dsn)
        self.where, self._password = _describe_dsn(self._dsn)
        self._connect_timeout = connect_timeout
        self._lock = threading.Lock()
        self._conn: Any = None
        self._conn_pid: int | None = None
        self._ready = False

    def __repr__(self) -> str:
        return f"PostgresLedger({self.where!r})"

    @classmethod
    def from_airflow_connection(cls, conn_id: str) -> PostgresLedger:
        from airflow.providers.postgres.hooks.postgres import PostgresHook

        return cls(PostgresHook(postgres_conn_id=conn_id).get_uri())

    def _create_table_sql(self) -> list[str]:
        columns = (
            "id BIGSERIAL PRIMARY KEY, recorded_at TIMESTAMPTZ NOT NULL, day DATE NOT NULL, "
            "dag_id TEXT, run_id TEXT, task_id TEXT, map_index INTEGER, try_number INTEGER, "
            "cascade_id TEXT, phase TEXT, attempt INTEGER, sounding INTEGER, model TEXT, "
            "requests INTEGER, input_tokens BIGINT, output_tokens BIGINT, cost_usd DOUBLE PRECISION, "
            "cache_hit BOOLEAN, duration_s DOUBLE PRECISION, tags TEXT"
        )
        return [f"CREATE TABLE IF NOT EXISTS {TABLE} ({columns})", *_INDEXES, _ALERTS_DDL, _BUDGETS_DDL]

    def _connection(self) -> Any:
        import psycopg2

        # A forked worker must not share its parent's socket: reconnect in the new process.
        if self._conn is not None and (self._conn.closed or self._conn_pid != os.getpid()):
            self._conn = None
        if self._conn is None:
            conn = psycopg2.connect(self._dsn, connect_timeout=self._connect_timeout)
            conn.autocommit = True
            self._conn, self._conn_pid = conn, os.getpid()
        if not self._ready:
            with self._conn.cursor() as cur:
                # Two first writers may race to create the table: serialise them on a lock.
                cur.execute("SELECT pg_advisory_lock(hashtext(%s))", (TABLE,))
                try:
                    for statement in self._create_table_sql():
                        cur.execute(statement)
                finally:
                    cur.execute("SELECT pg_advisory_unlock(hashtext(%s))", (TABLE,))
            self._ready = True
        return self._conn

    def _execute(self, sql: str, params: Sequence[Any] = (), *, many: bool = False) -> list[tuple]:
        import psycopg2

        try:
            with self._lock:
                conn = self._connection()
                with conn.cursor() as cur:
                    if many:
                        cur.executemany(sql, params)
                        return []
                    cur.execute(sql, params)
                    return cur.fetchall() if cur.description else []
        except psycopg2.Error as err:
            self._conn = None
            detail = str(err).strip()
            if self._password:
                detail = detail.replace(self._password, "***")
            raise LedgerUnavailable(f"cost ledger {self.where} is unavailable: {detail}") from err


_INDEXES = (
    f"CREATE INDEX IF NOT EXISTS {TABLE}_dag_day ON {TABLE} (dag_id, day)",
    f"CREATE INDEX IF NOT EXISTS {TABLE}_run ON {TABLE} (dag_id, run_id)",
    f"CREATE INDEX IF NOT EXISTS {TABLE}_day ON {TABLE} (day)",
)
_ALERTS_DDL = f"CREATE TABLE IF NOT EXISTS {ALERTS_TABLE} (key TEXT PRIMARY KEY, created_at TEXT NOT NULL)"
_BUDGETS_DDL = (
    f"CREATE TABLE IF NOT EXISTS {BUDGETS_TABLE} "
    "(key TEXT PRIMARY KEY, declaration TEXT NOT NULL, updated_at TEXT NOT NULL)"
)
_SQLITE_URL = re.compile(r"^sqlite:///(?P<path>.+)$")


def open_ledger(spec: str) -> Ledger:
    """``conn:<postgres conn id>``, ``postgresql://...`` or ``sqlite:///path`` (or a bare path)."""
    text = spec.strip()
    if text.startswith("conn:") and text[5:].strip():
        return PostgresLedger.from_airflow_connection(text[5:].strip())
    if text.startswith(("postgresql://", "postgres://", "postgresql+")):
        return PostgresLedger(text)
    match = _SQLITE_URL.match(text)
    if match:
        return SQLiteLedger(match["path"])
    if "://" not in text and text:
        return SQLiteLedger(text)
    raise ValueError(
        f"unrecognised ledger setting {text.split('://')[0]}://...; use conn:<postgres connection id>, "
        "postgresql://... or sqlite:///path"
    )


def entry_fields() -> Mapping[str, Any]:
    """Field names and defaults of :class:`LedgerEntry` (for docs and the page's schema)."""
    return {f.name: f.default for f in fields(LedgerEntry)}


def configured_ledger() -> Ledger:
    """The ledger ``[llm_provider] ledger_conn_id`` / ``ledger_path`` name (Airflow config)."""
    from airflow.providers.common.compat.sdk import conf

    conn_id = (conf.get("llm_provider", "ledger_conn_id", fallback="") or "").strip()
    if conn_id:
        return PostgresLedger.from_airflow_connection(conn_id)
    path = (conf.get("llm_provider", "ledger_path", fallback="") or "").strip()
    if not path:
        home = os.environ.get("AIRFLOW_HOME") or os.path.expanduser("~/airflow")
        path = os.path.join(home, DEFAULT_SQLITE_NAME)
    return SQLiteLedger(path)
