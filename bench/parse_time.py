"""Benchmark (d): parse time of 20 cascade files rendered by ``load_cascade_dags`` vs 20 DAG files
written by hand with the same task graph.

Three dags folders are generated in a temporary directory:

- ``ours``: ``cascades/*.yaml`` (20 cascades with an ``airflow:`` block) and one loader file calling
  ``load_cascade_dags("cascades/", globals())``, as in docs/cascades.md.
- ``hand`` (the anchor): 20 ``.py`` files, each one DAG with the same DAG arguments, task ids and
  dependencies, written with ``PythonOperator`` placeholders (the mapped phase with
  ``.partial().expand()``): what the graph costs in plain Airflow.
- ``hand_operators`` (secondary): 20 ``.py`` files building the same graph by hand with our
  ``CascadePhaseOperator``/``CascadeItemsOperator``/``CascadeCollectOperator`` on the same YAML files,
  so ``ours`` minus this is the cost of the loader itself (globbing, validation report, planning).

Each folder is parsed the way Airflow parses: ``DagBag(dag_folder=...)`` (``include_examples=False``
on 2.x; ``airflow.dag_processing.dagbag.DagBag`` on 3.x), in a fresh subprocess per measurement so
that no import cache favours the folder parsed second; the subprocess imports Airflow's DagBag
before the clock starts. A second DagBag of the same folder in that process gives the "warm" time
(modules imported, files re-executed). Every run checks that the three folders produce the same
DAGs with the same task graphs. The ratio is ours / hand, cold, median over the repetitions.

    .venv/bin/python bench/parse_time.py [--check] [--repetitions 5] [--profile]

``--profile`` (automatic when the goal is missed) adds a cProfile of one cold parse of ``ours``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import finish, summary

FILES = 20
GOAL = 1.2
FOLDERS = ("ours", "hand", "hand_operators")

CASCADE = """\
cascade_id: bench_{n:02d}
description: Benchmark cascade {n}, plan, fan out over the plan, list risks, synthesize, review.
airflow:
  dag_id: bench_cascade_{n:02d}
  start_date: 2026-01-01
  tags: [bench]
  params:
    question: "Benchmark question number {n}?"
phases:
  - name: plan
    instructions: Split "{{{{ input.question }}}}" into at most five self-contained sub-questions.
    output_schema:
      type: object
      properties:
        subquestions: {{type: array, items: {{type: string}}, minItems: 1, maxItems: 5}}
      required: [subquestions]
  - name: answer
    map_over: plan.subquestions
    instructions: "Answer this sub-question in three sentences: {{{{ item }}}}"
  - name: risks
    instructions: List the three biggest risks of acting on "{{{{ input.question }}}}".
  - name: synthesize
    instructions: |
      Answer "{{{{ input.question }}}}" in one paragraph.
      Answers: {{{{ outputs.answer }}}}
      Risks: {{{{ outputs.risks }}}}
  - name: review
    instructions: "Check this answer for factual errors: {{{{ outputs.synthesize }}}}"
"""

LOADER = '''\
"""Every cascade of cascades/ as a DAG."""

from airflow_llm_provider.cascade_dags import load_cascade_dags

load_cascade_dags("cascades/", globals())
'''

DAG_ARGS = """\
    dag_id="bench_cascade_{n:02d}",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    tags=["bench", "cascade"],
    params={{"question": "Benchmark question number {n}?"}},
    description="Benchmark cascade {n}, plan, fan out over the plan, list risks, synthesize, review.",
    doc_md="Hand-written equivalent of cascade `bench_{n:02d}`.",
