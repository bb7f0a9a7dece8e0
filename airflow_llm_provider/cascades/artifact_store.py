"""Where cascades keep the artifacts and charts their tools create: one SQLite file.

Windlass keeps artifacts in ClickHouse (or a parquet file) and charts as ``./chart.png``; here
both are rows of one SQLite database that the workers write (``tools/artifacts.py``) and the
"Cascade artifacts" page reads (``plugins/artifacts_page``). It is the provider's own file, never
the Airflow metadata database, and imports no Airflow.

Location: the ``artifacts_dir`` the host lends the tools (``ToolServices.artifacts_dir``), else
``$AIRFLOW_LLM_ARTIFACTS_DIR``, else an ``artifacts`` folder next to the local phase cache
(``$AIRFLOW_LLM_CACHE_DIR`` or ``~/.cache/airflow-llm-provider/phases``, see ``cache.py``). The
web server must resolve to the same folder as the workers (same machine or a shared volume).

Sizes are bounded: content over :data:`MAX_CONTENT_BYTES` is refused with a clear error, as are
over-long titles, descriptions and tag lists.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import sqlite3
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from airflow_llm_provider.cascades.cache import CACHE_DIR_ENV, DEFAULT_CACHE_DIR

VIEW_URL_PREFIX = "/cascade-artifacts"
"""Where the "Cascade artifacts" page lives (``plugins/artifacts_page``), on both Airflow lines."""
ARTIFACTS_DIR_ENV = "AIRFLOW_LLM_ARTIFACTS_DIR"
DATABASE_NAME = "artifacts.db"

MAX_CONTENT_BYTES = 5 * 1024 * 1024
MAX_TITLE_CHARS = 500
MAX_DESCRIPTION_CHARS = 10_000
MAX_TAGS = 50
MAX_TAG_CHARS = 100
MAX_LIST_LIMIT = 500

FORMATS = ("html", "vega-lite", "plotly")
"""How an artifact's content is drawn: an HTML document, a Vega-Lite or a Plotly JSON spec."""

