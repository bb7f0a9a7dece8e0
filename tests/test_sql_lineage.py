"""``parse_sql_lineage``: the corpus of bench/sql_lineage_corpus.yaml entry by entry, then the
behaviours that matter to a task (folding, default schema, errors, laziness), and the
openlineage-sql defect we exist to fix (CTE + default schema)."""

from __future__ import annotations

import dataclasses
import logging
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from airflow_llm_provider.lineage.sql import SqlLineage, parse_sql_lineage

CORPUS_PATH = Path(__file__).resolve().parent.parent / "bench" / "sql_lineage_corpus.yaml"
CORPUS = yaml.safe_load(CORPUS_PATH.read_text())
DEFAULTS = CORPUS["defaults"]
ENTRIES: list[dict[str, Any]] = CORPUS["statements"]
REQUIRED_CLASSES = {
    "select",
    "insert_select",
    "ctas",
    "update_from",
    "delete_using",
    "merge",
    "cte",
    "quoted",
    "tpch",
    "script",
    "comments",
}


@pytest.fixture
def lineage_log() -> Iterator[list[logging.LogRecord]]:
    """Records of our module's logger, whatever the root logger's configuration (Airflow's)."""
    records: list[logging.LogRecord] = []
    handler = logging.Handler(level=logging.DEBUG)
    handler.emit = records.append  # type: ignore[method-assign]
    logger = logging.getLogger("airflow_llm_provider.lineage.sql")
    logger.addHandler(handler)
    try:
        yield records
    finally:
        logger.removeHandler(handler)


def test_corpus_covers_every_class() -> None:
    classes = {entry["class"] for entry in ENTRIES}
    assert classes >= REQUIRED_CLASSES
    assert len(ENTRIES) >= 60
    assert len({entry["id"] for entry in ENTRIES}) == len(ENTRIES)
    assert sum(entry["id"].startswith("tpch_q") for entry in ENTRIES) == 22
    for entry in ENTRIES:
        assert set(entry) >= {"id", "class", "sql", "inputs", "outputs"}, entry["id"]


@pytest.mark.parametrize("entry", ENTRIES, ids=[entry["id"] for entry in ENTRIES])
def test_corpus_entry(entry: dict[str, Any]) -> None:
    result = parse_sql_lineage(
        entry["sql"],
        dialect=entry.get("dialect", DEFAULTS["dialect"]),
        default_schema=entry.get("default_schema", DEFAULTS["default_schema"]),
    )
    assert sorted(result.inputs) == sorted(entry["inputs"])
    assert sorted(result.outputs) == sorted(entry["outputs"])
    assert result.errors == []
    # Deduplicated.
    assert len(result.inputs) == len(set(result.inputs))
    assert len(result.outputs) == len(set(result.outputs))


CTE_WITH_DEFAULT_SCHEMA = "WITH x AS (SELECT id FROM raw.users) INSERT INTO mart.users SELECT * FROM x"


def test_cte_with_default_schema_keeps_inputs() -> None:
    result = parse_sql_lineage(CTE_WITH_DEFAULT_SCHEMA, dialect="postgres", default_schema="public")
    assert result == SqlLineage(inputs=["raw.users"], outputs=["mart.users"])


def test_openlineage_sql_still_drops_cte_inputs_with_a_default_schema() -> None:
    """The anchor's defect (docs/lineage.md). If this fails, upstream fixed it: update the docs."""
    from openlineage.common.sql import parse

    with_schema = parse([CTE_WITH_DEFAULT_SCHEMA], dialect="postgres", default_schema="public")
    without_schema = parse([CTE_WITH_DEFAULT_SCHEMA], dialect="postgres", default_schema=None)
    assert with_schema is not None and without_schema is not None
    assert [t.qualified_name for t in without_schema.in_tables] == ["raw.users"]
    assert [t.qualified_name for t in with_schema.in_tables] == [], "openlineage-sql fixed the CTE bug"


@pytest.mark.parametrize(
    ("dialect", "default_schema", "expected"),
    [
        ("postgres", "public", ["public.orders", "sales.items", "Sales.Items"]),
        ("snowflake", "PUBLIC", ["PUBLIC.ORDERS", "SALES.ITEMS", "Sales.Items"]),
        ("oracle", "APP", ["APP.ORDERS", "SALES.ITEMS", "Sales.Items"]),
    ],
)
def test_identifiers_fold_as_the_dialect_folds_them(
    dialect: str, default_schema: str, expected: list[str]
) -> None:
    sql = 'SELECT * FROM Orders o JOIN Sales.Items i ON i.o = o.id JOIN "Sales"."Items" q ON q.o = o.id'
    assert parse_sql_lineage(sql, dialect=dialect, default_schema=default_schema).inputs == expected


def test_mysql_names_are_case_sensitive() -> None:
    result = parse_sql_lineage(
        "SELECT * FROM Shop.Orders JOIN `items` USING (id)", dialect="mysql", default_schema="shop"
    )
    assert result.inputs == ["Shop.Orders", "shop.items"]


