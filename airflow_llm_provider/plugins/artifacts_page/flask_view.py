"""Airflow 2: the page, the same JSON API and the chart libraries as a Flask-AppBuilder view at
``/cascade-artifacts``, with a menu entry "Cascade artifacts" under Browse.

The page and the libraries need a logged-in UI session (else the login page); the API takes that
session or the REST API's ``[api] auth_backends`` and answers 401/403 as JSON (the cost page's
rules). Imported only when the webserver collects ``appbuilder_views`` (llm_plugin.py).
"""

from __future__ import annotations

from typing import Any

from airflow.www.auth import has_access_view
from flask import Response, jsonify, request
from flask_appbuilder import BaseView, expose

from airflow_llm_provider.plugins.artifacts_page import URL_PREFIX
from airflow_llm_provider.plugins.artifacts_page.data import (
    BadRequest,
    artifact_payload,
    library,
    list_payload,
    open_store,
)
from airflow_llm_provider.plugins.artifacts_page.page import (
    API_HEADERS,
    LIBRARY_HEADERS,
    page_headers,
    page_html,
)
from airflow_llm_provider.plugins.cost_page.flask_view import _api_refusal


def _json(data: Any, status: int = 200) -> Any:
    response = jsonify(data)
    response.status_code = status
    response.headers.update(API_HEADERS)
    return response


class CascadeArtifactsView(BaseView):
    route_base = URL_PREFIX
    default_view = "index"

    @expose("/")
    @has_access_view()
    def index(self) -> Any:
        return Response(page_html(), mimetype="text/html", headers=page_headers())

    @expose("/api/artifacts")
    def artifacts(self) -> Any:
        refusal = _api_refusal()
        if refusal is not None:
            return refusal
        try:
            return _json(list_payload(open_store(), request.args))
        except BadRequest as err:
            return _json({"detail": str(err)}, 400)

    @expose("/api/artifacts/<string:artifact_id>")
    def artifact(self, artifact_id: str) -> Any:
        refusal = _api_refusal()
        if refusal is not None:
            return refusal
        try:
            data = artifact_payload(open_store(), artifact_id)
        except BadRequest as err:
            return _json({"detail": str(err)}, 400)
        if data is None:
            return _json({"detail": "artifact not found"}, 404)
        return _json(data)

    @expose("/static/<string:name>")
    @has_access_view()
    def chart_library(self, name: str) -> Any:
        script = library(name)
        if script is None:
            return _json({"detail": f"{name} is not available here"}, 404)
        return Response(script, mimetype="text/javascript", headers=LIBRARY_HEADERS)


def appbuilder_view_entry() -> dict[str, Any]:
    """The ``appbuilder_views`` entry of the plugin: the view and its menu item."""
    return {"name": "Cascade artifacts", "category": "Browse", "view": CascadeArtifactsView()}
