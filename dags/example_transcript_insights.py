"""
### Transcript insights: a daily batch of LLM cascades

Every day:

1. **select_transcripts** reads the calls whose `started_at` falls in the run's data interval
   (from `data/transcripts.jsonl`: synthetic sample calls for 1-10 January 2026).
2. **insights** runs `cascades/transcript_insights.yaml` once per call, as mapped tasks: structured
   insights, then a deal score.
3. **quality_check** fails the run if any cascade failed or returned incomplete insights.
4. **daily_report** writes `reports/transcript_insights/<date>.json` under `$ALP_REPORTS_DIR`
   (default `$AIRFLOW_HOME/reports`).

**Safe to backfill and re-run.** A run reads only its own interval and overwrites only its own
report. A task retry resumes from the phase cache, so finished phases are not paid twice.

Try a backfill over the sample days: `airflow backfill create --dag-id example_transcript_insights
--from-date 2026-01-01 --to-date 2026-01-03`. On Airflow 2, `airflow dags backfill` deadlocks on
dynamically mapped tasks (apache/airflow#33994); create the runs for the scheduler instead, e.g.
`airflow dags trigger -e 2026-01-02 example_transcript_insights` (a run at D covers the day before D).

**No LLM configured?** pydantic-ai's offline *test model* answers with synthetic data, and the task
log says so. Set `AIRFLOW_CONN_PYDANTICAI_DEFAULT` to use a real model.
"""

from __future__ import annotations

import json
import os
from datetime import datetime, timedelta
from pathlib import Path

import pendulum
from airflow.providers.common.compat.sdk import DAG, AirflowException, task

from airflow_llm_provider.operators.cascade import CascadeOperator

TRANSCRIPTS = Path(__file__).parent / "data" / "transcripts.jsonl"


def _interval(context) -> tuple[datetime, datetime]:
    """The run's data interval; a manual run (empty interval) covers its logical date's day, and a
    run without a logical date (Airflow 3 REST trigger) covers the day before it was triggered."""
    start, end = context.get("data_interval_start"), context.get("data_interval_end")
    if start is None:
        run_after = context["dag_run"].run_after
        start = pendulum.instance(run_after).start_of("day") - timedelta(days=1)
        end = start + timedelta(days=1)
    elif end is None or end <= start:
        start = pendulum.instance(start).start_of("day")
        end = start + timedelta(days=1)
    return start, end


def _reports_dir() -> Path:
    home = os.environ.get("AIRFLOW_HOME", str(Path.home() / "airflow"))
    return Path(os.environ.get("ALP_REPORTS_DIR", Path(home) / "reports")) / "transcript_insights"


with DAG(
    dag_id="example_transcript_insights",
    schedule="@daily",
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=3,
    tags=["llm-provider", "example", "cascade"],
    doc_md=__doc__,
    default_args={"retries": 2, "retry_delay": timedelta(seconds=15)},
) as dag:

    @task
    def select_transcripts(**context) -> list[dict]:
        start, end = _interval(context)
        calls = []
        for line in TRANSCRIPTS.read_text().splitlines():
            call = json.loads(line)
            if start <= datetime.fromisoformat(call["started_at"]) < end:
                calls.append({key: call[key] for key in ("id", "customer", "transcript")})
        print(f"{len(calls)} transcripts between {start} and {end}")
        return calls

    selected = select_transcripts()
    insights = CascadeOperator.partial(
        task_id="insights",
        cascade="cascades/transcript_insights.yaml",
        max_active_tis_per_dag=4,
    ).expand(inputs=selected)

    @task
    def quality_check(calls: list[dict], results: list[dict]) -> list[dict]:
        rows, problems = [], []
        for call, result in zip(calls, results, strict=True):
            outputs = result.get("outputs", {})
            extract, score = outputs.get("extract") or {}, outputs.get("score") or {}
            if result.get("status") != "success" or not extract.get("next_step") or "score" not in score:
                problems.append(f"{call['id']}: {result.get('error') or 'incomplete insights'}")
                continue
            rows.append(
                {
                    "id": call["id"],
                    "customer": call["customer"],
                    "topic": extract["topic"],
                    "sentiment": extract["sentiment"],
                    "next_step": extract["next_step"],
                    "score": score["score"],
                    "reason": score["reason"],
                    "cost_usd": result["usage"]["cost_usd"],
                    "tokens": result["usage"]["input_tokens"] + result["usage"]["output_tokens"],
                    "synthetic": result["usage"].get("synthetic", False),
                }
            )
        if problems:
            raise AirflowException("quality check failed:\n" + "\n".join(problems))
        return rows

    @task
    def daily_report(rows: list[dict], **context) -> str:
        start, _ = _interval(context)
        target = _reports_dir() / f"{start.date().isoformat()}.json"
        target.parent.mkdir(parents=True, exist_ok=True)
        report = {
            "date": start.date().isoformat(),
            "calls": len(rows),
            "average_score": round(sum(r["score"] for r in rows) / len(rows), 1) if rows else None,
            "cost_usd": round(sum(r["cost_usd"] for r in rows), 6),
            "synthetic": any(r["synthetic"] for r in rows),
            "rows": rows,
        }
        partial = target.with_suffix(".json.tmp")
        partial.write_text(json.dumps(report, indent=2))
        partial.replace(target)  # atomic: a re-run replaces the report, never half-writes it
        return str(target)

    daily_report(quality_check(selected, insights.output))
