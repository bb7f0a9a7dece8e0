"""Airflow 2: the page and the same JSON API as a Flask-AppBuilder view at ``/llm-costs``, with a
menu entry "LLM costs" under Browse.

Both routes need a user who may see the website: the page a logged-in UI session (else the login
page, as every Airflow view), the API that session or the REST API's ``[api] auth_backends``
(basic auth, Kerberos...), answering 401/403 as JSON. The summary covers only the DAGs the auth
manager lets that user read.

Imported only when the webserver collects ``appbuilder_views`` (see ``llm_plugin.py``).
"""

from __future__ import annotations

from typing import Any

from airflow.www.auth import has_access_view
from airflow.www.extensions.init_auth_manager import get_auth_manager
from flask import Response, jsonify, request
from flask_appbuilder import BaseView, expose

from airflow_llm_provider.plugins.cost_page import URL_PREFIX
from airflow_llm_provider.plugins.cost_page.page import page_headers, page_html
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


def _api_refusal() -> Any:
    """None if the caller may use the API, else the JSON 401/403 to answer."""
    from airflow.api_connexion.exceptions import Unauthenticated
    from airflow.api_connexion.security import check_authentication
    from airflow.auth.managers.models.resource_details import AccessView

    auth_manager = get_auth_manager()
    if not auth_manager.is_logged_in():
        try:
            check_authentication()  # the REST API's auth backends, e.g. basic auth
        except Unauthenticated:
            return jsonify(detail="Not authenticated"), 401
    if not auth_manager.is_authorized_view(access_view=AccessView.WEBSITE):
        # Anonymous callers pass check_authentication when FAB's public role exists (its default);
        # without the public role's access to the website they are still not logged in.
        if not auth_manager.is_logged_in():
            return jsonify(detail="Not authenticated"), 401
        return jsonify(detail="Forbidden"), 403
    return None


class LLMCostsView(BaseView):
    route_base = URL_PREFIX
    default_view = "index"

    @expose("/")
    @has_access_view()
    def index(self) -> Any:
        return Response(page_html(), mimetype="text/html", headers=page_headers())

    @expose("/api/summary")
    def summary(self) -> Any:
        from airflow_llm_provider.costs.ledger import LedgerUnavailable, configured_ledger

        refusal = _api_refusal()
        if refusal is not None:
            return refusal

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
