"""Phase-output cache: a retried task resumes without paying again for phases that already ran.

Keys hash everything that decides a phase's answer (cascade, phase, rendered inputs, model) under a
``scope``: the run id for retry-resume, or ``"shared"`` for opt-in reuse across runs with a TTL.
Two backends: a local directory (one machine) and PostgreSQL (workers on several machines).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

log = logging.getLogger(__name__)

CACHE_DIR_ENV = "AIRFLOW_LLM_CACHE_DIR"
DEFAULT_CACHE_DIR = Path("~/.cache/airflow-llm-provider/phases")
_KEY_VERSION = 1
_HEX_KEY = re.compile(r"^[0-9a-f]{16,128}$")
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
_SQLALCHEMY_SCHEME = re.compile(r"^(postgres|postgresql)(\+[A-Za-z0-9_]+)?://")


class CacheUnavailable(RuntimeError):
    """The cache backend cannot be reached; the message names host and database, never a password."""


def canonical_json(value: Any) -> str:
    """One text per value whatever the dict order, so equal inputs hash equally."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def content_hash(value: Any) -> str:
    """sha256 hex of :func:`canonical_json`."""
    return hashlib.sha256(canonical_json(value).encode("utf-8")).hexdigest()


def cache_key(*, scope: str, cascade_hash: str, phase: str, rendered_inputs: Any, model: str | None) -> str:
    """The key of one phase's output; any part changing gives another key."""
    # Hashing a JSON object (not a joined string) keeps parts from bleeding into each other.
    return content_hash(
        {
            "v": _KEY_VERSION,
            "scope": scope,
            "cascade": cascade_hash,
            "phase": phase,
            "inputs": rendered_inputs,
            "model": model,
        }
    )


@dataclass(frozen=True)
class CachedPhase:
    """A phase's stored answer and what producing it cost."""

    output: Any
    model: str | None
    usage: dict[str, Any]
    created_at: float

    def age(self, now: float | None = None) -> float:
        return (time.time() if now is None else now) - self.created_at

    def expired(self, max_age_seconds: float | None) -> bool:
        return max_age_seconds is not None and self.age() > max_age_seconds


class PhaseCache(Protocol):
    """What the runner needs from a cache backend."""

    def get(self, key: str, *, max_age_seconds: float | None = None) -> CachedPhase | None: ...

    def put(self, key: str, entry: CachedPhase) -> None: ...


def _check_serialisable(entry: CachedPhase) -> None:
    try:
        json.dumps({"output": entry.output, "usage": entry.usage}, allow_nan=False)
    except (TypeError, ValueError) as err:
        raise TypeError(f"phase cache entries must be JSON-serialisable: {err}") from err


class LocalDirectoryCache:
    """One JSON file per key under ``root`` (sharded by the key's first two characters)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser()
        self.root.mkdir(parents=True, exist_ok=True)

    def __repr__(self) -> str:
        return f"LocalDirectoryCache({str(self.root)!r})"

    def path_for(self, key: str) -> Path:
        """Where ``key`` lives; keys that are not plain hex are hashed, so no key escapes ``root``."""
        name = key if _HEX_KEY.match(key) else hashlib.sha256(key.encode("utf-8")).hexdigest()
        return self.root / name[:2] / f"{name}.json"

    def get(self, key: str, *, max_age_seconds: float | None = None) -> CachedPhase | None:
        path = self.path_for(key)
        try:
            raw = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        except OSError as err:
            log.warning("Phase cache file %s is unreadable (treated as a miss): %s", path, err)
            return None
        try:
            data = json.loads(raw)
            if not isinstance(data, dict) or data.get("key") != key:
                raise ValueError("not an entry for this key")
            usage = data["usage"]
            created_at = data["created_at"]
            model = data["model"]
            if not isinstance(usage, dict) or isinstance(created_at, bool):
                raise ValueError("malformed usage or created_at")
            if not isinstance(model, str | None):
                raise ValueError("malformed model")
            entry = CachedPhase(output=data["output"], model=model, usage=usage, created_at=float(created_at))
            if not math.isfinite(entry.created_at):
                raise ValueError("malformed created_at")
        except (ValueError, KeyError, TypeError) as err:
            log.warning("Phase cache file %s is corrupt (treated as a miss): %s", path, err)
            return None
        return None if entry.expired(max_age_seconds) else entry

    def put(self, key: str, entry: CachedPhase) -> None:
        """Atomic: a temporary file in the same directory, then ``os.replace``; readers never see half."""
        _check_serialisable(entry)
        path = self.path_for(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        payload = json.dumps(
            {
                "key": key,
                "output": entry.output,
                "model": entry.model,
                "usage": entry.usage,
                "created_at": entry.created_at,
            },
            ensure_ascii=False,
        )
        fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem[:16]}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(payload)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp_name, path)
        except BaseException:
            try:
                os.unlink(tmp_name)
            except OSError:
                pass
            raise


def normalise_postgres_uri(uri: str) -> str:
    """``postgresql://...`` from the ``postgres://`` and SQLAlchemy ``postgresql+driver://`` forms."""
    return _SQLALCHEMY_SCHEME.sub("postgresql://", uri, count=1)


