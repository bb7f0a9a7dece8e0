"""`make up`: the UI serves the example DAG, a run can be triggered, Ctrl-C leaves nothing behind,
and a second start is quick and prints the login again."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.fixtures._proc import free_port, tail, wait_until
from tests.fixtures.airflow_server import REPO_ROOT, AirflowServer, clean_airflow_env

pytestmark = pytest.mark.e2e


def _launch(home: Path, port: int, log: Path) -> subprocess.Popen:
    env = clean_airflow_env()
    env.update({"AIRFLOW_UP_HOME": str(home), "AIRFLOW_UP_PORT": str(port)})
    if Path(sys.prefix).resolve() == (REPO_ROOT / ".venv").resolve():
        command = ["make", "--no-print-directory", "up"]  # exactly what users type
    else:  # the Airflow 2 suite: the same launcher on that line's interpreter
        command = [sys.executable, str(REPO_ROOT / "scripts" / "airflow_up.py")]
    return subprocess.Popen(
        command,
        cwd=REPO_ROOT,
        env=env,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def _processes_using(home: Path) -> list[str]:
    """Every live process whose environment names this AIRFLOW_HOME."""
    marker = f"AIRFLOW_HOME={home}".encode()
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if marker in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
                state = Path(f"/proc/{pid}/stat").read_text().split()[2]
                if state != "Z":
                    found.append(f"{pid}: {Path(f'/proc/{pid}/cmdline').read_bytes()!r}")
        except OSError:
            continue
    return found


def _wait_up(process: subprocess.Popen, log: Path, after: int) -> str:
    def ready() -> bool:
        return "Airflow is up" in log.read_text(errors="replace")[after:]

    wait_until(ready, timeout=240, what="make up", process=process, log=log, interval=0.5)
    match = re.search(r"Login: admin / (\S+)", log.read_text(errors="replace")[after:])
    assert match, tail(log)
    return match.group(1)


def _ctrl_c(process: subprocess.Popen, home: Path, log: Path) -> None:
    os.killpg(process.pid, signal.SIGINT)  # what the terminal does on Ctrl-C
    try:
        process.wait(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        pytest.fail(f"make up did not stop on Ctrl-C\n{tail(log)}")
    deadline = time.monotonic() + 20
    while _processes_using(home) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert _processes_using(home) == [], "processes left behind after Ctrl-C"


def test_make_up_serves_triggers_and_stops_cleanly(tmp_path):
    home, port, log = tmp_path / "home", free_port(), tmp_path / "up.log"
    process = _launch(home, port, log)
    try:
        password = _wait_up(process, log, 0)
        output = log.read_text()
        assert "offline TEST model" in output  # no LLM configured: said plainly

        from airflow_llm_provider.version_compat import AIRFLOW_V_3_0_PLUS

        server = AirflowServer(home=home, port=port, env={}, password=password, airflow3=AIRFLOW_V_3_0_PLUS)
        page = server.session.get(server.base_url + "/", timeout=30)
        assert page.status_code == 200 and "airflow" in page.text.lower()
        server.wait_for_dag("example_llm_hello", timeout=180)
        server.unpause("example_llm_hello")
        run_id = server.trigger("example_llm_hello", logical_date="2026-04-01T00:00:00Z")
        assert server.wait_for_run("example_llm_hello", run_id)["state"] == "success"
    finally:
        _ctrl_c(process, home, log)

    # A second start reuses the DB and the venv: quick, and the login is printed again.
    size = log.stat().st_size
    started = time.monotonic()
    process = _launch(home, port, log)
    try:
        assert _wait_up(process, log, size) == password
        assert time.monotonic() - started < 90
    finally:
        _ctrl_c(process, home, log)
