"""airflow_llm_provider.preload: pydantic-ai imported by Airflow's own start-up, before any fork."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from airflow_llm_provider.preload import DEFAULT_MODULES, preload


def test_preload_imports_what_is_installed_and_skips_the_rest() -> None:
    loaded = preload([*DEFAULT_MODULES, "no_such_module_for_preload"])

    assert loaded == list(DEFAULT_MODULES)
    assert all(name in sys.modules for name in DEFAULT_MODULES)


def test_airflow_local_settings_preload_runs_in_every_airflow_process(tmp_path: Path) -> None:
    """As docs/deployment.md sets it up: a fresh interpreter that only imports airflow ends up
    with pydantic-ai and genai-prices' table loaded, so forked task processes inherit them."""
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "airflow_local_settings.py").write_text(
        "from airflow_llm_provider.preload import preload\n\npreload()\n"
    )
    probe = (
        "import json, sys, airflow\n"
        "from genai_prices.data_snapshot import _bundled_snapshot\n"
        "print(json.dumps({'pydantic_ai': 'pydantic_ai.models.openai' in sys.modules,"
        " 'engine': 'airflow_llm_provider.cascades.runner' in sys.modules,"
        " 'prices_loaded': _bundled_snapshot.cache_info().currsize}))\n"
    )
    env = {**os.environ, "AIRFLOW_HOME": str(tmp_path), "AIRFLOW__CORE__LOAD_EXAMPLES": "False"}
    done = subprocess.run(
        [sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=120, check=True
    )

    assert json.loads(done.stdout.strip().splitlines()[-1]) == {
        "pydantic_ai": True,
        "engine": True,
        "prices_loaded": 1,
    }


def test_without_local_settings_airflow_does_not_import_pydantic_ai(tmp_path: Path) -> None:
    """The control: the import above is the preload's doing, not Airflow's."""
    probe = "import json, sys, airflow\nprint(json.dumps('pydantic_ai' in sys.modules))\n"
    env = {**os.environ, "AIRFLOW_HOME": str(tmp_path), "AIRFLOW__CORE__LOAD_EXAMPLES": "False"}
    done = subprocess.run(
        [sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=120, check=True
    )

    assert done.stdout.strip().splitlines()[-1] == "false"
