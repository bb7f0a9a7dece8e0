"""`make up`: Airflow standalone with this provider, its plugin and the repo's dags/ folder.

Small-machine defaults (SQLite, parallelism 4), the UI on http://localhost:8080 (``AIRFLOW_UP_PORT``
to change), state in ``.airflow/`` (``AIRFLOW_UP_HOME`` to change). Ctrl-C stops every component:
standalone runs in its own session and gets exactly one SIGINT from here, and whatever is still
alive after a grace period is terminated, so nothing is left behind.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
GRACE_SECONDS = 45


def _airflow3() -> bool:
    from importlib.metadata import version

    return int(version("apache-airflow").split(".")[0]) >= 3


def build_env(home: Path, port: int) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__PARALLELISM": env.get("AIRFLOW__CORE__PARALLELISM", "4"),
            "AIRFLOW__SCHEDULER__MIN_FILE_PROCESS_INTERVAL": "10",
            # The executor starts tasks as `airflow ...`: make it this virtualenv's.
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        }
    )
    if _airflow3():
        env.setdefault("AIRFLOW__API__PORT", str(port))
        env.setdefault("AIRFLOW__API__WORKERS", "1")
        env.setdefault("AIRFLOW__CORE__EXECUTION_API_SERVER_URL", f"http://localhost:{port}/execution/")
        env.setdefault("AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL", "30")
    else:
        env.setdefault("AIRFLOW__WEBSERVER__WEB_SERVER_PORT", str(port))
        env.setdefault("AIRFLOW__WEBSERVER__WORKERS", "1")
        env.setdefault("AIRFLOW__SCHEDULER__DAG_DIR_LIST_INTERVAL", "30")
        # Let scripts and curl use the REST API with the admin login, as Airflow 3 does.
        env.setdefault(
            "AIRFLOW__API__AUTH_BACKENDS",
            "airflow.api.auth.backend.session,airflow.api.auth.backend.basic_auth",
        )
    return env


def password_file(home: Path) -> Path:
    if _airflow3():
        return home / "simple_auth_manager_passwords.json.generated"
    return home / "standalone_admin_password.txt"


def read_password(home: Path) -> str | None:
    path = password_file(home)
    if not path.exists():
        return None
    content = path.read_text().strip()
    if _airflow3():
        return json.loads(content).get("admin")
    return content or None


def announce_when_ready(home: Path, port: int, stop: threading.Event) -> None:
    """Once the UI answers, print where it is and how to log in (standalone only echoes the
    password on the very first start)."""
    health = f"http://localhost:{port}" + ("/api/v2/monitor/health" if _airflow3() else "/health")
    while not stop.wait(1):
        try:
            with urllib.request.urlopen(health, timeout=2) as response:
                if response.status != 200:
                    continue
        except OSError:
            continue
        password = read_password(home)
        lines = [
            "",
            "=" * 72,
            f"  Airflow is up: http://localhost:{port}",
            f"  Login: admin / {password}" if password else f"  Login: see {password_file(home)}",
            f"  DAGs from {REPO / 'dags'}; state in {home}",
            "  Stop with Ctrl-C.",
            "=" * 72,
            "",
        ]
        print("\n".join(lines), flush=True)
        return


def llm_banner() -> str:
    if os.environ.get("AIRFLOW_CONN_PYDANTICAI_DEFAULT"):
        return "LLM: connection pydanticai_default comes from AIRFLOW_CONN_PYDANTICAI_DEFAULT."
    return (
        "LLM: no AIRFLOW_CONN_PYDANTICAI_DEFAULT set (nor, unless you create it in the UI, a "
        "pydanticai_default connection): LLM tasks use pydantic-ai's offline TEST model and return "
        "synthetic answers, and their logs say so. Set it to use a real model, e.g.\n"
        '  export AIRFLOW_CONN_PYDANTICAI_DEFAULT=\'{"conn_type": "pydanticai", "password": "<key>", '
        '"extra": {"model": "openai:gpt-4o-mini"}}\''
    )


def main() -> int:
    home = Path(os.environ.get("AIRFLOW_UP_HOME", REPO / ".airflow")).resolve()
    port = int(os.environ.get("AIRFLOW_UP_PORT", "8080"))
    home.mkdir(parents=True, exist_ok=True)
    env = build_env(home, port)
    print(f"Starting Airflow standalone (AIRFLOW_HOME={home}, port {port}).", flush=True)
    print(llm_banner(), flush=True)

    standalone = subprocess.Popen(
        [sys.executable, "-m", "airflow", "standalone"], env=env, start_new_session=True
    )
    stop = threading.Event()
    threading.Thread(target=announce_when_ready, args=(home, port, stop), daemon=True).start()

    interrupted = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        if not interrupted.is_set():
            interrupted.set()
            print("\nStopping Airflow (Ctrl-C again is not needed) ...", flush=True)
            try:
                os.kill(standalone.pid, signal.SIGINT)
            except ProcessLookupError:
                pass

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    while standalone.poll() is None:
        try:
            standalone.wait(timeout=1)
        except subprocess.TimeoutExpired:
            pass
        if interrupted.is_set():
            break
    stop.set()
    if interrupted.is_set():
        _reap(standalone)
    _kill_leftovers(standalone.pid)
    return 0 if interrupted.is_set() else (standalone.returncode or 0)


def _reap(standalone: subprocess.Popen) -> None:
    try:
        standalone.wait(timeout=GRACE_SECONDS)
    except subprocess.TimeoutExpired:
        print("Airflow did not stop in time; terminating it.", flush=True)
        _signal_group(standalone.pid, signal.SIGTERM)
        try:
            standalone.wait(timeout=10)
        except subprocess.TimeoutExpired:
            _signal_group(standalone.pid, signal.SIGKILL)
            standalone.wait()


def _kill_leftovers(pgid: int) -> None:
    """Components that outlived standalone are still in its process group: give them a moment,
    then terminate them."""
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and _group_alive(pgid):
        time.sleep(0.5)
    if _group_alive(pgid):
        _signal_group(pgid, signal.SIGTERM)
        time.sleep(3)
        _signal_group(pgid, signal.SIGKILL)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


if __name__ == "__main__":
    sys.exit(main())
