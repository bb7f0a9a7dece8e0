"""Cascades rendered as DAGs: the task graph, runs under dag.test() on both Airflow lines, import
errors of broken files, ``airflow-llm render`` and the parse-time import cost."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from datetime import timedelta
from pathlib import Path

import pendulum
import pytest

from airflow_llm_provider.cascade_dags import (
    CascadeDagConfig,
    CascadeDagImportError,
    build_cascade_dag,
    load_cascade_dags,
)
from airflow_llm_provider.cli import main
from airflow_llm_provider.testing.openai_server import text
from tests.dag_loading import dag_bag

FIXTURES = Path(__file__).parent / "dag_fixtures"


def split_items(text: str) -> dict:
    return {"items": [part.strip() for part in text.split(";") if part.strip()]}


def classify(ticket: str) -> dict:
    return {"_route": "billing" if "refund" in ticket else "bug"}


def review(draft: str) -> dict:
    return {"status": "ok"}


def _upstream(dag) -> dict[str, set[str]]:
    return {task.task_id: set(task.upstream_task_ids) for task in dag.tasks}


def _config(tmp_path: Path, **kwargs) -> CascadeDagConfig:
    return CascadeDagConfig(llm_conn_id="llm_test", cache=f"dir:{tmp_path / 'cache'}", **kwargs)


# -- the task graph -----------------------------------------------------------------------------


def test_dataflow_cascade_renders_one_task_per_phase_with_mapping(tmp_path):
    dag = build_cascade_dag(FIXTURES / "ok" / "fanout.yaml", _config(tmp_path, tags=["team"]))

    assert dag.dag_id == "cascade_fanout_test"
    assert _upstream(dag) == {
        "facts": set(),
        "questions": set(),
        "split": {"facts"},
        "explain__items": {"split"},
        "explain": {"explain__items"},
        "explain__results": {"explain"},
        "report": {"questions", "explain__results"},
    }
    assert set(dag.tags) == {"team", "demo", "cascade"}
    assert dag.max_active_runs == 2
    assert dag.default_args["owner"] == "cascades"
    assert dag.params["topic"] == "rivers"
    assert dag.task_dict["split"].retries == 2
    explain = dag.task_dict["explain"]
    assert type(explain).__name__ == "MappedOperator"
    assert explain.partial_kwargs["execution_timeout"] == timedelta(minutes=5)
    assert type(dag.task_dict["facts"]).__name__ == "CascadePhaseOperator"


def test_pools_retries_and_timeouts_map_to_task_arguments(tmp_path):
    dag = build_cascade_dag(FIXTURES / "pooled.yaml", _config(tmp_path))
    fetch = dag.task_dict["fetch"]
    assert (fetch.pool, fetch.retries, fetch.execution_timeout) == ("io_pool", 3, timedelta(seconds=90))
    assert dag.task_dict["summarize"].partial_kwargs["pool"] == "llm_pool"
    assert dag.task_dict["title"].upstream_task_ids == {"summarize__results"}


def test_state_machine_renders_a_branch_and_a_tolerant_join(tmp_path):
    dag = build_cascade_dag(FIXTURES / "ok" / "triage.yaml", _config(tmp_path))

    assert dag.dag_id == "cascade_triage"
    assert _upstream(dag) == {
        "classify": set(),
        "classify__route": {"classify"},
        "billing": {"classify__route"},
        "bug": {"classify__route"},
        "reply": {"billing", "bug"},
    }
    assert dag.task_dict["reply"].trigger_rule == "none_failed_min_one_success"
    assert type(dag.task_dict["classify__route"]).__name__ == "CascadeRouteOperator"
    assert dag.start_date.year == 2026


def test_a_cascade_with_a_cycle_is_one_cascade_operator_task(tmp_path):
    dag = build_cascade_dag(FIXTURES / "ok" / "loop.yaml", _config(tmp_path))
    assert list(dag.task_dict) == ["cascade"]
    task = dag.task_dict["cascade"]
    assert type(task).__name__ == "CascadeWholeRunOperator"
    assert "cycle" in task.doc_md


def test_loader_renders_cascades_with_an_airflow_block_by_default(tmp_path):
    namespace: dict = {"__file__": str(FIXTURES / "loader.py")}
    dags = load_cascade_dags("ok", namespace, _config(tmp_path))
    assert sorted(dags) == ["cascade_fanout_test", "cascade_review_loop", "cascade_triage"]
    assert all(dag in namespace.values() for dag in dags.values())

    everything = load_cascade_dags(FIXTURES / "ok", {}, _config(tmp_path, select="all"))
    assert "cascade_plain" in everything


# -- broken files -------------------------------------------------------------------------------


def test_broken_files_are_an_import_error_and_good_cascades_still_load(tmp_path):
    dags_folder = tmp_path / "dags"
    dags_folder.mkdir()
    (dags_folder / "cascade_dags.py").write_text(
        "from airflow_llm_provider.cascade_dags import load_cascade_dags\n"
        f"load_cascade_dags({str(FIXTURES / 'broken')!r}, globals())\n"
    )
    bag = dag_bag(dags_folder)

    assert "cascade_still_good" in bag.dags
    (error,) = bag.import_errors.values()
    assert "bad_handoff.yaml:6: phases[0].handoffs[0]: unknown phase 'nowhere'" in error
    assert "bad_type.json:4: phases[0].retries:" in error


def test_on_error_raise_raises_with_every_issue():
    with pytest.raises(CascadeDagImportError, match=r"(?s)bad_handoff\.yaml:6.*bad_type\.json:4"):
        load_cascade_dags(FIXTURES / "broken", {}, CascadeDagConfig(on_error="raise"))


# -- runs -------------------------------------------------------------------------------------


def _fanout_responder(request):
    system = request.text_of("system")
    if system.startswith("List facts"):
        return text("wide; long; wet")
    if system.startswith("Ask questions"):
        return text("Why so wet?")
    if system.startswith("Explain"):
        return text("E:" + system.split(" ")[1])
    return text("final report")


def test_dataflow_dag_runs_phase_per_task_with_mapping(dag_runner, llm_server, airflow_conn, tmp_path):
    airflow_conn("llm_test", llm_server.connection(model="gpt-4o-mini"))
    llm_server.responder = _fanout_responder
    dag = build_cascade_dag(FIXTURES / "ok" / "fanout.yaml", _config(tmp_path))

    result = dag_runner(dag, logical_date=pendulum.datetime(2026, 4, 1, tz="UTC"))

    assert result.state == "success", result.task_states
    systems = [r.text_of("system") for r in llm_server.requests]
    assert "List facts about rivers." in systems and "Ask questions about rivers." in systems
    assert sorted(s for s in systems if s.startswith("Explain")) == [
        "Explain long (#1).",
        "Explain wet (#2).",
        "Explain wide (#0).",
    ]
    assert len(llm_server.requests) == 6
    assert result.xcom("split")["output"] == {"items": ["wide", "long", "wet"]}
    assert result.xcom("explain", map_index=1)["output"] == "E:long"
    collected = result.xcom("explain__results")
    assert collected["output"] == ["E:wide", "E:long", "E:wet"]
    assert collected["usage"]["requests"] == 3
    assert systems[-1] == "Report: E:wide | E:long | E:wet / Why so wet?"
    report = result.xcom("report")
    assert report["phase"] == "report" and report["output"] == "final report"
    assert report["usage"]["model"] == "openai-chat:gpt-4o-mini"


def test_branching_dag_runs_only_the_chosen_branch(dag_runner, llm_server, airflow_conn, tmp_path):
    airflow_conn("llm_test", llm_server.connection())
    llm_server.responder = lambda request: text(f"answer to: {request.text_of('system')}")
    dag = build_cascade_dag(FIXTURES / "ok" / "triage.yaml", _config(tmp_path))

    result = dag_runner(dag, logical_date=pendulum.datetime(2026, 4, 2, tz="UTC"))

    assert result.state == "success", result.task_states
    assert result.task_states["bug"] == "skipped"
    assert result.task_states["billing"] == "success"
    assert result.task_states["reply"] == "success"
    assert [r.text_of("system") for r in llm_server.requests] == [
        "Answer the billing ticket refund please.",
        "Polish the answer.",
    ]
    assert "## Output of billing\nanswer to: Answer the billing" in llm_server.requests[1].text_of("user")

    result = dag_runner(
        dag, logical_date=pendulum.datetime(2026, 4, 3, tz="UTC"), conf={"ticket": "it crashes"}
    )
    assert result.state == "success", result.task_states
    assert result.task_states["billing"] == "skipped"
    assert result.task_states["reply"] == "success"
    assert llm_server.requests[2].text_of("system") == "Acknowledge the bug."


def test_budget_applies_per_task_and_a_budget_stop_is_not_retried(
    dag_runner, llm_server, airflow_conn, tmp_path
):
    airflow_conn("llm_test", llm_server.connection())
    config = _config(
        tmp_path, budget={"max_tokens": 1}, default_args={"retries": 2, "retry_delay": timedelta(0)}
    )
    dag = build_cascade_dag(FIXTURES / "ok" / "triage.yaml", config)

    result = dag_runner(dag, logical_date=pendulum.datetime(2026, 4, 5, tz="UTC"))

    assert result.state == "failed"
    assert result.task_states["classify"] == "success"  # a tool phase spends no tokens
    assert result.task_states["billing"] == "failed"  # not up_for_retry: retrying would spend again
    assert result.task_states["reply"] == "upstream_failed"
    assert llm_server.requests == []


def test_cyclic_cascade_runs_in_one_task(dag_runner, llm_server, airflow_conn, tmp_path):
    airflow_conn("llm_test", llm_server.connection())
    llm_server.script(text("a draft"))
    dag = build_cascade_dag(FIXTURES / "ok" / "loop.yaml", _config(tmp_path))

    result = dag_runner(dag, logical_date=pendulum.datetime(2026, 4, 4, tz="UTC"))

    assert result.state == "success", result.task_states
    assert result.xcom("cascade")["outputs"]["write"] == "a draft"
    assert llm_server.requests[0].text_of("system") == "Write about hello."


# -- CLI --------------------------------------------------------------------------------------


def test_render_prints_the_task_graph(capsys):
    assert main(["render", str(FIXTURES / "ok" / "triage.yaml")]) == 0
    out = capsys.readouterr().out
    assert "DAG cascade_triage (cascade triage): branching, 5 tasks" in out
    assert "classify__route [route] <- classify; branch to billing -> billing, bug -> bug" in out
    assert "reply [phase, llm] <- billing, bug; trigger_rule=none_failed_min_one_success" in out

    assert main(["render", str(FIXTURES / "pooled.yaml")]) == 0
    out = capsys.readouterr().out
    assert "fetch [phase, tool] <- (start); pool=io_pool; retries=3; execution_timeout=90s" in out
    assert "summarize [mapped, llm] <- summarize__items; mapped over summarize__items" in out


def test_render_of_an_invalid_cascade_exits_2_with_file_and_line(capsys):
    path = FIXTURES / "broken" / "bad_handoff.yaml"
    assert main(["render", str(path)]) == 2
    assert f"{path}:6: phases[0].handoffs[0]: unknown phase 'nowhere'" in capsys.readouterr().out


def test_render_needs_no_airflow_at_all():
    code = textwrap.dedent(
        f"""
        import sys
        from airflow_llm_provider.cli import main
        code = main(["render", {str(FIXTURES / "ok" / "fanout.yaml")!r}])
        print("loaded:", sorted(m for m in ("airflow", "pydantic_ai", "openai") if m in sys.modules))
        sys.exit(code)
        """
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "loaded: []" in result.stdout


def test_building_cascade_dags_stays_cheap_at_parse_time():
    code = textwrap.dedent(
        f"""
        import sys
        from airflow_llm_provider.cascade_dags import load_cascade_dags
        dags = load_cascade_dags({str(FIXTURES / "ok")!r}, {{}})
        assert len(dags) == 3, dags
        print("heavy:" + ",".join(m for m in ("pydantic_ai", "openai") if m in sys.modules))
        """
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "heavy:\n" in result.stdout + "\n", result.stdout


def test_an_empty_map_over_list_skips_the_mapped_phase_and_downstream(
    dag_runner, llm_server, airflow_conn, tmp_path
):
    airflow_conn("llm_test", llm_server.connection())
    dag = build_cascade_dag(FIXTURES / "empty_map.yaml", _config(tmp_path))

    result = dag_runner(dag, logical_date=pendulum.datetime(2026, 4, 6, tz="UTC"), conf={"text": ";"})

    assert result.task_states["fetch"] == "success"
    assert result.task_states["summarize__items"] == "success"
    assert result.task_states["title"] == "skipped"
    assert llm_server.requests == []


@pytest.mark.parametrize(("ticket", "ran"), [("refund", ["Billing note.", "Reply."]), ("crash", ["Reply."])])
def test_a_route_target_also_reached_through_another_branch_runs_once(
    dag_runner, llm_server, airflow_conn, tmp_path, ticket, ran
):
    airflow_conn("llm_test", llm_server.connection())
    llm_server.responder = lambda request: text("ok")
    dag = build_cascade_dag(FIXTURES / "shortcut.yaml", _config(tmp_path))
    assert _upstream(dag)["reply"] == {"classify__route", "billing"}

    day = 7 if ticket == "refund" else 8
    result = dag_runner(dag, logical_date=pendulum.datetime(2026, 4, day, tz="UTC"), conf={"ticket": ticket})

    assert result.state == "success", result.task_states
    assert result.task_states["reply"] == "success"
    assert [r.text_of("system") for r in llm_server.requests] == ran


def test_state_set_in_one_task_is_read_in_a_later_task(dag_runner, llm_server, airflow_conn, tmp_path):
    """Windlass's ``set_state`` across phases rendered as separate tasks: each outcome in XCom
    carries the run's state, and a phase reading ``state.x`` pulls the phases before it."""
    airflow_conn("llm_test", llm_server.connection())
    path = tmp_path / "stateful.yaml"
    path.write_text(
        textwrap.dedent(
            """
            cascade_id: stateful
            phases:
              - name: remember
                tool: set_state
                inputs: {key: region, value: "{{ input.region }}"}
              - name: unrelated
                instructions: "Say hi."
              - name: write
                instructions: "Write for {{ state.region }}."
            """
        )
    )
    llm_server.responder = lambda request: text(f"ok: {request.text_of('system')}")
    dag = build_cascade_dag(path, _config(tmp_path))
    assert {"remember", "unrelated"} <= dag.task_dict["write"].upstream_task_ids

    result = dag_runner(dag, logical_date=pendulum.datetime(2026, 4, 5, tz="UTC"), conf={"region": "emea"})

    assert result.state == "success", result.task_states
    assert result.xcom("remember")["state"]["region"] == "emea"
    assert result.xcom("write")["output"] == "ok: Write for emea."
