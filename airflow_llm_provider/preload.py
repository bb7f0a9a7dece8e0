"""Import pydantic-ai and our engine once per worker, before Airflow forks task processes.

Every Airflow task runs in a process forked from its worker (LocalExecutor, CeleryExecutor). A
task that calls an LLM first imports pydantic-ai, the OpenAI SDK and genai-prices' price table:
about a second of CPU per task, paid again by each of a 1,000-item fan-out's tasks. Imported in
the worker before the fork, the modules are shared copy-on-write and each task starts with them.

Opt in from ``$AIRFLOW_HOME/config/airflow_local_settings.py``, which every Airflow process
imports at start-up::

    from airflow_llm_provider.preload import preload

    preload()

This is an optimisation only: nothing changes in what tasks do. The cost is the same imports
(and some memory) in every Airflow process, the api-server and dag-processor included.
"""

from __future__ import annotations

import importlib
import logging
import time
from collections.abc import Iterable

log = logging.getLogger(__name__)

#: What an LLM task imports: pydantic-ai's agent, the OpenAI-compatible chat model (the ``openai``
#: and ``openai-chat`` prefixes), and our engine, hook and cost ledger.
DEFAULT_MODULES: tuple[str, ...] = (
    "pydantic_ai",
    "pydantic_ai.models.openai",
    "pydantic_ai.providers.openai",
    "airflow_llm_provider.cascades.runner",
    "airflow_llm_provider.hooks.llm",
    "airflow_llm_provider.costs.budgets",
    "airflow_llm_provider.costs.ledger",
)


def preload(modules: Iterable[str] = DEFAULT_MODULES, *, prices: bool = True) -> list[str]:
    """Import ``modules`` (those that are installed) and, with ``prices``, load genai-prices'
    price table, which pydantic-ai otherwise loads when a task builds its first model.

    Returns the modules imported. A missing optional module is skipped, never an error: this runs
    inside every Airflow process's start-up.
    """
    started = time.perf_counter()
    loaded = []
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError as err:
            log.debug("preload: %s not imported (%s)", name, err)
            continue
        loaded.append(name)
    if prices:
        try:
            from genai_prices.data_snapshot import get_snapshot
        except ImportError:
            pass
        else:
            get_snapshot()
    log.debug("preload: %d modules in %.2fs", len(loaded), time.perf_counter() - started)
    return loaded
