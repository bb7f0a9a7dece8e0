"""Airflow 2: the page, the same JSON API and the chart libraries as a Flask-AppBuilder view at
``/cascade-artifacts``, with a menu entry "Cascade artifacts" under Browse.

The page and the libraries need a logged-in UI session (else the login page); the API takes that
session or the REST API's ``[api] auth_backends`` and answers 401/403 as JSON (the cost page's
rules, in ``plugins/_flask_support.py``). Imported only when the webserver collects
``appbuilder_views`` (llm_plugin.py).
"""

from __future__ import annotations

from typing import Any

from airflow.www.auth import has_access_view
from flask import Response, jsonify, request
from flask_appbuilder import expose

from airflow_llm_provider.plugins._flask_support import PageView, api_access
from airflow_llm_provider.plugins.artifacts_page import URL_PREFIX, data
from airflow_llm_provider.plugins.artifacts_page.page import API_HEADERS, LIBRARY_HEADERS, PAGE


def _json(payload: Any, status: int = 200) -> Any:
    response = jsonify(payload)
    response.status_code = status
    response.headers.update(API_HEADERS)
    return response


class CascadeArtifactsView(PageView):
    route_base = URL_PREFIX
    page = PAGE

    @expose("/api/artifacts")
    @api_access
    def artifacts(self) -> Any:
        try:
            return _json(data.list_payload(data.open_store(), request.args))
        except data.BadRequest as err:
            return _json({"detail": str(err)}, 400)

    @expose("/api/artifacts/<string:artifact_id>")
    @api_access
    def artifact(self, artifact_id: str) -> Any:
        try:
            payload = data.artifact_payload(data.open_store(), artifact_id)
        except data.BadRequest as err:
            return _json({"detail": str(err)}, 400)
        if payload is None:
            return _json({"detail": "artifact not found"}, 404)
        return _json(payload)

    @expose("/static/<string:name>")
    @has_access_view()
    def chart_library(self, name: str) -> Any:
        script = data.library(name)
        if script is None:
            return _json({"detail": f"{name} is not available here"}, 404)
        return Response(script, mimetype="text/javascript", headers=LIBRARY_HEADERS)


def appbuilder_view_entry() -> dict[str, Any]:
    """The ``appbuilder_views`` entry of the plugin: the view and its menu item."""
    return {"name": "Cascade artifacts", "category": "Browse", "view": CascadeArtifactsView()}
