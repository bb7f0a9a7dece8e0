"""Windlass ``triggers:`` on Airflow: the first enabled cron trigger schedules the rendered DAG (in
its timezone) and its ``inputs`` become the DAG's params, i.e. the cascade input; ``airflow.schedule``
wins when both are set. Other trigger kinds are accepted and do not schedule anything."""

from __future__ import annotations

from pathlib import Path

from airflow_llm_provider.cascade_dags import CascadeDagConfig, build_cascade_dag


def _write(tmp_path: Path, triggers: str, airflow: str = "") -> Path:
    path = tmp_path / "scheduled.yaml"
    path.write_text(
        "cascade_id: scheduled\n"
        f"{airflow}"
        "triggers:\n"
        f"{triggers}"
        "phases:\n  - name: a\n    instructions: 'Summarise {{ input.region }}'\n"
    )
    return path


def _expression(timetable) -> str:
    """The cron expression (Airflow 3's SDK timetable vs Airflow 2's)."""
    return getattr(timetable, "expression", None) or timetable._expression


def _timezone(timetable) -> str:
    zone = getattr(timetable, "timezone", None) or timetable._timezone
    return str(getattr(zone, "name", zone))


def _dag(path: Path, tmp_path: Path):
    return build_cascade_dag(path, CascadeDagConfig(cache=f"dir:{tmp_path / 'cache'}"))


def test_a_cron_trigger_schedules_the_dag_in_its_timezone_with_its_inputs(tmp_path):
    path = _write(
        tmp_path,
        "  - {name: disabled, type: cron, schedule: '0 1 * * *', enabled: false}\n"
        "  - {name: hook, type: webhook}\n"
        "  - name: morning\n    type: cron\n    schedule: '0 6 * * 1-5'\n    timezone: Europe/Paris\n"
        "    inputs: {region: emea}\n",
    )
    dag = _dag(path, tmp_path)
    timetable = dag.timetable
    assert type(timetable).__name__ == "CronTriggerTimetable"
    assert _expression(timetable) == "0 6 * * 1-5"
    assert _timezone(timetable) == "Europe/Paris"
    assert dag.params["region"] == "emea"


def test_a_utc_cron_trigger_is_a_plain_cron_schedule_and_airflow_schedule_wins(tmp_path):
    utc = _dag(_write(tmp_path, "  - {name: nightly, type: cron, schedule: '30 2 * * *'}\n"), tmp_path)
    assert _expression(utc.timetable) == "30 2 * * *"
    both = _write(
        tmp_path,
        "  - {name: nightly, type: cron, schedule: '30 2 * * *'}\n",
        airflow="airflow:\n  schedule: '@hourly'\n",
    )
    assert _expression(_dag(both, tmp_path).timetable) in ("@hourly", "0 * * * *")


def test_only_non_cron_triggers_leave_the_dag_unscheduled(tmp_path):
    path = _write(tmp_path, "  - {name: hook, type: webhook, auth: none}\n  - {name: m, type: manual}\n")
    dag = _dag(path, tmp_path)
    assert type(dag.timetable).__name__ == "NullTimetable"


def test_what_needs_the_whole_run_renders_as_one_task(tmp_path):
    from airflow_llm_provider.cascade_dags import plan_cascade
    from airflow_llm_provider.cascades import load_cascade

    phases = [{"name": "a", "instructions": "hi"}, {"name": "b", "instructions": "{{ outputs.a }}"}]
    split = plan_cascade(load_cascade({"cascade_id": "x", "phases": phases}))
    assert [t.task_id for t in split.tasks] == ["a", "b"]
    cases = {
        "cascade-level soundings": {"soundings": {"factor": 2}, "phases": phases},
        "output_extraction": {
            "phases": [
                {"name": "a", "instructions": "hi", "output_extraction": {"pattern": "x", "store_as": "k"}},
                phases[1],
            ]
        },
    }
    for reason, body in cases.items():
        plan = plan_cascade(load_cascade({"cascade_id": "x", **body}))
        assert [t.task_id for t in plan.tasks] == ["cascade"], reason
        assert reason in plan.note
    # Reading the run's state no longer needs one task: the state travels in XCom.
    reads_state = [phases[0], {"name": "b", "instructions": "{{ state.validated_output }}"}]
    plan = plan_cascade(load_cascade({"cascade_id": "x", "phases": reads_state}))
    assert [t.task_id for t in plan.tasks] == ["a", "b"]
    assert plan.tasks[1].pulls == {"a": "a"}
