"""Airflow 2: the page and the same JSON API as a Flask-AppBuilder view at ``/llm-costs``, with a
menu entry "LLM costs" under Browse.

Both routes need a user who may see the website: the page a logged-in UI session (else the login
page, as every Airflow view), the API that session or the REST API's ``[api] auth_backends``
(basic auth, Kerberos...), answering 401/403 as JSON (``plugins/_flask_support.py``). The summary
covers only the DAGs the auth manager lets that user read.

Imported only when the webserver collects ``appbuilder_views`` (see ``llm_plugin.py``).
"""

from __future__ import annotations

from typing import Any

from airflow.www.extensions.init_auth_manager import get_auth_manager
from flask import jsonify, request
from flask_appbuilder import expose

from airflow_llm_provider.plugins._flask_support import PageView, api_access
from airflow_llm_provider.plugins.cost_page import URL_PREFIX
from airflow_llm_provider.plugins.cost_page.page import PAGE
from airflow_llm_provider.plugins.cost_page.summary import (
    DagNotPermitted,
    InvalidFilter,
    build_summary,
    parse_filters,
)


def _permitted(dag_ids: set[str]) -> set[str]:
    from airflow.auth.managers.models.resource_details import DagDetails

    auth_manager = get_auth_manager()
    return {d for d in dag_ids if auth_manager.is_authorized_dag(method="GET", details=DagDetails(id=d))}


class LLMCostsView(PageView):
    route_base = URL_PREFIX
    page = PAGE

    @expose("/api/summary")
    @api_access
    def summary(self) -> Any:
        from airflow_llm_provider.costs.ledger import LedgerUnavailable, configured_ledger

        try:
            data = build_summary(configured_ledger(), parse_filters(request.args), permitted_dags=_permitted)
        except InvalidFilter as err:
            return jsonify(detail=str(err)), 400
        except DagNotPermitted as err:
            return jsonify(detail=str(err)), 403
        except LedgerUnavailable as err:
            return jsonify(detail=str(err)), 503
        response = jsonify(data)
        response.headers["Cache-Control"] = "no-store"
        return response


def appbuilder_view_entry() -> dict[str, Any]:
    """The ``appbuilder_views`` entry of the plugin: the view and its menu item."""
    return {"name": "LLM costs", "category": "Browse", "view": LLMCostsView()}
