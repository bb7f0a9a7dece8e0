"""(f) A cascade mapped over N synthetic transcripts under a real Airflow, vs raw pydantic-ai.

One deployment per executor (LocalExecutor; CeleryExecutor with Redis and two workers), each on a
fresh PostgreSQL metadata DB, started with the test bed's launcher. Two DAGs map over the same N
items in the same one pool (``bench_llm``, ``--pool-slots`` slots), against the same
``ScriptedOpenAIServer`` with a fixed latency:

- ``bench_fanout_cascade``: ``CascadeOperator.partial(...).expand(inputs=items)``, a one-phase
  cascade, ``max_concurrency=1`` (so one pool slot = one call in flight);
- ``bench_fanout_raw`` (the anchor): a ``@task`` that reads the same connection and makes the same
  call with ``pydantic_ai.Agent(...).run_sync`` (same instructions, same user message).

Reported per executor: wall time per DAG run; LLM requests per second while the run was busy
(first request to last answer) against the pool's bound (slots / latency), goal >= 0.9; and the
mean task duration of ours over the anchor's, goal <= 1.1.

The deployment is tuned as docs/deployment.md advises for large fan-outs, the same for both sides:
bytecode compiled at install (``make install``), pydantic-ai preloaded in the workers
(``airflow_llm_provider.preload``, ``--no-preload`` to compare), and only the benchmark's DAG file
in the dags folder.

    .venv/bin/python bench/fanout.py [--items 1000] [--latency 10] [--pool-slots 10] [--executor both]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from contextlib import redirect_stdout
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))  # the deployment launcher is the test bed's

from _common import machine  # noqa: E402

from airflow_llm_provider.testing.openai_server import ScriptedOpenAIServer, text  # noqa: E402
from tests.fixtures import airflow_server as deploy  # noqa: E402

POOL = "bench_llm"
CONN_ID = "bench_llm"
INSTRUCTIONS = "Summarise the support transcript in one sentence."
DAG_FILE = '''
"""Written by bench/fanout.py: the cascade and the raw pydantic-ai side of the fan-out benchmark."""
import json

import pendulum
from airflow.providers.common.compat.sdk import DAG, BaseHook, task

from airflow_llm_provider.operators.cascade import CascadeOperator

START = pendulum.datetime(2026, 1, 1, tz="UTC")
CASCADE = {{
    "cascade_id": "bench_fanout",
    "phases": [{{"name": "summary", "instructions": {instructions!r}}}],
}}


@task
def make_items(**context):
    count = int(context["dag_run"].conf.get("items", 10))
    return [{{"transcript": f"Customer {{i}}: my order {{i}} arrived late."}} for i in range(count)]


with DAG("bench_fanout_cascade", schedule=None, start_date=START, catchup=False, max_active_tasks=256):
    CascadeOperator.partial(
        task_id="summarise", cascade=CASCADE, llm_conn_id={conn_id!r}, pool={pool!r},
        max_concurrency=1, cache=None,
    ).expand(inputs=make_items())


with DAG("bench_fanout_raw", schedule=None, start_date=START, catchup=False, max_active_tasks=256):

    @task(pool={pool!r})
    def summarise(item):
        from pydantic_ai import Agent
        from pydantic_ai.models.openai import OpenAIChatModel
        from pydantic_ai.providers.openai import OpenAIProvider

        conn = BaseHook.get_connection({conn_id!r})
        model_name = json.loads(conn.extra)["model"].split(":", 1)[1]
        provider = OpenAIProvider(base_url=conn.host, api_key=conn.password)
        model = OpenAIChatModel(model_name, provider=provider)
        # The user message the engine sends for a phase without context.from: the input as JSON.
        prompt = "## Input\\n" + json.dumps(item, indent=2, ensure_ascii=False)
        result = Agent(model, instructions={instructions!r}).run_sync(prompt)
        return {{"final": result.output}}

    summarise.expand(item=make_items())
'''


LOCAL_SETTINGS = """\
# Written by bench/fanout.py, as docs/deployment.md advises for large fan-outs.
from airflow_llm_provider.preload import preload

