"""Airflow 2: what the plugin's Flask-AppBuilder views share, the page route and the access rules
of the JSON API.

The page needs a logged-in UI session (else the login page, as every Airflow view); the API takes
that session or the REST API's ``[api] auth_backends`` (basic auth, Kerberos...) and answers
401/403 as JSON. Imported only when the webserver collects ``appbuilder_views`` (see
``llm_plugin.py``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, ClassVar

from airflow.www.auth import has_access_view
from airflow.www.extensions.init_auth_manager import get_auth_manager
from flask import Response, jsonify
from flask_appbuilder import BaseView, expose

from airflow_llm_provider.plugins._page_support import StaticPage


def api_refusal() -> Any:
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


def api_access(route: Callable[..., Any]) -> Callable[..., Any]:
    """Answers the JSON 401/403 of ``api_refusal`` instead of calling ``route`` when it refuses."""

    @functools.wraps(route)
    def checked(*args: Any, **kwargs: Any) -> Any:
        refusal = api_refusal()
        if refusal is not None:
            return refusal
        return route(*args, **kwargs)

    return checked


class PageView(BaseView):
    """A view serving ``page`` at ``route_base`` for logged-in UI users; subclasses add the API."""

    default_view = "index"
    page: ClassVar[StaticPage]

    @expose("/")
    @has_access_view()
    def index(self) -> Any:
        return Response(self.page.html(), mimetype="text/html", headers=self.page.headers())
