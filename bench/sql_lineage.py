"""(e) SQL table lineage: precision, recall, F1 and throughput of ``parse_sql_lineage`` against
openlineage-sql called the way the OpenLineage provider calls it, over bench/sql_lineage_corpus.yaml.

The anchor is exactly the provider's path for a SQL operator (``airflow.providers.openlineage.
sqlparser``): ``SQLParser(dialect, default_schema).parse(SQLParser.split_sql_string(sql))``
(sqlparse strips comments and splits, then ``openlineage_sql.parse``), then the provider's own
``from_table_meta`` to turn the result into dataset names (upper-casing for Snowflake, whose
``DatabaseInfo`` sets ``is_uppercase_names``). The default schema is passed as the Postgres hook
does (``CURRENT_SCHEMA``). Also measured, not part of the goal: openlineage-sql with the
corrections we could apply from outside (no default schema passed, which avoids the CTE bug;
case folding; known table functions dropped), and the bare Rust ``parse`` without the provider's
sqlparse split, to show where the anchor's time goes.

Scoring: every (statement, direction, table) triple counts; precision = correct / reported,
recall = correct / expected, micro-averaged over the corpus. Throughput: statements per second
over whole corpus passes (a statement is one sqlparse-split statement of an entry), each side run
``--passes`` times per repetition, interleaved; the ratio is ours / anchor (goal >= 0.5).
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from _common import arguments, finish, machine, summary

from airflow_llm_provider.lineage.sql import parse_sql_lineage

CORPUS = Path(__file__).with_name("sql_lineage_corpus.yaml")
GOAL_F1 = 0.99
GOAL_THROUGHPUT = 0.5
PASSES = 3
UPPERCASE_DIALECTS = {"snowflake"}  # DatabaseInfo(is_uppercase_names=True) in the provider's hooks

Parser = Callable[[str, str, str | None], tuple[list[str], list[str]]]


def load_corpus() -> list[dict[str, Any]]:
    data = yaml.safe_load(CORPUS.read_text())
    defaults = data["defaults"]
    entries = []
    for entry in data["statements"]:
        entries.append(
            {
                **entry,
                "dialect": entry.get("dialect", defaults["dialect"]),
                "default_schema": entry.get("default_schema", defaults["default_schema"]),
            }
        )
    return entries


def ours(sql: str, dialect: str, default_schema: str | None) -> tuple[list[str], list[str]]:
    result = parse_sql_lineage(sql, dialect=dialect, default_schema=default_schema)
    return result.inputs, result.outputs


def anchor(sql: str, dialect: str, default_schema: str | None) -> tuple[list[str], list[str]]:
    from airflow.providers.openlineage.sqlparser import SQLParser, from_table_meta

    meta = SQLParser(dialect=dialect, default_schema=default_schema).parse(SQLParser.split_sql_string(sql))
    if meta is None:
        return [], []
    upper = dialect in UPPERCASE_DIALECTS
    return (
        [from_table_meta(t, None, "bench", upper).name for t in meta.in_tables],
        [from_table_meta(t, None, "bench", upper).name for t in meta.out_tables],
    )


def rust_only(sql: str, dialect: str, default_schema: str | None) -> tuple[list[str], list[str]]:
    """The bare Rust parser on the whole text: no sqlparse split, no naming (throughput only)."""
    from openlineage.common.sql import parse  # the wrapper: None instead of a Rust panic

    meta = parse([sql], dialect=dialect, default_schema=default_schema)
    if meta is None:
        return [], []
    return [t.qualified_name for t in meta.in_tables], [t.qualified_name for t in meta.out_tables]


# Table functions openlineage-sql reports as tables (a fixed list is all a caller can do).
TABLE_FUNCTIONS = {
    "generate_series",
    "unnest",
    "json_each",
    "jsonb_each",
    "json_each_text",
    "jsonb_each_text",
    "json_to_recordset",
    "jsonb_to_recordset",
    "json_array_elements",
    "jsonb_array_elements",
    "regexp_split_to_table",
    "flatten",
}


def corrected(sql: str, dialect: str, default_schema: str | None) -> tuple[list[str], list[str]]:
    """openlineage-sql plus the corrections a caller can make around it without a parser."""
    from airflow.providers.openlineage.sqlparser import SQLParser

    statements = SQLParser.split_sql_string(sql)
    # No default schema: the CTE inputs survive; we qualify bare names ourselves.
    meta = SQLParser(dialect=dialect, default_schema=None).parse(statements)
    if meta is None:
        return [], []
    text = "\n".join(statements)
    quote = "`" if dialect in {"mysql", "bigquery"} else '"'

    def fold(part: str) -> str:
        if f"{quote}{part}{quote}" in text or dialect == "mysql":
            return part  # written quoted (the result lost the quotes; the text still has them)
        return part.upper() if dialect in UPPERCASE_DIALECTS else part.lower()

    def name(table: Any) -> str | None:
        if not table.schema and table.name.lower() in TABLE_FUNCTIONS:
            return None
        parts = [p for p in (table.database, table.schema) if p] + [table.name]
        parts = [fold(p) for p in parts]
        if len(parts) == 1 and default_schema:
            parts.insert(0, default_schema)
        return ".".join(parts)

    def names(tables: list[Any]) -> list[str]:
        return [n for n in (name(t) for t in tables) if n]

    return names(meta.in_tables), names(meta.out_tables)


def score(parser: Parser, corpus: list[dict[str, Any]]) -> dict[str, Any]:
    tp = reported = expected = 0
    by_class: dict[str, list[int]] = {}
    misses: list[dict[str, Any]] = []
    for entry in corpus:
        inputs, outputs = parser(entry["sql"], entry["dialect"], entry["default_schema"])
        counts = by_class.setdefault(entry["class"], [0, 0, 0])
        wrong = {}
        for direction, got in (("inputs", inputs), ("outputs", outputs)):
            want, have = set(entry[direction]), set(got)
            hit = len(want & have)
            tp += hit
            reported += len(have)
            expected += len(want)
            counts[0] += hit
            counts[1] += len(have)
            counts[2] += len(want)
            if want != have:
                wrong[direction] = {"missing": sorted(want - have), "extra": sorted(have - want)}
        if wrong:
            misses.append({"id": entry["id"], **wrong})
    return {
        **prf(tp, reported, expected),
        "per_class_f1": {name: prf(*c)["f1"] for name, c in sorted(by_class.items())},
        "wrong_entries": len(misses),
        "misses": misses,
    }


def prf(tp: int, reported: int, expected: int) -> dict[str, float]:
    precision = tp / reported if reported else 1.0
    recall = tp / expected if expected else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": round(precision, 4), "recall": round(recall, 4), "f1": round(f1, 4)}


def corpus_pass(parser: Parser, corpus: list[dict[str, Any]]) -> float:
    started = time.perf_counter()
    for entry in corpus:
        parser(entry["sql"], entry["dialect"], entry["default_schema"])
    return time.perf_counter() - started


def count_statements(corpus: list[dict[str, Any]]) -> int:
    from airflow.providers.openlineage.sqlparser import SQLParser

    return sum(len(SQLParser.split_sql_string(entry["sql"])) for entry in corpus)


def main() -> None:
    args = arguments(__doc__.splitlines()[0])
    corpus = load_corpus()
    statements = count_statements(corpus)
    sides: dict[str, Parser] = {
        "ours": ours,
        "anchor": anchor,
        "openlineage_sql_corrected": corrected,
        "openlineage_sql_bare_rust": rust_only,
    }

    # Logging off for every side (the provider's DEBUG line, openlineage-sql's ERROR and
    # sqlglot's and our WARNINGs for statements they cannot read): Airflow's log handler writes
    # to stdout, which carries the JSON result, and log I/O is no part of parsing.
    logging.disable(logging.CRITICAL)
    accuracy = {
        name: score(parser, corpus) for name, parser in sides.items() if name != "openlineage_sql_bare_rust"
    }

    for parser in sides.values():
        corpus_pass(parser, corpus)  # warm-up: imports, dialect objects
    rates: dict[str, list[float]] = {name: [] for name in sides}
    ratios: list[float] = []
    for _ in range(args.repetitions):
        rep: dict[str, list[float]] = {name: [] for name in sides}
        for _ in range(PASSES):
            for name, parser in sides.items():
                rep[name].append(corpus_pass(parser, corpus))
        for name in sides:
            rates[name].append(statements / statistics.median(rep[name]))
        ratios.append(rates["ours"][-1] / rates["anchor"][-1])
    logging.disable(logging.NOTSET)

    ratio = summary(ratios, 3)
    f1 = accuracy["ours"]["f1"]
    finish(
        {
            "benchmark": "sql_lineage",
            "anchor": "openlineage-sql as the OpenLineage provider calls it: "
            "SQLParser(dialect, default_schema).parse(SQLParser.split_sql_string(sql)) + from_table_meta",
            "corpus": {
                "entries": len(corpus),
                "statements": statements,
                "classes": sorted({e["class"] for e in corpus}),
            },
            "accuracy": accuracy,
            "statements_per_s": {name: summary(values, 1) for name, values in rates.items()},
            "throughput_ratio_ours_over_anchor": ratio,
            "repetitions": args.repetitions,
            "passes_per_side_per_repetition": PASSES,
            "goal": f"F1 >= {GOAL_F1} and throughput >= {GOAL_THROUGHPUT}x the anchor",
            "machine": {**machine(), **versions()},
        },
        f1 >= GOAL_F1 and ratio["median"] >= GOAL_THROUGHPUT,
        args.check,
    )


def versions() -> dict[str, str]:
    from importlib.metadata import version

    return {
        name: version(name)
        for name in ("sqlglot", "openlineage-sql", "sqlparse", "apache-airflow-providers-openlineage")
    }


if __name__ == "__main__":
    main()