"""

HAND = '''\
"""Hand-written equivalent of cascade bench_{n:02d}: the same graph with PythonOperator placeholders."""

import pendulum
from airflow.providers.common.compat.sdk import DAG
from airflow.providers.standard.operators.python import PythonOperator


def phase(*args, **kwargs):
    return {{"args": args, "kwargs": kwargs}}


def items(**kwargs):
    return []


with DAG(
{dag_args}) as dag:
    plan = PythonOperator(
        task_id="plan",
        python_callable=phase,
        op_kwargs={{"instructions": "Split the question into at most five sub-questions."}},
    )
    answer_items = PythonOperator(task_id="answer__items", python_callable=items)
    answer = PythonOperator.partial(
        task_id="answer",
        python_callable=phase,
        op_kwargs={{"instructions": "Answer this sub-question in three sentences."}},
    ).expand(op_args=answer_items.output)
    answer_results = PythonOperator(task_id="answer__results", python_callable=phase, op_args=[answer.output])
    risks = PythonOperator(
        task_id="risks",
        python_callable=phase,
        op_kwargs={{"instructions": "List the three biggest risks of acting on the question."}},
    )
    synthesize = PythonOperator(
        task_id="synthesize",
        python_callable=phase,
        op_kwargs={{"instructions": "Answer the question in one paragraph."}},
    )
    review = PythonOperator(
        task_id="review",
        python_callable=phase,
        op_kwargs={{"instructions": "Check this answer for factual errors."}},
    )
    plan >> answer_items
    [answer_results, risks] >> synthesize >> review
'''

HAND_OPERATORS = '''\
"""Hand-written equivalent of cascade bench_{n:02d} with the provider's phase operators."""

from pathlib import Path

import pendulum
from airflow.providers.common.compat.sdk import DAG

from airflow_llm_provider.operators.cascade_phase import (
    CascadeCollectOperator,
    CascadeItemsOperator,
    CascadePhaseOperator,
)

CASCADE = str(Path(__file__).parent / "cascades" / "bench_{n:02d}.yaml")

with DAG(
{dag_args}) as dag:
    plan = CascadePhaseOperator(task_id="plan", cascade=CASCADE, phase="plan")
    answer_items = CascadeItemsOperator(
        task_id="answer__items", source_task_id="plan", map_over="plan.subquestions"
    )
    answer = CascadePhaseOperator.partial(
        task_id="answer", cascade=CASCADE, phase="answer", pulls={{"plan": "plan"}}, mapped=True
    ).expand(map_item=answer_items.output)
    answer_results = CascadeCollectOperator(task_id="answer__results", phase="answer", results=answer.output)
    risks = CascadePhaseOperator(task_id="risks", cascade=CASCADE, phase="risks")
    synthesize = CascadePhaseOperator(
        task_id="synthesize",
        cascade=CASCADE,
        phase="synthesize",
        pulls={{"answer": "answer__results", "risks": "risks"}},
    )
    review = CascadePhaseOperator(
        task_id="review", cascade=CASCADE, phase="review", pulls={{"synthesize": "synthesize"}}
    )
    plan >> answer_items
    [answer_results, risks] >> synthesize >> review
