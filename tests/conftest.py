"""Test bed shared by every issue: an isolated Airflow home, then the real components as fixtures.

The environment is set before anything imports Airflow, so the suite never touches a developer's
own ``~/airflow``. Fixtures live in ``tests/fixtures/`` (one module per component).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
AIRFLOW_HOME = Path(tempfile.mkdtemp(prefix="alp-test-airflow-home-"))

os.environ["AIRFLOW_HOME"] = str(AIRFLOW_HOME)
os.environ["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = f"sqlite:///{AIRFLOW_HOME}/airflow.db"
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(REPO_ROOT / "dags")
os.environ["AIRFLOW__CORE__PLUGINS_FOLDER"] = str(REPO_ROOT / "plugins")
os.environ["AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION"] = "False"
os.environ["AIRFLOW__OPENLINEAGE__DISABLED"] = "True"  # tests that want lineage opt in
os.environ["AIRFLOW_LLM_CACHE_DIR"] = str(AIRFLOW_HOME / "llm-cache")  # never the user's cache
# The suite's cascades call tools in the test modules and in the fixtures' imaginary DAG project
# (reports.jobs, checks, docs.split), as an admin would allow a project's own packages.
_FIXTURE_PACKAGES = "tests,reports,checks,docs,pkg,mod,m,module,package"
os.environ["AIRFLOW__LLM_PROVIDER__ALLOWED_PYTHON_TOOLS"] = _FIXTURE_PACKAGES
# A developer's own LLM or Slack credentials must never leak into the suite.
for _name in list(os.environ):
    if _name.startswith("AIRFLOW_CONN_") or _name in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY"):
        del os.environ[_name]

pytest_plugins = [
    "tests.fixtures.airflow_env",
    "tests.fixtures.llm_server",
    "tests.fixtures.postgres",
    "tests.fixtures.vault",
    "tests.fixtures.slack",
    "tests.fixtures.lineage",
    "tests.fixtures.sshd",
    "tests.fixtures.airflow_server",
]