preload()
"""


def write_local_settings(home: Path) -> None:
    """``$AIRFLOW_HOME/config/airflow_local_settings.py``, which every Airflow process imports."""
    (home / "config").mkdir(exist_ok=True)
    (home / "config" / "airflow_local_settings.py").write_text(LOCAL_SETTINGS)


def bytecode_compiled() -> bool:
    """Whether pydantic-ai has .pyc files (``make install`` compiles them); without, every task
    process compiles it again and the numbers measure the compiler."""
    import pydantic_ai

    cached = importlib.util.cache_from_source(pydantic_ai.__file__)
    return Path(cached).exists()


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=1000)
    parser.add_argument("--latency", type=float, default=10.0, help="seconds per LLM answer")
    parser.add_argument("--pool-slots", type=int, default=10)
    parser.add_argument(
        "--no-preload", dest="preload", action="store_false", help="do not preload pydantic-ai in workers"
    )
    parser.add_argument("--executor", choices=("local", "celery", "both"), default="both")
    parser.add_argument("--check", action="store_true", help="exit 1 when a goal is missed")
    parser.add_argument("--keep-logs", type=Path, help="copy each deployment's task logs here")
    return parser.parse_args()


def task_durations(server, dag_id: str, run_id: str) -> list[float]:
    durations: list[float] = []
    offset = 0
    while True:
        page = server.request(
            "GET",
            f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances",
            params={"limit": 100, "offset": offset},
        )["task_instances"]
        durations += [ti["duration"] for ti in page if ti["task_id"] == "summarise" and ti["duration"]]
        if len(page) < 100:
            return durations
        offset += 100


def run_dag(server, llm: ScriptedOpenAIServer, dag_id: str, items: int, timeout: float) -> dict:
    mark = len(llm.requests)
    run_id = server.trigger(dag_id, conf={"items": items})
    started = time.monotonic()
    run = server.wait_for_run(dag_id, run_id, timeout=timeout)
    wall = time.monotonic() - started
    if run["state"] != "success":
        raise SystemExit(f"{dag_id} ended {run['state']}:\n{server.log_tail('scheduler')}")
    requests = llm.requests[mark:]
    busy = max(r.answered_at or r.arrived_at for r in requests) - min(r.arrived_at for r in requests)
    # Without the ramp-up and the tail: requests that arrived between the 10th and 90th percentile.
    arrivals = sorted(r.arrived_at for r in requests)
    low, high = arrivals[len(arrivals) // 10], arrivals[(len(arrivals) * 9) // 10]
    steady = sum(low <= t < high for t in arrivals) / (high - low) if high > low else None
    durations = task_durations(server, dag_id, run_id)
    return {
        "wall_s": round(wall, 1),
        "llm_requests": len(requests),
        "busy_window_s": round(busy, 1),
        "requests_per_s": round(len(requests) / busy, 3),
        "steady_requests_per_s": round(steady, 3) if steady else None,
        "tasks": len(durations),
        "task_duration_s": {
            "mean": round(statistics.mean(durations), 3),
            "median": round(statistics.median(durations), 3),
            "max": round(max(durations), 3),
        },
    }


def bench_executor(executor: str, args: argparse.Namespace, llm: ScriptedOpenAIServer) -> dict:
    database = deploy._metadata_database()
    if database is None:
        raise SystemExit("the benchmark needs PostgreSQL on 127.0.0.1:5432 (see docs/testing.md)")
    with tempfile.TemporaryDirectory(prefix=f"bench-fanout-{executor}-") as home:
        if args.preload:
            write_local_settings(Path(home))
        server = deploy.start_airflow_server(
            Path(home),
            database_url=database.sqlalchemy_uri,
            celery_workers=2 if executor == "celery" else 0,
            with_repo_dags=False,
            extra_env={
                "AIRFLOW__CORE__PARALLELISM": str(args.pool_slots * 4),
                "AIRFLOW__CORE__MAX_MAP_LENGTH": str(max(1024, args.items)),
                "AIRFLOW__CELERY__WORKER_CONCURRENCY": str(args.pool_slots),
                # One unchanging DAG file: re-parsing it every 5 s (the test bed's pace) is waste.
                "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "60",
                "AIRFLOW__SCHEDULER__MIN_FILE_PROCESS_INTERVAL": "60",
            },
        )
        try:
            (server.dags_folder / "bench_fanout.py").write_text(
                DAG_FILE.format(instructions=INSTRUCTIONS, conn_id=CONN_ID, pool=POOL)
            )
            server.request("POST", "/pools", json={"name": POOL, "slots": args.pool_slots})
            server.create_connection(CONN_ID, llm.connection())
            timeout = 600 + 4 * args.items * args.latency / args.pool_slots
            results = {}
            for dag_id in ("bench_fanout_raw", "bench_fanout_cascade"):
                server.wait_for_dag(dag_id)
                server.unpause(dag_id)
                results[dag_id] = run_dag(server, llm, dag_id, args.items, timeout)
        finally:
            deploy.stop_airflow_server(server)
            if args.keep_logs:
                shutil.copytree(server.home / "logs", args.keep_logs / executor, dirs_exist_ok=True)
            deploy._drop_database(database.dbname)
    bound = args.pool_slots / args.latency
    ours, anchor = results["bench_fanout_cascade"], results["bench_fanout_raw"]
    return {
        "executor": executor,
        "ours": ours,
        "anchor_raw_pydantic_ai": anchor,
        "pool_bound_requests_per_s": round(bound, 3),
        "ours_fraction_of_bound": round(ours["requests_per_s"] / bound, 3),
        "anchor_fraction_of_bound": round(anchor["requests_per_s"] / bound, 3),
        "ours_steady_fraction_of_bound": round((ours["steady_requests_per_s"] or 0) / bound, 3),
        "task_duration_ratio_ours_over_anchor": round(
            ours["task_duration_s"]["mean"] / anchor["task_duration_s"]["mean"], 3
        ),
        "overhead_per_task_s": {
            "ours": round(ours["task_duration_s"]["mean"] - args.latency, 3),
            "anchor": round(anchor["task_duration_s"]["mean"] - args.latency, 3),
        },
    }


def main() -> None:
    args = arguments()
    facts = machine()  # the load average before the deployments start
    compiled = bytecode_compiled()
    if not compiled:
        print("warning: pydantic-ai has no .pyc files; `make install` compiles them", file=sys.stderr)
    executors = ("local", "celery") if args.executor == "both" else (args.executor,)
    results = []
    # Airflow's CLI and logs write to stdout, which carries the JSON result.
    with redirect_stdout(sys.stderr), ScriptedOpenAIServer(latency=args.latency) as llm:
        llm.responder = lambda request: text("The order arrived late; the customer wants a refund.")
        for executor in executors:
            print(f"== {executor}: {args.items} items, pool {args.pool_slots}, latency {args.latency}s")
            results.append(bench_executor(executor, args, llm))
            print(json.dumps(results[-1]))
    met = all(
        r["ours_fraction_of_bound"] >= 0.9 and r["task_duration_ratio_ours_over_anchor"] <= 1.1
        for r in results
    )
    json.dump(
        {
            "benchmark": "fanout",
            "items": args.items,
            "latency_s": args.latency,
            "pool_slots": args.pool_slots,
            "preload": args.preload,
            "bytecode_compiled": compiled,
            "results": results,
            "goal": "requests/s >= 0.9 x pool bound; mean task duration <= 1.1 x raw pydantic-ai",
            "goal_met": met,
            "machine": {**facts, "loadavg_1m_at_end": os.getloadavg()[0]},
        },
        sys.stdout,
        indent=2,
    )
    sys.stdout.write("\n")
    if args.check and not met:
        sys.exit(1)


if __name__ == "__main__":
    main()
