"""Table-level lineage of SQL text: which tables a script reads and which it writes.

``parse_sql_lineage(sql, dialect="postgres", default_schema="public")`` parses the script with
sqlglot (imported inside the function, so importing our operators stays cheap) and walks the
syntax tree of each statement:

- outputs: the targets of INSERT, UPDATE, DELETE, MERGE (also inside data-modifying CTEs),
  CREATE TABLE/VIEW (with or without AS), SELECT ... INTO, COPY ... FROM, DROP and TRUNCATE;
- inputs: every other table reference of INSERT/UPDATE/DELETE/MERGE/CTAS/SELECT/COPY ... TO,
  excluding CTE names (resolved by scope: nested WITHs, RECURSIVE, and a CTE that shadows a real
  table of the same name inside its own body), aliases, table functions (``generate_series``,
  ``unnest``, ``LATERAL``/``TABLE(...)`` functions, ``ROWS FROM``) and tables named only for their
  structure (``REFERENCES``, ``LIKE``);
- names are ``[database.]schema.table``: unquoted identifiers folded the way the dialect resolves
  them (Postgres: lower case, Snowflake/Oracle: upper case), quoted ones kept as written (in the
  dialects whose engines treat quoted names case-sensitively, e.g. Postgres and Snowflake), and a
  bare table name gets ``default_schema`` (used verbatim: it names a schema as the database
  reports it, e.g. Postgres ``CURRENT_SCHEMA``);
- a script is parsed whole; when that fails it is split at top-level semicolons (sqlglot's own
  tokenizer, sqlparse if even tokenizing fails) and each statement parsed on its own, so one bad
  statement costs only its own lineage. Unparseable statements are logged as a WARNING naming the
  statement and listed in ``errors``; nothing here ever raises into a task.

Why sqlglot and not openlineage-sql (what the OpenLineage provider uses): see docs/lineage.md and
``bench/sql_lineage.py``.
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sqlglot import exp
    from sqlglot.dialects.dialect import Dialect

log = logging.getLogger(__name__)

# Names other tools use for a dialect -> sqlglot's name ("" is sqlglot's generic dialect).
DIALECT_ALIASES = {
    "postgresql": "postgres",
    "mssql": "tsql",
    "sqlserver": "tsql",
    "generic": "",
    "ansi": "",
    "sql": "",
}

# Statements sqlglot could only keep as an opaque Command whose lineage we would be losing
# (others, like VACUUM or ANALYZE, have none).
_DATA_COMMAND = re.compile(
    r"\s*(SELECT|WITH|INSERT|UPDATE|DELETE|MERGE|COPY|UPSERT|CREATE\s+(OR\s+REPLACE\s+)?"
    r"((GLOBAL|LOCAL|TEMP|TEMPORARY|UNLOGGED|TRANSIENT|MATERIALIZED|DYNAMIC)\s+)*(TABLE|VIEW))\b",
    re.IGNORECASE,
)
_REFRESH = re.compile(
    r"\s*REFRESH\s+MATERIALIZED\s+VIEW\s+(?:CONCURRENTLY\s+)?((?:\"[^\"]*(?:\"\"[^\"]*)*\"|[\w$]+)"
    r"(?:\s*\.\s*(?:\"[^\"]*(?:\"\"[^\"]*)*\"|[\w$]+))*)",
    re.IGNORECASE,
)
_CREATE_KINDS = frozenset({"TABLE", "VIEW", "MATERIALIZED VIEW", "DYNAMIC TABLE"})
_DROP_KINDS = frozenset({"TABLE", "VIEW", "MATERIALIZED VIEW"})
_SNIPPET = 160


@dataclass(frozen=True)
class SqlLineage:
    """Tables a SQL script reads (``inputs``) and writes (``outputs``), each ``[database.]schema.table``.

    Lists are deduplicated and in order of first appearance. ``errors`` holds the statements
    (shortened) that could not be parsed and therefore contribute no lineage.
    """

    inputs: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def parse_sql_lineage(
    sql: str | Sequence[str],
    dialect: str | None = "postgres",
    default_schema: str | None = "public",
) -> SqlLineage:
    """Input and output tables of ``sql`` (one script, or a list of scripts run in order).

    :param dialect: a sqlglot dialect name (``postgres``, ``snowflake``, ``bigquery``, ``mysql``,
        ``redshift``, ``tsql``, ``duckdb``, ...; ``postgresql``/``mssql`` accepted). ``None`` or an
        unknown name uses sqlglot's generic dialect (unknown: with a WARNING).
    :param default_schema: the schema of a table named without one; ``None`` leaves such names bare.
    """
    try:
        return _lineage(sql, dialect, default_schema)
    except Exception:  # never fail a task because of lineage
        log.warning("SQL lineage: extraction failed, reporting no lineage", exc_info=True)
        return SqlLineage()


def _lineage(sql: str | Sequence[str], dialect: str | None, default_schema: str | None) -> SqlLineage:
    parser = _dialect(dialect)
    scripts = [sql] if isinstance(sql, str) else list(sql)
    inputs: dict[str, None] = {}
    outputs: dict[str, None] = {}
    errors: list[str] = []
    for script in scripts:
        for statement in _statements(script, parser, errors):
            _collect(statement, parser, default_schema, inputs, outputs)
    return SqlLineage(inputs=list(inputs), outputs=list(outputs), errors=errors)


@functools.lru_cache(maxsize=32)
def _dialect(name: str | None) -> Dialect:
    from sqlglot.dialects.dialect import Dialect

    key = (name or "").strip().lower()
    key = DIALECT_ALIASES.get(key, key)
    try:
        return Dialect.get_or_raise(key or None)
    except ValueError:
        log.warning("SQL lineage: unknown SQL dialect %r, using the generic dialect", name)
        return Dialect.get_or_raise(None)


def _snippet(statement: str) -> str:
    text = " ".join(statement.split())
    return text if len(text) <= _SNIPPET else text[: _SNIPPET - 1] + "…"


def _statements(script: str, parser: Dialect, errors: list[str]) -> list[exp.Expr]:
    """The parsed statements of ``script``; unparseable statements are logged and skipped."""
    try:
        return [s for s in parser.parse(script) if s is not None]
    except Exception:
        pass  # one bad statement: split and parse them one by one
    parsed: list[exp.Expr] = []
    for piece in _split(script, parser):
        try:
            parsed.extend(s for s in parser.parse(piece) if s is not None)
        except Exception as error:
            reason = str(error).splitlines()[0] if str(error) else type(error).__name__
            snippet = _snippet(piece)
            log.warning("SQL lineage: cannot parse statement, no lineage for it: %s (%s)", snippet, reason)
            errors.append(snippet)
    return parsed


def _split(script: str, parser: Dialect) -> list[str]:
    """Statements of ``script`` split at top-level semicolons (strings, comments, $$ bodies kept)."""
    from sqlglot.tokens import TokenType

    try:
        tokens = parser.tokenize(script)
    except Exception:
        import sqlparse

        return [s for s in (p.strip() for p in sqlparse.split(script)) if s.strip(" ;\n\t")]
    pieces: list[str] = []
    start = 0
    for token in tokens:
        if token.token_type == TokenType.SEMICOLON:
            pieces.append(script[start : token.start])
            start = token.end + 1
    pieces.append(script[start:])
    return [p.strip() for p in pieces if p.strip()]


def _collect(
    statement: exp.Expr,
    parser: Dialect,
    default_schema: str | None,
    inputs: dict[str, None],
    outputs: dict[str, None],
) -> None:
    from sqlglot import exp

    targets: list[exp.Table | None] = []
    read: exp.Expr | None = statement
    if isinstance(statement, exp.Command):
        text = statement.sql()
        refreshed = _REFRESH.match(text)
        if refreshed:  # REFRESH MATERIALIZED VIEW [CONCURRENTLY] v [WITH [NO] DATA]: rewrites v
            view = _table_of(exp.to_table(refreshed.group(1), dialect=parser))
            name = _qualified(view, parser, default_schema) if view is not None else None
            if name:
                outputs.setdefault(name, None)
        elif _DATA_COMMAND.match(text):
            log.warning("SQL lineage: statement not understood, no lineage for it: %s", _snippet(text))
        return
    if isinstance(statement, exp.Create):
        kind = str(statement.args.get("kind") or "").upper()
        if kind not in _CREATE_KINDS:
            return  # indexes, schemas, functions, sequences...: no data lineage
        targets.append(_table_of(statement.this))
        read = statement.expression if isinstance(statement.expression, exp.Query) else None
    elif isinstance(statement, exp.Drop):
        if str(statement.args.get("kind") or "").upper() in _DROP_KINDS:
            targets.extend(statement.find_all(exp.Table))
        read = None
    elif isinstance(statement, exp.TruncateTable):
        targets.extend(statement.find_all(exp.Table))
        read = None
    elif isinstance(statement, exp.Copy):
        if statement.args.get("kind"):  # COPY t FROM ...: writes t; COPY t|(query) TO ...: reads
            targets.append(_table_of(statement.this))
    elif isinstance(statement, exp.Query):
        into = statement.args.get("into")  # SELECT ... INTO new_table
        if into is not None:
            targets.append(_table_of(into.this))
    elif not isinstance(statement, (exp.Insert, exp.Update, exp.Delete, exp.Merge)):
        return  # SET, BEGIN, GRANT, ALTER, ANALYZE...: no data lineage

    if read is not None:
        # DML targets, including those of data-modifying CTEs (WITH d AS (DELETE ... RETURNING *) ...).
        for node in read.find_all(exp.Insert, exp.Update, exp.Delete, exp.Merge):
            targets.append(_table_of(node.this))

    target_ids = {id(t) for t in targets if t is not None}
    for table in targets:
        name = _qualified(table, parser, default_schema) if table is not None else None
        if name:
            outputs.setdefault(name, None)
    if read is None:
        return
    for table in read.find_all(exp.Table, bfs=False):
        if id(table) in target_ids or not isinstance(table.this, exp.Identifier):
            continue  # a write target, or a table function (generate_series, unnest, ...)
        if table.find_ancestor(exp.Reference, exp.LikeProperty) is not None:
            continue
        if _is_cte(table, parser):
            continue
        name = _qualified(table, parser, default_schema)
        if name:
            inputs.setdefault(name, None)


def _table_of(node: Any) -> exp.Table | None:
    from sqlglot import exp

    if isinstance(node, exp.Schema):  # INSERT INTO t (a, b) / CREATE TABLE t (a int)
        node = node.this
    return node if isinstance(node, exp.Table) and isinstance(node.this, exp.Identifier) else None


def _fold(identifier: exp.Expr, parser: Dialect) -> str:
    """An identifier's name as the dialect resolves it (folds the node in place: our own tree)."""
    from sqlglot import exp

    if isinstance(identifier, exp.Identifier):
        return parser.normalize_identifier(identifier).this
    return identifier.name