_ID = re.compile(r"^artifact_[0-9a-f]{12}$")
_TYPE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS artifacts (
    id TEXT PRIMARY KEY,
    session_id TEXT NOT NULL,
    cascade_id TEXT NOT NULL,
    phase TEXT NOT NULL,
    artifact_type TEXT NOT NULL,
    format TEXT NOT NULL,
    title TEXT NOT NULL,
    description TEXT NOT NULL DEFAULT '',
    tags TEXT NOT NULL DEFAULT '[]',
    content TEXT NOT NULL,
    image BLOB,
    created_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS artifacts_by_cascade ON artifacts (cascade_id, created_at);
CREATE INDEX IF NOT EXISTS artifacts_by_session ON artifacts (session_id, created_at);
"""

_SUMMARY_COLUMNS = (
    "id, session_id, cascade_id, phase, artifact_type, format, title, description, tags, "
    "length(CAST(content AS BLOB)) AS content_bytes, image IS NOT NULL AS has_image, created_at"
)


class ArtifactError(ValueError):
    """An artifact the store refuses (too big, bad type, bad id); the message says which field."""


def default_artifacts_dir() -> Path:
    """``[llm_provider] artifacts_dir``, else ``$AIRFLOW_LLM_ARTIFACTS_DIR``, else ``artifacts``
    beside the local phase cache folder: workers and the page read the same setting."""
    from airflow_llm_provider.cascades.settings import option

    explicit = (option("artifacts_dir") or os.environ.get(ARTIFACTS_DIR_ENV, "")).strip()
    if explicit:
        return Path(explicit).expanduser()
    cache_dir = Path(os.environ.get(CACHE_DIR_ENV) or DEFAULT_CACHE_DIR).expanduser()
    return cache_dir.parent / "artifacts"


def new_artifact_id() -> str:
    """``artifact_<12 hex>``, Windlass's id form."""
    return f"artifact_{secrets.token_hex(6)}"


def is_artifact_id(value: str) -> bool:
    return bool(_ID.match(value))


@dataclass
class Artifact:
    """One stored artifact (``content`` is the HTML document or the chart's JSON spec)."""

    id: str
    session_id: str
    cascade_id: str
    phase: str
    artifact_type: str
    format: str
    title: str
    content: str
    description: str = ""
    tags: list[str] = field(default_factory=list)
    created_at: float = field(default_factory=time.time)
    image: bytes | None = None
    """A PNG rendering of a chart, when one could be made offline."""

    def summary(self) -> dict[str, Any]:
        """The row without its content (what listings show)."""
        row = asdict(self)
        row.pop("content")
        row.pop("image")
        row["content_bytes"] = len(self.content.encode("utf-8"))
        row["has_image"] = self.image is not None
        return row


def check_artifact(artifact: Artifact) -> None:
    """Raise :class:`ArtifactError` naming the field when ``artifact`` breaks a bound."""
    if not is_artifact_id(artifact.id):
        raise ArtifactError(f"artifact id {artifact.id!r} is not of the form artifact_<12 hex digits>")
    if artifact.format not in FORMATS:
        raise ArtifactError(f"artifact format {artifact.format!r} is not one of {', '.join(FORMATS)}")
    if not _TYPE.match(artifact.artifact_type):
        raise ArtifactError(
            "artifact_type must be 1-64 letters, digits, '_', '-' or '.', "
            f"got {artifact.artifact_type[:80]!r}"
        )
    if not artifact.title.strip():
        raise ArtifactError("title must not be empty")
    if len(artifact.title) > MAX_TITLE_CHARS:
        raise ArtifactError(f"title is {len(artifact.title)} characters; at most {MAX_TITLE_CHARS}")
    if len(artifact.description) > MAX_DESCRIPTION_CHARS:
        raise ArtifactError(
            f"description is {len(artifact.description)} characters; at most {MAX_DESCRIPTION_CHARS}"
        )
    if len(artifact.tags) > MAX_TAGS:
        raise ArtifactError(f"{len(artifact.tags)} tags; at most {MAX_TAGS}")
    for tag in artifact.tags:
        if not isinstance(tag, str) or not tag.strip() or len(tag) > MAX_TAG_CHARS:
            raise ArtifactError(f"each tag must be non-empty text of at most {MAX_TAG_CHARS} characters")
    size = len(artifact.content.encode("utf-8")) + len(artifact.image or b"")
    if size > MAX_CONTENT_BYTES:
        raise ArtifactError(
            f"content is {size:,} bytes; an artifact may hold at most {MAX_CONTENT_BYTES:,} bytes"
        )


class ArtifactStore:
    """The SQLite artifact database in ``directory`` (created on first write).

    Safe to share between threads (one connection per operation) and processes (SQLite's file
    locking, WAL journal, a busy timeout)."""

    def __init__(self, directory: Path | str | None = None) -> None:
        self.directory = Path(directory).expanduser() if directory is not None else default_artifacts_dir()
        self.path = self.directory / DATABASE_NAME
        self._ready = False
        self._lock = threading.Lock()

    def _connect(self, *, create: bool) -> sqlite3.Connection | None:
        if not create and not self.path.is_file():
            return None
        if create:
            self.directory.mkdir(parents=True, exist_ok=True)
        connection = sqlite3.connect(self.path, timeout=30)
        connection.row_factory = sqlite3.Row
        with self._lock:
            if not self._ready:
                connection.execute("PRAGMA journal_mode=WAL")
                connection.executescript(_SCHEMA)
                self._ready = True
        return connection

    def add(self, artifact: Artifact) -> Artifact:
        """Store ``artifact`` (checked against the bounds first)."""
        check_artifact(artifact)
        connection = self._connect(create=True)
        assert connection is not None
        try:
            with connection:
                connection.execute(
                    "INSERT INTO artifacts (id, session_id, cascade_id, phase, artifact_type, format, "
                    "title, description, tags, content, image, created_at) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        artifact.id,
                        artifact.session_id,
                        artifact.cascade_id,
                        artifact.phase,
                        artifact.artifact_type,
                        artifact.format,
                        artifact.title,
                        artifact.description,
                        json.dumps(artifact.tags),
                        artifact.content,
                        artifact.image,
                        artifact.created_at,
                    ),
                )
        finally:
            connection.close()
        return artifact

    def get(self, artifact_id: str) -> Artifact | None:
        """The artifact ``artifact_id`` with its content, or None."""
        if not is_artifact_id(artifact_id):
            return None
        connection = self._connect(create=False)
        if connection is None:
            return None
        try:
            row = connection.execute("SELECT * FROM artifacts WHERE id = ?", (artifact_id,)).fetchone()
        finally:
            connection.close()
        if row is None:
            return None
        values = dict(row)
        values["tags"] = _tags(values["tags"])
        return Artifact(**values)

    def summaries(
        self,
        *,
        cascade_id: str | None = None,
        session_id: str | None = None,
        artifact_type: str | None = None,
        tags: Iterable[str] | None = None,
        limit: int = 50,
    ) -> list[dict[str, Any]]:
        """Summaries (no content), newest first; ``tags``: artifacts with any of these tags."""
        limit = max(1, min(int(limit), MAX_LIST_LIMIT))
        connection = self._connect(create=False)
        if connection is None:
            return []
        where: list[str] = []
        params: list[Any] = []
        for column, value in (
            ("cascade_id", cascade_id),
            ("session_id", session_id),
            ("artifact_type", artifact_type),
        ):
            if value:
                where.append(f"{column} = ?")
                params.append(value)
        wanted = [t for t in (tags or []) if t]
        if wanted:
            # tags is a JSON list: match any of the wanted tags exactly.
            marks = ", ".join("?" * len(wanted))
            where.append(
                f"EXISTS (SELECT 1 FROM json_each(artifacts.tags) WHERE json_each.value IN ({marks}))"
            )
            params.extend(wanted)
        sql = f"SELECT {_SUMMARY_COLUMNS} FROM artifacts"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY created_at DESC, id LIMIT ?"
        params.append(limit)
        try:
            rows = connection.execute(sql, params).fetchall()
        finally:
            connection.close()
        result = []
        for row in rows:
            values = dict(row)
            values["tags"] = _tags(values["tags"])
            values["has_image"] = bool(values["has_image"])
            result.append(values)
        return result

    def facets(self) -> dict[str, list[str]]:
        """The cascade ids and session ids present (for the page's filters), newest first."""
        connection = self._connect(create=False)
        if connection is None:
            return {"cascades": [], "sessions": []}
        try:
            cascades = connection.execute(
                "SELECT cascade_id FROM artifacts GROUP BY cascade_id ORDER BY max(created_at) DESC LIMIT 500"
            ).fetchall()
            sessions = connection.execute(
                "SELECT session_id FROM artifacts GROUP BY session_id ORDER BY max(created_at) DESC LIMIT 500"
            ).fetchall()
        finally:
            connection.close()
        return {"cascades": [r[0] for r in cascades], "sessions": [r[0] for r in sessions]}


def _tags(text: str | None) -> list[str]:
    try:
        value = json.loads(text or "[]")
    except ValueError:
        return []
    return [str(v) for v in value] if isinstance(value, list) else []


def artifact_json(artifact: Artifact | Mapping[str, Any]) -> dict[str, Any]:
    """A JSON-safe dict of an artifact (its PNG, if any, left out)."""
    row = asdict(artifact) if isinstance(artifact, Artifact) else dict(artifact)
    image = row.pop("image", None)
    row.setdefault("has_image", image is not None)
    return row