def _describe_dsn(dsn: str) -> tuple[str, str | None]:
    """``("host:port/db", password)`` of a DSN, for messages that must not show the password."""
    from psycopg2.extensions import parse_dsn

    try:
        params = parse_dsn(dsn)
    except Exception:
        raise ValueError(
            "invalid PostgreSQL DSN (not shown: it may contain a password); "
            "expected postgresql://user:password@host:port/dbname"
        ) from None
    host = params.get("host") or "localhost"
    where = f"{host}:{params.get('port') or 5432}/{params.get('dbname') or params.get('user') or '?'}"
    return where, params.get("password")


class PostgresCache:
    """A table shared by every worker, for deployments spread over machines (Celery, Kubernetes)."""

    def __init__(self, dsn: str, table: str = "llm_phase_cache", *, connect_timeout: int = 10) -> None:
        if not isinstance(table, str) or not _IDENTIFIER.match(table):
            raise ValueError(
                f"cache table name {table!r} is not a plain identifier (letters, digits and _, "
                "not starting with a digit, at most 63 characters)"
            )
        self._dsn = normalise_postgres_uri(dsn)
        self.table = table
        self.where, self._password = _describe_dsn(self._dsn)
        self._connect_timeout = connect_timeout
        self._lock = threading.Lock()
        self._conn: Any = None
        self._conn_pid: int | None = None
        self._table_ready = False

    def __repr__(self) -> str:
        return f"PostgresCache({self.where!r}, table={self.table!r})"

    @classmethod
    def from_airflow_connection(cls, conn_id: str, table: str = "llm_phase_cache") -> PostgresCache:
        """The cache in the database of an Airflow ``postgres`` connection."""
        from airflow.providers.postgres.hooks.postgres import PostgresHook

        uri = PostgresHook(postgres_conn_id=conn_id).get_uri()
        return cls(normalise_postgres_uri(uri), table=table)

    def _unavailable(self, err: BaseException) -> CacheUnavailable:
        detail = str(err).strip()
        if self._password:
            detail = detail.replace(self._password, "***")
        return CacheUnavailable(
            f"PostgreSQL phase cache at {self.where} (table {self.table}) is unavailable: {detail}"
        )

    def _connection(self) -> Any:
        import psycopg2

        # A forked worker must not share its parent's socket: reconnect in the new process.
        if self._conn is not None and (self._conn.closed or self._conn_pid != os.getpid()):
            self._conn = None
            self._table_ready = False
        if self._conn is None:
            conn = psycopg2.connect(self._dsn, connect_timeout=self._connect_timeout)
            conn.autocommit = True
            self._conn, self._conn_pid = conn, os.getpid()
        if not self._table_ready:
            self._create_table(self._conn)
            self._table_ready = True
        return self._conn

    columns = (
        "key text PRIMARY KEY, output jsonb, model text, usage jsonb, created_at double precision NOT NULL"
    )
    """The table's column definitions (subclasses that keep other rows set their own)."""

    def _create_table(self, conn: Any) -> None:
        from psycopg2 import errors, sql

        statement = sql.SQL("CREATE TABLE IF NOT EXISTS {} (" + self.columns + ")").format(
            sql.Identifier(self.table)
        )
        try:
            with conn.cursor() as cur:
                cur.execute(statement)
        except (errors.UniqueViolation, errors.DuplicateTable):
            pass  # another worker created it at the same moment

    def _run(self, statement: Any, params: tuple[Any, ...], fetch: bool) -> Any:
        import psycopg2

        with self._lock:
            for attempt in (1, 2):
                try:
                    conn = self._connection()
                    with conn.cursor() as cur:
                        cur.execute(statement, params)
                        return cur.fetchone() if fetch else None
                except (psycopg2.OperationalError, psycopg2.InterfaceError) as err:
                    # A dropped connection gets one reconnect; a server that is down does not.
                    stale = self._conn is not None
                    self._close_quietly()
                    if attempt == 2 or not stale:
                        raise self._unavailable(err) from None
        raise AssertionError("unreachable")

    def get(self, key: str, *, max_age_seconds: float | None = None) -> CachedPhase | None:
        from psycopg2 import sql

        statement = sql.SQL("SELECT output, model, usage, created_at FROM {} WHERE key = %s").format(
            sql.Identifier(self.table)
        )
        row = self._run(statement, (key,), fetch=True)
        if row is None:
            return None
        output, model, usage, created_at = row
        entry = CachedPhase(output=output, model=model, usage=dict(usage or {}), created_at=float(created_at))
        return None if entry.expired(max_age_seconds) else entry

    def put(self, key: str, entry: CachedPhase) -> None:
        from psycopg2 import sql
        from psycopg2.extras import Json

        _check_serialisable(entry)
        statement = sql.SQL(
            "INSERT INTO {} (key, output, model, usage, created_at) VALUES (%s, %s, %s, %s, %s) "
            "ON CONFLICT (key) DO UPDATE SET output = EXCLUDED.output, model = EXCLUDED.model, "
            "usage = EXCLUDED.usage, created_at = EXCLUDED.created_at"
        ).format(sql.Identifier(self.table))
        params = (key, Json(entry.output), entry.model, Json(entry.usage), float(entry.created_at))
        self._run(statement, params, fetch=False)

    def _close_quietly(self) -> None:
        conn, self._conn, self._table_ready = self._conn, None, False
        if conn is not None:
            try:
                conn.close()
            except Exception:
                pass

    def close(self) -> None:
        with self._lock:
            self._close_quietly()


