"""CeleryExecutor: a worker SIGKILLed in the middle of a cascade. The scheduler notices the lost
heartbeats, retries the task on the other worker, and the retry resumes from the phase cache in
PostgreSQL: the LLM is not asked again for the phases that had finished.

Runs under ``make test-celery`` (skipped on the LocalExecutor deployment)."""

from __future__ import annotations

import os
import signal
import time
from urllib.parse import urlsplit

import psutil
import pytest

from airflow_llm_provider.testing.openai_server import text

pytestmark = pytest.mark.e2e

DAG_ID = "e2e_resume_after_worker_loss"
PHASES = ("outline", "draft", "edit", "title")


def _phase(request) -> str:
    return request.text_of("system").split("]")[0].lstrip("[")


def _busy_worker(server, llm_port: int, timeout: float = 20.0) -> str | None:
    """The worker whose process tree holds the task: the one process with a connection open to
    the LLM server, where the task waits for the slow answer. (Counting descendants was not
    enough: a Celery pool may replace its processes at any moment.)"""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        busy = [name for name in server.celery_workers if _talks_to(server.processes[name].pid, llm_port)]
        if len(busy) == 1:
            return busy[0]
        time.sleep(0.5)
    return None


def _talks_to(pid: int, port: int) -> bool:
    try:
        root = psutil.Process(pid)
        tree = [root, *root.children(recursive=True)]
    except psutil.Error:
        return False
    for process in tree:
        try:
            connections = process.net_connections(kind="tcp")
        except psutil.Error:
            continue
        if any(c.raddr and c.raddr.port == port and c.status == psutil.CONN_ESTABLISHED for c in connections):
            return True
    return False


def test_killed_worker_task_resumes_from_the_phase_cache(airflow_server, llm_server, postgres):
    if airflow_server.executor != "CeleryExecutor":
        pytest.skip("needs the CeleryExecutor deployment: make test-celery")
    edits = []

    def respond(request):
        phase = _phase(request)
        if phase == "edit":
            edits.append(time.monotonic())
            if len(edits) == 1:
                return text("edited (slow)", delay=120)  # the worker is killed while waiting here
        return text(f"{phase} done")

    llm_server.responder = respond
    airflow_server.put_vault_secret("connection", "e2e_resume_llm", **llm_server.connection())
    airflow_server.put_vault_secret("connection", "e2e_phase_cache", conn_uri=postgres.uri)

    airflow_server.wait_for_dag(DAG_ID)
    airflow_server.unpause(DAG_ID)
    run_id = airflow_server.trigger(DAG_ID)

    deadline = time.monotonic() + 180
    while not edits and time.monotonic() < deadline:
        airflow_server.check_alive()
        time.sleep(0.5)
    assert edits, f"phase 3 never reached the LLM\n{airflow_server.log_tail('scheduler')}"
    victim = _busy_worker(airflow_server, urlsplit(llm_server.base_url).port or 0)
    assert victim, "could not tell which worker runs the task"
    survivor = next(name for name in airflow_server.celery_workers if name != victim)
    process = airflow_server.processes.pop(victim)
    os.killpg(process.pid, signal.SIGKILL)  # the worker and its task, without any goodbye
    process.wait(timeout=30)

    try:
        run = airflow_server.wait_for_run(DAG_ID, run_id, timeout=300)
    finally:
        airflow_server.start_worker(victim)  # the rest of the session keeps two workers
    assert run["state"] == "success", airflow_server.log_tail("scheduler")

    per_phase = {phase: sum(1 for r in llm_server.requests if _phase(r) == phase) for phase in PHASES}
    assert per_phase == {"outline": 1, "draft": 1, "edit": 2, "title": 1}
    (ti,) = airflow_server.task_instances(DAG_ID, run_id)
    assert ti["try_number"] >= 2
    result = airflow_server.xcom(DAG_ID, run_id, "write_note")
    assert result["final"] == "title done"
    assert result["usage"]["cache_hits"] == 2
    assert survivor in airflow_server.celery_workers
