"""Extra links on cascade tasks: "Cascade artifacts" opens the plugin's artifacts page filtered
to the charts and HTML artifacts this task instance stored (its run session,
``operators/cascade.py`` ``session_id_of``)."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from airflow.providers.common.compat.sdk import BaseOperatorLink

from airflow_llm_provider.cascades.artifact_store import VIEW_URL_PREFIX


def session_id_for(dag_id: str, run_id: str, task_id: str, map_index: int | None = -1) -> str:
    """The session id a cascade task instance runs under: ``<dag>__<run>__<task>[__<index>]``."""
    parts = [dag_id, run_id, task_id]
    if map_index not in (-1, None):
        parts.append(str(map_index))
    return "__".join(parts)


class CascadeArtifactsLink(BaseOperatorLink):
    """The task instance's artifacts on the "Cascade artifacts" page."""

    name = "Cascade artifacts"

    def get_link(self, operator: Any, *, ti_key: Any) -> str:
        session = session_id_for(
            ti_key.dag_id, ti_key.run_id, ti_key.task_id, getattr(ti_key, "map_index", -1)
        )
        return f"{VIEW_URL_PREFIX}/?{urlencode({'session_id': session})}"
