"""Windlass's built-in tools inside Airflow, with real ``dag.test()`` runs: a cascade rendered as
one task per phase hands session tables (rebuilt from XCom), state and child-cascade results
from task to task; the same cascade in one ``CascadeOperator`` task gives the same answer."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pendulum

from airflow_llm_provider.cascade_dags import CascadeDagConfig, build_cascade_dag

CASCADE = """
cascade_id: tools_across_tasks
phases:
  - name: orders
    tool: sql_data
    inputs:
      query: "SELECT * FROM (VALUES ('emea', 10), ('amer', 30), ('emea', 5)) AS t(region, amount)"
  - name: totals
    tool: python_data
    inputs:
      code: |
        df = data.orders
        result = df.groupby("region", as_index=False)["amount"].sum().sort_values("region")
  - name: remember
    tool: set_state
    inputs: {key: top, value: "{{ outputs.totals.rows[1].region }}"}
  - name: shout
    tool: map_cascade
    inputs:
      cascade: tackle/shout.yaml
      map_over: "{{ outputs.totals.rows | map(attribute='region') | list | tojson }}"
  - name: report
    tool: sql_data
    inputs:
      query: "SELECT region, amount, '{{ state.top }}' AS top FROM _totals ORDER BY amount DESC"
"""

SHOUT = """
cascade_id: shout
inputs_schema: {item: a word}
phases:
  - name: up
    tool: python:tests.tools.helpers_upper.upper
    inputs: {text: "{{ input.item }}"}
"""


def project(tmp_path: Path) -> Path:
    (tmp_path / "flows").mkdir()
    (tmp_path / "tackle").mkdir()
    (tmp_path / "tackle" / "shout.yaml").write_text(textwrap.dedent(SHOUT))
    path = tmp_path / "flows" / "tools_across_tasks.yaml"
    path.write_text(textwrap.dedent(CASCADE))
    return path


def test_session_tables_state_and_child_cascades_cross_task_boundaries(dag_runner, tmp_path):
    dag = build_cascade_dag(project(tmp_path), CascadeDagConfig(cache=f"dir:{tmp_path / 'cache'}"))
    upstream = {task.task_id: set(task.upstream_task_ids) for task in dag.tasks}
    # Reading a session table, an output or the state makes a phase wait for its writer.
    assert upstream["totals"] == {"orders"} and "totals" in upstream["report"]
    assert {"remember", "totals"} <= upstream["report"]

    result = dag_runner(dag, logical_date=pendulum.datetime(2026, 5, 1, tz="UTC"))

    assert result.state == "success", result.task_states
    assert result.xcom("totals")["output"]["rows"] == [
        {"region": "amer", "amount": 30},
        {"region": "emea", "amount": 15},
    ]
    assert result.xcom("remember")["state"]["top"] == "emea"
    shout = result.xcom("shout")["output"]
    assert [r["output"] for r in shout["results"]] == ["AMER", "EMEA"]
    # `report` ran in its own task: `_totals` was rebuilt there from the XCom of `totals`.
    assert result.xcom("report")["output"]["rows"] == [
        {"region": "amer", "amount": 30, "top": "emea"},
        {"region": "emea", "amount": 15, "top": "emea"},
    ]
