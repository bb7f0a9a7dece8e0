"""Airflow 3: what the plugin's FastAPI apps share, the app with its page route and the
login-first handling of refused requests.

Plugin apps are mounted outside the core API's authentication, so every route asks for Airflow's
own ``get_user`` (the UI's ``_token`` cookie or ``Authorization: Bearer <JWT>``). Imported only
when the api-server collects ``fastapi_apps`` (see ``llm_plugin.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

from airflow.api_fastapi.core_api.security import get_user
from fastapi import Depends, FastAPI, HTTPException, Request, status
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse

from airflow_llm_provider.plugins._page_support import StaticPage

UserDep = Annotated[Any, Depends(get_user)]
"""A route parameter that makes the route need an Airflow user."""


def create_page_app(
    *,
    title: str,
    description: str,
    page: StaticPage,
    is_page_path: Callable[[str], bool],
    auth_manager: Callable[[], Any],
) -> FastAPI:
    """A FastAPI app serving ``page`` at ``/``, to which the caller adds its API routes.

    A request the user is not authenticated or authorized for is sent to log in, as the UI does,
    when ``is_page_path`` (given the path without its trailing ``/``) says it is for the page;
    anything else (the API) answers 401/403 as JSON like Airflow's own API. ``auth_manager`` is
    called on each such request.
    """
    app = FastAPI(title=title, description=description, docs_url=None, redoc_url=None, openapi_url=None)

    @app.exception_handler(HTTPException)
    async def login_first(request: Request, exc: HTTPException) -> Any:
        page_request = is_page_path(request.url.path.rstrip("/"))
        if page_request and exc.status_code in (status.HTTP_401_UNAUTHORIZED, status.HTTP_403_FORBIDDEN):
            login = auth_manager().get_url_login(next_url=str(request.url))
            return RedirectResponse(login, status_code=status.HTTP_307_TEMPORARY_REDIRECT)
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index(user: UserDep) -> Any:
        return HTMLResponse(page.html(), headers=page.headers())

    return app