'''


def write_folders(root: Path) -> dict[str, Path]:
    folders = {name: root / name for name in FOLDERS}
    for name in ("ours", "hand_operators"):
        (folders[name] / "cascades").mkdir(parents=True)
    folders["hand"].mkdir(parents=True)
    (folders["ours"] / "cascade_dags.py").write_text(LOADER)
    for n in range(1, FILES + 1):
        dag_args = DAG_ARGS.format(n=n)
        for name in ("ours", "hand_operators"):
            (folders[name] / "cascades" / f"bench_{n:02d}.yaml").write_text(CASCADE.format(n=n))
        (folders["hand"] / f"bench_{n:02d}.py").write_text(HAND.format(n=n, dag_args=dag_args))
        (folders["hand_operators"] / f"bench_{n:02d}.py").write_text(
            HAND_OPERATORS.format(n=n, dag_args=dag_args)
        )
    return folders


# -- the worker: one fresh process, one folder ----------------------------------------------------


def _dagbag_class() -> Any:
    from airflow_llm_provider.version_compat import AIRFLOW_V_3_0_PLUS

    if AIRFLOW_V_3_0_PLUS:
        from airflow.dag_processing.dagbag import DagBag

        return lambda folder: DagBag(dag_folder=folder)
    from airflow.models.dagbag import DagBag

    return lambda folder: DagBag(dag_folder=folder, include_examples=False)


def _seconds(value: Any) -> float:
    return value.total_seconds() if hasattr(value, "total_seconds") else float(value)


def worker(folder: str, profile: bool) -> None:
    make_bag = _dagbag_class()  # Airflow and its DagBag are imported before the clock starts
    if profile:
        import cProfile
        import io
        import pstats

        profiler = cProfile.Profile()
        profiler.enable()
        make_bag(folder)
        profiler.disable()
        rows = []
        stats = pstats.Stats(profiler, stream=io.StringIO())
        for (file, line, func), (_, calls, tottime, cumtime, _) in stats.stats.items():  # type: ignore[attr-defined]
            rows.append(
                {"where": f"{file}:{line}:{func}", "calls": calls, "tottime": tottime, "cumtime": cumtime}
            )
        total = sum(r["tottime"] for r in rows)
        top_cum = sorted(rows, key=lambda r: -r["cumtime"])[:40]
        top_tot = sorted(rows, key=lambda r: -r["tottime"])[:25]
        json.dump({"total_s": total, "top_cumulative": top_cum, "top_self": top_tot}, sys.stdout)
        return
    start = time.perf_counter()
    bag = make_bag(folder)
    cold = time.perf_counter() - start
    start = time.perf_counter()
    make_bag(folder)
    warm = time.perf_counter() - start
    graphs = {
        dag_id: {task.task_id: sorted(task.upstream_task_ids) for task in dag.tasks}
        for dag_id, dag in bag.dags.items()
    }
    file_stats = [
        {"file": Path(s.file).name, "duration": _seconds(s.duration), "dags": s.dag_num, "tasks": s.task_num}
        for s in bag.dagbag_stats
    ]
    json.dump(
        {
            "cold_s": cold,
            "warm_s": warm,
            "stats_s": sum(s["duration"] for s in file_stats),
            "file_stats": file_stats,
            "graphs": graphs,
            "import_errors": {str(k): str(v) for k, v in bag.import_errors.items()},
        },
        sys.stdout,
    )


def run_worker(folder: Path, env: dict[str, str], profile: bool = False) -> dict[str, Any]:
    command = [sys.executable, __file__, "--worker", str(folder)] + (["--profile"] if profile else [])
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"worker failed for {folder}:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 when the goal is missed")
    parser.add_argument("--repetitions", type=int, default=5)
    parser.add_argument("--profile", action="store_true", help="add a cProfile of one cold parse of ours")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.profile)
        return

    from _common import machine

    with tempfile.TemporaryDirectory(prefix="alp-bench-parse-") as tmp:
        root = Path(tmp)
        folders = write_folders(root / "dags")
        home = root / "airflow-home"
        home.mkdir()
        env = {
            **os.environ,
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home}/airflow.db",
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
            "PYTHONDONTWRITEBYTECODE": "1",
        }
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name in FOLDERS}
        for _ in range(args.repetitions):  # interleaved, so machine noise hits all sides alike
            for name in FOLDERS:
                runs[name].append(run_worker(folders[name], env))
        profile = None
        reference = runs["hand"][0]["graphs"]
        for name in FOLDERS:
            for run in runs[name]:
                assert not run["import_errors"], (name, run["import_errors"])
                assert run["graphs"] == reference, f"{name} renders a different graph than hand"

        def side(name: str) -> dict[str, Any]:
            last = runs[name][-1]
            return {
                "cold_s": summary([r["cold_s"] for r in runs[name]]),
                "warm_s": summary([r["warm_s"] for r in runs[name]]),
                "dagbag_stats_s": summary([r["stats_s"] for r in runs[name]]),
                "files_parsed": len(last["file_stats"]),
                "dags": len(last["graphs"]),
                "tasks_per_dag": len(next(iter(last["graphs"].values()))),
            }

        def ratio(key: str, other: str = "hand") -> dict[str, float]:
            ours = [r[key] for r in runs["ours"]]
            theirs = [r[key] for r in runs[other]]
            return {
                "median": round(statistics.median(ours) / statistics.median(theirs), 3),
                "min": round(min(ours) / min(theirs), 3),
            }

        result: dict[str, Any] = {
            "benchmark": "parse_time",
            "files": FILES,
            "repetitions": args.repetitions,
            "machine": machine(),
            "ours": side("ours"),
            "hand": side("hand"),
            "hand_operators": side("hand_operators"),
            "ratio_cold": ratio("cold_s"),
            "ratio_warm": ratio("warm_s"),
            "ratio_dagbag_stats": ratio("stats_s"),
            "ratio_cold_vs_hand_operators": ratio("cold_s", "hand_operators"),
            "goal": f"ratio_cold.median <= {GOAL}",
        }
        met = result["ratio_cold"]["median"] <= GOAL
        if args.profile or not met:
            profile = run_worker(folders["ours"], env, profile=True)
            result["profile_ours_cold"] = profile
    finish(result, met, args.check)


if __name__ == "__main__":
    main()