_FORMS = (
    "None or 'off' (no cache), 'local', 'dir:/path', 'postgresql://user@host/db' (or 'postgres://...'), "
    "'conn:<postgres connection id>'"
)


def open_cache(spec: str | None) -> PhaseCache | None:
    """The runner's/operator's ``cache=`` argument turned into a backend (``None``: no caching)."""
    if spec is None:
        return None
    if not isinstance(spec, str):
        raise ValueError(f"cache must be a string or None; accepted forms: {_FORMS}")
    text = spec.strip()
    if text.lower() == "off":
        return None
    if text.lower() == "local":
        return LocalDirectoryCache(os.environ.get(CACHE_DIR_ENV) or DEFAULT_CACHE_DIR)
    if text.startswith("dir:") and text[4:].strip():
        return LocalDirectoryCache(text[4:].strip())
    if _SQLALCHEMY_SCHEME.match(text):
        return PostgresCache(text)
    if text.startswith("conn:") and text[5:].strip():
        return PostgresCache.from_airflow_connection(text[5:].strip())
    # Show only the scheme of a URL-like value: the rest may hold a password.
    shown = f"{urlsplit(text).scheme}://..." if "://" in text else text
    raise ValueError(f"unrecognised cache setting {shown!r}; accepted forms: {_FORMS}")
