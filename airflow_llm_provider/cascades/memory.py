"""Memory banks (Windlass ``memory:``): a cascade's conversations kept across runs, searchable by
the model through a tool named after the bank.

Windlass saves every message of a run (not those of soundings) into the bank and offers a
``<bank>(query, limit=5)`` tool to phases that list the bank in their ``tackle``; it searches the
bank by embeddings. We keep the same store-and-search contract with a keyword search (no embedding
model needed). Two backends, as the phase cache: a local SQLite file (one machine) and a
PostgreSQL table (workers on several machines).
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

from airflow_llm_provider.cascades.cache import (
    _SQLALCHEMY_SCHEME,
    CACHE_DIR_ENV,
    DEFAULT_CACHE_DIR,
    PostgresCache,
    normalise_postgres_uri,
)

MEMORY_DIR_NAME = "memory"
SEARCH_WINDOW = 2000
"""Newest messages of a bank a search looks at (keyword scoring happens in Python)."""
_WORD = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]{2,}")
_STOPWORDS = frozenset(
    " ".join(
        (
            "the and for are but not you all can had her was one our out has have been would could",
            "should this that with they from what which when where will make like just know take",
            "into some than them then only come over your more about also each other such",
        )
    ).split(" ")
)


def keywords(text: str) -> set[str]:
    """Lower-case words of three or more letters, without common English stop words."""
    return {w for w in _WORD.findall(text.lower()) if w not in _STOPWORDS}


class MemoryStore(Protocol):
    """What the runner needs from a memory backend."""

    def save(self, bank: str, messages: Sequence[Mapping[str, Any]]) -> None: ...

    def recent(self, bank: str, limit: int) -> list[dict[str, Any]]: ...


def search(store: MemoryStore, bank: str, query: str, limit: int = 5) -> list[dict[str, Any]]:
    """The ``limit`` stored messages sharing the most keywords with ``query`` (newer first on ties)."""
    wanted = keywords(query)
    scored: list[tuple[int, int, dict[str, Any]]] = []
    for position, message in enumerate(store.recent(bank, SEARCH_WINDOW)):
        overlap = len(wanted & keywords(str(message.get("content", ""))))
        if overlap or not wanted:
            scored.append((overlap, -position, message))
    scored.sort(key=lambda item: (item[0], item[1]), reverse=True)
    return [message for _, _, message in scored[: max(1, limit)]]


def format_results(bank: str, query: str, found: list[dict[str, Any]]) -> str:
    """The memory tool's answer to the model."""
    if not found:
        return f"Nothing in memory bank '{bank}' matches '{query}'."
    lines = [f"{len(found)} message(s) from memory bank '{bank}':"]
    for index, message in enumerate(found, 1):
        where = f"{message.get('cascade_id', '?')}/{message.get('phase', '?')}"
        lines.append(f"[{index}] {message.get('role', '?')} in {where}:\n{message.get('content', '')}")
    return "\n\n".join(lines)


class LocalMemoryStore:
    """A SQLite file under ``root`` (``memory.sqlite3``), one row per message."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser()
        self.root.mkdir(parents=True, exist_ok=True)
        self.path = self.root / "memory.sqlite3"
        self._lock = threading.Lock()
        with self._connect() as conn:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS memory (id INTEGER PRIMARY KEY AUTOINCREMENT, "
                "bank TEXT NOT NULL, message TEXT NOT NULL, created_at REAL NOT NULL)"
            )
            conn.execute("CREATE INDEX IF NOT EXISTS memory_bank ON memory (bank, id)")

    def __repr__(self) -> str:
        return f"LocalMemoryStore({str(self.root)!r})"

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(self.path, timeout=30)

    def save(self, bank: str, messages: Sequence[Mapping[str, Any]]) -> None:
        rows = [(bank, json.dumps(dict(m), default=str, ensure_ascii=False), time.time()) for m in messages]
        with self._lock, self._connect() as conn:
            conn.executemany("INSERT INTO memory (bank, message, created_at) VALUES (?, ?, ?)", rows)

    def recent(self, bank: str, limit: int) -> list[dict[str, Any]]:
        with self._lock, self._connect() as conn:
            rows = conn.execute(
                "SELECT message FROM memory WHERE bank = ? ORDER BY id DESC LIMIT ?", (bank, limit)
            ).fetchall()
        return [json.loads(row[0]) for row in rows]


class _MemoryTable(PostgresCache):
    """The phase cache's connection handling (reconnects, password-free errors) on another table."""

    columns = (
        "id bigserial PRIMARY KEY, bank text NOT NULL, message jsonb NOT NULL, "
        "created_at double precision NOT NULL"
    )


class PostgresMemoryStore:
    """A table shared by every worker."""

    def __init__(self, dsn: str, table: str = "llm_memory") -> None:
        self._db = _MemoryTable(dsn, table=table)
        self.table = table

    def __repr__(self) -> str:
        return f"PostgresMemoryStore({self._db.where!r}, table={self.table!r})"

    def save(self, bank: str, messages: Sequence[Mapping[str, Any]]) -> None:
        from psycopg2 import sql
        from psycopg2.extras import Json

        statement = sql.SQL("INSERT INTO {} (bank, message, created_at) VALUES (%s, %s, %s)").format(
            sql.Identifier(self.table)
        )
        for message in messages:
            self._db._run(statement, (bank, Json(dict(message), dumps=_dumps), time.time()), fetch=False)

    def recent(self, bank: str, limit: int) -> list[dict[str, Any]]:
        from psycopg2 import sql

        statement = sql.SQL(
            "SELECT coalesce(json_agg(message ORDER BY id DESC), '[]'::json) FROM "
            "(SELECT id, message FROM {} WHERE bank = %s ORDER BY id DESC LIMIT %s) newest"
        ).format(sql.Identifier(self.table))
        row = self._db._run(statement, (bank, limit), fetch=True)
        return list(row[0]) if row else []

    def close(self) -> None:
        self._db.close()


def _dumps(value: Any) -> str:
    return json.dumps(value, default=str, ensure_ascii=False)


def default_memory_dir() -> Path:
    """``memory/`` under the phase cache's directory (``AIRFLOW_LLM_CACHE_DIR`` or the default)."""
    return Path(os.environ.get(CACHE_DIR_ENV) or DEFAULT_CACHE_DIR).expanduser() / MEMORY_DIR_NAME


_FORMS = (
    "'local', 'dir:/path', 'postgresql://user@host/db' (or 'postgres://...'), 'conn:<postgres connection id>'"
)


def open_memory(spec: str | None) -> MemoryStore:
    """A memory backend from the same forms as the phase cache's setting (``None``: local)."""
    text = (spec or "local").strip()
    if text.lower() == "local":
        return LocalMemoryStore(default_memory_dir())
    if text.startswith("dir:") and text[4:].strip():
        return LocalMemoryStore(text[4:].strip())
    if _SQLALCHEMY_SCHEME.match(text):
        return PostgresMemoryStore(normalise_postgres_uri(text))
    if text.startswith("conn:") and text[5:].strip():
        from airflow.providers.postgres.hooks.postgres import PostgresHook

        uri = PostgresHook(postgres_conn_id=text[5:].strip()).get_uri()
        return PostgresMemoryStore(normalise_postgres_uri(uri))
    shown = f"{urlsplit(text).scheme}://..." if "://" in text else text
    raise ValueError(f"unrecognised memory setting {shown!r}; accepted forms: {_FORMS}")
