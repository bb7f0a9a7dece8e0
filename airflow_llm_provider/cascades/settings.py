"""Reading ``[llm_provider]`` (and other Airflow) options from the engine, which imports no Airflow.

Through Airflow's configuration when Airflow is already loaded (a worker, the DAG processor), else
from the environment variables Airflow itself would read (``AIRFLOW__LLM_PROVIDER__<OPTION>``), so
``airflow-llm`` outside Airflow honours the same settings.
"""

from __future__ import annotations

import os
import sys

SECTION = "llm_provider"


def option(name: str, section: str = SECTION) -> str | None:
    """The option's value, or None when it is not set."""
    configuration = sys.modules.get("airflow.configuration")
    conf = getattr(configuration, "conf", None)
    if conf is not None:
        try:
            value = conf.get(section, name, fallback=None)
        except Exception:  # a half-initialised configuration: the environment still counts
            value = None
        if value is not None:
            return str(value)
    return os.environ.get(f"AIRFLOW__{section.upper()}__{name.upper()}")


def option_list(name: str, section: str = SECTION) -> list[str]:
    """A comma-separated option as a list of non-empty, stripped items."""
    return [item.strip() for item in (option(name, section) or "").split(",") if item.strip()]


def option_flag(name: str, section: str = SECTION) -> bool:
    """A boolean option (``true``/``1``/``yes``/``on``, any case); unset is False."""
    return (option(name, section) or "").strip().lower() in ("true", "1", "yes", "on")
