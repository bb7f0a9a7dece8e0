"""The provider's AirflowPlugin, registered through the ``airflow.plugins`` entry point.

It is the one place where UI views, macros and listeners of this provider attach to Airflow:

- macros (every component): ``provider_version``, ``llm_cost`` and ``llm_budget_left``;
- the LLM-cost page (``plugins/cost_page``): on Airflow 3 a FastAPI app mounted at ``/llm-costs``
  plus a navigation entry (``external_views``, Airflow 3.1+); on Airflow 2 a Flask-AppBuilder view
  at ``/llm-costs`` with a "Browse > LLM costs" menu entry;
- the "Cascade artifacts" page (``plugins/artifacts_page``) at ``/cascade-artifacts``, registered
  the same way on both lines.

Every component imports this module (schedulers and workers too, for the macros), so the web
parts are built only when read: the api-server reads ``fastapi_apps``, the Airflow 2 webserver
reads ``appbuilder_views``. Importing the plugin imports neither FastAPI nor Flask.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from airflow.providers.common.compat.sdk import AirflowPlugin

from airflow_llm_provider import __version__


def provider_version() -> str:
    """``{{ macros.llm_provider.provider_version() }}``: the installed provider version."""
    return __version__


def llm_cost(
    dag_id: str | None, run_id: str | None = None, day: str | None = None, tag: str | None = None
) -> float:
    """``{{ macros.llm_provider.llm_cost(dag.dag_id, run_id) }}``: USD the ledger recorded for a
    DAG run (or, with ``day="YYYY-MM-DD"``, a DAG's day; ``tag`` with ``dag_id=None`` a team's)."""
    from airflow_llm_provider.costs.ledger import Scope, configured_ledger

    return round(configured_ledger().spent(Scope(dag_id=dag_id, run_id=run_id, day=day, tag=tag)).cost_usd, 6)


def llm_budget_left(
    max_cost_usd: float,
    dag_id: str | None,
    run_id: str | None = None,
    day: str | None = None,
    tag: str | None = None,
) -> float:
    """``{{ macros.llm_provider.llm_budget_left(5.0, dag.dag_id, day=ds) }}``: USD left of a budget
    in that scope (never below 0)."""
    spent = llm_cost(dag_id, run_id=run_id, day=day, tag=tag)
    return round(max(0.0, float(max_cost_usd) - spent), 6)


class _BuiltOnRead:
    """A plugin attribute computed the first time it is read, on the class or an instance (Airflow
    keeps provider-registered plugins as classes and entry-point plugins as instances)."""

    def __init__(self, build: Callable[[], list[Any]]) -> None:
        self._build = build
        self._value: list[Any] | None = None

    def __get__(self, instance: object, owner: type | None = None) -> list[Any]:
        if self._value is None:
            self._value = self._build()
        return self._value


def _fastapi_apps() -> list[Any]:
    from airflow_llm_provider.version_compat import AIRFLOW_V_3_0_PLUS

    if not AIRFLOW_V_3_0_PLUS:
        return []
    from airflow_llm_provider.plugins.artifacts_page.fastapi_app import (
        fastapi_app_entry as artifacts_app_entry,
    )
    from airflow_llm_provider.plugins.cost_page.fastapi_app import fastapi_app_entry

    return [fastapi_app_entry(), artifacts_app_entry()]


def _appbuilder_views() -> list[Any]:
    from airflow_llm_provider.version_compat import AIRFLOW_V_3_0_PLUS

    if AIRFLOW_V_3_0_PLUS:
        return []
    from airflow_llm_provider.plugins.artifacts_page.flask_view import (
        appbuilder_view_entry as artifacts_view_entry,
    )
    from airflow_llm_provider.plugins.cost_page.flask_view import appbuilder_view_entry

    return [appbuilder_view_entry(), artifacts_view_entry()]


COST_PAGE_VIEW = {
    "name": "LLM costs",
    # Relative to the UI's base URL (no leading slash), so a [api] base_url prefix is kept.
    "href": "llm-costs/",
    # With a url_route the UI shows the page inside itself (an iframe at /plugin/llm-costs).
    "url_route": "llm-costs",
    "destination": "nav",
    "category": "browse",
}

ARTIFACTS_PAGE_VIEW = {
    "name": "Cascade artifacts",
    "href": "cascade-artifacts/",
    "url_route": "cascade-artifacts",
    "destination": "nav",
    "category": "browse",
}


class LLMProviderPlugin(AirflowPlugin):
    name = "llm_provider"
    macros = [provider_version, llm_cost, llm_budget_left]
    fastapi_apps = _BuiltOnRead(_fastapi_apps)
    external_views = [COST_PAGE_VIEW, ARTIFACTS_PAGE_VIEW]
    appbuilder_views = _BuiltOnRead(_appbuilder_views)