def test_without_default_schema_names_stay_bare() -> None:
    result = parse_sql_lineage("INSERT INTO t SELECT * FROM s JOIN x.y USING (id)", default_schema=None)
    assert result == SqlLineage(inputs=["s", "x.y"], outputs=["t"])


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT * FROM generate_series(1, 10) AS g(n)",
        "SELECT * FROM unnest(ARRAY[1, 2]) AS u(x)",
        "SELECT * FROM jsonb_array_elements('[1]'::jsonb) AS e",
        "SELECT * FROM json_to_recordset('[]') AS r(a int)",
        "SELECT * FROM ROWS FROM (generate_series(1, 2), unnest(ARRAY[1])) AS r(a, b)",
        "SELECT * FROM myschema.my_set_returning_function(1) AS f",
        "SELECT * FROM (VALUES (1), (2)) AS v(x)",
    ],
)
def test_table_functions_are_never_tables(sql: str) -> None:
    assert parse_sql_lineage(sql).inputs == []


def test_snowflake_lateral_flatten_is_not_a_table() -> None:
    sql = (
        "SELECT f.value FROM raw.events e, LATERAL FLATTEN(input => e.tags) f, TABLE(FLATTEN(input => e.x)) g"
    )
    assert parse_sql_lineage(sql, dialect="snowflake", default_schema="PUBLIC").inputs == ["RAW.EVENTS"]


def test_order_is_first_appearance() -> None:
    sql = "INSERT INTO z SELECT * FROM c JOIN a USING (id) JOIN b USING (id); INSERT INTO y SELECT * FROM a"
    assert parse_sql_lineage(sql, default_schema=None) == SqlLineage(
        inputs=["c", "a", "b"], outputs=["z", "y"]
    )


def test_a_list_of_scripts_is_one_lineage() -> None:
    result = parse_sql_lineage(["INSERT INTO a SELECT * FROM b", "DELETE FROM c USING d WHERE c.i = d.i"])
    assert result == SqlLineage(inputs=["public.b", "public.d"], outputs=["public.a", "public.c"])


def test_unparseable_statement_is_skipped_with_a_warning(lineage_log: list[logging.LogRecord]) -> None:
    sql = "INSERT INTO a SELECT * FROM b; SELECT * FROM {{ params.table }}; DELETE FROM c"
    result = parse_sql_lineage(sql)
    assert result.inputs == ["public.b"]
    assert result.outputs == ["public.a", "public.c"]
    assert result.errors == ["SELECT * FROM {{ params.table }}"]
    warnings = [r.getMessage() for r in lineage_log if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "SELECT * FROM {{ params.table }}" in warnings[0]


def test_unterminated_string_costs_only_its_statement(lineage_log: list[logging.LogRecord]) -> None:
    result = parse_sql_lineage("INSERT INTO x SELECT 'oops FROM y; SELECT * FROM z")
    assert result.inputs == ["public.z"]
    assert result.outputs == []
    assert len(result.errors) == 1
    assert any("oops" in r.getMessage() for r in lineage_log if r.levelno == logging.WARNING)


@pytest.mark.parametrize("sql", ["", "   ", "-- only a comment", ";;", "BEGIN; COMMIT;", "SET x = 1"])
def test_no_lineage_and_no_error(sql: str, lineage_log: list[logging.LogRecord]) -> None:
    assert parse_sql_lineage(sql) == SqlLineage()
    assert [r for r in lineage_log if r.levelno >= logging.WARNING] == []


def test_never_raises_into_a_task(
    monkeypatch: pytest.MonkeyPatch, lineage_log: list[logging.LogRecord]
) -> None:
    from airflow_llm_provider.lineage import sql as module

    def broken(*args: object) -> None:
        raise RuntimeError("parser bug")

    monkeypatch.setattr(module, "_collect", broken)
    assert parse_sql_lineage("SELECT * FROM t") == SqlLineage()
    assert any(r.levelno == logging.WARNING for r in lineage_log)
    assert parse_sql_lineage(12345) == SqlLineage()  # type: ignore[arg-type]


def test_unknown_dialect_falls_back_with_a_warning(lineage_log: list[logging.LogRecord]) -> None:
    result = parse_sql_lineage("SELECT * FROM T", dialect="no-such-dialect-xyz")
    assert result.inputs == ["public.t"]
    assert any("no-such-dialect-xyz" in r.getMessage() for r in lineage_log)


def test_dialect_aliases() -> None:
    # SQL Server resolves names case-insensitively (default collation), brackets or not.
    sql = "SELECT * FROM [dbo].[Orders] JOIN Items ON 1 = 1"
    assert parse_sql_lineage(sql, dialect="mssql", default_schema="dbo").inputs == ["dbo.orders", "dbo.items"]
    assert parse_sql_lineage("SELECT * FROM T", dialect="postgresql").inputs == ["public.t"]


def test_maintenance_commands_are_quiet(lineage_log: list[logging.LogRecord]) -> None:
    # sqlglot keeps statements it does not model as an opaque Command: no lineage and no WARNING
    # for maintenance (a Command that looks like a data statement does get one).
    for sql in (
        "VACUUM FULL t",
        "EXPLAIN SELECT * FROM t",
        "CREATE FUNCTION f() RETURNS int AS $$ SELECT 1 $$ LANGUAGE sql",
    ):
        assert parse_sql_lineage(sql) == SqlLineage()
    assert [r for r in lineage_log if r.levelno >= logging.WARNING] == []


def test_result_is_frozen() -> None:
    result = parse_sql_lineage("SELECT * FROM t")
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.inputs = []  # type: ignore[misc]


def test_importing_the_module_does_not_import_sqlglot() -> None:
    code = (
        "import sys, airflow_llm_provider.lineage.sql; "
        "print(','.join(m for m in ('sqlglot', 'sqlparse', 'openlineage') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
