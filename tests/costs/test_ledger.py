"""The cost ledger on a real PostgreSQL database and on a SQLite file: same behaviour."""

from __future__ import annotations

import datetime as dt
import threading

import pytest

from airflow_llm_provider.costs.ledger import (
    LedgerEntry,
    LedgerUnavailable,
    PostgresLedger,
    Scope,
    SQLiteLedger,
    open_ledger,
)

DAY1 = dt.datetime(2026, 3, 1, 10, tzinfo=dt.UTC)
DAY2 = dt.datetime(2026, 3, 2, 23, 30, tzinfo=dt.UTC)


@pytest.fixture(params=["postgres", "sqlite"])
def ledger(request, tmp_path):
    if request.param == "sqlite":
        return SQLiteLedger(tmp_path / "ledger.db")
    database = request.getfixturevalue("postgres")
    return PostgresLedger(database.uri)


def entry(**overrides) -> LedgerEntry:
    values = dict(
        dag_id="daily",
        run_id="r1",
        task_id="t",
        map_index=-1,
        try_number=1,
        cascade_id="c",
        phase="p",
        model="openai-chat:gpt-4o-mini",
        input_tokens=100,
        output_tokens=20,
        cost_usd=0.01,
        recorded_at=DAY1,
    )
    values.update(overrides)
    return LedgerEntry(**values)


def test_spent_sums_by_scope(ledger):
    ledger.record(
        [
            entry(),
            entry(run_id="r2", cost_usd=0.02, tags=("team-a", "nightly")),
            entry(dag_id="other", cost_usd=0.5, tags=("team-b",)),
            entry(recorded_at=DAY2, run_id="r3", cost_usd=0.04, tags=("team-a",)),
            entry(cache_hit=True, requests=0, input_tokens=0, output_tokens=0, cost_usd=0.0),
        ]
    )
    assert ledger.spent(Scope(dag_id="daily", run_id="r1")).cost_usd == pytest.approx(0.01)
    daily = ledger.spent(Scope(dag_id="daily", day="2026-03-01"))
    assert (round(daily.cost_usd, 6), daily.tokens, daily.requests) == (0.03, 240, 2)
    assert ledger.spent(Scope(tag="team-a")).cost_usd == pytest.approx(0.06)
    assert ledger.spent(Scope(tag="team")).cost_usd == 0  # a tag matches whole, not by prefix
    assert ledger.spent(Scope(tag="team-a", day="2026-03-02")).cost_usd == pytest.approx(0.04)
    assert ledger.spent(Scope(dag_id="nothing")).cost_usd == 0


def test_a_tag_is_matched_literally_not_as_a_like_pattern(ledger):
    """``_`` and ``%`` are LIKE wildcards: unescaped, team_a's budget would also count team-a."""
    tags = ["team_a", "team-a", "teamXa", "100%", "1000", "a!b", "a!!b", "x_%_y"]
    ledger.record([entry(run_id=tag, cost_usd=float(2**i), tags=(tag,)) for i, tag in enumerate(tags)])
    for i, tag in enumerate(tags):
        assert ledger.spent(Scope(tag=tag)).cost_usd == float(2**i), tag
        assert [row["run_id"] for row in ledger.entries(Scope(tag=tag))] == [tag]
    assert ledger.spent(Scope(tag="%")).cost_usd == 0
    assert ledger.spent(Scope(tag="_")).cost_usd == 0


def test_grouped_for_the_cost_page(ledger):
    ledger.record(
        [
            entry(),
            entry(model="anthropic:claude-haiku", cost_usd=0.2),
            entry(recorded_at=DAY2, cost_usd=0.03),
            entry(cache_hit=True, requests=0, input_tokens=0, output_tokens=0, cost_usd=0.0),
        ]
    )
    by_day = ledger.grouped(["day", "dag_id"])
    assert [(r["day"], r["cost_usd"], r["calls"], r["cache_hits"]) for r in by_day] == [
        ("2026-03-01", 0.21, 3, 1),
        ("2026-03-02", 0.03, 1, 0),
    ]
    top = ledger.grouped(["model"], order_by_cost=True, limit=1)
    assert top == [
        {
            "model": "anthropic:claude-haiku",
            "cost_usd": 0.2,
            "input_tokens": 100,
            "output_tokens": 20,
            "requests": 1,
            "cache_hits": 0,
            "calls": 1,
        }
    ]
    assert [r["day"] for r in ledger.grouped(["day"], since="2026-03-02")] == ["2026-03-02"]
    with pytest.raises(ValueError, match="cannot group the ledger by"):
        ledger.grouped(["password"])


def test_concurrent_writers_lose_nothing(ledger):
    def write(worker: int) -> None:
        for i in range(25):
            ledger.record(entry(task_id=f"w{worker}", map_index=i, cost_usd=0.001))

    threads = [threading.Thread(target=write, args=(w,)) for w in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    spend = ledger.spent(Scope(dag_id="daily"))
    assert spend.requests == 100
    assert spend.cost_usd == pytest.approx(0.1)


def test_unreachable_postgres_names_the_database_not_the_password():
    ledger = PostgresLedger("postgresql://u:hunter2@127.0.0.1:1/costs", connect_timeout=2)
    with pytest.raises(LedgerUnavailable, match=r"127.0.0.1:1/costs") as info:
        ledger.spent(Scope())
    assert "hunter2" not in str(info.value)


def test_open_ledger_forms(tmp_path):
    assert isinstance(open_ledger(f"sqlite:///{tmp_path}/a.db"), SQLiteLedger)
    assert isinstance(open_ledger(str(tmp_path / "b.db")), SQLiteLedger)
    assert isinstance(open_ledger("postgresql://u@h/db"), PostgresLedger)
    with pytest.raises(ValueError, match="unrecognised ledger setting mysql://"):
        open_ledger("mysql://u:secret@h/db")
