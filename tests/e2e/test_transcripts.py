"""The transcript-insights batch under a real scheduler: a REST-triggered run and a 3-day backfill,
with the LLM connection created through the REST API (as in the UI) and pointing at the scripted
OpenAI-protocol server, which the Airflow workers reach over real HTTP."""

from __future__ import annotations

import json

import pendulum
import pytest

pytestmark = pytest.mark.e2e

DAG_ID = "example_transcript_insights"


def _respond(request):
    from airflow_llm_provider.testing.openai_server import structured

    if "You analyse B2B sales calls" in request.text_of("system"):
        return structured(
            {
                "topic": "renewal",
                "concerns": ["discount"],
                "next_step": "send an offer",
                "sentiment": "neutral",
            }
        )
    return structured({"score": 61, "reason": "interested, price-sensitive"})


@pytest.fixture
def llm_connection(airflow_server, llm_server):
    llm_server.responder = _respond
    airflow_server.create_connection("pydanticai_default", llm_server.connection(model="gpt-4o-mini"))
    try:
        yield llm_server
    finally:
        airflow_server.delete_connection("pydanticai_default")


def _report(airflow_server, day: str) -> dict:
    return json.loads((airflow_server.home / "reports" / "transcript_insights" / f"{day}.json").read_text())


def test_triggered_run_writes_the_daily_report(airflow_server, llm_connection):
    airflow_server.wait_for_dag(DAG_ID)
    airflow_server.unpause(DAG_ID)
    run_id = airflow_server.trigger(DAG_ID, logical_date="2026-01-06T00:00:00Z")
    run = airflow_server.wait_for_run(DAG_ID, run_id, timeout=300)
    assert run["state"] == "success", airflow_server.log_tail("scheduler")

    day = "2026-01-06" if airflow_server.airflow3 else "2026-01-05"  # manual-run data intervals
    report = _report(airflow_server, day)
    assert report["calls"] == 3
    assert report["average_score"] == 61
    assert report["synthetic"] is False
    mapped = [ti for ti in airflow_server.task_instances(DAG_ID, run_id) if ti["task_id"] == "insights"]
    assert sorted(ti["map_index"] for ti in mapped) == [0, 1, 2]
    assert len(llm_connection.requests) == 6


def test_three_day_backfill_is_safe_to_rerun(airflow_server, llm_connection):
    airflow_server.wait_for_dag(DAG_ID)
    airflow_server.unpause(DAG_ID)
    days = ["2026-01-07", "2026-01-08", "2026-01-09"]
    if airflow_server.airflow3:
        airflow_server.cli(
            "backfill", "create", "--dag-id", DAG_ID, "--from-date", days[0], "--to-date", days[-1]
        )
        logical_days = days
    else:
        # Airflow 2's BackfillJob deadlocks on dynamically mapped tasks (apache/airflow#33994, never
        # fixed in 2.x). The scheduler maps fine, so create the runs for it: a run at D covers [D-1, D).
        logical_days = [(pendulum.parse(day) + pendulum.duration(days=1)).to_date_string() for day in days]
        for logical_day in logical_days:
            airflow_server.cli("dags", "trigger", "--exec-date", logical_day, DAG_ID)
    runs = [r for r in airflow_server.dag_runs(DAG_ID) if r["logical_date"][:10] in logical_days]
    assert len(runs) == 3
    for run in runs:
        assert airflow_server.wait_for_run(DAG_ID, run["dag_run_id"], timeout=300)["state"] == "success"
    for day in days:
        report = _report(airflow_server, day)
        assert report["date"] == day
        assert [row["id"] for row in report["rows"]] == [f"call-{day}-{n}" for n in (1, 2, 3)]
    assert len(llm_connection.requests) == 18  # 3 days x 3 calls x 2 phases
