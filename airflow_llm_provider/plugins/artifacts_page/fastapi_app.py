"""Airflow 3: the page, its JSON API and the chart libraries as a FastAPI app the api-server mounts
at ``/cascade-artifacts``.

Plugin apps are mounted outside the core API's authentication, so every route here asks for
Airflow's own ``get_user`` (the UI's ``_token`` cookie or ``Authorization: Bearer <JWT>``), as
the cost page does; the app, the page route and the login redirect come from
``plugins/_fastapi_support.py``. Imported only when the api-server collects ``fastapi_apps``
(llm_plugin.py).
"""

from __future__ import annotations

import asyncio
from typing import Any

from airflow.api_fastapi.app import get_auth_manager
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from airflow_llm_provider.plugins._fastapi_support import UserDep, create_page_app
from airflow_llm_provider.plugins.artifacts_page import URL_PREFIX, data
from airflow_llm_provider.plugins.artifacts_page.page import API_HEADERS, LIBRARY_HEADERS, PAGE


def create_app() -> FastAPI:
    app = create_page_app(
        title="Cascade artifacts",
        description="Charts, dashboards and UI snippets created by cascades (airflow-llm-provider).",
        page=PAGE,
        # Only the page sends an anonymous visitor to log in; the API and the libraries answer JSON.
        is_page_path=lambda path: path.endswith(URL_PREFIX),
        auth_manager=lambda: get_auth_manager(),
    )

    @app.get("/api/artifacts")
    async def artifacts(request: Request, user: UserDep) -> Any:
        try:
            # SQLite is a blocking client: keep it off the event loop.
            payload = await asyncio.to_thread(
                data.list_payload, data.open_store(), dict(request.query_params)
            )
        except data.BadRequest as err:
            return JSONResponse({"detail": str(err)}, status_code=400, headers=API_HEADERS)
        return JSONResponse(payload, headers=API_HEADERS)

    @app.get("/api/artifacts/{artifact_id}")
    async def artifact(artifact_id: str, user: UserDep) -> Any:
        try:
            payload = await asyncio.to_thread(data.artifact_payload, data.open_store(), artifact_id)
        except data.BadRequest as err:
            return JSONResponse({"detail": str(err)}, status_code=400, headers=API_HEADERS)
        if payload is None:
            return JSONResponse({"detail": "artifact not found"}, status_code=404, headers=API_HEADERS)
        return JSONResponse(payload, headers=API_HEADERS)

    @app.get("/static/{name}", include_in_schema=False)
    async def chart_library(name: str, user: UserDep) -> Any:
        script = await asyncio.to_thread(data.library, name)
        if script is None:
            return JSONResponse(
                {"detail": f"{name} is not available here"}, status_code=404, headers=API_HEADERS
            )
        return Response(script, media_type="text/javascript; charset=utf-8", headers=LIBRARY_HEADERS)

    return app


def fastapi_app_entry() -> dict[str, Any]:
    """The ``fastapi_apps`` entry of the plugin."""
    return {"app": create_app(), "url_prefix": URL_PREFIX, "name": "Cascade artifacts"}