def _qualified(table: exp.Table, parser: Dialect, default_schema: str | None) -> str | None:
    parts = [_fold(part, parser) for part in table.parts]
    if not parts or not all(parts):
        return None
    if len(parts) == 1 and default_schema:
        parts.insert(0, default_schema)
    return ".".join(parts)


def _is_cte(table: exp.Table, parser: Dialect) -> bool:
    """Whether an unqualified table name refers to a CTE visible at that point of the tree."""
    from sqlglot import exp

    if table.args.get("db") or table.args.get("catalog"):
        return False
    name = _fold(table.this, parser)
    child: exp.Expr = table
    node = table.parent
    while node is not None:
        if isinstance(node, exp.With):
            # Inside the body of one of this WITH's CTEs: the earlier CTEs are visible, and with
            # RECURSIVE all of them (itself included). Without RECURSIVE a CTE's own name inside
            # its body is the real table it shadows.
            ctes = node.expressions
            if not node.recursive:
                index = next((i for i, cte in enumerate(ctes) if cte is child), len(ctes))
                ctes = ctes[:index]
            if _names_cte(ctes, name, parser):
                return True
        else:
            with_ = node.args.get("with_")
            if with_ is not None and with_ is not child and _names_cte(with_.expressions, name, parser):
                return True
        child, node = node, node.parent
    return False


def _names_cte(ctes: Iterable[exp.Expr], name: str, parser: Dialect) -> bool:
    from sqlglot import exp

    for cte in ctes:
        alias = cte.args.get("alias")
        identifier = alias.this if isinstance(alias, exp.TableAlias) else None
        if isinstance(identifier, exp.Identifier) and _fold(identifier, parser) == name:
            return True
    return False
