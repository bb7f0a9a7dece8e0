"""Load the repository's DAG files the way Airflow's DagBag does, on both Airflow lines."""

from __future__ import annotations

from pathlib import Path
from typing import Any

REPO_DAGS = Path(__file__).resolve().parent.parent / "dags"


def dag_bag(folder: Path = REPO_DAGS) -> Any:
    import sys

    from airflow_llm_provider.version_compat import AIRFLOW_V_3_0_PLUS

    # Airflow puts its dags folder on sys.path (DAG files import their helper modules, e.g.
    # support_tools); a test run alone must not depend on another test having done it.
    if str(folder) not in sys.path:
        sys.path.append(str(folder))

    if AIRFLOW_V_3_0_PLUS:
        from airflow.dag_processing.dagbag import DagBag

        return DagBag(dag_folder=str(folder))
    from airflow.models.dagbag import DagBag

    return DagBag(dag_folder=str(folder), include_examples=False)


def load_dag(dag_id: str, folder: Path = REPO_DAGS) -> Any:
    bag = dag_bag(folder)
    assert not bag.import_errors, bag.import_errors
    return bag.dags[dag_id]
