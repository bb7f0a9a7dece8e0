"""Airflow 3: the page, its JSON API and the chart libraries as a FastAPI app the api-server mounts
at ``/cascade-artifacts``.

Plugin apps are mounted outside the core API's authentication, so every route here asks for
Airflow's own ``get_user`` (the UI's ``_token`` cookie or ``Authorization: Bearer <JWT>``), as
the cost page does. Imported only when the api-server collects ``fastapi_apps`` (llm_plugin.py).
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from airflow.api_fastapi.app import get_auth_manager
from airflow.api_fastapi.core_api.security import get_user
from fastapi import Depends, FastAPI, HTTPException, Request, status
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

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


def create_app() -> FastAPI:
    app = FastAPI(
        title="Cascade artifacts",
        description="Charts, dashboards and UI snippets created by cascades (airflow-llm-provider).",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )

    @app.exception_handler(HTTPException)
    async def login_first(request: Request, exc: HTTPException) -> Any:
        # The page sends an anonymous visitor to log in, as the UI does; the API answers JSON.
        page_request = request.url.path.rstrip("/").endswith(URL_PREFIX)
        if page_request and exc.status_code in (status.HTTP_401_UNAUTHORIZED, status.HTTP_403_FORBIDDEN):
            login = get_auth_manager().get_url_login(next_url=str(request.url))
            return RedirectResponse(login, status_code=status.HTTP_307_TEMPORARY_REDIRECT)
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page(user: Annotated[Any, Depends(get_user)]) -> Any:
        return HTMLResponse(page_html(), headers=page_headers())

    @app.get("/api/artifacts")
    async def artifacts(request: Request, user: Annotated[Any, Depends(get_user)]) -> Any:
        try:
            # SQLite is a blocking client: keep it off the event loop.
            data = await asyncio.to_thread(list_payload, open_store(), dict(request.query_params))
        except BadRequest as err:
            return JSONResponse({"detail": str(err)}, status_code=400, headers=API_HEADERS)
        return JSONResponse(data, headers=API_HEADERS)

    @app.get("/api/artifacts/{artifact_id}")
    async def artifact(artifact_id: str, user: Annotated[Any, Depends(get_user)]) -> Any:
        try:
            data = await asyncio.to_thread(artifact_payload, open_store(), artifact_id)
        except BadRequest as err:
            return JSONResponse({"detail": str(err)}, status_code=400, headers=API_HEADERS)
        if data is None:
            return JSONResponse({"detail": "artifact not found"}, status_code=404, headers=API_HEADERS)
        return JSONResponse(data, headers=API_HEADERS)

    @app.get("/static/{name}", include_in_schema=False)
    async def chart_library(name: str, user: Annotated[Any, Depends(get_user)]) -> Any:
        script = await asyncio.to_thread(library, name)
        if script is None:
            return JSONResponse(
                {"detail": f"{name} is not available here"}, status_code=404, headers=API_HEADERS
            )
        return Response(script, media_type="text/javascript; charset=utf-8", headers=LIBRARY_HEADERS)

    return app


def fastapi_app_entry() -> dict[str, Any]:
    """The ``fastapi_apps`` entry of the plugin."""
    return {"app": create_app(), "url_prefix": URL_PREFIX, "name": "Cascade artifacts"}
